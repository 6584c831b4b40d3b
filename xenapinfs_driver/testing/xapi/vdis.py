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
"""VDIs as VHD files: what a file SR (sm's FileSR) does with them.

* Sizes are rounded up to 2 MiB; at most 2040 GiB (sm's limits).
* ``snapshot`` and ``clone``: the VDI's file becomes a hidden, read-only
  parent under a new uuid (a ``managed`` False "base copy" record); the
  VDI's uuid and ref stay, as a new empty child of it; the new VDI is
  another child. Both carry ``sm_config['vhd-parent']``.
* ``destroy`` removes the file, then each hidden ancestor that no file
  uses any more (see ``vdifiles``). Destroy, snapshot and clone then kick
  the background garbage collector (``collector``), which coalesces.
* Long work (``copy``, HTTP import and export) runs outside the server
  lock; the VDI's ``current_operations`` then holds the operation, and a
  conflicting call fails with ``OTHER_OPERATION_IN_PROGRESS``.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid as uuidlib

from xenapinfs_driver.testing.xapi import db as dbmod
from xenapinfs_driver.testing.xapi import errors
from xenapinfs_driver.testing.xapi import schema
from xenapinfs_driver.testing.xapi import storage as storagemod
from xenapinfs_driver.testing.xapi import vdifiles
from xenapinfs_driver.testing.xapi import vhdio
from xenapinfs_driver.testing.xapi import wire
from xenapinfs_driver.vhd import errors as vhderrors
from xenapinfs_driver.vhd import ops

LOG = logging.getLogger(__name__)
MiB = 1 << 20
ROUND = 2 * MiB
MAX_SIZE = 2040 << 30           # sm's MAX_VHD_SIZE
MAX_CHAIN = 30                  # sm's MAX_CHAIN_SIZE
VDI_TYPES = ('system', 'user', 'ephemeral', 'suspend', 'crashdump',
             'ha_statefile', 'metadata', 'redo_log', 'rrd', 'pvs_cache',
             'cbt_metadata')
SHARED_OPS = ('copy', 'export')     # may run side by side


# -- preconditions and long operations ---------------------------------------

def locate(call, vdi, op: str, managed: bool = True) -> tuple[dict, str]:
    """(record, file) of a VDI ready for op; lock held by the caller."""
    db = call.db
    rec = db.get('VDI', vdi)
    if managed and not rec['managed']:
        raise errors.XapiError('VDI_NOT_MANAGED', vdi)
    path = vdifiles.vhd_path(storagemod.sr_dir(call, rec['SR']),
                             rec['location'])
    if not os.path.isfile(path):
        raise errors.XapiError('VDI_MISSING', rec['SR'], vdi)
    busy = rec['current_operations'].values()
    if busy and (op not in SHARED_OPS or
                 any(o not in SHARED_OPS for o in busy)):
        raise errors.XapiError('OTHER_OPERATION_IN_PROGRESS', 'VDI', vdi)
    return rec, path


def begin(db, vdi, op: str) -> str:
    """Mark a long operation on vdi (after locate); returns its key."""
    key = dbmod.new_ref()
    db.get('VDI', vdi)['current_operations'][key] = op
    return key


def end(db, vdi, key: str) -> None:
    with db.lock:
        if db.exists('VDI', vdi):
            db.get('VDI', vdi)['current_operations'].pop(key, None)


def _attached(db, vdi) -> bool:
    return any(db.get('VBD', b)['currently_attached']
               for b in db.find('VBD', VDI=vdi))


def rounded(size: int) -> int:
    if size < 0 or size > MAX_SIZE:
        raise errors.backend(errors.VDI_SIZE, 'size %d is not between 0 '
                             'and %d' % (size, MAX_SIZE))
    return max(ROUND, -(-size // ROUND) * ROUND)


# -- VDI.* -------------------------------------------------------------------

VDI_RECORD = wire.Record(
    {'SR': wire.SRRef, 'virtual_size': wire.Int, 'type': wire.String,
     'sharable': wire.Bool, 'read_only': wire.Bool,
     'other_config': wire.Map},
    {'name_label': (wire.String, ''), 'name_description': (wire.String, ''),
     'sm_config': (wire.Map, {}), 'xenstore_data': (wire.Map, {}),
     'tags': (wire.Set(wire.String), [])})


def vdi_create(call, args: VDI_RECORD):
    fields = dict(args)
    size = fields.pop('virtual_size')
    fields['type'] = args['type'].lower()
    if fields['type'] not in VDI_TYPES:
        raise errors.XapiError('INVALID_VALUE', 'type', args['type'])
    db = call.db
    with db.lock:
        db.get('SR', args['SR'])
        sr_dir = storagemod.sr_dir(call, args['SR'])
        size = rounded(size)
        vdi_uuid = str(uuidlib.uuid4())
        path = vdifiles.vhd_path(sr_dir, vdi_uuid)
        ops.create(path, size)
        try:
            call.server.storage.check_space(call, os.path.dirname(sr_dir))
        except BaseException:
            os.unlink(path)
            raise
        return db.create('VDI', dict(
            fields, uuid=vdi_uuid, location=vdi_uuid, virtual_size=str(size),
            physical_utilisation=str(os.path.getsize(path))))


def vdi_destroy(call, vdi: wire.VDIRef):
    db = call.db
    with db.lock:
        rec, path = locate(call, vdi, 'destroy')
        if _attached(db, vdi):
            raise errors.XapiError('VDI_IN_USE', vdi, 'destroy')
        parent = vdifiles.file_info(path)['parent']
        os.unlink(path)
        vdifiles.drop_record(db, vdi)
        vdifiles.collect_garbage(db, rec['SR'], os.path.dirname(path),
                                 parent)
    call.server.collector.kick(rec['SR'])
    return ''


def _snapshot(call, vdi, clone: bool) -> str:
    db, storage = call.db, call.server.storage
    with db.lock:
        rec, path = locate(call, vdi, 'clone' if clone else 'snapshot')
        sr_dir = os.path.dirname(path)
        depth = len(ops.chain_of(path, vhdio.MAX_DEPTH))
        if depth >= MAX_CHAIN:
            raise errors.backend(errors.CHAIN_TOO_LONG)
        info = vdifiles.file_info(path)
        base_uuid, new_uuid = str(uuidlib.uuid4()), str(uuidlib.uuid4())
        base = vdifiles.vhd_path(sr_dir, base_uuid)
        new = vdifiles.vhd_path(sr_dir, new_uuid)
        os.rename(path, base)
        try:
            # Hidden before the children record the parent's time stamp.
            ops.set_hidden(base, True)
            ops.create(path, info['size'], parent=base)
            ops.create(new, info['size'], parent=base)
            storage.check_space(call, os.path.dirname(sr_dir))
        except BaseException:
            for p in (new, path):
                if os.path.exists(p):
                    os.unlink(p)
            ops.set_hidden(base, False)
            os.rename(base, path)
            raise
        base_fields = vdifiles.fields(vdifiles.file_info(base))
        db.create('VDI', dict(base_fields, uuid=base_uuid,
                              location=base_uuid, SR=rec['SR'],
                              name_label='base copy', type=rec['type']))
        vdifiles.refresh(db, vdi, path)
        fields = {k: rec[k] for k in ('name_label', 'name_description',
                                      'type', 'sharable', 'xenstore_data',
                                      'tags', 'other_config')}
        fields.update(uuid=new_uuid, location=new_uuid, SR=rec['SR'],
                      read_only=not clone, is_a_snapshot=not clone)
        if not clone:
            fields.update(snapshot_of=vdi, snapshot_time=schema.now())
        ref = db.create('VDI', fields)
        vdifiles.refresh(db, ref, new)
        call.server.collector.kick(rec['SR'])
        return ref


# driver_params: sm's FileSR takes none that change what it does.
def vdi_snapshot(call, vdi: wire.VDIRef, driver_params: wire.Map = {}):
    return _snapshot(call, vdi, clone=False)


def vdi_clone(call, vdi: wire.VDIRef, driver_params: wire.Map = {}):
    return _snapshot(call, vdi, clone=True)


def vdi_copy(call, vdi: wire.VDIRef, sr: wire.SRRef = schema.NULL,
             base_vdi: wire.VDIRef = schema.NULL,
             into_vdi: wire.VDIRef = schema.NULL):
    """A full copy: into a new VDI of sr, or over into_vdi's content.

    base_vdi only tells XAPI which blocks may be skipped; the result is
    the same without it, so it is only checked.
    """
    db = call.db
    with db.lock:
        src, src_path = locate(call, vdi, 'copy')
        if base_vdi != schema.NULL:
            db.get('VDI', base_vdi)
        if into_vdi != schema.NULL:
            into, into_path = locate(call, into_vdi, 'copy_into')
            if int(into['virtual_size']) < int(src['virtual_size']):
                raise errors.XapiError('VDI_TOO_SMALL', into_vdi,
                                       src['virtual_size'])
            target_dir = os.path.dirname(into_path)
            into_key = begin(db, into_vdi, 'copy_into')
        else:
            db.get('SR', sr)
            target_dir = storagemod.sr_dir(call, sr)
            into_key = None
        key = begin(db, vdi, 'copy')
    try:
        if into_key is None:
            return _copy_new(call, vdi, src, src_path, sr, target_dir)
        _copy_into(call, src_path, into_vdi, into_path)
        return into_vdi
    finally:
        end(db, vdi, key)
        if into_key is not None:
            end(db, into_vdi, into_key)


def _copy_new(call, vdi, src, src_path, sr, target_dir) -> str:
    db, storage = call.db, call.server.storage
    new_uuid = str(uuidlib.uuid4())
    # A name no scan picks up until the record exists.
    tmp = os.path.join(target_dir, '.%s.vhd.copy' % new_uuid)
    dest = vdifiles.vhd_path(target_dir, new_uuid)
    try:
        vhdio.flatten(src_path, tmp)
        with db.lock:
            storage.check_space(call, os.path.dirname(target_dir))
            os.rename(tmp, dest)
            fields = {k: src[k] for k in (
                'name_label', 'name_description', 'type', 'sharable',
                'read_only', 'other_config', 'xenstore_data')}
            ref = db.create('VDI', dict(fields, uuid=new_uuid,
                                        location=new_uuid, SR=sr))
            vdifiles.refresh(db, ref, dest)
            return ref
    except vhderrors.VhdError as exc:
        raise errors.XapiError('VDI_IO_ERROR', str(exc)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _copy_into(call, src_path, into_vdi, into_path) -> None:
    db, storage = call.db, call.server.storage
    try:
        rewriter = vhdio.LeafRewriter(into_path)
    except vhderrors.VhdError as exc:
        raise errors.XapiError('VDI_IO_ERROR', str(exc)) from None
    try:
        with vhdio.Chain(src_path) as chain:
            for idx in chain.keys():
                _, data = chain.compose(idx)
                base = idx * chain.block_size
                rewriter.write(base, memoryview(data)[:min(
                    chain.block_size, chain.size - base)])
        rewriter.finish()
        with db.lock:
            storage.check_space(call, os.path.dirname(
                os.path.dirname(into_path)), exclude=[into_path])
            rewriter.commit()
            vdifiles.refresh(db, into_vdi, into_path)
    except vhderrors.VhdError as exc:
        rewriter.abort()
        raise errors.XapiError('VDI_IO_ERROR', str(exc)) from None
    except BaseException:
        rewriter.abort()
        raise


def vdi_resize(call, vdi: wire.VDIRef, size: wire.Int):
    db, storage = call.db, call.server.storage
    with db.lock:
        rec, path = locate(call, vdi, 'resize')
        size = rounded(size)
        current = int(rec['virtual_size'])
        if size < current:
            raise errors.backend(errors.VDI_SIZE, 'shrinking %d to %d is '
                                 'not supported' % (current, size))
        if size == current:
            return ''
        key = begin(db, vdi, 'resize')
    # On a copy, so that a refusal (quota) leaves the file as it was.
    sr_dir = os.path.dirname(path)
    tmp = os.path.join(sr_dir, '.%s.resize' % rec['location'])
    journal = tmp + '.journal'
    try:
        shutil.copyfile(path, tmp)
        ops.resize(tmp, size, journal)
        with db.lock:
            storage.check_space(call, os.path.dirname(sr_dir),
                                exclude=[path])
            os.replace(tmp, path)
            vdifiles.refresh(db, vdi, path)
    except vhderrors.VhdError as exc:
        raise errors.XapiError('VDI_IO_ERROR', str(exc)) from None
    finally:
        end(db, vdi, key)
        for p in (tmp, journal):
            if os.path.exists(p):
                os.unlink(p)
    return ''


def vdi_forget(call, vdi: wire.VDIRef):
    with call.db.lock:
        call.db.get('VDI', vdi)
        vdifiles.drop_record(call.db, vdi)
    return ''


METHODS = {
    'VDI.create': vdi_create,
    'VDI.destroy': vdi_destroy,
    'VDI.snapshot': vdi_snapshot,
    'VDI.clone': vdi_clone,
    'VDI.copy': vdi_copy,
    'VDI.resize': vdi_resize,
    'VDI.resize_online': vdi_resize,
    'VDI.forget': vdi_forget,
}
