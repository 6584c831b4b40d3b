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
"""The server as a host over time: restarts keep the database, SIGKILL
loses no committed change, a corrupt file stops the start, and a host
that forgot its SRs finds them again with probe, introduce, plug, scan."""

import json
import os
import select
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
import xmlrpc.client

import pytest
import XenAPI

from tests import xapi_fixture
from tests.unit.testing import httputil as hu
from xenapinfs_driver.testing.xapi import persist
from xenapinfs_driver.testing.xapi.server import XapiServer

DC = xapi_fixture.DEVICE_CONFIG
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def host(session):
    return session.xenapi.session.get_this_host(session.handle)


def db_file(root) -> str:
    return os.path.join(str(root), 'var', 'lib', 'xcp', 'state.db')


def sr_dir(root, sr_uuid) -> str:
    return os.path.join(str(root), 'exports', 'nfs.example', 'srv',
                        'cinder', sr_uuid)


def raw_call(url, method, *args):
    """One XML-RPC call, the answer struct unwrapped by hand."""
    proxy = xmlrpc.client.ServerProxy(url)
    return getattr(proxy, method)(*args)


# -- restart on the same root -------------------------------------------------

def test_restart_keeps_records_but_no_session_or_task(tmp_path):
    root = str(tmp_path / 'root')
    disk = hu.pattern(4 << 20, seed=3)
    # A quota: the SR's sizes come from its files, not the disk's.
    quota = {'sr_size': 1 << 30}
    with xapi_fixture.running_server(root, **quota) as server:
        session = xapi_fixture.login(server)
        x = session.xenapi
        sr = xapi_fixture.create_sr(session)
        x.SR.add_to_other_config(sr, 'cinder-backend', 'gold@nfs')
        x.SR.add_tags(sr, 'kept')
        vdi = xapi_fixture.create_vdi(session, sr, 4 << 20,
                                      name_label='vol-1',
                                      other_config={'volume': 'v1'},
                                      tags=['t1'])
        hu.import_data(server, session, vdi, disk)
        snap = x.VDI.snapshot(vdi, {})
        x.pool.add_to_other_config(x.pool.get_all()[0], 'k', 'v')
        pending = x.task.create('in flight', '')
        before = {cls: getattr(x, cls).get_all_records()
                  for cls in ('SR', 'PBD', 'VDI', 'host', 'pool')}
        old_handle = session.handle
        host_ref = host(session)
    with xapi_fixture.running_server(root, **quota) as server:
        answer = raw_call(server.url, 'SR.get_all', old_handle)
        assert answer == {'Status': 'Failure', 'ErrorDescription':
                          ['SESSION_INVALID', old_handle]}
        session = xapi_fixture.login(server)
        x = session.xenapi
        assert host(session) == host_ref
        for cls, records in before.items():
            assert getattr(x, cls).get_all_records() == records, cls
        rec = x.VDI.get_record(snap)
        assert rec['is_a_snapshot'] and rec['snapshot_of'] == vdi
        assert isinstance(rec['snapshot_time'], xmlrpc.client.DateTime)
        with pytest.raises(XenAPI.Failure) as exc:
            x.task.get_record(pending)
        assert exc.value.details == ['HANDLE_INVALID', 'task', pending]
        assert x.task.get_all() == []
        # Still plugged: the data reads back without any re-plug.
        assert hu.export_data(server, session, vdi) == disk
        assert hu.export_data(server, session, snap) == disk


def test_nothing_is_written_for_reads_and_sessions(tmp_path):
    root = str(tmp_path / 'root')
    with xapi_fixture.running_server(root) as server:
        session = xapi_fixture.login(server)
        xapi_fixture.create_sr(session)
        mtime = os.stat(db_file(root)).st_mtime_ns
        session.xenapi.SR.get_all_records()
        xapi_fixture.login(server).xenapi.session.logout()
        assert os.stat(db_file(root)).st_mtime_ns == mtime


# -- a server process, killed ----------------------------------------------

class ServerProcess:
    """``xenapinfs-xapi-server`` on a root, as its own process."""

    def __init__(self, tmp_path, root, *extra):
        pwfile = tmp_path / 'pw'
        pwfile.write_text(xapi_fixture.PASSWORD + '\n')
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'xenapinfs_driver.cmd.xapi_server',
             '--root', str(root), '--password-file', str(pwfile),
             '--export', '%s:%s' % xapi_fixture.EXPORT] + list(extra),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)

    def url(self, timeout=30.0) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, 'the server printed nothing in %.0f s' % timeout
        line = self.proc.stdout.readline().decode()
        assert line.startswith('listening on '), (
            line, self.proc.stderr.read().decode() if not line else '')
        return line.split()[-1]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=30)


def test_sigkill_right_after_a_change_keeps_it(tmp_path):
    root = tmp_path / 'root'
    server = ServerProcess(tmp_path, root)
    try:
        session = xapi_fixture.login(server.url())
        x = session.xenapi
        sr = xapi_fixture.create_sr(session)
        vdi = xapi_fixture.create_vdi(session, sr, 2 << 20)
        sr_uuid, vdi_uuid = x.SR.get_uuid(sr), x.VDI.get_uuid(vdi)
        x.VDI.add_to_other_config(vdi, 'cinder-volume', 'v-42')
    finally:
        server.kill()
    assert server.proc.returncode == -signal.SIGKILL
    server = ServerProcess(tmp_path, root)
    try:
        session = xapi_fixture.login(server.url())
        x = session.xenapi
        assert x.VDI.get_other_config(vdi) == {'cinder-volume': 'v-42'}
        assert x.SR.get_VDIs(sr) == [vdi]
        (pbd,) = x.SR.get_PBDs(sr)
        assert x.PBD.get_currently_attached(pbd)
    finally:
        server.stop()
    # Started again as a host that forgot its SRs: records gone, files not.
    server = ServerProcess(tmp_path, root, '--forget-srs')
    try:
        session = xapi_fixture.login(server.url())
        x = session.xenapi
        assert x.SR.get_all() == [] and x.VDI.get_all() == []
        tree = ET.fromstring(x.SR.probe(host(session), DC, 'nfs', {}))
        assert [e.text for e in tree.iter('UUID')] == [sr_uuid]
        assert os.listdir(sr_dir(root, sr_uuid)) == [vdi_uuid + '.vhd']
    finally:
        server.stop()


# -- a corrupt database file --------------------------------------------------

def _valid_file(root) -> bytes:
    with xapi_fixture.running_server(str(root)) as server:
        xapi_fixture.create_sr(xapi_fixture.login(server))
    with open(db_file(root), 'rb') as f:
        return f.read()


def _retype(data: bytes) -> bytes:
    doc = json.loads(data)
    (ref,) = doc['tables']['SR']
    doc['tables']['SR'][ref]['other_config'] = ['not', 'a', 'map']
    return json.dumps(doc).encode()


@pytest.mark.parametrize('spoil', [
    lambda data: data[:len(data) // 2],             # torn write
    lambda data: b'',
    lambda data: b'\xff\xfe garbage',
    lambda data: b'[]',
    lambda data: data.replace(b'"version":1', b'"version":99'),
    _retype,
], ids=['truncated', 'empty', 'binary', 'not-a-db', 'version', 'field-type'])
def test_corrupt_file_is_an_error_naming_it(tmp_path, spoil):
    root = tmp_path / 'root'
    data = _valid_file(root)
    with open(db_file(root), 'wb') as f:
        f.write(spoil(data))
    with pytest.raises(persist.CorruptDatabase) as exc:
        XapiServer(str(root), exports=[xapi_fixture.EXPORT])
    assert exc.value.path == db_file(root)
    assert db_file(root) in str(exc.value)


def test_corrupt_file_stops_the_command(tmp_path):
    root = tmp_path / 'root'
    data = _valid_file(root)
    with open(db_file(root), 'wb') as f:
        f.write(data[:-10])
    server = ServerProcess(tmp_path, root)
    out, err = server.proc.communicate(timeout=30)
    assert server.proc.returncode == 1
    assert out == b''
    assert ('cannot start: database %s is corrupt' % db_file(root)) \
        in err.decode()


# -- a host that forgot its SRs -----------------------------------------------

def test_forgotten_srs_come_back_from_the_files(tmp_path):
    root = str(tmp_path / 'root')
    disk = hu.pattern(4 << 20, seed=5)
    with xapi_fixture.running_server(root) as server:
        session = xapi_fixture.login(server)
        x = session.xenapi
        sr = xapi_fixture.create_sr(session)
        sr_uuid = x.SR.get_uuid(sr)
        vol = xapi_fixture.create_vdi(session, sr, 4 << 20,
                                      name_label='vol',
                                      other_config={'cinder': 'tag'},
                                      tags=['t'])
        hu.import_data(server, session, vol, disk)
        snap = x.VDI.snapshot(vol, {})
        old = {r['uuid']: ref for ref, r in x.VDI.get_all_records().items()}
        base_uuid = x.VDI.get_sm_config(vol)['vhd-parent']
        host_uuid = x.host.get_uuid(host(session))
    with xapi_fixture.running_server(root, forget_srs=True) as server:
        session = xapi_fixture.login(server)
        x = session.xenapi
        assert x.SR.get_all() == [] and x.PBD.get_all() == []
        assert x.VDI.get_all() == []
        assert x.host.get_uuid(host(session)) == host_uuid
        assert not os.path.lexists(os.path.join(
            root, 'var', 'run', 'sr-mount', sr_uuid))
        tree = ET.fromstring(x.SR.probe(host(session), DC, 'nfs', {}))
        assert [e.text for e in tree.iter('UUID')] == [sr_uuid]
        sr = x.SR.introduce(sr_uuid, 'back', '', 'nfs', '', False, {})
        pbd = x.PBD.create({'host': host(session), 'SR': sr,
                            'device_config': DC})
        x.PBD.plug(pbd)
        x.SR.scan(sr)
        recs = {r['uuid']: (ref, r)
                for ref, r in x.VDI.get_all_records().items()}
        assert set(recs) == set(old)
        for vdi_uuid, (ref, rec) in recs.items():
            assert ref != old[vdi_uuid]
            assert rec['other_config'] == {} and rec['tags'] == []
            assert rec['SR'] == sr and rec['location'] == vdi_uuid
            assert not rec['is_a_snapshot']
        base_ref, base = recs[base_uuid]
        assert base['managed'] is False and base['read_only'] is True
        assert base['name_label'] == 'base copy'
        assert base['sm_config'] == {}
        leaves = [u for u in recs if u != base_uuid]
        assert len(leaves) == 2
        for leaf in leaves:
            ref, rec = recs[leaf]
            assert rec['managed'] is True and rec['name_label'] == ''
            assert rec['sm_config'] == {'vhd-parent': base_uuid}
            assert hu.export_data(server, session, ref) == disk
    assert snap not in [r for r, _ in recs.values()]


def test_control_call_forgets_in_place(xapi_server, session, control):
    x = session.xenapi
    sr = xapi_fixture.create_sr(session)
    sr_uuid = x.SR.get_uuid(sr)
    vdi = xapi_fixture.create_vdi(session, sr, 2 << 20)
    vdi_uuid = x.VDI.get_uuid(vdi)
    assert control.forget_srs() == 1
    assert x.SR.get_all() == [] and x.VDI.get_all() == []
    assert os.path.isfile(os.path.join(sr_dir(xapi_server.root, sr_uuid),
                                       vdi_uuid + '.vhd'))
    assert control.state()['mounts'] == []


# -- SR.probe -----------------------------------------------------------------

def test_probe_lists_only_sr_directories(xapi_server, session):
    x = session.xenapi
    sr_uuid = x.SR.get_uuid(xapi_fixture.create_sr(session))
    export = os.path.dirname(sr_dir(xapi_server.root, sr_uuid))
    os.mkdir(os.path.join(export, 'lost+found'))
    with open(os.path.join(export, '1c0b4b9e-2b3a-4f6e-9a1d-5e7f8a9b0c1d'),
              'w') as f:
        f.write('a file, not an SR')
    forgotten = x.SR.get_uuid(xapi_fixture.create_sr(session, 'old'))
    (pbd,) = x.SR.get_PBDs(x.SR.get_by_uuid(forgotten))
    x.PBD.unplug(pbd)
    x.SR.forget(x.SR.get_by_uuid(forgotten))
    text = x.SR.probe(host(session), DC, 'nfs', {})
    assert text.startswith('<?xml version="1.0" ?>\n<SRlist>')
    tree = ET.fromstring(text)
    assert sorted(e.text for e in tree.findall('./SR/UUID')) == \
        sorted([sr_uuid, forgotten])


@pytest.mark.parametrize('config, code', [
    ({}, 'SR_BACKEND_FAILURE_102'),
    ({'serverpath': '/srv/cinder'}, 'SR_BACKEND_FAILURE_102'),
    ({'server': 'nowhere.example', 'serverpath': '/srv/cinder'},
     'SR_BACKEND_FAILURE_108'),
    ({'server': 'nfs.example', 'serverpath': '/srv/other'},
     'SR_BACKEND_FAILURE_73'),
    ({'server': 'nfs.example', 'serverpath': '/srv/../etc'},
     'SR_BACKEND_FAILURE_103'),
])
def test_probe_errors(xapi_server, session, config, code):
    with pytest.raises(XenAPI.Failure) as exc:
        session.xenapi.SR.probe(host(session), config, 'nfs', {})
    assert exc.value.details[0] == code
    assert exc.value.details[1] == ''


def test_probe_without_a_path_lists_the_exports(xapi_server, session):
    with pytest.raises(XenAPI.Failure) as exc:
        session.xenapi.SR.probe(host(session), {'server': 'nfs.example'},
                                'nfs', {})
    code, _, text, exports = exc.value.details
    assert (code, text) == ('SR_BACKEND_FAILURE_101', 'The request is '
                            'missing the serverpath parameter')
    tree = ET.fromstring(exports)
    assert tree.tag == 'nfs-exports'
    assert [(e.findtext('Target'), e.findtext('Path'))
            for e in tree.iter('Export')] == [xapi_fixture.EXPORT]
    with pytest.raises(XenAPI.Failure) as exc:
        session.xenapi.SR.probe(host(session), DC, 'lvm', {})
    assert exc.value.details == ['SR_UNKNOWN_DRIVER', 'lvm']
