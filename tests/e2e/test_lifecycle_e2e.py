"""A volume that lives for a while: snapshots taken and deleted, uploads.

On a real host the storage manager's garbage collector coalesces a chain
again after a snapshot is deleted, so a volume that keeps no snapshot
never nears the host's depth limit however often it is snapshotted or
uploaded. The test server does the same in the background (``--gc auto``,
its default); this drives one volume through 40 rounds of
``cinder snapshot-create`` + ``snapshot-delete`` and 10 of
``cinder upload-to-image`` with the real client, and checks the chain
depth stays bounded, the SR keeps only the files the live volume needs,
and the data never changes. Depth and file counts are read from the host
(``sm_config['vhd-parent']``, the SR directory).
"""

import io
import os
import random
import time

import pytest

from tests import stack_fixture
from tests import xapi_fixture
from xenapinfs_driver import exception
from xenapinfs_driver import vhd
from xenapinfs_driver.xenapi import transfer

MiB = 1 << 20
GiB = 1 << 30
ROUNDS = 40
UPLOADS = 10
# The host's limit is 30; without the collector each kept-then-deleted
# snapshot would leave one level for good (41 levels by the last round).
# The collector starts a pass a delay (2 s) after each delete, so rounds
# faster than that may stack a few levels before it catches up: the bound
# says the depth does not grow with the number of rounds, not how fast the
# collector is.
BOUND = 8


@pytest.fixture(scope='module')
def stack(tmp_path_factory, xapi):
    backends = {'xs_life': stack_fixture.xenapinfs_backend(xapi.url,
                                                           'plugin')}
    with stack_fixture.running_stack(tmp_path_factory, backends) as s:
        yield s


_field = stack_fixture.cli_field


_cinder = stack_fixture.cinder_cli


def _wait(stack, path, key, status, timeout=120):
    """Poll the API until the object has status ('deleted': is gone)."""
    deadline = time.monotonic() + timeout
    while True:
        code, body = stack.cinder.api('GET', path)
        if code == 404 and status == 'deleted':
            return
        assert code == 200, (code, body)
        got = body[key]['status']
        if got == status:
            return
        assert not got.startswith('error'), body
        assert time.monotonic() < deadline, body
        time.sleep(0.3)


def _depth(xs, vdi):
    """The number of VHD files under the VDI, by the host's records.

    The collector runs meanwhile: a parent it coalesced away between two
    reads makes the walk start again, as any client of a host must.
    """
    for _attempt in range(20):
        try:
            return _walk(xs, vdi)
        except exception.XenAPIError as exc:
            if 'UUID_INVALID' not in str(exc) and \
                    'HANDLE_INVALID' not in str(exc):
                raise
            time.sleep(0.2)
    raise AssertionError('the chain of %s kept changing' % vdi)


def _walk(xs, vdi):
    depth = 1
    while True:
        parent = xs.call('VDI.get_sm_config', vdi).get('vhd-parent')
        if not parent:
            return depth
        vdi = xs.call('VDI.get_by_uuid', parent)
        depth += 1


def _sr_files(xapi, xs, vdi):
    sr_uuid = xs.call('SR.get_uuid', xs.call('VDI.get_SR', vdi))
    server, path = xapi_fixture.EXPORT
    sr_dir = os.path.join(xapi.root, 'exports', server,
                          *path.strip('/').split('/'), sr_uuid)
    return sorted(n for n in os.listdir(sr_dir) if n.endswith('.vhd'))


def _disk(xs, vdi, tmp):
    exported = os.path.join(tmp, 'export.vhd')
    raw = os.path.join(tmp, 'export.raw')
    with open(exported, 'wb') as f:
        transfer.export_to_file(xs, vdi, f, 'vhd')
    vhd.convert(exported, raw)
    with open(raw, 'rb') as f:
        return f.read()


def test_snapshots_and_uploads_keep_the_chain_short(stack, xapi, xs,
                                                    tmp_path):
    control = xapi_fixture.Control(xapi.url)
    vid = _field(_cinder(stack, 'create', '--volume-type', 'xs_life', '1'),
                 'id')
    _wait(stack, '/volumes/%s' % vid, 'volume', 'available')
    vdi, = xs.call('VDI.get_by_name_label', 'volume-%s' % vid)
    data = random.Random(5).randbytes(6 * MiB)
    transfer.import_vdi(xs, vdi, io.BytesIO(data), len(data), 'raw')

    depths = []
    started = time.monotonic()
    for _ in range(ROUNDS):
        snap = _field(_cinder(stack, 'snapshot-create', vid), 'id')
        _wait(stack, '/snapshots/%s' % snap, 'snapshot', 'available')
        depths.append(_depth(xs, vdi))
        _cinder(stack, 'snapshot-delete', snap)
        _wait(stack, '/snapshots/%s' % snap, 'snapshot', 'deleted')
    snapshot_seconds = time.monotonic() - started

    layers = []
    for i in range(UPLOADS):
        out = _cinder(stack, 'upload-to-image', '--container-format', 'ovf',
                      '--disk-format', 'vhd', vid, 'life-%d' % i)
        image = _field(out, 'image_id')
        # cinder sets the volume back to available once glance has the
        # whole image: the download below then finds it active.
        _wait(stack, '/volumes/%s' % vid, 'volume', 'available', 300)
        depths.append(_depth(xs, vdi))
        tgz = tmp_path / 'up.tgz'
        stack.run_cli(stack.glance_cli_args() +
                      ['image-download', '--file', str(tgz), image])
        layers.append(len(vhd.inspect(str(tgz)).layers))
        stack.run_cli(stack.glance_cli_args() + ['image-delete', image])

    assert control.gc_wait(120), 'the collector did not settle'
    final = _depth(xs, vdi)
    files = _sr_files(xapi, xs, vdi)
    print('depth over %d snapshot rounds and %d uploads: max %d, final %d;'
          ' image layers %s; %d files in the SR; snapshot rounds %.1f s'
          % (ROUNDS, UPLOADS, max(depths), final, layers, len(files),
             snapshot_seconds))
    # Each round saw at most the snapshot's level and what the collector
    # had not reached yet; at rest the volume is one file again.
    assert max(depths) <= BOUND, depths
    assert final == 1
    assert files == ['%s.vhd' % xs.call('VDI.get_uuid', vdi)], files
    # The uploads do not pile up layers either.
    assert max(layers) <= BOUND, layers
    assert _disk(xs, vdi, tmp_path)[:len(data)] == data
