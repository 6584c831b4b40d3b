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
"""A dynamic or differencing VHD file, opened for random access.

Reading validates by the rules the stream reader uses (``validate``).
Writing keeps the file a valid blktap VHD after every step: a new block
is written at the end of the file, then the footer after it, and only
then does the BAT point at it, so an interruption leaves at worst an
unreferenced block. Sector bitmaps, the batmap and both footer copies are
kept up to date.
"""

from __future__ import annotations

import array
import heapq
import os
import sys

from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import validate
from xenapinfs_driver.vhd import writer

ALIGN = writer.ALIGN
_SORT_SLICE = 1 << 16


def big_endian(values: array.array) -> bytes:
    """An array of u32 as the file stores it."""
    if sys.byteorder == 'big':
        return values.tobytes()
    swapped = array.array(values.typecode, values)
    swapped.byteswap()
    return swapped.tobytes()


class VhdFile:
    """Open with ``VhdFile(path)``; use as a context manager."""

    def __init__(self, path: str, writable: bool = False,
                 limits: validate.Limits | None = None,
                 check_layout: bool = True):
        """:param check_layout: refuse a BAT whose blocks overlap the
        metadata or each other; only a read-only open may skip that (what
        ``vhd-util check -B`` does)."""
        self.path = path
        self.writable = writable
        self.check_layout = check_layout or writable
        limits = limits or validate.Limits()
        try:
            self.fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        except OSError as exc:
            raise errors.VhdError(exc.strerror, source=path) from None
        try:
            self._load(limits)
        except errors.VhdError as exc:
            os.close(self.fd)
            raise exc.located(source=path)
        except OSError as exc:
            os.close(self.fd)
            raise errors.VhdError(exc.strerror or str(exc),
                                  source=path) from None
        except BaseException:
            os.close(self.fd)
            raise

    def __enter__(self) -> VhdFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    # -- reading -------------------------------------------------------------

    def _pread(self, n: int, offset: int, what: str) -> bytes:
        data = os.pread(self.fd, n, offset)
        if len(data) != n:
            raise errors.Truncated('file ends early (truncated?)',
                                   field=what)
        return data

    def _load(self, limits) -> None:
        self.file_size = os.fstat(self.fd).st_size
        validate.check_file_size(self.file_size)
        self.footer_offset = self.file_size - fmt.FOOTER_SIZE
        raw = self._pread(fmt.FOOTER_SIZE, self.footer_offset, 'footer')
        self.footer = fmt.Footer.from_bytes(raw)
        validate.check_footer(self.footer, raw, limits, 'footer')
        self.header = None
        if self.footer.disk_type == fmt.DISK_FIXED:
            validate.check_fixed_size(self.footer, self.footer_offset)
            return
        validate.check_data_offset(self.footer, self.file_size)
        validate.check_footer_copy(
            self._pread(fmt.FOOTER_SIZE, 0, 'footer copy'), raw)
        hraw = self._pread(fmt.HEADER_SIZE, self.footer.data_offset,
                           'dynamic header')
        self.header = fmt.DynamicHeader.from_bytes(hraw)
        validate.check_header(self.header, hraw, self.footer, limits,
                              self.file_size)
        entries = self.header.max_table_entries
        self.bat = array.array('I', self._pread(
            4 * entries, self.header.table_offset, 'BAT'))
        if sys.byteorder == 'little':
            self.bat.byteswap()
        self.block_size = self.header.block_size
        self.spb = self.block_size // fmt.SECTOR
        self.bm_size = fmt.bitmap_size(self.block_size)
        self._load_batmap()
        if self.check_layout:
            self._check_layout()

    def _load_batmap(self) -> None:
        """Find blktap's batmap, right after the BAT, if there is one."""
        self.batmap_offset = None
        if not fmt.footer_is_tap(self.footer):
            return
        at = self.table_end
        if at + fmt.SECTOR > self.footer_offset:
            return
        raw = os.pread(self.fd, fmt.SECTOR, at)
        cookie, map_offset, map_sectors, _, csum = \
            fmt.BATMAP.unpack_from(raw)
        if cookie != fmt.BATMAP_COOKIE:
            return
        size = map_sectors * fmt.SECTOR
        if not validate.batmap_fits(at, map_offset, size,
                                    self.header.max_table_entries,
                                    self.footer_offset):
            return
        self.batmap_offset = at
        self.batmap_map_offset = map_offset
        self.batmap_checksum = csum
        self.batmap = bytearray(os.pread(self.fd, size, map_offset))

    def _check_layout(self) -> None:
        """No block may overlap the metadata, another block or the end.

        Writes go through the BAT, so a crafted one must not steer them
        onto the header, the BAT or another block.
        """
        span = self.bm_size + self.block_size
        meta = [(0, fmt.FOOTER_SIZE, 'the footer copy'),
                (self.footer.data_offset,
                 self.footer.data_offset + fmt.HEADER_SIZE,
                 'the dynamic header'),
                (self.header.table_offset, self.table_end, 'the BAT')]
        for i, loc in enumerate(self.header.locators):
            if loc.code and loc.data_length:
                # parent_path reads and set_parent writes there, and an
                # offset past the end (up to 2**64) made os.pread raise
                # OverflowError or EINVAL.
                validate.check_locator(i, loc, self.footer_offset)
                meta.append((loc.data_offset, validate.locator_end(loc),
                             'parent locator %d' % i))
        # One 64-bit key per allocated block (sector << 32 | index), sorted
        # in slices and merged: 8 bytes a block, where a list of
        # (offset, index) tuples cost ~190 (800 MiB for 4 Mi entries).
        keys = array.array('Q', ((e << 32) | i for i, e in enumerate(self.bat)
                                 if e != fmt.BAT_UNUSED))
        runs = [array.array('Q', sorted(keys[i:i + _SORT_SLICE]))
                for i in range(0, len(keys), _SORT_SLICE)]
        del keys
        regions = list(meta)
        if self.batmap_offset is not None:
            regions.append((self.batmap_offset, self.batmap_map_offset
                            + len(self.batmap), None))
        # The first block at or past start - span + 1 is the only one
        # that may overlap a region: found in the same pass.
        first = [None] * len(regions)
        prev = None
        for key in heapq.merge(*runs):
            off, idx = (key >> 32) * fmt.SECTOR, key & 0xFFFFFFFF
            validate.check_block_fits(idx, off, span, self.footer_offset)
            if prev is not None and off < prev[0] + span:
                raise errors.InvalidTable(
                    'offset %d overlaps block %d' % (off, prev[1]),
                    field='BAT entry %d' % idx)
            prev = (off, idx)
            for r, (start, _, _) in enumerate(regions):
                if first[r] is None and off >= start - span + 1:
                    first[r] = prev
        for (start, end, what), hit in zip(regions, first):
            if hit is not None and hit[0] < end:
                if what is None:
                    self.batmap_offset = None       # not to be trusted
                else:
                    raise errors.InvalidTable('offset %d overlaps %s'
                                              % (hit[0], what),
                                              field='BAT entry %d' % hit[1])

    @property
    def table_end(self) -> int:
        end = self.header.table_offset + 4 * self.header.max_table_entries
        return end + (-end % fmt.SECTOR)

    @property
    def size(self) -> int:
        return self.footer.current_size

    @property
    def nblocks(self) -> int:
        return -(-self.size // self.block_size)

    def allocated(self) -> list:
        """Indices of the allocated blocks within the disk's size."""
        return [i for i in range(min(self.nblocks, len(self.bat)))
                if self.bat[i] != fmt.BAT_UNUSED]

    def bitmap(self, idx: int) -> bytes | None:
        entry = self.bat[idx]
        if entry == fmt.BAT_UNUSED:
            return None
        return self._pread(self.bm_size, entry * fmt.SECTOR,
                           'bitmap of block %d' % idx)

    def mask(self, idx: int) -> int:
        """The block's present sectors, sector 0 in the top bit."""
        bm = self.bitmap(idx) if idx < len(self.bat) else None
        if bm is None:
            return 0
        mask = fmt.mask_of(bm, self.spb)
        valid = min(self.spb, (self.size - idx * self.block_size)
                    // fmt.SECTOR)
        if valid < self.spb:
            full = (1 << self.spb) - 1
            mask &= full ^ ((1 << (self.spb - valid)) - 1)
        return mask

    def read_block(self, idx: int) -> bytes:
        """The block's data area as stored (unset sectors undefined)."""
        entry = self.bat[idx]
        return self._pread(self.block_size,
                           entry * fmt.SECTOR + self.bm_size,
                           'block %d' % idx)

    # -- writing -------------------------------------------------------------

    def _need_writable(self) -> None:
        if not self.writable:
            raise errors.TargetError('opened read-only', source=self.path)

    def write_footers(self) -> None:
        """Both copies of the footer, as self.footer now says."""
        raw = self.footer.to_bytes()
        os.pwrite(self.fd, raw, self.footer_offset)
        if self.header is not None:     # a fixed disk has data at 0
            os.pwrite(self.fd, raw, 0)

    def _allocate(self, idx: int) -> int:
        """Add an empty block at the end of the file; return its offset."""
        start = self.footer_offset
        data_at = start + self.bm_size
        data_at += -data_at % ALIGN
        bm_at = data_at - self.bm_size
        new_footer = data_at + self.block_size
        # The footer past the new block first (the file grows with zeros
        # in between), then the old footer's place and the bitmap cleared,
        # then the BAT entry: the file has a valid end at every step.
        os.pwrite(self.fd, self.footer.to_bytes(), new_footer)
        os.pwrite(self.fd, bytes(bm_at + self.bm_size - start), start)
        self.footer_offset = new_footer
        self.file_size = new_footer + fmt.FOOTER_SIZE
        self.bat[idx] = bm_at // fmt.SECTOR
        os.pwrite(self.fd, self.bat[idx].to_bytes(4, 'big'),
                  self.header.table_offset + 4 * idx)
        return bm_at

    def write(self, offset: int, data, present: int | None = None) -> None:
        """Write data at a disk offset (sector-aligned), marking it present.

        :param present: for a single block, the mask of sectors of data to
            write (sector 0 of the block in the top bit); None for all.
        """
        self._need_writable()
        if offset % fmt.SECTOR or len(data) % fmt.SECTOR or offset < 0:
            raise ValueError('writes must be whole sectors in the disk')
        if offset + len(data) > self.size:
            raise errors.TargetError(
                'write of %d bytes at %d goes past the disk size %d'
                % (len(data), offset, self.size), source=self.path,
                field='current size')
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            idx, within = divmod(offset + pos, self.block_size)
            n = min(len(view) - pos, self.block_size - within)
            first = within // fmt.SECTOR
            count = n // fmt.SECTOR
            mask = (((1 << count) - 1) << (self.spb - first - count))
            if present is not None:
                mask &= present
            self._write_in_block(idx, first, view[pos:pos + n], mask)
            pos += n

    def _write_in_block(self, idx, first, view, mask) -> None:
        if not mask:
            return
        entry = self.bat[idx]
        bm_at = self._allocate(idx) if entry == fmt.BAT_UNUSED \
            else entry * fmt.SECTOR
        data_at = bm_at + self.bm_size
        bits = format(mask, '0%db' % self.spb)
        s = first
        count = len(view) // fmt.SECTOR
        while s < first + count:
            if bits[s] == '1':
                e = bits.find('0', s)
                e = first + count if e < 0 or e > first + count else e
                rel = (s - first) * fmt.SECTOR
                os.pwrite(self.fd, view[rel:(e - first) * fmt.SECTOR],
                          data_at + s * fmt.SECTOR)
                s = e
            else:
                s += 1
        bm = bytearray(os.pread(self.fd, self.bm_size, bm_at))
        old = fmt.mask_of(bm, self.spb)
        new = old | mask
        if new != old:
            fmt.set_mask(bm, self.spb, new)
            os.pwrite(self.fd, bytes(bm), bm_at)
            self.set_batmap(idx, new == (1 << self.spb) - 1)

    def set_batmap(self, idx: int, full: bool) -> None:
        """Mark block idx full or not in the batmap, if there is one."""
        if self.batmap_offset is None:
            return
        byte, bit = divmod(idx, 8)
        old = self.batmap[byte]
        new = old | (0x80 >> bit) if full else old & ~(0x80 >> bit)
        if new == old:
            return
        self.batmap[byte] = new
        os.pwrite(self.fd, bytes([new]), self.batmap_map_offset + byte)
        self.write_batmap_header()

    def write_batmap_header(self) -> None:
        """The batmap header, with the checksum of the map as it is."""
        raw = bytearray(fmt.SECTOR)
        self.batmap_checksum = fmt.checksum(bytes(self.batmap) + b'\0\0\0\0',
                                            len(self.batmap))
        fmt.BATMAP.pack_into(
            raw, 0, fmt.BATMAP_COOKIE, self.batmap_map_offset,
            len(self.batmap) // fmt.SECTOR, fmt.BATMAP_VERSION,
            self.batmap_checksum)
        os.pwrite(self.fd, bytes(raw), self.batmap_offset)

    def set_hidden(self, hidden: bool) -> None:
        self._need_writable()
        self.footer.hidden = 1 if hidden else 0
        self.write_footers()

    def write_header(self) -> None:
        self._need_writable()
        os.pwrite(self.fd, self.header.to_bytes(), self.footer.data_offset)

    def flush(self) -> None:
        os.fsync(self.fd)
