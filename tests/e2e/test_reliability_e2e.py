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
"""Reliability end to end: active-active load, a crash, and secrets.

One backend served by two cinder-volume processes in one cluster
(``[DEFAULT] cluster``, different ``host``, the same file-based tooz
coordination), cinder-api, cinder-scheduler, RabbitMQ, glance and the
XenAPI test server, all real processes; every service logs at debug level.

* Fifty mixed operations at once through cinder's REST API (creates, from
  a XenServer image through dom0's plugin, from a raw image and a bare VHD
  by streaming, snapshots, clones, extends, deletes): none may fail, each
  is done by exactly one volume service and both take part (their logs,
  by the calls' request ids), and afterwards the SR holds exactly what
  cinder lists, with nothing else left anywhere.
* A create from an image is held mid-copy by the XenAPI server (the
  stream path's HTTP import, or dom0's plugin download), and the volume
  service doing it is SIGKILLed and started again: the volume ends in
  error, deleting it leaves nothing of it in the SR nor in
  image_conversion_dir, and a retry succeeds with the right bytes.
* No log of any process (debug level included) shows the XenAPI
  password, the clients' tokens or an identity header's value.

The figures (operations held at once, wall time, who did what, the crash
timeline) are printed: run with ``-s`` to see them.
"""

import collections
import concurrent.futures
import datetime
import os
import random
import re
import time

import pytest

from tests import stack_fixture
from tests import vhd_factory as vf
from tests import xapi_fixture
from xenapinfs_driver.testing.stack import process
from xenapinfs_driver import vhd
from xenapinfs_driver.xenapi import transfer

MiB = 1 << 20
GiB = 1 << 30
BACKEND = 'xs'
VOLUME_KEY = 'cinder-volume-id'
SNAPSHOT_KEY = 'cinder-snapshot-id'
# The API calls of the burst are made at once; cinder's default quotas (10
# volumes, 10 snapshots per project) would refuse most of them.
UNLIMITED = {'quota_volumes': -1, 'quota_snapshots': -1,
             'quota_gigabytes': -1, 'quota_backups': -1,
             'quota_backup_gigabytes': -1}
# How long the XenAPI server holds the copy of the crash test.
HOLD = 10


@pytest.fixture(scope='module')
def xapi(tmp_path_factory):
    """The XenAPI test server in its own process, logging every request."""
    with stack_fixture.running_xapi(tmp_path_factory.mktemp('xapi'),
                                    verbose=True) as proc:
        yield proc


@pytest.fixture(scope='module')
def stack(tmp_path_factory, xapi):
    backends = {BACKEND: stack_fixture.xenapinfs_backend(xapi.url, 'auto')}
    with stack_fixture.running_stack(
            tmp_path_factory, backends, glance_options={'debug': True},
            cinder_options={'volume_services': 2, 'debug': True,
                            'extra': {'DEFAULT': UNLIMITED}}) as s:
        yield s


@pytest.fixture(scope='module')
def control(xapi):
    return xapi_fixture.Control(xapi.url)


Image = collections.namedtuple('Image', 'id disk')


@pytest.fixture(scope='module')
def images(stack, tmp_path_factory):
    """{kind: Image}: a XenServer tgz (3-layer chain), a raw disk and a
    bare dynamic VHD, each a few MiB, in glance."""
    return make_images(stack, tmp_path_factory)


def make_images(stack, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('images')
    out = {}
    files, disk, _ = vf.standard_chain(seed=71)
    vf.xenserver_tgz(str(tmp / 'xenserver.tgz'), files)
    out['xenserver'] = Image(_glance_image(stack, tmp / 'xenserver.tgz',
                                           'vhd', 'ovf'), disk)
    rnd = random.Random(72)
    raw = rnd.randbytes(3 * MiB) + bytes(MiB) + rnd.randbytes(MiB)
    (tmp / 'disk.raw').write_bytes(raw)
    out['raw'] = Image(_glance_image(stack, tmp / 'disk.raw', 'raw',
                                     'bare'), raw)
    specs = [vf.random_layer(rnd, 6 * MiB, fill=0.7)]
    (tmp / 'disk.vhd').write_bytes(vf.build_chain(specs, rnd=rnd)[0])
    out['vhd'] = Image(_glance_image(stack, tmp / 'disk.vhd', 'vhd',
                                     'bare'), vf.expected_disk(specs))
    return out


def _glance_image(stack, path, disk_format, container_format):
    out = stack.run_cli(stack.glance_cli_args() + [
        'image-create', '--name', os.path.basename(path), '--disk-format',
        disk_format, '--container-format', container_format, '--file',
        str(path)], quiet=True).stdout
    fields = dict(stack_fixture.cli_table(out))
    assert fields['status'] == 'active', out
    return fields['id']


# -- cinder through its REST API ---------------------------------------------

def _api(stack, method, path, body=None, ok=(200, 202), reply=None):
    status, answer = stack.cinder.api(method, path, body,
                                      reply_headers=reply)
    assert status in ok, '%s %s: HTTP %d %s' % (method, path, status, answer)
    return answer


def _new_volume(stack, size=1, reply=None, **fields):
    body = {'volume': dict(size=size, volume_type=BACKEND, **fields)}
    return _api(stack, 'POST', '/volumes', body, reply=reply)['volume'][
        'id']


def _volumes(stack):
    return {v['id']: v for v in _api(stack, 'GET', '/volumes/detail')[
        'volumes']}


def _snapshots(stack):
    return {s['id']: s for s in _api(stack, 'GET', '/snapshots/detail')[
        'snapshots']}


class Op:
    """One operation of the burst: an API call, then a state to reach."""

    def __init__(self, kind, start, done):
        self.kind = kind
        self._start = start         # (reply headers) -> the id to watch
        self._done = done           # (volumes, snapshots, id) -> bool/None
        self.id = self.request_id = None
        self.error = None
        self.began = self.ended = None

    def start(self):
        self.began = time.monotonic()
        reply = {}
        try:
            self.id = self._start(reply)
            self.request_id = reply.get('x-openstack-request-id')
        except Exception as exc:    # reported with the others
            self.error = 'API call: %s' % exc
            self.ended = time.monotonic()

    def poll(self, volumes, snapshots):
        """True when done; a failure sets ``error``."""
        if self.ended is not None:
            return True
        try:
            verdict = self._done(volumes, snapshots, self.id)
        except AssertionError as exc:
            self.error = str(exc)
            verdict = True
        if verdict:
            self.ended = time.monotonic()
        return bool(verdict)


def _volume_reaches(status='available', size=None):
    def done(volumes, _snapshots, vid):
        vol = volumes.get(vid)
        assert vol is not None, 'volume %s vanished' % vid
        assert not vol['status'].startswith('error'), \
            'volume %s is %s' % (vid, vol['status'])
        return vol['status'] == status and (size is None or
                                            vol['size'] == size)
    return done


def _snapshot_available(_volumes, snapshots, sid):
    snap = snapshots.get(sid)
    assert snap is not None, 'snapshot %s vanished' % sid
    assert not snap['status'].startswith('error'), \
        'snapshot %s is %s' % (sid, snap['status'])
    return snap['status'] == 'available'


def _volume_gone(volumes, _snapshots, vid):
    vol = volumes.get(vid)
    if vol is None:
        return True
    assert vol['status'] != 'error_deleting', 'volume %s: %s' % (
        vid, vol['status'])
    return False


def _run(stack, ops, timeout=300):
    """Make every op's API call at once (a thread each) and watch them all
    meanwhile with one poller (two list calls every half second, rather
    than fifty pollers). Returns (wall seconds, seconds until the API had
    taken every call)."""
    start = time.monotonic()
    accepted = None
    with concurrent.futures.ThreadPoolExecutor(len(ops)) as pool:
        calls = [pool.submit(op.start) for op in ops]
        while True:
            if accepted is None and all(c.done() for c in calls):
                accepted = time.monotonic() - start
            # Only ops whose call had returned before the lists are read
            # can be judged by them; the others are pending.
            called = {id(op) for op in ops if op.id is not None}
            volumes, snapshots = _volumes(stack), _snapshots(stack)
            pending = [op for op in ops if op.ended is None and (
                id(op) not in called or not op.poll(volumes, snapshots))]
            if not pending:
                break
            assert time.monotonic() - start < timeout, \
                'still pending after %d s: %s' % (
                    timeout, ', '.join('%s %s' % (op.kind, op.id)
                                       for op in pending))
            time.sleep(0.5)
    return time.monotonic() - start, accepted


def _wait_volumes(stack, ids, timeout=240):
    ops = [Op('create', lambda _reply, v=v: v, _volume_reaches())
           for v in ids]
    for op in ops:
        op.start()
    _run(stack, ops, timeout)
    errors = [op.error for op in ops if op.error]
    assert not errors, errors


# -- the XenAPI side ---------------------------------------------------------

def _our_sr(xs):
    """(ref, record) of the backend's SR, which must be the only SR of
    the export."""
    srs = {}
    for ref, pbd in xs.call('PBD.get_all_records').items():
        cfg = pbd['device_config']
        if (cfg.get('server'), cfg.get('serverpath')) == \
                xapi_fixture.EXPORT:
            srs.setdefault(pbd['SR'], []).append(pbd)
    assert len(srs) == 1, 'SRs on the export: %s' % srs
    nfs = xs.call('SR.get_all_records_where', 'field "type"="nfs"')
    assert list(nfs) == list(srs), 'NFS SRs: %s' % nfs
    sr, pbds = next(iter(srs.items()))
    assert len(pbds) == 1, 'PBDs of the SR: %s' % pbds
    assert pbds[0]['currently_attached'], pbds
    return sr, xs.call('SR.get_record', sr)


def _sr_dir(xapi, sr_uuid):
    server, path = xapi_fixture.EXPORT
    return os.path.join(xapi.root, 'exports', server, path.lstrip('/'),
                        sr_uuid)


def assert_sr_matches_cinder(stack, xs, control, xapi, tasks=True):
    """The SR holds a VDI for each volume and snapshot cinder lists and
    nothing more (hidden base copies aside); every file has a record, no
    staging directory or temporary file is left, in the SR or in cinder's
    image_conversion_dir. Returns {'volumes': n, 'snapshots': n, 'base
    copies': n}."""
    volumes, snapshots = _volumes(stack), _snapshots(stack)
    sr, sr_rec = _our_sr(xs)
    vdis = xs.call('VDI.get_all_records_where', 'field "SR"="%s"' % sr)
    seen_volumes = collections.Counter()
    seen_snaps = collections.Counter()
    strays, base = [], 0
    for rec in vdis.values():
        other = rec.get('other_config', {})
        if not rec['managed']:
            base += 1
        elif other.get(VOLUME_KEY) in volumes and \
                rec['name_label'] == 'volume-%s' % other[VOLUME_KEY]:
            seen_volumes[other[VOLUME_KEY]] += 1
        elif other.get(SNAPSHOT_KEY) in snapshots and \
                rec['name_label'] == 'snapshot-%s' % other[SNAPSHOT_KEY]:
            seen_snaps[other[SNAPSHOT_KEY]] += 1
        else:
            strays.append((rec['uuid'], rec['name_label'], other))
    assert not strays, 'VDIs cinder does not know: %s' % strays
    assert set(seen_volumes) == set(volumes), \
        'volumes without a VDI: %s' % (set(volumes) - set(seen_volumes))
    assert set(seen_snaps) == set(snapshots), \
        'snapshots without a VDI: %s' % (set(snapshots) - set(seen_snaps))
    doubles = [k for k, n in (seen_volumes + seen_snaps).items() if n > 1]
    assert not doubles, 'more than one VDI for %s' % doubles
    # Every file of the SR is a VDI's; nothing else is in the directory.
    known = {rec['uuid'] for rec in vdis.values()}
    entries = sorted(os.listdir(_sr_dir(xapi, sr_rec['uuid'])))
    others = [e for e in entries
              if not e.endswith('.vhd') or e[:-4] not in known]
    assert not others, 'in the SR directory, not a VDI: %s' % others
    state = control.state()
    assert state['mounts'] == [sr_rec['uuid']], state['mounts']
    if tasks:
        assert state['task'] == '0', 'tasks left: %s' % state['task']
    conversion = os.path.join(stack.cinder.workdir, 'conversion')
    assert os.listdir(conversion) == [], os.listdir(conversion)
    return {'volumes': len(seen_volumes), 'snapshots': len(seen_snaps),
            'base copies': base}


_vdi_of = stack_fixture.volume_vdi


def assert_disk(xs, volume_id, expected, size, tmp):
    """The volume's disk, read back through XAPI, is expected then
    zeros up to size."""
    exported, raw = os.path.join(tmp, 'export.vhd'), os.path.join(
        tmp, 'export.raw')
    with open(exported, 'wb') as f:
        transfer.export_to_file(xs, _vdi_of(xs, volume_id), f, 'vhd')
    vhd.convert(exported, raw)
    assert os.path.getsize(raw) == size
    with open(raw, 'rb') as f:
        head = f.read(len(expected))
        assert head == expected, vf.mismatch(head, expected)
        while True:
            chunk = f.read(64 * MiB)
            if not chunk:
                break
            assert chunk.count(0) == len(chunk), 'not zero past the image'
    os.unlink(exported)
    os.unlink(raw)


# A volume service's log line: its time, and the request id of the API
# call it works for (oslo.context carries it over RPC).
_LINE = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) \d+ \w+ \S+ '
                   r'\[(?:\S+ )?(req-[0-9a-f-]{36}) ')
# What cinder's volume manager logs when an operation is done.
DONE = {'create': 'Created volume successfully.',
        'snapshot': 'Create snapshot completed successfully',
        'extend': 'Extend volume completed successfully.',
        'delete': 'Deleted volume successfully.'}


def _service_work(stack, ops):
    """Which volume service did each op, from their logs: asserts that
    exactly one did it to the end, and returns ({service: ops done},
    the most ops the services held at once, from the first line of each
    until its "done" line)."""
    wanted = {op.request_id: op for op in ops}
    seen = {}           # (request id, service) -> [first, last done]
    for name in stack.cinder.volume_names():
        with open(stack.cinder.log_path(name), errors='replace') as f:
            for line in f:
                match = _LINE.match(line)
                if not match or match.group(2) not in wanted:
                    continue
                op = wanted[match.group(2)]
                when = datetime.datetime.strptime(
                    match.group(1), '%Y-%m-%d %H:%M:%S.%f').timestamp()
                entry = seen.setdefault((op.request_id, name), [when, None])
                if DONE[op.kind.split()[0]] in line:
                    entry[1] = when
    by_service = collections.Counter()
    edges = []
    for op in ops:
        done = [(name, span) for (rid, name), span in seen.items()
                if rid == op.request_id and span[1] is not None]
        assert len(done) == 1, '%s %s (%s) done by %s' % (
            op.kind, op.id, op.request_id, [d[0] for d in done])
        name, (first, last) = done[0]
        by_service[name] += 1
        edges += [(first, 1), (last, -1)]
    peak = running = 0
    for _when, step in sorted(edges):
        running += step
        peak = max(peak, running)
    return dict(by_service), peak


# -- the tests ---------------------------------------------------------------

def test_services_form_one_cluster(stack):
    services = _api(stack, 'GET', '/os-services?binary=cinder-volume')[
        'services']
    hosts = sorted(s['host'] for s in services if s['state'] == 'up')
    assert hosts == ['%s@%s' % (stack.cinder.volume_host(i), BACKEND)
                     for i in range(2)], services
    status, body = stack.cinder.api('GET', '/clusters/detail',
                                    version='3.7')
    assert status == 200, body
    clusters = [c for c in body['clusters']
                if c['binary'] == 'cinder-volume']
    assert [(c['name'], c['num_hosts'], c['num_down_hosts'])
            for c in clusters] == [('%s@%s' % (stack.cinder.cluster,
                                               BACKEND), 2, 0)], clusters


def test_fifty_operations_at_once(stack, xs, control, xapi, images,
                                  tmp_path):
    run_burst(stack, xs, control, xapi, images, tmp_path)


def run_burst(stack, xs, control, xapi, images, tmp_path):
    """The fifty operations and every check of them (the etcd module
    runs them too)."""
    # What the snapshots, clones, extends and deletes act on: two of the
    # sources hold the XenServer image's chain.
    img = images['xenserver'].id
    sources = [_new_volume(stack, imageRef=img) for _ in range(2)] + \
        [_new_volume(stack) for _ in range(2)]
    to_extend = [_new_volume(stack) for _ in range(4)]
    to_delete = [_new_volume(stack) for _ in range(6)]
    _wait_volumes(stack, sources + to_extend + to_delete)
    assert_sr_matches_cinder(stack, xs, control, xapi)
    control.clear_calls()

    def create(**fields):
        return Op('create' + ('' if not fields else ' from %s' % (
            'image' if 'imageRef' in fields else 'volume')),
            lambda reply: _new_volume(stack, reply=reply, **fields),
            _volume_reaches())

    def snapshot(vid):
        return Op('snapshot', lambda reply: _api(
            stack, 'POST', '/snapshots', {'snapshot': {
                'volume_id': vid, 'force': False}}, reply=reply)[
                    'snapshot']['id'], _snapshot_available)

    def extend(vid):
        def start(reply):
            _api(stack, 'POST', '/volumes/%s/action' % vid,
                 {'os-extend': {'new_size': 2}}, reply=reply)
            return vid
        return Op('extend', start, _volume_reaches(size=2))

    def delete(vid):
        def start(reply):
            _api(stack, 'DELETE', '/volumes/%s' % vid, reply=reply)
            return vid
        return Op('delete', start, _volume_gone)

    kinds = {}
    ops = [create() for _ in range(12)]
    for kind, n in (('xenserver', 8), ('raw', 4), ('vhd', 2)):
        new = [create(imageRef=images[kind].id) for _ in range(n)]
        kinds.update({id(op): kind for op in new})
        ops += new
    ops += [snapshot(sources[i % 4]) for i in range(8)]
    ops += [create(source_volid=sources[i % 4]) for i in range(6)]
    ops += [extend(v) for v in to_extend]
    ops += [delete(v) for v in to_delete]
    assert len(ops) == 50
    random.Random(7).shuffle(ops)

    seconds, accepted = _run(stack, ops)
    errors = ['%s %s: %s' % (op.kind, op.id, op.error)
              for op in ops if op.error]
    assert not errors, errors

    # Both services worked: a clustered service writes its own host into
    # each volume it creates.
    volumes = _volumes(stack)
    created = [op.id for op in ops if op.kind.startswith('create')]
    hosts = collections.Counter(
        volumes[v]['os-vol-host-attr:host'].split('#')[0] for v in created)
    assert len(hosts) == 2, hosts
    served, held = _service_work(stack, ops)
    assert len(served) == 2, served
    assert held >= 5, 'the operations hardly overlapped: %d' % held

    # The images' bytes, one volume of each kind.
    for kind in ('xenserver', 'raw', 'vhd'):
        vid = next(op.id for op in ops if kinds.get(id(op)) == kind)
        assert_disk(xs, vid, images[kind].disk, GiB, str(tmp_path))

    counts = assert_sr_matches_cinder(stack, xs, control, xapi)
    calls = collections.Counter(c for c in control.calls()
                                if c.startswith(('VDI.', 'Async.', 'http:',
                                                 'plugin:')))
    by_kind = collections.Counter(op.kind for op in ops)
    print('\n%d operations through the REST API at once (%s): all taken '
          'by the API in %.1f s, all done in %.1f s; the volume services '
          'held up to %d at a time' % (
              len(ops), ', '.join('%d %s' % (n, k)
                                  for k, n in sorted(by_kind.items())),
              accepted, seconds, held))
    print('operations done per volume service: %s; volumes created per '
          'host: %s' % (served, dict(hosts)))
    print('SR afterwards: %s; XenAPI calls of the burst: %s'
          % (counts, dict(calls.most_common(8))))


# Where a create from an image is held: the bare VHD streams into a VDI
# through XAPI's import handler; the XenServer image is fetched by dom0.
COPIES = {'stream': ('vhd', 'http:import_raw_vdi'),
          'plugin': ('xenserver', 'plugin:glance.py/download_vhd2')}


@pytest.mark.parametrize('path', sorted(COPIES))
def test_crash_mid_copy_then_delete_and_retry(stack, xs, control, xapi,
                                              images, tmp_path, path):
    kind, call = COPIES[path]
    image = images[kind]
    control.clear_faults()
    control.clear_calls()
    t0 = time.monotonic()
    timeline = []

    def mark(what):
        timeline.append('%5.1f s  %s' % (time.monotonic() - t0, what))

    control.add_fault(call, 'delay', seconds=HOLD)
    vid = _new_volume(stack, imageRef=image.id)
    mark('create %s from the %s image (%s path), %s held %d s'
         % (vid, kind, path, call, HOLD))

    def held():
        vol = _api(stack, 'GET', '/volumes/%s' % vid)['volume']
        host = vol.get('os-vol-host-attr:host')
        if host and call in control.calls():
            return vol
        assert vol['status'] in ('creating', 'downloading'), vol
        return None
    vol = process.wait_until(held, 60, 'the copy to be held',
                             interval=0.2)
    held_at = time.monotonic()
    index = stack.cinder.volume_index(vol['os-vol-host-attr:host'])
    name = stack.cinder.volume_names()[index]
    mark('%s (%s) is in the copy, status %s' % (
        name, vol['os-vol-host-attr:host'], vol['status']))
    pid = stack.cinder.kill_volume(index)
    mark('SIGKILLed %s (process group %d)' % (name, pid))
    stack.cinder.restart_volume(index)
    mark('%s started again' % name)
    vol = stack.wait_volume(vid, 'error', timeout=60)
    mark('volume is %s' % vol['status'])
    # Let the held call end (it finds its client gone) before the delete.
    time.sleep(max(0.0, held_at + HOLD + 1 - time.monotonic()))
    _api(stack, 'DELETE', '/volumes/%s' % vid)
    stack.wait_volume(vid, 'deleted', timeout=60)
    mark('deleted')
    left = _vdis_of(xs, vid)
    assert left == [], 'VDIs of the deleted volume: %s' % left
    counts = assert_sr_matches_cinder(stack, xs, control, xapi,
                                      tasks=False)

    control.clear_faults()
    retry = _new_volume(stack, imageRef=image.id)
    stack.wait_volume(retry, 'available', timeout=120)
    mark('retry %s available' % retry)
    assert_disk(xs, retry, image.disk, GiB, str(tmp_path))
    mark('retry bytes checked')
    # The held copy was the path named: on the stream path the bare VHD
    # passes from glance into the import with no local copy.
    how = {'stream': 'VHD passed through', 'plugin': 'dom0 plugin'}[path]
    written = []
    for name in stack.cinder.volume_names():
        with open(stack.log_paths()[name], errors='replace') as f:
            written += [line for line in f if image.id in line and
                        'written to new VDI' in line]
    assert written and all(how in line for line in written), written
    assert_sr_matches_cinder(stack, xs, control, xapi, tasks=False)
    # The killed service could not destroy its task; it has ended, and
    # XAPI's own clean-up of dead sessions' tasks takes it.
    tasks = xs.call('task.get_all_records')
    assert not [t for t in tasks.values() if t['status'] == 'pending'], \
        tasks
    mark('%d finished task(s) of the killed service left' % len(tasks))
    print('\ncrash mid-copy timeline (%s path):\n  %s\nSR after the '
          'delete: %s' % (path, '\n  '.join(timeline), counts))


def _vdis_of(xs, volume_id):
    """uuids of the VDIs that belong to a volume, by name or mark."""
    found = []
    for rec in xs.call('VDI.get_all_records').values():
        if rec['name_label'] == 'volume-%s' % volume_id or \
                rec.get('other_config', {}).get(VOLUME_KEY) == volume_id:
            found.append(rec['uuid'])
    return found


def test_no_secret_in_any_log(stack, xapi):
    """Last, so that it reads what every other test made them log,
    debug level included."""
    read = stack_fixture.assert_no_secret_logged(
        stack, [xapi.log], [xapi_fixture.PASSWORD])
    names = {os.path.basename(p) for p in read}
    assert {'cinder-volume-1.log', 'cinder-volume-2.log', 'cinder-api.log',
            'glance-api.log', 'rabbitmq.log', 'xapi.log'} <= names, names
