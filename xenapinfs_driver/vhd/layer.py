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
"""Read one VHD file strictly forward, validating as it goes.

Everything needed to place a block precedes it in the file: the footer copy
at 0, the dynamic header, the BAT. The allocated blocks, the parent locators
and the batmap are then visited in file order, whatever their order on the
virtual disk, so a VHD can be read from a pipe or a tar stream. Parent
locators are decoded for display and never followed.
"""

from __future__ import annotations

import array
import bisect
import dataclasses
import heapq
import sys

from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import validate

# Where the stream reader's callers have always found it.
Limits = validate.Limits


@dataclasses.dataclass
class Layer:
    """What a VHD in a chain is, as read from its metadata."""

    name: str
    rank: int
    footer: fmt.Footer
    header: fmt.DynamicHeader | None = None
    locators: list = dataclasses.field(default_factory=list)
    batmap: str = 'absent'
    allocated_blocks: int = 0
    present_sectors: int = 0
    batmap_bits: bytes = b''
    warnings: list = dataclasses.field(default_factory=list)

    @property
    def size(self) -> int:
        return self.footer.current_size

    @property
    def disk_type(self) -> int:
        return self.footer.disk_type

    @property
    def block_size(self) -> int | None:
        return self.header.block_size if self.header else None


def _fail(cls, reason, field=None):
    raise cls(reason, field=field)


class LayerReader:
    """Reads one VHD from a Source and hands its blocks to a composer."""

    def __init__(self, src, name: str, size: int | None, rank: int,
                 composer, limits: Limits):
        self.src = src
        self.name = name
        self.member_size = size
        self.rank = rank
        self.composer = composer
        self.limits = limits
        self.start = src.offset

    @property
    def pos(self) -> int:
        return self.src.offset - self.start

    def _skip_to(self, offset: int, what: str) -> None:
        """Skip forward to offset, where `what` (a field name) starts."""
        if offset < self.pos:
            raise AssertionError('regions are visited in order')
        try:
            self.src.skip(offset - self.pos, what)
        except errors.Truncated:
            _fail(errors.Truncated, 'the file ends before offset %d '
                  '(truncated?)' % offset, what)

    def _read(self, n: int, what: str) -> bytes:
        try:
            return self.src.read_exact(n, what)
        except errors.Truncated:
            _fail(errors.Truncated, 'file ends early (truncated?)', what)

    def read(self) -> Layer:
        if self.member_size is not None:
            validate.check_file_size(self.member_size)
        head = self._read(fmt.FOOTER_SIZE, 'footer copy')
        footer = fmt.Footer.from_bytes(head)
        if footer.cookie == fmt.FOOTER_COOKIE and footer.disk_type in (
                fmt.DISK_DYNAMIC, fmt.DISK_DIFFERENCING):
            validate.check_footer(footer, head, self.limits, 'footer copy')
            layer = Layer(self.name, self.rank, footer)
            self._read_dynamic(layer)
            tail = self._trailing_footer()
            if tail != head:
                self._check_trailer(tail, 'footer')
                validate.check_footer_copy(head, tail)
            return layer
        return self._read_fixed(head)

    def _check_trailer(self, tail: bytes, what: str) -> fmt.Footer:
        footer = fmt.Footer.from_bytes(tail)
        validate.check_footer(footer, tail, self.limits, what)
        return footer

    def _trailing_footer(self) -> bytes:
        if self.member_size is not None:
            self._skip_to(self.member_size - fmt.FOOTER_SIZE, 'footer')
            return self._read(fmt.FOOTER_SIZE, 'footer')
        tail = b''
        while True:
            more = self.src.read_upto(1 << 20)
            if not more:
                break
            tail = (tail + more)[-fmt.FOOTER_SIZE:]
        if len(tail) < fmt.FOOTER_SIZE:
            _fail(errors.InvalidFooter, 'file ends early (truncated?)',
                  'footer')
        return tail

    # -- dynamic and differencing disks ------------------------------------

    def _read_dynamic(self, layer: Layer) -> None:
        footer = layer.footer
        validate.check_data_offset(footer, self.member_size)
        self._skip_to(footer.data_offset, 'gap before the dynamic header')
        raw = self._read(fmt.HEADER_SIZE, 'dynamic header')
        hdr = fmt.DynamicHeader.from_bytes(raw)
        needed = validate.check_header(hdr, raw, footer, self.limits,
                                       self.member_size)
        layer.header = hdr
        self.composer.begin_layer(layer)

        self._skip_to(hdr.table_offset, 'gap before the BAT')
        bat = array.array('I', self._read(4 * needed, 'BAT'))
        if sys.byteorder == 'little':
            bat.byteswap()
        self.src.skip(4 * (hdr.max_table_entries - needed), 'BAT')
        table_end = hdr.table_offset + 4 * hdr.max_table_entries
        regions = self._regions(layer, bat, table_end)
        self._visit(layer, regions, table_end)

    def _regions(self, layer, bat, table_end):
        """Every part of the file past the BAT that we must read, in order."""
        hdr = layer.header
        span = fmt.bitmap_size(hdr.block_size) + hdr.block_size
        limit = (self.member_size - fmt.FOOTER_SIZE
                 if self.member_size is not None else None)
        # One 64-bit key per allocated block (sector << 32 | index) keeps a
        # fully mapped BAT at 8 bytes a block instead of a tuple each.
        keys = array.array('Q')
        ordered, last = True, -1
        unused = array.array('I', [fmt.BAT_UNUSED]) * _SCAN_SLICE
        for first in range(0, len(bat), _SCAN_SLICE):
            piece = bat[first:first + _SCAN_SLICE]
            if piece == unused[:len(piece)]:
                continue        # The common case in a big sparse disk.
            for idx, entry in enumerate(piece, first):
                if entry == fmt.BAT_UNUSED:
                    continue
                validate.check_block_fits(idx, entry * fmt.SECTOR, span,
                                          limit)
                key = (entry << 32) | idx
                ordered = ordered and key > last
                last = key
                keys.append(key)
        layer.allocated_blocks = len(keys)
        if ordered:
            runs = [keys]
        else:
            # Sorted in slices and merged lazily: sorting all at once would
            # build a list of Python ints, five times the array's size.
            runs = [array.array('Q', sorted(keys[i:i + _SORT_SLICE]))
                    for i in range(0, len(keys), _SORT_SLICE)]
            del keys
        meta = []
        if layer.disk_type == fmt.DISK_DIFFERENCING:
            for i, loc in enumerate(hdr.locators):
                if loc.code == fmt.PLAT_NONE or not loc.data_length:
                    continue
                validate.check_locator(i, loc, limit)
                meta.append((loc.data_offset, _LOCATOR, i))
        meta.sort()
        regions = _Regions(heapq.merge(*runs), meta)
        if fmt.footer_is_tap(layer.footer):
            # blktap keeps its batmap right after the BAT, sector-aligned.
            candidate = table_end + (-table_end % fmt.SECTOR)
            nxt = regions.next_offset()
            if (nxt is None or nxt >= candidate + fmt.SECTOR) and (
                    limit is None or candidate + fmt.SECTOR <= limit):
                regions.add(candidate, _BATMAP_HEADER, 0)
        return regions

    def _visit(self, layer, regions, table_end):
        hdr = layer.header
        bm_size = fmt.bitmap_size(hdr.block_size)
        span = bm_size + hdr.block_size
        end_prev, what_prev = table_end, 'the BAT'
        for offset, kind, ident in regions:
            field = ('BAT entry %d' % ident if kind == _BLOCK else
                     'parent locator %d' % ident if kind == _LOCATOR
                     else 'batmap')
            if offset < end_prev:
                _fail(errors.InvalidTable, 'offset %d overlaps %s'
                      % (offset, what_prev), field)
            self._skip_to(offset, field)
            if kind == _BLOCK:
                bitmap = self._read(bm_size, 'bitmap of block %d' % ident)
                layer.present_sectors += self.composer.write_block(
                    layer, ident, bitmap, self.src)
                end_prev, what_prev = offset + span, 'block %d' % ident
            elif kind == _LOCATOR:
                loc = hdr.locators[ident]
                data = self._read(loc.data_length, 'parent locator data')
                layer.locators.append(
                    (fmt.platform_name(loc.code),
                     fmt.decode_locator(loc.code, data)))
                end_prev = offset + loc.data_length
                what_prev = 'parent locator %d' % ident
            elif kind == _BATMAP_HEADER:
                end_prev, what_prev = self._batmap_header(
                    layer, offset, regions)
            else:
                self._check_batmap(layer, self._read(ident, 'batmap'))
                end_prev, what_prev = offset + ident, 'the batmap'

    def _batmap_header(self, layer, offset, regions):
        raw = self._read(fmt.SECTOR, 'batmap header')
        cookie, map_offset, map_sectors, version, csum = \
            fmt.BATMAP.unpack_from(raw)
        if cookie != fmt.BATMAP_COOKIE:
            return offset, 'the BAT'     # No batmap: the bytes are a gap.
        map_size = map_sectors * fmt.SECTOR
        entries = layer.header.max_table_entries
        nxt = regions.next_offset()
        limit = (self.member_size - fmt.FOOTER_SIZE
                 if self.member_size is not None else None)
        if not validate.batmap_fits(offset, map_offset, map_size, entries,
                                    limit) or \
                (nxt is not None and map_offset + map_size > nxt):
            layer.batmap = 'invalid'
            layer.warnings.append('batmap header points at %d bytes at %d, '
                                  'which do not fit' % (map_size, map_offset))
            return offset + fmt.SECTOR, 'the batmap header'
        regions.add(map_offset, _BATMAP, map_size)
        self._batmap_csum = csum
        return offset + fmt.SECTOR, 'the batmap header'

    def _check_batmap(self, layer, data):
        if fmt.checksum(data + b'\0\0\0\0', len(data)) != self._batmap_csum:
            layer.batmap = 'bad checksum'
            layer.warnings.append('batmap checksum does not match; blktap '
                                  'would ignore it')
        else:
            layer.batmap = 'valid'
        # The batmap is only a hint: the sector bitmaps decide. Record the
        # blocks it claims are full so that `check` can compare.
        layer.batmap_bits = data

    # -- fixed disks ----------------------------------------------------------

    def _read_fixed(self, head: bytes) -> Layer:
        """A fixed disk is raw data with the footer at the end only."""
        composer = self.composer
        pending = head
        written = 0
        limit = self.limits.max_size
        if self.member_size is not None:
            data_len = self.member_size - fmt.FOOTER_SIZE
            if data_len > limit:
                # Refused before a byte is written, not after.
                raise errors.LimitExceeded(
                    'a fixed disk of %d bytes exceeds the limit of %d'
                    % (data_len, limit), field='file size')
            first = min(len(pending), data_len)
            composer.write_fixed(self.rank, 0, memoryview(pending)[:first])
            written = first
            tail = pending[first:]
            for view in self.src.slices(data_len - written, 'fixed disk data'):
                composer.write_fixed(self.rank, written, view)
                written += len(view)
            tail += self._read(fmt.FOOTER_SIZE - len(tail), 'footer')
        else:
            # Unknown length (a pipe): hold the last 512 bytes back.
            while True:
                more = self.src.read_upto(1 << 20)
                if not more:
                    break
                pending += more
                cut = len(pending) - fmt.FOOTER_SIZE
                if written + cut > limit:
                    raise errors.LimitExceeded(
                        'more than %d bytes of fixed disk data' % limit,
                        field='file size')
                if cut > 0:
                    composer.write_fixed(self.rank, written,
                                         memoryview(pending)[:cut])
                    written += cut
                    pending = pending[cut:]
            tail = pending
            if len(tail) < fmt.FOOTER_SIZE:
                _fail(errors.InvalidFooter, 'not a VHD: no footer',
                      'footer')
        footer = fmt.Footer.from_bytes(tail)
        if footer.cookie != fmt.FOOTER_COOKIE:
            _fail(errors.InvalidFooter, 'not a VHD: no conectix cookie at '
                  'offset 0 or in the last 512 bytes', 'footer')
        validate.check_footer(footer, tail, self.limits, 'footer')
        if footer.disk_type != fmt.DISK_FIXED:
            _fail(errors.InvalidFooter, '%s disk without a footer copy at '
                  'offset 0' % fmt.DISK_TYPE_NAMES[footer.disk_type],
                  'footer copy')
        validate.check_fixed_size(footer, written)
        layer = Layer(self.name, self.rank, footer)
        composer.end_fixed(layer)
        layer.present_sectors = written // fmt.SECTOR
        return layer


_BLOCK, _LOCATOR, _BATMAP_HEADER, _BATMAP = range(4)
_SORT_SLICE = 1 << 16
_SCAN_SLICE = 1 << 12


class _Regions:
    """Blocks (sorted keys) and metadata (a short sorted list), merged."""

    def __init__(self, keys, meta):
        self.keys = iter(keys)
        self.head = next(self.keys, None)
        self.meta = meta

    def _block_offset(self):
        if self.head is not None:
            return (self.head >> 32) * fmt.SECTOR
        return None

    def next_offset(self):
        offsets = [o for o in (self._block_offset(),
                               self.meta[0][0] if self.meta else None)
                   if o is not None]
        return min(offsets, default=None)

    def add(self, offset, kind, ident):
        bisect.insort(self.meta, (offset, kind, ident))

    def __iter__(self):
        while True:
            block = self._block_offset()
            if self.meta and (block is None or self.meta[0][0] <= block):
                yield self.meta.pop(0)
            elif block is not None:
                key = self.head
                self.head = next(self.keys, None)
                yield block, _BLOCK, key & 0xFFFFFFFF
            else:
                return
