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
"""Fault injection for every driver operation, against the test server.

For each operation the call log of the test server first tells which
calls it makes, in order (XML-RPC methods, ``http:import_raw_vdi``,
``plugin:glance.py/download_vhd2``...); nothing here lists them, so a call
the driver starts making is covered the next run. Then, for each call and
each of its occurrences (``nth``), and each kind of fault, the operation
runs again with that one call failing once, and must either succeed
(through a retry) or raise a cinder exception whose message names what
failed. Either way the host must afterwards hold exactly what cinder
knows about: its volumes' and snapshots' VDIs and nothing else, no SR,
PBD, VBD, task or login more (read from the server's tables), no mount
more, no file anywhere in the exports that was not there and none in the
SR without a VDI record, no staging directory, and nothing left in
``image_conversion_dir``; and every source of the operation (a volume, a
snapshot, a VDI to adopt) still holds its data, after a failure too.

The matrix cannot pass with nothing injected: the server counts the
calls each fault rule fired on, each (call, nth, kind) must fire exactly
once (a poll that a faster task made unnecessary is run again, a few
times), and an operation's faults fired must add up to what its learned
call log promised; an empty call log fails too, unless the operation
says it calls nothing (``Op.silent``).

Fault kinds (``FAULTS``): a permanent XenAPI error, a dropped connection
(the call not done), a lost answer (the call done, ``drop_after``), a full
disk on the calls that write, and a timeout (a delay longer than
``xenapi_connection_timeout``, in a class of its own since each costs a
timeout). By default every call gets ``error`` and ``drop`` (a call that
is safe to repeat gets ``drop`` on its first occurrence: see
:func:`kinds_for`), the writing calls also ``disk_full`` and
``drop_after``, the retry classes drop each call safe to repeat once, and
timeouts a fixed sample; ``XENAPINFS_FAULTS=full`` (about three times
longer) runs every kind on every call of every operation.

The number of faults that fired, per operation and kind, is printed at the
end of the module's run (pytest's terminal, even with ``-q``), and added
to the file ``XENAPINFS_FAULTS_REPORT`` names, if set.
"""

import collections
import contextlib
import functools
import io
import operator
import os
import shutil
import tempfile
import time
import types
import unittest
import uuid

from cinder import exception as cinder_exception
from cinder import objects
from cinder.tests.unit import fake_snapshot
from cinder.tests.unit import utils as tests_utils
from oslo_config import cfg
from oslo_utils import units
import pytest

from tests import fake_images
from tests import stack_fixture
from tests.unit.image import test_download
from tests.unit import test_driver
from tests import vhd_factory
from xenapinfs_driver import driver
from xenapinfs_driver.testing.xapi import api as xapi_api
from xenapinfs_driver.xenapi import session as xsession
from xenapinfs_driver.xenapi import storage

MiB = units.Mi
GiB = units.Gi
# The same few MiB of random data, made hundreds of times: made once.
pattern = functools.lru_cache()(test_driver.pattern)
glance_service = stack_fixture.glance_service
FULL = os.environ.get('XENAPINFS_FAULTS') == 'full'
PROJECT = 'project-faults'

SR_GONE = ['SR_BACKEND_FAILURE_47', '', 'The SR is not available', '']
INTERNAL = ['INTERNAL_ERROR', 'injected fault']
TIMEOUT = 1                     # xenapi_connection_timeout of TimeoutFaults
FAULTS = {
    'error': {'action': 'error', 'error': SR_GONE},
    'internal': {'action': 'error', 'error': INTERNAL},
    'drop': {'action': 'drop'},
    'drop_after': {'action': 'drop_after'},
    'disk_full': {'action': 'disk_full'},
    'timeout': {'action': 'delay', 'seconds': TIMEOUT + 0.5},
}
# What the message of the resulting exception may name, besides the call.
CODES = {'error': ('SR_BACKEND_FAILURE_47',),
         'internal': ('INTERNAL_ERROR',),
         'disk_full': ('SR_BACKEND_FAILURE_44', 'No space left'),
         'drop': (), 'drop_after': (), 'timeout': ('timed out',)}

# faults that fired: operation -> kind -> count
# Runs of one fault before its call counts as not reached (see one()).
REACH_ATTEMPTS = 3
LEARN_RUNS = 3                  # a warm-up, then the fewest of two
COUNTS = collections.defaultdict(collections.Counter)


def writes(call):
    """Whether ``call`` writes to the export (a full disk can fail it)."""
    name = call[len('Async.'):] if call.startswith('Async.') else call
    return (name in xapi_api.WRITES and name != 'host.call_plugin') or \
        call in ('http:import_raw_vdi', 'plugin:glance.py/download_vhd2')


def short(call):
    """The part of a call's name an error message is expected to show."""
    if call.startswith('Async.'):
        return call[len('Async.'):]
    if call.startswith('http:'):
        return call[len('http:'):]
    if call.startswith('plugin:'):
        return call.rsplit('/', 1)[1]
    return call


def fewest(runs):
    """The last of ``runs`` (call logs) with each call kept only as often
    as the run that made it least often did."""
    keep = functools.reduce(operator.and_, map(collections.Counter, runs))
    seen = collections.Counter()
    calls = []
    for name in runs[-1]:
        seen[name] += 1
        if seen[name] <= keep[name]:
            calls.append(name)
    return calls


def occurrences(calls):
    """``[(call, nth)]``: every entry of a call log, numbered per call."""
    seen = collections.Counter()
    points = []
    for name in calls:
        seen[name] += 1
        points.append((name, seen[name]))
    return points


def kinds_for(call, nth, kinds):
    """The fault kinds that make sense for the ``nth`` ``call``.

    By default a call that is safe to repeat gets ``drop`` on its first
    occurrence only: with no retries, a dropped read fails as an error on
    it does, which every occurrence gets (the retry classes drop them
    with retries). A lost answer is asked of the calls that write.
    """
    out = []
    for kind in kinds:
        if kind == 'disk_full' and not writes(call):
            continue
        if not FULL and kind == 'drop_after' and not writes(call):
            continue
        if not FULL and kind == 'drop' and nth > 1 and \
                xsession.is_safe(call):
            continue
        out.append(kind)
    return out


@pytest.fixture(scope='module', autouse=True)
def _summary(pytestconfig):
    """Print the faults injected per operation when the module is done."""
    yield
    if not COUNTS:
        return
    kinds = [k for k in FAULTS if any(c[k] for c in COUNTS.values())]
    width = max(len(op) for op in COUNTS)
    lines = ['', 'faults injected per operation (%s matrix):'
             % ('full' if FULL else 'default'),
             '  '.join(['operation'.ljust(width)] +
                       [k.rjust(10) for k in kinds] + ['total'.rjust(6)])]
    for op in sorted(COUNTS):
        row = COUNTS[op]
        lines.append('  '.join([op.ljust(width)] +
                               [str(row[k]).rjust(10) for k in kinds] +
                               [str(sum(row.values())).rjust(6)]))
    total = collections.Counter()
    for row in COUNTS.values():
        total.update(row)
    lines.append('  '.join(['total'.ljust(width)] +
                           [str(total[k]).rjust(10) for k in kinds] +
                           [str(sum(total.values())).rjust(6)]))
    text = '\n'.join(lines)
    # Past pytest's output capture, which would keep it to itself.
    capture = pytestconfig.pluginmanager.getplugin('capturemanager')
    with capture.global_and_fixture_disabled() if capture else \
            contextlib.nullcontext():
        print(text, flush=True)
    path = os.environ.get('XENAPINFS_FAULTS_REPORT')
    if path:
        with open(path, 'a') as f:
            f.write(text + '\n')


# -- operations ---------------------------------------------------------------
#
# An operation prepares what it needs (without faults), runs, and says
# which VDIs cinder knows about afterwards: ``must`` exist, ``may`` exist
# (a failed delete may or may not have happened; cinder keeps the object
# and deletes again). ``check`` looks at the data where it matters.

class Op:
    name = ''
    # The XenAPI calls that follow once the outcome is decided and cannot
    # change it: listed here, they get no fault. None so far: the reads
    # after the work (SR.get_uuid for a log line, task.get_record of a
    # finished task, the lookups of cleanup) can all fail the operation
    # or leave something behind, so they are all tried.
    ignore = frozenset()
    # Async calls whose task, when their answer is lost, nothing can tell
    # apart from others': it is left, ended, for XAPI to destroy (XAPI's
    # GC does, an hour after a task ends).
    lost_tasks = frozenset()
    # Whether it calls nothing on the host (its matrix is then empty:
    # said here, so that an empty call log cannot pass unnoticed).
    silent = False

    def prepare(self, t):
        return types.SimpleNamespace()

    def run(self, t, ctx):
        raise NotImplementedError

    def known(self, t, ctx, result, error):
        """``(must, may)``: sets of VDI uuids cinder knows about."""
        return set(), set()

    def check(self, t, ctx, result, error):
        pass

    def tidy(self, t, ctx):
        pass


def _uuid(obj):
    return obj.provider_location.split('/')[1]


def _location(model):
    return model['provider_location'].split('/')[1]


class CreateVolume(Op):
    name = 'create_volume'

    def run(self, t, ctx):
        ctx.vol = t.volume()
        return t.driver.create_volume(ctx.vol)

    def known(self, t, ctx, result, error):
        return ({_location(result)} if result else set()), set()

    def check(self, t, ctx, result, error):
        if result:
            rec = t.record(_location(result))
            t.assertEqual(str(GiB), rec['virtual_size'])
            t.assertEqual(ctx.vol.id,
                          rec['other_config'][driver.VOLUME_KEY])


class DeleteVolume(Op):
    name = 'delete_volume'

    def prepare(self, t):
        return types.SimpleNamespace(vol=t.new_volume(data=pattern(MiB, 13)))

    def run(self, t, ctx):
        return t.driver.delete_volume(ctx.vol)

    def known(self, t, ctx, result, error):
        return set(), (set() if error is None else {_uuid(ctx.vol)})

    def check(self, t, ctx, result, error):
        # Not deleted is whole: cinder keeps the volume, in error_deleting.
        if error is not None and t.exists(_uuid(ctx.vol)):
            t.assert_intact(ctx.vol, pattern(MiB, 13), error)


class ExtendVolume(Op):
    name = 'extend_volume'

    def prepare(self, t):
        return types.SimpleNamespace(vol=t.new_volume(data=pattern(MiB, 1)))

    def run(self, t, ctx):
        return t.driver.extend_volume(ctx.vol, 2)

    def known(self, t, ctx, result, error):
        return {_uuid(ctx.vol)}, set()

    def check(self, t, ctx, result, error):
        size = t.record(ctx.vol)['virtual_size']
        if error is None:
            t.assertEqual(str(2 * GiB), size)
        else:
            t.assertIn(size, (str(GiB), str(2 * GiB)))
        t.assert_intact(ctx.vol, pattern(MiB, 1), error)


class CreateSnapshot(Op):
    name = 'create_snapshot'

    def prepare(self, t):
        return types.SimpleNamespace(vol=t.new_volume(data=pattern(MiB, 2)))

    def run(self, t, ctx):
        ctx.snap = fake_snapshot.fake_snapshot_obj(
            t.context, volume=ctx.vol, volume_id=ctx.vol.id,
            id=str(uuid.uuid4()))
        return t.driver.create_snapshot(ctx.snap)

    def known(self, t, ctx, result, error):
        return {_uuid(ctx.vol)} | ({_location(result)} if result else
                                   set()), set()

    def check(self, t, ctx, result, error):
        if result:
            rec = t.record(_location(result))
            t.assertEqual(ctx.snap.id,
                          rec['other_config'][driver.SNAPSHOT_KEY])
            t.assertNotIn(driver.VOLUME_KEY, rec['other_config'])
            t.assertEqual(pattern(MiB, 2), t.read(_location(result), MiB))
        t.assert_intact(ctx.vol, pattern(MiB, 2), error)


class DeleteSnapshot(Op):
    name = 'delete_snapshot'

    def prepare(self, t):
        vol = t.new_volume(data=pattern(MiB, 3))
        return types.SimpleNamespace(vol=vol, snap=t.snapshot(vol))

    def run(self, t, ctx):
        return t.driver.delete_snapshot(ctx.snap)

    def known(self, t, ctx, result, error):
        return {_uuid(ctx.vol)}, (set() if error is None else
                                  {_uuid(ctx.snap)})

    def check(self, t, ctx, result, error):
        t.assert_intact(ctx.vol, pattern(MiB, 3), error)
        if error is not None and t.exists(_uuid(ctx.snap)):
            t.assert_intact(ctx.snap, pattern(MiB, 3), error)


class VolumeFromSnapshot(Op):
    name = 'create_volume_from_snapshot'

    def prepare(self, t):
        vol = t.new_volume(data=pattern(MiB, 4))
        snap = t.snapshot(vol)
        t.write(vol, pattern(MiB, 5))
        return types.SimpleNamespace(vol=vol, snap=snap)

    def run(self, t, ctx):
        ctx.new = t.volume(size=2)
        return t.driver.create_volume_from_snapshot(ctx.new, ctx.snap)

    def known(self, t, ctx, result, error):
        return {_uuid(ctx.vol), _uuid(ctx.snap)} | (
            {_location(result)} if result else set()), set()

    def check(self, t, ctx, result, error):
        if result:
            rec = t.record(_location(result))
            t.assertEqual(str(2 * GiB), rec['virtual_size'])
            t.assertEqual(ctx.new.id, rec['other_config'][driver.VOLUME_KEY])
            t.assertEqual(pattern(MiB, 4), t.read(_location(result), MiB))
        # The sources: the snapshot, and the volume written since.
        t.assert_intact(ctx.snap, pattern(MiB, 4), error)
        t.assert_intact(ctx.vol, pattern(MiB, 5), error)


class CloneVolume(Op):
    name = 'create_cloned_volume'

    def prepare(self, t):
        return types.SimpleNamespace(vol=t.new_volume(data=pattern(MiB, 6)))

    def run(self, t, ctx):
        ctx.new = t.volume(size=2)
        return t.driver.create_cloned_volume(ctx.new, ctx.vol)

    def known(self, t, ctx, result, error):
        return {_uuid(ctx.vol)} | ({_location(result)} if result else
                                   set()), set()

    def check(self, t, ctx, result, error):
        if result:
            rec = t.record(_location(result))
            t.assertEqual(str(2 * GiB), rec['virtual_size'])
            t.assertEqual(ctx.new.id, rec['other_config'][driver.VOLUME_KEY])
            t.assertEqual(pattern(MiB, 6), t.read(_location(result), MiB))
        rec = t.record(ctx.vol)
        t.assertEqual(ctx.vol.id, rec['other_config'][driver.VOLUME_KEY])
        t.assert_intact(ctx.vol, pattern(MiB, 6), error)


class Revert(Op):
    name = 'revert_to_snapshot'

    def prepare(self, t):
        vol = tests_utils.create_volume(t.context, size=1)
        vol.provider_location = t.driver.create_volume(vol)[
            'provider_location']
        vol.save()
        t.write(vol, pattern(MiB, 7))
        snap = t.snapshot(vol)
        t.write(vol, pattern(MiB, 8))
        return types.SimpleNamespace(vol=vol, snap=snap,
                                     old=vol.provider_location)

    def run(self, t, ctx):
        return t.driver.revert_to_snapshot(t.context, ctx.vol, ctx.snap)

    def _stored(self, t, ctx):
        return objects.Volume.get_by_id(t.context, ctx.vol.id)

    def known(self, t, ctx, result, error):
        return {_uuid(self._stored(t, ctx)), _uuid(ctx.snap)}, set()

    def check(self, t, ctx, result, error):
        stored = self._stored(t, ctx)
        # What the driver says and what cinder stored agree.
        t.assertEqual(stored.provider_location, ctx.vol.provider_location)
        if error is None:
            t.assertNotEqual(ctx.old, stored.provider_location)
        if stored.provider_location == ctx.old:
            t.assert_intact(stored, pattern(MiB, 8), error)
        else:
            t.assertEqual(pattern(MiB, 7), t.read(stored, MiB))
            rec = t.record(stored)
            t.assertEqual(ctx.vol.id, rec['other_config'][driver.VOLUME_KEY])
        t.assert_intact(ctx.snap, pattern(MiB, 7), error)


class MigrateVolume(Op):
    """Into the SR of a second backend of the same host (pool)."""

    name = 'migrate_volume'

    def prepare(self, t):
        if getattr(t, 'migrate_dest', None) is None:
            t.migrate_dest = t.make_driver(**t.driver_overrides)
            t.migrate_dest.do_setup(t.context)
        dest = t.migrate_dest
        vol = tests_utils.create_volume(t.context, size=1)
        vol.provider_location = t.driver.create_volume(vol)[
            'provider_location']
        vol.save()
        t.write(vol, pattern(MiB, 13))
        name = dest.configuration.config_group
        host = {'host': 'h@%s#%s' % (name, name),
                'capabilities': dest.get_volume_stats(refresh=True)}
        assert host['capabilities']['backend_state'] == 'up'
        # The destination SR is the operation's own: check() holds it to
        # exactly the copy (on success) or nothing (on failure).
        return types.SimpleNamespace(vol=vol, host=host,
                                     old=vol.provider_location,
                                     sr=dest.backend.sr_uuid)

    def run(self, t, ctx):
        return t.driver.migrate_volume(t.context, ctx.vol, ctx.host)

    def known(self, t, ctx, result, error):
        return (set() if error is None else {_uuid(ctx.vol)}), set()

    def check(self, t, ctx, result, error):
        stored = objects.Volume.get_by_id(t.context, ctx.vol.id)
        dest = t.migrate_dest.backend
        copies = t.visible_vdis(dest.sr)
        files = sorted(n for n in os.listdir(t.sr_dir(dest.sr_uuid)))
        if error is not None:
            # The source as it was, nothing in the destination SR.
            t.assertEqual(ctx.old, stored.provider_location)
            t.assertEqual(ctx.old, ctx.vol.provider_location)
            t.assertEqual({}, copies)
            t.assertEqual([], files)
            t.assertEqual(pattern(MiB, 13), t.read(ctx.vol, MiB))
            return
        t.assertEqual(True, result[0])
        location = result[1]['provider_location']
        t.assertEqual(location, stored.provider_location)
        new = location.split('/')[1]
        t.assertEqual([new], list(copies))
        t.assertEqual(['%s.vhd' % new], files)
        t.assertEqual(pattern(MiB, 13), t.read(new, MiB))

    def tidy(self, t, ctx):
        for vdi_uuid in t.visible_vdis(t.migrate_dest.backend.sr):
            storage.destroy_vdi(t.session, vdi_uuid)


class Stats(Op):
    name = 'get_volume_stats'

    def run(self, t, ctx):
        return t.driver.get_volume_stats(refresh=True)

    def check(self, t, ctx, result, error):
        t.assertIsNone(error, 'get_volume_stats must never raise')
        t.assertIn(result['backend_state'], ('up', 'down'))
        if result['backend_state'] == 'down':
            t.assertEqual('unknown', result['total_capacity_gb'])


class InitializeConnection(Op):
    name = 'initialize_connection'
    # Built from provider_location and the options alone.
    silent = True

    def prepare(self, t):
        return types.SimpleNamespace(vol=t.new_volume(data=pattern(MiB, 14)))

    def run(self, t, ctx):
        return t.driver.initialize_connection(ctx.vol, {'host': 'h'})

    def known(self, t, ctx, result, error):
        return {_uuid(ctx.vol)}, set()

    def check(self, t, ctx, result, error):
        if result:
            t.assertEqual(_uuid(ctx.vol), result['data']['vdi_uuid'])
        t.assert_intact(ctx.vol, pattern(MiB, 14), error)


class ManageExisting(Op):
    """manage_existing_get_size then manage_existing, as cinder calls."""

    name = 'manage_existing'

    def prepare(self, t):
        ref, vdi_uuid = storage.create_vdi(t.session, t.driver.backend.sr,
                                           GiB + 4 * MiB, 'adopt me')
        t.write(ref, pattern(MiB, 9))
        return types.SimpleNamespace(vdi=vdi_uuid)

    def run(self, t, ctx):
        ctx.vol = t.volume()
        existing = {'source-id': ctx.vdi}
        ctx.vol.size = t.driver.manage_existing_get_size(ctx.vol, existing)
        return t.driver.manage_existing(ctx.vol, existing)

    def known(self, t, ctx, result, error):
        # The VDI was there before; managed or not, it stays.
        return {ctx.vdi}, set()

    def check(self, t, ctx, result, error):
        rec = t.record(ctx.vdi)
        if error is None:
            t.assertEqual(ctx.vdi, _location(result))
            t.assertEqual(ctx.vol.id, rec['other_config'][driver.VOLUME_KEY])
            t.assertEqual(str(2 * GiB), rec['virtual_size'])
        else:
            # The mark is set last: a failure leaves it manageable.
            t.assertNotIn(driver.VOLUME_KEY, rec['other_config'])
        t.assert_intact(ctx.vdi, pattern(MiB, 9), error)


class ManageLegacy(Op):
    """Adopting a volume of the historical one-SR-per-volume layout."""

    name = 'manage_existing_legacy'

    def prepare(self, t):
        sr_uuid, vdi_uuid = t.legacy_volume(pattern(MiB, 10))
        return types.SimpleNamespace(sr=sr_uuid, vdi=vdi_uuid,
                                     file=self._file(t, sr_uuid, vdi_uuid))

    @staticmethod
    def _file(t, sr_uuid, vdi_uuid):
        with open(os.path.join(t.sr_dir(sr_uuid), '%s.vhd' % vdi_uuid),
                  'rb') as f:
            return f.read()

    def run(self, t, ctx):
        ctx.vol = t.volume()
        existing = {'source-name': '%s/%s' % (ctx.sr, ctx.vdi)}
        ctx.vol.size = t.driver.manage_existing_get_size(ctx.vol, existing)
        return t.driver.manage_existing(ctx.vol, existing)

    def known(self, t, ctx, result, error):
        return ({_location(result)} if result else set()), set()

    def check(self, t, ctx, result, error):
        # The old SR is forgotten again, its file untouched, byte for
        # byte (the VHD's data, and its footer and headers).
        t.assertIsNone(storage.sr_by_uuid(t.session, ctx.sr))
        t.assertEqual(['%s.vhd' % ctx.vdi], t.files(ctx.sr))
        t.assertEqual(ctx.file, self._file(t, ctx.sr, ctx.vdi),
                      'the legacy VDI changed')
        if result:
            t.assertEqual(pattern(MiB, 10), t.read(_location(result), MiB))

    def tidy(self, t, ctx):
        t.remove_sr_dir(ctx.sr)


class DeleteLegacy(Op):
    name = 'delete_volume_legacy'

    def prepare(self, t):
        sr_uuid, vdi_uuid = t.legacy_volume()
        return types.SimpleNamespace(sr=sr_uuid, vdi=vdi_uuid, vol=t.volume(
            provider_location='%s/%s' % (sr_uuid, vdi_uuid)))

    def run(self, t, ctx):
        return t.driver.delete_volume(ctx.vol)

    def check(self, t, ctx, result, error):
        t.assertIsNone(storage.sr_by_uuid(t.session, ctx.sr))
        left = t.files(ctx.sr)
        if error is None:
            t.assertEqual([], left)
        else:
            t.assertIn(left, ([], ['%s.vhd' % ctx.vdi]))

    def tidy(self, t, ctx):
        t.remove_sr_dir(ctx.sr)


class Unmanage(Op):
    name = 'unmanage'

    def prepare(self, t):
        return types.SimpleNamespace(vol=t.new_volume(data=pattern(MiB, 15)))

    def run(self, t, ctx):
        return t.driver.unmanage(ctx.vol)

    def known(self, t, ctx, result, error):
        # Unmanaged, the VDI stays: it is the operator's again.
        return {_uuid(ctx.vol)}, set()

    def check(self, t, ctx, result, error):
        if error is None:
            t.assertNotIn(driver.VOLUME_KEY,
                          t.record(ctx.vol)['other_config'])
        t.assert_intact(ctx.vol, pattern(MiB, 15), error)


class Manageable(Op):
    name = 'get_manageable_volumes'

    def prepare(self, t):
        vol = t.new_volume()
        _ref, loose = storage.create_vdi(t.session, t.driver.backend.sr, GiB,
                                         'loose')
        return types.SimpleNamespace(vol=vol, loose=loose)

    def run(self, t, ctx):
        return t.driver.get_manageable_volumes([ctx.vol], None, 100, 0,
                                               ['size'], ['asc'])

    def known(self, t, ctx, result, error):
        return {_uuid(ctx.vol), ctx.loose}, set()

    def check(self, t, ctx, result, error):
        if result is not None:
            t.assertEqual([False, True],
                          sorted(e['safe_to_manage'] for e in result))


class Setup(Op):
    """do_setup and check_for_setup_error of a new backend: a new SR."""

    name = 'do_setup'

    def prepare(self, t):
        return types.SimpleNamespace(sr=None, drv=t.make_driver(
            **t.driver_overrides))

    def run(self, t, ctx):
        ctx.drv.do_setup(t.context)
        ctx.drv.check_for_setup_error()

    def tagged(self, t, ctx):
        """The SRs tagged for the backend of ``ctx.drv``."""
        tag = '%s@%s:%s' % (ctx.drv.configuration.config_group,
                            test_driver.SERVER, test_driver.PATH)
        return [ref for ref, rec in t.session.call(
            'SR.get_all_records_where', 'field "type"="nfs"').items()
            if rec['other_config'].get(storage.TAG_KEY) == tag]

    def tidy(self, t, ctx):
        if ctx.drv.backend is not None:
            ctx.drv.backend.session.close()
        for sr in self.tagged(t, ctx):
            sr_uuid = t.session.call('SR.get_uuid', sr)
            storage.forget_sr(t.session, sr)
            t.remove_sr_dir(sr_uuid)
        if ctx.sr:
            t.remove_sr_dir(ctx.sr)


class SetupAdopt(Setup):
    """do_setup with xenapi_sr_uuid naming an SR the host forgot."""

    name = 'do_setup_adopt_sr'

    def prepare(self, t):
        sr = storage.create_nfs_sr(t.session, test_driver.SERVER,
                                   test_driver.PATH, 'adopted', 'adopted')
        sr_uuid = t.session.call('SR.get_uuid', sr)
        storage.forget_sr(t.session, sr)
        return types.SimpleNamespace(sr=sr_uuid, drv=t.make_driver(
            xenapi_sr_uuid=sr_uuid, **t.driver_overrides))


# -- images ------------------------------------------------------------------

class CloneImage(Op):
    name = 'clone_image'

    def prepare(self, t):
        return types.SimpleNamespace(image=t.xenserver_image())

    def run(self, t, ctx):
        ctx.vol = t.volume()
        model, cloned = t.driver.clone_image(t.context, ctx.vol, None,
                                             ctx.image, t.images)
        t.assertTrue(cloned)
        return model

    def known(self, t, ctx, result, error):
        return ({_location(result)} if result else set()), set()

    def check(self, t, ctx, result, error):
        if result:
            t.assertEqual(ctx.vol.id, t.record(_location(result))[
                'other_config'][driver.VOLUME_KEY])
            disk = getattr(ctx, 'disk', t.image_disk)
            t.assertEqual(disk, t.read(_location(result), len(disk)))


class CloneOneLayerImage(CloneImage):
    """A tgz of one dynamic VHD: sent to the host as it arrives."""
    name = 'clone_image_one_layer'

    def prepare(self, t):
        image, disk = t.one_layer_image()
        return types.SimpleNamespace(image=image, disk=disk)


class CloneRawImage(CloneImage):
    """A raw image: fetched sparse, then packed into the PUT as a VHD."""
    name = 'clone_image_raw'

    def prepare(self, t):
        return types.SimpleNamespace(image=t.raw_image())


class CopyImageToVolume(Op):
    name = 'copy_image_to_volume'

    def prepare(self, t):
        return types.SimpleNamespace(image=t.xenserver_image(),
                                     vol=t.new_volume(data=pattern(MiB, 11)))

    def run(self, t, ctx):
        return t.driver.copy_image_to_volume(t.context, ctx.vol, t.images,
                                             ctx.image['id'])

    def known(self, t, ctx, result, error):
        return {_uuid(ctx.vol)}, set()

    def check(self, t, ctx, result, error):
        disk = getattr(ctx, 'disk', t.image_disk)
        if error is None:
            t.assertEqual(disk, t.read(ctx.vol, len(disk)))
        else:
            data = t.read(ctx.vol, len(disk))
            if data != disk:
                # Untouched, unless the copy was done, its answer lost.
                t.assertEqual(pattern(MiB, 11), data[:MiB])


class CopyOneLayerImageToVolume(CopyImageToVolume):
    """A tgz of one dynamic VHD, sent into the volume as it arrives."""
    name = 'copy_one_layer_image_to_volume'

    def prepare(self, t):
        image, disk = t.one_layer_image()
        return types.SimpleNamespace(image=image, disk=disk,
                                     vol=t.new_volume(data=pattern(MiB, 11)))


class CopyVolumeToImage(Op):
    name = 'copy_volume_to_image'
    disk_format, container_format = 'vhd', 'ovf'
    # dom0's upload_vhd2 answers nothing that names what it uploaded.
    lost_tasks = frozenset(['Async.host.call_plugin'])

    def prepare(self, t):
        vol = t.new_volume(data=pattern(MiB, 12))
        return types.SimpleNamespace(vol=vol, image=t.queued_image(
            self.disk_format, self.container_format))

    def run(self, t, ctx):
        return t.driver.copy_volume_to_image(t.context, ctx.vol, t.images,
                                             ctx.image)

    def known(self, t, ctx, result, error):
        return {_uuid(ctx.vol)}, set()

    def check(self, t, ctx, result, error):
        if error is None:
            t.assertTrue(t.uploaded(ctx.image), 'no image data')
        t.assert_intact(ctx.vol, pattern(MiB, 12), error)


class CopyVolumeToBareVhd(CopyVolumeToImage):
    name = 'copy_volume_to_image_bare_vhd'
    disk_format, container_format = 'vhd', 'bare'


class CopyVolumeToQcow2(CopyVolumeToImage):
    """The export read as a stream into one raw file, which the driver
    packs as qcow2 into the upload."""
    name = 'copy_volume_to_image_qcow2'
    disk_format, container_format = 'qcow2', 'bare'


# -- the test cases ----------------------------------------------------------

class FaultTestBase(test_driver.DriverTestBase):
    """Runs one operation under every fault of the matrix."""

    # The fault kinds every call of every operation gets here.
    kinds = ('error', 'drop', 'disk_full', 'drop_after') + (
        ('internal',) if FULL else ())
    # Whether a dropped connection on a call that is safe to repeat must
    # be survived (the session retries it).
    retried = False

    def setUp(self):
        super().setUp()
        self.tmp_before = self._tmp_files()

    def legacy_volume(self, data=None):
        """A VDI in an SR of the historical layout, which is forgotten."""
        sr = storage.create_nfs_sr(self.session, test_driver.SERVER,
                                   test_driver.PATH, 'old', 'old')
        sr_uuid = self.session.call('SR.get_uuid', sr)
        ref, vdi_uuid = storage.create_vdi(self.session, sr, 4 * MiB, '')
        if data:
            self.write(ref, data)
        storage.forget_sr(self.session, sr)
        return sr_uuid, vdi_uuid

    def remove_sr_dir(self, sr_uuid):
        """Remove the directory of a forgotten SR: many of them would make
        each SR.probe, and the next fault, slower."""
        shutil.rmtree(self.sr_dir(sr_uuid), ignore_errors=True)

    # -- the host's state --

    @staticmethod
    def _tmp_files():
        return {n for n in os.listdir(tempfile.gettempdir())
                if n.startswith('xenapinfs_')}

    def sr_prefix(self, sr_uuid=None):
        """How the server names the files of an SR directory."""
        return os.path.relpath(self.sr_dir(sr_uuid), self.server.root) + '/'

    def host_state(self, op=None, ctx=None):
        """What the server holds, for leak checks: counts of records
        (logins in its session table too), SR mounts, the files of the
        exports outside our SR (whose files assert_sr_clean matches to
        VDIs) and outside an SR that ``op`` works on, pending tasks."""
        state = self.control.state()
        out = {k: int(state[k]) for k in ('SR', 'PBD', 'task', 'VBD',
                                          'session')}
        out['mounts'] = state['mounts']
        skip = [self.sr_prefix()]
        if getattr(ctx, 'sr', None):
            skip.append(self.sr_prefix(ctx.sr))
        out['files'] = [f for f in state['files']
                        if not any(f.startswith(p) for p in skip)]
        out['pending'] = self.unfinished_tasks()
        return out

    def unfinished_tasks(self):
        return sorted(ref for ref, rec in self.session.call(
            'task.get_all_records').items() if rec['status'] == 'pending')

    def assert_sr_clean(self, must, may):
        """Our SR holds the VDIs cinder knows, files only for records."""
        records = self.session.call('VDI.get_all_records_where',
                                    'field "SR"="%s"' % self.driver.backend.sr)
        visible = {r['uuid'] for r in records.values() if r['managed']}
        self.assertLessEqual(must, visible, 'VDIs cinder knows are gone')
        self.assertLessEqual(visible, must | may,
                             'VDIs cinder does not know about')
        records = sorted('%s.vhd' % r['location'] for r in records.values())
        # Every file the server has there, at any depth (a staging
        # directory of dom0's plugin, a temporary file), is a VDI's.
        prefix = self.sr_prefix()
        self.assertEqual(records, [
            f[len(prefix):] for f in self.control.state()['files']
            if f.startswith(prefix)], 'files in the SR without a VDI')
        # And no directory, even empty.
        self.assertEqual(records, sorted(os.listdir(self.sr_dir())),
                         'entries in the SR without a VDI')

    def assert_no_staging(self):
        self.assertEqual([], os.listdir(cfg.CONF.image_conversion_dir),
                         'left in image_conversion_dir')
        self.assertEqual(set(), self._tmp_files() - self.tmp_before,
                         'left in %s' % tempfile.gettempdir())

    def assert_intact(self, obj, data, error=None):
        """``obj`` holds ``data`` still, after a success or a failure:
        a failure is where a source's data is most at risk."""
        self.assertEqual(data, self.read(obj, len(data)),
                         'data changed' + (' after: %s' % error
                                           if error else ''))

    def assert_clear(self, error, call, kind):
        """A cinder exception whose message names what failed."""
        self.assertIsInstance(error, cinder_exception.CinderException,
                              '%s: %s' % (type(error).__name__, error))
        text = str(error)
        names = (short(call),) + CODES[kind]
        self.assertTrue(any(n in text for n in names),
                        'message names none of %s: %s' % (names, text))

    def empty_sr(self):
        """Destroy every VDI of our SR; base copies go with them."""
        for ref, rec in self.session.call(
                'VDI.get_all_records_where',
                'field "SR"="%s"' % self.driver.backend.sr).items():
            if rec['managed']:
                storage.cleanup(ref, self.session.call, 'VDI.destroy', ref)

    # -- the matrix --

    def learn(self, op):
        """The calls ``op`` makes, in order, once warmed up.

        The first run may log in a second connection of the session's
        pool (transfers hold one while calling on another): not a call
        of the operation. A task's polls are as many as its time needs,
        so each call is counted as often as the fewest of the later
        runs made it: a run slower than the faulted ones would promise a
        poll that never comes.
        """
        runs = []
        for _run in range(LEARN_RUNS):
            ctx = op.prepare(self)
            self.control.clear_calls()
            op.run(self, ctx)
            runs.append([c for c in self.control.calls()
                         if c not in op.ignore])
            op.tidy(self, ctx)
            self.empty_sr()
        return fewest(runs[1:])

    def select(self, points):
        """The ``(call, nth)`` that get faults here: all of them."""
        return points

    def matrix(self, op, kinds=None):
        """Run ``op`` with each fault of ``kinds`` on each of its calls."""
        COUNTS[op.name].update()     # listed, even with no call to fail
        learned = self.learn(op)
        # An empty call log would make an empty matrix, passing.
        self.assertEqual(op.silent, not learned,
                         '%s, calls: %s' % (op.name, learned or 'none'))
        points = self.select(occurrences(learned))
        failures = []
        promised = injected = 0
        for call, nth in points:
            for kind in kinds_for(call, nth, kinds or self.kinds):
                promised += 1
                with self.subTest(operation=op.name,
                                  call='%s#%d' % (call, nth), fault=kind):
                    try:
                        fired = self.one(op, call, nth, kind)
                        injected += fired
                        if fired != 1:
                            failures.append('%s / %s#%d / %s: fired %d '
                                            'times, not once' % (
                                                op.name, call, nth, kind,
                                                fired))
                    except Exception as exc:
                        # NOTE: collected, not raised: cinder's (testtools)
                        # test case stops at a subTest's first failure.
                        text = str(exc).strip()
                        failures.append('%s / %s#%d / %s: %s: %s' % (
                            op.name, call, nth, kind, type(exc).__name__,
                            text.splitlines()[0][:300] if text else ''))
        if promised != injected:
            failures.append('%s: %d faults promised by the call log, %d '
                            'injected' % (op.name, promised, injected))
        if failures:
            self.fail('%d faults went wrong (operation / call#nth / fault):'
                      '\n%s' % (len(failures), '\n'.join(failures)))

    def one(self, op, call, nth, kind):
        """Run ``op`` with the fault; how many times the server fired it.

        A task that ends sooner than when the call log was learned is
        polled fewer times, so the ``nth`` poll may not come: the run is
        then tried again, a few times, before the point counts as not
        reached (which fails the matrix).
        """
        for _attempt in range(REACH_ATTEMPTS):
            fired = self._one(op, call, nth, kind)
            if fired:
                return fired
        return 0

    def _one(self, op, call, nth, kind):
        ctx = op.prepare(self)
        before = self.host_state(op, ctx)
        rule = dict(FAULTS[kind])
        action = rule.pop('action')
        self.control.clear_calls()
        rule_id = self.control.add_fault(call, action, nth=nth, **rule)
        result = error = None
        try:
            result = op.run(self, ctx)
        except Exception as exc:
            error = exc
        # Asked of the server, which applied it: not inferred from the
        # call log, which a disabled injection would fill all the same.
        fired = sum(r['fired'] for r in self.control.faults()
                    if r['id'] == rule_id)
        self.control.clear_faults()
        try:
            if not fired:
                return 0
            COUNTS[op.name][kind] += fired
            if kind == 'timeout' and error is not None:
                # The host still does the delayed call after the client
                # gave up: let it finish, then look.
                time.sleep(FAULTS[kind]['seconds'] - TIMEOUT + 0.2)
            self.verify(op, ctx, call, kind, before, result, error)
            return fired
        finally:
            op.tidy(self, ctx)
            self.empty_sr()

    def verify(self, op, ctx, call, kind, before, result, error):
        if error is not None:
            self.assert_clear(error, call, kind)
            if self.retried and kind in ('drop', 'timeout') and \
                    _repeatable(call):
                self.fail('a dropped %s is retried, yet: %s' % (call, error))
        must, may = op.known(self, ctx, result, error)
        self.assert_sr_clean(must, may)
        after = self.host_state(op, ctx)
        if kind == 'drop_after' and call in op.lost_tasks:
            self.assertIn(after['task'] - before['task'], (0, 1), 'tasks')
            after['task'] = before['task']
        self.assertEqual(before, after, 'the host holds more or less: '
                         'records, logins, mounts, files, pending tasks')
        self.assert_no_staging()
        op.check(self, ctx, result, error)


def _repeatable(call):
    """Whether the session sends ``call`` again after a dropped connection
    (logins always: a session made twice is only one more login)."""
    return xsession.is_safe(call) or call == 'session.login_with_password'


def _tests(*ops):
    """Decorate a test case class with a test per operation."""
    def decorate(cls):
        for op in ops:
            def test(self, op=op):
                self.matrix(op)
            test.__name__ = 'test_%s' % op.name
            test.__doc__ = '%s under every fault of the matrix.' % op.name
            setattr(cls, test.__name__, test)
        return cls
    return decorate


VOLUME_OPS = (CreateVolume(), DeleteVolume(), ExtendVolume(),
              CreateSnapshot(), DeleteSnapshot(), VolumeFromSnapshot(),
              CloneVolume(), Revert(), InitializeConnection(),
              ManageExisting(), ManageLegacy(), DeleteLegacy(), Unmanage(),
              Manageable(), MigrateVolume())


@_tests(*VOLUME_OPS)
class VolumeFaultsTestCase(FaultTestBase):
    pass


class StatsFaultsTestCase(FaultTestBase):

    def test_get_volume_stats(self):
        self.matrix(Stats(), kinds=('error', 'internal', 'drop'))


class SetupFaultsTestCase(FaultTestBase):
    """A new backend's first do_setup, and one that adopts an SR."""

    def verify(self, op, ctx, call, kind, before, result, error):
        if error is not None:
            self.assert_clear(error, call, kind)
            if self.retried and kind in ('drop', 'timeout') and \
                    _repeatable(call):
                self.fail('a dropped %s is retried, yet: %s' % (call, error))
            if ctx.drv.backend is None:
                self.assertRaises(cinder_exception.CinderException,
                                  ctx.drv.check_for_setup_error)
        after = self.host_state()
        self.assertEqual(before['task'], after['task'], 'task')
        self.assertEqual(before['pending'], after['pending'])
        # The driver's logins are its backend's; closed, the server's
        # session table is as it was. A login done by the host whose
        # answer never came is one nobody can log out: XAPI expires it.
        lost = int(call == 'session.login_with_password' and
                   kind in ('drop_after', 'timeout'))
        if ctx.drv.backend is not None:
            ctx.drv.backend.session.close()
        self.assertIn(self.host_state()['session'] - before['session'],
                      (0, lost), 'logins left on the host')
        # Whatever happened, cinder starts the service again: the backend
        # then has its one SR, plugged, and no SR or PBD is left over.
        again = self.make_driver(group=ctx.drv.configuration.config_group,
                                 xenapi_sr_uuid=ctx.sr)
        again.do_setup(self.context)
        again.check_for_setup_error()
        self.assertEqual([again.backend.sr], op.tagged(self, ctx))
        if ctx.sr:
            self.assertEqual(ctx.sr, again.backend.sr_uuid)
        after = self.host_state()
        self.assertEqual((before['SR'] + 1, before['PBD'] + 1,
                          len(before['mounts']) + 1),
                         (after['SR'], after['PBD'], len(after['mounts'])),
                         'SRs, PBDs, mounts')
        again.backend.session.close()
        self.assertIn(self.host_state()['session'] - before['session'],
                      (0, lost), 'logins left on the host')

    def test_do_setup(self):
        self.matrix(Setup())

    def test_do_setup_adopt_sr(self):
        self.matrix(SetupAdopt())


class StreamImageFaultsTestCase(FaultTestBase):
    """Images by the stream path, with cinder's in-memory image service."""

    def setUp(self):
        super().setUp()
        self.images = fake_images.ImageService()
        test_download.run_privsep_in_process(self)
        self.image_data, self.image_disk, _layers = \
            test_download.xenserver_tgz(seed=3)

    def xenserver_image(self):
        image_id = str(uuid.uuid4())
        self.images.create(self.context, {
            'id': image_id, 'name': 'xs', 'status': 'active',
            'visibility': 'private', 'protected': False,
            'disk_format': 'vhd', 'container_format': 'ovf',
            'size': len(self.image_data), 'properties': {}},
            data=io.BytesIO(self.image_data))
        return self.images.show(self.context, image_id)

    def raw_image(self):
        image_id = str(uuid.uuid4())
        self.images.create(self.context, {
            'id': image_id, 'name': 'raw', 'status': 'active',
            'visibility': 'private', 'protected': False,
            'disk_format': 'raw', 'container_format': 'bare',
            'size': len(self.image_disk), 'properties': {}},
            data=io.BytesIO(self.image_disk))
        return self.images.show(self.context, image_id)

    def one_layer_image(self):
        """(image, disk): a tgz of one dynamic VHD."""
        vhd, disk = test_download.bare_vhd(6 * MiB, {
            2: pattern(2 * MiB, 12), 0: pattern(2 * MiB, 13)})
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'one.tgz')
            vhd_factory.xenserver_tgz(path, [vhd])
            with open(path, 'rb') as f:
                data = f.read()
        image_id = str(uuid.uuid4())
        self.images.create(self.context, {
            'id': image_id, 'name': 'one', 'status': 'active',
            'visibility': 'private', 'protected': False,
            'disk_format': 'vhd', 'container_format': 'ovf',
            'size': len(data), 'properties': {}}, data=io.BytesIO(data))
        return self.images.show(self.context, image_id), disk

    def queued_image(self, disk_format, container_format):
        meta = {'id': str(uuid.uuid4()), 'name': 'up', 'status': 'queued',
                'disk_format': disk_format,
                'container_format': container_format, 'properties': {}}
        self.images.create(self.context, dict(meta))
        return meta

    def uploaded(self, image):
        return bool(self.images.data(image['id']))

    def test_clone_image(self):
        self.matrix(CloneImage())

    def test_copy_image_to_volume(self):
        self.matrix(CopyImageToVolume())

    def test_clone_image_one_layer(self):
        self.matrix(CloneOneLayerImage())

    def test_copy_one_layer_image_to_volume(self):
        self.matrix(CopyOneLayerImageToVolume())

    def test_copy_volume_to_image(self):
        self.matrix(CopyVolumeToImage())

    def test_copy_volume_to_image_bare_vhd(self):
        self.matrix(CopyVolumeToBareVhd())

    def test_clone_raw_image(self):
        self.matrix(CloneRawImage())

    def test_copy_volume_to_qcow2(self):
        self.matrix(CopyVolumeToQcow2())


@pytest.fixture(scope='class')
def _glance(request, glance_service):  # noqa: F811
    request.cls.glance = glance_service


@pytest.mark.usefixtures('_glance')
class PluginImageFaultsTestCase(test_download.GlanceCaller, FaultTestBase):
    """Images through dom0's glance plugin, from and to glance-api: a
    XenServer image of three layers, the newest a differencing VHD."""

    project = PROJECT
    driver_overrides = {'xenapi_image_transfer': 'plugin',
                        'xenapi_plugin_retries': 0}

    def setUp(self):
        super().setUp()
        self.image, self.image_disk, _layers = self.add_xenserver_image(4)

    def xenserver_image(self):
        return self.image

    def queued_image(self, disk_format, container_format):
        created = self.glance.create_image(
            self.headers, name='up', container_format=container_format,
            disk_format=disk_format)
        return self.images.show(self.context, created['id'])

    def uploaded(self, image):
        return self.glance.show(image['id'], self.headers)[
            'status'] == 'active'

    def test_clone_image(self):
        self.matrix(CloneImage())

    def test_copy_image_to_volume(self):
        self.matrix(CopyImageToVolume())

    def test_copy_volume_to_image(self):
        self.matrix(CopyVolumeToImage())


class RetryFaultsTestCase(FaultTestBase):
    """With retries, a dropped call that is safe to repeat is survived.

    By default only those calls get the fault here, the first of each
    name: on the others a dropped connection fails as in the classes
    above, retries or not.
    """

    kinds = ('drop',)
    retried = True
    driver_overrides = {'xenapi_connection_retries': 2}

    def make_driver(self, group=None, server=None, **overrides):
        drv = super().make_driver(group, server, **overrides)
        # A backoff of milliseconds: the host is on loopback.
        drv._session_factory = functools.partial(xsession.XenAPISession,
                                                 retry_interval=0.001)
        return drv

    def select(self, points):
        return points if FULL else [p for p in points
                                    if _repeatable(p[0]) and p[1] == 1]


# By default without the operations whose calls that are safe to repeat
# all come in the others too (the session retries whatever the caller).
@_tests(*(VOLUME_OPS + (Stats(),) if FULL else (
    CreateVolume(), CreateSnapshot(), CloneVolume(), Revert(),
    ManageExisting(), ManageLegacy(), DeleteLegacy(), Stats())))
class RetryVolumeFaultsTestCase(RetryFaultsTestCase):
    pass


class RetrySetupFaultsTestCase(RetryFaultsTestCase, SetupFaultsTestCase):
    kinds = ('drop',)


class TimeoutFaultsTestCase(RetryFaultsTestCase):
    """Calls slower than xenapi_connection_timeout: given up, clearly.

    Each costs a timeout: by default the first call that writes and the
    first that is safe to repeat (then retried) of a few operations.
    """

    kinds = ('timeout',)
    driver_overrides = {'xenapi_connection_retries': 1,
                        'xenapi_connection_timeout': TIMEOUT}

    def select(self, points):
        if FULL:
            return points
        firsts = [next((p for p in points if test(p[0])), None)
                  for test in (writes, _repeatable)]
        return [p for p in points if p in firsts]

    def test_create_volume(self):
        self.matrix(CreateVolume())

    def test_create_snapshot(self):
        self.matrix(CreateSnapshot())

    def test_get_volume_stats(self):
        self.matrix(Stats())

    @unittest.skipUnless(FULL, 'XENAPINFS_FAULTS=full: as create_snapshot')
    def test_create_cloned_volume(self):
        self.matrix(CloneVolume())

    @unittest.skipUnless(FULL, 'XENAPINFS_FAULTS=full')
    def test_delete_volume(self):
        self.matrix(DeleteVolume())


def test_fewest_keeps_each_call_as_often_as_its_least_run():
    slow = ['Async.host.call_plugin', 'task.get_record', 'task.get_record',
            'task.get_record', 'task.destroy', 'VDI.destroy']
    fast = ['Async.host.call_plugin', 'task.get_record', 'task.destroy',
            'VDI.destroy', 'VDI.destroy']
    assert fewest([fast, slow]) == ['Async.host.call_plugin',
                                    'task.get_record', 'task.destroy',
                                    'VDI.destroy']
    assert fewest([slow]) == slow
