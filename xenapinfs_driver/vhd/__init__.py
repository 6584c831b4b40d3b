# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.
"""A pure-Python VHD library: the standard library is all it needs.

It reads XenServer images (a tar.gz of a VHD chain) and plain VHDs in one
pass, packs raw disks as XenServer images (or as qcow2 images, for
uploads: ``qcow2out``), and does vhd-util's file operations (``ops``);
isal or zlib-ng, when installed, only make gzip faster.
"""

from xenapinfs_driver.vhd.tgz import convert  # noqa: F401
from xenapinfs_driver.vhd.tgz import Input  # noqa: F401
from xenapinfs_driver.vhd.tgz import inspect  # noqa: F401
from xenapinfs_driver.vhd.tgz import Limits  # noqa: F401
from xenapinfs_driver.vhd.tgz import Result  # noqa: F401
from xenapinfs_driver.vhd.errors import VhdError  # noqa: F401
