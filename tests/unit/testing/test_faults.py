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
"""Fault injection over the wire, the call log, the state, and the quota.

Note the client's own behaviour: xmlrpc.client sends a request again once
when the connection drops before an answer, so a single ``drop`` goes
unnoticed by XenAPI.Session (two are needed to see the error) and a single
``drop_after`` makes the call happen twice.
"""

import concurrent.futures
import http.client
import time

import pytest
import XenAPI

from tests import xapi_fixture
from tests.unit.testing import httputil as hu

MiB = 1 << 20
FULL = ['SR_BACKEND_FAILURE_44', '', 'There is insufficient space', '']


def details(exc_info):
    return exc_info.value.details


def test_error_nth_and_times(session, control, sr):
    x = session.xenapi
    error = ['SR_BACKEND_FAILURE_78', '', 'VDI Creation failed', '']
    rule = control.add_fault('VDI.create', error=error, nth=2, times=2)
    xapi_fixture.create_vdi(session, sr, MiB)
    assert [(r['id'], r['seen'], r['fired']) for r in control.faults()] == \
        [(rule, 1, 0)]
    for _ in range(2):
        with pytest.raises(XenAPI.Failure) as exc:
            xapi_fixture.create_vdi(session, sr, MiB)
        assert details(exc) == error
    xapi_fixture.create_vdi(session, sr, MiB)
    # Counted by the server: what a test injected, not what it asked for.
    assert [(r['seen'], r['fired']) for r in control.faults()] == [(4, 2)]
    assert len(x.VDI.get_all()) == 2
    assert control.calls().count('VDI.create') == 4
    control.clear_calls()
    assert control.calls() == []
    with pytest.raises(XenAPI.Failure) as exc:
        control.add_fault('VDI.create', 'explode')
    assert details(exc)[:2] == ['INVALID_VALUE', 'rule']
    with pytest.raises(XenAPI.Failure) as exc:
        control.add_fault('VDI.create', 'error')
    assert 'error: [code' in details(exc)[2]


def test_drop_and_drop_after(session, control, sr):
    x = session.xenapi
    control.add_fault('VDI.create', 'drop')
    xapi_fixture.create_vdi(session, sr, MiB)       # the client retried
    assert control.calls()[-2:] == ['VDI.create', 'VDI.create']
    assert len(x.VDI.get_all()) == 1
    control.add_fault('VDI.create', 'drop', times=2)
    with pytest.raises((http.client.RemoteDisconnected,
                        ConnectionResetError)):
        xapi_fixture.create_vdi(session, sr, MiB)
    assert len(x.VDI.get_all()) == 1                # never done
    control.add_fault('VDI.create', 'drop_after')
    xapi_fixture.create_vdi(session, sr, MiB)
    assert len(x.VDI.get_all()) == 3                # done twice


def test_delay(session, control):
    control.add_fault('pool.get_all', 'delay', seconds=0.3)
    start = time.monotonic()
    assert session.xenapi.pool.get_all()
    assert time.monotonic() - start >= 0.3


def test_a_delayed_call_holds_no_lock(xapi_server, session, control, sr):
    """While a call is held, the server serves others, on the same VDI
    too; the held call then meets what they did (what a test of clients'
    locks relies on: the server must not order them itself)."""
    vdi = xapi_fixture.create_vdi(session, sr, MiB)
    control.add_fault('VDI.clone', 'delay', seconds=2)
    other = xapi_fixture.login(xapi_server)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            clone = pool.submit(session.xenapi.VDI.clone, vdi, {})
            while not control.faults()[0]['fired']:
                time.sleep(0.05)
            other.xenapi.VDI.destroy(vdi)
            with pytest.raises(XenAPI.Failure) as exc:
                clone.result()
    finally:
        other.xenapi.session.logout()
    assert details(exc) == ['HANDLE_INVALID', 'VDI', vdi]
    assert session.xenapi.SR.get_VDIs(sr) == []     # no clone was made


def test_in_process_api(xapi_server, session):
    rule = xapi_server.faults.add({'method': 'pool.get_all', 'action':
                                   'error', 'error': ['HOST_OFFLINE', 'h']})
    with pytest.raises(XenAPI.Failure) as exc:
        session.xenapi.pool.get_all()
    assert details(exc) == ['HOST_OFFLINE', 'h']
    assert xapi_server.faults.rules()[0]['id'] == rule
    xapi_server.faults.clear()
    assert xapi_server.calls.list()[-1] == 'pool.get_all'


def test_disk_full_faults_leave_nothing(xapi_server, session, control, sr):
    x = session.xenapi
    vdi = xapi_fixture.create_vdi(session, sr, 4 * MiB)
    disk = hu.pattern(4 * MiB, 3)
    hu.import_data(xapi_server, session, vdi, disk)
    before = control.state()
    for method in ('VDI.create', 'VDI.snapshot', 'VDI.clone', 'VDI.copy',
                   'VDI.resize', 'SR.get_record'):
        control.add_fault(method, 'disk_full')
    with pytest.raises(XenAPI.Failure) as exc:
        xapi_fixture.create_vdi(session, sr, MiB)
    assert details(exc) == FULL
    for call in (lambda: x.VDI.snapshot(vdi, {}),
                 lambda: x.VDI.clone(vdi, {}),
                 lambda: x.VDI.copy(vdi, sr),
                 lambda: x.VDI.resize(vdi, str(64 * MiB)),
                 lambda: x.SR.get_record(sr)):
        with pytest.raises(XenAPI.Failure) as exc:
            call()
        assert details(exc) == FULL
    assert control.state() == before
    assert x.VDI.get_virtual_size(vdi) == str(4 * MiB)
    assert hu.export_data(xapi_server, session, vdi) == disk
    control.add_fault('Async.VDI.copy', 'disk_full')
    rec = xapi_fixture.wait_task(session, x.Async.VDI.copy(vdi, sr))
    assert (rec['status'], rec['error_info']) == ('failure', FULL)
    x.task.destroy(x.task.get_by_uuid(rec['uuid']))
    assert control.state() == before


def test_disk_full_mid_import(xapi_server, session, control, sr):
    vdi = xapi_fixture.create_vdi(session, sr, 8 * MiB)
    disk = hu.pattern(8 * MiB, 2)
    hu.import_data(xapi_server, session, vdi, disk)
    before = control.state()
    control.add_fault('http:import_raw_vdi', 'disk_full')
    task = session.xenapi.task.create('t', '')
    status, text = hu.put(xapi_server.url, hu.query(session, vdi, 'raw',
                                                    task), bytes(8 * MiB))
    assert (status, text.split()[0]) == (500, FULL[0])
    assert session.xenapi.task.get_error_info(task) == FULL
    session.xenapi.task.destroy(task)
    assert control.state() == before
    assert hu.export_data(xapi_server, session, vdi) == disk


def test_http_faults(xapi_server, session, control, sr):
    vdi = xapi_fixture.create_vdi(session, sr, 4 * MiB)
    qs = hu.query(session, vdi)
    control.add_fault('http:export_raw_vdi', 'error',
                      error=['VDI_IO_ERROR', 'injected'])
    assert hu.get(xapi_server.url, qs)[0] == 500
    control.add_fault('http:export_raw_vdi', 'drop')
    with pytest.raises(http.client.RemoteDisconnected):
        hu.get(xapi_server.url, qs)
    control.add_fault('http:export_raw_vdi', 'drop_after')
    with pytest.raises(http.client.IncompleteRead):
        hu.get(xapi_server.url, qs)
    control.add_fault('http:import_raw_vdi', 'drop_after')
    with pytest.raises(http.client.RemoteDisconnected):
        hu.put(xapi_server.url, qs, b'\7' * MiB)
    # drop_after: the import was done, only the answer was lost.
    assert hu.export_data(xapi_server, session, vdi)[:MiB] == b'\7' * MiB
    assert control.calls().count('http:export_raw_vdi') == 4
    # A handler's fault is counted as a method's is.
    assert [r['fired'] for r in control.faults()] == [1, 1, 1, 1]


def test_quota():
    with xapi_fixture.running_server(sr_size=12 * MiB) as server:
        session = xapi_fixture.login(server)
        control = xapi_fixture.Control(server)
        sr = xapi_fixture.create_sr(session)
        a = xapi_fixture.create_vdi(session, sr, 8 * MiB)
        b = xapi_fixture.create_vdi(session, sr, 8 * MiB)
        hu.import_data(server, session, a, hu.pattern(8 * MiB, 1, False))
        before = control.state()
        status, text = hu.put(server.url, hu.query(session, b),
                              hu.pattern(8 * MiB, 2, False))
        assert (status, text.split()[0]) == (500, FULL[0])
        assert control.state() == before
        assert hu.export_data(server, session, b) == bytes(8 * MiB)
        with pytest.raises(XenAPI.Failure) as exc:
            session.xenapi.VDI.copy(a, sr)
        assert details(exc) == FULL
        assert control.state() == before
        hu.import_data(server, session, b, hu.pattern(2 * MiB, 2, False))


def test_state(xapi_server, session, control, sr):
    vdi = xapi_fixture.create_vdi(session, sr, MiB)
    state = control.state()
    assert (state['SR'], state['PBD'], state['VDI']) == ('1', '1', '1')
    uuid = session.xenapi.VDI.get_uuid(vdi)
    assert [f.rsplit('/', 1)[1] for f in state['files']] == [
        '%s.vhd' % uuid]
    assert state['files'][0].startswith('exports/nfs.example/srv/cinder/')
    assert state['mounts'] == [session.xenapi.SR.get_uuid(sr)]
