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
"""One VHD read forward: every damaged field is refused by name.

Each case builds a small dynamic VHD (16 blocks of 4 KiB), damages one
field at its documented offset (recomputing the checksum when the damage
must get past it) and converts it as a tar member, a plain .vhd and, where
the file's size does not matter, a .vhd.gz read as a stream.
"""

import io
import struct

import pytest

from tests.unit.vhd import badinput as bi
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import validate
from xenapinfs_driver.vhd import tgz
from xenapinfs_driver.vhd import writer

MiB = 1 << 20
ALL = ('tar', 'vhd', 'vhd.gz')
SIZED = ('tar', 'vhd')          # checks that need the file's size


def _expected_disk():
    disk = bytearray(bi.SIZE)
    for i in bi.BLOCKS:
        disk[i * bi.BS:(i + 1) * bi.BS] = bi.block_data(i)
    return bytes(disk)


@pytest.mark.parametrize('kind', ALL)
def test_the_undamaged_sample_converts(tmp_path, kind):
    src, _ = bi.container(tmp_path, bi.dynamic(), kind)
    assert bi.convert_ok(src, tmp_path) == _expected_disk()


# -- damage table -------------------------------------------------------------

def flip(at):
    def damage(buf):
        buf[at(buf) if callable(at) else at] ^= 0xFF
    return damage


def footers(code, off, value, which=('copy', 'footer'), seal=True):
    def damage(buf):
        bi.put_footer(buf, code, off, value, which, seal)
    return damage


def header(code, off, value, seal=True):
    def damage(buf):
        bi.put_header(buf, code, off, value, seal)
    return damage


def entry(idx, sector):
    def damage(buf):
        bi.put_bat(buf, idx, sector(buf) if callable(sector) else sector)
    return damage


def _trailer(buf):
    return len(buf) - 512


CASES = [
    # id, damage, class, field, says, containers
    ('footer copy cookie', footers('8s', bi.F_COOKIE, b'conectiX', 'copy'),
     errors.InvalidFooter, 'footer copy', 'without a footer copy', ALL),
    ('footer copy checksum', flip(bi.F_CHECKSUM + 3),
     errors.InvalidFooter, 'footer copy checksum', 'does not match', ALL),
    ('footer copy checksum of the contents', flip(bi.F_UNIQUE_ID),
     errors.InvalidFooter, 'footer copy checksum', 'does not match', ALL),
    ('trailing footer checksum', flip(lambda b: _trailer(b) + 100),
     errors.InvalidFooter, 'footer checksum', 'does not match', ALL),
    ('trailing footer cookie',
     footers('8s', bi.F_COOKIE, b'Conectix', 'footer'),
     errors.InvalidFooter, 'footer cookie', 'bad cookie', ALL),
    ('footer copy version',
     footers('>I', bi.F_VERSION, 0x00020000, 'copy'),
     errors.InvalidFooter, 'footer copy format version', 'unsupported',
     ALL),
    ('trailing footer version',
     footers('>I', bi.F_VERSION, 0x00020000, 'footer'),
     errors.InvalidFooter, 'footer format version', 'unsupported', ALL),
    ('disk type', footers('>I', bi.F_DISK_TYPE, 7),
     errors.InvalidFooter, 'footer disk type', 'unsupported disk type 7',
     ALL),
    ('current size not in sectors',
     footers('>Q', bi.F_CURRENT_SIZE, bi.SIZE - 100),
     errors.InvalidFooter, 'footer copy current size',
     'not a multiple of 512', ALL),
    ('current size above the limit',
     footers('>Q', bi.F_CURRENT_SIZE, 4 << 40),
     errors.LimitExceeded, 'footer copy current size',
     'exceeds the limit of %d' % (2 << 40), ALL),
    ('trailing footer differs', footers('16s', bi.F_UNIQUE_ID, b'X' * 16,
                                        'footer'),
     errors.InvalidFooter, 'footer', 'differs from the copy at offset 0',
     ALL),
    ('trailing footer of another size',
     footers('>Q', bi.F_CURRENT_SIZE, bi.SIZE - 512, 'footer'),
     errors.InvalidFooter, 'footer', 'differs from the copy at offset 0',
     ALL),
    ('data offset 0', footers('>Q', bi.F_DATA_OFFSET, 0),
     errors.InvalidFooter, 'data offset', 'does not point inside', ALL),
    ('data offset inside the footer',
     footers('>Q', bi.F_DATA_OFFSET, 100),
     errors.InvalidFooter, 'data offset', 'does not point inside', ALL),
    ('data offset past the end', footers('>Q', bi.F_DATA_OFFSET, 1 << 40),
     errors.InvalidFooter, 'data offset', 'does not point inside', SIZED),
    ('header cookie', header('8s', bi.H_COOKIE, b'cxsparsX'),
     errors.InvalidHeader, 'dynamic header cookie', 'bad cookie', ALL),
    ('header checksum', header('>I', bi.H_BLOCK_SIZE, 8192, seal=False),
     errors.InvalidHeader, 'dynamic header checksum', 'does not match',
     ALL),
    ('header checksum of a locator',
     header('>I', bi.H_LOCATORS + 24 * 7, fmt.PLAT_MACX, seal=False),
     errors.InvalidHeader, 'dynamic header checksum', 'does not match',
     ALL),
    ('header version', header('>I', bi.H_VERSION, 0x00020000),
     errors.InvalidHeader, 'dynamic header version', 'unsupported', ALL),
    ('max table entries too few', header('>I', bi.H_MAX_ENTRIES, 15),
     errors.InvalidHeader, 'max table entries', '16 needed', ALL),
    ('max table entries 0', header('>I', bi.H_MAX_ENTRIES, 0),
     errors.InvalidHeader, 'max table entries', '16 needed', ALL),
    ('max table entries above the limit',
     header('>I', bi.H_MAX_ENTRIES, (1 << 22) + 1),
     errors.LimitExceeded, 'max table entries',
     '4194305 exceeds the limit of 4194304', ALL),
    ('max table entries past the end',
     header('>I', bi.H_MAX_ENTRIES, 1 << 22),
     errors.InvalidHeader, 'table offset', 'runs past the end', SIZED),
    ('table offset on the header', header('>Q', bi.H_TABLE_OFFSET, 1024),
     errors.InvalidHeader, 'table offset', 'overlaps', ALL),
    ('table offset 0', header('>Q', bi.H_TABLE_OFFSET, 0),
     errors.InvalidHeader, 'table offset', 'overlaps', ALL),
    ('table offset past the end',
     header('>Q', bi.H_TABLE_OFFSET, 1 << 40),
     errors.InvalidHeader, 'table offset', 'runs past the end', SIZED),
    ('BAT entry past the end', entry(3, 0x7FFFFFFF),
     errors.InvalidTable, 'BAT entry 3', 'runs past the end', SIZED),
    ('BAT entry over the trailing footer',
     entry(3, lambda b: len(b) // 512 - 2),
     errors.InvalidTable, 'BAT entry 3', 'runs past the end', SIZED),
    ('BAT entry 0', entry(3, 0),
     errors.InvalidTable, 'BAT entry 3', 'overlaps the BAT', ALL),
    ('BAT entry on the header', entry(3, 2),
     errors.InvalidTable, 'BAT entry 3', 'overlaps the BAT', ALL),
    ('block overlapping the BAT', entry(0, lambda b: bi.table_at(b) // 512),
     errors.InvalidTable, 'BAT entry 0', 'overlaps the BAT', ALL),
    ('two entries on one block', entry(3, lambda b: bi.bat(b, 1)),
     errors.InvalidTable, 'BAT entry 3', 'overlaps block 1', ALL),
    ('overlapping blocks', entry(3, lambda b: bi.bat(b, 1) + 1),
     errors.InvalidTable, 'BAT entry 3', 'overlaps block 1', ALL),
    ('overlapping blocks, lower index later',
     entry(0, lambda b: bi.bat(b, 6) + 8),
     errors.InvalidTable, 'BAT entry 0', 'overlaps block 6', ALL),
]


def _cases():
    for case in CASES:
        for kind in case[-1]:
            yield pytest.param(kind, *case[1:-1], id='%s-%s' % (case[0],
                                                                kind))


@pytest.mark.parametrize('kind, damage, cls, field, says', list(_cases()))
def test_damaged_field_is_named(tmp_path, kind, damage, cls, field, says):
    buf = bi.dynamic()
    damage(buf)
    src, member = bi.container(tmp_path, buf, kind)
    bi.assert_rejected(src, cls, member=member, field=field, says=says)


@pytest.mark.parametrize('block_size', [
    0, 256, 511, 3 * 4096, 4096 + 512, 1 << 29, 1 << 31, 0xFFFFFFFF])
@pytest.mark.parametrize('kind', ALL)
def test_block_size_not_a_power_of_two_or_absurd(tmp_path, kind,
                                                 block_size):
    buf = bi.dynamic()
    bi.put_header(buf, '>I', bi.H_BLOCK_SIZE, block_size)
    src, member = bi.container(tmp_path, buf, kind)
    bi.assert_rejected(src, errors.InvalidHeader, member=member,
                       field='block size', says='%d is not a power of two'
                       % block_size)


def test_file_too_small_for_a_vhd(tmp_path):
    src = bi.image(tmp_path, [('0.vhd', bi.dynamic()[:100])])
    bi.assert_rejected(src, errors.InvalidFooter, member='0.vhd',
                       field='file size', says='100 bytes is too small')


def test_member_cut_inside_a_complete_tar(tmp_path):
    # The tar is fine; the VHD in it lost its last blocks and footer.
    buf = bi.dynamic()
    src = bi.image(tmp_path, [('0.vhd', buf[:bi.bat(buf, 9) * 512 + 100])])
    bi.assert_rejected(src, errors.InvalidTable, member='0.vhd',
                       field='BAT entry 9', says='runs past the end')


def test_both_cookies_gone_in_a_member(tmp_path):
    buf = bi.dynamic()
    bi.put_footer(buf, '8s', bi.F_COOKIE, b'XXXXXXXX')
    src = bi.image(tmp_path, [('0.vhd', buf)])
    bi.assert_rejected(src, errors.InvalidFooter, member='0.vhd',
                       field='footer', says='not a VHD')


# -- configurable limits ------------------------------------------------------

@pytest.mark.parametrize('kind', ALL)
def test_limits_are_configurable(tmp_path, kind):
    src, member = bi.container(tmp_path, bi.dynamic(), kind)
    bi.assert_rejected(src, errors.LimitExceeded, member=member,
                       field='footer copy current size',
                       limits=tgz.Limits(max_size=bi.SIZE - 512))
    bi.assert_rejected(src, errors.LimitExceeded, member=member,
                       field='max table entries', says='16 exceeds',
                       limits=tgz.Limits(max_table_entries=15))
    assert bi.convert_ok(src, tmp_path, limits=tgz.Limits(
        max_size=bi.SIZE, max_table_entries=16)) == _expected_disk()


@pytest.mark.parametrize('kind', ALL)
def test_mask_memory_limit(tmp_path, kind):
    data = {i: (writer.bitmap_of({0, 5}, bi.BS), bi.block_data(i))
            for i in range(10)}
    out = io.BytesIO()
    writer.write_dynamic(out, bi.SIZE, data, block_size=bi.BS,
                         unique_id=bi.BASE_ID, timestamp=bi.TIMESTAMP)
    src, member = bi.container(tmp_path, out.getvalue(), kind)
    cost = bi.BS // 512 // 8 + 64
    bi.assert_rejected(src, errors.LimitExceeded, member=member,
                       field='bitmap of block 5', says='mask memory limit',
                       limits=tgz.Limits(max_mask_memory=5 * cost))
    disk = bi.convert_ok(src, tmp_path,
                         limits=tgz.Limits(max_mask_memory=10 * cost))
    assert disk[5 * bi.BS + 512:5 * bi.BS + 1024] == bytes(512)
    assert disk[5 * bi.BS + 2560:5 * bi.BS + 3072] == b'\x06' * 512


# -- fixed disks --------------------------------------------------------------

@pytest.mark.parametrize('kind', ALL)
def test_fixed_disk_footer_checksum(tmp_path, kind):
    buf = bi.fixed(b'\x42' * 8192)
    buf[-512 + bi.F_UNIQUE_ID] ^= 1
    src, member = bi.container(tmp_path, buf, kind)
    bi.assert_rejected(src, errors.InvalidFooter, member=member,
                       field='footer checksum')


@pytest.mark.parametrize('kind', ALL)
def test_fixed_disk_size_disagrees_with_its_data(tmp_path, kind):
    buf = bi.fixed(b'\x42' * 8192)
    bi.put_footer(buf, '>Q', bi.F_CURRENT_SIZE, 16384, 'footer')
    src, member = bi.container(tmp_path, buf, kind)
    bi.assert_rejected(src, errors.InvalidFooter, member=member,
                       field='current size', says='holds 8192 bytes')


@pytest.mark.parametrize('kind', ALL)
def test_dynamic_footer_without_its_copy(tmp_path, kind):
    buf = bi.dynamic()
    src, member = bi.container(tmp_path, buf[512:], kind)
    bi.assert_rejected(src, errors.InvalidFooter, member=member,
                       field='footer copy', says='dynamic disk without')


# -- parent locators (a differencing disk over a base) ------------------------

@pytest.fixture
def pair():
    base = bi.dynamic()
    parent_id = bytes(base[bi.F_UNIQUE_ID:bi.F_UNIQUE_ID + 16])
    return bi.differencing(parent_id), base


def _locator_at(buf, i):
    at = bi.header_at(buf) + bi.H_LOCATORS + 24 * i + bi.L_OFFSET
    return struct.unpack_from('>Q', buf, at)[0]


LOCATOR_CASES = [
    ('past the end', 0, bi.L_OFFSET, 1 << 40, '>Q',
     errors.InvalidHeader, 'does not fit in the file'),
    ('longer than the file', 2, bi.L_LENGTH, 1 << 20, '>I',
     errors.InvalidHeader, 'does not fit in the file'),
    ('huge', 1, bi.L_LENGTH, 0xFFFFFFFF, '>I',
     errors.InvalidHeader, 'does not fit in the file'),
    ('over the BAT', 2, bi.L_OFFSET, 1536, '>Q',
     errors.InvalidTable, 'overlaps the BAT'),
    ('over a block', 0, bi.L_OFFSET, 'block', '>Q',
     errors.InvalidTable, 'overlaps block 2'),
    ('over another locator', 1, bi.L_OFFSET, 'locator 0 + 4', '>Q',
     errors.InvalidTable, 'overlaps parent locator 0'),
]


@pytest.mark.parametrize('i, off, value, code, cls, says', [
    pytest.param(*c[1:], id=c[0]) for c in LOCATOR_CASES])
def test_parent_locator_out_of_place(tmp_path, pair, i, off, value, code,
                                     cls, says):
    child, base = pair
    if value == 'block':
        value = bi.bat(child, 2) * 512 + 1024
    elif value == 'locator 0 + 4':
        value = _locator_at(child, 0) + 4
    bi.put_locator(child, i, off, value, code)
    src = bi.image(tmp_path, [('0.vhd', child), ('1.vhd', base)])
    bi.assert_rejected(src, cls, member='0.vhd',
                       field='parent locator %d' % i, says=says)


def test_locator_length_bounded_in_a_stream(tmp_path, pair):
    # A .vhd.gz has no known size: the length alone must be refused.
    child, _ = pair
    bi.put_locator(child, 1, bi.L_LENGTH, 1 << 30)
    src = bi.write(tmp_path / 'child.vhd.gz', child, gz=True)
    bi.assert_rejected(src, errors.InvalidHeader, field='parent locator 1',
                       says='does not fit', max_memory=16 << 20)


# -- streams: the file's size is unknown --------------------------------------

STREAM_CASES = [
    ('BAT entry past the end', entry(3, 0x7FFFFFFF), ('BAT entry 3',
                                                      'block 3')),
    ('BAT entry over the trailing footer',
     entry(3, lambda b: len(b) // 512 - 2), ('BAT entry 3', 'block 3')),
    ('table offset past the end', header('>Q', bi.H_TABLE_OFFSET, 1 << 40),
     ('BAT', 'table offset')),
    ('data offset past the end', footers('>Q', bi.F_DATA_OFFSET, 1 << 40),
     ('dynamic header', 'data offset')),
    ('max table entries past the end',
     header('>I', bi.H_MAX_ENTRIES, 1 << 22), ('BAT', 'table offset')),
]


@pytest.mark.parametrize('damage, names', [
    pytest.param(*c[1:], id=c[0]) for c in STREAM_CASES])
def test_stream_ends_before_a_region(tmp_path, damage, names):
    buf = bi.dynamic()
    damage(buf)
    src = bi.write(tmp_path / 'disk.vhd.gz', buf, gz=True)
    exc = bi.assert_rejected(src, (errors.VhdError, errors.InvalidTable,
                                   errors.InvalidHeader,
                                   errors.InvalidFooter, errors.Truncated),
                             max_memory=32 << 20)
    assert any(n in str(exc) for n in names), str(exc)


def test_stream_locator_past_the_end(tmp_path, pair):
    child, _ = pair
    bi.put_locator(child, 0, bi.L_OFFSET, 1 << 40, '>Q')
    src = bi.write(tmp_path / 'child.vhd.gz', child, gz=True)
    exc = bi.assert_rejected(src, (errors.VhdError, errors.InvalidHeader,
                                   errors.Truncated))
    assert 'parent locator 0' in str(exc)


# -- huge claims fail fast ----------------------------------------------------

@pytest.mark.parametrize('kind', ALL)
def test_huge_table_is_refused_before_reading(tmp_path, kind):
    buf = bi.dynamic()
    bi.put_header(buf, '>I', bi.H_MAX_ENTRIES, (1 << 22) + 1)
    src, member = bi.container(tmp_path, buf, kind)
    bi.assert_rejected(src, errors.LimitExceeded, member=member,
                       field='max table entries', max_memory=8 << 20)


@pytest.mark.parametrize('kind', ALL)
def test_largest_block_size_with_little_data(tmp_path, kind):
    # 256 MiB blocks are legal; a tiny file claiming one must not make
    # the reader buffer 256 MiB.
    buf = bi.dynamic()
    bi.put_header(buf, '>I', bi.H_BLOCK_SIZE, validate.MAX_BLOCK)
    src, member = bi.container(tmp_path, buf, kind)
    exc = bi.assert_rejected(
        src, (errors.InvalidTable, errors.Truncated), member=member,
        max_memory=32 << 20)
    assert 'block 0' in str(exc) or 'BAT entry 0' in str(exc)


# -- damage that only costs a warning -----------------------------------------

def _batmap_at(buf):
    return bi.table_at(buf) + 512        # 16 entries: one sector of BAT


@pytest.mark.parametrize('damage, batmap, warns', [
    (lambda b: b.__setitem__(_batmap_at(b) + 512, 0x00), 'bad checksum',
     'batmap checksum does not match'),
    (lambda b: struct.pack_into('>I', b, _batmap_at(b) + 16, 1000),
     'invalid', 'batmap header points at'),
    (lambda b: b.__setitem__(_batmap_at(b), 0), 'absent', None),
])
def test_batmap_damage_is_only_a_warning(tmp_path, damage, batmap, warns):
    buf = bi.dynamic()
    assert buf[_batmap_at(buf):_batmap_at(buf) + 8] == b'tdbatmap'
    damage(buf)
    src = bi.image(tmp_path, [('0.vhd', buf)])
    out = tmp_path / 'out.raw'
    result = tgz.convert(str(src), str(out))
    assert out.read_bytes() == _expected_disk()
    assert result.layers[0].batmap == batmap
    if warns:
        assert any(warns in w for w in result.warnings), result.warnings
    else:
        assert result.warnings == []
