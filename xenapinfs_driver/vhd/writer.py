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
"""Write whole VHD files in one forward pass, laid out as blktap does.

The layout is XenServer's: footer copy, dynamic header, BAT, batmap,
parent locators in consecutive sectors, then blocks whose data starts on a
4 KiB boundary, then the footer. Knobs that real files vary in (BAT size,
physical block order, creator, batmap) are parameters, so the same code
builds ordinary images and the unusual ones a reader must cope with.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
import uuid as uuidlib

from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt

DEFAULT_BLOCK = 2 << 20
ALIGN = 4096


@dataclasses.dataclass
class Parent:
    """What a differencing disk records about its parent."""

    unique_id: bytes
    name: str                      # basename, as blktap stores it
    timestamp: int = 0             # parent's mtime, seconds since 2000
    locators: tuple = ()           # (platform code, path) pairs


def xenserver_locators(name: str) -> tuple:
    """The three relative locators blktap writes for a parent file."""
    return ((fmt.PLAT_MACX, 'file://./' + name),
            (fmt.PLAT_W2KU, '.\\' + name),
            (fmt.PLAT_W2RU, '.\\' + name))


def encode_locator(code: int, path: str) -> bytes:
    if code == fmt.PLAT_MACX:
        return path.encode('utf-8')
    return path.encode('utf-16-le')


def _pad(n: int, to: int = fmt.SECTOR) -> int:
    return n + (-n % to)


def make_footer(size: int, disk_type: int, *, unique_id: bytes | None = None,
                data_offset: int = fmt.FOOTER_SIZE, hidden: bool = False,
                creator: bytes = fmt.CREATOR_TAP,
                creator_version: int = fmt.TAP_VERSION,
                original_size: int | None = None,
                timestamp: int | None = None) -> fmt.Footer:
    cyl, heads, spt = fmt.chs_geometry(size)
    if timestamp is None:
        timestamp = max(0, int(time.time()) - fmt.VHD_EPOCH)
    return fmt.Footer(
        cookie=fmt.FOOTER_COOKIE, features=fmt.FEATURE_RESERVED,
        format_version=fmt.FORMAT_VERSION,
        data_offset=(fmt.NO_DATA_OFFSET if disk_type == fmt.DISK_FIXED
                     else data_offset),
        timestamp=timestamp, creator_app=creator,
        creator_version=creator_version, creator_os=b'\0\0\0\0',
        original_size=size if original_size is None else original_size,
        current_size=size, geometry=(cyl << 16) | (heads << 8) | spt,
        disk_type=disk_type, checksum=0,
        unique_id=unique_id or uuidlib.uuid4().bytes, saved_state=0,
        hidden=1 if hidden else 0)


class Layout:
    """Where everything of a dynamic VHD goes, computed before writing."""

    def __init__(self, size, order, block_size, max_table_entries,
                 batmap, locators, align):
        span = fmt.bitmap_size(block_size) + block_size
        self.block_size = block_size
        self.entries = max_table_entries or -(-size // block_size)
        self.bitmap_size = fmt.bitmap_size(block_size)
        self.table_offset = fmt.FOOTER_SIZE + fmt.HEADER_SIZE
        pos = self.table_offset + _pad(4 * self.entries)
        self.batmap_offset = None
        if batmap:
            self.batmap_offset = pos
            self.batmap_size = fmt.batmap_size(self.entries)
            pos += fmt.SECTOR + self.batmap_size
        self.locator_offsets = []
        for data in locators:
            self.locator_offsets.append(pos)
            pos += _pad(len(data))
        # Block data starts on an align boundary, so consecutive blocks
        # are a constant stride apart: no per-block table is kept, and a
        # layout of a million blocks costs nothing.
        self.count = len(order)
        self.first_data = _pad(pos + self.bitmap_size, align)
        self.stride = _pad(block_size + self.bitmap_size, align)
        self.footer_offset = (self.offset_of(self.count - 1) + span
                              if self.count else pos)

    def offset_of(self, k: int) -> int:
        """Where the k-th block in physical order (its bitmap) starts."""
        return self.first_data + k * self.stride - self.bitmap_size


def write_dynamic(fobj, size: int, blocks, *, order=None,
                  parent: Parent | None = None,
                  block_size: int = DEFAULT_BLOCK,
                  max_table_entries: int | None = None,
                  batmap: bool = True, hidden: bool = False,
                  unique_id: bytes | None = None, align: int = ALIGN,
                  **footer_args) -> fmt.Footer:
    """Write a dynamic (or, with parent, differencing) VHD to fobj.

    :param blocks: mapping of block index to (bitmap, data); a bitmap of
        None means every sector is present; data is block_size bytes.
    :param order: the physical order of the blocks (default: by index).
    """
    order = sorted(blocks) if order is None else list(order)
    disk_type = fmt.DISK_DIFFERENCING if parent else fmt.DISK_DYNAMIC
    locs = [(code, encode_locator(code, path))
            for code, path in (parent.locators if parent else ())]
    lay = Layout(size, order, block_size, max_table_entries, batmap,
                 [d for _, d in locs], align)
    footer = make_footer(size, disk_type, unique_id=unique_id,
                         hidden=hidden, **footer_args)
    raw_footer = footer.to_bytes()
    header = fmt.DynamicHeader(
        cookie=fmt.HEADER_COOKIE, data_offset=fmt.NO_DATA_OFFSET,
        table_offset=lay.table_offset, header_version=0x00010000,
        max_table_entries=lay.entries, block_size=block_size, checksum=0,
        parent_unique_id=parent.unique_id if parent else bytes(16),
        parent_timestamp=parent.timestamp if parent else 0,
        parent_name_raw=(parent.name.encode('utf-16-be')
                         if parent else b'').ljust(512, b'\0')[:512])
    header.locators = [fmt.Locator(0, 0, 0, 0, 0)] * fmt.LOCATOR_COUNT
    for i, ((code, data), off) in enumerate(zip(locs, lay.locator_offsets)):
        header.locators[i] = fmt.Locator(code, _pad(len(data)), len(data),
                                         0, off)

    bat = bytearray(b'\xff' * _pad(4 * lay.entries))
    full_bits = bytearray(fmt.batmap_size(lay.entries))
    spb = block_size // fmt.SECTOR
    full_bitmap = (b'\xff' * (spb // 8) + (
        bytes([(0xFF << (8 - spb % 8)) & 0xFF]) if spb % 8 else b'')
    ).ljust(lay.bitmap_size, b'\0')
    for k, idx in enumerate(order):
        if not 0 <= idx < lay.entries:
            raise ValueError('block %d is outside the BAT of %d entries'
                             % (idx, lay.entries))
        bat[4 * idx:4 * idx + 4] = (lay.offset_of(k) // fmt.SECTOR).to_bytes(
            4, 'big')
        bitmap = blocks[idx][0]
        if bitmap is None or bitmap[:len(full_bitmap)] == full_bitmap:
            full_bits[idx // 8] |= 0x80 >> (idx % 8)

    out = _Writer(fobj)
    out.put(raw_footer)
    out.put(header.to_bytes())
    out.put(bytes(bat))
    if lay.batmap_offset is not None:
        map_offset = lay.batmap_offset + fmt.SECTOR
        bm_header = bytearray(fmt.SECTOR)
        fmt.BATMAP.pack_into(
            bm_header, 0, fmt.BATMAP_COOKIE, map_offset,
            lay.batmap_size // fmt.SECTOR, fmt.BATMAP_VERSION,
            fmt.checksum(bytes(full_bits) + b'\0\0\0\0', len(full_bits)))
        out.put(bytes(bm_header))
        out.put(bytes(full_bits))
    for (_, data), off in zip(locs, lay.locator_offsets):
        out.seek(off)
        out.put(data.ljust(_pad(len(data)), b'\0'))
    for k, idx in enumerate(order):
        bitmap, data = blocks[idx]
        if len(data) != block_size:
            raise ValueError('block %d holds %d bytes, not %d'
                             % (idx, len(data), block_size))
        out.seek(lay.offset_of(k))
        out.put((full_bitmap if bitmap is None else bytes(bitmap)).ljust(
            lay.bitmap_size, b'\0'))
        out.put(data)
    out.seek(lay.footer_offset)
    out.put(raw_footer)
    return footer


def write_fixed(fobj, data, **footer_args) -> fmt.Footer:
    """Write a fixed VHD: the data, then the footer."""
    footer = make_footer(len(data), fmt.DISK_FIXED, **footer_args)
    fobj.write(data)
    fobj.write(footer.to_bytes())
    return footer


class _Writer:
    """Forward-only output that fills gaps with zeros (pipes allowed)."""

    def __init__(self, fobj):
        self.fobj = fobj
        self.pos = 0

    def seek(self, offset: int) -> None:
        if offset < self.pos:
            raise ValueError('layout goes backwards')
        gap = offset - self.pos
        while gap:
            n = min(gap, 1 << 20)
            self.fobj.write(bytes(n))
            gap -= n
        self.pos = offset

    def put(self, data) -> None:
        self.fobj.write(data)
        self.pos += len(data)


def bitmap_of(sectors, block_size: int = DEFAULT_BLOCK) -> bytes:
    """A sector bitmap with the given sector numbers (within a block) set."""
    bm = bytearray(fmt.bitmap_size(block_size))
    for s in sectors:
        bm[s // 8] |= 0x80 >> (s % 8)
    return bytes(bm)


def file_timestamp(path: str) -> int:
    """A file's mtime as a VHD time stamp (what vhd-util records)."""
    return max(0, int(os.stat(path).st_mtime) - fmt.VHD_EPOCH)


def atomic_write(path: str, fill) -> None:
    """Write a new file through a temporary name; never replace one."""
    if os.path.lexists(path):
        raise errors.TargetError('already exists', source=path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, suffix='.part',
                                   prefix='.%s.' % os.path.basename(path))
    except OSError as exc:
        raise errors.TargetError('cannot create a file in %s: %s'
                                 % (directory, exc.strerror),
                                 source=path) from None
    try:
        with os.fdopen(fd, 'wb') as f:
            fill(f)
            # On disk before it takes its name: never a partial VHD under
            # the final name after a crash.
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.link(tmp, path)          # fails, as it should, if path appeared
    finally:
        os.unlink(tmp)
