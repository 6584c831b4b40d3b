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
"""One set of rules: the stream reader and VhdFile judge a file alike.

Each case is one where the two readers used to disagree; the stricter
rule now holds for both.
"""

import struct

import pytest

from tests.unit.vhd import badinput as bi
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import tgz
from xenapinfs_driver.vhd import validate


def _batmap_at(buf):
    return bi.table_at(buf) + 512        # 16 entries: one sector of BAT


def test_a_batmap_too_small_for_the_bat_is_ignored_by_both(tmp_path):
    # A map of 0 sectors cannot hold a bit for each of the 16 entries.
    # VhdFile ignored it; the stream reader read it and called it valid
    # or badly summed. Now both call it a batmap that does not fit.
    buf = bi.dynamic()
    struct.pack_into('>I', buf, _batmap_at(buf) + 16, 0)
    path = bi.write(tmp_path / 'd.vhd', buf)
    result = tgz.convert(str(path), str(tmp_path / 'out.raw'))
    assert result.layers[0].batmap == 'invalid'
    assert any('batmap header points at' in w for w in result.warnings)
    with image.VhdFile(str(path)) as vhd:
        assert vhd.batmap_offset is None


@pytest.fixture
def pair():
    base = bi.dynamic()
    parent_id = bytes(base[bi.F_UNIQUE_ID:bi.F_UNIQUE_ID + 16])
    return bi.differencing(parent_id, blocks=range(16)), base


def _both_refuse(tmp_path, child, base, field, says):
    src = bi.image(tmp_path, [('0.vhd', child), ('1.vhd', base)])
    bi.assert_rejected(src, errors.InvalidHeader, member='0.vhd',
                       field=field, says=says)
    path = bi.write(tmp_path / 'child.vhd', child)
    with pytest.raises(errors.InvalidHeader) as info:
        image.VhdFile(str(path))
    assert info.value.field == field
    assert says in str(info.value)


def test_locator_space_past_the_end_is_refused_by_both(tmp_path, pair):
    # The data fits, the space it reserves (which set_parent writes) does
    # not. VhdFile refused it; the stream reader only looked at the data.
    child, base = pair
    bi.put_locator(child, 0, bi.L_SPACE, 1 << 20)
    _both_refuse(tmp_path, child, base, 'parent locator 0',
                 'does not fit in the file')


def test_locator_longer_than_the_bound_is_refused_by_both(tmp_path, pair):
    # Inside the file, but longer than any path: the stream reader
    # refused it; VhdFile only saw it overlap a block.
    child, base = pair
    assert len(child) > validate.MAX_LOCATOR + 4096
    bi.put_locator(child, 0, bi.L_LENGTH, validate.MAX_LOCATOR + 1)
    _both_refuse(tmp_path, child, base, 'parent locator 0',
                 'does not fit in the file')


@pytest.mark.parametrize('entries, fits', [(16, True), (4096, True),
                                           (4097, False)])
def test_batmap_fits_needs_a_bit_per_entry(entries, fits):
    assert validate.batmap_fits(1024, 1536, fmt.SECTOR, entries,
                                None) is fits


def test_bitmap_layout():
    assert fmt.bitmap_bytes(4) == 1 and fmt.bitmap_bytes(4096) == 512
    assert fmt.bitmap_size(2 << 20) == 512
    assert fmt.batmap_size(16) == fmt.SECTOR
    assert fmt.batmap_size(4097) == 2 * fmt.SECTOR
    bm = bytearray(b'\x0f')       # 4 sectors; the low 4 bits are padding
    assert fmt.mask_of(bm, 4) == 0
    fmt.set_mask(bm, 4, 0b1010)
    assert bm == bytearray(b'\xaf')
    assert fmt.mask_of(bm, 4) == 0b1010


@pytest.mark.parametrize('space, expected', [(1, 512), (3, 1536),
                                             (512, 512), (1024, 1024)])
def test_locator_space_in_sectors_or_bytes(space, expected):
    assert fmt.locator_space(fmt.Locator(1, space, 0, 0, 0)) == expected
