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
"""A raw disk to a XenServer image: the upload direction of ``convert``.

The image is a gzip-compressed tar holding one ``0.vhd``, a dynamic VHD
laid out as blktap writes it (creator ``tap`` 1.3, spec CHS geometry,
batmap, block data on 4 KiB boundaries, hidden flag 0), which XenServer
can import and resize; qemu-img's vpc output has neither the creator nor
the exact size it needs (reference section 3).

Two passes over the input, neither holding more than a few blocks of data:
the first finds the 2 MiB blocks that hold a non-zero byte, skipping the
holes of a sparse file; with those the layout, and so the size of the tar
member, is known before anything is written. The second streams the tar
header, the VHD and the end of the archive through gzip into the output.
Only non-zero blocks are stored, each with a full sector bitmap.

The VHD's size is the input's, unless the input is not a whole number of
512-byte sectors: then it is rounded up and the last sector padded with
zeros, since a VHD counts sectors.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import tarfile
import time

from xenapinfs_driver.vhd import deflate
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import validate
from xenapinfs_driver.vhd import target as targetmod
from xenapinfs_driver.vhd import writer

BLOCK = writer.DEFAULT_BLOCK
MEMBER = '0.vhd'
DEFAULT_LEVEL = 1
# The first pass reads zeros in pieces of this size, and stops reading a
# block at its first non-zero piece: most data blocks cost one piece.
SCAN_PIECE = 256 << 10
MAX_WORKERS = deflate.MAX_WORKERS
MAX_SECTOR = 0xFFFFFFFF         # a BAT entry is a 32-bit sector number
# The largest disk convert accepts by default, XenServer's largest VDI.
MAX_SIZE = validate.MAX_SIZE

_ZERO_PIECE = bytes(SCAN_PIECE)


@dataclasses.dataclass
class Result:
    """What was packed: the disk, the blocks stored and the output."""

    source: str
    dest: str
    container: str              # 'tgz' or 'vhd'
    input_size: int
    virtual_size: int           # input_size rounded up to a sector
    blocks: int                 # 2 MiB blocks stored (non-zero)
    vhd_size: int               # bytes of the VHD file (the tar member)
    bytes_written: int          # bytes of the output file
    compressor: str | None      # 'isal', 'zlib-ng', 'zlib'; None for vhd
    level: int | None


def pack(src: str, dst: str, *, vhd_only: bool = False,
         level: int | None = None, zlib_name: str | None = None,
         max_size: int = MAX_SIZE, workers: int | None = None,
         progress=None) -> Result:
    """Write the raw disk src to dst as a XenServer image (or a bare VHD).

    :param vhd_only: write the dynamic VHD itself, not a tar.gz of it.
    :param level: gzip level, 1 (fastest, the default) to 9. isal has
        levels 1 to 3; higher levels pick zlib-ng or zlib instead unless
        isal is asked for by name, which then compresses at level 3.
    :param zlib_name: 'isal', 'zlib-ng' or 'zlib' (default: the fastest
        installed, or XENAPINFS_VHD_ZLIB).
    :param max_size: refuse larger disks (default: 2 TiB, as convert).
    :param workers: compression threads (default: one per core, at most
        MAX_WORKERS).
    :param progress: called as progress(bytes read, total or None).
    """
    level = DEFAULT_LEVEL if level is None else level
    if not 1 <= level <= 9:
        raise ValueError('gzip level %r is not 1 to 9' % (level,))
    if src == '-':
        raise errors.VhdError(
            'standard input is not supported: the layout of the VHD needs '
            'the size of the disk and a first pass over it', source='<stdin>')
    disk = Disk(src)
    try:
        if disk.virtual_size > max_size:
            raise errors.LimitExceeded(
                'is %d bytes, more than the limit of %d'
                % (disk.virtual_size, max_size), source=src)
        _refuse_same_file(src, dst)
        compressor = None
        if not vhd_only:
            compressor = deflate.pick_compressor(zlib_name, level)
        out = _Output(dst)
        try:
            result = pack_into(disk, out, compressor, workers, progress)
            out.commit()
        except BaseException:
            out.abort()
            raise
    finally:
        disk.close()
    return result


def pack_into(disk, out, compressor, workers, progress,
              offload=None) -> Result:
    """Pack the open Disk into out (write, tell, path, written); a
    compressor from deflate.pick_compressor makes it a tgz."""
    read = Counter(progress)
    stored = disk.nonzero_blocks(read)
    size = disk.virtual_size
    vhd_size = vhd_length(disk, stored)
    read.total = read.done + sum(disk.block_length(i) for i in stored)
    blocks = LazyBlocks(disk, stored, read)
    if compressor is None:
        sink = out
    else:
        _, module, level = compressor
        sink = deflate.ParallelGzip(out.write, module, level, workers,
                                    offload)
    try:
        if compressor is not None:
            sink.write(tar_header(vhd_size))
        start = sink.tell()
        writer.write_dynamic(sink, size, blocks, order=stored)
        if sink.tell() - start != vhd_size:
            raise AssertionError('the VHD came out %d bytes, not %d'
                                 % (sink.tell() - start, vhd_size))
        if compressor is not None:
            sink.write(tar_trailer(vhd_size, sink.tell()))
            sink.close()
    except BaseException:
        if sink is not out:
            sink.abort()
        raise
    return Result(
        source=disk.name, dest=out.path,
        container='vhd' if compressor is None else 'tgz',
        input_size=disk.size, virtual_size=size, blocks=len(stored),
        vhd_size=vhd_size, bytes_written=out.written,
        compressor=None if compressor is None else compressor[0],
        level=None if compressor is None else compressor[2])


def vhd_length(disk, stored: list, batmap: bool = True) -> int:
    """The size of the VHD write_dynamic will write: the tar member's."""
    # The same layout as write_dynamic's.
    lay = writer.Layout(disk.virtual_size, stored, BLOCK, None, batmap, [],
                        writer.ALIGN)
    # A BAT entry of all ones means "unallocated": the last usable sector
    # is one below it.
    if stored and lay.offset_of(len(stored) - 1) // fmt.SECTOR \
            >= MAX_SECTOR:
        raise errors.LimitExceeded(
            '%d non-zero blocks do not fit in a VHD: the last would start '
            'past 2 TiB, beyond what a BAT entry can address'
            % len(stored), source=disk.name)
    return lay.footer_offset + fmt.FOOTER_SIZE


# -- input --------------------------------------------------------------------

class Disk:
    """The raw disk, opened read-only: a regular file or a block device."""

    def __init__(self, path: str):
        self.name = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise errors.VhdError(exc.strerror, source=path) from None
        try:
            st = os.fstat(self.fd)
            if stat.S_ISDIR(st.st_mode):
                raise errors.VhdError('is a directory', source=path)
            if stat.S_ISREG(st.st_mode):
                self.size = st.st_size
            elif stat.S_ISBLK(st.st_mode):
                self.size = os.lseek(self.fd, 0, os.SEEK_END)
            else:
                # A pipe or a terminal has no size to lay the VHD out by.
                raise errors.VhdError('not a regular file or a block '
                                      'device', source=path)
            if self.size == 0:
                raise errors.VhdError('is empty: a disk needs at least one '
                                      'sector', source=path)
        except BaseException:
            self.close()
            raise
        self.virtual_size = -(-self.size // fmt.SECTOR) * fmt.SECTOR
        self.nblocks = -(-self.size // BLOCK)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def block_length(self, idx: int) -> int:
        """Bytes of the input in block idx (less than BLOCK at the end)."""
        return min(BLOCK, self.size - idx * BLOCK)

    def pread(self, n: int, offset: int) -> bytes:
        try:
            data = os.pread(self.fd, n, offset)
        except OSError as exc:
            raise errors.VhdError('cannot read at offset %d: %s'
                                  % (offset, exc.strerror),
                                  source=self.name) from None
        if len(data) < n:
            # Only a file that shrank after the size was taken.
            raise errors.Truncated(
                'ends at offset %d, before its size of %d bytes: changed '
                'while being read' % (offset + len(data), self.size),
                source=self.name)
        return data

    def extents(self):
        """(start, end) of the ranges that may hold data, in order.

        Holes of a sparse file are skipped with SEEK_DATA / SEEK_HOLE;
        where those are not supported the whole disk is one range.
        """
        pos = 0
        while pos < self.size:
            try:
                start = os.lseek(self.fd, pos, os.SEEK_DATA)
                end = os.lseek(self.fd, start, os.SEEK_HOLE)
            except OSError as exc:
                if exc.errno == errno.ENXIO:       # no data after pos
                    return
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise errors.VhdError(
                        'cannot read: %s' % exc.strerror,
                        source=self.name) from None
                start, end = pos, self.size
            end = min(end, self.size)
            if start >= end:
                return
            yield start, end
            pos = end

    def nonzero_blocks(self, read) -> list:
        """The indices of the blocks holding a non-zero byte, ascending."""
        return list(self.nonzero(read, BLOCK))

    def nonzero(self, read, size: int):
        """Yield, ascending, the indices of the pieces of ``size`` bytes
        that hold a non-zero byte (the qcow2 writer asks for clusters)."""
        last = -1
        for start, end in self.extents():
            for idx in range(start // size, (end - 1) // size + 1):
                if idx == last:
                    continue    # found in an earlier range of this piece
                lo = max(start, idx * size)
                hi = min(end, (idx + 1) * size)
                if self._has_data(lo, hi, read):
                    last = idx
                    yield idx

    def _has_data(self, lo: int, hi: int, read) -> bool:
        while lo < hi:
            n = min(SCAN_PIECE, hi - lo)
            piece = self.pread(n, lo)
            read(n)
            if piece != (_ZERO_PIECE if n == SCAN_PIECE else bytes(n)):
                return True
            lo += n
        return False


class Counter:
    """Counts the bytes read and reports them to a progress callback."""

    def __init__(self, progress):
        self.progress = progress
        self.done = 0
        self.total = None

    def __call__(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)


class LazyBlocks:
    """The stored blocks as write_dynamic wants them, read on demand.

    write_dynamic asks for every block's bitmap while it builds the batmap,
    long before it writes the data, so a block is read only when its data
    is taken (the second item); the bitmap is None: every sector present.
    """

    def __init__(self, disk: Disk, order: list, read):
        self.disk = disk
        self.order = order
        self.read = read

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, idx: int):
        return LazyBlock(self, idx)

    def data(self, idx: int) -> bytes:
        n = self.disk.block_length(idx)
        data = self.disk.pread(n, idx * BLOCK)
        self.read(n)
        if n < BLOCK:
            # The last block runs past the disk; what is past it is zero.
            data += bytes(BLOCK - n)
        return data


class LazyBlock:
    __slots__ = ('blocks', 'idx')

    def __init__(self, blocks: LazyBlocks, idx: int):
        self.blocks = blocks
        self.idx = idx

    def __len__(self) -> int:
        return 2

    def __getitem__(self, item: int):
        if item == 0:
            return None
        if item == 1:
            return self.blocks.data(self.idx)
        raise IndexError(item)

    def __iter__(self):
        yield None
        yield self.blocks.data(self.idx)


def _refuse_same_file(src: str, dst: str) -> None:
    """The input is never modified: not even by naming it as the output."""
    try:
        same = os.path.samefile(src, dst)
    except OSError:
        return
    if same:
        raise errors.TargetError('is the input file; the input is never '
                                 'overwritten', source=dst)


# -- the tar member -----------------------------------------------------------

def tar_header(vhd_size: int) -> bytes:
    """The header of 0.vhd: a regular file, as tar in dom0 writes one."""
    info = tarfile.TarInfo(MEMBER)
    info.size = vhd_size
    info.mode = 0o644
    info.mtime = int(time.time())
    info.type = tarfile.REGTYPE
    # GNU format: sizes of 8 GiB and more in base-256, which our reader,
    # tarfile and GNU tar all read.
    return info.tobuf(tarfile.GNU_FORMAT, 'utf-8', 'surrogateescape')


def tar_trailer(vhd_size: int, archive_pos: int) -> bytes:
    """Pad the member, end the archive, fill the record, as tar(1) does."""
    pad = -vhd_size % tarfile.BLOCKSIZE
    end = archive_pos + pad + 2 * tarfile.BLOCKSIZE
    return bytes(pad + 2 * tarfile.BLOCKSIZE + (-end % tarfile.RECORDSIZE))


# -- output -------------------------------------------------------------------

class _Output:
    """Sequential writes into a new file (target.FileTarget): written under
    a temporary name in DST's directory and renamed over DST at the end;
    on failure it is removed and DST is left as it was."""

    def __init__(self, path: str):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise errors.TargetError(exc.strerror, source=path) from None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise errors.TargetError('is a directory', source=path)
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise errors.TargetError('not a regular file', source=path)
        self.path = path
        self.target = targetmod.FileTarget(path)
        self.written = 0

    def tell(self) -> int:
        return self.written

    def write(self, data) -> int:
        self.target.pwrite(memoryview(data), self.written)
        self.written += len(data)
        return len(data)

    def commit(self) -> None:
        self.target.commit(self.written)

    def abort(self) -> None:
        self.target.abort()
