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
"""The on-disk declarations: checksum, CHS, footer and header layouts."""

import dataclasses
import struct
import uuid

import pytest

from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import writer

MiB = 1 << 20
GiB = 1 << 30


# -- checksum -----------------------------------------------------------------

@pytest.mark.parametrize('data, skip_at, expected', [
    (bytes(8), 0, 0xFFFFFFFF),
    (b'\x01\x02\x03\x04\x05', 0, 0xFFFFFFFA),       # only the 5 counts
    (b'\x05\xff\xff\xff\xff\x07', 1, 0xFFFFFFF3),   # 5 + 7
    (b'\xff' * 512, 64, ~(508 * 255) & 0xFFFFFFFF),
])
def test_checksum_is_the_complement_of_the_byte_sum(data, skip_at,
                                                    expected):
    assert fmt.checksum(data, skip_at) == expected


def test_checksum_ignores_its_own_field_and_wraps_to_32_bits():
    data = bytearray(range(256)) * 4
    base = fmt.checksum(data, 36)
    struct.pack_into('>I', data, 36, 0xDEADBEEF)
    assert fmt.checksum(data, 36) == base
    assert fmt.checksum(memoryview(bytes(data)), 36) == base
    data[100] ^= 0x01
    assert fmt.checksum(data, 36) != base
    # A sum above 2**32 still gives 32 bits.
    assert 0 <= fmt.checksum(b'\xff' * (1 << 25), 0) <= 0xFFFFFFFF


# -- CHS geometry (spec appendix; format reference section 1) -----------------

@pytest.mark.parametrize('size, chs', [
    (0, (0, 4, 17)),
    (1 * MiB, (30, 4, 17)),
    (20 * MiB, (602, 4, 17)),
    (100 * MiB, (1003, 12, 17)),
    (34 * MiB, (140, 16, 31)),          # 17 sectors: cth == heads * 1024
    (300000 * 512, (604, 16, 31)),      # 17 sectors would need 18 heads
    (1 * GiB, (2080, 16, 63)),          # the reference's example
    (2 * GiB, (4161, 16, 63)),
    (10 * GiB, (20805, 16, 63)),
    (65535 * 16 * 63 * 512, (16191, 16, 255)),  # first 255-sector size
    (100 * GiB, (51400, 16, 255)),
    (200 * GiB, (65535, 16, 255)),      # capped
    (2 << 40, (65535, 16, 255)),
])
def test_chs_geometry_follows_the_spec_appendix(size, chs):
    assert fmt.chs_geometry(size) == chs


def test_one_gib_geometry_is_256_kib_short():
    c, h, s = fmt.chs_geometry(GiB)
    assert c * h * s * 512 == 1073479680 == GiB - 256 * 1024


# -- footer -------------------------------------------------------------------

def _footer(**kw):
    return writer.make_footer(
        5 * MiB + 512, fmt.DISK_DIFFERENCING, unique_id=bytes(range(16)),
        hidden=True, timestamp=123456, **kw)


def test_footer_round_trip():
    footer = _footer()
    raw = footer.to_bytes()
    assert len(raw) == fmt.FOOTER_SIZE
    back = fmt.Footer.from_bytes(raw)
    assert back == footer
    assert back.to_bytes() == raw
    # from_bytes looks at the first 512 bytes only.
    assert fmt.Footer.from_bytes(raw + b'junk') == footer


def test_footer_fields_are_at_the_documented_offsets():
    footer = _footer()
    raw = footer.to_bytes()
    assert raw[0:8] == b'conectix'
    assert struct.unpack_from('>I', raw, 8)[0] == 2          # features
    assert struct.unpack_from('>I', raw, 12)[0] == 0x00010000
    assert struct.unpack_from('>Q', raw, 16)[0] == 512      # data offset
    assert struct.unpack_from('>I', raw, 24)[0] == 123456
    assert raw[28:32] == b'tap\0'
    assert struct.unpack_from('>I', raw, 32)[0] == 0x00010003
    assert struct.unpack_from('>Q', raw, 40)[0] == 5 * MiB + 512
    assert struct.unpack_from('>Q', raw, 48)[0] == 5 * MiB + 512
    cyl, heads, spt = fmt.chs_geometry(5 * MiB + 512)
    assert struct.unpack_from('>HBB', raw, 56) == (cyl, heads, spt)
    assert footer.chs == (cyl, heads, spt)
    assert struct.unpack_from('>I', raw, 60)[0] == 4        # differencing
    assert raw[68:84] == bytes(range(16))
    assert footer.uuid == uuid.UUID(bytes=bytes(range(16)))
    assert raw[fmt.HIDDEN_AT] == 1 and fmt.HIDDEN_AT == 85
    assert raw[86:] == bytes(512 - 86)


def test_footer_to_bytes_stores_a_valid_checksum():
    footer = _footer()
    footer.checksum = 0x12345678            # stale: to_bytes recomputes
    raw = footer.to_bytes()
    stored = struct.unpack_from('>I', raw, 64)[0]
    assert stored == footer.checksum != 0x12345678
    zeroed = raw[:64] + bytes(4) + raw[68:]
    assert stored == ~sum(zeroed) & 0xFFFFFFFF


def test_fixed_footer_has_no_data_offset():
    footer = writer.make_footer(MiB, fmt.DISK_FIXED)
    assert struct.unpack_from('>Q', footer.to_bytes(), 16)[0] == \
        fmt.NO_DATA_OFFSET


# -- dynamic header -----------------------------------------------------------

def _header():
    hdr = fmt.DynamicHeader(
        cookie=fmt.HEADER_COOKIE, data_offset=fmt.NO_DATA_OFFSET,
        table_offset=1536, header_version=0x00010000,
        max_table_entries=1 << 20, block_size=2 * MiB, checksum=0,
        parent_unique_id=bytes(range(16, 32)), parent_timestamp=777,
        parent_name_raw='1.vhd'.encode('utf-16-be').ljust(512, b'\0'))
    hdr.locators = [fmt.Locator(0, 0, 0, 0, 0) for _ in range(8)]
    hdr.locators[0] = fmt.Locator(fmt.PLAT_MACX, 512, 13, 0, 3584)
    hdr.locators[7] = fmt.Locator(fmt.PLAT_W2RU, 512, 14, 0, 4096)
    return hdr


def test_dynamic_header_round_trip():
    hdr = _header()
    raw = hdr.to_bytes()
    assert len(raw) == fmt.HEADER_SIZE
    back = fmt.DynamicHeader.from_bytes(raw)
    assert back == hdr
    assert back.to_bytes() == raw
    assert back.parent_name == '1.vhd'
    assert back.parent_uuid == uuid.UUID(bytes=bytes(range(16, 32)))


def test_dynamic_header_fields_are_at_the_documented_offsets():
    raw = _header().to_bytes()
    assert raw[0:8] == b'cxsparse'
    assert struct.unpack_from('>QQIII', raw, 8) == (
        fmt.NO_DATA_OFFSET, 1536, 0x00010000, 1 << 20, 2 * MiB)
    assert raw[40:56] == bytes(range(16, 32))
    assert struct.unpack_from('>I', raw, 56)[0] == 777
    assert raw[64:74] == '1.vhd'.encode('utf-16-be')
    assert struct.unpack_from('>IIIIQ', raw, 576) == (
        fmt.PLAT_MACX, 512, 13, 0, 3584)
    assert struct.unpack_from('>IIIIQ', raw, 576 + 7 * 24) == (
        fmt.PLAT_W2RU, 512, 14, 0, 4096)
    assert raw[768:] == bytes(256)
    stored = struct.unpack_from('>I', raw, 36)[0]
    assert stored == ~sum(raw[:36] + raw[40:]) & 0xFFFFFFFF


def test_header_checksum_covers_the_locators():
    a = _header()
    b = dataclasses.replace(_header(), locators=list(_header().locators))
    b.locators[3] = fmt.Locator(fmt.PLAT_W2KU, 512, 1, 0, 8192)
    assert a.to_bytes()[36:40] != b.to_bytes()[36:40]


# -- sizes and names ----------------------------------------------------------

@pytest.mark.parametrize('block_size, size', [
    (512, 512),                 # one bit, still one sector
    (4096, 512),
    (2 * MiB, 512),             # XenServer: 4096 bits, exactly 512 bytes
    (4 * MiB, 1024),
    (8 * MiB, 2048),
    (256 * MiB, 64 * 1024),
])
def test_bitmap_size_is_one_bit_per_sector_padded(block_size, size):
    assert fmt.bitmap_size(block_size) == size


@pytest.mark.parametrize('code, data, text', [
    (fmt.PLAT_MACX, b'file://./1.vhd\0\0', 'file://./1.vhd'),
    (fmt.PLAT_W2RU, '.\\1.vhd'.encode('utf-16-le') + b'\0\0', '.\\1.vhd'),
    (fmt.PLAT_W2KU, 'C:\\x'.encode('utf-16-le'), 'C:\\x'),
    (fmt.PLAT_MAC, b'\x01\xff', '01ff'),
])
def test_decode_locator(code, data, text):
    assert fmt.decode_locator(code, data) == text


@pytest.mark.parametrize('code, name', [
    (fmt.PLAT_MACX, 'MacX'), (fmt.PLAT_W2RU, 'W2ru'),
    (fmt.PLAT_MAC, 'Mac '), (0x01020304, '0x01020304'),
])
def test_platform_name(code, name):
    assert fmt.platform_name(code) == name
