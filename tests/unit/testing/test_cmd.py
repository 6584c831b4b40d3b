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
"""``xenapinfs-xapi-server`` as a process: ready line, logs, SIGTERM."""

import os
import pickle
import select
import signal
import subprocess
import sys

import pytest
import XenAPI

from tests import xapi_fixture
from xenapinfs_driver.cmd import xapi_server

SECRET = 'cmd-secret-7f3a'
WRONG = 'wrong-pw-91c2'


def _first_line(proc, timeout=20.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, 'the server printed nothing in %.0f s' % timeout
    return proc.stdout.readline().decode()


def test_runs_and_stops_on_sigterm(tmp_path):
    pwfile = tmp_path / 'pw'
    pwfile.write_text(SECRET + '\n')
    root = tmp_path / 'root'
    proc = subprocess.Popen(
        [sys.executable, '-m', 'xenapinfs_driver.cmd.xapi_server',
         '--root', str(root), '--password-file', str(pwfile),
         '--export', 'nfs.example:/srv/cinder',
         '--slave-listen', '127.0.0.2:0', '--sr-size', str(1 << 30),
         '--dom0-plugins', 'os-xenapi'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.dirname(os.path.abspath(__file__))))))
    try:
        line = _first_line(proc)
        assert line.startswith('listening on http://127.0.0.1:')
        url = line.split()[-1]
        session = XenAPI.Session(url)
        session.xenapi.login_with_password('root', SECRET, '1.0', 'cmd')
        sr = xapi_fixture.create_sr(session)
        assert session.xenapi.SR.get_physical_size(sr) == str(1 << 30)
        host = session.xenapi.session.get_this_host(session.handle)
        sr_path = '/var/run/sr-mount/' + session.xenapi.SR.get_uuid(sr)
        params = pickle.dumps({'args': [['no-such-vdi'], 'img', 'http://g',
                                        sr_path, {}, {}], 'kwargs': {}},
                              protocol=0).decode('latin-1')
        # os-xenapi's own plugin answers: its os.link fails, where our
        # stand-in would refuse the uuid (PluginError).
        with pytest.raises(XenAPI.Failure) as exc:
            session.xenapi.host.call_plugin(host, 'glance.py', 'upload_vhd2',
                                            {'params': params})
        assert exc.value.details[:3] == ['XENAPI_PLUGIN_FAILURE',
                                         'upload_vhd2', 'FileNotFoundError']
        assert sr_path + '/no-such-vdi.vhd' in exc.value.details[3]
        with pytest.raises(XenAPI.Failure):
            XenAPI.Session(url).xenapi.login_with_password('root', WRONG)
        member = XenAPI.Session(url.replace('127.0.0.1', '127.0.0.2'))
        with pytest.raises(XenAPI.Failure) as exc:
            member.xenapi.login_with_password('root', SECRET)
        assert exc.value.details == ['HOST_IS_SLAVE', '127.0.0.1']
        assert (root / 'exports' / 'nfs.example' / 'srv' / 'cinder').is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert out == b''
    text = err.decode()
    assert 'SR.create' in text and 'session.login_with_password' in text
    assert SECRET not in text and WRONG not in text
    assert 'pool member listening on http://127.0.0.2:' in text


@pytest.mark.parametrize('argv', [
    ['--root', 'x'],                                    # no password
    ['--root', 'x', '--password', 'p', '--tls-cert', 'c'],
    ['--root', 'x', '--password', 'p', '--listen', 'nowhere'],
    ['--root', 'x', '--password', 'p', '--export', 'nfs:relative'],
    ['--root', 'x', '--password', 'p', '--sr-size', '-1'],
    ['--root', 'x', '--password', 'p', '--dom0-plugins', 'nova'],
])
def test_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        xapi_server.main(argv)
    assert exc.value.code == 2
    assert 'usage:' in capsys.readouterr().err


def test_cannot_start(tmp_path, capsys):
    blocker = tmp_path / 'file'
    blocker.write_text('')
    assert xapi_server.main(['--root', str(blocker), '--password', 'p']) == 1
    assert 'cannot start' in capsys.readouterr().err
