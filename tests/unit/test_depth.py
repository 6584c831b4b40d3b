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
"""ChainGuard against the test server: real chains, real depth limit."""

import io

import pytest

from tests import xapi_fixture
from tests.unit.xenapi.conftest import make_session
from tests.xapi_fixture import xapi_server  # noqa: F401
from xenapinfs_driver import depth
from xenapinfs_driver import exception
from xenapinfs_driver.xenapi import storage
from xenapinfs_driver.xenapi import transfer

SERVER, PATH = xapi_fixture.EXPORT
MiB = 1 << 20


@pytest.fixture
def session(xapi_server):  # noqa: F811
    s = make_session(xapi_server).connect()
    yield s
    s.close()


@pytest.fixture
def sr(session):
    return storage.find_or_create_nfs_sr(session, SERVER, PATH, 'depth',
                                         'Cinder test')[0]


def _vdi(session, sr, data):
    ref, _uuid = storage.create_vdi(session, sr, 4 * MiB, 'v')
    transfer.import_vdi(session, ref, io.BytesIO(data), len(data), 'raw')
    return ref


def _disk(session, ref):
    buf = io.BytesIO()
    transfer.export_to_file(session, ref, buf, 'raw')
    return buf.getvalue()


def test_depth_counts_the_vdi_and_its_parents(session, sr):
    ref = _vdi(session, sr, b'x' * MiB)
    assert depth.chain_depth(session, ref) == 1
    storage.snapshot_vdi(session, ref, 's')
    assert depth.chain_depth(session, ref) == 2


def test_copies_past_the_threshold_keep_the_data(session, sr):
    data = bytes(range(256)) * 4096
    guard = depth.ChainGuard(session, sr, threshold=4)
    ref, fulls = _vdi(session, sr, data), []
    # snapshot -> clone of it, 10 rounds: chains never pass 4
    for n in range(10):
        snap, _u, full_s = guard.snapshot(ref, 'snap %d' % n)
        ref, _u, full_c = guard.clone(snap, 'vol %d' % n, size=6 * MiB)
        fulls.append((full_s, full_c))
        assert depth.chain_depth(session, ref) <= 4
        assert depth.chain_depth(session, snap) <= 4
        disk = _disk(session, ref)
        assert len(disk) == 6 * MiB and disk[:len(data)] == data
        assert disk.count(0, len(data)) == 6 * MiB - len(data)
    assert any(f for pair in fulls for f in pair)
    assert not all(f for pair in fulls for f in pair)
    assert guard.full_copies == sum(f for pair in fulls for f in pair)


def test_a_refusal_of_the_host_falls_back_to_a_copy(session, sr,
                                                    xapi_server):  # noqa
    ref = _vdi(session, sr, b'y' * MiB)
    control = xapi_fixture.Control(xapi_server)
    control.add_fault('VDI.clone', error=[
        'SR_BACKEND_FAILURE_109', '', 'The snapshot chain is too long', ''])
    guard = depth.ChainGuard(session, sr, threshold=25)
    new, new_uuid, full = guard.clone(ref, 'c')
    assert full and depth.chain_depth(session, new) == 1
    assert _disk(session, new)[:MiB] == b'y' * MiB


def test_other_failures_are_not_hidden(session, sr, xapi_server):  # noqa
    ref = _vdi(session, sr, b'z' * MiB)
    xapi_fixture.Control(xapi_server).add_fault(
        'VDI.snapshot', error=['SR_BACKEND_FAILURE_44', '', 'no space', ''])
    guard = depth.ChainGuard(session, sr, threshold=25)
    with pytest.raises(exception.XenAPIError) as err:
        guard.snapshot(ref, 's')
    assert err.value.error == 'SR_BACKEND_FAILURE_44'
    assert guard.full_copies == 0
