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
"""SR and PBD: create, plug, unplug, forget, introduce, scan, destroy,
probe, with the directories and mounts they make checked on disk."""

import os
import uuid
import xml.etree.ElementTree as ET

import pytest
import XenAPI

from tests import xapi_fixture
from tests.unit.testing import httputil as hu
from xenapinfs_driver.vhd import ops

DC = xapi_fixture.DEVICE_CONFIG


def details(exc_info):
    return exc_info.value.details


def export_dir(server):
    return os.path.join(server.root, 'exports', 'nfs.example', 'srv',
                        'cinder')


def mount(server, sr_uuid):
    return os.path.join(server.root, 'var', 'run', 'sr-mount', sr_uuid)


def host(session):
    return session.xenapi.session.get_this_host(session.handle)


@pytest.mark.parametrize('config, kind, expected', [
    (DC, 'lvm', ['SR_UNKNOWN_DRIVER', 'lvm']),
    ({'server': 'nfs.example'}, 'nfs', [
        'SR_BACKEND_FAILURE_101', '',
        'The request is missing the serverpath parameter', '']),
    ({'serverpath': '/srv/cinder'}, 'nfs', [
        'SR_BACKEND_FAILURE_102', '',
        'The request is missing the server parameter', '']),
    ({'server': 'nfs.example', 'serverpath': '/srv/../etc'}, 'NFS',
     'SR_BACKEND_FAILURE_103'),
    ({'server': 'nfs.example', 'serverpath': '/srv/other'}, 'nfs',
     'SR_BACKEND_FAILURE_73'),
    ({'server': 'elsewhere', 'serverpath': '/srv/cinder'}, 'nfs',
     'SR_BACKEND_FAILURE_73'),
])
def test_create_errors(xapi_server, session, config, kind, expected):
    with pytest.raises(XenAPI.Failure) as exc:
        session.xenapi.SR.create(host(session), config, '0', 'x', '', kind,
                                 '', False, {})
    if isinstance(expected, str):
        assert details(exc)[0] == expected
        assert details(exc)[2].startswith(
            'NFS mount error [opterr=' if expected.endswith('73') else
            'The serverpath argument is not valid')
    else:
        assert details(exc) == expected
    assert session.xenapi.SR.get_all() == []
    assert os.listdir(export_dir(xapi_server)) == []


def test_create_plug_forget_introduce(xapi_server, session):
    x = session.xenapi
    sr = x.SR.create(host(session), DC, '0', 'vols', 'desc', 'nfs', 'user',
                     False, {'k': 'v'})
    rec = x.SR.get_record(sr)
    assert (rec['type'], rec['content_type'], rec['shared'],
            rec['name_label'], rec['sm_config']) == (
        'nfs', 'user', False, 'vols', {'k': 'v'})
    sr_uuid = rec['uuid']
    path = os.path.join(export_dir(xapi_server), sr_uuid)
    assert os.path.isdir(path)
    assert os.path.realpath(mount(xapi_server, sr_uuid)) == path
    (pbd,) = rec['PBDs']
    assert x.PBD.get_record(pbd)['currently_attached'] is True
    assert x.PBD.get_device_config(pbd) == DC
    assert int(rec['physical_size']) > 0
    vdi = xapi_fixture.create_vdi(session, sr, 3 << 20, name_label='v')
    vdi_uuid = x.VDI.get_uuid(vdi)
    assert x.SR.get_virtual_allocation(sr) == str(4 << 20)

    with pytest.raises(XenAPI.Failure) as exc:
        x.SR.forget(sr)
    assert details(exc) == ['SR_HAS_PBD', sr]
    x.PBD.plug(pbd)                 # already plugged: nothing happens
    x.PBD.unplug(pbd)
    x.PBD.unplug(pbd)               # already unplugged: nothing either
    assert not os.path.lexists(mount(xapi_server, sr_uuid))
    with pytest.raises(XenAPI.Failure) as exc:
        x.VDI.snapshot(vdi, {})
    assert details(exc) == ['SR_HAS_NO_PBDS', sr]
    x.SR.forget(sr)
    assert x.SR.get_all() == [] and x.PBD.get_all() == []
    assert x.VDI.get_all() == []
    assert os.listdir(path) == ['%s.vhd' % vdi_uuid]

    # What the historical driver did to find a volume again.
    sr2 = x.SR.introduce(sr_uuid, '', '', 'nfs', '', False, {})
    with pytest.raises(XenAPI.Failure) as exc:
        x.SR.introduce(sr_uuid, '', '', 'nfs', '', False, {})
    assert details(exc) == ['SR_UUID_EXISTS', sr_uuid]
    assert x.SR.get_PBDs(sr2) == []
    pbd2 = x.PBD.create({'host': host(session), 'SR': sr2,
                         'device_config': DC})
    with pytest.raises(XenAPI.Failure) as exc:
        x.PBD.create({'host': host(session), 'SR': sr2, 'device_config': DC})
    assert details(exc) == ['PBD_EXISTS', sr2, host(session), pbd2]
    x.PBD.plug(pbd2)                # the first plug scans
    again = x.VDI.get_by_uuid(vdi_uuid)
    assert x.VDI.get_virtual_size(again) == str(4 << 20)
    assert x.VDI.get_name_label(again) == ''    # names are XAPI's, lost
    with pytest.raises(XenAPI.Failure) as exc:
        x.PBD.destroy(pbd2)
    assert details(exc) == ['OPERATION_NOT_ALLOWED',
                            'PBD is currently attached']
    x.PBD.unplug(pbd2)
    x.PBD.destroy(pbd2)
    assert x.SR.get_PBDs(sr2) == []


def test_plug_needs_the_directory(xapi_server, session):
    x = session.xenapi
    sr = x.SR.introduce(str(uuid.uuid4()), '', '', 'nfs', '', False, {})
    pbd = x.PBD.create({'host': host(session), 'SR': sr,
                        'device_config': DC})
    with pytest.raises(XenAPI.Failure) as exc:
        x.PBD.plug(pbd)
    assert details(exc)[0] == 'SR_BACKEND_FAILURE_73'
    assert x.PBD.get_currently_attached(pbd) is False
    with pytest.raises(XenAPI.Failure) as exc:
        x.PBD.create({'host': host(session), 'SR': sr})
    assert details(exc) == ['FIELD_TYPE_ERROR', 'device_config']


def test_destroy(xapi_server, session, sr):
    x = session.xenapi
    sr_uuid = x.SR.get_uuid(sr)
    path = os.path.join(export_dir(xapi_server), sr_uuid)
    vdi = xapi_fixture.create_vdi(session, sr, 2 << 20)
    x.VDI.snapshot(vdi, {})
    (pbd,) = x.SR.get_PBDs(sr)
    with pytest.raises(XenAPI.Failure) as exc:
        x.SR.destroy(sr)
    assert details(exc) == ['SR_HAS_PBD', sr]
    x.PBD.unplug(pbd)
    with pytest.raises(XenAPI.Failure) as exc:
        x.SR.destroy(sr)
    assert details(exc) == ['SR_NOT_EMPTY']
    x.PBD.plug(pbd)
    for v, rec in x.VDI.get_all_records().items():
        if rec['managed']:
            x.VDI.destroy(v)
    assert os.listdir(path) == []       # the base copy went with them
    x.PBD.unplug(pbd)
    x.SR.destroy(sr)
    assert not os.path.exists(path)
    assert x.SR.get_all() == [] and x.PBD.get_all() == []
    orphan = x.SR.introduce('', '', '', 'nfs', '', False, {})
    with pytest.raises(XenAPI.Failure) as exc:
        x.SR.destroy(orphan)
    assert details(exc) == ['SR_HAS_NO_PBDS', orphan]


def test_destroy_refuses_unknown_vdis_on_disk(xapi_server, session, sr):
    x = session.xenapi
    path = os.path.join(export_dir(xapi_server), x.SR.get_uuid(sr))
    ops.create(os.path.join(path, '%s.vhd' % uuid.uuid4()), 2 << 20)
    (pbd,) = x.SR.get_PBDs(sr)
    x.PBD.unplug(pbd)
    with pytest.raises(XenAPI.Failure) as exc:
        x.SR.destroy(sr)
    assert details(exc) == ['SR_BACKEND_FAILURE_39', '',
                            'The SR is not empty', '']


def test_scan(xapi_server, session, sr, caplog):
    x = session.xenapi
    path = os.path.join(export_dir(xapi_server), x.SR.get_uuid(sr))
    base, leaf = str(uuid.uuid4()), str(uuid.uuid4())
    ops.create(os.path.join(path, base + '.vhd'), 8 << 20)
    ops.snapshot(os.path.join(path, leaf + '.vhd'),
                 os.path.join(path, base + '.vhd'))
    with open(os.path.join(path, '%s.vhd' % uuid.uuid4()), 'wb') as f:
        f.write(b'not a vhd' * 100)
    with open(os.path.join(path, 'notes.txt'), 'w') as f:
        f.write('ignored')
    os.mkdir(os.path.join(path, 'staging'))
    x.SR.scan(sr)
    assert 'not a valid VHD' in caplog.text
    recs = {r['uuid']: r for r in x.VDI.get_all_records().values()}
    assert set(recs) == {base, leaf}
    assert recs[base]['managed'] is False and recs[base]['read_only']
    assert recs[leaf]['managed'] is True
    assert recs[leaf]['sm_config'] == {'vhd-parent': base}
    assert recs[leaf]['virtual_size'] == str(8 << 20)
    assert recs[leaf]['location'] == leaf
    leaf_ref = x.VDI.get_by_uuid(leaf)
    x.VDI.set_name_label(leaf_ref, 'kept')
    ops.resize(os.path.join(path, leaf + '.vhd'), 16 << 20,
               os.path.join(path, 'journal'))
    x.SR.scan(sr)
    assert x.VDI.get_by_uuid(leaf) == leaf_ref
    assert x.VDI.get_virtual_size(leaf_ref) == str(16 << 20)
    assert x.VDI.get_name_label(leaf_ref) == 'kept'
    os.unlink(os.path.join(path, leaf + '.vhd'))
    x.SR.scan(sr)
    assert [r['uuid'] for r in x.VDI.get_all_records().values()] == [base]


def test_probe(xapi_server, session, sr):
    x = session.xenapi
    text = x.SR.probe(host(session), DC, 'nfs', {})
    tree = ET.fromstring(text)
    assert tree.tag == 'SRlist'
    assert [e.text for e in tree.iter('UUID')] == [x.SR.get_uuid(sr)]
    with pytest.raises(XenAPI.Failure) as exc:
        x.SR.probe(host(session), {'server': 'nfs.example'}, 'nfs', {})
    assert details(exc)[0] == 'SR_BACKEND_FAILURE_101'
    assert x.SR.get_supported_types() == ['nfs']


def test_vbd_blocks_unplug_and_destroy(xapi_server, session, sr):
    x = session.xenapi
    vdi = xapi_fixture.create_vdi(session, sr, 2 << 20)
    dom0 = list(x.VM.get_all_records_where(
        'field "is_control_domain"="true"'))[0]
    vbd = x.VBD.create({'VM': dom0, 'VDI': vdi, 'userdevice': 'autodetect',
                        'bootable': False, 'mode': 'RW', 'type': 'disk',
                        'empty': False, 'other_config': {},
                        'qos_algorithm_type': '',
                        'qos_algorithm_params': {}})
    x.VBD.plug(vbd)
    assert x.VBD.get_device(vbd) == 'xvda'
    with pytest.raises(XenAPI.Failure) as exc:
        x.VBD.plug(vbd)
    assert details(exc) == ['DEVICE_ALREADY_ATTACHED', vbd]
    (pbd,) = x.SR.get_PBDs(sr)
    with pytest.raises(XenAPI.Failure) as exc:
        x.PBD.unplug(pbd)
    assert details(exc) == ['VDI_IN_USE', vdi]
    with pytest.raises(XenAPI.Failure) as exc:
        x.VDI.destroy(vdi)
    assert details(exc) == ['VDI_IN_USE', vdi, 'destroy']
    with pytest.raises(XenAPI.Failure) as exc:
        x.VBD.destroy(vbd)
    assert details(exc)[0] == 'OPERATION_NOT_ALLOWED'
    assert x.VDI.get_VBDs(vdi) == [vbd]
    x.VBD.unplug(vbd)
    with pytest.raises(XenAPI.Failure) as exc:
        x.VBD.unplug(vbd)
    assert details(exc) == ['DEVICE_ALREADY_DETACHED', vbd]
    x.VBD.destroy(vbd)
    x.VDI.destroy(vdi)
    x.PBD.unplug(pbd)


def test_vbd_create_checks_every_field(session, sr):
    x = session.xenapi
    vdi = xapi_fixture.create_vdi(session, sr, 2 << 20)
    dom0 = list(x.VM.get_all_records_where(
        'field "is_control_domain"="true"'))[0]
    record = {'VM': dom0, 'VDI': vdi, 'userdevice': '0', 'bootable': False,
              'mode': 'RW', 'type': 'disk', 'empty': False,
              'other_config': {}, 'qos_algorithm_type': '',
              'qos_algorithm_params': {}}
    # These were taken as they came, or turned into strings.
    for key, value in (('other_config', {'a': 1}), ('userdevice', 0),
                       ('mode', 1), ('unpluggable', 'yes')):
        with pytest.raises(XenAPI.Failure) as exc:
            x.VBD.create(dict(record, **{key: value}))
        assert details(exc) == ['FIELD_TYPE_ERROR', key]
    assert x.VBD.get_all() == []


def test_shared_pbds_keep_their_own_maps():
    with xapi_fixture.running_server(
            slave_listen=('127.0.0.2', 0)) as server:
        session = xapi_fixture.login(server)
        x = session.xenapi
        sr = xapi_fixture.create_sr(session, shared=True)
        one, two = x.SR.get_PBDs(sr)
        # device_config has only the explicit setter (it is not RW).
        x.PBD.set_device_config(one, dict(x.PBD.get_device_config(one),
                                          k='v'))
        x.PBD.add_to_other_config(one, 'k', 'v')
        assert 'k' not in x.PBD.get_device_config(two)
        assert x.PBD.get_other_config(two) == {}


def test_quota_is_the_physical_size():
    with xapi_fixture.running_server(sr_size=64 << 20) as server:
        session = xapi_fixture.login(server)
        sr = xapi_fixture.create_sr(session)
        assert session.xenapi.SR.get_physical_size(sr) == str(64 << 20)
        before = int(session.xenapi.SR.get_physical_utilisation(sr))
        xapi_fixture.create_vdi(session, sr, 10 << 20)
        after = int(session.xenapi.SR.get_physical_utilisation(sr))
        assert 0 < after - before < 1 << 20


def test_restart_forgetting_the_srs(tmp_path):
    root = str(tmp_path / 'root')
    disk = hu.pattern(4 << 20, seed=11)
    with xapi_fixture.running_server(root) as server:
        host_uuid = server.host_uuid
        session = xapi_fixture.login(server)
        sr = xapi_fixture.create_sr(session)
        sr_uuid = session.xenapi.SR.get_uuid(sr)
        vdi = xapi_fixture.create_vdi(session, sr, 4 << 20)
        vdi_uuid = session.xenapi.VDI.get_uuid(vdi)
        hu.import_data(server, session, vdi, disk)
    with xapi_fixture.running_server(root, forget_srs=True) as server:
        assert server.host_uuid == host_uuid
        session = xapi_fixture.login(server)
        x = session.xenapi
        with pytest.raises(XenAPI.Failure) as exc:
            x.SR.get_by_uuid(sr_uuid)
        assert details(exc) == ['UUID_INVALID', 'SR', sr_uuid]
        sr = x.SR.introduce(sr_uuid, 'again', '', 'nfs', '', False, {})
        pbd = x.PBD.create({'host': host(session), 'SR': sr,
                            'device_config': DC})
        x.PBD.plug(pbd)
        vdi = x.VDI.get_by_uuid(vdi_uuid)
        assert hu.export_data(server, session, vdi) == disk
