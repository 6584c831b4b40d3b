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
"""The XenAPI layer: session, storage operations, plugins, HTTP transfers.

``session`` talks to the host through a pool of logins (``connection``);
``tasks`` runs, polls and destroys XAPI tasks; ``recovery`` undoes what
failed or whose answer was lost; ``storage`` knows SRs, PBDs and VDIs;
``plugin`` calls dom0's plugins; ``transfer`` streams disks through
XAPI's HTTP handlers. Each module imports only
:mod:`xenapinfs_driver.exception` and the modules of this layer it builds
on.
"""
