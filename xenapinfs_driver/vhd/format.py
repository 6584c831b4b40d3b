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
"""On-disk declarations of the VHD format, and nothing else.

Layouts follow the Microsoft "Virtual Hard Disk Image Format Specification"
1.0 (footer: section "Hard Disk Footer Format", dynamic header: "Dynamic
Disk Header Format") plus the blktap ("tap") extensions XenServer writes:
the batmap and the hidden flag. All integers are big-endian.
"""

from __future__ import annotations

import dataclasses
import struct
import uuid as uuidlib

SECTOR = 512
FOOTER_SIZE = 512
HEADER_SIZE = 1024

FOOTER_COOKIE = b'conectix'
HEADER_COOKIE = b'cxsparse'
BATMAP_COOKIE = b'tdbatmap'

DISK_FIXED = 2
DISK_DYNAMIC = 3
DISK_DIFFERENCING = 4
DISK_TYPE_NAMES = {DISK_FIXED: 'fixed', DISK_DYNAMIC: 'dynamic',
                   DISK_DIFFERENCING: 'differencing'}

FEATURE_RESERVED = 0x2
FORMAT_VERSION = 0x00010000
NO_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
BAT_UNUSED = 0xFFFFFFFF

CREATOR_TAP = b'tap\0'
TAP_VERSION = 0x00010003
BATMAP_VERSION = 0x00010002
# The unix epoch is 946684800 s before the VHD epoch (2000-01-01 UTC).
VHD_EPOCH = 946684800

# Footer, section "Hard Disk Footer Format". The last 427 bytes are
# reserved; blktap keeps its "hidden" flag in the first of them.
FOOTER = struct.Struct('>8sIIQI4sI4sQQIII16sBB426x')
FOOTER_CHECKSUM_AT = 64
HIDDEN_AT = 85

# Dynamic disk header, section "Dynamic Disk Header Format", without the
# eight parent locator entries, which follow at offset 576.
HEADER = struct.Struct('>8sQQIIII16sI4x512s')
HEADER_CHECKSUM_AT = 36
LOCATORS_AT = 576
LOCATOR = struct.Struct('>IIIIQ')
LOCATOR_COUNT = 8

# Platform codes of parent locators.
PLAT_NONE = 0
PLAT_W2RU = 0x57327275   # 'W2ru': relative Windows path, UTF-16LE
PLAT_W2KU = 0x57326B75   # 'W2ku': absolute Windows path, UTF-16LE
PLAT_MACX = 0x4D616358   # 'MacX': file URL, UTF-8
PLAT_WI2R = 0x57693272   # deprecated
PLAT_WI2K = 0x5769326B   # deprecated
PLAT_MAC = 0x4D616320    # 'Mac ': alias blob

# blktap batmap header: cookie, map offset, map size in sectors, version,
# checksum of the map, marker, keyhash (unused here).
BATMAP = struct.Struct('>8sQIII')


def checksum(data: bytes | bytearray | memoryview, skip_at: int) -> int:
    """One's complement of the byte sum, the 4-byte field at skip_at zeroed."""
    total = sum(data) - sum(data[skip_at:skip_at + 4])
    return ~total & 0xFFFFFFFF


def chs_geometry(size: int) -> tuple[int, int, int]:
    """Cylinders, heads and sectors per track, as the spec's appendix."""
    secs = min(size // SECTOR, 65535 * 16 * 255)
    if secs >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = secs // spt
    else:
        spt = 17
        cth = secs // spt
        heads = max(4, (cth + 1023) // 1024)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = secs // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = secs // spt
    return cth // heads, heads, spt


@dataclasses.dataclass
class Footer:
    cookie: bytes
    features: int
    format_version: int
    data_offset: int
    timestamp: int
    creator_app: bytes
    creator_version: int
    creator_os: bytes
    original_size: int
    current_size: int
    geometry: int
    disk_type: int
    checksum: int
    unique_id: bytes
    saved_state: int
    hidden: int

    @classmethod
    def from_bytes(cls, data: bytes) -> Footer:
        return cls(*FOOTER.unpack(data[:FOOTER_SIZE]))

    def to_bytes(self) -> bytes:
        raw = bytearray(FOOTER.pack(*dataclasses.astuple(self)))
        self.checksum = checksum(raw, FOOTER_CHECKSUM_AT)
        struct.pack_into('>I', raw, FOOTER_CHECKSUM_AT, self.checksum)
        return bytes(raw)

    @property
    def uuid(self) -> uuidlib.UUID:
        return uuidlib.UUID(bytes=self.unique_id)

    @property
    def chs(self) -> tuple[int, int, int]:
        g = self.geometry
        return g >> 16, (g >> 8) & 0xFF, g & 0xFF


@dataclasses.dataclass
class Locator:
    code: int
    data_space: int
    data_length: int
    reserved: int
    data_offset: int


@dataclasses.dataclass
class DynamicHeader:
    cookie: bytes
    data_offset: int
    table_offset: int
    header_version: int
    max_table_entries: int
    block_size: int
    checksum: int
    parent_unique_id: bytes
    parent_timestamp: int
    parent_name_raw: bytes
    locators: list[Locator] = dataclasses.field(default_factory=list)

    @classmethod
    def from_bytes(cls, data: bytes) -> DynamicHeader:
        hdr = cls(*HEADER.unpack_from(data))
        hdr.locators = [
            Locator(*LOCATOR.unpack_from(data, LOCATORS_AT + i * LOCATOR.size))
            for i in range(LOCATOR_COUNT)]
        return hdr

    def to_bytes(self) -> bytes:
        raw = bytearray(HEADER_SIZE)
        fields = dataclasses.astuple(self)[:-1]
        HEADER.pack_into(raw, 0, *fields)
        for i, loc in enumerate(self.locators[:LOCATOR_COUNT]):
            LOCATOR.pack_into(raw, LOCATORS_AT + i * LOCATOR.size,
                              *dataclasses.astuple(loc))
        self.checksum = checksum(raw, HEADER_CHECKSUM_AT)
        struct.pack_into('>I', raw, HEADER_CHECKSUM_AT, self.checksum)
        return bytes(raw)

    @property
    def parent_uuid(self) -> uuidlib.UUID:
        return uuidlib.UUID(bytes=self.parent_unique_id)

    @property
    def parent_name(self) -> str:
        return self.parent_name_raw.decode('utf-16-be', 'replace').rstrip(
            '\0')


def _pad(n: int) -> int:
    return n + (-n % SECTOR)


def bitmap_bytes(spb: int) -> int:
    """Bytes that hold one bit per sector of a block, unpadded."""
    return (spb + 7) // 8


def bitmap_size(block_size: int) -> int:
    """Bytes of the sector bitmap in front of each block, sector-padded."""
    return _pad(bitmap_bytes(block_size // SECTOR))


def batmap_size(entries: int) -> int:
    """Bytes of blktap's batmap for a BAT of entries, sector-padded."""
    return _pad(bitmap_bytes(entries))


def mask_of(bitmap: bytes | bytearray, spb: int) -> int:
    """A block's present sectors from its bitmap, sector 0 in the top bit.

    The padding bits past the last sector are left out.
    """
    n = bitmap_bytes(spb)
    return int.from_bytes(bitmap[:n], 'big') >> (8 * n - spb)


def set_mask(bitmap: bytearray, spb: int, mask: int) -> None:
    """Store mask (as ``mask_of`` returns it) in bitmap, in place; the
    padding bits past the last sector keep what they held."""
    n = bitmap_bytes(spb)
    pad = 8 * n - spb
    keep = int.from_bytes(bitmap[:n], 'big') & ((1 << pad) - 1)
    bitmap[:n] = ((mask << pad) | keep).to_bytes(n, 'big')


def locator_space(loc: Locator) -> int:
    """Bytes reserved for a parent locator's data.

    The spec counts data_space in sectors, while some writers count it in
    bytes: a value below one sector can only be a count of sectors.
    """
    if loc.data_space >= SECTOR:
        return loc.data_space
    return loc.data_space * SECTOR


def footer_is_tap(footer: Footer) -> bool:
    """Whether blktap wrote the file, late enough to keep a batmap."""
    return footer.creator_app == CREATOR_TAP and \
        footer.creator_version >= 0x00010002


def decode_locator(code: int, data: bytes) -> str:
    """The path a parent locator holds, for display only (never opened)."""
    if code == PLAT_MACX:
        return data.decode('utf-8', 'replace').rstrip('\0')
    if code in (PLAT_W2RU, PLAT_W2KU):
        return data.decode('utf-16-le', 'replace').rstrip('\0')
    return data.hex()


def platform_name(code: int) -> str:
    raw = code.to_bytes(4, 'big')
    return raw.decode('ascii') if raw.isascii() and raw.isalnum() or \
        raw == b'Mac ' else '0x%08x' % code
