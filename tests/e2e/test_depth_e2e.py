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
"""Volumes that live for years, and images that cannot be used, end to end.

cinder-api, -scheduler and -volume processes, RabbitMQ, glance and the
XenAPI test server (its garbage collector on, its depth limit of 30),
driven with the ``cinder`` and ``glance`` clients; images move by dom0's
plugin.

* 35 rounds of "snapshot the newest volume, make a volume of it", and 35
  of "clone the newest volume": every volume available with the first
  one's data, no ``SR_BACKEND_FAILURE_109`` anywhere the user looks. The
  number of full copies the driver made is printed (run with ``-s``).
* A truncated XenServer image: the volume goes to error once, without a
  reschedule, after at most one dom0 download, and ``cinder
  message-list`` says why.
* A XenServer image larger than the volume: refused with no dom0
  download at all.
"""

import io
import os
import random
import re

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
ROUNDS = 35
DOWNLOAD = 'plugin:glance.py/download_vhd2'
UNLIMITED = {'quota_volumes': -1, 'quota_snapshots': -1,
             'quota_gigabytes': -1}


@pytest.fixture(scope='module')
def stack(tmp_path_factory, xapi):
    backends = {BACKEND: stack_fixture.xenapinfs_backend(xapi.url,
                                                         'plugin')}
    options = {'extra': {'DEFAULT': UNLIMITED}}
    with stack_fixture.running_stack(tmp_path_factory, backends,
                                     cinder_options=options) as s:
        yield s


_cinder = stack_fixture.cinder_cli


def _field(output, name):
    return dict(stack_fixture.cli_table(output))[name]


def _create(stack, *args, status='available'):
    vid = _field(_cinder(stack, 'create', '--volume-type', BACKEND,
                         *args), 'id')
    stack.wait_volume(vid, status, timeout=180)
    return vid


_vdi = stack_fixture.volume_vdi


def _disk_head(xs, volume_id, tmp, length):
    exported, raw = os.path.join(tmp, 'e.vhd'), os.path.join(tmp, 'e.raw')
    with open(exported, 'wb') as f:
        transfer.export_to_file(xs, _vdi(xs, volume_id), f, 'vhd')
    vhd.convert(exported, raw)
    assert os.path.getsize(raw) == GiB
    with open(raw, 'rb') as f:
        return f.read(length)


def _full_copies(stack):
    text = ''.join(open(p, errors='replace').read()
                   for p in stack.log_files() if 'volume' in p)
    return len(re.findall(r'is a full copy', text))


def _user_view(stack):
    return _cinder(stack, 'message-list') + _cinder(stack, 'list')


@pytest.fixture(scope='module')
def first(stack, xs, tmp_path_factory):
    """A 1 GiB volume holding a few MiB of data: ``(id, data)``."""
    data = random.Random(35).randbytes(3 * MiB)
    vid = _create(stack, '1')
    transfer.import_vdi(xs, _vdi(xs, vid), io.BytesIO(data),
                        len(data), 'raw')
    return vid, data


@pytest.mark.parametrize('how', ['snapshot', 'clone'])
def test_35_rounds_stay_usable(stack, xs, first, how, tmp_path):
    vid, data = first
    before = _full_copies(stack)
    newest = vid
    for n in range(ROUNDS):
        if how == 'snapshot':
            snap = _field(_cinder(stack, 'snapshot-create', newest), 'id')
            _wait_snapshot(stack, snap)
            newest = _create(stack, '--snapshot-id', snap, '1')
        else:
            newest = _create(stack, '--source-volid', newest, '1')
        if n == ROUNDS // 2:
            assert _disk_head(xs, newest, tmp_path, len(data)) == data
    assert _disk_head(xs, newest, tmp_path, len(data)) == data
    fulls = _full_copies(stack) - before
    print('\n%s: %d rounds, %d full copies' % (how, ROUNDS, fulls))
    assert 0 < fulls < ROUNDS
    seen = _user_view(stack)
    assert 'SR_BACKEND_FAILURE_109' not in seen
    assert not re.search(r'\|\s*error\s*\|', seen), seen


def _wait_snapshot(stack, snap):
    # Polled through the REST API: a client process per poll would make
    # the 35 rounds several times slower.
    def check():
        _code, body = stack.cinder.api('GET', '/snapshots/%s' % snap)
        status = body['snapshot']['status']
        assert status in ('creating', 'available'), status
        return status == 'available'
    process.wait_until(check, 120, 'snapshot %s' % snap, interval=0.5)


def _image(stack, path):
    out = stack.run_cli(stack.glance_cli_args() + [
        'image-create', '--name', os.path.basename(path), '--disk-format',
        'vhd', '--container-format', 'ovf', '--file', str(path)]).stdout
    return _field(out, 'id')


def _refused(stack, xapi, image_id):
    """Create a volume of the image, which fails: ``(dom0 downloads, the
    user's messages about the volume)``."""
    control = xapi_fixture.Control(xapi.url)
    control.clear_calls()
    vid = _create(stack, '--image-id', image_id, '1', status='error')
    downloads = control.calls().count(DOWNLOAD)
    return downloads, _cinder(stack, 'message-list', '--resource_uuid', vid)


def test_truncated_image_fails_once(stack, xapi, tmp_path):
    files, _disk, _specs = vf.standard_chain(seed=36)
    whole = tmp_path / 'whole.tgz'
    vf.xenserver_tgz(str(whole), files)
    cut = tmp_path / 'cut.tgz'
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    downloads, listing = _refused(stack, xapi, _image(stack, cut))
    print('\ntruncated image: %d dom0 download(s)' % downloads)
    assert downloads <= 1
    assert 'copy image to volume' in listing
    assert 'schedule allocate volume' not in listing
    assert 'SR_BACKEND_FAILURE' not in listing


def test_oversized_image_never_reaches_dom0(stack, xapi, tmp_path):
    block = random.Random(3).randbytes(2 * MiB)
    specs = [vf.LayerSpec(2 * GiB, {0: ({0, 1}, block)})]
    big = tmp_path / 'big.tgz'
    vf.xenserver_tgz(str(big), vf.build_chain(specs))
    downloads, listing = _refused(stack, xapi, _image(stack, big))
    assert downloads == 0
    assert 'exceeds available space' in listing
    assert 'schedule allocate volume' not in listing
