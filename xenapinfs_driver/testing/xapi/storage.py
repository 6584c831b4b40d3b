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
"""The fake dom0's files: NFS exports, SR directories, mounts, space.

Under the server's root directory::

    exports/<server>/<serverpath>/        an NFS export
    exports/<server>/<serverpath>/<sr>/   an SR: one <vdi>.vhd per VDI
    var/run/sr-mount/<sr>                 symlink to the SR while plugged

which is how an NFS SR lays itself out on XenServer. A dom0 path a client
names (a plugin's ``sr_path``) is looked up under the root, and refused if
it leads outside. With a quota (``sr_size``), an export holds at most that
many bytes of files (sizes as ``ls`` shows them); a write that would go
past it fails with ``SR_BACKEND_FAILURE_44`` and is undone.
"""

from __future__ import annotations

import logging
import os
import re

from xenapinfs_driver.testing.xapi import errors

LOG = logging.getLogger(__name__)
UUID_RE = re.compile(r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-'
                     r'[0-9a-f]{12}\Z')
_SERVER_RE = re.compile(r'[A-Za-z0-9._:-]+\Z')


class Storage:
    """Paths and space accounting; no state beyond the files."""

    def __init__(self, root: str, exports=(), sr_size: int | None = None):
        self.root = os.path.realpath(root)
        self.exports_root = os.path.join(self.root, 'exports')
        self.mount_root = os.path.join(self.root, 'var', 'run', 'sr-mount')
        self.sr_size = sr_size
        # What showmount -e would list: the exports this run was given.
        self.exports = sorted(set(exports))
        os.makedirs(self.mount_root, exist_ok=True)
        os.makedirs(self.exports_root, exist_ok=True)
        for server, path in exports:
            os.makedirs(self.export_dir(server, path), exist_ok=True)

    def serves_nfs(self, server) -> bool:
        """Whether an NFS server of that name exists (has an export)."""
        return isinstance(server, str) and bool(_SERVER_RE.match(server)) \
            and server.strip('.') != '' and \
            os.path.isdir(os.path.join(self.exports_root, server))

    def export_dir(self, server: str, serverpath: str) -> str:
        """Where the export server:serverpath lives (it may not exist)."""
        if not isinstance(server, str) or not _SERVER_RE.match(server) or \
                server.strip('.') == '':
            raise ValueError('bad NFS server name %r' % (server,))
        parts = [p for p in str(serverpath).split('/') if p not in ('', '.')]
        if not str(serverpath).startswith('/') or '..' in parts:
            raise ValueError('bad NFS server path %r' % (serverpath,))
        return os.path.join(self.exports_root, server, *parts)

    def nfs_dir(self, device_config) -> str:
        """The existing export a device_config names, or sm's error."""
        if not isinstance(device_config, dict):
            raise errors.field_type('device_config')
        # sm's NFSSR.load checks serverpath first, then server.
        if 'serverpath' not in device_config:
            raise errors.backend(errors.SERVER_PATH_MISSING)
        if 'server' not in device_config:
            raise errors.backend(errors.SERVER_MISSING)
        try:
            path = self.export_dir(device_config['server'],
                                   device_config['serverpath'])
        except ValueError as exc:
            raise errors.backend(errors.SERVER_PATH_BAD, str(exc)) from None
        if not os.path.isdir(path):
            raise errors.backend(errors.NFS_MOUNT, 'mount.nfs: %s:%s: no '
                                 'such export' % (device_config['server'],
                                                  device_config['serverpath']))
        return path

    def dom0_path(self, path) -> str:
        """A dom0 path as a real path under the root; ValueError if not."""
        if not isinstance(path, str) or not path.startswith('/'):
            raise ValueError('%r is not an absolute dom0 path' % (path,))
        real = os.path.realpath(os.path.join(self.root, path.lstrip('/')))
        if real != self.root and not real.startswith(self.root + os.sep):
            raise ValueError('%r leads outside the dom0 root' % (path,))
        return real

    def mount_point(self, sr_uuid: str) -> str:
        return os.path.join(self.mount_root, sr_uuid)

    def mount(self, sr_uuid: str, target: str) -> None:
        link = self.mount_point(sr_uuid)
        if os.path.islink(link):
            if os.readlink(link) == target:
                return
            os.unlink(link)
        os.symlink(target, link)

    def unmount(self, sr_uuid: str) -> None:
        try:
            os.unlink(self.mount_point(sr_uuid))
        except FileNotFoundError:
            LOG.warning('SR %s was not mounted', sr_uuid)

    # -- space -------------------------------------------------------------

    @staticmethod
    def usage(directory: str, exclude=()) -> int:
        """Bytes of the files under directory (apparent sizes)."""
        skip = {os.path.abspath(p) for p in exclude}
        total = 0
        for top, _dirs, files in os.walk(directory):
            for name in files:
                path = os.path.join(top, name)
                if path in skip:
                    continue
                try:
                    total += os.lstat(path).st_size
                except FileNotFoundError:
                    continue        # removed while we walked
        return total

    def capacity(self, export: str) -> tuple[int, int]:
        """(size, used) of the file system an export is on, as sm sees it."""
        if self.sr_size is not None:
            return self.sr_size, self.usage(export)
        st = os.statvfs(export)
        return (st.f_blocks * st.f_frsize,
                (st.f_blocks - st.f_bfree) * st.f_frsize)

    def check_space(self, call, export: str, exclude=(), extra: int = 0):
        """After a write: DiskFull if the export is now over its quota.

        A disk_full fault on the call makes its first check fail. The
        caller undoes its write when this raises.
        """
        if call is not None and call.disk_full:
            call.disk_full = False
            raise errors.DiskFull()
        if self.sr_size is not None and \
                self.usage(export, exclude) + extra > self.sr_size:
            raise errors.DiskFull()

    def vhd_files(self) -> list:
        """Every file under the exports, relative to the root (leak checks)."""
        out = []
        for top, _dirs, files in os.walk(self.exports_root):
            for name in files:
                out.append(os.path.relpath(os.path.join(top, name),
                                           self.root))
        return sorted(out)


def sr_dir(call, sr: str) -> str:
    """The directory of a plugged SR; SR_HAS_NO_PBDS if none is plugged."""
    db = call.db
    with db.lock:
        rec = db.get('SR', sr)
        for pbd in db.find('PBD', SR=sr, currently_attached=True):
            dc = db.get('PBD', pbd)['device_config']
            path = call.server.storage.nfs_dir(dc)
            return os.path.join(path, rec['uuid'])
    raise errors.XapiError('SR_HAS_NO_PBDS', sr)


def sr_stats(server, ref: str, rec: dict) -> None:
    """Fill in a plugged SR's sizes (the database's computed hook)."""
    db, storage = server.db, server.storage
    attached = db.find('PBD', SR=ref, currently_attached=True)
    if not attached:
        return
    try:
        export = storage.nfs_dir(db.get('PBD', attached[0])['device_config'])
    except errors.XapiError as exc:
        LOG.warning('SR %s: no sizes: %s', rec['uuid'], exc)
        return
    size, used = storage.capacity(export)
    alloc = sum(int(v['virtual_size']) for v in
                (db.get('VDI', r) for r in db.find('VDI', SR=ref))
                if v['managed'])
    rec.update(physical_size=str(size), physical_utilisation=str(used),
               virtual_allocation=str(alloc))
