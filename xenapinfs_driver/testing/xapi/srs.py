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
"""SR and PBD calls, with XAPI's (``xapi_sr.ml``, ``xapi_pbd.ml``) rules.

* ``SR.forget`` and ``SR.destroy`` refuse while a PBD is plugged
  (``SR_HAS_PBD [sr]``); ``SR.destroy`` also needs a PBD to find the
  storage (``SR_HAS_NO_PBDS [sr]``) and no managed VDI
  (``SR_NOT_EMPTY``). Forget keeps the files; destroy removes them.
* ``PBD.plug`` of a plugged PBD and ``PBD.unplug`` of an unplugged one
  do nothing, as in XAPI; unplug refuses while a VDI of the SR has a
  plugged VBD (``VDI_IN_USE [vdi...]``); ``PBD.destroy`` of a plugged PBD
  is ``OPERATION_NOT_ALLOWED ['PBD is currently attached']``.
* The first plug of an SR scans it, so a re-introduced SR shows its VDIs.
* ``SR.probe`` answers as sm's NFS driver does (see ``probe``).
"""

from __future__ import annotations

import logging
import os
import shutil

from xenapinfs_driver.testing.xapi import errors
from xenapinfs_driver.testing.xapi import probe
from xenapinfs_driver.testing.xapi import storage as storagemod
from xenapinfs_driver.testing.xapi import vdifiles
from xenapinfs_driver.testing.xapi import wire

LOG = logging.getLogger(__name__)


def sr_create(call, host: wire.HostRef, device_config: wire.Map,
              physical_size: wire.Int, name_label: wire.String,
              name_description: wire.String, type: wire.String,
              content_type: wire.String, shared: wire.Bool,
              sm_config: wire.Map = {}):   # never changed: create copies
    db, storage = call.db, call.server.storage
    db.get('host', host)
    sr_type = type.lower()
    if sr_type != 'nfs':
        raise errors.XapiError('SR_UNKNOWN_DRIVER', sr_type)
    with db.lock:
        export = storage.nfs_dir(device_config)
        sr = db.create('SR', {
            'name_label': name_label, 'name_description': name_description,
            'type': sr_type, 'content_type': content_type, 'shared': shared,
            'sm_config': sm_config})
        sr_uuid = db.get('SR', sr)['uuid']
        path = os.path.join(export, sr_uuid)
        try:
            os.mkdir(path)
            storage.check_space(call, export)
        except BaseException:
            db.destroy('SR', sr)
            if os.path.isdir(path):
                os.rmdir(path)
            raise
        hosts = db.refs('host') if shared else [host]
        pbds = [db.create('PBD', {'host': h, 'SR': sr,
                                  'device_config': device_config})
                for h in hosts]
        for pbd in pbds:
            _plug(call, pbd)
        LOG.info('SR %s created in %s', sr_uuid, path)
        return sr


def sr_introduce(call, uuid: wire.String, name_label: wire.String,
                 name_description: wire.String, type: wire.String,
                 content_type: wire.String, shared: wire.Bool,
                 sm_config: wire.Map = {}):    # never changed, as above
    db = call.db
    with db.lock:
        if uuid and db.find('SR', uuid=uuid):
            raise errors.XapiError('SR_UUID_EXISTS', uuid)
        if uuid and not storagemod.UUID_RE.match(uuid):
            raise errors.XapiError('INVALID_VALUE', 'uuid', uuid)
        return db.create('SR', {
            'uuid': uuid, 'name_label': name_label,
            'name_description': name_description, 'type': type.lower(),
            'content_type': content_type, 'shared': shared,
            'sm_config': sm_config, 'physical_size': '-1',
            'physical_utilisation': '-1'})


def _assert_unplugged(db, sr) -> None:
    if db.find('PBD', SR=sr, currently_attached=True):
        raise errors.XapiError('SR_HAS_PBD', sr)


def _drop_records(db, sr) -> None:
    for pbd in db.find('PBD', SR=sr):
        db.destroy('PBD', pbd)
    for vdi in db.find('VDI', SR=sr):
        vdifiles.drop_record(db, vdi)
    db.destroy('SR', sr)


def sr_forget(call, sr: wire.SRRef):
    db = call.db
    with db.lock:
        db.get('SR', sr)
        _assert_unplugged(db, sr)
        _drop_records(db, sr)
    return ''


def sr_destroy(call, sr: wire.SRRef):
    db = call.db
    with db.lock:
        rec = db.get('SR', sr)
        _assert_unplugged(db, sr)
        pbds = db.find('PBD', SR=sr)
        if not pbds:
            raise errors.XapiError('SR_HAS_NO_PBDS', sr)
        if any(db.get('VDI', v)['managed'] for v in db.find('VDI', SR=sr)):
            raise errors.XapiError('SR_NOT_EMPTY')
        export = call.server.storage.nfs_dir(
            db.get('PBD', pbds[0])['device_config'])
        path = os.path.join(export, rec['uuid'])
        if os.path.isdir(path):
            visible = [v for v, info in vdifiles.survey(path).items()
                       if not info['hidden']]
            if visible:
                # sm's FileSR.delete finds VDIs XAPI has no record of.
                raise errors.XapiError('SR_BACKEND_FAILURE_39', '',
                                       'The SR is not empty', '')
            shutil.rmtree(path)
        else:
            LOG.warning('SR %s: %s was already gone', rec['uuid'], path)
        _drop_records(db, sr)
        LOG.info('SR %s destroyed', rec['uuid'])
    return ''


def sr_scan(call, sr: wire.SRRef):
    with call.db.lock:
        vdifiles.scan(call, sr, storagemod.sr_dir(call, sr))
    call.server.collector.kick(sr)
    return ''


def sr_probe(call, host: wire.HostRef, device_config: wire.Map,
             type: wire.String, sm_config: wire.Map = {}):   # unread
    call.db.get('host', host)
    if type.lower() != 'nfs':
        raise errors.XapiError('SR_UNKNOWN_DRIVER', type.lower())
    return probe.srlist(call.server.storage, device_config)


def sr_get_supported_types(call):
    return ['nfs']


# -- PBD ---------------------------------------------------------------------

PBD_RECORD = wire.Record(
    {'host': wire.HostRef, 'SR': wire.SRRef,
     'device_config': wire.Map},
    {'other_config': (wire.Map, {})})


def pbd_create(call, args: PBD_RECORD):
    db = call.db
    with db.lock:
        db.get('host', args['host'])
        db.get('SR', args['SR'])
        for pbd in db.find('PBD', SR=args['SR'], host=args['host']):
            raise errors.XapiError('PBD_EXISTS', args['SR'], args['host'],
                                   pbd)
        return db.create('PBD', args)


def _plug(call, pbd) -> None:
    db, storage = call.db, call.server.storage
    rec = db.get('PBD', pbd)
    if rec['currently_attached']:
        return
    sr = rec['SR']
    sr_rec = db.get('SR', sr)
    if sr_rec['type'] != 'nfs':
        raise errors.XapiError('SR_UNKNOWN_DRIVER', sr_rec['type'])
    others = db.find('PBD', SR=sr, currently_attached=True)
    if not sr_rec['shared'] and any(db.get('PBD', p)['host'] != rec['host']
                                    for p in others):
        raise errors.XapiError('SR_NOT_SHARABLE', sr,
                               db.get('PBD', others[0])['host'])
    path = os.path.join(storage.nfs_dir(rec['device_config']),
                        sr_rec['uuid'])
    if not os.path.isdir(path):
        raise errors.backend(errors.NFS_MOUNT, 'mount.nfs: %s: no such '
                             'directory' % sr_rec['uuid'])
    storage.mount(sr_rec['uuid'], path)
    rec['currently_attached'] = True
    if not others:
        # What a crash left half done is put right before the scan reads it.
        call.server.collector.recover(path)
        vdifiles.scan(call, sr, path)
        call.server.collector.kick(sr)


def pbd_plug(call, pbd: wire.PBDRef):
    with call.db.lock:
        _plug(call, pbd)
    return ''


def pbd_unplug(call, pbd: wire.PBDRef):
    db = call.db
    with db.lock:
        rec = db.get('PBD', pbd)
        if not rec['currently_attached']:
            return ''
        sr = rec['SR']
        busy = [v for v in db.find('VDI', SR=sr)
                if any(db.get('VBD', b)['currently_attached'] and
                       db.get('VM', db.get('VBD', b)['VM'])['resident_on']
                       == rec['host'] for b in db.find('VBD', VDI=v))]
        if busy:
            raise errors.XapiError('VDI_IN_USE', *busy)
        rec['currently_attached'] = False
        if not db.find('PBD', SR=sr, currently_attached=True):
            call.server.storage.unmount(db.get('SR', sr)['uuid'])
    return ''


def pbd_destroy(call, pbd: wire.PBDRef):
    db = call.db
    with db.lock:
        if db.get('PBD', pbd)['currently_attached']:
            raise errors.not_allowed('PBD is currently attached')
        db.destroy('PBD', pbd)
    return ''


METHODS = {
    'SR.create': sr_create,
    'SR.introduce': sr_introduce,
    'SR.forget': sr_forget,
    'SR.destroy': sr_destroy,
    'SR.scan': sr_scan,
    'SR.probe': sr_probe,
    'SR.get_supported_types': sr_get_supported_types,
    'PBD.create': pbd_create,
    'PBD.plug': pbd_plug,
    'PBD.unplug': pbd_unplug,
    'PBD.destroy': pbd_destroy,
}
