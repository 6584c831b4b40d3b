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
"""Volumes that outlive the host's memory, end to end.

cinder-api, -scheduler and one cinder-volume, RabbitMQ, glance and the
XenAPI test server as its own process, driven with the ``cinder`` CLI.
The test server keeps its database under its root, so stopping it and
starting it on the same root and port is a host restart; with
``--forget-srs`` it is a host that forgot its SRs.

* The host restarts under a running stack: the next operations succeed,
  with the same cinder-volume process.
* An upload whose snapshot cannot be destroyed (the host does not answer
  then) leaves an orphan: the sweep, run from the stats poll, removes it
  within one grace period, while a live volume and a live snapshot
  survive every pass.
* The host forgot the SR and cinder-volume restarts: the old SR is
  adopted (one SR on the export), every old volume reads back and works.
"""

import contextlib
import os
import random
import re
import time

import pytest

from tests import stack_fixture
from tests import xapi_fixture
from xenapinfs_driver.testing.stack import process
from xenapinfs_driver import vhd
from xenapinfs_driver.xenapi import storage
from xenapinfs_driver.xenapi import transfer

MiB = 1 << 20
BACKEND = 'xs'
SERVER, PATH = xapi_fixture.EXPORT
GRACE = 15      # xenapi_orphan_grace_period
POLL = 3        # seconds between stats polls, hence sweeps
MARK = 'xenapinfs-op-'


class Host:
    """The test server as a host that can restart: same root, same port."""

    def __init__(self, root):
        self.root = str(root)
        self.port = process.free_port()
        self.url = 'http://127.0.0.1:%d' % self.port
        self._exit = None

    def start(self, *args):
        self._exit = contextlib.ExitStack()
        proc = self._exit.enter_context(stack_fixture.running_xapi(
            self.root, listen='127.0.0.1:%d' % self.port, args=args))
        assert proc.url.rstrip('/') == self.url, proc.url

    def stop(self):
        self._exit.close()

    def restart(self, *args):
        self.stop()
        self.start(*args)


@pytest.fixture(scope='module')
def xapi(tmp_path_factory):
    host = Host(tmp_path_factory.mktemp('xapi'))
    host.start()
    yield host
    host.stop()


@pytest.fixture(scope='module')
def stack(tmp_path_factory, xapi):
    backend = dict(stack_fixture.xenapinfs_backend(xapi.url, 'stream'),
                   xenapi_orphan_grace_period=GRACE)
    # Periodic tasks (the stats poll) every few seconds, from the start.
    often = {'backend_stats_polling_interval': POLL,
             'periodic_interval': POLL, 'periodic_fuzzy_delay': 0}
    with stack_fixture.running_stack(
            tmp_path_factory, {BACKEND: backend},
            cinder_options={'extra': {'DEFAULT': often}}) as s:
        yield s


@pytest.fixture(scope='module')
def control(xapi):
    return xapi_fixture.Control(xapi.url)


@pytest.fixture(scope='module')
def image(stack, tmp_path_factory):
    """A raw image of a few MiB in glance: ``(id, disk)``."""
    disk = random.Random(5).randbytes(3 * MiB)
    path = tmp_path_factory.mktemp('img') / 'disk.raw'
    path.write_bytes(disk)
    out = _run(stack, stack.glance_cli_args(), 'image-create', '--name',
               'disk', '--disk-format', 'raw', '--container-format', 'bare',
               '--file', str(path))
    return _field(out, 'id'), disk


def _run(stack, cli, *args):
    return stack.run_cli(cli + list(args)).stdout


def _cinder(stack, *args):
    return _run(stack, stack.cinder_cli_args(), *args)


_field = stack_fixture.cli_field


def _wait(what, check, timeout=90):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, \
            'no %s after %ds' % (what, timeout)
        time.sleep(0.5)


def _create(stack, *args):
    vid = _field(_cinder(stack, 'create', '--volume-type', BACKEND,
                         *args), 'id')
    stack.wait_volume(vid, 'available', timeout=120)
    return vid


def _snapshot(stack, vid):
    snap = _field(_cinder(stack, 'snapshot-create', vid), 'id')
    _wait('snapshot %s' % snap, lambda: _field(
        _cinder(stack, 'snapshot-show', snap), 'status') == 'available')
    return snap


def _vdi_uuid(xs, name):
    refs = xs.call('VDI.get_by_name_label', name)
    assert len(refs) == 1, (name, refs)
    return xs.call('VDI.get_uuid', refs[0])


def _disk(xs, vdi_uuid, tmp, length):
    exported, raw = os.path.join(tmp, 'e.vhd'), os.path.join(tmp, 'e.raw')
    with open(exported, 'wb') as f:
        transfer.export_to_file(xs, xs.call('VDI.get_by_uuid', vdi_uuid), f,
                                'vhd')
    vhd.convert(exported, raw)
    with open(raw, 'rb') as f:
        return f.read(length)


def _our_srs(xs):
    return {rec['uuid']: ref for ref, rec in xs.call(
        'SR.get_all_records_where', 'field "type"="nfs"').items()
        if storage.TAG_KEY in rec['other_config']}


def test_a_host_restart_needs_no_service_restart(stack, xapi, xs, image,
                                                 tmp_path):
    image_id, disk = image
    pid = stack.cinder.volume_procs()[0].pid
    vid = _create(stack, '--image-id', image_id, '1')
    xapi.restart()
    snap = _snapshot(stack, vid)
    clone = _create(stack, '--snapshot-id', snap, '1')
    assert _disk(xs, _vdi_uuid(xs, 'volume-%s' % clone), tmp_path,
                 len(disk)) == disk
    _cinder(stack, 'delete', clone)
    stack.wait_volume(clone, 'deleted')
    assert stack.cinder.volume_procs()[0].pid == pid


def test_the_sweep_removes_an_upload_snapshot_the_host_kept(
        stack, xs, control, image, tmp_path):
    image_id, disk = image
    vid = _create(stack, '--image-id', image_id, '1')
    snap = _snapshot(stack, vid)
    live = {_vdi_uuid(xs, 'volume-%s' % vid),
            _vdi_uuid(xs, 'snapshot-%s' % snap)}
    # The host does not answer the snapshot's destroy, nor the retry.
    control.add_fault('VDI.destroy', 'drop', times=2)
    try:
        out = _cinder(stack, 'upload-to-image', '--disk-format', 'vhd',
                      '--container-format', 'bare', vid, 'up')
        new_image = _field(out, 'image_id')
        _wait('image %s' % new_image, lambda: _field(_run(
            stack, stack.glance_cli_args(), 'image-show', new_image),
            'status') == 'active')
        stack.wait_volume(vid, 'available')
    finally:
        control.clear_faults()
    sr = next(iter(_our_srs(xs).values()))
    orphans = {rec['uuid']: rec for rec in xs.call(
        'VDI.get_all_records_where', 'field "SR"="%s"' % sr).values()
        if any(k.startswith(MARK) for k in rec['other_config'])}
    assert len(orphans) == 1, orphans
    (orphan, rec), = orphans.items()
    assert rec['name_label'].startswith('upload of ')
    marked = min(int(re.search(r'"time": (\d+)', v).group(1))
                 for k, v in rec['other_config'].items()
                 if k.startswith(MARK))

    def gone():
        return storage.vdi_by_uuid(xs, orphan) is None
    _wait('the orphan swept', gone, timeout=GRACE + 6 * POLL + 30)
    # Not before the grace period, and by the next polls after it.
    swept = time.time()
    assert swept >= marked + GRACE
    log = stack.log_paths()[stack.cinder.volume_names()[0]]
    with open(log) as f:
        assert 'Orphan sweep: destroyed VDI %s' % orphan in f.read()
    # Many more passes: what cinder knows stays.
    time.sleep(4 * POLL)
    for vdi_uuid in live:
        assert storage.vdi_by_uuid(xs, vdi_uuid) is not None
    assert _disk(xs, _vdi_uuid(xs, 'volume-%s' % vid), tmp_path,
                 len(disk)) == disk
    _cinder(stack, 'snapshot-delete', snap)


def test_a_forgotten_sr_is_adopted_at_start(stack, xapi, xs, image,
                                            tmp_path):
    image_id, disk = image
    vid = _create(stack, '--image-id', image_id, '1')
    (sr_uuid, _ref), = _our_srs(xs).items()
    vdis = {}
    for line in _cinder(stack, 'list', '--all-tenants').splitlines():
        match = re.match(r'\|\s*([0-9a-f-]{36})\s*\|', line)
        if match:
            vdis[match.group(1)] = _vdi_uuid(xs, 'volume-%s'
                                             % match.group(1))
    assert vid in vdis and len(vdis) >= 2
    stack.cinder.kill_volume(0)
    xapi.restart('--forget-srs')
    assert _our_srs(xs) == {}
    stack.cinder.restart_volume(0)
    assert list(_our_srs(xs)) == [sr_uuid]
    assert storage.probe_nfs_srs(xs, SERVER, PATH) == {sr_uuid}
    for vdi_uuid in vdis.values():
        assert storage.vdi_by_uuid(xs, vdi_uuid) is not None
    assert _disk(xs, vdis[vid], tmp_path, len(disk)) == disk
    clone = _create(stack, '--source-volid', vid, '1')
    assert _disk(xs, _vdi_uuid(xs, 'volume-%s' % clone), tmp_path,
                 len(disk)) == disk
    for v in (clone, vid):
        _cinder(stack, 'delete', v)
        stack.wait_volume(v, 'deleted')
