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
"""Fault injection and the call log, for tests.

A rule names a call as it arrives: an XML-RPC method exactly as called
(``VDI.create``; ``Async.VDI.copy`` is a different name), an HTTP handler
(``http:import_raw_vdi``, ``http:export_raw_vdi``) or a plugin function
(``plugin:glance.py/download_vhd2``). Counting starts when the rule is
added: with ``nth`` N and ``times`` T, matching calls N .. N+T-1 fail.
Actions:

``error``
    answer with the Failure ``error`` (``[code, param, ...]``), not doing
    the call;
``drop``
    close the connection without answering, not doing the call (an HTTP
    transfer's task then fails with ``VDI_IO_ERROR``, as XAPI fails the
    task of a client that went away);
``drop_after``
    do the call, then close without answering (an export sends half of
    its data, then closes; its task fails with ``VDI_IO_ERROR``);
``delay``
    sleep ``seconds``, then do the call;
``disk_full``
    fail with ``SR_BACKEND_FAILURE_44`` as if the export filled up during
    the call's first write; what the call wrote is removed (an HTTP import
    fails after its first block of data). A call that writes nothing (an
    export, ``SR.get_record``) fails at once; a plugin fails as dom0 would,
    ``XENAPI_PLUGIN_FAILURE [fn, 'OSError', '[Errno 28] ...']``.
"""

from __future__ import annotations

import dataclasses
import threading

ACTIONS = ('error', 'drop', 'drop_after', 'delay', 'disk_full')


class Drop(Exception):
    """Close the client's connection without answering."""


@dataclasses.dataclass
class Rule:
    """One fault rule; ``seen`` counts the matching calls so far,
    ``fired`` those it failed (what a test asserts it injected)."""

    id: str
    method: str
    action: str
    nth: int = 1
    times: int = 1
    error: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    seen: int = 0
    fired: int = 0

    def to_wire(self) -> dict:
        return {'id': self.id, 'method': self.method, 'action': self.action,
                'nth': str(self.nth), 'times': str(self.times),
                'error': list(self.error), 'seconds': str(self.seconds),
                'seen': str(self.seen), 'fired': str(self.fired)}


def _positive(rule: dict, key: str, default: int) -> int:
    try:
        value = int(rule.get(key, default))
    except (TypeError, ValueError):
        raise ValueError('%s must be an integer, not %r'
                         % (key, rule.get(key))) from None
    if value < 1:
        raise ValueError('%s must be at least 1' % key)
    return value


def parse_rule(rule: dict, rule_id: str) -> Rule:
    """Validate a rule as a client sends it; raises ValueError."""
    if not isinstance(rule, dict):
        raise ValueError('a rule is a struct')
    unknown = set(rule) - {'method', 'action', 'nth', 'times', 'error',
                           'seconds'}
    if unknown:
        raise ValueError('unknown keys %s' % ', '.join(sorted(unknown)))
    method = rule.get('method')
    if not isinstance(method, str) or not method:
        raise ValueError('method must name a call')
    action = rule.get('action', 'error')
    if action not in ACTIONS:
        raise ValueError('action must be one of %s' % ', '.join(ACTIONS))
    error = rule.get('error', [])
    if action == 'error':
        if not isinstance(error, (list, tuple)) or not error or \
                not all(isinstance(e, str) for e in error):
            raise ValueError('an error rule needs error: [code, params...] '
                             'of strings')
    try:
        seconds = float(rule.get('seconds', 0))
    except (TypeError, ValueError):
        raise ValueError('seconds must be a number') from None
    if not 0 <= seconds <= 3600:
        raise ValueError('seconds must be between 0 and 3600')
    return Rule(rule_id, method, action, _positive(rule, 'nth', 1),
                _positive(rule, 'times', 1), list(error), seconds)


class Faults:
    """The active rules; ``take`` is asked once per arriving call."""

    def __init__(self):
        self._lock = threading.Lock()
        self._rules = []
        self._next = 1

    def add(self, rule: dict) -> str:
        """Add a rule (see the module docstring); return its id."""
        with self._lock:
            parsed = parse_rule(rule, str(self._next))
            self._next += 1
            self._rules.append(parsed)
            return parsed.id

    def clear(self) -> None:
        with self._lock:
            self._rules = []

    def rules(self) -> list:
        with self._lock:
            return [r.to_wire() for r in self._rules]

    def take(self, name: str) -> Rule | None:
        """Count a call of name against every rule; the first that fires."""
        fired = None
        with self._lock:
            for rule in self._rules:
                if rule.method != name:
                    continue
                rule.seen += 1
                if fired is None and \
                        rule.nth <= rule.seen < rule.nth + rule.times:
                    fired = rule
            if fired is not None:
                # Counted here, where it is decided: every caller of
                # take applies the rule it returns.
                fired.fired += 1
        return fired


class CallLog:
    """The names of the calls received, in order."""

    def __init__(self):
        self._lock = threading.Lock()
        self._calls = []

    def add(self, name: str) -> None:
        with self._lock:
            self._calls.append(name)

    def list(self) -> list:
        with self._lock:
            return list(self._calls)

    def clear(self) -> None:
        with self._lock:
            self._calls = []
