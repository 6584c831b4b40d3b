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
"""The vhd-util operations cinder's image_utils needs, done on files."""

import os
import random
import struct
import uuid

import pytest

from tests import vhd_factory as vf
from tests.unit.vhd import badinput as bi
from tests.unit.vhd import vhdcheck as vc
from xenapinfs_driver.vhd import chain as chainmod
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import journal as journalmod
from xenapinfs_driver.vhd import ops
from xenapinfs_driver.vhd import resize as resizemod
from xenapinfs_driver.vhd import writer

MiB, KiB, SECTOR, BS = vc.MiB, vc.KiB, vc.SECTOR, vc.BS
BIG = 600 * MiB             # 300 BAT entries: 3 sectors instead of 1


def _s(path):
    return str(path)


def _filled(path, size, rnd=None, count=10, model=None, align=SECTOR,
            **kw):
    """A new dynamic VHD with random runs; returns the disk it holds."""
    ops.create(_s(path), size, **kw)
    model = bytearray(size) if model is None else model
    if count:
        vc.write_runs(path, vc.random_runs(rnd or random.Random(size),
                                           size, count, align=align), model)
    return model


def _hide(path):
    with image.VhdFile(_s(path), writable=True) as vhd:
        vhd.set_hidden(True)


def _snap(child, parent, model=None, rnd=None, count=10, size=None,
          align=SECTOR):
    """Hide parent (as XenServer does), snapshot it, write to the child."""
    _hide(parent)
    ops.snapshot(_s(child), _s(parent), size)
    if model is not None:
        size = ops.get_size(_s(child))
        if len(model) < size:
            model.extend(bytes(size - len(model)))
        vc.write_runs(child, vc.random_runs(rnd or random.Random(size),
                                            size, count, align=align),
                      model)
    return model


def _one_line(exc, path):
    text = str(exc)
    assert text and '\n' not in text and '\r' not in text, repr(text)
    assert text.startswith(_s(path) + ': '), text
    return text


def _hashes(paths):
    return [vc.sha(p) for p in paths]


# -- create -------------------------------------------------------------------

@pytest.mark.parametrize('size,kw', [
    (4 * MiB, {}),
    (5 * MiB + 3 * SECTOR, {}),
    (10 * MiB, {'max_table_entries': 1024}),
    (3 * MiB, {'block_size': 512 * KiB}),
])
def test_create_dynamic(tmp_path, size, kw):
    path = tmp_path / 'new.vhd'
    ops.create(_s(path), size, **kw)
    assert vc.listing(tmp_path) == ['new.vhd']
    vc.assert_tap(path, size)
    with image.VhdFile(_s(path)) as vhd:
        assert vhd.footer.original_size == size
        assert vhd.header.max_table_entries == kw.get(
            'max_table_entries', -(-size // kw.get('block_size', BS)))
        assert vhd.block_size == kw.get('block_size', BS)
        assert vhd.allocated() == []
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    vc.converted(path, b'', size)
    vc.qemu_converted(path, b'', size)
    assert ops.get_size(_s(path)) == size
    assert chainmod.parent_path(_s(path)) is None
    assert chainmod.chain_of(_s(path)) == [_s(path)]


def test_create_refuses_an_existing_file(tmp_path):
    path = tmp_path / 'd.vhd'
    path.write_bytes(b'precious')
    with pytest.raises(errors.VhdError) as info:
        ops.create(_s(path), 4 * MiB)
    _one_line(info.value, path)
    assert path.read_bytes() == b'precious'
    assert vc.listing(tmp_path) == ['d.vhd']


@pytest.mark.parametrize('size,kw', [
    (1000, {}),                                     # not sectors
    (-SECTOR, {}),
    (-4 * MiB, {}),
    (8 * MiB, {'max_table_entries': 2}),            # cannot map 8 MiB
    (8 * MiB, {'block_size': 3000}),                # not a power of two
    (8 * MiB, {'block_size': 256}),
    ((2 << 40) + 2 * MiB, {}),                      # past the 2 TiB limit
])
def test_create_refuses_bad_arguments(tmp_path, size, kw):
    # Whatever create writes must open again: it refuses instead.
    path = tmp_path / 'd.vhd'
    with pytest.raises(errors.VhdError) as info:
        ops.create(_s(path), size, **kw)
    _one_line(info.value, path)
    assert vc.listing(tmp_path) == []


def test_new_files_in_a_missing_directory(tmp_path):
    base = tmp_path / 'base.vhd'
    _filled(base, 4 * MiB, count=2)
    missing = tmp_path / 'no' / 'such'
    calls = [
        lambda p: ops.create(p, 4 * MiB),
        lambda p: ops.snapshot(p, _s(base)),
        lambda p: chainmod.flatten(_s(base), p),
    ]
    for call in calls:
        with pytest.raises(errors.VhdError) as info:
            call(_s(missing / 'new.vhd'))
        assert '\n' not in str(info.value)
        assert str(missing) in str(info.value)
    assert vc.listing(tmp_path) == ['base.vhd']


def test_create_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    def broken(fobj, *args, **kw):
        fobj.write(b'x' * 5000)
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(writer, 'write_dynamic', broken)
    with pytest.raises(OSError):
        ops.create(_s(tmp_path / 'd.vhd'), 4 * MiB)
    assert vc.listing(tmp_path) == []


# -- snapshot, get_size, parent_path, chain_of --------------------------------

def test_snapshot_records_the_parent(tmp_path):
    base = tmp_path / 'base.vhd'
    model = _filled(base, 6 * MiB, align=4096)
    child = tmp_path / 'snap.vhd'
    _snap(child, base, model, align=4096)
    with image.VhdFile(_s(base)) as par, image.VhdFile(_s(child)) as kid:
        assert kid.footer.disk_type == fmt.DISK_DIFFERENCING
        assert kid.header.parent_unique_id == par.footer.unique_id
        assert kid.header.parent_name == 'base.vhd'
        assert kid.header.parent_timestamp == writer.file_timestamp(
            _s(base))
        assert kid.footer.unique_id != par.footer.unique_id
        assert kid.block_size == par.block_size
        assert kid.footer.original_size == kid.size == par.size
    vc.assert_tap(child, 6 * MiB, fmt.DISK_DIFFERENCING)
    layer = vc.chain_inspected([child, base]).layers[0]
    assert layer.locators == [('MacX', 'file://./base.vhd'),
                              ('W2ku', '.\\base.vhd'),
                              ('W2ru', '.\\base.vhd')]
    assert chainmod.parent_path(_s(child)) == _s(base)
    assert chainmod.chain_of(_s(child)) == [_s(child), _s(base)]
    vc.chain_converted([child, base], model)
    assert vc.libvhdi_read([child, base], 6 * MiB) == model


def test_snapshot_hides_the_parent(tmp_path):
    # "hidden flag on parents": a chain made by snapshot must pass
    # tgz.inspect without the hidden-flag warning, and the parent's time
    # stamp must be taken after the parent was last modified.
    base = tmp_path / 'base.vhd'
    _filled(base, 4 * MiB)
    child = tmp_path / 'snap.vhd'
    ops.snapshot(_s(child), _s(base))
    with image.VhdFile(_s(base)) as par, image.VhdFile(_s(child)) as kid:
        assert par.footer.hidden == 1
        assert kid.footer.hidden == 0
        assert kid.header.parent_timestamp == writer.file_timestamp(
            _s(base))
    vc.chain_inspected([child, base])


def test_snapshot_of_a_snapshot(tmp_path):
    rnd = random.Random(1)
    paths = [tmp_path / 'a.vhd']
    model = _filled(paths[0], 3 * MiB, rnd, block_size=512 * KiB,
                    align=4096)
    for name in ('b.vhd', 'c.vhd'):
        child = tmp_path / name
        _snap(child, paths[0], model, rnd, align=4096)
        paths.insert(0, child)
    with image.VhdFile(_s(paths[0])) as top:
        assert top.block_size == 512 * KiB
    assert chainmod.chain_of(_s(paths[0])) == [_s(p) for p in paths]
    vc.chain_inspected(paths)
    vc.chain_converted(paths, model)
    # Not libvhdi: with blocks other than 2 MiB it reads only the first
    # sector of each block (checked with qemu-img below on the base).
    with image.VhdFile(_s(paths[-1])) as vhd:
        assert vhd.block_size == 512 * KiB


def test_snapshot_in_another_directory(tmp_path):
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    base = tmp_path / 'a' / 'base.vhd'
    model = _filled(base, 4 * MiB)
    child = tmp_path / 'b' / 'snap.vhd'
    _snap(child, base, model)
    with image.VhdFile(_s(child)) as kid:
        assert kid.header.parent_name == 'base.vhd'
    assert chainmod.parent_path(_s(child)) == _s(base)
    vc.chain_converted([child, base], model)


def test_snapshot_bigger_than_the_parent(tmp_path):
    base = tmp_path / 'base.vhd'
    model = _filled(base, 4 * MiB)
    child = tmp_path / 'snap.vhd'
    size = 8 * MiB + 5 * SECTOR
    _snap(child, base, model, size=size)
    assert ops.get_size(_s(child)) == size == len(model)
    with image.VhdFile(_s(child)) as kid:
        assert kid.footer.original_size == size
        assert kid.footer.chs == fmt.chs_geometry(size)
    vc.chain_converted([child, base], model)


def test_snapshot_refusals(tmp_path):
    base = tmp_path / 'base.vhd'
    _filled(base, 4 * MiB)
    before = vc.sha(base)
    for args in ((2 * MiB,), (4 * MiB + 100,)):
        with pytest.raises(errors.VhdError) as info:
            ops.snapshot(_s(tmp_path / 'snap.vhd'), _s(base), *args)
        _one_line(info.value, tmp_path / 'snap.vhd')
    with pytest.raises(errors.VhdError):
        ops.snapshot(_s(tmp_path / 'snap.vhd'), _s(tmp_path / 'no.vhd'))
    assert vc.sha(base) == before
    assert vc.listing(tmp_path) == ['base.vhd']


def test_get_size_of_every_kind(tmp_path):
    fixed = tmp_path / 'f.vhd'
    fixed.write_bytes(bytes(bi.fixed(bytes(MiB + SECTOR))))
    assert ops.get_size(_s(fixed)) == MiB + SECTOR
    ops.create(_s(tmp_path / 'd.vhd'), 7 * MiB + SECTOR)
    assert ops.get_size(_s(tmp_path / 'd.vhd')) == 7 * MiB + SECTOR
    with pytest.raises(errors.VhdError):
        ops.get_size(_s(tmp_path / 'missing.vhd'))


def test_parent_not_found(tmp_path):
    base = tmp_path / 'base.vhd'
    _filled(base, 4 * MiB, count=0)
    child = tmp_path / 'snap.vhd'
    ops.snapshot(_s(child), _s(base))
    os.rename(base, tmp_path / 'moved.vhd')
    for call in (chainmod.parent_path, chainmod.chain_of):
        with pytest.raises(errors.ChainError) as info:
            call(_s(child))
        text = _one_line(info.value, child)
        assert 'base.vhd' in text


def test_chain_that_loops(tmp_path):
    base = tmp_path / 'base.vhd'
    _filled(base, 4 * MiB, count=0)
    a, b = tmp_path / 'a.vhd', tmp_path / 'b.vhd'
    ops.snapshot(_s(a), _s(base))
    ops.snapshot(_s(b), _s(a))
    chainmod.set_parent(_s(a), _s(b))
    with pytest.raises(errors.ChainError) as info:
        chainmod.chain_of(_s(b))
    _one_line(info.value, b)


# -- set_parent ---------------------------------------------------------------

def _moved_chain(tmp_path):
    """A child whose parent was renamed, and the disk they hold."""
    base = tmp_path / 'base.vhd'
    model = _filled(base, 4 * MiB)
    child = tmp_path / 'snap.vhd'
    _snap(child, base, model)
    moved = tmp_path / 'renamed-parent.vhd'
    os.rename(base, moved)
    os.utime(moved, (1e9, 1e9))
    return child, moved, model


def test_set_parent_rewrites_the_header(tmp_path):
    child, moved, model = _moved_chain(tmp_path)
    blocks = []
    with image.VhdFile(_s(child)) as kid:
        blocks = [(i, kid.mask(i), kid.read_block(i))
                  for i in kid.allocated()]
    chainmod.set_parent(_s(child), _s(moved))
    with image.VhdFile(_s(moved)) as par, image.VhdFile(_s(child)) as kid:
        assert kid.header.parent_unique_id == par.footer.unique_id
        assert kid.header.parent_name == 'renamed-parent.vhd'
        assert kid.header.parent_timestamp == 1000000000 - fmt.VHD_EPOCH
        assert [(i, kid.mask(i), kid.read_block(i))
                for i in kid.allocated()] == blocks
    assert chainmod.parent_path(_s(child)) == _s(moved)
    vc.chain_converted([child, moved], model)


def test_set_parent_locators_read_back(tmp_path):
    # Every rewritten locator must decode to the new path, as blktap and
    # our reader read them (data length = the encoded path's length).
    child, moved, model = _moved_chain(tmp_path)
    chainmod.set_parent(_s(child), _s(moved))
    layer = vc.chain_inspected([child, moved]).layers[0]
    assert layer.locators == [('MacX', 'file://./renamed-parent.vhd'),
                              ('W2ku', '.\\renamed-parent.vhd'),
                              ('W2ru', '.\\renamed-parent.vhd')]
    with image.VhdFile(_s(child)) as kid:
        for loc in kid.header.locators[:3]:
            assert loc.data_length == len(writer.encode_locator(
                loc.code, dict(writer.xenserver_locators(
                    'renamed-parent.vhd'))[loc.code]))


def test_set_parent_to_another_directory(tmp_path):
    child, moved, model = _moved_chain(tmp_path)
    (tmp_path / 'sub').mkdir()
    there = tmp_path / 'sub' / 'p.vhd'
    os.rename(moved, there)
    chainmod.set_parent(_s(child), _s(there))
    assert chainmod.parent_path(_s(child)) == _s(there)
    assert chainmod.chain_of(_s(child)) == [_s(child), _s(there)]
    vc.chain_converted([child, there], model)


def test_set_parent_to_a_different_disk(tmp_path):
    child, moved, _ = _moved_chain(tmp_path)
    other = tmp_path / 'other.vhd'
    _filled(other, 4 * MiB, count=0)
    chainmod.set_parent(_s(child), _s(other))
    with image.VhdFile(_s(other)) as par, image.VhdFile(_s(child)) as kid:
        assert kid.header.parent_unique_id == par.footer.unique_id
    assert chainmod.parent_path(_s(child)) == _s(other)


def test_set_parent_name_too_long_for_the_locators(tmp_path):
    child, moved, _ = _moved_chain(tmp_path)
    deep = tmp_path / ('d' * 200)
    deep.mkdir()
    far = deep / ('p' * 200 + '.vhd')
    os.rename(moved, far)
    before = vc.sha(child)
    with pytest.raises(errors.VhdError) as info:
        chainmod.set_parent(_s(child), _s(far))
    text = _one_line(info.value, child)
    assert 'parent locator' in text
    assert vc.sha(child) == before


def test_set_parent_refusals(tmp_path):
    child, moved, _ = _moved_chain(tmp_path)
    dynamic = tmp_path / 'dyn.vhd'
    _filled(dynamic, 4 * MiB, count=2)
    hashes = _hashes([child, moved, dynamic])
    with pytest.raises(errors.ChainError) as info:
        chainmod.set_parent(_s(dynamic), _s(moved))
    assert info.value.field == 'disk type'
    _one_line(info.value, dynamic)
    with pytest.raises(errors.VhdError) as info:
        chainmod.set_parent(_s(child), _s(tmp_path / 'missing.vhd'))
    _one_line(info.value, tmp_path / 'missing.vhd')
    assert _hashes([child, moved, dynamic]) == hashes


# -- resize -------------------------------------------------------------------

def _differs_only_in_footers(before: bytes, after: bytes) -> None:
    assert len(before) == len(after)
    assert before[SECTOR:-SECTOR] == after[SECTOR:-SECTOR]


@pytest.mark.parametrize('new_size', [BIG, BIG + 3 * SECTOR,
                                      8 * MiB + SECTOR])
@pytest.mark.parametrize('with_journal', [False, True])
def test_resize_footer_only_on_a_preallocated_bat(tmp_path, new_size,
                                                  with_journal):
    path = tmp_path / 'd.vhd'
    model = _filled(path, 4 * MiB + SECTOR, max_table_entries=512)
    before = path.read_bytes()
    jpath = tmp_path / 'resize.journal' if with_journal else None
    resizemod.resize(_s(path), new_size, _s(jpath) if jpath else None)
    assert vc.listing(tmp_path) == ['d.vhd']
    _differs_only_in_footers(before, path.read_bytes())
    with image.VhdFile(_s(path)) as vhd:
        assert vhd.size == new_size
        assert vhd.footer.original_size == 4 * MiB + SECTOR
        assert vhd.header.max_table_entries == 512
    vc.assert_tap(path, new_size)
    vc.converted(path, model, new_size)
    vc.qemu_converted(path, model, new_size)


def test_resize_grows_the_bat_moving_blocks(tmp_path):
    path = tmp_path / 'd.vhd'
    model = bytearray(4 * MiB)
    ops.create(_s(path), 4 * MiB)
    rnd = random.Random(7)
    vc.write_runs(path, [(0, rnd.randbytes(BS)),
                         (BS + 8 * KiB, rnd.randbytes(100 * KiB))], model)
    with image.VhdFile(_s(path)) as vhd:
        old_bat = list(vhd.bat)
    jpath = tmp_path / 'j'
    resizemod.resize(_s(path), BIG, _s(jpath))
    assert vc.listing(tmp_path) == ['d.vhd']        # journal removed
    with image.VhdFile(_s(path)) as vhd:
        assert vhd.size == BIG
        assert vhd.header.max_table_entries >= 300
        assert vhd.bat[0] != old_bat[0]             # moved to the end
        assert vhd.bat[1] == old_bat[1]             # not in the way
        assert vhd.bat[0] > vhd.bat[1]
        assert set(vhd.bat[2:]) == {fmt.BAT_UNUSED}
    vc.assert_tap(path, BIG)
    vc.converted(path, model, BIG)
    vc.qemu_converted(path, model, BIG)
    # The grown disk takes writes anywhere.
    model = vc.Sparse(BIG, model)
    vc.write_runs(path, [(BIG - 8 * KiB, b'\x77' * 8 * KiB),
                         (300 * MiB, b'\x66' * 4096)], model)
    vc.assert_tap(path, BIG)
    vc.converted(path, model)
    vc.qemu_converted(path, model)


@pytest.mark.parametrize('old,new', [
    (5 * MiB + SECTOR, 9 * MiB + 3 * SECTOR),     # BAT grows in its sector
    (5 * MiB + SECTOR, BIG + SECTOR),             # BAT needs more sectors
    (4 * MiB, 257 * MiB),                         # one more BAT sector
])
def test_resize_sizes_not_mib_multiples(tmp_path, old, new):
    path = tmp_path / 'd.vhd'
    model = _filled(path, old, count=20)
    vc.write_runs(path, [(old - SECTOR, b'\x42' * SECTOR)], model)
    resizemod.resize(_s(path), new, _s(tmp_path / 'j'))
    assert vc.listing(tmp_path) == ['d.vhd']
    vc.assert_tap(path, new)
    vc.converted(path, model, new)
    vc.qemu_converted(path, model, new)
    with image.VhdFile(_s(path)) as vhd:
        assert vhd.footer.original_size == old


@pytest.mark.parametrize('size', [BIG, 2 << 30])
def test_resize_differencing_disk_moves_its_locators(tmp_path, size):
    # 600 MiB: the locators move, the blocks stay; 2 GiB: the first
    # block is in the way of the locators' new place and moves too.
    base = tmp_path / 'base.vhd'
    model = _filled(base, 4 * MiB)
    child = tmp_path / 'snap.vhd'
    _snap(child, base, model)
    with image.VhdFile(_s(child)) as kid:
        first = min(e for e in kid.bat if e != fmt.BAT_UNUSED)
        moved = [i for i, e in enumerate(kid.bat) if e == first]
    resizemod.resize(_s(child), size, _s(tmp_path / 'j'))
    assert vc.listing(tmp_path) == ['base.vhd', 'snap.vhd']
    assert chainmod.parent_path(_s(child)) == _s(base)
    with image.VhdFile(_s(child)) as kid:
        assert (kid.bat[moved[0]] != first) == (size > BIG)
    vc.assert_tap(child, size, fmt.DISK_DIFFERENCING)
    layer = vc.chain_inspected([child, base]).layers[0]
    assert layer.locators[0] == ('MacX', 'file://./base.vhd')
    vc.chain_converted([child, base], model, size)


def test_resize_empty_disk_needing_a_bigger_bat(tmp_path):
    # Nothing to move, but the new BAT and batmap reach past the old
    # footer: the footer must end up after them.
    path = tmp_path / 'd.vhd'
    ops.create(_s(path), 4 * MiB)
    resizemod.resize(_s(path), BIG, _s(tmp_path / 'j'))
    vc.assert_tap(path, BIG)
    vc.converted(path, b'', BIG)


def test_resize_fresh_snapshot(tmp_path):
    # cinder's extend of a volume that was just cloned: an empty child.
    base = tmp_path / 'base.vhd'
    model = _filled(base, 4 * MiB)
    child = tmp_path / 'snap.vhd'
    _snap(child, base)
    resizemod.resize(_s(child), BIG, _s(tmp_path / 'j'))
    assert chainmod.parent_path(_s(child)) == _s(base)
    vc.chain_converted([child, base], model, BIG)


def test_resize_with_small_blocks_moves_them_out_of_the_way(tmp_path):
    # 4 KiB blocks: the grown BAT (64 KiB) is bigger than the whole file
    # (4 blocks of data), so the moved blocks must land past the new
    # metadata, not at the old end of the file.
    path = tmp_path / 'd.vhd'
    model = bytearray(64 * KiB)
    ops.create(_s(path), 64 * KiB, block_size=4 * KiB)
    vc.write_runs(path, [(i * 4 * KiB, bytes([i + 1]) * 4 * KiB)
                         for i in range(4)], model)
    resizemod.resize(_s(path), 64 * MiB, _s(tmp_path / 'j'))
    vc.assert_tap(path, 64 * MiB)
    vc.converted(path, model, 64 * MiB)


def test_resize_to_the_same_size_changes_nothing(tmp_path):
    path = tmp_path / 'd.vhd'
    _filled(path, 4 * MiB)
    before = vc.sha(path)
    resizemod.resize(_s(path), 4 * MiB, _s(tmp_path / 'j'))
    assert vc.sha(path) == before
    assert vc.listing(tmp_path) == ['d.vhd']


def _fixed(tmp_path):
    path = tmp_path / 'd.vhd'
    path.write_bytes(bytes(bi.fixed(bytes(4 * MiB))))
    return path


def _dynamic(tmp_path):
    path = tmp_path / 'd.vhd'
    _filled(path, 4 * MiB)
    return path


def _prealloc(tmp_path):
    path = tmp_path / 'd.vhd'
    _filled(path, 4 * MiB, max_table_entries=(1 << 20) + 1)
    return path


@pytest.mark.parametrize('make,size,journal,field', [
    (_dynamic, 2 * MiB, 'j', 'size'),                   # shrink
    (_dynamic, 8 * MiB + 100, 'j', 'size'),             # not sectors
    (_fixed, 8 * MiB, 'j', 'disk type'),
    (_dynamic, BIG, None, 'max table entries'),         # needs -j
    (_dynamic, BIG, 'missing-dir/j', None),
    (_prealloc, (2 << 40) + 2 * MiB, None, None),       # past 2 TiB
    (_dynamic, (2 << 40) + 2 * MiB, 'j', None),         # the same, -j
])
def test_resize_refusals_leave_the_file_as_it_was(tmp_path, make, size,
                                                  journal, field):
    path = make(tmp_path)
    before = vc.sha(path)
    jpath = _s(tmp_path / journal) if journal else None
    with pytest.raises(errors.VhdError) as info:
        resizemod.resize(_s(path), size, jpath)
    if journal != 'missing-dir/j':
        _one_line(info.value, path)
    assert '\n' not in str(info.value)
    if field:
        assert info.value.field == field
    assert vc.sha(path) == before
    assert vc.listing(tmp_path) == ['d.vhd']
    with image.VhdFile(_s(path)):
        pass


def test_resize_refuses_while_a_journal_is_there(tmp_path):
    path = _dynamic(tmp_path)
    jpath = tmp_path / 'j'
    jpath.write_bytes(b'an earlier, interrupted resize')
    before = vc.sha(path)
    for size in (5 * MiB, BIG):
        with pytest.raises(errors.TargetError) as info:
            resizemod.resize(_s(path), size, _s(jpath))
        _one_line(info.value, jpath)
    assert vc.sha(path) == before
    assert jpath.read_bytes() == b'an earlier, interrupted resize'


# -- crash safety -------------------------------------------------------------

class Interrupted(Exception):
    pass


def _patch_pwrite(monkeypatch, fail_at=None, torn=False):
    """Count os.pwrite calls (ops and image share os); make the fail_at-th
    raise, after writing its first half when torn."""
    real = os.pwrite
    calls = [0]

    def pwrite(fd, data, offset):
        calls[0] += 1
        if calls[0] == fail_at:
            if torn:
                real(fd, bytes(data)[:len(data) // 2], offset)
            raise Interrupted('write %d' % calls[0])
        return real(fd, data, offset)
    monkeypatch.setattr(ops.os, 'pwrite', pwrite)
    monkeypatch.setattr(image.os, 'pwrite', pwrite)
    return calls


def _scenario_moving(tmp_path):
    path = tmp_path / 'd.vhd'
    ops.create(_s(path), 4 * MiB)
    vc.write_runs(path, [(0, b'\x01' * BS), (BS, b'\x02' * 4096)])
    return path, BIG


def _scenario_footer_only(tmp_path):
    path = tmp_path / 'd.vhd'
    _filled(path, 4 * MiB, max_table_entries=512)
    return path, BIG + SECTOR


def _scenario_in_place(tmp_path):
    path = tmp_path / 'd.vhd'
    _filled(path, 5 * MiB + SECTOR)
    return path, 9 * MiB


def _scenario_child(tmp_path):
    base = tmp_path / 'base.vhd'
    _filled(base, 4 * MiB, count=2)
    path = tmp_path / 'd.vhd'
    _snap(path, base, bytearray(4 * MiB), count=4)
    return path, BIG


def _scenario_empty(tmp_path):
    path = tmp_path / 'd.vhd'
    ops.create(_s(path), 4 * MiB)
    return path, BIG


SCENARIOS = [_scenario_moving, _scenario_footer_only, _scenario_in_place,
             _scenario_child, _scenario_empty]


@pytest.mark.parametrize('torn', [False, True], ids=['clean', 'torn'])
@pytest.mark.parametrize('scenario', SCENARIOS,
                         ids=[s.__name__[10:] for s in SCENARIOS])
def test_interrupted_resize_is_reverted_byte_for_byte(tmp_path, monkeypatch,
                                                      scenario, torn):
    path, size = scenario(tmp_path)
    orig = path.read_bytes()
    digest = vc.sha(path)
    jpath = tmp_path / 'resize.journal'
    listing = vc.listing(tmp_path)
    # A full run, to count the writes; it removes its journal.
    calls = _patch_pwrite(monkeypatch)
    resizemod.resize(_s(path), size, _s(jpath))
    monkeypatch.undo()
    total = calls[0]
    assert total >= 2
    assert vc.listing(tmp_path) == listing
    for n in range(1, total + 1):
        path.write_bytes(orig)
        _patch_pwrite(monkeypatch, fail_at=n, torn=torn)
        with pytest.raises(Interrupted):
            resizemod.resize(_s(path), size, _s(jpath))
        monkeypatch.undo()
        assert jpath.exists(), n            # the journal stays
        # Nothing else may resize meanwhile (with a size other than the
        # one the torn file may already show).
        with pytest.raises(errors.VhdError):
            resizemod.resize(_s(path), size + BS, _s(jpath))
        journalmod.revert(_s(path), _s(jpath))
        assert vc.sha(path) == digest, n
        assert vc.listing(tmp_path) == listing
    # After a revert, the resize can be done again, and gives a valid
    # file.
    resizemod.resize(_s(path), size, _s(jpath))
    assert vc.listing(tmp_path) == listing
    with image.VhdFile(_s(path)) as vhd:
        assert vhd.size == size


# -- coalesce -----------------------------------------------------------------

def _pair(tmp_path, *, size=6 * MiB, child_size=None, align=SECTOR):
    """A parent with data, its child with data; the chain's disk."""
    rnd = random.Random(11)
    base = tmp_path / '1.vhd'
    model = _filled(base, size, rnd, count=12, align=align)
    child = tmp_path / '0.vhd'
    _snap(child, base, model, rnd, count=12, size=child_size, align=align)
    return child, base, model


def _present_sectors(path):
    with image.VhdFile(_s(path)) as vhd:
        return sum(vhd.mask(i).bit_count() for i in vhd.allocated())


def test_coalesce_copies_the_childs_sectors(tmp_path):
    child, base, model = _pair(tmp_path)
    # Sectors where only the parent has data, in blocks the child has.
    with image.VhdFile(_s(base), writable=True) as vhd:
        vhd.write(BS + 100 * SECTOR, b'\x5a' * SECTOR)
    model[BS + 100 * SECTOR:BS + 101 * SECTOR] = b'\x5a' * SECTOR
    with image.VhdFile(_s(child), writable=True) as vhd:
        vhd.write(BS + 99 * SECTOR, b'\xa5' * SECTOR)
        vhd.write(BS + 101 * SECTOR, b'\xa5' * SECTOR)
    model[BS + 99 * SECTOR:BS + 100 * SECTOR] = b'\xa5' * SECTOR
    model[BS + 101 * SECTOR:BS + 102 * SECTOR] = b'\xa5' * SECTOR
    child_hash = vc.sha(child)
    present = _present_sectors(child)
    assert ops.coalesce(_s(child)) == present
    assert vc.sha(child) == child_hash
    vc.converted(base, model)
    vc.qemu_converted(base, model)
    vc.assert_tap(base, 6 * MiB, leaf=False)
    # The chain still reads the same: the child only repeats the parent.
    vc.chain_converted([child, base], model)
    vc.chain_inspected([child, base])


def test_coalesce_with_an_explicit_parent(tmp_path):
    child, base, model = _pair(tmp_path, align=4096)
    ops.coalesce(_s(child), _s(base))
    vc.converted(base, model)
    assert vc.libvhdi_read([base], 6 * MiB) == model


def test_coalesce_into_a_smaller_parent_is_refused_before_any_write(
        tmp_path):
    base = tmp_path / '1.vhd'
    _filled(base, 4 * MiB)
    child = tmp_path / '0.vhd'
    ops.create(_s(child), 8 * MiB, parent=_s(base))
    # Block 0 fits in the parent, block 3 does not.
    vc.write_runs(child, [(0, b'\x01' * 8192), (7 * MiB, b'\x02' * 8192)])
    hashes = _hashes([child, base])
    with pytest.raises(errors.ChainError) as info:
        ops.coalesce(_s(child), _s(base))
    _one_line(info.value, child)
    assert _hashes([child, base]) == hashes


def test_coalesce_of_a_bigger_child_with_data_inside_the_parent(tmp_path):
    base = tmp_path / '1.vhd'
    model = _filled(base, 4 * MiB)
    child = tmp_path / '0.vhd'
    ops.create(_s(child), 8 * MiB, parent=_s(base))
    vc.write_runs(child, [(4 * MiB - 4096, b'\x03' * 4096)], model)
    ops.coalesce(_s(child))
    vc.converted(base, model)


def test_coalesce_refusals(tmp_path):
    child, base, _ = _pair(tmp_path)
    fixed = tmp_path / 'fixed.vhd'
    fixed.write_bytes(bytes(bi.fixed(bytes(6 * MiB))))
    of_fixed = tmp_path / 'of-fixed.vhd'
    ops.create(_s(of_fixed), 6 * MiB, parent=_s(fixed))
    vc.write_runs(of_fixed, [(0, b'\x01' * 4096)])
    small = tmp_path / 'small-blocks.vhd'
    _filled(small, 6 * MiB, block_size=512 * KiB)
    of_small = tmp_path / 'of-small.vhd'
    _child_with_block_size(of_small, small, 6 * MiB, 2 * MiB)
    vc.write_runs(of_small, [(0, b'\x02' * 4096)])
    everything = [child, base, fixed, of_fixed, small, of_small]
    hashes = _hashes(everything)
    cases = [
        (base, None, 'disk type'),              # dynamic: no parent
        (of_fixed, fixed, 'disk type'),         # fixed parent
        (of_small, small, 'block size'),
        (fixed, base, None),                    # fixed child
    ]
    for kid, par, field in cases:
        with pytest.raises(errors.ChainError) as info:
            ops.coalesce(_s(kid), _s(par) if par else None)
        assert '\n' not in str(info.value)
        if field:
            assert info.value.field == field, str(info.value)
    assert _hashes(everything) == hashes


def test_coalesce_refuses_a_parent_that_is_not_the_childs(tmp_path):
    # The file the locators lead to is another disk (its unique id is not
    # the one the child recorded): writing into it would corrupt it.
    child, base, _ = _pair(tmp_path)
    os.unlink(base)
    _filled(base, 6 * MiB)
    hashes = _hashes([child, base])
    with pytest.raises(errors.ChainError):
        ops.coalesce(_s(child))
    with pytest.raises(errors.ChainError):
        ops.coalesce(_s(child), _s(base))
    assert _hashes([child, base]) == hashes


# -- coalesce_chain, discover_chain, fix_chain --------------------------------

def _growing_chain(tmp_path, sizes=(5 * MiB + 3 * SECTOR, 7 * MiB + SECTOR,
                                    9 * MiB + 5 * SECTOR), align=SECTOR):
    """base .. top with the given sizes (oldest first); newest first."""
    rnd = random.Random(sum(sizes))
    paths = [tmp_path / ('%d.vhd' % (len(sizes) - 1))]
    model = _filled(paths[0], sizes[0], rnd, count=15, align=align)
    vc.write_runs(paths[0], [(sizes[0] - SECTOR, b'\x0e' * SECTOR)], model)
    for pos, size in enumerate(sizes[1:], 1):
        child = tmp_path / ('%d.vhd' % (len(sizes) - 1 - pos))
        _snap(child, paths[0], model, rnd, count=15, size=size,
              align=align)
        paths.insert(0, child)
    return paths, model


def test_coalesce_chain_of_growing_sizes(tmp_path):
    paths, model = _growing_chain(tmp_path)
    vc.chain_converted(paths, model)
    hashes = _hashes(paths[:1])
    base = ops.coalesce_chain([_s(p) for p in paths])
    assert base == _s(paths[-1])
    assert ops.get_size(base) == len(model) == 9 * MiB + 5 * SECTOR
    assert vc.listing(tmp_path) == ['0.vhd', '1.vhd', '2.vhd']
    assert _hashes(paths[:1]) == hashes             # the top is untouched
    vc.converted(base, model)
    vc.qemu_converted(base, model)
    vc.assert_tap(base, len(model), leaf=False)


def test_coalesce_chain_with_a_journal_directory(tmp_path):
    (tmp_path / 'chain').mkdir()
    (tmp_path / 'journals').mkdir()
    base = tmp_path / 'chain' / '1.vhd'
    model = vc.Sparse(BIG + SECTOR, _filled(base, 4 * MiB))
    top = tmp_path / 'chain' / '0.vhd'
    _snap(top, base, model, size=BIG + SECTOR, count=6)
    paths = [top, base]
    base = ops.coalesce_chain([_s(p) for p in paths],
                              journal_dir=_s(tmp_path / 'journals'))
    assert vc.listing(tmp_path / 'journals') == []
    vc.converted(base, model, BIG + SECTOR)
    vc.qemu_converted(base, model, BIG + SECTOR)


def test_coalesce_chain_of_equal_sizes_reads_in_libvhdi(tmp_path):
    paths, model = _growing_chain(tmp_path, sizes=(6 * MiB,) * 4,
                                  align=4096)
    assert vc.libvhdi_read(paths, 6 * MiB) == model
    base = ops.coalesce_chain([_s(p) for p in paths])
    vc.converted(base, model)
    assert vc.libvhdi_read([base], 6 * MiB) == model


def _extracted_image(tmp_path, seed=3):
    """0.vhd .. 2.vhd as a XenServer export holds them: each child's
    locators and parent name point at <vdi-uuid>.vhd, which is not there."""
    rnd = random.Random(seed)
    names = ['%s.vhd' % uuid.UUID(bytes=rnd.randbytes(16)) for _ in range(3)]
    files, expected, _ = vf.standard_chain(seed=seed, names=names)
    for i, data in enumerate(files):
        (tmp_path / ('%d.vhd' % i)).write_bytes(data)
    return expected, names


def test_discover_fix_and_coalesce_an_extracted_image(tmp_path):
    expected, names = _extracted_image(tmp_path)
    chain = chainmod.discover_chain(_s(tmp_path))
    assert chain == [_s(tmp_path / ('%d.vhd' % i)) for i in range(3)]
    with pytest.raises(errors.ChainError) as info:
        chainmod.chain_of(chain[0])
    assert names[1] in str(info.value)
    chainmod.fix_chain(chain)
    assert chainmod.chain_of(chain[0]) == chain
    for child, parent in zip(chain, chain[1:]):
        assert chainmod.parent_path(child) == parent
    vc.chain_converted(chain, expected)
    base = ops.coalesce_chain(chain)
    assert base == chain[-1]
    vc.converted(base, expected)
    assert vc.listing(tmp_path) == ['0.vhd', '1.vhd', '2.vhd']


def test_discover_chain_stops_at_a_gap(tmp_path):
    assert chainmod.discover_chain(_s(tmp_path)) == []
    for name in ('0.vhd', '1.vhd', '3.vhd'):
        (tmp_path / name).write_bytes(b'')
    assert chainmod.discover_chain(_s(tmp_path)) == [
        _s(tmp_path / '0.vhd'), _s(tmp_path / '1.vhd')]


def test_fix_chain_then_flatten_an_extracted_image(tmp_path):
    expected, _ = _extracted_image(tmp_path, seed=4)
    chain = chainmod.discover_chain(_s(tmp_path))
    chainmod.fix_chain(chain)
    dest = tmp_path / 'out' / 'flat.vhd'
    dest.parent.mkdir()
    chainmod.flatten(chain[0], _s(dest))
    vc.converted(dest, expected)
    vc.assert_tap(dest, len(expected))


# -- flatten ------------------------------------------------------------------

def test_flatten_a_chain_into_one_dynamic_vhd(tmp_path):
    paths, model = _growing_chain(tmp_path)
    hashes = _hashes(paths)
    dest = tmp_path / 'flat.vhd'
    chainmod.flatten(_s(paths[0]), _s(dest))
    assert _hashes(paths) == hashes
    assert vc.listing(tmp_path) == ['0.vhd', '1.vhd', '2.vhd', 'flat.vhd']
    vc.assert_tap(dest, len(model))
    with image.VhdFile(_s(dest)) as vhd:
        assert vhd.footer.original_size == len(model)
    vc.converted(dest, model)
    vc.qemu_converted(dest, model)
    assert vc.libvhdi_read([dest], len(model)) == model


def test_flatten_with_an_explicit_chain(tmp_path):
    paths, model = _growing_chain(tmp_path, sizes=(4 * MiB, 4 * MiB))
    dest = tmp_path / 'flat.vhd'
    chainmod.flatten(_s(paths[0]), _s(dest), chain=[_s(p) for p in paths])
    vc.converted(dest, model)
    # A dynamic disk alone flattens to a copy of its disk.
    again = tmp_path / 'again.vhd'
    chainmod.flatten(_s(dest), _s(again))
    vc.converted(again, model)
    vc.assert_tap(again, 4 * MiB)


def test_flatten_refuses_an_existing_destination(tmp_path):
    paths, _ = _growing_chain(tmp_path, sizes=(4 * MiB, 4 * MiB))
    dest = tmp_path / 'flat.vhd'
    dest.write_bytes(b'keep me')
    with pytest.raises(errors.TargetError) as info:
        chainmod.flatten(_s(paths[0]), _s(dest))
    _one_line(info.value, dest)
    assert dest.read_bytes() == b'keep me'
    assert vc.listing(tmp_path) == ['0.vhd', '1.vhd', 'flat.vhd']


def test_flatten_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    paths, _ = _growing_chain(tmp_path, sizes=(4 * MiB, 4 * MiB))
    real = writer.write_dynamic

    def broken(fobj, *args, **kw):
        class Full:
            written = 0

            def write(self, data):
                self.written += len(data)
                if self.written > 64 * KiB:
                    raise OSError(28, 'No space left on device')
                return fobj.write(data)
        return real(Full(), *args, **kw)
    monkeypatch.setattr(writer, 'write_dynamic', broken)
    with pytest.raises(OSError):
        chainmod.flatten(_s(paths[0]), _s(tmp_path / 'flat.vhd'))
    assert vc.listing(tmp_path) == ['0.vhd', '1.vhd']


def test_flatten_of_a_broken_chain_leaves_nothing(tmp_path):
    paths, _ = _growing_chain(tmp_path, sizes=(4 * MiB, 4 * MiB, 4 * MiB))
    os.unlink(paths[1])
    with pytest.raises(errors.ChainError) as info:
        chainmod.flatten(_s(paths[0]), _s(tmp_path / 'flat.vhd'))
    assert '1.vhd' in _one_line(info.value, paths[0])
    assert vc.listing(tmp_path) == ['0.vhd', '2.vhd']


def _child_with_block_size(child, parent, size, block_size):
    """A child whose block size differs from its parent's: create()
    refuses to make one, the writer builds it anyway."""
    with open(child, 'wb') as f:
        writer.write_dynamic(f, size, {}, block_size=block_size,
                             parent=chainmod.parent_ref(_s(parent), _s(child)))


def test_create_refuses_a_block_size_other_than_the_parents(tmp_path):
    base = tmp_path / '1.vhd'
    _filled(base, 4 * MiB, block_size=1 * MiB)
    with pytest.raises(errors.ChainError) as info:
        ops.create(_s(tmp_path / '0.vhd'), 4 * MiB, parent=_s(base),
                   block_size=2 * MiB)
    assert info.value.field == 'block size'
    ops.create(_s(tmp_path / '0.vhd'), 4 * MiB, parent=_s(base))
    with image.VhdFile(_s(tmp_path / '0.vhd')) as vhd:
        assert vhd.block_size == 1 * MiB


def test_flatten_refuses_layers_of_different_block_sizes(tmp_path):
    base = tmp_path / '1.vhd'
    _filled(base, 4 * MiB, block_size=1 * MiB)
    child = tmp_path / '0.vhd'
    _child_with_block_size(child, base, 4 * MiB, 2 * MiB)
    with pytest.raises(errors.ChainError) as info:
        chainmod.flatten(_s(child), _s(tmp_path / 'flat.vhd'))
    assert '\n' not in str(info.value)
    assert vc.listing(tmp_path) == ['0.vhd', '1.vhd']


def test_flatten_refuses_a_parent_that_is_not_the_childs(tmp_path):
    child, base, _ = _pair(tmp_path)
    os.unlink(base)
    _filled(base, 6 * MiB)
    with pytest.raises(errors.ChainError):
        chainmod.flatten(_s(child), _s(tmp_path / 'flat.vhd'))
    assert vc.listing(tmp_path) == ['0.vhd', '1.vhd']


def test_read_chain_block_composes_newest_first(tmp_path):
    child, base, model = _pair(tmp_path)
    with image.VhdFile(_s(child)) as kid, image.VhdFile(_s(base)) as par:
        for idx in range(3):
            have, data = chainmod.read_chain_block([kid, par], idx)
            want = model[idx * BS:(idx + 1) * BS]
            for s in range(BS // SECTOR):
                if have >> (BS // SECTOR - 1 - s) & 1:
                    assert data[s * SECTOR:(s + 1) * SECTOR] == \
                        want[s * SECTOR:(s + 1) * SECTOR]
                else:
                    assert not any(want[s * SECTOR:(s + 1) * SECTOR])


def test_operations_leave_no_temporary_files(tmp_path):
    paths, _ = _growing_chain(tmp_path, sizes=(4 * MiB, 6 * MiB))
    chainmod.flatten(_s(paths[0]), _s(tmp_path / 'flat.vhd'))
    ops.snapshot(_s(tmp_path / 'snap.vhd'), _s(tmp_path / 'flat.vhd'))
    ops.coalesce_chain([_s(p) for p in paths])
    assert vc.listing(tmp_path) == ['0.vhd', '1.vhd', 'flat.vhd',
                                    'snap.vhd']


def test_set_parent_pads_each_locator_to_its_own_space(tmp_path):
    # Locators of different sizes, the smaller one last on disk and right
    # before block 0's bitmap: padding it to another locator's space would
    # wipe that bitmap.
    base = tmp_path / 'base.vhd'
    ops.create(_s(base), 4 * MiB)
    with image.VhdFile(_s(base)) as vhd:
        uid = vhd.footer.unique_id
    long_loc = (fmt.PLAT_W2KU, '.\\' + 'p' * 300)         # 1 KiB of space
    short_loc = (fmt.PLAT_MACX, 'file://./base.vhd')      # 512 bytes
    child = tmp_path / 'child.vhd'
    for entries in range(2, 2000):
        child.unlink(missing_ok=True)
        with open(child, 'wb') as f:
            writer.write_dynamic(
                f, 4 * MiB, {0: (None, b'\x42' * BS)},
                max_table_entries=entries, parent=writer.Parent(
                    uid, 'base.vhd', 0, (long_loc, short_loc)))
        with image.VhdFile(_s(child)) as vhd:
            macx = vhd.header.locators[1]
            if vhd.bat[0] * SECTOR == macx.data_offset + SECTOR:
                break
    else:
        pytest.fail('no layout puts block 0 right after the locator')
    with image.VhdFile(_s(child), writable=True) as vhd:
        locs = vhd.header.locators          # the short one first in the
        locs[0], locs[1] = locs[1], locs[0]  # header, so it is padded last
        vhd.write_header()
    chainmod.set_parent(_s(child), _s(base))
    with image.VhdFile(_s(child)) as vhd:
        assert vhd.mask(0) == (1 << vhd.spb) - 1
    assert chainmod.parent_path(_s(child)) == _s(base)


def test_a_batmap_pointing_at_the_metadata_is_not_written_through(tmp_path):
    base = tmp_path / 'base.vhd'
    ops.create(_s(base), 4 * MiB)
    with image.VhdFile(_s(base)) as vhd:
        at = vhd.batmap_offset
    raw = bytearray(base.read_bytes())
    struct.pack_into('>Q', raw, at + 8, 0)          # map offset: the footer
    base.write_bytes(bytes(raw))
    with image.VhdFile(_s(base), writable=True) as vhd:
        assert vhd.batmap_offset is None
        vhd.write(0, b'\x05' * BS)
    with image.VhdFile(_s(base)) as vhd:            # still opens: intact
        assert vhd.mask(0) == (1 << vhd.spb) - 1
