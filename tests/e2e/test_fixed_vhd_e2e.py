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
"""A fixed VHD from glance becomes a volume.

glance takes a fixed VHD as ``bare``/``vhd`` only with its format check
off (its footer comes last, so the check sees raw data); an operator who
moves disks off XenServer or Hyper-V turns it off, and expects a volume.
Here: a real glance with ``require_image_format_match = false``, the real
``cinder`` client and services, the image made by the test encoder (which
imports nothing of ours), and qemu-img reading both the image and the
VDI the host holds afterwards.
"""

import os
import random
import subprocess
import time

import pytest

from tests import stack_fixture
from tests import vhd_encoder
from xenapinfs_driver.xenapi import transfer

MiB = 1 << 20
GiB = 1 << 30
BACKEND = 'xs'


@pytest.fixture(scope='module')
def stack(tmp_path_factory, xapi):
    backends = {BACKEND: stack_fixture.xenapinfs_backend(xapi.url, 'auto')}
    with stack_fixture.running_stack(
            tmp_path_factory, backends,
            glance_options={'require_image_format_match': False}) as s:
        yield s


def _cli(stack, args):
    return stack.run_cli(args).stdout


def _image(stack, path):
    out = _cli(stack, stack.glance_cli_args() + [
        'image-create', '--name', os.path.basename(path), '--disk-format',
        'vhd', '--container-format', 'bare', '--file', str(path)])
    assert stack_fixture.cli_field(out, 'status') == 'active', out
    return stack_fixture.cli_field(out, 'id')


def _create(stack, image_id, size=1):
    out = _cli(stack, stack.cinder_cli_args() + [
        'create', '--image-id', image_id, str(size)])
    return stack_fixture.cli_field(out, 'id')


def _qemu_raw(path, fmt, tmp):
    out = os.path.join(tmp, os.path.basename(path) + '.raw')
    subprocess.run(['qemu-img', 'convert', '-q', '-f', fmt, '-O', 'raw',
                    str(path), out], check=True)
    with open(out, 'rb') as f:
        return f.read()


def _volume_vdis(xs, volume_id):
    return [rec['uuid'] for rec in xs.call('VDI.get_all_records').values()
            if volume_id in rec['name_label'] or volume_id in
            rec['other_config'].values()]


def test_fixed_vhd_becomes_a_volume(stack, xs, tmp_path):
    rnd = random.Random('fixed-e2e')
    disk = rnd.randbytes(3 * MiB) + bytes(6 * MiB) + rnd.randbytes(MiB)
    path = tmp_path / 'fixed.vhd'
    path.write_bytes(vhd_encoder.encode_fixed(disk))
    assert _qemu_raw(path, 'vpc', tmp_path) == disk
    vid = _create(stack, _image(stack, path))
    stack.wait_volume(vid, 'available', timeout=120)
    exported = tmp_path / 'export.vhd'
    with open(exported, 'wb') as f:
        transfer.export_to_file(xs, stack_fixture.volume_vdi(xs, vid), f,
                                'vhd')
    got = _qemu_raw(exported, 'vpc', tmp_path)
    assert len(got) == GiB
    assert got[:len(disk)] == disk
    assert got.count(0, len(disk)) == GiB - len(disk)
    conversion = os.path.join(stack.cinder.workdir, 'conversion')
    assert not os.path.exists(conversion) or os.listdir(conversion) == []


def test_fixed_vhd_larger_than_the_volume_is_refused_by_the_api(
        stack, xs, tmp_path):
    # glance's size of a fixed VHD is its disk's, plus 512: cinder's API
    # compares it with the volume's before any service is asked (the
    # driver refuses it too, for callers that skip the API's check).
    path = tmp_path / 'big.vhd'
    with open(path, 'wb') as f:
        f.truncate(2 * GiB)                 # sparse on this side
        f.seek(2 * GiB)
        f.write(vhd_encoder.encode_footer(
            2 * GiB, vhd_encoder.FIXED, os.urandom(16), timestamp=0,
            data_offset=None))
    image_id = _image(stack, path)
    before = set(xs.call('VDI.get_all_records'))
    result = stack.run_cli(stack.cinder_cli_args() + [
        'create', '--image-id', image_id, '1'], check=False)
    assert result.returncode == 1
    assert 'larger than volume size 1GB' in result.stderr, result.stderr
    assert 'HTTP 400' in result.stderr
    assert set(xs.call('VDI.get_all_records')) == before


def test_fixed_vhd_with_a_bad_footer_leaves_nothing(stack, xs, tmp_path):
    image = bytearray(vhd_encoder.encode_fixed(bytes(range(256)) * 8192))
    image[-512 + 64] ^= 0xFF                # the footer's checksum
    path = tmp_path / 'bad.vhd'
    path.write_bytes(bytes(image))
    before = set(xs.call('VDI.get_all_records'))
    vid = _create(stack, _image(stack, path))
    vol = stack.wait_volume(vid, 'error', timeout=120)
    assert vol['status'] == 'error'
    # The reason is in the volume service's log, with the volume's id.
    log = stack.cinder.log_path('cinder-volume')
    deadline = time.monotonic() + 30
    while True:
        with open(log, errors='replace') as f:
            refused = [line for line in f if 'Image refused' in line and
                       vid in line]
        if refused or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(refused) == 1, refused
    assert 'footer' in refused[0] and 'checksum' in refused[0], refused[0]
    assert set(xs.call('VDI.get_all_records')) == before
    assert _volume_vdis(xs, vid) == []
    conversion = os.path.join(stack.cinder.workdir, 'conversion')
    assert not os.path.exists(conversion) or os.listdir(conversion) == []
