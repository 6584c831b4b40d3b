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
"""A XenAPI test server for tests, and the few helpers most tests want.

In a test module (or better, a ``conftest.py``)::

    from tests.xapi_fixture import xapi_server  # noqa: F401

    def test_x(xapi_server):
        session = xapi_fixture.login(xapi_server)
        sr = xapi_fixture.create_sr(session)
        ...

``xapi_server`` is a started ``XapiServer`` on a temporary root with one
export (``EXPORT``), user ``USERNAME`` and password ``PASSWORD``; it is
stopped, and its files removed, after the test. ``running_server(...)``
does the same as a context manager, with any ``XapiServer`` keyword
(``slave_listen``, ``sr_size``, ``tls_cert``, ``gc``, ``dom0_plugins``...);
the garbage collector is ``off`` unless a test asks for it, and the dom0
plugins are ``DOM0_PLUGINS`` unless given (pytest's ``--dom0-plugins``
sets it). ``Control(url)`` drives
the test-only ``testing.*`` calls (faults, call log, state) over the wire,
so it works on a server in another process too.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import xmlrpc.client

import pytest
import XenAPI

from xenapinfs_driver.testing.xapi.server import XapiServer

USERNAME = 'root'
PASSWORD = 'xapi-test-secret'
EXPORT = ('nfs.example', '/srv/cinder')
DEVICE_CONFIG = {'server': EXPORT[0], 'serverpath': EXPORT[1]}
# Who answers host.call_plugin: 'builtin' or 'os-xenapi'.
DOM0_PLUGINS = 'builtin'


@contextlib.contextmanager
def running_server(root: str | None = None, **kwargs):
    """A started XapiServer (with EXPORT) on root or a temporary one."""
    kwargs.setdefault('exports', [EXPORT])
    # The garbage collector changes chains in the background, a moment
    # after the call: tests that look at chains turn it on themselves.
    kwargs.setdefault('gc', 'off')
    kwargs.setdefault('username', USERNAME)
    kwargs.setdefault('password', PASSWORD)
    kwargs.setdefault('dom0_plugins', DOM0_PLUGINS)
    with contextlib.ExitStack() as stack:
        if root is None:
            root = stack.enter_context(tempfile.TemporaryDirectory(
                prefix='xapi-'))
        server = XapiServer(root, **kwargs).start()
        stack.callback(server.stop)
        yield server


@pytest.fixture
def xapi_server():
    """A started XapiServer with one export, stopped after the test."""
    with running_server() as server:
        yield server


def login(server_or_url, originator: str = 'tests', **kwargs):
    """A logged-in ``XenAPI.Session``; kwargs go to its constructor."""
    url = getattr(server_or_url, 'url', server_or_url)
    session = XenAPI.Session(url, **kwargs)
    session.xenapi.login_with_password(USERNAME, PASSWORD, '1.0',
                                       originator)
    return session


def create_sr(session, name: str = 'cinder', shared: bool = False) -> str:
    """A new NFS SR on EXPORT (plugged), as the driver would make it."""
    host = session.xenapi.session.get_this_host(session.handle)
    return session.xenapi.SR.create(host, dict(DEVICE_CONFIG), '0', name,
                                    '', 'nfs', '', shared, {})


def create_vdi(session, sr: str, size: int, **fields) -> str:
    """A new VDI of size bytes (XAPI rounds it up to 2 MiB)."""
    record = {'SR': sr, 'virtual_size': str(size), 'type': 'user',
              'sharable': False, 'read_only': False, 'other_config': {},
              'name_label': '', 'name_description': '', 'sm_config': {},
              'xenstore_data': {}, 'tags': []}
    record.update(fields)
    return session.xenapi.VDI.create(record)


def wait_task(session, task: str, timeout: float = 10.0) -> dict:
    """The task's record once it is no longer pending (or cancelling)."""
    deadline = time.monotonic() + timeout
    while True:
        rec = session.xenapi.task.get_record(task)
        if rec['status'] not in ('pending', 'cancelling'):
            return rec
        if time.monotonic() > deadline:
            raise AssertionError('task %s still %s after %.0f s'
                                 % (task, rec['status'], timeout))
        time.sleep(0.02)


class Control:
    """The server's ``testing.*`` calls, answers unwrapped.

    ``add_fault(method, action='error', **rule)`` returns the rule id;
    ``faults()`` the rules with how many calls each ``seen`` and how many
    it ``fired`` on (ints); ``calls()``, ``clear_calls()``, ``clear_faults()``,
    ``invalidate_sessions()``, ``forget_srs()`` and ``state()`` do what
    they say; the ``gc_*`` methods drive the garbage collector (see
    ``gcctl``).
    """

    def __init__(self, server_or_url, **kwargs):
        url = getattr(server_or_url, 'url', server_or_url)
        self._proxy = xmlrpc.client.ServerProxy(url, **kwargs)

    def _call(self, name, *args):
        result = getattr(self._proxy.testing, name)(*args)
        if result.get('Status') != 'Success':
            raise XenAPI.Failure(result.get('ErrorDescription'))
        return result['Value']

    def add_fault(self, method: str, action: str = 'error', **rule) -> str:
        rule = {k: v if k == 'error' else str(v) for k, v in rule.items()}
        return self._call('add_fault', dict(rule, method=method,
                                            action=action))

    def clear_faults(self) -> None:
        self._call('clear_faults')

    def faults(self) -> list:
        counts = ('nth', 'times', 'seen', 'fired')
        return [{k: int(v) if k in counts else v for k, v in rule.items()}
                for rule in self._call('get_faults')]

    def calls(self) -> list:
        return self._call('get_calls')

    def clear_calls(self) -> None:
        self._call('clear_calls')

    def invalidate_sessions(self) -> int:
        return int(self._call('invalidate_sessions'))

    def forget_srs(self) -> int:
        return int(self._call('forget_srs'))

    def state(self) -> dict:
        return self._call('get_state')

    def gc_run(self, sr: str = '', timeout: float = 30.0) -> bool:
        """A garbage collection pass now (all SRs if no sr); True once
        nothing is left to do, False if that takes longer than timeout."""
        return self._call('gc_run', sr, str(timeout)) == 'true'

    def gc_wait(self, timeout: float = 30.0) -> bool:
        return self._call('gc_wait', str(timeout)) == 'true'

    def gc_freeze(self) -> None:
        self._call('gc_freeze')

    def gc_unfreeze(self) -> None:
        self._call('gc_unfreeze')

    def gc_pause_at(self, *steps) -> None:
        self._call('gc_pause_at', list(steps))

    def gc_wait_paused(self, timeout: float = 30.0) -> str:
        return self._call('gc_wait_paused', str(timeout))

    def gc_resume(self) -> None:
        self._call('gc_resume')

    def gc_status(self) -> dict:
        return self._call('gc_status')
