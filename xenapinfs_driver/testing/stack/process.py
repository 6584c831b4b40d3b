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
"""Child processes of the stack: each in a process group of its own.

A service is started in a new session, so that a terminal's Ctrl-C reaches
only the test process (which then stops the services in order), and so that
stopping it can signal the whole group: gunicorn's worker, oslo.service's
forked workers and privsep daemons go with their parent.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

BIN_DIR = os.path.dirname(sys.executable)
HOST = '127.0.0.1'


class ServiceError(Exception):
    """A service did not start, or did not answer in time."""


def venv_bin(name: str) -> str:
    """A console script installed next to this interpreter."""
    path = os.path.join(BIN_DIR, name)
    if not os.access(path, os.X_OK):
        raise ServiceError('%s is not installed in %s (pip install -r '
                           'test-requirements.txt)' % (name, BIN_DIR))
    return path


def free_port() -> int:
    """A loopback port nobody listens on now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def log_tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, 'rb') as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode('utf-8', 'replace')
    except OSError:
        return ''
    return '\n'.join(text.splitlines()[-lines:])


def http_get(url: str, timeout: float = 2.0) -> int | None:
    """The status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    except (OSError, ValueError):
        return None


class Process:
    """One service process, its output appended to a log file."""

    def __init__(self, name: str, argv: list, log_path: str,
                 env: dict | None = None, cwd: str | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, 'ab') as log:
            log.write(('--- %s: %s\n' % (self.name, ' '.join(self.argv)))
                      .encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                start_new_session=True)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServiceError('%s exited with status %s; the end of %s:\n%s'
                               % (self.name, self.proc.returncode,
                                  self.log_path, log_tail(self.log_path)))

    def group_alive(self) -> bool:
        """Whether any process is left in the service's group."""
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _signal_group(self, sig) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a crash would end it, and
        reap the leader; the group is empty on return."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self._reap()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, SIGKILL what is left after timeout."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.proc.poll()
            if not self.group_alive():
                break
            time.sleep(0.05)
        else:
            self._signal_group(signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        """Reap the leader, then wait until the group is really empty
        (children re-parented to init are reaped there), killing what
        is left, so that the ports are free on return."""
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 10
        while self.group_alive() and time.monotonic() < deadline:
            self._signal_group(signal.SIGKILL)
            time.sleep(0.05)


def wait_until(predicate, timeout: float, what: str,
               procs=(), interval: float = 0.2):
    """Poll predicate until it returns a true value, which is returned.

    A service that exits meanwhile fails the wait at once, with the end of
    its log, rather than after the whole timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            proc.check_alive()
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            logs = ''.join('\nthe end of %s:\n%s' % (p.log_path,
                                                     log_tail(p.log_path))
                           for p in procs)
            raise ServiceError('%s: not ready after %d s%s'
                               % (what, timeout, logs))
        time.sleep(interval)


class Service:
    """A service with ``launch()``, ``wait_ready()`` and ``stop()``.

    ``start()`` does the first two; as a context manager it is stopped on
    the way out, also when starting failed half way.
    """

    def launch(self) -> None:
        raise NotImplementedError

    def wait_ready(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
