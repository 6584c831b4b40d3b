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
"""The whole-file writer: blktap layout, read back by three readers."""

import io
import random

import pytest

from tests.unit.vhd import vhdcheck as vc
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import writer

MiB, KiB, SECTOR, BS = vc.MiB, vc.KiB, vc.SECTOR, vc.BS
SPB = BS // SECTOR


def _blocks(rnd, size, *, group=1, fill=0.7, block_size=BS):
    """Random blocks and the disk they make.

    Unset sectors hold zeros, so that qemu-img (which ignores bitmaps)
    reads the same disk; sectors are set in runs of `group` sectors.
    """
    spb = block_size // SECTOR
    disk = bytearray(size)
    blocks = {}
    for idx in range(-(-size // block_size)):
        if rnd.random() > fill:
            continue
        data = bytearray(block_size)
        if rnd.random() < 0.4:
            sectors = None
            data[:] = rnd.randbytes(block_size)
        else:
            sectors = set()
            for g in range(0, spb, group):
                if rnd.random() < 0.5:
                    sectors.update(range(g, g + group))
                    at = g * SECTOR
                    data[at:at + group * SECTOR] = rnd.randbytes(
                        group * SECTOR)
        base = idx * block_size
        valid = min(block_size, size - base)
        disk[base:base + valid] = data[:valid]
        bitmap = None if sectors is None else writer.bitmap_of(sectors,
                                                               block_size)
        blocks[idx] = (bitmap, bytes(data))
    return blocks, disk


def _write(path, size, blocks, **kw):
    with open(path, 'wb') as f:
        return writer.write_dynamic(f, size, blocks, **kw)


@pytest.mark.parametrize('size,kw', [
    (6 * MiB, {}),
    (5 * MiB + 3 * SECTOR, {}),                     # not a MiB multiple
    (7 * MiB, {'max_table_entries': 4096}),         # preallocated BAT
    (6 * MiB, {'order': 'reverse'}),
    (3 * MiB, {'block_size': 512 * KiB}),
])
def test_dynamic_reads_back_with_every_reader(tmp_path, size, kw):
    rnd = random.Random(size)
    blocks, disk = _blocks(rnd, size, block_size=kw.get('block_size', BS))
    if kw.get('order') == 'reverse':
        kw['order'] = sorted(blocks, reverse=True)
    path = tmp_path / 'd.vhd'
    footer = _write(path, size, blocks, **kw)
    assert footer.original_size == footer.current_size == size
    vc.converted(path, disk)
    vc.assert_tap(path, size)
    vc.qemu_converted(path, disk)


def test_blktap_layout(tmp_path):
    rnd = random.Random(2)
    blocks, _ = _blocks(rnd, 8 * MiB, fill=1.0)
    path = tmp_path / 'd.vhd'
    _write(path, 8 * MiB, blocks, order=[2, 0, 3, 1])
    raw = path.read_bytes()
    assert raw[:SECTOR] == raw[-SECTOR:]
    with image.VhdFile(str(path)) as vhd:
        assert vhd.header.table_offset == 1536
        assert vhd.header.max_table_entries == 4
        assert vhd.batmap_offset == 2048
        assert vhd.batmap_map_offset == 2560
        # Blocks follow one another in the order asked, data 4 KiB
        # aligned, and the footer right after the last one.
        offsets = [vhd.bat[i] * SECTOR for i in (2, 0, 3, 1)]
        assert offsets[0] == 4096 - SECTOR
        for a, b in zip(offsets, offsets[1:]):
            assert b == a + 4096 + BS
        assert vhd.footer_offset == offsets[-1] + SECTOR + BS


def test_differencing_records_its_parent(tmp_path):
    rnd = random.Random(3)
    size = 6 * MiB
    pblocks, pdisk = _blocks(rnd, size, group=8)
    cblocks, _ = _blocks(rnd, size, group=8)
    parent = tmp_path / '1.vhd'
    child = tmp_path / '0.vhd'
    pf = _write(parent, size, pblocks, hidden=True)
    ref = writer.Parent(pf.unique_id, '1.vhd', 123456,
                        writer.xenserver_locators('1.vhd'))
    cf = _write(child, size, cblocks, parent=ref)
    expected = bytearray(pdisk)
    for idx, (bitmap, data) in cblocks.items():
        for s in range(SPB):
            if bitmap is None or bitmap[s // 8] & (0x80 >> s % 8):
                at = idx * BS + s * SECTOR
                expected[at:at + SECTOR] = data[s * SECTOR:(s + 1) * SECTOR]

    result = vc.chain_inspected([child, parent])
    top = result.layers[0]
    assert top.disk_type == fmt.DISK_DIFFERENCING
    assert top.header.parent_unique_id == pf.unique_id
    assert top.header.parent_timestamp == 123456
    assert top.header.parent_name == '1.vhd'
    assert top.locators == [('MacX', 'file://./1.vhd'),
                            ('W2ku', '.\\1.vhd'), ('W2ru', '.\\1.vhd')]
    assert cf.unique_id != pf.unique_id
    vc.chain_converted([child, parent], expected)
    vc.assert_tap(child, size, fmt.DISK_DIFFERENCING)
    vc.assert_tap(parent, size, leaf=False)
    # Locators in consecutive sectors right after the batmap, their space
    # in bytes (as blktap writes it).
    with image.VhdFile(str(child)) as vhd:
        at = vhd.batmap_map_offset + len(vhd.batmap)
        for loc in vhd.header.locators[:3]:
            assert loc.data_offset == at
            assert loc.data_space == SECTOR
            at += SECTOR
        assert all(loc.code == 0 for loc in vhd.header.locators[3:])
        first = min(e for e in vhd.bat if e != fmt.BAT_UNUSED)
        assert first * SECTOR >= at
    # libvhdi: same sizes, bitmaps in whole bytes (its bugs 1-3 avoided).
    assert vc.libvhdi_read([child, parent], size) == expected


def test_unicode_parent_name(tmp_path):
    name = 'p\u00e4rent-\u540d\U0001f4be.vhd'
    parent = tmp_path / '1.vhd'
    pf = _write(parent, 2 * MiB, {}, hidden=True)
    child = tmp_path / '0.vhd'
    _write(child, 2 * MiB, {}, parent=writer.Parent(
        pf.unique_id, name, 7, writer.xenserver_locators(name)))
    with image.VhdFile(str(child)) as vhd:
        assert vhd.header.parent_name == name
        assert vhd.header.parent_name_raw == name.encode(
            'utf-16-be').ljust(512, b'\0')
    layer = vc.chain_inspected([child, parent]).layers[0]
    assert layer.locators == [('MacX', 'file://./' + name),
                              ('W2ku', '.\\' + name),
                              ('W2ru', '.\\' + name)]


@pytest.mark.parametrize('code,path', [
    (fmt.PLAT_MACX, 'file://./a b/\u00e9.vhd'),
    (fmt.PLAT_W2KU, '.\\\u00e9\U0001f4be.vhd'),
    (fmt.PLAT_W2RU, '.\\x.vhd'),
])
def test_locator_encoding_round_trips(code, path):
    data = writer.encode_locator(code, path)
    assert fmt.decode_locator(code, data) == path
    assert fmt.decode_locator(code, data.ljust(512, b'\0')) == path


def test_lvm_style_bat(tmp_path):
    # 1 Mi entries, as XenServer's LVM SRs preallocate (4 MiB of BAT).
    rnd = random.Random(4)
    blocks, disk = _blocks(rnd, 4 * MiB, fill=1.0)
    path = tmp_path / 'd.vhd'
    _write(path, 4 * MiB, blocks, max_table_entries=1 << 20)
    with image.VhdFile(str(path)) as vhd:
        assert vhd.header.max_table_entries == 1 << 20
        assert len(vhd.batmap) == (1 << 20) // 8
        assert set(vhd.bat[2:]) == {fmt.BAT_UNUSED}
    vc.converted(path, disk)
    vc.assert_tap(path, 4 * MiB)
    vc.qemu_converted(path, disk)


def test_empty_disk(tmp_path):
    path = tmp_path / 'd.vhd'
    _write(path, 10 * MiB, {})
    vc.assert_tap(path, 10 * MiB)
    vc.converted(path, b'', 10 * MiB)
    vc.qemu_converted(path, b'', 10 * MiB)


def test_fixed_disk(tmp_path):
    data = random.Random(5).randbytes(3 * MiB)
    path = tmp_path / 'f.vhd'
    with open(path, 'wb') as f:
        footer = writer.write_fixed(f, data)
    assert footer.disk_type == fmt.DISK_FIXED
    assert footer.data_offset == fmt.NO_DATA_OFFSET
    assert footer.chs == fmt.chs_geometry(len(data))
    assert path.read_bytes()[:len(data)] == data
    vc.converted(path, data)
    vc.qemu_converted(path, data)


@pytest.mark.parametrize('size', [512, 10 * MiB + 512, 1 << 30, 127 << 30,
                                  2 << 40])
def test_footer_geometry_and_sizes(size):
    f = writer.make_footer(size, fmt.DISK_DYNAMIC)
    assert f.chs == fmt.chs_geometry(size)
    assert f.current_size == f.original_size == size
    assert f.creator_app == fmt.CREATOR_TAP
    assert f.creator_version == fmt.TAP_VERSION
    assert f.creator_os == b'\0\0\0\0'
    raw = f.to_bytes()
    assert fmt.checksum(raw, fmt.FOOTER_CHECKSUM_AT) == f.checksum
    assert fmt.Footer.from_bytes(raw) == f


def test_original_size_may_differ():
    f = writer.make_footer(8 * MiB, fmt.DISK_DYNAMIC, original_size=4 * MiB)
    assert (f.original_size, f.current_size) == (4 * MiB, 8 * MiB)


def test_bitmap_of_is_msb_first():
    bm = writer.bitmap_of([0, 9, 4095])
    assert len(bm) == SECTOR
    assert bm[0] == 0x80 and bm[1] == 0x40 and bm[511] == 0x01
    assert sum(bin(b).count('1') for b in bm) == 3
    assert writer.bitmap_of([3], 4 * KiB)[0] == 0x10


def test_block_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match='block 1 holds 5 bytes'):
        writer.write_dynamic(io.BytesIO(), 4 * MiB, {1: (None, b'x' * 5)})


@pytest.mark.parametrize('idx', [2, 3, 100])
def test_block_outside_the_bat_is_refused(idx):
    # A 4 MiB disk has BAT entries 0 and 1 only: anything else would be
    # written past the BAT, over the batmap and the locators.
    buf = io.BytesIO()
    with pytest.raises((ValueError, errors.VhdError)):
        writer.write_dynamic(buf, 4 * MiB, {idx: (None, bytes(BS))})


def test_forward_only_output_to_a_pipe_like_object():
    class Pipe:
        def __init__(self):
            self.parts = []

        def write(self, data):
            self.parts.append(bytes(data))
            return len(data)

    rnd = random.Random(6)
    blocks, disk = _blocks(rnd, 4 * MiB, fill=1.0)
    fixed = {'unique_id': b'\x05' * 16, 'timestamp': 5}
    pipe = Pipe()
    writer.write_dynamic(pipe, 4 * MiB, blocks, **fixed)
    buf = io.BytesIO()
    writer.write_dynamic(buf, 4 * MiB, blocks, **fixed)
    assert b''.join(pipe.parts) == buf.getvalue()
    del disk
