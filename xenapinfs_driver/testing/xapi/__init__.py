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
"""The XenAPI test server: real XML-RPC, real VHD files.

``XapiServer`` (in ``server``) serves XenAPI over HTTP(S) on loopback to
the PyPI ``XenAPI`` client, keeping SRs as directories and VDIs as VHD
files written with ``xenapinfs_driver.vhd``. It imports only the standard
library and that package, so it runs anywhere. Modules: ``server``
(life cycle), ``rpc`` (HTTP and XML-RPC), ``api`` (dispatch, generic
calls, Async), ``db``/``schema``/``query`` (records and
``get_all_records_where``), ``persist`` (the database file), ``restore``
(start and restart, forgotten SRs), ``sessions`` (login, tasks), ``hosts``
(pool, hosts, VBDs), ``storage`` (exports, mounts, space), ``srs`` (SR,
PBD), ``probe`` (``SR.probe``),
``vdis`` (VDI calls), ``vdifiles`` (scan, garbage collection),
``vhdio`` (chains, content replacement), ``transfer`` and ``importer``
(``/import_raw_vdi``, ``/export_raw_vdi``), ``plugins``
(``host.call_plugin``; ``dom0_*`` our dom0 glance plugin, ``osxenapi``
and its ``osxenapi_shim`` os-xenapi's real one), ``collector``,
``gcplan`` and ``coalesce`` (the storage manager's background garbage
collector), ``faults``, ``control`` and ``gcctl`` (test-only fault
injection and controls), ``errors`` (failure codes).
"""

from xenapinfs_driver.testing.xapi.server import XapiServer  # noqa: F401
