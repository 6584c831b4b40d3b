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
"""Markers that let the orphan sweep (:mod:`.sweep`) find what an
operation left behind.

An operation that makes VDIs nobody else will ever know about while it
runs (an upload's snapshot, the layers dom0 downloads before they are
copied into a volume, a snapshot or clone not tagged yet) announces itself
before it makes them: its source VDI gets the other_config key
``xenapinfs-op-<op id>``, whose value (JSON) says who runs it (the cinder
host, and the run of its volume service), what for, since when, and which
uuids it asked dom0 to write. ``VDI.snapshot`` and ``VDI.clone`` copy the
source's other_config, so a copy carries the marker from the instant it
exists: there is no window in which it is unmarked. The source loses the
key as soon as the copy is made; a copy that cinder gets keeps none.

An operation is alive while the volume service that started it runs it
(:class:`Registry`); the sweep asks the registry, never the clock alone,
so a long upload is never swept.
"""

import contextlib
import json
import time
import uuid

from oslo_log import log as logging

from xenapinfs_driver.xenapi import recovery

LOG = logging.getLogger(__name__)

PREFIX = 'xenapinfs-op-'
# The tags that say which cinder object a VDI is (backend.VOLUME_KEY and
# SNAPSHOT_KEY). A copy inherits its source's: only tags that differ were
# set for the copy.
CINDER_KEYS = ('cinder-volume-id', 'cinder-snapshot-id')


class Mark:
    """One marker: the key and what its JSON value says."""

    def __init__(self, key: str, value: dict) -> None:
        self.key = key
        self.op = key[len(PREFIX):]
        self.host = value.get('host')
        self.run = value.get('run')
        self.purpose = value.get('purpose', '')
        self.time = float(value.get('time') or 0)
        self.source = value.get('source', '')
        self.fresh = list(value.get('fresh') or [])
        self.tags = dict(value.get('tags') or {})


def marks(other_config: dict) -> list[Mark]:
    """The markers in a VDI's ``other_config``; unreadable ones skipped."""
    found = []
    for key, value in (other_config or {}).items():
        if not key.startswith(PREFIX):
            continue
        try:
            found.append(Mark(key, json.loads(value)))
        except (ValueError, TypeError, AttributeError):
            LOG.debug('Ignoring unreadable marker %s', key)
    return found


def _remove(session, ref, key):
    try:
        session.call('VDI.remove_from_other_config', ref, key)
    except Exception as exc:
        if not recovery.is_gone(exc):
            raise


def strip(session, ref: str, other_config: dict) -> None:
    """Remove every marker from VDI ``ref`` (it now belongs to cinder)."""
    for key in other_config or {}:
        if key.startswith(PREFIX):
            _remove(session, ref, key)


def remove(session, ref: str, key: str) -> None:
    """Remove marker ``key`` from VDI ``ref``; a VDI gone is fine."""
    _remove(session, ref, key)


class Registry:
    """The operations this volume service runs now.

    :param host: cinder's host of the service (``host@backend``): the
        owner written in markers; each service sweeps its own.
    :param clock: seconds since the epoch (tests pass their own).
    """

    def __init__(self, host: str, clock=time.time) -> None:
        self.host = host or ''
        # A new value per start of the service: markers of another run
        # belong to operations that died with it.
        self.run = uuid.uuid4().hex
        self.clock = clock
        self.live = set()

    def alive(self, mark: Mark) -> bool:
        """Whether ``mark``'s operation still runs (or may: another
        host's, which only that host can tell)."""
        if mark.host != self.host:
            return True
        return mark.run == self.run and mark.op in self.live

    @contextlib.contextmanager
    def operation(self, purpose: str):
        """An operation, alive for the block: yields an :class:`Operation`.
        """
        op = Operation(self, purpose)
        self.live.add(op.id)
        try:
            yield op
        finally:
            self.live.discard(op.id)


class Operation:
    """One running operation, which marks the VDIs it copies from."""

    def __init__(self, registry: Registry, purpose: str) -> None:
        self.registry = registry
        self.purpose = purpose
        self.id = uuid.uuid4().hex
        self.key = PREFIX + self.id

    @contextlib.contextmanager
    def marking(self, session, source_ref: str, fresh=()):
        """Mark VDI ``source_ref`` for the block: what is copied from it
        meanwhile carries the marker too. ``fresh``: uuids the block asks
        dom0 to write, which the sweep looks for if the op dies.

        The source's marker goes when the block ends, whatever happened;
        a removal that fails is left to the sweep, which removes stale
        markers from sources.
        """
        reg = self.registry
        rec = session.call('VDI.get_record', source_ref)
        other = rec.get('other_config', {})
        value = json.dumps({
            'host': reg.host, 'run': reg.run, 'purpose': self.purpose,
            'time': int(reg.clock()), 'source': rec['uuid'],
            'fresh': list(fresh),
            'tags': {k: other[k] for k in CINDER_KEYS if k in other}},
            sort_keys=True)
        session.call('VDI.add_to_other_config', source_ref, self.key, value)
        try:
            yield
        finally:
            recovery.cleanup('the marker of %s on VDI %s' % (
                self.purpose, rec['uuid']), _remove, session, source_ref,
                self.key)
