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
"""Shared checks of the tests of the VHD writers (image, ops, writer).

Every file a writer makes is read back by three readers that share no
code with it: the one-pass reader (``tgz.convert`` / ``tgz.inspect``),
qemu-img (dynamic disks only: it ignores sector bitmaps) and libvhdi
(chains, within its known bugs). The expected disk is always a plain
bytearray the test keeps up to date itself.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import tempfile

import pytest

from tests import vhd_factory as vf
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import tgz

KiB = 1 << 10
MiB = 1 << 20
SECTOR = fmt.SECTOR
BS = 2 * MiB
CHUNK = 16 * MiB
ZEROS = bytes(CHUNK)
QEMU_IMG = shutil.which('qemu-img') or (
    '/usr/bin/qemu-img' if os.path.exists('/usr/bin/qemu-img') else None)


def sha(path) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def listing(directory) -> list:
    return sorted(os.listdir(directory))


def _data_regions(fd, size):
    """(start, end) of the parts of a file that are not holes."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:             # ENXIO: only a hole is left
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


class Sparse:
    """The model of a big disk: zeros, and the runs written over them."""

    def __init__(self, size: int, base=b''):
        self.size = size
        self.runs = [(0, bytes(base))] if base else []

    def __len__(self) -> int:
        return self.size

    def __setitem__(self, key: slice, data) -> None:
        assert 0 <= key.start and key.stop - key.start == len(data) and \
            key.stop <= self.size, key
        self.runs.append((key.start, bytes(data)))

    def extend(self, data) -> None:
        assert not any(data)
        self.size += len(data)

    def segment(self, at: int, n: int) -> bytes:
        out = bytearray(n)
        for off, data in self.runs:
            lo, hi = max(at, off), min(at + n, off + len(data))
            if lo < hi:
                out[lo - at:hi - at] = data[lo - off:hi - off]
        return bytes(out)


def _segment(expected, at: int, n: int) -> bytes:
    if isinstance(expected, Sparse):
        return expected.segment(at, n)
    got = bytes(memoryview(expected)[at:at + n])
    return got + bytes(n - len(got))


def expect_file(path, expected, size: int | None = None) -> None:
    """path holds expected (bytes or Sparse), then zeros up to size.

    Holes read as zeros, so only the file's data regions are read; the
    expected bytes over the holes must then be zeros.
    """
    size = len(expected) if size is None else size
    assert os.path.getsize(path) == size, (os.path.getsize(path), size)
    with open(path, 'rb') as f:
        pos = 0
        for start, end in list(_data_regions(f.fileno(), size)) + [
                (size, size)]:
            for at in range(pos, min(start, len(expected)), CHUNK):
                gap = _segment(expected, at, min(CHUNK, start - at))
                if gap != ZEROS[:len(gap)]:
                    first = at + len(gap) - len(gap.lstrip(b'\0'))
                    raise AssertionError('%s has a hole at byte %d, where '
                                         'data is expected' % (path, first))
            for at in range(start, end, CHUNK):
                got = os.pread(f.fileno(), min(CHUNK, end - at), at)
                want = _segment(expected, at, len(got))
                if got != want:
                    first = next(i for i in range(len(got))
                                 if got[i] != want[i])
                    raise AssertionError('%s differs at byte %d'
                                         % (path, at + first))
            pos = end


# -- our reader ---------------------------------------------------------------

def converted(path, expected, size: int | None = None):
    """tgz.convert of one VHD file must give expected (zeros after)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'disk.raw')
        result = tgz.convert(str(path), out)
        expect_file(out, expected, size)
    return result


def chain_tgz(paths, dest) -> None:
    """A XenServer image of the files, newest first, as 0.vhd .. n.vhd."""
    files = []
    for p in paths:
        with open(p, 'rb') as f:
            files.append(f.read())
    vf.xenserver_tgz(str(dest), files)


def chain_converted(paths, expected, size: int | None = None):
    """The chain (newest first) read by tgz.convert gives expected."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, 'img.tgz')
        chain_tgz(paths, src)
        out = os.path.join(tmp, 'disk.raw')
        result = tgz.convert(src, out)
        expect_file(out, expected, size)
    return result


def chain_inspected(paths):
    """tgz.inspect of the chain (newest first); no warnings allowed."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, 'img.tgz')
        chain_tgz(paths, src)
        result = tgz.inspect(src)
    assert result.warnings == []
    for layer in result.layers:
        assert layer.batmap == 'valid', layer.name
    return result


def assert_tap(path, size: int, disk_type: int = fmt.DISK_DYNAMIC,
               leaf: bool = True) -> None:
    """The fields of a blktap VHD, as XenServer writes them."""
    with image.VhdFile(str(path)) as vhd:
        f = vhd.footer
        assert f.cookie == fmt.FOOTER_COOKIE
        assert f.creator_app == b'tap\0'
        assert f.creator_version == 0x00010003
        assert f.features == fmt.FEATURE_RESERVED
        assert f.format_version == fmt.FORMAT_VERSION
        assert f.current_size == size
        assert f.chs == fmt.chs_geometry(size)
        assert f.disk_type == disk_type
        assert f.data_offset == fmt.FOOTER_SIZE
        assert f.hidden == (0 if leaf else 1)
        assert vhd.header.header_version == 0x00010000
        assert vhd.header.max_table_entries * vhd.block_size >= size
        assert vhd.batmap_offset == vhd.table_end
        for idx, entry in enumerate(vhd.bat):
            if entry != fmt.BAT_UNUSED:
                assert (entry * SECTOR + vhd.bm_size) % 4096 == 0, idx
        batmap = bytes(vhd.batmap)
        whole = size // vhd.block_size
        for idx in range(whole):
            full = vhd.mask(idx) == (1 << vhd.spb) - 1
            bit = bool(batmap[idx // 8] & (0x80 >> idx % 8))
            assert bit == full, 'batmap bit of block %d' % idx
    if disk_type == fmt.DISK_DIFFERENCING:
        return          # Alone it is no image: see chain_inspected.
    result = tgz.inspect(str(path))
    assert result.layers[0].batmap == 'valid'
    if leaf:
        assert result.warnings == []


# -- other readers ------------------------------------------------------------

def qemu_converted(path, expected, size: int | None = None) -> None:
    """qemu-img reads the dynamic VHD as expected (it ignores bitmaps)."""
    if QEMU_IMG is None:
        pytest.skip('qemu-img is not installed')
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'qemu.raw')
        subprocess.run([QEMU_IMG, 'convert', '-f', 'vpc', '-O', 'raw',
                        str(path), out], check=True, capture_output=True)
        expect_file(out, expected, size)


def libvhdi_read(paths, size: int) -> bytes:
    """libvhdi's view of the chain (newest first), size bytes."""
    pyvhdi = pytest.importorskip('pyvhdi')
    files = []
    try:
        for p in paths:
            f = pyvhdi.file()
            f.open(str(p))
            files.append(f)
        for child, parent in zip(files, files[1:]):
            child.set_parent(parent)
        assert files[0].get_media_size() == size
        return files[0].read_buffer_at_offset(size, 0)
    finally:
        for f in files:
            f.close()


# -- writes and their model ---------------------------------------------------

def random_runs(rnd: random.Random, size: int, count: int, *,
                align: int = SECTOR, longest: int = 96 * KiB):
    """(offset, data) runs of align-multiples, some across blocks."""
    runs = []
    for i in range(count):
        n = rnd.randrange(1, longest // align + 1) * align
        if i % 3 == 0 and size > BS + n:
            # Straddle a block boundary.
            edge = rnd.randrange(1, size // BS + 1) * BS
            off = max(0, min(size - n, edge - n // 2))
            off -= off % align
        else:
            off = rnd.randrange(0, (size - n) // align + 1) * align
        runs.append((off, rnd.randbytes(n)))
    return runs


def write_runs(path, runs, model=None) -> None:
    with image.VhdFile(str(path), writable=True) as vhd:
        for off, data in runs:
            vhd.write(off, data)
            if model is not None:
                model[off:off + len(data)] = data
