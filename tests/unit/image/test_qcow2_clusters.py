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
"""Compressed qcow2 clusters read in place, judged by qemu-img.

Every image is written by ``qemu-img convert -c``; what the disk reads is
compared with ``qemu-img convert``'s raw output of the same file.
"""

import json
import os
import random
import struct
import subprocess

import pytest

from xenapinfs_driver.image import qcow2_clusters
from xenapinfs_driver.image import qemu_map

MiB = 1 << 20
BLOCK = qemu_map.BLOCK


def _qemu(*args):
    subprocess.run(['qemu-img'] + [str(a) for a in args], check=True,
                   timeout=120, capture_output=True)


def _disk(size, seed):
    """Compressible text, random data (stored plainly: it does not
    shrink), zeros, and a tail that ends inside a cluster."""
    rnd = random.Random(seed)
    disk = bytearray(size)
    disk[0:MiB] = ((b'compressible %d ' % seed) * MiB)[:MiB]
    disk[MiB + 4096:MiB + 69632] = rnd.randbytes(65536)
    disk[3 * MiB:3 * MiB + 700] = b'x' * 700
    disk[-3000:] = b'tail' * 750
    assert len(disk) == size
    return bytes(disk)


def _compressed(tmp, disk, *options):
    raw, image = tmp / 'disk.raw', tmp / 'disk.qcow2'
    raw.write_bytes(disk)
    _qemu('convert', '-c', '-f', 'raw', '-O', 'qcow2', *options, raw, image)
    return image


def _open(image, size):
    out = subprocess.run(['qemu-img', 'map', '--output=json', '-f', 'qcow2',
                          str(image)], check=True, capture_output=True,
                         timeout=120).stdout
    extents = qemu_map.parse(out, size, os.path.getsize(image),
                             compressed=True)
    return qemu_map.MappedDisk(str(image), size, extents, name='img',
                               inflater=qcow2_clusters.Clusters)


def _qemu_raw(tmp, image):
    out = tmp / 'qemu.raw'
    _qemu('convert', '-f', 'qcow2', '-O', 'raw', image, out)
    return out.read_bytes()


@pytest.mark.parametrize('options', [
    [], ['-o', 'cluster_size=512'], ['-o', 'cluster_size=4096'],
    ['-o', 'cluster_size=2M'], ['-o', 'compat=0.10']],
    ids=['64k', '512', '4k', '2M', 'v2'])
def test_reads_what_qemu_reads(tmp_path, options):
    size = 5 * MiB + 3 * 512
    disk = _disk(size, len(options) and len(options[1]))
    image = _compressed(tmp_path, disk, *options)
    theirs = _qemu_raw(tmp_path, image)
    assert theirs == disk
    mapped = _open(image, size)
    try:
        assert any(o is None for _, _, o in mapped.extents), mapped.extents
        assert mapped.pread(size, 0) == theirs
        # Pieces that start and end inside clusters.
        for offset, n in ((100, 5000), (MiB - 7, 9000), (size - 4000, 4000)):
            assert mapped.pread(n, offset) == theirs[offset:offset + n]
        blocks = mapped.nonzero_blocks(lambda n: None)
        assert blocks == [i for i in range(mapped.nblocks)
                          if theirs[i * BLOCK:(i + 1) * BLOCK].strip(b'\0')]
    finally:
        mapped.close()


def _first_compressed(image):
    """(file offset, length) of the first compressed cluster, from the
    L2 table, for damaging it."""
    with open(image, 'rb') as f:
        data = f.read()
    bits, = struct.unpack_from('>I', data, 20)
    l1_size, l1_offset = struct.unpack_from('>IQ', data, 36)
    shift = 62 - (bits - 8)
    for i in range(l1_size):
        l2, = struct.unpack_from('>Q', data, l1_offset + 8 * i)
        l2 &= qcow2_clusters.OFFSET_MASK
        for j in range((1 << bits) // 8):
            entry, = struct.unpack_from('>Q', data, l2 + 8 * j) if l2 \
                else (0,)
            if entry & qcow2_clusters.COMPRESSED:
                offset = entry & ((1 << shift) - 1)
                sectors = ((entry >> shift) & ((1 << (bits - 8)) - 1)) + 1
                return offset, sectors * 512 - (offset & 511)
    raise AssertionError('no compressed cluster')


def test_damaged_cluster_is_found_when_opened(tmp_path):
    size = 4 * MiB
    image = _compressed(tmp_path, _disk(size, 3))
    offset, length = _first_compressed(image)
    with open(image, 'r+b') as f:
        f.seek(offset)
        f.write(b'\xff' * min(64, length))
    with pytest.raises(qemu_map.Damaged,
                       match=r'compressed guest cluster 0 \(file offset '
                             r'%d\)' % offset):
        _open(image, size)


def test_file_cut_inside_a_compressed_cluster(tmp_path):
    size = 4 * MiB
    image = _compressed(tmp_path, _disk(size, 4))
    offset, _length = _first_compressed(image)
    os.truncate(image, offset + 10)
    with pytest.raises(qemu_map.Damaged):
        _open(image, size)


@pytest.mark.parametrize('options, words', [
    (['-o', 'compression_type=zstd'], 'not zlib'),
    (['-o', 'extended_l2=on'], 'incompatible features')])
def test_other_kinds_are_left_to_qemu_img(tmp_path, options, words):
    size = 4 * MiB
    image = _compressed(tmp_path, _disk(size, 5), *options)
    assert _qemu_raw(tmp_path, image) == _disk(size, 5)
    with pytest.raises(qemu_map.NotMappable, match=words):
        _open(image, size)


@pytest.mark.parametrize('bit', [1, 5])
def test_corrupt_or_unknown_feature_bits_are_not_read(tmp_path, bit):
    size = 4 * MiB
    image = _compressed(tmp_path, _disk(size, 8))
    with open(image, 'r+b') as f:
        f.seek(72)
        features, = struct.unpack('>Q', f.read(8))
        f.seek(72)
        f.write(struct.pack('>Q', features | 1 << bit))
    fd = os.open(image, os.O_RDONLY)
    try:
        with pytest.raises(qemu_map.NotMappable,
                           match='incompatible features'):
            qcow2_clusters.Clusters(fd, os.path.getsize(image), 'img')
    finally:
        os.close(fd)


def test_without_an_inflater_compressed_data_is_not_mappable(tmp_path):
    size = 4 * MiB
    image = _compressed(tmp_path, _disk(size, 6))
    out = subprocess.run(['qemu-img', 'map', '--output=json', str(image)],
                         check=True, capture_output=True).stdout
    assert any('offset' not in e for e in json.loads(out) if e['data'])
    with pytest.raises(qemu_map.NotMappable, match='compressed'):
        qemu_map.parse(out, size, os.path.getsize(image))
    extents = qemu_map.parse(out, size, os.path.getsize(image),
                             compressed=True)
    with pytest.raises(qemu_map.NotMappable, match='nothing to inflate'):
        qemu_map.MappedDisk(str(image), size, extents)


def test_l1_table_is_bounded(tmp_path):
    size = 4 * MiB
    image = _compressed(tmp_path, _disk(size, 7))
    with open(image, 'r+b') as f:
        f.seek(36)
        f.write(struct.pack('>I', qcow2_clusters.MAX_L1_BYTES // 8 + 1))
    fd = os.open(image, os.O_RDONLY)
    try:
        with pytest.raises(qemu_map.NotMappable, match='L1 table'):
            qcow2_clusters.Clusters(fd, os.path.getsize(image), 'img')
    finally:
        os.close(fd)
