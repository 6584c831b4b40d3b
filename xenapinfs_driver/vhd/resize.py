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
"""Growing a VHD's virtual size in place (``vhd-util resize``)."""

from __future__ import annotations

import contextlib
import os

from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import journal as journalmod
from xenapinfs_driver.vhd import validate


def _pad(n: int, to: int = fmt.SECTOR) -> int:
    return n + (-n % to)


def resize(path: str, size: int, journal: str | None = None) -> None:
    """Grow the virtual size to size bytes (``vhd-util resize``).

    When the BAT has room (a preallocated LVM-style BAT always has), only
    the footers change. Otherwise the BAT grows in place: the blocks in
    its way move to the end of the file. Either way every byte changed is
    first saved to the journal, so an interrupted resize can be reverted;
    without a journal only the footer-only case is allowed (``-f``).
    """
    validate.check_disk_size(size, path)
    if journal and os.path.lexists(journal):
        raise errors.TargetError('a journal is already there: an earlier '
                                 'edit was interrupted; revert it first',
                                 source=journal)
    with image.VhdFile(path, writable=True) as vhd:
        if vhd.header is None:
            raise errors.VhdError('cannot resize a fixed disk', source=path,
                                  field='disk type')
        if size < vhd.size:
            raise errors.VhdError('%d is smaller than the current %d; '
                                  'shrinking is not supported'
                                  % (size, vhd.size), source=path,
                                  field='size')
        if size == vhd.size:
            return
        needed = -(-size // vhd.block_size)
        grow = needed > vhd.header.max_table_entries
        if grow and journal is None:
            raise errors.VhdError(
                'the BAT holds %d entries, %d are needed: growing it needs '
                'a journal' % (vhd.header.max_table_entries, needed),
                source=path, field='max table entries')
        stale = _stale_tail(vhd)
        with (journalmod.Journal(journal, vhd.fd) if journal
              else contextlib.nullcontext()) as jrn:
            # On failure the journal is closed and stays: it is how the
            # file is put back.
            _apply(vhd, size, needed if grow else None, stale, jrn)
            if jrn:
                jrn.finish()
            else:
                vhd.flush()


def _apply(vhd, size: int, needed: int | None, stale, jrn) -> None:
    """Change the file, each region saved to jrn (if any) first."""
    if jrn and stale:
        jrn.save(stale[0], vhd.bm_size)
        if vhd.batmap_offset is not None:
            jrn.save(vhd.batmap_offset, fmt.SECTOR)
            jrn.save(vhd.batmap_map_offset, len(vhd.batmap))
    if needed is not None:
        _grow_table(vhd, needed, jrn)
    elif jrn:
        jrn.save(0, fmt.FOOTER_SIZE)
        jrn.save(vhd.footer_offset, fmt.FOOTER_SIZE)
        jrn.seal()
    if stale:
        _clear_tail(vhd, *stale)
    _set_size(vhd, size)
    vhd.write_footers()


def _stale_tail(vhd):
    """The last block's bitmap offset and index, if it has bits set past
    the disk's end: growing the disk would make their old bytes appear.
    """
    if vhd.size % vhd.block_size == 0:
        return None
    idx = vhd.size // vhd.block_size
    if idx >= len(vhd.bat) or vhd.bat[idx] == fmt.BAT_UNUSED:
        return None
    bm = vhd.bitmap(idx)
    keep = (vhd.size - idx * vhd.block_size) // fmt.SECTOR
    if not fmt.mask_of(bm, vhd.spb) & ((1 << (vhd.spb - keep)) - 1):
        return None
    return vhd.bat[idx] * fmt.SECTOR, idx


def _clear_tail(vhd, bm_at: int, idx: int) -> None:
    bm = bytearray(vhd.bitmap(idx))
    keep = (vhd.size - idx * vhd.block_size) // fmt.SECTOR
    fmt.set_mask(bm, vhd.spb, fmt.mask_of(bm, vhd.spb)
                 & ~((1 << (vhd.spb - keep)) - 1))
    os.pwrite(vhd.fd, bytes(bm), vhd.bat[idx] * fmt.SECTOR)
    vhd.set_batmap(idx, False)


def _set_size(vhd, size: int) -> None:
    cyl, heads, spt = fmt.chs_geometry(size)
    vhd.footer.current_size = size
    vhd.footer.geometry = (cyl << 16) | (heads << 8) | spt


def _grow_table(vhd, needed: int, jrn) -> None:
    hdr = vhd.header
    entries = -(-needed // 128) * 128           # whole BAT sectors
    table_end = hdr.table_offset + _pad(4 * entries)
    # What follows the BAT is laid out again after the bigger one.
    pos = table_end
    batmap = None
    if vhd.batmap_offset is not None:
        map_size = fmt.batmap_size(entries)
        batmap = (pos, pos + fmt.SECTOR, map_size)
        pos += fmt.SECTOR + map_size
    locs = []
    for loc in hdr.locators:
        if loc.code and loc.data_length:
            space = fmt.locator_space(loc)
            data = os.pread(vhd.fd, space, loc.data_offset)
            locs.append((loc, pos, data))
            pos += _pad(len(data))
    meta_end = pos
    span = vhd.bm_size + vhd.block_size
    moving = sorted((vhd.bat[i] * fmt.SECTOR, i) for i in
                    range(len(vhd.bat)) if vhd.bat[i] != fmt.BAT_UNUSED
                    and vhd.bat[i] * fmt.SECTOR < meta_end)
    # Everything overwritten below lies in these regions; the moved
    # blocks' copies go past the old end, which the truncation undoes.
    jrn.save(0, fmt.FOOTER_SIZE)
    jrn.save(vhd.footer.data_offset, fmt.HEADER_SIZE)
    jrn.save(hdr.table_offset, meta_end - hdr.table_offset)
    jrn.save(vhd.footer_offset, fmt.FOOTER_SIZE)
    jrn.seal()

    # 1. The blocks in the way, copied to the end (past the new metadata
    # too, when it reaches beyond the old end); then a footer after.
    end = max(vhd.footer_offset, meta_end)
    for old, idx in moving:
        data_at = _pad(end + vhd.bm_size, image.ALIGN)
        new = data_at - vhd.bm_size
        os.pwrite(vhd.fd, os.pread(vhd.fd, span, old), new)
        vhd.bat[idx] = new // fmt.SECTOR
        end = new + span
    vhd.footer_offset = end
    vhd.file_size = end + fmt.FOOTER_SIZE
    os.pwrite(vhd.fd, vhd.footer.to_bytes(), end)
    # 2. The bigger BAT, the batmap and the locators in their new places.
    vhd.bat.extend([fmt.BAT_UNUSED] * (entries - len(vhd.bat)))
    os.pwrite(vhd.fd, image.big_endian(vhd.bat).ljust(
        table_end - hdr.table_offset, b'\0'), hdr.table_offset)
    hdr.max_table_entries = entries
    if batmap is not None:
        header_at, map_at, map_size = batmap
        old_map = bytes(vhd.batmap)
        vhd.batmap = bytearray(old_map[:map_size].ljust(map_size, b'\0'))
        vhd.batmap_offset, vhd.batmap_map_offset = header_at, map_at
        os.pwrite(vhd.fd, bytes(vhd.batmap), map_at)
        vhd.write_batmap_header()
    for loc, at, data in locs:
        os.pwrite(vhd.fd, data, at)
        loc.data_offset = at
    vhd.write_header()
