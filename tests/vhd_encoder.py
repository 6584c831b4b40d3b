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
"""A VHD encoder for tests, written from the specification alone.

Test fixtures must not come from the code under test: a reader bug that
mirrors a writer bug would pass. This module encodes fixed, dynamic and
differencing VHDs from the Microsoft "Virtual Hard Disk Image Format
Specification" (October 2006) and the extensions blktap adds for
XenServer (the batmap, the hidden flag, block data on 4 KiB boundaries,
locator data space in bytes), and imports nothing from xenapinfs_driver.

Every field is put at the offset the specification's tables give, one at
a time, rather than through a struct format, so each line can be checked
against the table it comes from. The sector bitmap is built as a string
of bits, sector 0 first: the specification's rule that the first sector
of a block is the most significant bit of the bitmap's first byte.
"""

from __future__ import annotations

import dataclasses
import time
import uuid as uuidlib

SECTOR = 512
DEFAULT_BLOCK = 2 << 20
ALIGN = 4096                    # blktap: block data on 4 KiB boundaries

FIXED, DYNAMIC, DIFFERENCING = 2, 3, 4

TAP_CREATOR = b'tap\0'
TAP_VERSION = 0x00010003        # blktap 1.3
# Time stamps count seconds from 2000-01-01 00:00:00 UTC.
UNIX_TO_VHD = 946684800

# Platform codes of parent locators (spec: "Parent Locator Entries").
MACX = b'MacX'                  # file URL, UTF-8
W2KU = b'W2ku'                  # absolute Windows path, UTF-16LE
W2RU = b'W2ru'                  # relative Windows path, UTF-16LE

ALL_ONES_64 = b'\xff' * 8
UNUSED_ENTRY = b'\xff' * 4


@dataclasses.dataclass
class Parent:
    """What a differencing disk's header says about its parent."""

    unique_id: bytes
    name: str                   # stored as UTF-16BE, as blktap does
    timestamp: int = 0
    locators: tuple = ()        # (platform code, path) pairs


def xenserver_locators(name: str) -> tuple:
    """The three relative locators XenServer writes for a parent."""
    return ((MACX, 'file://./' + name), (W2KU, '.\\' + name),
            (W2RU, '.\\' + name))


def _put(buf: bytearray, at: int, value: int, width: int) -> None:
    buf[at:at + width] = value.to_bytes(width, 'big')


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def checksum(record: bytes, field_at: int) -> int:
    """The spec's checksum: one's complement of the sum of the record's
    bytes, the four bytes of the checksum field left out."""
    total = 0
    for i, byte in enumerate(record):
        if not field_at <= i < field_at + 4:
            total += byte
    return (~total) & 0xFFFFFFFF


def geometry(size: int) -> tuple:
    """(cylinders, heads, sectors per track), the spec's appendix."""
    total = size // SECTOR
    if total > 65535 * 16 * 255:
        total = 65535 * 16 * 255
    if total >= 65535 * 16 * 63:
        per_track = 255
        heads = 16
        cyl_x_heads = total // per_track
    else:
        per_track = 17
        cyl_x_heads = total // per_track
        heads = (cyl_x_heads + 1023) // 1024
        if heads < 4:
            heads = 4
        if cyl_x_heads >= heads * 1024 or heads > 16:
            per_track = 31
            heads = 16
            cyl_x_heads = total // per_track
        if cyl_x_heads >= heads * 1024:
            per_track = 63
            heads = 16
            cyl_x_heads = total // per_track
    return cyl_x_heads // heads, heads, per_track


def sectors_per_block(block_size: int) -> int:
    return block_size // SECTOR


def bitmap_length(block_size: int) -> int:
    """One bit per sector, padded to a whole sector."""
    return _round_up(_round_up(sectors_per_block(block_size), 8) // 8,
                     SECTOR)


def bitmap(sectors, block_size: int = DEFAULT_BLOCK) -> bytes:
    """The sector bitmap with the given sectors present (None: all).

    Sector 0 is the most significant bit of byte 0, sector 8 that of
    byte 1: a string of bits in sector order, read as one big number.
    """
    spb = sectors_per_block(block_size)
    present = range(spb) if sectors is None else sectors
    bits = ['0'] * (bitmap_length(block_size) * 8)
    for s in present:
        if not 0 <= s < spb:
            raise ValueError('sector %d is outside a block of %d'
                             % (s, spb))
        bits[s] = '1'
    return int(''.join(bits), 2).to_bytes(len(bits) // 8, 'big')


def _is_full(sectors, block_size: int) -> bool:
    return sectors is None or set(range(sectors_per_block(block_size))) \
        <= set(sectors)


def encode_footer(size: int, disk_type: int, unique_id: bytes, *,
                  timestamp: int, creator: bytes = TAP_CREATOR,
                  creator_version: int = TAP_VERSION,
                  original_size: int | None = None, hidden: bool = False,
                  data_offset: int | None = SECTOR) -> bytes:
    """The 512-byte footer (spec: "Hard Disk Footer Format").

    data_offset None writes all ones, as a fixed disk has.
    """
    rec = bytearray(512)
    rec[0:8] = b'conectix'
    _put(rec, 8, 0x00000002, 4)                  # features: reserved bit
    _put(rec, 12, 0x00010000, 4)                 # file format version
    if data_offset is None:
        rec[16:24] = ALL_ONES_64
    else:
        _put(rec, 16, data_offset, 8)
    _put(rec, 24, timestamp, 4)
    rec[28:32] = creator
    _put(rec, 32, creator_version, 4)
    rec[36:40] = bytes(4)                        # host OS: blktap's 0
    _put(rec, 40, size if original_size is None else original_size, 8)
    _put(rec, 48, size, 8)                       # current size
    cyl, heads, per_track = geometry(size)
    _put(rec, 56, cyl, 2)
    _put(rec, 58, heads, 1)
    _put(rec, 59, per_track, 1)
    _put(rec, 60, disk_type, 4)
    rec[68:84] = unique_id
    rec[84] = 0                                  # saved state
    rec[85] = 1 if hidden else 0                 # blktap: hidden
    _put(rec, 64, checksum(rec, 64), 4)
    return bytes(rec)


def encode_header(*, table_offset: int, entries: int, block_size: int,
                  parent: Parent | None = None,
                  locators: list = ()) -> bytes:
    """The 1024-byte dynamic disk header (spec: "Dynamic Disk Header").

    locators: (code, data space, data length, data offset) per entry.
    """
    rec = bytearray(1024)
    rec[0:8] = b'cxsparse'
    rec[8:16] = ALL_ONES_64                      # data offset: unused
    _put(rec, 16, table_offset, 8)
    _put(rec, 24, 0x00010000, 4)                 # header version
    _put(rec, 28, entries, 4)                    # max table entries
    _put(rec, 32, block_size, 4)
    if parent is not None:
        rec[40:56] = parent.unique_id
        _put(rec, 56, parent.timestamp, 4)
        name = parent.name.encode('utf-16-be')[:512]
        rec[64:64 + len(name)] = name
    for i, (code, space, length, offset) in enumerate(locators):
        at = 576 + 24 * i
        rec[at:at + 4] = code
        _put(rec, at + 4, space, 4)
        _put(rec, at + 8, length, 4)
        _put(rec, at + 16, offset, 8)
    _put(rec, 36, checksum(rec, 36), 4)
    return bytes(rec)


def locator_data(code: bytes, path: str) -> bytes:
    return path.encode('utf-8' if code == MACX else 'utf-16-le')


def _now() -> int:
    return max(0, int(time.time()) - UNIX_TO_VHD)


def encode_dynamic(size: int, blocks: dict, *, order=None,
                   parent: Parent | None = None,
                   block_size: int = DEFAULT_BLOCK,
                   max_table_entries: int | None = None,
                   batmap: bool = True, hidden: bool = False,
                   unique_id: bytes | None = None,
                   timestamp: int | None = None,
                   creator: bytes = TAP_CREATOR,
                   creator_version: int = TAP_VERSION,
                   original_size: int | None = None,
                   align: int = ALIGN) -> bytes:
    """A dynamic VHD (differencing with parent), laid out as blktap does.

    :param blocks: block index -> (sectors, data): sectors is an iterable
        of sector numbers within the block, or None for all of them; data
        is block_size bytes, also where a sector is not present.
    :param order: the blocks in the order they sit in the file.
    :param align: the boundary block data starts on (a multiple of 512).

    The file: footer copy, header, BAT, batmap, locators, blocks (each
    its bitmap then its data, the data on an align boundary), footer.
    """
    if align % SECTOR:
        raise ValueError('align %d is not a multiple of 512' % align)
    order = sorted(blocks) if order is None else list(order)
    if sorted(order) != sorted(blocks):
        raise ValueError('order must name every block once')
    entries = max_table_entries or -(-size // block_size)
    bm_len = bitmap_length(block_size)

    # Metadata offsets, in file order.
    table_offset = 512 + 1024
    cursor = table_offset + _round_up(4 * entries, SECTOR)
    batmap_at = None
    if batmap:
        batmap_at = cursor
        map_len = _round_up(-(-entries // 8), SECTOR)
        cursor += SECTOR + map_len
    loc_entries, loc_blobs = [], []
    for code, path in (parent.locators if parent else ()):
        data = locator_data(code, path)
        space = _round_up(len(data), SECTOR)     # blktap: bytes
        loc_entries.append((code, space, len(data), cursor))
        loc_blobs.append((cursor, data))
        cursor += space

    # Blocks, in physical order.
    where = {}
    for idx in order:
        if not 0 <= idx < entries:
            raise ValueError('block %d is outside a table of %d entries'
                             % (idx, entries))
        data_at = _round_up(cursor + bm_len, align)
        where[idx] = data_at - bm_len
        cursor = data_at + block_size
    footer_at = cursor

    out = bytearray(footer_at + 512)
    footer = encode_footer(
        size, DIFFERENCING if parent else DYNAMIC,
        unique_id or uuidlib.uuid4().bytes,
        timestamp=_now() if timestamp is None else timestamp,
        creator=creator, creator_version=creator_version,
        original_size=original_size, hidden=hidden)
    out[0:512] = footer
    out[512:1536] = encode_header(
        table_offset=table_offset, entries=entries, block_size=block_size,
        parent=parent, locators=loc_entries)
    # blktap fills the whole table, sector padding too, with unused
    # entries.
    table = bytearray(UNUSED_ENTRY * (_round_up(4 * entries, SECTOR) // 4))
    for idx, at in where.items():
        _put(table, 4 * idx, at // SECTOR, 4)
    out[table_offset:table_offset + len(table)] = table
    if batmap_at is not None:
        bits = ['0'] * (map_len * 8)
        for idx in where:
            if _is_full(blocks[idx][0], block_size):
                bits[idx] = '1'
        the_map = int(''.join(bits), 2).to_bytes(map_len, 'big')
        head = bytearray(SECTOR)
        head[0:8] = b'tdbatmap'
        _put(head, 8, batmap_at + SECTOR, 8)     # map offset
        _put(head, 16, map_len // SECTOR, 4)     # map size, sectors
        _put(head, 20, 0x00010002, 4)            # batmap version
        _put(head, 24, (~sum(the_map)) & 0xFFFFFFFF, 4)
        out[batmap_at:batmap_at + SECTOR] = head
        out[batmap_at + SECTOR:batmap_at + SECTOR + map_len] = the_map
    for at, data in loc_blobs:
        out[at:at + len(data)] = data
    for idx, at in where.items():
        sectors, data = blocks[idx]
        if len(data) != block_size:
            raise ValueError('block %d holds %d bytes, not %d'
                             % (idx, len(data), block_size))
        out[at:at + bm_len] = bitmap(sectors, block_size)
        out[at + bm_len:at + bm_len + block_size] = data
    out[footer_at:] = footer
    return bytes(out)


def encode_fixed(data: bytes, *, unique_id: bytes | None = None,
                 timestamp: int | None = None, **footer_args) -> bytes:
    """A fixed VHD: the disk, then the footer (data offset all ones)."""
    return bytes(data) + encode_footer(
        len(data), FIXED, unique_id or uuidlib.uuid4().bytes,
        timestamp=_now() if timestamp is None else timestamp,
        data_offset=None, **footer_args)
