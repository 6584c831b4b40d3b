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
"""``testing.*``: the test-only control methods (no XAPI has them).

They need no session (one sent first is ignored), so that a test in
another process can drive a server with a plain
``xmlrpc.client.ServerProxy(url).testing.<method>(...)``; answers have the
usual ``{'Status', 'Value'}`` shape. Calls to them are not logged in
``get_calls``.

``add_fault(rule)`` -> rule id (see ``faults``); ``clear_faults()``;
``get_faults()`` -> the rules, each with the matching calls it has
``seen`` and how many it ``fired`` on (so that a test can assert that
what it meant to inject was injected); ``get_calls()`` -> names since the last
``clear_calls()``; ``invalidate_sessions()`` -> how many ended;
``invalidate_session(ref)``; ``get_state()`` -> counts of records per
class, the files under the exports (relative to the root) and the SR
mounts, for leak checks; ``forget_srs()`` -> how many SRs the host
forgot, as ``--forget-srs`` does at start (see ``restore``). The garbage
collector's controls are in ``gcctl``.
"""

from __future__ import annotations

import os

from xenapinfs_driver.testing.xapi import errors
from xenapinfs_driver.testing.xapi import gcctl
from xenapinfs_driver.testing.xapi import restore
from xenapinfs_driver.testing.xapi import wire


def add_fault(call, rule: wire.Struct):
    try:
        return call.server.faults.add(rule)
    except ValueError as exc:
        raise errors.XapiError('INVALID_VALUE', 'rule', str(exc)) from None


def clear_faults(call):
    call.server.faults.clear()
    return ''


def get_faults(call):
    return call.server.faults.rules()


def get_calls(call):
    return call.server.calls.list()


def clear_calls(call):
    call.server.calls.clear()
    return ''


def invalidate_sessions(call):
    return str(call.server.sessions.invalidate())


def invalidate_session(call, ref: wire.SessionRef):
    return str(call.server.sessions.invalidate(ref))


def get_state(call):
    db, storage = call.db, call.server.storage
    with db.lock:
        state = {cls: str(db.count(cls))
                 for cls in ('SR', 'PBD', 'VDI', 'VBD', 'session', 'task')}
        state['files'] = storage.vhd_files()
        state['mounts'] = sorted(os.listdir(storage.mount_root))
        return state


def forget_srs(call):
    return str(restore.forget_srs(call.db, call.server.storage))


METHODS = {'testing.%s' % f.__name__: f for f in (
    add_fault, clear_faults, get_faults, get_calls, clear_calls,
    invalidate_sessions, invalidate_session, get_state, forget_srs)}
METHODS.update(gcctl.METHODS)
