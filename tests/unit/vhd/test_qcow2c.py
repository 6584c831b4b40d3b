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
"""qcow2c: raw disks packed into compressed qcow2 images on the fly,
judged by qemu-img (check: clean, no leak; compare: the raw disk; map:
compressed extents where the data shrinks)."""

import json
import os
import random
import struct
import subprocess
from unittest import mock

import pytest

from tests.unit.vhd import test_qcow2out
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import qcow2c
from xenapinfs_driver.vhd import qcow2out

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CLUSTER = qcow2c.CLUSTER
QEMU = test_qcow2out.QEMU
needs_qemu = test_qcow2out.needs_qemu
Sink = test_qcow2out.Sink
qemu = test_qcow2out.qemu


def text(n, seed=0):
    """n bytes of compressible text, never a zero byte."""
    line = b'line %d of the volume, seed %d: lorem ipsum dolor sit amet\n'
    return b''.join(line % (i, seed) for i in range(n // 40 + 1))[:n]


def make_disk(path, size, pieces, seed=1):
    """A sparse file of size bytes holding (offset, kind, length) pieces:
    kind 'random' (incompressible, no zero byte), 'text' or 'zeros'
    (written out, so not a hole)."""
    rnd = random.Random(seed)
    with open(path, 'wb') as f:
        f.truncate(size)
        for offset, kind, length in pieces:
            f.seek(offset)
            if kind == 'random':
                f.write(rnd.randbytes(length).replace(b'\0', b'\1'))
            elif kind == 'text':
                f.write(text(length, offset))
            else:
                f.write(bytes(length))
    return str(path)


def pack(tmp_path, raw, name='out.qcow2', **kwargs):
    sink = Sink(tmp_path / name)
    with qcow2c.Qcow2C(raw, **kwargs) as image:
        length = image.length
        assert not sink.sizes           # known before the first byte
        written = image.write_to(sink.write)
        counts = (image.stored, image.plain, image.compressed)
    sink.close()
    assert written == length == sum(sink.sizes) == os.path.getsize(
        sink.path)
    assert length % CLUSTER == 0
    return sink.path, counts


def check(path):
    """qemu-img check's verdict: (exit status, its report)."""
    out = subprocess.run([QEMU, 'check', '--output=json', '-f', 'qcow2',
                          path], capture_output=True, text=True,
                         timeout=300)
    return out.returncode, out.stdout + out.stderr


def assert_qemu_agrees(path, raw, size):
    status, report = check(path)
    assert status == 0, report          # no error, no leak
    found = json.loads(report)
    assert found.get('leaks', 0) == found.get('corruptions', 0) == 0
    info = json.loads(qemu('info', '--output=json', '-f', 'qcow2', path))
    assert info['virtual-size'] == size
    assert info['format-specific']['data']['compat'] == '1.1'
    assert info['cluster-size'] == CLUSTER
    out = subprocess.run([QEMU, 'compare', '-f', 'raw', '-F', 'qcow2', raw,
                          path], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return found


def qemu_map(path):
    return json.loads(qemu('map', '--output=json', '-f', 'qcow2', path))


# size, pieces, (data clusters, stored plainly, compressed)
CASES = {
    # The last cluster: 100 random bytes and zeros, which shrink.
    'random': (4 * MiB, [(0, 'random', 2 * MiB + 100)], (33, 32, 1)),
    'text': (4 * MiB, [(MiB, 'text', 2 * MiB)], (32, 0, 32)),
    'zeros and holes': (8 * MiB, [(0, 'zeros', 2 * MiB),
                                  (5 * MiB, 'text', 10)], (1, 0, 1)),
    'empty': (5 * MiB, [], (0, 0, 0)),
    'not a multiple of the cluster': (
        3 * MiB + 7 * 512,
        [(0, 'random', MiB), (MiB, 'text', 2 * MiB + 7 * 512)],
        (49, 16, 33)),
    'mixed, across L2 tables': (
        2 * GiB + 5 * CLUSTER,
        [(CLUSTER - 7, 'text', 3 * CLUSTER), (600 * MiB, 'random', 10),
         (600 * MiB + CLUSTER, 'random', CLUSTER),
         (1100 * MiB, 'text', 40 * CLUSTER + 1),
         (2 * GiB + 4 * CLUSTER + 3, 'random', 5)],
        (48, 1, 47)),
}


@needs_qemu
@pytest.mark.parametrize('workers', [1, 3])
@pytest.mark.parametrize('case', sorted(CASES))
def test_qemu_reads_the_raw_disk(tmp_path, case, workers):
    size, pieces, counts = CASES[case]
    raw = make_disk(tmp_path / 'disk.raw', size, pieces)
    path, got = pack(tmp_path, raw, workers=workers)
    assert got == counts
    assert_qemu_agrees(path, raw, size)
    mapped = qemu_map(path)
    # Compressed extents have no offset in the file; plain ones have.
    packed = sum(e['length'] for e in mapped
                 if e['data'] and 'offset' not in e)
    plain = sum(e['length'] for e in mapped if e['data'] and 'offset' in e)
    # (The last cluster may be partial: the map stops at the disk's end.)
    assert (packed > 0) == (counts[2] > 0)
    assert 0 <= counts[2] * CLUSTER - packed < CLUSTER
    assert 0 <= counts[1] * CLUSTER - plain < CLUSTER


@needs_qemu
def test_compressible_data_shrinks_like_qemus(tmp_path):
    raw = make_disk(tmp_path / 'disk.raw', 64 * MiB,
                    [(0, 'text', 8 * MiB), (20 * MiB, 'random', MiB)])
    path, _counts = pack(tmp_path, raw)
    theirs = tmp_path / 'qemu.qcow2'
    qemu('convert', '-c', '-f', 'raw', '-O', 'qcow2', raw, str(theirs))
    ours = os.path.getsize(path)
    # The same deflate and packing: within a cluster or two of qemu's.
    assert abs(ours - os.path.getsize(theirs)) <= 2 * CLUSTER
    assert ours < 3 * MiB


@needs_qemu
@pytest.mark.parametrize('seed', range(3))
def test_random_disks(tmp_path, seed):
    rnd = random.Random(seed)
    size, placed = test_qcow2out.random_pieces(rnd, 40 * 1024,
                                               rnd.randrange(1, 25))
    pieces = [(at, rnd.choice(['random', 'text', 'zeros']), n)
              for at, n in placed]
    raw = make_disk(tmp_path / 'disk.raw', size, pieces, seed)
    path, _counts = pack(tmp_path, raw, workers=2)
    assert_qemu_agrees(path, raw, size)


def test_the_l2_entry_of_a_compressed_cluster():
    # 300 bytes from sector 1, byte 500: sectors 1 and 2, one after the
    # first.
    e = qcow2c.entry(512 + 500, 300)
    assert e & (1 << 62) and not e & (1 << 63)
    assert (e >> 54) & 0xFF == 1
    assert e & ((1 << 54) - 1) == 1012
    assert (qcow2c.entry(CLUSTER, 512) >> 54) & 0xFF == 0
    assert (qcow2c.entry(CLUSTER, 513) >> 54) & 0xFF == 1


def test_threads_write_the_same_image(tmp_path):
    raw = make_disk(tmp_path / 'disk.raw', 16 * MiB,
                    [(0, 'text', 5 * MiB), (7 * MiB, 'random', MiB)])
    one, _ = pack(tmp_path, raw, 'one.qcow2', workers=1)
    four, _ = pack(tmp_path, raw, 'four.qcow2', workers=4)
    with open(one, 'rb') as a, open(four, 'rb') as b:
        assert a.read() == b.read()


@needs_qemu
def test_a_wrong_refcount_is_caught(tmp_path):
    # The referee must be able to fail: one refcount of the compressed
    # area off by one is an error (too low) or a leak (too high).
    raw = make_disk(tmp_path / 'disk.raw', 4 * MiB, [(0, 'text', 3 * MiB)])
    real = qcow2c.Qcow2C._data_clusters

    def off_by(delta):
        def lay_out(image):
            n = real(image)
            image._area[0] += delta
            return n
        return lay_out
    path, _ = pack(tmp_path, raw)
    assert check(path)[0] == 0
    # qemu-img check exits 2 for corruptions, 3 for leaks only.
    for delta, status in ((1, 3), (-1, 2)):
        with mock.patch.object(qcow2c.Qcow2C, '_data_clusters',
                               off_by(delta)):
            path, _ = pack(tmp_path, raw, 'bad%d.qcow2' % delta)
        got, report = check(path)
        assert got == status, report


def test_refcount_blocks_across_the_compressed_area():
    # More clusters than one block counts, without packing gigabytes:
    # the blocks joined are ones up to the area, then its refcounts.
    image = object.__new__(qcow2c.Qcow2C)
    image.total_clusters = qcow2out.RC_ENTRIES + 5000
    image.area_offset = (qcow2out.RC_ENTRIES - 7) * CLUSTER
    image._area = qcow2c.array.array(
        'H', [(i % 5) + 1 for i in range(5007)])
    blocks = [image._refcount_block(k) for k in range(2)]
    assert [len(b) for b in blocks] == [2 * qcow2out.RC_ENTRIES, 2 * 5000]
    counts = struct.unpack('>%dH' % image.total_clusters, b''.join(blocks))
    assert counts[:qcow2out.RC_ENTRIES - 7] == (1,) * (
        qcow2out.RC_ENTRIES - 7)
    assert list(counts[qcow2out.RC_ENTRIES - 7:]) == list(image._area)


@needs_qemu
def test_copied_flag_on_a_compressed_entry_is_caught(tmp_path):
    raw = make_disk(tmp_path / 'disk.raw', 4 * MiB, [(0, 'text', MiB)])
    real = qcow2c.entry
    with mock.patch.object(qcow2c, 'entry',
                           lambda *a: real(*a) | qcow2out.COPIED):
        path, _ = pack(tmp_path, raw)
    assert check(path)[0] != 0


def test_a_disk_changed_between_the_passes_fails(tmp_path):
    raw = make_disk(tmp_path / 'disk.raw', 4 * MiB, [(0, 'text', 2 * MiB)])
    with qcow2c.Qcow2C(raw, source='raw disk of VDI v3') as image:
        with open(raw, 'r+b') as f:
            f.seek(MiB + 100)
            f.write(random.Random(5).randbytes(3000))
        with pytest.raises(errors.VhdError) as err:
            image.write_to(lambda data: None)
    assert 'raw disk of VDI v3' in str(err.value)
    assert 'changed while being read' in str(err.value)


def test_a_disk_shrinking_after_the_first_pass_fails(tmp_path):
    raw = make_disk(tmp_path / 'disk.raw', 4 * MiB,
                    [(3 * MiB, 'text', MiB)])
    with qcow2c.Qcow2C(raw, source='raw disk of VDI v2',
                       workers=2) as image:
        os.truncate(raw, 3 * MiB + KiB)
        with pytest.raises(errors.Truncated) as err:
            image.write_to(lambda data: None)
    assert 'raw disk of VDI v2' in str(err.value)


def test_a_short_image_fails_loudly(tmp_path):
    raw = make_disk(tmp_path / 'disk.raw', 4 * MiB, [(0, 'text', MiB)])
    with qcow2c.Qcow2C(raw) as image:
        image.length += CLUSTER
        with pytest.raises(AssertionError, match='came out'):
            image.write_to(lambda data: None)


def test_a_disk_over_the_limit_is_refused_by_name(tmp_path):
    raw = make_disk(tmp_path / 'disk.raw', 4 * MiB, [])
    with pytest.raises(errors.LimitExceeded) as err:
        qcow2c.Qcow2C(raw, source='raw disk of VDI v1', max_size=MiB)
    assert 'raw disk of VDI v1' in str(err.value)


def test_the_header_is_qcow2outs(tmp_path):
    raw = make_disk(tmp_path / 'disk.raw', 3 * GiB, [(GiB, 'text', 10)])
    with qcow2c.Qcow2C(raw) as image:
        fields = qcow2out._HEADER.unpack_from(image._header())
        rt = image.rt_offset
        assert image.area_offset == image.data_offset
    assert fields[:2] == (b'QFI\xfb', 3)
    assert fields[4:6] == (16, 3 * GiB)
    assert fields[9] == rt
