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
"""``SR.probe`` of an NFS SR, as sm's ``NFSSR.probe`` answers it.

Its checks, in sm's order: no ``server`` is ``ConfigServerMissing``
(``SR_BACKEND_FAILURE_102``, from ``NFSSR.load``); a server with no NFS
service is ``NFSTarget`` (108); no ``serverpath`` is
``ConfigServerPathMissing`` (101), whose last parameter is the server's
export list (``<nfs-exports>``, printed by sm's ``scan_exports`` on
stderr), which is how ``xe sr-probe`` shows a user the paths to choose
from; a path that is not exported fails the mount (``NFSMount``, 73).
Otherwise the answer is sm's ``scan_srlist``: every directory of the
export named like a uuid, as ``<SRlist><SR><UUID>..</UUID></SR>..``,
whether or not this host has a record of it.
"""

from __future__ import annotations

import os
from xml.sax import saxutils

from xenapinfs_driver.testing.xapi import errors
from xenapinfs_driver.testing.xapi import storage as storagemod

_HEAD = '<?xml version="1.0" ?>'


def _element(name: str, text: str, depth: int) -> str:
    return '%s<%s>%s</%s>' % ('\t' * depth, name, saxutils.escape(text),
                              name)


def exports_xml(storage, server: str) -> str:
    """showmount -e server, as sm's ``scan_exports`` writes it."""
    lines = [_HEAD, '<nfs-exports>']
    for host, path in storage.exports:
        if host == server:
            lines += ['\t<Export>', _element('Target', server, 2),
                      _element('Path', path, 2),
                      _element('Accesslist', '*', 2), '\t</Export>']
    return '\n'.join(lines + ['</nfs-exports>', ''])


def srlist(storage, device_config: dict) -> str:
    """The SR uuids on the export device_config names, as XML."""
    if 'server' not in device_config:
        raise errors.backend(errors.SERVER_MISSING)
    server = device_config['server']
    if not storage.serves_nfs(server):
        raise errors.backend(errors.NFS_TARGET)
    if 'serverpath' not in device_config:
        raise errors.backend(errors.SERVER_PATH_MISSING,
                             stderr=exports_xml(storage, server))
    export = storage.nfs_dir(device_config)
    found = sorted(n for n in os.listdir(export)
                   if storagemod.UUID_RE.match(n) and
                   os.path.isdir(os.path.join(export, n)))
    lines = [_HEAD, '<SRlist>']
    for sr_uuid in found:
        lines += ['\t<SR>', _element('UUID', sr_uuid, 2), '\t</SR>']
    return '\n'.join(lines + ['</SRlist>', ''])
