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
"""VDI calls and the VHD files they leave, read back by our reader,
qemu-img (dynamic files) and libvhdi (chains)."""

import json
import os
import subprocess
import threading

import pytest
import XenAPI

from tests import xapi_fixture
from tests.unit.testing import httputil as hu
from tests.unit.vhd import vhdcheck
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import ops

MiB = 1 << 20
DIFF, DYN = fmt.DISK_DIFFERENCING, fmt.DISK_DYNAMIC


def details(exc_info):
    return exc_info.value.details


def qemu_info(path) -> dict:
    if vhdcheck.QEMU_IMG is None:
        pytest.skip('qemu-img is not installed')
    out = subprocess.run([vhdcheck.QEMU_IMG, 'info', '--output=json', '-f',
                          'vpc', path], check=True, capture_output=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize('asked, size', [
    (1, 2 * MiB), (2 * MiB, 2 * MiB), (5 * MiB + 1, 6 * MiB), (0, 2 * MiB)])
def test_create_rounds_to_2mib(xapi_server, session, sr, asked, size):
    vdi = xapi_fixture.create_vdi(session, sr, asked, name_label='n',
                                  other_config={'a': 'b'}, tags=['t'])
    rec = session.xenapi.VDI.get_record(vdi)
    assert rec['virtual_size'] == str(size)
    assert (rec['name_label'], rec['other_config'], rec['tags'],
            rec['type'], rec['managed'], rec['location']) == (
        'n', {'a': 'b'}, ['t'], 'user', True, rec['uuid'])
    path = hu.vdi_file(xapi_server, session, vdi)
    assert rec['physical_utilisation'] == str(os.path.getsize(path))
    vhdcheck.assert_tap(path, size)
    assert qemu_info(path)['virtual-size'] == size
    vhdcheck.qemu_converted(path, b'', size)


@pytest.mark.parametrize('change, expected', [
    ({'SR': None}, ['FIELD_TYPE_ERROR', 'SR']),
    ({'virtual_size': 1 << 20}, ['FIELD_TYPE_ERROR', 'virtual_size']),
    ({'virtual_size': 'big'}, ['FIELD_TYPE_ERROR', 'virtual_size']),
    ({'type': 'disk'}, ['INVALID_VALUE', 'type', 'disk']),
    ({'sharable': 'no'}, ['FIELD_TYPE_ERROR', 'sharable']),
    ({'virtual_size': str(3 << 40)}, 'SR_BACKEND_FAILURE_79'),
    ({'SR': 'OpaqueRef:x'}, ['HANDLE_INVALID', 'SR', 'OpaqueRef:x']),
])
def test_create_errors(session, sr, change, expected):
    record = {'SR': sr, 'virtual_size': str(MiB), 'type': 'User',
              'sharable': False, 'read_only': False, 'other_config': {}}
    record.update(change)
    if change.get('SR', 1) is None:
        del record['SR']
    with pytest.raises(XenAPI.Failure) as exc:
        session.xenapi.VDI.create(record)
    if isinstance(expected, str):
        assert details(exc)[0] == expected
    else:
        assert details(exc) == expected
    assert session.xenapi.VDI.get_all() == []


def test_snapshot_and_clone_make_chains(xapi_server, session, sr):
    x = session.xenapi
    size = 8 * MiB
    vdi = xapi_fixture.create_vdi(session, sr, size, name_label='vol',
                                  other_config={'k': 'v'})
    disk = hu.pattern(size, seed=1)
    hu.import_data(xapi_server, session, vdi, disk)
    vdi_uuid = x.VDI.get_uuid(vdi)
    snap = x.VDI.snapshot(vdi, {})

    leaf = hu.vdi_file(xapi_server, session, vdi)
    snap_file = hu.vdi_file(xapi_server, session, snap)
    assert x.VDI.get_uuid(vdi) == vdi_uuid      # the ref and uuid stay
    chain = ops.chain_of(leaf)
    assert ops.chain_of(snap_file)[1:] == chain[1:]
    assert len(chain) == 2
    base_uuid = os.path.basename(chain[1])[:-4]
    assert x.VDI.get_sm_config(vdi) == {'vhd-parent': base_uuid}
    assert x.VDI.get_sm_config(snap) == {'vhd-parent': base_uuid}
    base = x.VDI.get_by_uuid(base_uuid)
    brec = x.VDI.get_record(base)
    assert (brec['managed'], brec['read_only'], brec['name_label']) == (
        False, True, 'base copy')
    srec = x.VDI.get_record(snap)
    assert (srec['is_a_snapshot'], srec['snapshot_of'], srec['read_only'],
            srec['name_label'], srec['other_config']) == (
        True, vdi, True, 'vol', {'k': 'v'})
    assert srec['snapshot_time'].value > '2000'
    assert x.VDI.get_snapshots(vdi) == [snap]
    vhdcheck.assert_tap(leaf, size, DIFF)
    vhdcheck.assert_tap(snap_file, size, DIFF)
    vhdcheck.assert_tap(chain[1], size, DYN, leaf=False)
    vhdcheck.chain_inspected([leaf, chain[1]])
    vhdcheck.chain_converted([snap_file, chain[1]], disk)
    vhdcheck.converted(chain[1], disk)
    assert vhdcheck.libvhdi_read([leaf, chain[1]], size) == disk

    clone = x.VDI.clone(snap, {})
    crec = x.VDI.get_record(clone)
    assert (crec['is_a_snapshot'], crec['read_only'], crec['managed']) == (
        False, False, True)
    clone_file = hu.vdi_file(xapi_server, session, clone)
    cchain = ops.chain_of(clone_file)
    assert len(cchain) == 3 and cchain[2] == chain[1]
    assert ops.chain_of(snap_file) == [snap_file] + cchain[1:]
    assert vhdcheck.libvhdi_read(cchain, size) == disk
    with image.VhdFile(cchain[1]) as mid:
        assert mid.footer.hidden == 1


def test_chain_too_long(xapi_server, session, sr):
    x = session.xenapi
    vdi = xapi_fixture.create_vdi(session, sr, 2 * MiB)
    for _ in range(29):
        x.VDI.snapshot(vdi, {})
    assert len(ops.chain_of(hu.vdi_file(xapi_server, session, vdi))) == 30
    with pytest.raises(XenAPI.Failure) as exc:
        x.VDI.snapshot(vdi, {})
    assert details(exc) == ['SR_BACKEND_FAILURE_109', '',
                            'The snapshot chain is too long', '']


def test_destroy_collects_base_copies(xapi_server, session, sr):
    x = session.xenapi
    vdi = xapi_fixture.create_vdi(session, sr, 4 * MiB)
    snap = x.VDI.snapshot(vdi, {})
    snap2 = x.VDI.snapshot(vdi, {})
    sr_dir = os.path.dirname(hu.vdi_file(xapi_server, session, vdi))
    assert len(os.listdir(sr_dir)) == 5
    bases = [r for r, v in x.VDI.get_all_records().items()
             if not v['managed']]
    with pytest.raises(XenAPI.Failure) as exc:
        x.VDI.destroy(bases[0])
    assert details(exc) == ['VDI_NOT_MANAGED', bases[0]]
    x.VDI.destroy(vdi)
    # The newest base keeps snap2; the oldest keeps snap and that base.
    assert len(os.listdir(sr_dir)) == 4
    x.VDI.destroy(snap2)
    assert len(os.listdir(sr_dir)) == 2
    assert sorted(v['managed'] for v in x.VDI.get_all_records().values()
                  ) == [False, True]
    x.VDI.destroy(snap)
    assert os.listdir(sr_dir) == [] and x.VDI.get_all() == []
    with pytest.raises(XenAPI.Failure) as exc:
        x.VDI.destroy(snap)
    assert details(exc) == ['HANDLE_INVALID', 'VDI', snap]


def test_copy(xapi_server, session, sr):
    x = session.xenapi
    size = 6 * MiB
    vdi = xapi_fixture.create_vdi(session, sr, size, name_label='src')
    disk = hu.pattern(size, seed=2)
    hu.import_data(xapi_server, session, vdi, disk)
    x.VDI.snapshot(vdi, {})
    top = bytearray(disk)
    top[MiB:MiB + 8192] = b'\x5a' * 8192
    hu.import_data(xapi_server, session, vdi, bytes(top))
    other_sr = xapi_fixture.create_sr(session, name='other')
    copy = x.VDI.copy(vdi, other_sr)
    rec = x.VDI.get_record(copy)
    assert (rec['SR'], rec['name_label'], rec['virtual_size'],
            rec['managed'], rec['sm_config']) == (
        other_sr, 'src', str(size), True, {})
    path = hu.vdi_file(xapi_server, session, copy)
    vhdcheck.assert_tap(path, size)
    assert qemu_info(path)['format'] == 'vpc'
    vhdcheck.qemu_converted(path, bytes(top))
    # Into an existing, bigger VDI: its old data goes, zeros after.
    into = xapi_fixture.create_vdi(session, sr, 10 * MiB)
    hu.import_data(xapi_server, session, into, hu.pattern(10 * MiB, 9,
                                                          holes=False))
    assert x.VDI.copy(copy, '', 'OpaqueRef:NULL', into) == into
    assert hu.export_data(xapi_server, session, into) == bytes(top) + bytes(
        4 * MiB)
    small = xapi_fixture.create_vdi(session, sr, 2 * MiB)
    with pytest.raises(XenAPI.Failure) as exc:
        x.VDI.copy(vdi, sr, 'OpaqueRef:NULL', small)
    assert details(exc) == ['VDI_TOO_SMALL', small, str(size)]


def test_resize(xapi_server, session, sr):
    x = session.xenapi
    vdi = xapi_fixture.create_vdi(session, sr, 4 * MiB)
    disk = hu.pattern(4 * MiB, seed=3)
    hu.import_data(xapi_server, session, vdi, disk)
    x.VDI.snapshot(vdi, {})
    with pytest.raises(XenAPI.Failure) as exc:
        x.VDI.resize(vdi, str(2 * MiB))
    assert details(exc)[:2] == ['SR_BACKEND_FAILURE_79', '']
    assert details(exc)[2].startswith('VDI Invalid size')
    x.VDI.resize(vdi, str(4 * MiB))             # the same: nothing to do
    # Past what the BAT holds: it grows, the data stays.
    x.VDI.resize_online(vdi, str(600 * MiB + 5))
    new = 602 * MiB
    assert x.VDI.get_virtual_size(vdi) == str(new)
    path = hu.vdi_file(xapi_server, session, vdi)
    assert ops.get_size(path) == new
    vhdcheck.chain_converted(ops.chain_of(path), disk, new)
    sr_dir = os.path.dirname(path)
    assert not [n for n in os.listdir(sr_dir) if not n.endswith('.vhd')]
    with pytest.raises(XenAPI.Failure) as exc:
        x.VDI.resize(vdi, 600)
    assert details(exc) == ['FIELD_TYPE_ERROR', 'size']


def test_forget_keeps_the_file(xapi_server, session, sr):
    x = session.xenapi
    vdi = xapi_fixture.create_vdi(session, sr, 2 * MiB)
    path = hu.vdi_file(xapi_server, session, vdi)
    vdi_uuid = x.VDI.get_uuid(vdi)
    x.VDI.forget(vdi)
    assert x.VDI.get_all() == [] and os.path.exists(path)
    x.SR.scan(sr)
    assert x.VDI.get_uuid(x.VDI.get_by_uuid(vdi_uuid)) == vdi_uuid


def test_concurrent_calls_keep_records_and_files_in_step(xapi_server, sr):
    errors = []

    def worker(n):
        try:
            s = xapi_fixture.login(xapi_server, originator='w%d' % n)
            x = s.xenapi
            for i in range(4):
                vdi = xapi_fixture.create_vdi(s, sr, (i + 1) * MiB)
                snap = x.VDI.snapshot(vdi, {})
                clone = x.VDI.clone(snap, {})
                x.VDI.destroy(vdi if i % 2 else snap)
                x.SR.scan(sr)
                x.VDI.get_record(clone)
            s.xenapi.session.logout()
        except Exception as exc:        # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    session = xapi_fixture.login(xapi_server)
    x = session.xenapi
    before = {r['uuid']: r['managed'] for r in
              x.VDI.get_all_records().values()}
    assert sum(before.values()) == 6 * 4 * 2
    x.SR.scan(sr)
    after = {r['uuid']: r['managed'] for r in
             x.VDI.get_all_records().values()}
    assert after == before
    sr_dir = os.path.dirname(hu.vdi_file(xapi_server, session,
                                         x.VDI.get_all()[0]))
    assert sorted(n[:-4] for n in os.listdir(sr_dir)) == sorted(before)
