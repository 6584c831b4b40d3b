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
"""Image data between glance and VDIs.

``meta`` tells what an image is (XenServer ``ovf``/``vhd`` tgz, bare VHD,
anything else) and how to reach glance from dom0; ``download`` fills a VDI
from an image, ``upload`` makes an image of a VDI. Two transports: dom0's
glance plugin (the host talks to glance; data never crosses the cinder
host) and the stream path (cinder fetches, our VHD library converts, XAPI's
HTTP handlers carry the disk).
"""
