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
"""The limits and the structural rules of a VHD file, stated once.

The stream reader (``layer``), the random-access ``VhdFile``, the file
operations and the ``vhd-util`` command all judge a VHD by these, so that
a file one of them accepts is never refused by another. Each check raises
the error of the part it judges (footer, header, BAT) with the field named;
``audit`` holds the further rules only ``vhd-util check`` applies.
"""

from __future__ import annotations

import dataclasses

from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt

MAX_LOCATOR = 64 << 10
MIN_BLOCK = fmt.SECTOR
MAX_BLOCK = 256 << 20
MAX_SIZE = 2 << 40               # 2 TiB, XenServer's largest VDI
MAX_TABLE_ENTRIES = 1 << 22      # 16 MiB of BAT; LVM SRs use 1 Mi


@dataclasses.dataclass
class Limits:
    """Bounds on what an input may make us do; every one is configurable."""

    max_depth: int = 30                  # XenServer's maximum chain length
    max_size: int = MAX_SIZE
    max_table_entries: int = MAX_TABLE_ENTRIES
    max_mask_memory: int = 256 << 20     # bitmaps of partly filled blocks


def check_file_size(size: int) -> None:
    if size < fmt.FOOTER_SIZE:
        raise errors.InvalidFooter('%d bytes is too small for a VHD' % size,
                                   field='file size')


def check_footer(footer: fmt.Footer, raw: bytes, limits: Limits,
                 where: str) -> None:
    """The footer (or its copy, as where says) on its own."""
    if footer.cookie != fmt.FOOTER_COOKIE:
        raise errors.InvalidFooter('bad cookie %r (expected conectix)'
                                   % footer.cookie, field=where + ' cookie')
    want = fmt.checksum(raw, fmt.FOOTER_CHECKSUM_AT)
    if footer.checksum != want:
        raise errors.InvalidFooter(
            'checksum 0x%08x does not match the contents (0x%08x)'
            % (footer.checksum, want), field=where + ' checksum')
    if footer.format_version >> 16 != 1:
        raise errors.InvalidFooter('unsupported version 0x%08x'
                                   % footer.format_version,
                                   field=where + ' format version')
    if footer.disk_type not in fmt.DISK_TYPE_NAMES:
        raise errors.InvalidFooter('unsupported disk type %d'
                                   % footer.disk_type,
                                   field=where + ' disk type')
    if footer.current_size % fmt.SECTOR:
        raise errors.InvalidFooter('%d is not a multiple of 512'
                                   % footer.current_size,
                                   field=where + ' current size')
    if footer.current_size > limits.max_size:
        raise errors.LimitExceeded(
            '%d bytes exceeds the limit of %d' % (footer.current_size,
                                                  limits.max_size),
            field=where + ' current size')


def check_footer_copy(copy: bytes, footer: bytes) -> None:
    if copy != footer:
        raise errors.InvalidFooter('differs from the copy at offset 0',
                                   field='footer')


def check_fixed_size(footer: fmt.Footer, data_len: int) -> None:
    """A fixed disk's data is all of the file but its footer."""
    if footer.current_size != data_len:
        raise errors.InvalidFooter('%d, but the fixed disk holds %d bytes '
                                   'of data' % (footer.current_size,
                                                data_len),
                                   field='current size')


def check_data_offset(footer: fmt.Footer, file_size: int | None) -> None:
    """The dynamic header lies between the footer copy and the footer
    (file_size None: a stream of unknown length)."""
    if footer.data_offset < fmt.FOOTER_SIZE or (
            file_size is not None and footer.data_offset
            > file_size - fmt.FOOTER_SIZE - fmt.HEADER_SIZE):
        raise errors.InvalidFooter('%d does not point inside the file'
                                   % footer.data_offset, field='data offset')


def check_disk_size(size: int, source: str | None = None) -> None:
    """The virtual size a new or grown disk (source) may have."""
    if size <= 0 or size % fmt.SECTOR or size > MAX_SIZE:
        raise errors.VhdError('%d is not a positive multiple of 512 of at '
                              'most %d' % (size, MAX_SIZE), source=source,
                              field='size')


def check_block_size(bs: int) -> None:
    if bs < MIN_BLOCK or bs > MAX_BLOCK or bs & (bs - 1):
        raise errors.InvalidHeader('%d is not a power of two between %d '
                                   'and %d' % (bs, MIN_BLOCK, MAX_BLOCK),
                                   field='block size')


def check_table_entries(entries: int, size: int, bs: int,
                        limits: Limits | None = None) -> int:
    """A BAT of entries must map size bytes in blocks of bs, within the
    limit; return the number of entries the disk uses."""
    limits = limits or Limits()
    needed = -(-size // bs)
    if entries < needed:
        raise errors.InvalidHeader(
            '%d entries cannot map a disk of %d bytes in blocks of %d (%d '
            'needed)' % (entries, size, bs, needed),
            field='max table entries')
    if entries > limits.max_table_entries:
        raise errors.LimitExceeded(
            '%d exceeds the limit of %d' % (entries,
                                            limits.max_table_entries),
            field='max table entries')
    return needed


def check_header(hdr: fmt.DynamicHeader, raw: bytes, footer: fmt.Footer,
                 limits: Limits, file_size: int | None) -> int:
    """Validate the dynamic header; return the number of BAT entries used.

    file_size is None for a stream of unknown length.
    """
    if hdr.cookie != fmt.HEADER_COOKIE:
        raise errors.InvalidHeader('bad cookie %r (expected cxsparse)'
                                   % hdr.cookie,
                                   field='dynamic header cookie')
    want = fmt.checksum(raw, fmt.HEADER_CHECKSUM_AT)
    if hdr.checksum != want:
        raise errors.InvalidHeader(
            'checksum 0x%08x does not match the contents (0x%08x)'
            % (hdr.checksum, want), field='dynamic header checksum')
    if hdr.header_version >> 16 != 1:
        raise errors.InvalidHeader('unsupported version 0x%08x'
                                   % hdr.header_version,
                                   field='dynamic header version')
    check_block_size(hdr.block_size)
    needed = check_table_entries(hdr.max_table_entries, footer.current_size,
                                 hdr.block_size, limits)
    header_end = footer.data_offset + fmt.HEADER_SIZE
    if hdr.table_offset < header_end:
        raise errors.InvalidHeader(
            'BAT at %d overlaps the footer copy or the dynamic header '
            '(which end at %d)' % (hdr.table_offset, header_end),
            field='table offset')
    table_end = hdr.table_offset + 4 * hdr.max_table_entries
    if file_size is not None and table_end > file_size - fmt.FOOTER_SIZE:
        raise errors.InvalidHeader(
            'BAT at %d of %d entries runs past the end of the file (%d '
            'bytes)' % (hdr.table_offset, hdr.max_table_entries, file_size),
            field='table offset')
    return needed


def check_block_fits(idx: int, offset: int, span: int,
                     end: int | None) -> None:
    """Block idx, span bytes at offset, must end before end (the footer;
    None for a stream of unknown length)."""
    if end is not None and offset + span > end:
        raise errors.InvalidTable('block %d at offset %d runs past the end '
                                  'of the file' % (idx, offset),
                                  field='BAT entry %d' % idx)


def locator_end(loc: fmt.Locator) -> int:
    """Where the data a parent locator holds or reserves ends."""
    return loc.data_offset + max(loc.data_length, fmt.locator_space(loc))


def check_locator(idx: int, loc: fmt.Locator, end: int | None) -> None:
    """A parent locator's data, and the space it reserves, must fit before
    end (the footer; None for a stream of unknown length)."""
    if loc.data_length > MAX_LOCATOR or (
            end is not None and locator_end(loc) > end):
        raise errors.InvalidHeader(
            'data of %d bytes at %d does not fit in the file'
            % (locator_end(loc) - loc.data_offset, loc.data_offset),
            field='parent locator %d' % idx)


def batmap_fits(header_at: int, map_offset: int, map_size: int,
                entries: int, end: int | None) -> bool:
    """Whether a batmap header at header_at may be trusted: its map must
    hold a bit per BAT entry (and not much more), follow the header and
    end before end (the footer; None for a stream of unknown length). A
    batmap that does not fit is ignored, never written through."""
    return not (map_size * 8 < entries
                or map_size > entries // 8 + 2 * fmt.SECTOR
                or map_offset < header_at + fmt.SECTOR
                or (end is not None and map_offset + map_size > end))


def _end_of_metadata(vhd) -> int:
    end = max(fmt.FOOTER_SIZE, vhd.footer.data_offset + fmt.HEADER_SIZE,
              vhd.table_end)
    if vhd.batmap_offset is not None:
        end = max(end, vhd.batmap_offset + fmt.SECTOR,
                  vhd.batmap_map_offset + len(vhd.batmap))
    for loc in vhd.header.locators:
        if loc.code != fmt.PLAT_NONE:
            end = max(end, loc.data_offset + fmt.locator_space(loc))
    return end


def audit(vhd, *, now: int | None = None, bitmaps: bool = False) -> str | None:
    """What ``vhd-util check`` finds wrong in an open VhdFile beyond what
    opening it checks, in blktap's words; None if nothing.

    :param now: the current VHD time (None: do not judge time stamps).
    :param bitmaps: also look for data in sectors the bitmaps leave out.
    """
    f, h = vhd.footer, vhd.header
    if now is not None and f.timestamp > now:
        return 'footer invalid: creation time in future'
    if f.unique_id == bytes(16):
        return 'footer invalid: invalid (NULL) uuid'
    if f.hidden not in (0, 1):
        return "footer invalid: invalid 'hidden' state %d" % f.hidden
    if h is None:
        return None
    diff = f.disk_type == fmt.DISK_DIFFERENCING
    if diff and now is not None and h.parent_timestamp > now:
        return 'differencing header invalid: parent creation time in future'
    if not diff and h.parent_unique_id != bytes(16):
        return 'differencing header invalid: non-null parent uuid'
    return _audit_blocks(vhd, bitmaps)


def _audit_blocks(vhd, bitmaps: bool) -> str | None:
    eoh = _end_of_metadata(vhd)
    used = sorted((e * fmt.SECTOR, i) for i, e in enumerate(vhd.bat)
                  if e != fmt.BAT_UNUSED)
    for off, idx in used:
        if off < eoh:
            return ('BAT invalid: block %d (offset 0x%x) clobbers headers'
                    % (idx, off))
    # Blocks overlapping each other were refused when the file was opened,
    # unless the caller asked not to look.
    if vhd.batmap_offset is not None:
        want = fmt.checksum(bytes(vhd.batmap) + bytes(4), len(vhd.batmap))
        if vhd.batmap_checksum != want:
            return 'batmap invalid: invalid checksum'
        for idx in range(min(len(vhd.bat), 8 * len(vhd.batmap))):
            if vhd.batmap[idx >> 3] & (0x80 >> (idx & 7)) and \
                    vhd.bat[idx] == fmt.BAT_UNUSED:
                return ('batmap invalid: batmap shows unallocated block %d '
                        'full' % idx)
    if bitmaps:
        zero = bytes(fmt.SECTOR)
        for idx in vhd.allocated():
            mask = vhd.mask(idx)
            data = vhd.read_block(idx)
            for s in range(vhd.spb):
                if not mask >> (vhd.spb - 1 - s) & 1 and \
                        data[s * fmt.SECTOR:(s + 1) * fmt.SECTOR] != zero:
                    return ('BAT invalid: sector 0x%x of block 0x%x has '
                            'data where bitmap is clear' % (s, idx))
    return None
