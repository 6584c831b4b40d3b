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
"""The storage manager's garbage collector, in a background thread.

``kick(sr)`` (after VDI destroy, snapshot, clone and SR scan) schedules a
pass over the SR ``delay`` seconds later; in mode ``off`` only the
testing controls start one. One thread runs the passes, so an SR never
has two at once. A pass first repairs what a crash left (``coalesce``'s
``recover``), then takes one step at a time (``gcplan``) until none is
left, each step holding the server lock, so that no call sees a file
half changed and between steps the calls go on. Steps whose files a long
operation uses (a transfer or ``VDI.copy``: the VDI's
``current_operations``), or any step while a plugin call runs, are left
for a pass ``RETRY`` seconds later.

The visible effects are the host's: base copy records go, children's
``sm_config['vhd-parent']`` change, sizes follow the files; a VDI keeps
its uuid, record and data (after a leaf coalesce its file is its old
parent's, renamed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

from xenapinfs_driver.testing.xapi import coalesce
from xenapinfs_driver.testing.xapi import errors
from xenapinfs_driver.testing.xapi import gcplan
from xenapinfs_driver.testing.xapi import vdifiles
from xenapinfs_driver.vhd import errors as vhderrors

LOG = logging.getLogger(__name__)
MODES = ('auto', 'off')
DEFAULT_DELAY = 2.0     # seconds; sm starts its GC a moment after the call
RETRY = 0.5             # seconds before a blocked step is tried again
STEPS = ('copied', 'installed', 'relinked', 'leaf-copied', 'leaf-installed')


class _Ctx:
    """The part of a call object vdifiles.scan needs."""

    def __init__(self, db):
        self.db = db


class Collector:
    """Background passes over plugged SRs; controls for tests."""

    def __init__(self, server, mode: str = 'auto',
                 delay: float = DEFAULT_DELAY):
        if mode not in MODES:
            raise ValueError('gc mode %r is not one of %s' % (mode, MODES))
        self.server = server
        self.db = server.db
        self.mode = mode
        self.delay = float(delay)
        self._cond = threading.Condition()
        self._due = {}              # SR ref -> monotonic time
        self._running = None        # SR ref of the pass under way
        self._frozen = False
        self._stopping = False
        self._plugins = 0
        self._pause_at = set()
        self._paused = None
        self._resume = threading.Event()
        self._thread = None
        self.passes = 0
        self.steps = 0

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name='xapi-gc')
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._resume.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- hooks --------------------------------------------------------------

    def kick(self, sr) -> None:
        """An operation may have left work in sr: a pass, later."""
        if self.mode == 'auto':
            self._schedule(sr, self.delay)

    @contextlib.contextmanager
    def plugin_call(self):
        """Mark a plugin call: it reads and writes SR files unlocked."""
        # Counted under the server lock, which every step holds: a plugin
        # never starts in the middle of a step.
        with self.db.lock:
            self._plugins += 1
        try:
            yield
        finally:
            with self.db.lock:
                self._plugins -= 1

    def recover(self, sr_dir: str) -> list:
        """Undo or finish a crashed pass's step (server lock held)."""
        return coalesce.recover(sr_dir, lambda u: vdifiles.children(
            sr_dir, u))

    def repair_plugged(self) -> None:
        """Put right what a crash left half done in every plugged SR.

        A restarted server's SRs come back plugged from its database, so
        the repair that a first plug runs never would: do it at start,
        before anyone is served, then let a pass go on from there. The
        scan runs whatever the repair did, as a host's boot-time plug
        does: a step killed after its files changed but before its
        records were committed (the database is written when the server
        lock is let go) left records that only a scan puts right.
        """
        with self.db.lock:
            for sr in self.db.refs('SR'):
                sr_dir = self._sr_dir(sr)
                if sr_dir is None:
                    continue
                self.recover(sr_dir)
                vdifiles.scan(_Ctx(self.db), sr, sr_dir)
                self.kick(sr)

    # -- controls -----------------------------------------------------------

    def run(self, srs, timeout: float) -> bool:
        """A pass over each of srs now; True once all are done."""
        for sr in srs:
            self._schedule(sr, 0.0)
        return self.wait_idle(timeout)

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._due or self._running is not None:
                left = deadline - time.monotonic()
                if left <= 0 or self._frozen:
                    return False
                self._cond.wait(left)
            return True

    def freeze(self, frozen: bool) -> None:
        """Hold (or release) the passes; returns once no step runs."""
        with self._cond:
            self._frozen = frozen
            self._cond.notify_all()
        if frozen and self._paused is None:
            # A step holds the server lock from start to end.
            with self.db.lock:
                pass

    def pause_at(self, steps) -> None:
        bad = set(steps) - set(STEPS)
        if bad:
            raise ValueError('unknown steps %s' % sorted(bad))
        self._pause_at = set(steps)
        self._resume.clear()

    def wait_paused(self, timeout: float):
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._paused is None and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            return self._paused

    def resume(self) -> None:
        self._pause_at = set()
        self._resume.set()

    def status(self) -> dict:
        with self._cond:
            return {'mode': self.mode, 'delay': repr(self.delay),
                    'frozen': self._frozen, 'paused': self._paused or '',
                    'running': self._running or '',
                    'pending': sorted(self._due), 'passes': str(self.passes),
                    'steps': str(self.steps)}

    # -- the thread ---------------------------------------------------------

    def _schedule(self, sr, delay: float) -> None:
        with self._cond:
            when = time.monotonic() + delay
            self._due[sr] = min(self._due.get(sr, when), when)
            self._cond.notify_all()

    def _next_sr(self):
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                if self._frozen or not self._due:
                    self._cond.wait()
                    continue
                sr, when = min(self._due.items(), key=lambda kv: kv[1])
                if when > now:
                    self._cond.wait(when - now)
                    continue
                del self._due[sr]
                self._running = sr
                return sr
            return None

    def _loop(self) -> None:
        while True:
            sr = self._next_sr()
            if sr is None:
                return
            try:
                self._pass(sr)
            except Exception:
                LOG.exception('garbage collection of SR %s failed', sr)
            finally:
                with self._cond:
                    self._running = None
                    self.passes += 1
                    self._cond.notify_all()

    def _sr_dir(self, sr):
        """The plugged SR's directory, or None (lock held)."""
        db = self.db
        if not db.exists('SR', sr):
            return None
        for pbd in db.find('PBD', SR=sr, currently_attached=True):
            try:
                path = self.server.storage.nfs_dir(
                    db.get('PBD', pbd)['device_config'])
            except errors.XapiError:
                return None
            return os.path.join(path, db.get('SR', sr)['uuid'])
        return None

    def _pass(self, sr) -> None:
        db = self.db
        failed = set()
        while True:
            with self._cond:
                if self._frozen or self._stopping:
                    # Not done: the pass resumes once unfrozen.
                    self._due.setdefault(sr, time.monotonic())
                    return
            with db.lock:
                sr_dir = self._sr_dir(sr)
                if sr_dir is None:
                    return
                if self.recover(sr_dir):
                    vdifiles.scan(_Ctx(db), sr, sr_dir)
                action, blocked = self._plan(sr, sr_dir, failed)
                if action is None:
                    if blocked:
                        self._schedule(sr, RETRY)
                    return
                try:
                    self._do(sr, sr_dir, action)
                    self.steps += 1
                except (vhderrors.VhdError, OSError) as exc:
                    # sm's _failedCoalesceTargets: not again in this pass.
                    LOG.warning('SR %s: %s of %s failed: %s', sr,
                                action.kind, action.uuid, exc)
                    failed.add(action.uuid)

    def _plan(self, sr, sr_dir, failed):
        db = self.db
        if self._plugins:
            return None, True
        records = {}
        for ref in db.find('VDI', SR=sr):
            rec = db.get('VDI', ref)
            records[rec['location']] = rec
        tree = gcplan.Tree(vdifiles.survey(sr_dir), records)
        return gcplan.next_action(
            tree, db.get('SR', sr)['other_config'], frozenset(failed))

    # -- the steps (server lock held) ---------------------------------------

    def _step(self, name: str) -> None:
        """A test may hold the pass here (and kill the server)."""
        if name not in self._pause_at:
            return
        with self._cond:
            self._paused = name
            self._cond.notify_all()
        self._resume.wait()
        with self._cond:
            self._paused = None

    def _drop(self, sr, uuid) -> None:
        for ref in self.db.find('VDI', SR=sr, location=uuid):
            vdifiles.drop_record(self.db, ref)

    def _refresh(self, sr, sr_dir, uuid) -> None:
        for ref in self.db.find('VDI', SR=sr, location=uuid):
            vdifiles.refresh(self.db, ref, coalesce.vhd(sr_dir, uuid))

    def _do(self, sr, sr_dir, action) -> None:
        path = coalesce.vhd(sr_dir, action.uuid)
        if action.kind == 'garbage':
            os.unlink(path)
            self._drop(sr, action.uuid)
            LOG.info('SR %s: garbage %s removed', sr, action.uuid)
            return
        parent = coalesce.vhd(sr_dir, action.parent)
        if action.kind == 'coalesce':
            tmp = coalesce.scratch(parent)
            coalesce.merged_copy(path, parent, tmp)
            self._step('copied')
            coalesce.install(tmp, parent)
            self._step('installed')
            coalesce.mark(sr_dir, action.uuid, action.parent)
            for kid in action.children:
                coalesce.relink(coalesce.vhd(sr_dir, kid), parent)
                self._refresh(sr, sr_dir, kid)
                self._step('relinked')
            coalesce.finish(sr_dir, action.uuid, action.parent, ())
            self._drop(sr, action.uuid)
            self._refresh(sr, sr_dir, action.parent)
        else:
            tmp = coalesce.scratch(path)
            coalesce.merged_copy(path, parent, tmp, unhide=True)
            self._step('leaf-copied')
            coalesce.install(tmp, path)
            self._step('leaf-installed')
            os.unlink(parent)
            self._drop(sr, action.parent)
            self._refresh(sr, sr_dir, action.uuid)
        LOG.info('SR %s: %s coalesce of %s into %s done', sr, action.kind,
                 action.uuid, action.parent)
