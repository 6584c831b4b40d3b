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
"""Active-active on a real lock service: etcd, through tooz's etcd3gw.

The reliability module's stack (two cinder-volume services, different
``host``, one ``cluster``), with ``[coordination] backend_url =
etcd3+http://...`` and etcd-server started on loopback by the stack: the
fifty-operation burst passes with the same end-state checks. While etcd
is stopped, operations that need a lock fail cleanly (the volume in
``error``, nothing left on the host); once it is back, they work again.

That the locks go through etcd is shown by etcd's store revision, which
each lock taken and released moves on. The burst cannot show that they
matter: the test server does each snapshot, clone and resize at once
under its own lock, and nothing the burst deletes is read by another of
its operations, so it passes with each volume service holding locks of
its own too.

What shows it is a race: a volume is created from snapshot S, the host
holds that create's ``VDI.clone`` for a few seconds, and meanwhile S is
deleted, each by a different volume service (RabbitMQ's round robin; the
services' logs tell, and the pair is tried again when one did both).
cinder's manager holds ``<S>-delete_snapshot`` around the create and the
driver ``xenapinfs-<S>`` around the clone; the deletion takes both.

* With etcd, the deletion waits until the create has let go: the new
  volume is available with the snapshot's data, and the SR holds exactly
  what cinder lists.
* With each service locking in directories of its own (run first, on a
  stack and XenAPI server of its own), the deletion goes ahead: S's VDI is
  destroyed under the held clone, which then fails with
  ``HANDLE_INVALID``; cinder reschedules the create, whose second try
  fails with ``SnapshotNotFound``, and the volume ends in ``error``. The
  burst's end-state check fails on it: "volumes without a VDI".
"""

import base64
import collections
import json
import os
import re
import shutil
import urllib.request

import pytest

from tests.e2e import test_reliability_e2e as rel
from tests import stack_fixture
from tests import xapi_fixture
from xenapinfs_driver.testing.stack import process
from xenapinfs_driver.xenapi import session as xsession
from xenapinfs_driver.xenapi import storage

xapi = rel.xapi
control = rel.control
images = rel.images
# How long the host holds the clone of the race: the delete of the
# snapshot reaches the host well within it when nothing stops it.
HOLD = 8
# The race needs its two operations on different volume services, which
# RabbitMQ's round robin gives nearly always; tries at most.
TRIES = 3


def _stack(tmp_path_factory, xapi, **kw):
    if kw.get('etcd'):
        if not shutil.which('etcd') and \
                not os.access('/usr/bin/etcd', os.X_OK):
            stack_fixture.require('apt package etcd-server')
        stack_fixture.require('etcd3gw')
    backends = {rel.BACKEND: stack_fixture.xenapinfs_backend(xapi.url,
                                                             'auto')}
    cinder = {'volume_services': 2, 'debug': True,
              'extra': {'DEFAULT': rel.UNLIMITED}}
    cinder.update(kw.pop('cinder', {}))
    return stack_fixture.running_stack(
        tmp_path_factory, backends, glance_options={'debug': True},
        cinder_options=cinder, **kw)


@pytest.fixture(scope='module')
def stack(tmp_path_factory, xapi):
    with _stack(tmp_path_factory, xapi, etcd=True) as s:
        yield s


Private = collections.namedtuple('Private', 'stack xs control xapi')


@pytest.fixture
def private(tmp_path_factory):
    """The module's stack without etcd, each volume service locking in
    directories of its own (as file locks on two machines would), on a
    XenAPI server of its own. For the module's first test only: it is
    stopped before the module's etcd stack starts, so the two never load
    the machine at once."""
    with stack_fixture.running_xapi(tmp_path_factory.mktemp('xapi'),
                                    verbose=True) as server:
        xs = xsession.XenAPISession(server.url, xapi_fixture.USERNAME,
                                    xapi_fixture.PASSWORD).connect()
        # Finding or else creating the SR at start is a race of its own,
        # which private locks would lose at times: the SR is there first,
        # with the tag the driver looks for (backend@server:path).
        storage.create_nfs_sr(xs, *xapi_fixture.EXPORT, 'Cinder %s' %
                              rel.BACKEND, '%s@%s:%s' % (
                                  (rel.BACKEND,) + xapi_fixture.EXPORT))
        try:
            with _stack(tmp_path_factory, server,
                        cinder={'private_locks': True}) as s:
                yield Private(s, xs, xapi_fixture.Control(server.url),
                              server)
        finally:
            xs.close()


def test_private_locks_let_a_snapshot_go_under_its_clone(private):
    stack, xs, control = private.stack, private.xs, private.control
    # Each service's own config file names its own lock directory.
    urls = set()
    for index in range(2):
        with open(os.path.join(stack.cinder.workdir,
                               'volume-%d.conf' % (index + 1))) as f:
            urls |= set(re.findall(r'^backend_url = (file://.*)$', f.read(),
                                   re.M))
    assert len(urls) == 2, urls
    vid = rel._new_volume(stack)
    stack.wait_volume(vid)
    race = _race(stack, control, vid)
    # Nothing held the deletion back: it took its lock while the create
    # held its own, and the snapshot's VDI went under the held clone.
    released, acquired = _order(stack, race)
    assert acquired < released, (acquired, released)
    assert race.snapshot not in rel._snapshots(stack)
    # The clone then found no VDI; cinder tried the create again, which
    # found no snapshot, and gave up.
    assert _grep(stack, 'Volume %s: re-scheduling' % race.volume,
                 'VDI.clone failed: HANDLE_INVALID').keys() == {
                     race.creator}
    assert _grep(stack, 'SnapshotNotFound: Snapshot %s could not be found'
                 % race.snapshot)
    assert rel._volumes(stack)[race.volume]['status'] == 'error'
    # The end-state check of the burst sees it.
    with pytest.raises(AssertionError) as exc:
        rel.assert_sr_matches_cinder(stack, xs, control, private.xapi)
    assert str(exc.value).startswith(
        "volumes without a VDI: {'%s'}" % race.volume), exc.value
    print('\nvolume from snapshot on %s, snapshot deleted by %s meanwhile: '
          'the volume is in error, and the check says: %s' % (
              race.creator, race.deleter, str(exc.value).splitlines()[0]))


def test_services_lock_through_etcd(stack):
    conf = open(stack.cinder.conf_path).read()
    assert 'backend_url = %s' % stack.etcd.backend_url in conf
    assert stack.etcd.backend_url.startswith('etcd3+http://127.0.0.1:')
    rel.test_services_form_one_cluster(stack)


def _revision(stack):
    """etcd's store revision: every lock taken and released adds."""
    req = urllib.request.Request(
        stack.etcd.url + '/v3/kv/range', method='POST',
        data=json.dumps({'key': base64.b64encode(b'/').decode()}).encode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(json.loads(resp.read())['header']['revision'])


def test_fifty_operations_at_once_on_etcd(stack, xs, control, xapi, images,
                                          tmp_path):
    before = _revision(stack)
    rel.run_burst(stack, xs, control, xapi, images, tmp_path)
    # The driver's locks went through etcd: each is a put and a delete.
    writes = _revision(stack) - before
    assert writes >= 2 * 20, writes
    print('etcd: %d writes during the burst' % writes)


def test_operations_fail_cleanly_while_etcd_is_down(stack, xs, control,
                                                    xapi):
    vid = rel._new_volume(stack)
    stack.wait_volume(vid)
    stack.etcd.pause()
    try:
        # A snapshot takes the volume's lock: it cannot, and says so.
        sid = rel._api(stack, 'POST', '/snapshots', {'snapshot': {
            'volume_id': vid, 'force': False}})['snapshot']['id']
        snap = process.wait_until(
            lambda: _snapshot_done(stack, sid), 120,
            'snapshot %s to end' % sid, interval=0.5)
        assert snap['status'] == 'error', snap
    finally:
        stack.etcd.resume()
    rel._api(stack, 'DELETE', '/snapshots/%s' % sid)
    process.wait_until(lambda: rel._snapshots(stack).get(sid) is None, 60,
                       'snapshot %s deleted' % sid, interval=0.5)
    # Back: the same operation works, and the host holds what cinder does.
    sid = rel._api(stack, 'POST', '/snapshots', {'snapshot': {
        'volume_id': vid, 'force': False}})['snapshot']['id']
    snap = process.wait_until(lambda: _snapshot_done(stack, sid), 120,
                              'snapshot %s' % sid, interval=0.5)
    assert snap['status'] == 'available', snap
    rel.assert_sr_matches_cinder(stack, xs, control, xapi, tasks=False)


def _snapshot_done(stack, sid):
    snap = rel._snapshots(stack)[sid]
    return snap if snap['status'] in ('available', 'error') else None


# -- what the shared locks prevent -------------------------------------------
#
# A volume from snapshot S, whose VDI.clone the host holds HOLD seconds,
# and meanwhile the deletion of S, each done by a different volume
# service. cinder's manager holds "<S>-delete_snapshot" around the whole
# create, and the driver "xenapinfs-<S>" around the clone; the deletion
# takes both.

Race = collections.namedtuple('Race', 'snapshot volume creator deleter')


def _grep(stack, *words):
    """{volume service: [its log lines holding every word]}."""
    found = {}
    for service in stack.cinder.volume_names():
        with open(stack.cinder.log_path(service), errors='replace') as f:
            lines = [line for line in f if all(w in line for w in words)]
        if lines:
            found[service] = lines
    return found


def _lock_lines(stack, name, event, by):
    """{volume service: [its log lines]} where lock ``name`` (the end of
    its name: a file lock's is a path) was acquired or released."""
    return _grep(stack, '%s" %s by "%s"' % (name, event, by))


def _clone_lock(sid, event):
    """The driver's lock on the snapshot, taken by the create."""
    return 'xenapinfs-%s' % sid, event, 'create_volume_from_snapshot'


def _delete_lock(sid, event):
    """cinder's lock around the deletion of the snapshot."""
    return '%s-delete_snapshot' % sid, event, 'delete_snapshot'


def _one(found):
    """The one service and line of a _lock_lines answer."""
    assert len(found) == 1 and len(next(iter(found.values()))) == 1, found
    return next(iter(found.items()))


def _snapshot(stack, vid):
    sid = rel._api(stack, 'POST', '/snapshots', {'snapshot': {
        'volume_id': vid, 'force': False}})['snapshot']['id']
    snap = process.wait_until(lambda: _snapshot_done(stack, sid), 120,
                              'snapshot %s' % sid, interval=0.5)
    assert snap['status'] == 'available', snap
    return sid


def _race(stack, control, vid):
    """Snapshot volume vid, create a volume from the snapshot and delete
    the snapshot while the host holds the clone; again until the two
    were done by different services. Returns a Race once both ended."""
    for _ in range(TRIES):
        sid = _snapshot(stack, vid)
        control.clear_faults()
        control.add_fault('VDI.clone', 'delay', seconds=HOLD)
        new = rel._new_volume(stack, snapshot_id=sid)
        process.wait_until(lambda: control.faults()[0]['fired'], 60,
                           'the clone to be held', interval=0.2)
        rel._api(stack, 'DELETE', '/snapshots/%s' % sid)
        vol = process.wait_until(lambda: _volume_done(stack, new), 120,
                                 'volume %s to end' % new, interval=0.5)
        process.wait_until(lambda: _snapshot_gone(stack, sid), 120,
                           'snapshot %s to go' % sid, interval=0.5)
        control.clear_faults()
        creator = _one(_lock_lines(stack, *_clone_lock(sid, 'acquired')))[0]
        deleter = _one(_lock_lines(stack, *_delete_lock(sid, 'acquired')))[0]
        if creator != deleter:
            return Race(sid, new, creator, deleter)
        # One service did both: its own lock ordered them. Again.
        if vol['status'] == 'available':
            rel._api(stack, 'DELETE', '/volumes/%s' % new)
            stack.wait_volume(new, 'deleted')
    pytest.fail('%d tries of the race all landed on one volume service'
                % TRIES)


def _volume_done(stack, vid):
    vol = rel._volumes(stack)[vid]
    return vol if vol['status'] in ('available', 'error') else None


def _snapshot_gone(stack, sid):
    snap = rel._snapshots(stack).get(sid)
    assert snap is None or snap['status'] in ('available', 'deleting'), snap
    return snap is None


def _order(stack, race):
    """(when the create let go of the snapshot, when the deletion took
    it): log times of one clock, "YYYY-MM-DD HH:MM:SS.ffffff", which sort
    as text."""
    released = _one(_lock_lines(stack, *_clone_lock(race.snapshot,
                                                    'released')))
    acquired = _one(_lock_lines(stack, *_delete_lock(race.snapshot,
                                                     'acquired')))
    assert (released[0], acquired[0]) == (race.creator, race.deleter)
    return released[1][0][:26], acquired[1][0][:26]


def test_etcd_makes_a_snapshot_delete_wait_for_its_clone(
        stack, xs, control, xapi, images, tmp_path):
    raw = images['raw']
    vid = rel._new_volume(stack, imageRef=raw.id)
    stack.wait_volume(vid, timeout=120)
    race = _race(stack, control, vid)
    # The deletion waited on the other service until the clone was done.
    released, acquired = _order(stack, race)
    assert released <= acquired, (released, acquired)
    line = _lock_lines(stack, *_delete_lock(race.snapshot, 'acquired'))[
        race.deleter][0]
    waited = re.search(r'waited ([0-9.]+)s', line).group(1)
    assert race.snapshot not in rel._snapshots(stack)
    assert rel._volumes(stack)[race.volume]['status'] == 'available'
    rel.assert_disk(xs, race.volume, raw.disk, rel.GiB, str(tmp_path))
    rel.assert_sr_matches_cinder(stack, xs, control, xapi)
    print('\nvolume from snapshot on %s, snapshot deleted by %s, which '
          'waited %s s for the lock' % (race.creator, race.deleter, waited))
