"""SR and VDI operations against the test server, files checked."""

import io
import os

import pytest

from tests import xapi_fixture
from tests.unit.xenapi.conftest import make_session
from xenapinfs_driver import exception
from xenapinfs_driver.vhd import ops
from xenapinfs_driver.xenapi import storage
from xenapinfs_driver.xenapi import transfer

SERVER, PATH = xapi_fixture.EXPORT
MiB = 1 << 20


def _sr(session, tag='backend-a'):
    return storage.find_or_create_nfs_sr(session, SERVER, PATH, tag,
                                         'Cinder test')


def _sr_dir(server, sr_uuid):
    return os.path.join(server.root, 'exports', SERVER, PATH.lstrip('/'),
                        sr_uuid)


def _export(session, ref):
    buf = io.BytesIO()
    transfer.export_to_file(session, ref, buf, 'raw')
    return buf.getvalue()


def _write(session, ref, data):
    transfer.import_vdi(session, ref, io.BytesIO(data), len(data), 'raw')


def test_sr_created_once_tagged_and_found_again(xapi_server, session):
    ref, sr_uuid = _sr(session)
    rec = session.call('SR.get_record', ref)
    assert rec['type'] == 'nfs'
    assert rec['other_config'][storage.TAG_KEY] == 'backend-a'
    assert os.path.isdir(_sr_dir(xapi_server, sr_uuid))
    other = make_session(xapi_server).connect()
    try:
        assert _sr(other) == (ref, sr_uuid)
        # another backend on the same export gets its own SR
        assert _sr(other, 'backend-b')[1] != sr_uuid
    finally:
        other.close()
    assert len(session.call('SR.get_all_records_where',
                            'field "type"="nfs"')) == 2


def test_two_srs_with_one_tag_are_refused(session):
    _sr(session)
    sr2 = storage.create_nfs_sr(session, SERVER, PATH, 'x', 'x')
    session.call('SR.remove_from_other_config', sr2, storage.TAG_KEY)
    session.call('SR.add_to_other_config', sr2, storage.TAG_KEY,
                 'backend-a')
    with pytest.raises(exception.XenAPINFSException) as err:
        _sr(session)
    assert '2 SRs' in str(err.value)


def test_restarted_host_gets_the_sr_introduced(tmp_path):
    root = str(tmp_path)
    with xapi_fixture.running_server(root) as srv:
        s = make_session(srv).connect()
        sr, sr_uuid = _sr(s)
        vdi, vdi_uuid = storage.create_vdi(s, sr, 4 * MiB, 'keep')
        _write(s, vdi, b'\x5a' * MiB)
        s.close()
    # Restarted as a host that forgot its SRs (or was rebuilt).
    with xapi_fixture.running_server(root, forget_srs=True) as srv:
        s = make_session(srv).connect()
        try:
            assert storage.sr_by_uuid(s, sr_uuid) is None
            sr, got = storage.find_or_create_nfs_sr(
                s, SERVER, PATH, 'backend-a', 'Cinder test', sr_uuid)
            assert got == sr_uuid
            assert storage.find_sr(s, 'backend-a') == sr
            ref = storage.vdi_by_uuid(s, vdi_uuid)
            assert _export(s, ref)[:MiB] == b'\x5a' * MiB
        finally:
            s.close()


def test_attached_sr_forgets_only_what_it_introduced(xapi_server, session):
    # the old driver's layout: an SR the host forgot after use
    sr, sr_uuid = storage.create_nfs_sr(session, SERVER, PATH, 'old',
                                        'old'), None
    sr_uuid = session.call('SR.get_uuid', sr)
    vdi, vdi_uuid = storage.create_vdi(session, sr, 4 * MiB, 'legacy')
    storage.forget_sr(session, sr)
    assert storage.sr_by_uuid(session, sr_uuid) is None
    with storage.attached_sr(session, sr_uuid, SERVER, PATH) as ref:
        assert storage.vdi_by_uuid(session, vdi_uuid) is not None
        assert session.call('SR.get_uuid', ref) == sr_uuid
    assert storage.sr_by_uuid(session, sr_uuid) is None
    assert os.path.exists(os.path.join(_sr_dir(xapi_server, sr_uuid),
                                       vdi_uuid + '.vhd'))
    mine, mine_uuid = _sr(session)
    with storage.attached_sr(session, mine_uuid, SERVER, PATH) as ref:
        assert ref == mine
    assert storage.sr_by_uuid(session, mine_uuid) == mine


def test_failed_introduce_leaves_nothing(session, control):
    sr = storage.create_nfs_sr(session, SERVER, PATH, 'x', 'x')
    sr_uuid = session.call('SR.get_uuid', sr)
    storage.forget_sr(session, sr)
    control.add_fault('PBD.plug', 'error',
                      error=['SR_BACKEND_FAILURE_73', '', 'mount', ''])
    with pytest.raises(exception.XenAPIError):
        storage.introduce_nfs_sr(session, sr_uuid, SERVER, PATH)
    assert storage.sr_by_uuid(session, sr_uuid) is None
    assert session.call('PBD.get_all_records_where',
                        'field "currently_attached"="false"') == {}


def test_failed_tagging_forgets_the_new_sr(session, control):
    control.add_fault('SR.add_to_other_config', 'error',
                      error=['INTERNAL_ERROR', 'boom'])
    with pytest.raises(exception.XenAPIError):
        _sr(session)
    assert session.call('SR.get_all') == []


def test_vdi_lifecycle_and_copy_on_write(xapi_server, session):
    sr, sr_uuid = _sr(session)
    ref, vol = storage.create_vdi(session, sr, 3 * MiB + 1, 'vol',
                                  other_config={'cinder-volume-id': 'v1'})
    assert int(session.call('VDI.get_virtual_size', ref)) == 4 * MiB
    base = os.urandom(2 * MiB) + bytes(2 * MiB)
    _write(session, ref, base)
    snap, snap_uuid = storage.snapshot_vdi(session, ref, 'snap', 'd')
    rec = session.call('VDI.get_record', snap)
    assert rec['is_a_snapshot'] and rec['name_label'] == 'snap'
    chain = storage.vdi_chain(session, snap)
    assert chain[0] == snap_uuid and len(chain) == 2
    assert storage.vdi_chain(session, ref)[1] == chain[1]
    # the base copy is a real hidden parent on disk
    d = _sr_dir(xapi_server, sr_uuid)
    assert ops.parent_path(os.path.join(d, snap_uuid + '.vhd')) == \
        os.path.join(d, chain[1] + '.vhd')
    _write(session, ref, b'\xff' * MiB)
    assert _export(session, snap) == base
    clone, clone_uuid = storage.clone_vdi(session, snap, 'clone', size=9 * MiB)
    assert int(session.call('VDI.get_virtual_size', clone)) == 10 * MiB
    assert _export(session, clone) == base + bytes(6 * MiB)
    copy, copy_uuid = storage.copy_vdi(session, ref, sr, 'copy')
    assert storage.vdi_chain(session, copy) == [copy_uuid]
    assert _export(session, copy)[:MiB] == b'\xff' * MiB
    storage.grow_vdi(session, ref, 2 * MiB)  # never shrinks
    assert int(session.call('VDI.get_virtual_size', ref)) == 4 * MiB
    for u in (clone_uuid, snap_uuid, vol, copy_uuid):
        assert storage.destroy_vdi(session, u) is True
        assert storage.destroy_vdi(session, u) is False
    assert [f for f in os.listdir(d) if f.endswith('.vhd')] == []


def test_failed_resize_destroys_the_clone(session, control):
    sr, _ = _sr(session)
    ref, _u = storage.create_vdi(session, sr, 4 * MiB, 'vol')
    before = set(session.call('VDI.get_all'))
    control.add_fault('VDI.resize', 'error',
                      error=['SR_BACKEND_FAILURE_44', '', 'no space', ''])
    with pytest.raises(exception.XenAPIError) as err:
        storage.clone_vdi(session, ref, 'clone', size=64 * MiB)
    assert err.value.error == 'SR_BACKEND_FAILURE_44'
    visible = {r for r in session.call('VDI.get_all')
               if session.call('VDI.get_managed', r)}
    assert visible == {r for r in before
                       if session.call('VDI.get_managed', r)}


def test_capacity_figures(session):
    sr, _ = _sr(session)
    storage.create_vdi(session, sr, 64 * MiB, 'a')
    total, used, provisioned = storage.sr_capacity(session, sr)
    assert total > 0 and 0 <= used <= total
    assert provisioned >= 64 * MiB


@pytest.mark.parametrize('size,want', [(1, 2 * MiB), (2 * MiB, 2 * MiB),
                                       (2 * MiB + 1, 4 * MiB)])
def test_round_size(size, want):
    assert storage.round_size(size) == want


class _GcBetweenReads:
    """A session whose first parent lookup comes after a GC pass, as on a
    host whose storage manager coalesces in the background."""

    def __init__(self, session, control, sr):
        self.session, self.control, self.sr = session, control, sr
        self.ran = False

    def call(self, method, *args, **kwargs):
        if method == 'VDI.get_by_uuid' and not self.ran:
            self.ran = True
            assert self.control.gc_run(self.sr), 'GC not done'
        return self.session.call(method, *args, **kwargs)


def test_chain_walk_survives_a_coalesce_between_reads(xapi_server, session):
    sr, _ = _sr(session)
    ref, vol = storage.create_vdi(session, sr, 4 * MiB, 'vol')
    _write(session, ref, os.urandom(MiB))
    snap1, s1 = storage.snapshot_vdi(session, ref, 's1')
    _write(session, ref, os.urandom(MiB))
    storage.snapshot_vdi(session, ref, 's2')
    before = storage.vdi_chain(session, ref)
    assert len(before) == 3
    # The middle base copy is now the only child of the bottom one: the
    # collector folds it away while the walk holds its uuid.
    storage.destroy_vdi(session, s1)
    gc = _GcBetweenReads(session, xapi_fixture.Control(xapi_server), sr)
    chain = storage.vdi_chain(gc, ref)
    assert gc.ran
    assert chain == [vol, before[2]]
