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
"""VhdFile: random-access writes keep bitmaps, batmap, BAT and footers."""

import array
import os
import random
import struct

import pytest

from tests.unit.vhd import badinput as bi
from tests.unit.vhd import vhdcheck as vc
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import ops

MiB, KiB, SECTOR, BS = vc.MiB, vc.KiB, vc.SECTOR, vc.BS
SPB = BS // SECTOR
FULL = (1 << SPB) - 1


def _new(tmp_path, size, name='d.vhd', **kw):
    path = tmp_path / name
    ops.create(str(path), size, **kw)
    return path


def _bits(sectors):
    """A block mask (sector 0 in the top bit) with these sectors set."""
    mask = 0
    for s in sectors:
        mask |= 1 << (SPB - 1 - s)
    return mask


def _read_back(path):
    """The disk as VhdFile itself reads it: mask() and read_block()."""
    with image.VhdFile(str(path)) as vhd:
        out = bytearray(vhd.size)
        for idx in vhd.allocated():
            mask, data = vhd.mask(idx), vhd.read_block(idx)
            for s in range(vhd.spb):
                if mask >> (vhd.spb - 1 - s) & 1:
                    at = idx * vhd.block_size + s * SECTOR
                    out[at:at + SECTOR] = data[s * SECTOR:(s + 1) * SECTOR]
    return out


# -- writes read back ---------------------------------------------------------

@pytest.mark.parametrize('size,kw', [
    (6 * MiB, {}),
    (5 * MiB + 3 * SECTOR, {}),                 # not a MiB multiple
    (6 * MiB, {'max_table_entries': 2048}),     # preallocated BAT
    (3 * MiB, {'block_size': 256 * KiB}),
])
def test_random_writes_read_back_with_every_reader(tmp_path, size, kw):
    rnd = random.Random(size + len(kw))
    path = _new(tmp_path, size, **kw)
    model = bytearray(size)
    vc.write_runs(path, vc.random_runs(rnd, size, 40), model)
    assert _read_back(path) == model
    vc.converted(path, model)
    vc.assert_tap(path, size)
    vc.qemu_converted(path, model)


def test_write_across_three_blocks(tmp_path):
    path = _new(tmp_path, 8 * MiB)
    data = random.Random(1).randbytes(BS + 8 * KiB)
    with image.VhdFile(str(path), writable=True) as vhd:
        vhd.write(BS - 4 * KiB, data)
        assert vhd.allocated() == [0, 1, 2]
        assert vhd.mask(0) == _bits(range(SPB - 8, SPB))
        assert vhd.mask(1) == FULL
        assert vhd.mask(2) == _bits(range(8))
    model = bytearray(8 * MiB)
    model[BS - 4 * KiB:2 * BS + 4 * KiB] = data
    vc.converted(path, model)
    vc.assert_tap(path, 8 * MiB)
    vc.qemu_converted(path, model)


def test_single_sectors_at_block_edges(tmp_path):
    size = 4 * MiB + SECTOR
    path = _new(tmp_path, size)
    model = bytearray(size)
    runs = [(BS - SECTOR, b'\x01' * 1024), (0, b'\x02' * SECTOR),
            (size - SECTOR, b'\x03' * SECTOR), (2 * BS, b'\x04' * SECTOR)]
    vc.write_runs(path, runs, model)
    with image.VhdFile(str(path)) as vhd:
        assert vhd.mask(0) == _bits([0, SPB - 1])
        assert vhd.mask(1) == _bits([0])
        assert vhd.mask(2) == _bits([0])        # the disk ends there
    assert _read_back(path) == model
    vc.converted(path, model)
    vc.assert_tap(path, size)
    vc.qemu_converted(path, model)


def test_present_mask_writes_only_those_sectors(tmp_path):
    path = _new(tmp_path, 4 * MiB)
    old = b'\xaa' * BS
    new = b'\xbb' * BS
    chosen = [1, 5, 6, 7, 100, SPB - 1]
    with image.VhdFile(str(path), writable=True) as vhd:
        vhd.write(0, old)
        vhd.write(0, new, present=_bits(chosen))
        # A fresh block: only the chosen sectors are set, the rest zero.
        vhd.write(BS, new, present=_bits(chosen))
        assert vhd.mask(0) == FULL
        assert vhd.mask(1) == _bits(chosen)
    model = bytearray(old + bytes(BS))
    for s in chosen:
        model[s * SECTOR:(s + 1) * SECTOR] = new[:SECTOR]
        at = BS + s * SECTOR
        model[at:at + SECTOR] = new[:SECTOR]
    vc.converted(path, model)
    vc.assert_tap(path, 4 * MiB)
    vc.qemu_converted(path, model)


def test_empty_present_mask_allocates_nothing(tmp_path):
    path = _new(tmp_path, 4 * MiB)
    before = vc.sha(path)
    with image.VhdFile(str(path), writable=True) as vhd:
        vhd.write(0, bytes(BS), present=0)
        vhd.write(0, b'')
        assert vhd.allocated() == []
    assert vc.sha(path) == before


def test_batmap_follows_full_blocks(tmp_path):
    path = _new(tmp_path, 8 * MiB)
    with image.VhdFile(str(path), writable=True) as vhd:
        vhd.write(0, b'\x01' * BS)                      # full at once
        vhd.write(BS, b'\x02' * (BS // 2))              # half
        vhd.write(2 * BS, b'\x03' * (BS - SECTOR))      # all but one...
        assert not vhd.batmap[0] & 0x20
        vhd.write(3 * BS - SECTOR, b'\x04' * SECTOR)    # ...then full
        assert vhd.batmap[0] == 0x80 | 0x20
    vc.assert_tap(path, 8 * MiB)        # batmap bit <=> full bitmap


def test_overwrite_keeps_the_block_in_place(tmp_path):
    path = _new(tmp_path, 4 * MiB)
    with image.VhdFile(str(path), writable=True) as vhd:
        vhd.write(4096, b'\x01' * 8192)
        entry, size = vhd.bat[0], vhd.file_size
        vhd.write(0, b'\x02' * 4096 * 3)
        assert (vhd.bat[0], vhd.file_size) == (entry, size)
    assert os.path.getsize(path) == size
    vc.converted(path, b'\x02' * 12288, 4 * MiB)


def test_writes_persist_across_opens(tmp_path):
    rnd = random.Random(2)
    size = 6 * MiB
    path = _new(tmp_path, size)
    model = bytearray(size)
    for _ in range(4):
        vc.write_runs(path, vc.random_runs(rnd, size, 5), model)
        assert _read_back(path) == model
    vc.converted(path, model)
    vc.assert_tap(path, size)


# -- a chain of snapshots -----------------------------------------------------

def test_chain_of_snapshots_reads_back(tmp_path):
    """Base, two snapshots, writes in 4 KiB runs: all readers agree.

    Equal sizes and 4 KiB-aligned runs keep libvhdi within its bugs.
    """
    rnd = random.Random(3)
    size = 6 * MiB
    model = bytearray(size)
    paths = [tmp_path / '2.vhd']
    ops.create(str(paths[0]), size)
    vc.write_runs(paths[0], vc.random_runs(rnd, size, 12, align=4096),
                  model)
    layers = [bytes(model)]
    for name in ('1.vhd', '0.vhd'):
        with image.VhdFile(str(paths[0]), writable=True) as vhd:
            vhd.set_hidden(True)        # what XenServer does to a parent
        child = tmp_path / name
        ops.snapshot(str(child), str(paths[0]))
        paths.insert(0, child)
        vc.write_runs(child, vc.random_runs(rnd, size, 12, align=4096),
                      model)
        layers.append(bytes(model))
    vc.chain_inspected(paths)
    vc.chain_converted(paths, model)
    vc.assert_tap(paths[0], size, fmt.DISK_DIFFERENCING)
    assert vc.libvhdi_read(paths, size) == model
    # Each shorter chain still reads as it was when it was the top.
    assert vc.libvhdi_read(paths[1:], size) == layers[1]
    vc.converted(paths[-1], layers[0])


def test_differencing_unset_sectors_fall_through(tmp_path):
    base = _new(tmp_path, 4 * MiB, name='1.vhd')
    vc.write_runs(base, [(0, b'\x11' * BS)])
    with image.VhdFile(str(base), writable=True) as vhd:
        vhd.set_hidden(True)
    child = tmp_path / '0.vhd'
    ops.snapshot(str(child), str(base))
    vc.write_runs(child, [(8 * SECTOR, b'\x22' * 4096)])
    model = bytearray(b'\x11' * BS + bytes(BS))
    model[4096:8192] = b'\x22' * 4096
    vc.chain_converted([child, base], model)
    assert vc.libvhdi_read([child, base], 4 * MiB) == model


# -- refused writes -----------------------------------------------------------

def _refused_write(path, offset, data, exc_class, writable=True):
    before = vc.sha(path)
    with image.VhdFile(str(path), writable=writable) as vhd:
        with pytest.raises(exc_class) as info:
            vhd.write(offset, data)
    assert vc.sha(path) == before
    return info.value


@pytest.mark.parametrize('offset,length', [
    (4 * MiB + 512, 512),               # past the end
    (4 * MiB, 1024),                    # the last sector and one more
    (0, 4 * MiB + 1024),
    (8 * MiB, 4096),
])
def test_write_past_the_size_is_refused(tmp_path, offset, length):
    path = _new(tmp_path, 4 * MiB + SECTOR)
    exc = _refused_write(path, offset, bytes(length), errors.VhdError)
    text = str(exc)
    assert '\n' not in text and text.startswith(str(path) + ': ')
    assert 'current size' in text


def test_write_at_the_very_end_is_allowed(tmp_path):
    size = 4 * MiB + SECTOR
    path = _new(tmp_path, size)
    vc.write_runs(path, [(size - SECTOR, b'\x09' * SECTOR)])
    vc.converted(path, bytes(size - SECTOR) + b'\x09' * SECTOR)


@pytest.mark.parametrize('offset,length', [(100, 512), (0, 100),
                                           (512, 513)])
def test_unaligned_write_is_refused(tmp_path, offset, length):
    path = _new(tmp_path, 4 * MiB)
    _refused_write(path, offset, bytes(length), ValueError)


@pytest.mark.parametrize('offset', [-SECTOR, -BS, -4 * MiB])
def test_negative_offset_is_refused(tmp_path, offset):
    # divmod of a negative offset gives a negative block index: the BAT
    # "entry" -1 is the last 4 bytes of the dynamic header.
    path = _new(tmp_path, 4 * MiB)
    _refused_write(path, offset, bytes(SECTOR), (ValueError,
                                                 errors.VhdError))
    with image.VhdFile(str(path)):
        pass


def test_write_on_a_read_only_open_is_refused(tmp_path):
    path = _new(tmp_path, 4 * MiB)
    _refused_write(path, 0, bytes(4096), (AssertionError, errors.VhdError),
                   writable=False)


# -- interrupted writes -------------------------------------------------------

class Interrupted(Exception):
    pass


def _count_pwrites(monkeypatch, fail_at=None):
    """Count os.pwrite calls; raise instead of the fail_at-th one."""
    real = os.pwrite
    calls = [0]

    def pwrite(fd, data, offset):
        calls[0] += 1
        if calls[0] == fail_at:
            raise Interrupted('write %d' % calls[0])
        return real(fd, data, offset)
    monkeypatch.setattr(image.os, 'pwrite', pwrite)
    return calls


def test_interrupted_write_leaves_a_valid_file(tmp_path, monkeypatch):
    """Every prefix of a write's steps is a valid VHD holding, for each
    sector, either its old or its new contents (blocks 1 and 2 are new,
    block 0 is overwritten)."""
    size = 6 * MiB
    orig = _new(tmp_path, size, name='orig.vhd')
    old = bytearray(size)
    vc.write_runs(orig, [(0, b'\x01' * BS)], old)
    new = bytearray(old)
    run = (BS - 4096, b'\x02' * (BS + 8192))
    new[run[0]:run[0] + len(run[1])] = run[1]
    calls = _count_pwrites(monkeypatch)
    work = tmp_path / 'work.vhd'
    work.write_bytes(orig.read_bytes())
    vc.write_runs(work, [run])
    total = calls[0]
    assert total >= 6
    for n in range(1, total + 1):
        monkeypatch.undo()
        work.write_bytes(orig.read_bytes())
        _count_pwrites(monkeypatch, fail_at=n)
        with pytest.raises(Interrupted):
            vc.write_runs(work, [run])
        monkeypatch.undo()
        got = _read_back(work)
        for at in range(0, size, SECTOR):
            sector = got[at:at + SECTOR]
            assert sector in (old[at:at + SECTOR], new[at:at + SECTOR]), \
                (n, at)
        vc.converted(work, got)


# -- the rest of the API ------------------------------------------------------

def test_set_hidden_writes_both_footers(tmp_path):
    path = _new(tmp_path, 4 * MiB)
    with image.VhdFile(str(path), writable=True) as vhd:
        vhd.set_hidden(True)
    raw = path.read_bytes()
    assert raw[:SECTOR] == raw[-SECTOR:]
    with image.VhdFile(str(path)) as vhd:
        assert vhd.footer.hidden == 1
    with image.VhdFile(str(path), writable=True) as vhd:
        vhd.set_hidden(False)
    vc.assert_tap(path, 4 * MiB)


def test_header_rewrite(tmp_path):
    path = _new(tmp_path, 4 * MiB)
    with image.VhdFile(str(path), writable=True) as vhd:
        vhd.header.parent_timestamp = 77
        vhd.write_header()
        vhd.flush()
    with image.VhdFile(str(path)) as vhd:
        assert vhd.header.parent_timestamp == 77


def test_context_manager_closes(tmp_path):
    path = _new(tmp_path, 4 * MiB)
    vhd = image.VhdFile(str(path))
    with vhd:
        fd = vhd.fd
    assert vhd.fd is None
    with pytest.raises(OSError):
        os.fstat(fd)
    vhd.close()


def test_fixed_disk_opens(tmp_path):
    path = tmp_path / 'f.vhd'
    path.write_bytes(bytes(bi.fixed(b'\x05' * MiB)))
    with image.VhdFile(str(path)) as vhd:
        assert vhd.header is None
        assert vhd.size == MiB


# -- bad input ----------------------------------------------------------------

def _damaged(tmp_path, damage):
    good = _new(tmp_path, 4 * MiB)
    vc.write_runs(good, [(0, b'\x01' * BS)])
    buf = bytearray(good.read_bytes())
    damage(buf)
    path = tmp_path / 'bad.vhd'
    path.write_bytes(bytes(buf))
    return path


def _cut(n):
    def damage(buf):
        del buf[n:]
    return damage


def _footer(code, off, value, which=('copy', 'footer'), seal=True):
    def damage(buf):
        bi.put_footer(buf, code, off, value, which, seal)
    return damage


def _header(code, off, value, seal=True):
    def damage(buf):
        bi.put_header(buf, code, off, value, seal)
    return damage


def _bat(idx, sector):
    def damage(buf):
        bi.put_bat(buf, idx, sector)
    return damage


BAD = [
    ('cut in the block', _cut(BS // 2), errors.VhdError, None),
    ('cut in the BAT', _cut(1600), errors.VhdError, None),
    ('tiny', _cut(100), errors.InvalidFooter, 'file size'),
    ('footer checksum', _footer('>I', bi.F_CHECKSUM, 1, seal=False),
     errors.InvalidFooter, 'footer checksum'),
    ('footer cookie', _footer('>8s', 0, b'conectiX'),
     errors.InvalidFooter, 'footer cookie'),
    ('copy differs', _footer('>I', 24, 99, which='copy'),
     errors.InvalidFooter, 'footer'),
    ('size not sectors', _footer('>Q', bi.F_CURRENT_SIZE, 4 * MiB + 1),
     errors.InvalidFooter, 'footer current size'),
    ('header checksum', _header('>I', bi.H_CHECKSUM, 5, seal=False),
     errors.InvalidHeader, 'dynamic header checksum'),
    ('block size', _header('>I', bi.H_BLOCK_SIZE, 3000),
     errors.InvalidHeader, 'block size'),
    ('BAT too short', _header('>I', bi.H_MAX_ENTRIES, 1),
     errors.InvalidHeader, 'max table entries'),
    ('BAT past EOF', _header('>Q', bi.H_TABLE_OFFSET, 1 << 40),
     errors.InvalidHeader, 'table offset'),
    ('block past EOF', _bat(1, 1 << 24), errors.InvalidTable,
     'BAT entry 1'),
    ('header past EOF', _footer('>Q', bi.F_DATA_OFFSET, 1 << 40),
     errors.VhdError, None),
    ('header at 2**64-1', _footer('>Q', bi.F_DATA_OFFSET,
                                  fmt.NO_DATA_OFFSET), errors.VhdError,
     None),
]


@pytest.mark.parametrize('damage,exc_class,field',
                         [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_damaged_file_is_refused_in_one_line(tmp_path, damage, exc_class,
                                             field):
    path = _damaged(tmp_path, damage)
    before = vc.sha(path)
    for writable in (False, True):
        with pytest.raises(errors.VhdError) as info:
            image.VhdFile(str(path), writable=writable)
        exc = info.value
        assert isinstance(exc, exc_class), repr(exc)
        text = str(exc)
        assert '\n' not in text
        assert text.startswith(str(path) + ': '), text
        assert exc.field, text
        if field is not None:
            assert exc.field == field, text
            assert ': %s: ' % field in text, text
    assert vc.sha(path) == before


def test_missing_file(tmp_path):
    with pytest.raises(errors.VhdError) as info:
        image.VhdFile(str(tmp_path / 'nope.vhd'))
    assert str(info.value).startswith(str(tmp_path / 'nope.vhd') + ': ')


def test_directory_is_refused(tmp_path):
    with pytest.raises(errors.VhdError) as info:
        image.VhdFile(str(tmp_path))
    assert str(info.value).startswith(str(tmp_path) + ': ')


def test_fixed_disk_of_the_wrong_size(tmp_path):
    buf = bi.fixed(bytes(MiB))
    path = tmp_path / 'f.vhd'
    path.write_bytes(bytes(buf[:SECTOR]) + bytes(buf))
    with pytest.raises(errors.InvalidFooter) as info:
        image.VhdFile(str(path))
    assert info.value.field == 'current size'


def test_no_fd_leaks_on_refusal(tmp_path):
    path = _damaged(tmp_path, _bat(1, 1 << 24))
    before = len(os.listdir('/proc/self/fd'))
    for _ in range(20):
        with pytest.raises(errors.VhdError):
            image.VhdFile(str(path))
    assert len(os.listdir('/proc/self/fd')) == before


def test_big_endian_helper():
    values = array.array('I', [1, 0xFFFFFFFF, 0x01020304])
    assert image.big_endian(values) == struct.pack('>3I', *values)
