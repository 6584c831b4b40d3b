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
"""A server's start: a new host, or the one its database file describes.

A restart keeps every record that persists (see ``persist``); what lived
only in the old process is settled as XAPI settles it when its toolstack
comes back: no session is valid (a client gets ``SESSION_INVALID`` and
logs in again), no task exists (XAPI does not keep them: an old task ref
is ``HANDLE_INVALID``), and no operation is in progress
(``current_operations`` are emptied: they died with the process). The
hosts keep their refs and uuids, and take the addresses they listen on
now; plugged PBDs stay plugged, their SRs mounted again (a PBD whose
export is gone comes back unplugged, as a failed plug at boot would).

``forget_srs`` plays a host that forgot its SRs, or a pool that was
rebuilt over the same storage: the SR, PBD and VDI records (and the VBDs
of those VDIs) are gone; the directories and VHD files on the exports
stay, for ``SR.probe``, ``SR.introduce``, ``PBD.create``, ``PBD.plug``
and ``SR.scan`` to find again. The pool and host records stay: the host
is the same machine (its uuid derives from the root in any case).
"""

from __future__ import annotations

import logging
import os

from xenapinfs_driver.testing.xapi import errors
from xenapinfs_driver.testing.xapi import hosts
from xenapinfs_driver.testing.xapi import persist
from xenapinfs_driver.testing.xapi import schema
from xenapinfs_driver.testing.xapi import vdifiles

LOG = logging.getLogger(__name__)
MEMBER = 'host-b'


def start(db, store: persist.Store, storage, root: str, master_address: str,
          member_address: str | None,
          forget: bool = False) -> tuple[str, str | None]:
    """Fill db (new or from its file) and commit it to the file from now
    on; returns the refs of the master and of the member (or None)."""
    with db.lock:
        if store.load(db):
            master, member = _rejoin(db, store, root, master_address,
                                     member_address)
            _resume(db, storage)
        else:
            master, member = hosts.seed(db, root, master_address,
                                        member_address)
        if forget:
            forget_srs(db, storage)
        db.on_commit = store.save
        store.save(db)
    return master, member


def _rejoin(db, store, root, master_address, member_address):
    """The hosts of a loaded database, at the addresses of this run."""
    pools = db.refs('pool')
    if len(pools) != 1 or not db.exists('host', db.get(
            'pool', pools[0])['master']):
        raise persist.CorruptDatabase(store.path, 'no pool with a master')
    master = db.get('pool', pools[0])['master']
    members = [h for h in db.find('host', hostname=MEMBER) if h != master]
    member = members[0] if members else None
    if member_address is None:
        if member is not None:
            LOG.warning('pool member %s is in the database but not '
                        'served in this run', MEMBER)
        member = None
    elif member is None:
        member = hosts.add_host(db, root, MEMBER, member_address)
    for host, address in ((master, master_address),
                          (member, member_address)):
        if host is None:
            continue
        db.update('host', host, address=address)
        for pif in db.find('PIF', host=host):
            db.update('PIF', pif, IP=address)
    return master, member


def _resume(db, storage) -> None:
    for cls, table in db.tables().items():
        if 'current_operations' in schema.SCHEMAS[cls].fields:
            for rec in table.values():
                rec['current_operations'] = {}
    for pbd in db.find('PBD', currently_attached=True):
        rec = db.get('PBD', pbd)
        sr_uuid = db.get('SR', rec['SR'])['uuid']
        try:
            path = os.path.join(storage.nfs_dir(rec['device_config']),
                                sr_uuid)
        except errors.XapiError as exc:
            path, why = None, exc.details
        else:
            why = 'no directory %s' % path
        if path is None or not os.path.isdir(path):
            LOG.warning('SR %s comes back unplugged: %s', sr_uuid, why)
            rec['currently_attached'] = False
            continue
        storage.mount(sr_uuid, path)


def forget_srs(db, storage) -> int:
    """Drop every SR, PBD and VDI record, files kept; how many SRs."""
    with db.lock:
        srs = db.refs('SR')
        for sr in srs:
            sr_uuid = db.get('SR', sr)['uuid']
            if db.find('PBD', SR=sr, currently_attached=True):
                storage.unmount(sr_uuid)
            for pbd in db.find('PBD', SR=sr):
                db.destroy('PBD', pbd)
            for vdi in db.find('VDI', SR=sr):
                vdifiles.drop_record(db, vdi)
            db.destroy('SR', sr)
            LOG.info('SR %s forgotten, its files kept', sr_uuid)
        for pool in db.refs('pool'):
            db.update('pool', pool, default_SR=schema.NULL,
                      suspend_image_SR=schema.NULL,
                      crash_dump_SR=schema.NULL)
        return len(srs)
