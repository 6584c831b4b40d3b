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
"""The storage manager's garbage collector: chains built with snapshot,
clone and destroy through the XenAPI client shrink again, every VDI
keeps its uuid and data (judged by qemu-img, libvhdi and our reader)."""

import http.client
import os
import time
import urllib.parse

import pytest

from tests import xapi_fixture
from tests.unit.testing import gcutil
from tests.unit.testing import httputil
from tests.unit.vhd import vhdcheck
from xenapinfs_driver.vhd import ops

SIZE = gcutil.SIZE


@pytest.fixture
def gc_server():
    # A quota: the SR's utilisation is then the sum of its files.
    with xapi_fixture.running_server(gc='off', sr_size=1 << 30) as server:
        yield server


@pytest.fixture
def vols(gc_server):
    session = xapi_fixture.login(gc_server)
    sr = xapi_fixture.create_sr(session)
    yield gcutil.Volumes(gc_server.root, session, sr)
    session.xenapi.session.logout()


def run(server, vols):
    assert xapi_fixture.Control(server).gc_run(vols.sr), 'GC not done'


def test_non_leaf_then_leaf_coalesce(gc_server, vols):
    x = vols.x
    vol = vols.create()
    vol_uuid = x.VDI.get_uuid(vol)
    vols.write(vol)
    snap1 = vols.snapshot(vol)
    vols.write(vol)
    snap2 = vols.snapshot(vol)
    vols.write(vol)
    assert vols.check() == {vol_uuid: 3, x.VDI.get_uuid(snap1): 2,
                            x.VDI.get_uuid(snap2): 3}
    base1 = x.VDI.get_sm_config(snap1)['vhd-parent']
    base2 = x.VDI.get_sm_config(snap2)['vhd-parent']
    run(gc_server, vols)
    assert len(vols.files()) == 5, 'nothing to collect yet'

    # The first base keeps only the second: it is coalesced into it.
    vols.destroy(snap1)
    assert len(vols.files()) == 4
    before = int(x.SR.get_physical_utilisation(vols.sr))
    run(gc_server, vols)
    assert vols.files() == sorted(['%s.vhd' % u for u in (
        base1, vol_uuid, x.VDI.get_uuid(snap2))])
    assert vols.check() == {vol_uuid: 2, x.VDI.get_uuid(snap2): 2}
    assert x.VDI.get_sm_config(snap2)['vhd-parent'] == base1
    assert x.VDI.get_sm_config(vol)['vhd-parent'] == base1
    with pytest.raises(Exception):
        x.VDI.get_by_uuid(base2)
    assert vols.base_copies() == 1
    assert int(x.SR.get_physical_utilisation(vols.sr)) < before
    base_rec = x.VDI.get_record(x.VDI.get_by_uuid(base1))
    assert int(base_rec['physical_utilisation']) == \
        os.path.getsize(vols.path(base1))

    # The volume is the base's only child: it takes the base's file.
    vols.destroy(snap2)
    run(gc_server, vols)
    assert vols.files() == ['%s.vhd' % vol_uuid]
    assert vols.check() == {vol_uuid: 1}
    assert x.VDI.get_by_uuid(vol_uuid) == vol
    rec = x.VDI.get_record(vol)
    assert 'vhd-parent' not in rec['sm_config']
    assert rec['managed'] and not rec['is_a_snapshot']
    assert int(rec['physical_utilisation']) == \
        os.path.getsize(vols.path(vol_uuid))
    assert vols.base_copies() == 0
    assert len(x.VDI.get_all()) == 1


def test_snapshot_keeps_its_uuid_when_the_volume_goes(gc_server, vols):
    x = vols.x
    vol = vols.create()
    vols.write(vol)
    snap = vols.snapshot(vol)
    snap_uuid = x.VDI.get_uuid(snap)
    vols.write(vol)
    vols.destroy(vol)
    run(gc_server, vols)
    assert vols.files() == ['%s.vhd' % snap_uuid]
    assert vols.check() == {snap_uuid: 1}
    rec = x.VDI.get_record(snap)
    assert rec['is_a_snapshot'] and rec['read_only']


def test_clones_share_a_base_until_one_goes(gc_server, vols):
    x = vols.x
    vol = vols.create()
    vols.write(vol)
    clone = vols.snapshot(vol, clone=True)
    vols.write(clone)
    vols.write(vol)
    run(gc_server, vols)
    assert vols.check() == {x.VDI.get_uuid(vol): 2,
                            x.VDI.get_uuid(clone): 2}
    assert len(vols.files()) == 3, 'a shared base stays'
    vols.destroy(vol)
    run(gc_server, vols)
    assert vols.check() == {x.VDI.get_uuid(clone): 1}
    assert len(vols.files()) == 1


def test_leaf_coalesce_policy(gc_server, vols):
    x = vols.x
    vol = vols.create()
    vols.write(vol)
    x.VDI.add_to_other_config(vol, 'leaf-coalesce', 'false')
    vols.destroy(vols.snapshot(vol))
    run(gc_server, vols)
    assert vols.check() == {x.VDI.get_uuid(vol): 2}
    x.VDI.remove_from_other_config(vol, 'leaf-coalesce')
    x.SR.add_to_other_config(vols.sr, 'coalesce', 'false')
    run(gc_server, vols)
    assert vols.check() == {x.VDI.get_uuid(vol): 2}
    x.SR.remove_from_other_config(vols.sr, 'coalesce')
    run(gc_server, vols)
    assert vols.check() == {x.VDI.get_uuid(vol): 1}


def test_resized_leaf_is_coalesced_into_a_smaller_base(gc_server, vols):
    x = vols.x
    vol = vols.create()
    vols.write(vol)
    vols.destroy(vols.snapshot(vol))
    x.VDI.resize(vol, str(2 * SIZE))
    uuid = x.VDI.get_uuid(vol)
    vols.model[uuid].extend(bytes(SIZE))
    run(gc_server, vols)
    assert vols.check() == {uuid: 1}
    assert x.VDI.get_virtual_size(vol) == str(2 * SIZE)


def test_forty_snapshot_rounds_keep_the_depth_bounded():
    with xapi_fixture.running_server(gc='auto', gc_delay=0.0) as server:
        session = xapi_fixture.login(server)
        vols = gcutil.Volumes(server.root, session,
                              xapi_fixture.create_sr(session), seed=40)
        control = xapi_fixture.Control(server)
        vol = vols.create()
        uuid = vols.x.VDI.get_uuid(vol)
        for round_ in range(40):
            vols.write(vol, count=2)
            snap = vols.snapshot(vol)
            vols.write(vol, count=2)
            vols.destroy(snap)
            assert control.gc_wait(), 'the GC did not settle'
            depth = ops.chain_of(vols.path(uuid), 64)
            assert len(depth) == 1, (round_, depth)
            if round_ % 10 == 9:
                assert vols.check() == {uuid: 1}
        assert vols.files() == ['%s.vhd' % uuid]


def _held_import(server, session, vdi):
    """A PUT /import_raw_vdi that has begun and sends nothing yet."""
    parts = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port,
                                      timeout=30)
    qs = urllib.parse.urlencode({'session_id': session.handle, 'vdi': vdi,
                                 'format': 'raw'})
    conn.putrequest('PUT', '/import_raw_vdi?' + qs)
    conn.putheader('Content-Length', str(SIZE))
    conn.endheaders()
    return conn


def test_a_busy_chain_is_left_alone(gc_server, vols):
    x = vols.x
    control = xapi_fixture.Control(gc_server)
    vol = vols.create()
    vols.write(vol)
    vols.destroy(vols.snapshot(vol))
    other = vols.create()
    vols.write(other)
    vols.destroy(vols.snapshot(other))
    conn = _held_import(gc_server, vols.session, vol)
    try:
        deadline = time.monotonic() + 10
        while not x.VDI.get_current_operations(vol):
            assert time.monotonic() < deadline, 'the import never began'
            time.sleep(0.02)
        files = {u: vhdcheck.sha(vols.path(u)) for u in
                 [n[:-4] for n in vols.files()]}
        assert not control.gc_run(vols.sr, 0.5)
        uuid = x.VDI.get_uuid(vol)
        # The other chain was coalesced; the busy one not at all.
        assert vols.check()[x.VDI.get_uuid(other)] == 1
        chain = ops.chain_of(vols.path(uuid), 64)
        assert len(chain) == 2
        for path in chain:
            name = os.path.basename(path)[:-4]
            assert vhdcheck.sha(path) == files[name]
        data = bytes(httputil.pattern(SIZE))
        conn.send(data)
        assert conn.getresponse().status == 200
        vols.model[uuid][:] = data
    finally:
        conn.close()
    control.gc_wait(10)
    assert vols.check() == {x.VDI.get_uuid(vol): 1,
                            x.VDI.get_uuid(other): 1}
