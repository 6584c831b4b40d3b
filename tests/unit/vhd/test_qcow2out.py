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
"""qcow2out: raw disks packed into qcow2 images on the fly, judged by
qemu-img (check: clean; compare: the raw disk; info: the virtual size)."""

import json
import os
import random
import shutil
import subprocess

import pytest

from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import qcow2out

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CLUSTER = qcow2out.CLUSTER
QEMU = shutil.which('qemu-img')
needs_qemu = pytest.mark.skipif(QEMU is None, reason='qemu-img not found')


def raw_disk(path, size, pieces, seed=1):
    """A sparse file of size bytes with random non-zero bytes at (offset,
    length) pieces; the rest holes."""
    rnd = random.Random(seed)
    with open(path, 'wb') as f:
        f.truncate(size)
        for offset, length in pieces:
            f.seek(offset)
            f.write(rnd.randbytes(length).replace(b'\0', b'\1'))
    return str(path)


class Sink:
    """Collects what the writer writes into a sparse file (zero pieces
    are left holes), and the size of each write."""

    def __init__(self, path):
        self.path = str(path)
        self.f = open(path, 'wb')
        self.sizes = []

    def write(self, data):
        self.sizes.append(len(data))
        if any(data):
            self.f.write(data)
        else:
            self.f.seek(len(data), os.SEEK_CUR)

    def close(self):
        self.f.truncate()
        self.f.close()


def pack(tmp_path, raw, **kwargs):
    sink = Sink(tmp_path / 'out.qcow2')
    with qcow2out.Qcow2Out(raw, **kwargs) as image:
        length = image.length
        assert not sink.sizes           # known before the first byte
        written = image.write_to(sink.write)
        stored = image.stored
    sink.close()
    assert written == length == sum(sink.sizes) == os.path.getsize(
        sink.path)
    # Memory: no piece larger than a run of data clusters.
    assert max(sink.sizes) <= qcow2out.RUN * CLUSTER
    return sink.path, stored


def qemu(*args):
    return subprocess.run([QEMU, *args], check=True, capture_output=True,
                          text=True, timeout=300).stdout


def assert_qemu_agrees(path, raw, size):
    qemu('check', '-f', 'qcow2', path)   # exit 0: no error, no leak
    info = json.loads(qemu('info', '--output=json', '-f', 'qcow2', path))
    assert info['format'] == 'qcow2'
    assert info['virtual-size'] == size
    assert info['format-specific']['data']['compat'] == '1.1'   # v3
    assert info['cluster-size'] == CLUSTER
    out = subprocess.run([QEMU, 'compare', '-f', 'raw', '-F', 'qcow2', raw,
                          path], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


CASES = {
    'empty': (5 * MiB, [], 0),
    'one cluster': (5 * MiB, [(3 * CLUSTER + 100, 10)], 1),
    # Runs, lone clusters, a piece across two clusters and three L2
    # ranges with data, one without.
    'scattered': (2 * GiB, [
        (0, 3 * CLUSTER), (17 * CLUSTER, 1), (600 * MiB - 5, 10),
        (1800 * MiB, 40 * CLUSTER + 1)], 3 + 1 + 2 + 41),
    'partial last cluster': (7 * CLUSTER + 3 * 512,
                             [(7 * CLUSTER + 512, 100)], 1),
    'not a multiple of the cluster': (9 * MiB + 7 * 512,
                                      [(0, 9 * MiB + 7 * 512)],
                                      9 * 16 + 1),
}


@needs_qemu
@pytest.mark.parametrize('case', sorted(CASES))
def test_qemu_reads_the_raw_disk(tmp_path, case):
    size, pieces, clusters = CASES[case]
    raw = raw_disk(tmp_path / 'disk.raw', size, pieces)
    path, stored = pack(tmp_path, raw)
    assert stored == clusters
    assert_qemu_agrees(path, raw, size)


def random_pieces(rnd, sectors, count):
    """A disk size of up to ``sectors`` sectors and ``count`` pieces
    ``(at, length)`` in it, of lengths around the cluster's edges."""
    size = rnd.randrange(1, sectors) * 512
    pieces = []
    for _ in range(count):
        at = rnd.randrange(size)
        pieces.append((at, min(size - at, rnd.choice(
            [1, 511, CLUSTER - 1, CLUSTER, 3 * CLUSTER + 5, MiB]))))
    return size, pieces


@needs_qemu
@pytest.mark.parametrize('seed', range(4))
def test_random_disks(tmp_path, seed):
    rnd = random.Random(seed)
    size, pieces = random_pieces(rnd, 80 * 1024, rnd.randrange(30))
    raw = raw_disk(tmp_path / 'disk.raw', size, pieces, seed)
    path, stored = pack(tmp_path, raw)
    want = {i for at, n in pieces
            for i in range(at // CLUSTER, (at + n - 1) // CLUSTER + 1)}
    assert stored == len(want)
    assert_qemu_agrees(path, raw, size)


@needs_qemu
def test_zeros_written_as_data_are_not_stored(tmp_path):
    raw = tmp_path / 'disk.raw'
    with open(raw, 'wb') as f:
        f.write(bytes(3 * CLUSTER) + b'x' + bytes(CLUSTER))
    path, stored = pack(tmp_path, str(raw))
    assert stored == 1
    assert_qemu_agrees(path, str(raw), 4 * CLUSTER + 512)


@needs_qemu
def test_a_size_not_a_whole_sector_is_rounded_up(tmp_path):
    raw = raw_disk(tmp_path / 'disk.raw', MiB + 100, [(MiB, 100)])
    path, stored = pack(tmp_path, raw)
    assert stored == 1
    padded = tmp_path / 'padded.raw'
    shutil.copy(raw, padded)
    os.truncate(padded, MiB + 512)
    assert_qemu_agrees(path, str(padded), MiB + 512)


@needs_qemu
def test_more_than_one_refcount_block(tmp_path):
    # One byte in every cluster of 2 GiB + 64 MiB: more clusters in the
    # file than one refcount block counts (32768), so the blocks and the
    # table that points at them must count themselves.
    size = 2 * GiB + 64 * MiB
    raw = raw_disk(tmp_path / 'disk.raw', size,
                   [(i * CLUSTER + 7, 1) for i in range(size // CLUSTER)])
    with qcow2out.Qcow2Out(raw) as image:
        assert image.rb_count == 2
        assert image.total_clusters > qcow2out.RC_ENTRIES
    path, stored = pack(tmp_path, raw)
    assert stored == size // CLUSTER
    assert_qemu_agrees(path, raw, size)


def test_the_header_fields(tmp_path):
    raw = raw_disk(tmp_path / 'disk.raw', 3 * GiB, [(GiB, 1)])
    with qcow2out.Qcow2Out(raw) as image:
        header = image._header()
    assert len(header) == CLUSTER
    assert qcow2out._HEADER.size == qcow2out.HEADER_LENGTH
    fields = qcow2out._HEADER.unpack_from(header)
    assert fields[:2] == (b'QFI\xfb', 3)
    assert fields[4:6] == (16, 3 * GiB)         # cluster bits, size
    assert fields[7] == 6                       # L1 entries: 512 MiB each
    assert fields[-2:] == (4, 104)              # refcount order, length
    assert not any(header[qcow2out.HEADER_LENGTH:])


def test_a_disk_over_the_limit_is_refused_by_name(tmp_path):
    raw = raw_disk(tmp_path / 'disk.raw', 4 * MiB, [])
    with pytest.raises(errors.LimitExceeded) as err:
        qcow2out.Qcow2Out(raw, source='raw disk of VDI v1', max_size=MiB)
    assert 'raw disk of VDI v1' in str(err.value)
    assert 'virtual size' in str(err.value)


def test_a_disk_shrinking_after_the_first_pass_fails(tmp_path):
    raw = raw_disk(tmp_path / 'disk.raw', 4 * MiB, [(3 * MiB, MiB)])
    with qcow2out.Qcow2Out(raw, source='raw disk of VDI v2') as image:
        os.truncate(raw, 3 * MiB + KiB)
        with pytest.raises(errors.Truncated) as err:
            image.write_to(lambda data: None)
    assert 'raw disk of VDI v2' in str(err.value)
