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
"""``make demo`` as an operator runs it: a process, its output, its mess.

The demo runs as ``python tools/demo.py`` with ``TMPDIR`` pointing at a
directory of the test's own, so that whatever it leaves behind shows. It
prints its work directory, the pid of the XenAPI server and the process
groups of the services, and the URLs it serves; after it ends, none of
them may be left: no process, no listening port, no file.
"""

import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import urllib.parse

import pytest
import XenAPI

from tests import stack_fixture
from xenapinfs_driver.testing.stack import process

REPO = pathlib.Path(__file__).resolve().parents[2]
DEMO = REPO / 'tools' / 'demo.py'
# A whole walk takes about 30 s here; the limit is for a wedged demo.
TIMEOUT = 300


@pytest.fixture(autouse=True)
def _services_installed():
    stack_fixture.require('cinder', 'cinderclient', 'glance', 'glanceclient',
                          'gunicorn', rabbit=True)
    for tool in ('mkfs.ext4', 'debugfs'):
        if not os.access('/usr/sbin/' + tool, os.X_OK) and \
                not any(os.access(os.path.join(d, tool), os.X_OK)
                        for d in os.environ.get('PATH', '').split(':')):
            pytest.skip('%s not installed (apt e2fsprogs)' % tool)


class Demo:
    """tools/demo.py running, its output collected line by line."""

    def __init__(self, tmp_path, *args):
        self.tmpdir = tmp_path / 'tmp'
        self.tmpdir.mkdir()
        env = dict(os.environ, TMPDIR=str(self.tmpdir))
        self.proc = subprocess.Popen(
            [sys.executable, str(DEMO)] + list(args), cwd=str(REPO),
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()
        with self._seen:
            self.lines.append(None)            # the end of the output
            self._seen.notify_all()

    @property
    def output(self):
        return ''.join(line for line in self.lines if line)

    def wait_for(self, pattern, timeout=TIMEOUT):
        """Block until a line matches; the match."""
        regex = re.compile(pattern)

        def seen():
            for line in self.lines:
                if line is None:
                    return 'ended'
                match = regex.search(line)
                if match:
                    return match
            return None
        with self._seen:
            result = self._seen.wait_for(seen, timeout)
        if result is None:
            pytest.fail('no line matching %r within %d s:\n%s'
                        % (pattern, timeout, self.output))
        if result == 'ended':
            pytest.fail('the demo ended without %r:\n%s'
                        % (pattern, self.output))
        return result

    def wait(self, timeout=TIMEOUT):
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self._reader.join(10)
        return status

    def kill(self):
        """The last resort of a failed test (the demo cleans up itself)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def demo(tmp_path):
    started = []

    def start(*args):
        d = Demo(tmp_path, *args)
        started.append(d)
        return d
    yield start
    for d in started:
        d.kill()


def assert_cleaned_up(d):
    """Nothing the demo started is left: processes, ports, files."""
    out = d.output
    work = re.search(r'work directory: (\S+)', out).group(1)
    assert work.startswith(str(d.tmpdir))
    pids = [int(p) for p in
            re.findall(r'^# process (\d+)', out, re.M) +
            re.findall(r'=(\d+)', ''.join(
                re.findall(r'^# process groups: (.*)$', out, re.M)))]
    assert pids, out
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    ports = [urllib.parse.urlsplit(url).port for url in
             re.findall(r'(http://127\.0\.0\.1:\d+)', out)]
    assert ports, out
    busy = [p for p in set(ports) if process.port_in_use(p)]
    assert not busy, 'ports still in use: %s' % busy
    # Also what may have left its process group (a daemon).
    stack_fixture.assert_stopped(work, [], [])
    assert not os.path.exists(work)
    assert os.listdir(d.tmpdir) == [], 'left in TMPDIR: %s' % os.listdir(
        d.tmpdir)
    assert 'removed %s' % work in out


def test_demo_walks_every_step_and_leaves_nothing(demo):
    d = demo()
    status = d.wait()
    out = d.output
    assert status == 0, out
    for n in range(1, 10):
        assert re.search(r'^== %d/9  ' % n, out, re.M), out
    # every client command is shown with its output
    assert '$ glance image-create --name demo-xenserver-image ' \
           '--disk-format vhd --container-format ovf' in out
    assert '$ cinder upload-to-image --container-format ovf ' \
           '--disk-format vhd demo-vol1 demo-vol1-image' in out
    assert re.search(r'^\| status\s+\| available\s+\|$', out, re.M), out
    # the image had a differencing layer
    assert re.search(r'^  0\.vhd: differencing', out, re.M), out
    assert '[ok]   marker file found on volume 2' in out
    assert re.search(r'^touched by the demo instance at ', out, re.M), out
    assert re.search(r'^payload\.bin: OK$', out, re.M), out
    assert '[ok]   md5sum OK' in out
    assert '== Summary: PASS' in out and '[FAIL]' not in out
    assert out.rstrip().endswith('demo: PASS')
    # the demo's throwaway password is printed by --keep only
    assert 'xenapi_connection_password = ********' in out
    assert 'throwaway' not in out
    assert_cleaned_up(d)


def test_ctrl_c_in_the_middle_stops_and_removes_everything(demo):
    d = demo()
    # Step 3 starts once every service is up.
    d.wait_for(r'^== 3/9  ')
    d.proc.send_signal(signal.SIGINT)
    status = d.wait(120)
    out = d.output
    assert status == 128 + signal.SIGINT, out
    assert 'interrupted (SIGINT)' in out
    assert 'stopped cinder, glance and rabbitmq' in out
    assert re.search(r'^stopped xenapinfs-xapi-server \(pid \d+\)$', out,
                     re.M), out
    assert out.rstrip().endswith('demo: FAIL')
    assert_cleaned_up(d)


def test_keep_leaves_a_stack_to_talk_to_until_sigterm(demo):
    d = demo('--keep')
    d.wait_for(r'^Waiting for Ctrl-C')
    out = d.output
    assert '== Summary: PASS' in out, out
    # The exports it prints are enough for the clients...
    env = dict(re.findall(r'^export (OS_\w+|CINDER_\w+)=(\S+)$', out, re.M))
    env = dict({k: v for k, v in os.environ.items()
                if not k.startswith(('OS_', 'CINDER_'))}, **env)
    bin_dir = os.path.dirname(sys.executable)
    listed = subprocess.run([os.path.join(bin_dir, 'cinder'), 'list'],
                            env=env, capture_output=True, text=True,
                            timeout=60)
    assert 'demo-vol2' in listed.stdout, listed.stdout + listed.stderr
    images = subprocess.run([os.path.join(bin_dir, 'glance'), 'image-list'],
                            env=env, capture_output=True, text=True,
                            timeout=60)
    assert 'demo-vol1-image' in images.stdout, images.stdout + images.stderr
    # ... and so are the XenAPI URL and credentials.
    url, user, password = re.search(
        r'^XenAPI: (\S+)  user (\S+)  password (\S+)', out, re.M).groups()
    session = XenAPI.Session(url)
    session.xenapi.login_with_password(user, password, '1.0', 'test_demo')
    try:
        labels = [session.xenapi.VDI.get_name_label(ref)
                  for ref in session.xenapi.VDI.get_all()]
    finally:
        session.xenapi.session.logout()
    assert sum(label.startswith('volume-') for label in labels) == 2, labels
    for path in re.findall(r'^  [\w-]+ +(/\S+\.log)$', out, re.M):
        assert os.path.getsize(path) > 0, path

    d.proc.send_signal(signal.SIGTERM)
    status = d.wait(120)
    assert status == 0, d.output             # the walk passed
    assert_cleaned_up(d)
