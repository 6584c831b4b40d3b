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
"""The test-only encoder, its referees, and the library's readers on it.

tests/vhd_encoder.py writes VHDs from the specification and shares no
code with the library. Here:

1. the encoder against facts stated outside this project (the spec's
   bit order, the reference's measured geometry);
2. the encoder and the library's writer give the same bytes wherever the
   specification and blktap's layout fix them;
3. qemu-img and libvhdi, which we did not write, read the encoder's files
   as the expected disk (qemu-img ignores bitmaps, libvhdi misreads a
   bitmap byte after its first set bit: both are modelled, not dodged);
4. the library's readers (the one-pass stream reader through
   ``tgz.convert``, ``VhdFile`` and the chain operations built on it)
   read sector-level bitmaps and chains of mixed sizes from the encoder
   as the disk ``vhd_factory.expected_disk`` computes by plain overlay.
"""

import ast
import io
import pathlib
import random

import pytest

from tests import vhd_encoder as enc
from tests import vhd_factory as vf
from tests.unit.vhd import vhdcheck as vc
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import ops
from xenapinfs_driver.vhd import writer

KiB, MiB, SECTOR = vc.KiB, vc.MiB, vc.SECTOR
TESTS = pathlib.Path(__file__).resolve().parents[2]


# -- layers -------------------------------------------------------------------

def scattered(rnd, size, block_size, *, fill=0.7, group=1):
    """Blocks whose sectors are each present or not, in groups of group.

    With group 1 nearly every bitmap byte is partly set; group 8 gives
    whole-byte bitmaps. Some blocks are full, some allocated with no
    sector present; every block's data is random, present or not, so a
    reader that takes an unset sector shows.
    """
    spb = block_size // SECTOR
    blocks = {}
    for idx in range(-(-size // block_size)):
        if rnd.random() >= fill:
            continue
        pick = rnd.random()
        if pick < 0.15:
            sectors = None
        elif pick < 0.2:
            sectors = set()
        else:
            sectors = {s for g in range(0, spb, group)
                       if rnd.random() < 0.5
                       for s in range(g, min(spb, g + group))}
        blocks[idx] = (sectors, rnd.randbytes(block_size))
    return vf.LayerSpec(size, blocks, block_size)


def chain_specs(seed, sizes, block_size, **kw):
    rnd = random.Random(seed)
    return [scattered(rnd, size, block_size, **kw) for size in sizes]


def write_files(directory, files, names=None):
    paths = []
    for i, data in enumerate(files):
        path = directory / (names[i] if names else '%d.vhd' % i)
        path.write_bytes(data)
        paths.append(path)
    return paths


def libvhdi_bug_model(spec):
    """The layer as libvhdi sees it (vhd-format.md §4, bug 2).

    libvhdi tests ``byte >> (7 - bit)`` without ``& 1``: a sector counts
    as present when any sector before it in the same bitmap byte is set.
    """
    spb = spec.block_size // SECTOR
    blocks = {}
    for idx, (sectors, data) in spec.blocks.items():
        if sectors is not None:
            sectors = {s for s in range(spb)
                       if any(t in sectors for t in range(s & ~7, s + 1))}
        blocks[idx] = (sectors, data)
    return vf.LayerSpec(spec.size, blocks, spec.block_size)


def qemu_model(spec):
    """The dynamic disk as qemu-img reads it: allocated blocks whole."""
    blocks = {idx: (None, data) for idx, (_, data) in spec.blocks.items()}
    return vf.LayerSpec(spec.size, blocks, spec.block_size)


# -- 1. the encoder on its own ------------------------------------------------

def test_the_encoder_imports_nothing_from_the_library():
    for name in ('vhd_encoder.py', 'vhd_factory.py'):
        tree = ast.parse((TESTS / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or '']
            else:
                continue
            assert not any(m.split('.')[0] == 'xenapinfs_driver'
                           for m in modules), (name, modules)


@pytest.mark.parametrize('sectors, block_size, expected', [
    # The spec: sector 0 is the most significant bit of the first byte.
    ({0}, 4 * KiB, b'\x80'),
    ({7}, 4 * KiB, b'\x01'),
    ({0, 1, 2, 3}, 4 * KiB, b'\xf0'),
    ({1, 6}, 4 * KiB, b'\x42'),
    ({8}, 2 * MiB, b'\x00\x80'),
    ({0, 9, 15}, 2 * MiB, b'\x80\x41'),
    ({0}, 512, b'\x80'),
])
def test_bitmap_bit_order(sectors, block_size, expected):
    bm = enc.bitmap(sectors, block_size)
    assert len(bm) == 512
    assert bm[:len(expected)] == expected
    assert not any(bm[len(expected):])


def test_bitmap_of_full_blocks():
    assert enc.bitmap(None, 2 * MiB) == b'\xff' * 512
    assert enc.bitmap(None, 4 * KiB) == b'\xff' + bytes(511)
    assert enc.bitmap(None, 8 * MiB) == b'\xff' * 2048
    assert enc.bitmap(None, 2 * KiB) == b'\xf0' + bytes(511)


def test_checksum_is_the_ones_complement_of_the_byte_sum():
    assert enc.checksum(bytes(512), 64) == 0xFFFFFFFF
    record = bytearray(b'\x01' * 512)
    record[64:68] = b'\xff\xff\xff\xff'          # left out of the sum
    assert enc.checksum(record, 64) == 0xFFFFFFFF - 508


@pytest.mark.parametrize('size, chs_bytes', [
    # vhd-format.md §1 and §3, measured with qemu-img on creator 'vpc '.
    (1 << 30, 1073479680),
    (256 * MiB, 268369920),
])
def test_geometry_matches_the_measured_sizes(size, chs_bytes):
    cyl, heads, per_track = enc.geometry(size)
    assert cyl * heads * per_track * SECTOR == chs_bytes
    if size == 1 << 30:
        assert (cyl, heads, per_track) == (2080, 16, 63)


# -- 2. where the layout is fixed, the library writes the same bytes ----------

UID = bytes(range(16))
PARENT_UID = bytes(range(100, 116))


def _library_bytes(spec, order, parent, **kw):
    blocks = {idx: (None if sectors is None else
                    writer.bitmap_of(sectors, spec.block_size), data)
              for idx, (sectors, data) in spec.blocks.items()}
    lib_parent = None
    if parent is not None:
        lib_parent = writer.Parent(
            parent.unique_id, parent.name, parent.timestamp,
            tuple((int.from_bytes(code, 'big'), path)
                  for code, path in parent.locators))
    buf = io.BytesIO()
    writer.write_dynamic(buf, spec.size, blocks, order=order,
                         parent=lib_parent, block_size=spec.block_size,
                         unique_id=UID, **kw)
    return buf.getvalue()


@pytest.mark.parametrize('case', [
    dict(),
    dict(order='reverse'),
    dict(order='random', parent=True),
    dict(parent=True, name='снимок ü.vhd', hidden=True),
    dict(align=512, order='random'),
    dict(batmap=False, creator=b'vpc ', creator_version=0x00050003),
    dict(max_table_entries=4096, parent=True),
    dict(block_size=4 * KiB, size=37 * KiB, order='random'),
    dict(block_size=512, size=9 * KiB, parent=True),
    dict(block_size=64 * KiB, size=MiB + 3 * SECTOR, align=512),
    dict(original_size=MiB),
], ids=lambda case: ','.join('%s=%s' % kv for kv in case.items()) or
    'plain')
def test_library_writer_gives_the_encoders_bytes(case):
    case = dict(case)
    rnd = random.Random(len(str(case)))
    block_size = case.pop('block_size', 2 * MiB)
    size = case.pop('size', 5 * MiB + 7 * SECTOR)
    spec = scattered(rnd, size, block_size)
    order = sorted(spec.blocks)
    how = case.pop('order', 'index')
    if how == 'reverse':
        order.reverse()
    elif how == 'random':
        rnd.shuffle(order)
    parent = None
    if case.pop('parent', False):
        name = case.pop('name', '1.vhd')
        parent = enc.Parent(PARENT_UID, name, 0x2468ACE,
                            enc.xenserver_locators(name))
    common = dict(timestamp=0x1234567, **case)
    ours = enc.encode_dynamic(size, spec.blocks, order=order, parent=parent,
                              block_size=block_size, unique_id=UID,
                              **common)
    assert ours == _library_bytes(spec, order, parent, **common)


def test_library_writer_gives_the_encoders_fixed_disk():
    data = random.Random(4).randbytes(3 * MiB + 5 * SECTOR)
    buf = io.BytesIO()
    writer.write_fixed(buf, data, unique_id=UID, timestamp=77)
    assert buf.getvalue() == enc.encode_fixed(data, unique_id=UID,
                                              timestamp=77)


# -- 3. referees we did not write ---------------------------------------------

@pytest.mark.parametrize('block_size, size, kw', [
    (2 * MiB, 9 * MiB + 3 * SECTOR, dict(order='random')),
    (2 * MiB, 7 * MiB, dict(order='reverse', align=512, batmap=False)),
    (2 * MiB, 6 * MiB + SECTOR, dict(max_table_entries=1024)),
    (64 * KiB, MiB + 5 * SECTOR, dict(order='random')),
])
def test_qemu_img_reads_the_encoders_dynamic_disks(
        tmp_path, block_size, size, kw):
    spec = scattered(random.Random(size), size, block_size)
    path = write_files(tmp_path, vf.build_chain([spec], **kw))[0]
    vc.qemu_converted(path, vf.expected_disk([qemu_model(spec)]))


def _libvhdi(paths, length, piece):
    """libvhdi's view of the chain (newest first): data and headers.

    Read in pieces of one block: with 4 KiB blocks, libvhdi 20260901
    returns wrong data for the later blocks of a read that spans several
    (not one of the bugs vhd-format.md lists; 2 MiB blocks read right).
    """
    pyvhdi = pytest.importorskip('pyvhdi')
    files = []
    try:
        for p in paths:
            f = pyvhdi.file()
            f.open(str(p))
            files.append(f)
        links = [(f.get_parent_identifier(), f.get_parent_filename())
                 for f in files[:-1]]
        ids = [f.get_identifier() for f in files]
        for child, parent in zip(files, files[1:]):
            child.set_parent(parent)
        data = b''.join(
            files[0].read_buffer_at_offset(min(piece, length - at), at)
            for at in range(0, length, piece))
        return data, links, ids, files[0].get_media_size()
    finally:
        for f in files:
            f.close()


@pytest.mark.parametrize('block_size, sizes, order', [
    (2 * MiB, (9 * MiB + 3 * SECTOR, 8 * MiB, 6 * MiB), 'random'),
    (4 * KiB, (200 * KiB, 200 * KiB, 136 * KiB), 'reverse'),
])
def test_libvhdi_reads_whole_byte_chains(tmp_path, block_size, sizes,
                                         order):
    # libvhdi fails a read that falls through past a parent's end (its
    # bug 3): only the part every layer covers is compared.
    specs = chain_specs(len(sizes), sizes, block_size, group=8)
    names = ['0.vhd', 'mid ü.vhd', 'bäse.vhd']
    ids = [bytes([i]) * 16 for i in range(1, len(sizes) + 1)]
    files = vf.build_chain(specs, order=order, names=names, unique_ids=ids)
    paths = write_files(tmp_path, files, names)
    common = min(sizes)
    data, links, got_ids, media = _libvhdi(paths, common, block_size)
    assert media == sizes[0]
    assert [i.replace('-', '') for i in got_ids] == [i.hex() for i in ids]
    assert links == [(got_ids[1], names[1]), (got_ids[2], names[2])]
    assert vf.mismatch(data, vf.expected_disk(specs)[:common]) is None


@pytest.mark.parametrize('block_size', [4 * KiB, 2 * MiB])
def test_libvhdi_reads_sector_bitmaps_as_its_known_bug_says(
        tmp_path, block_size):
    sizes = (3 * block_size, 3 * block_size)
    specs = chain_specs(9, sizes, block_size, fill=1.0)
    paths = write_files(tmp_path, vf.build_chain(specs, order='random'))
    data, _, _, _ = _libvhdi(paths, sizes[0], block_size)
    right = vf.expected_disk(specs)
    buggy = vf.expected_disk([libvhdi_bug_model(s) for s in specs])
    assert right != buggy           # else this proves nothing
    # A libvhdi that fixed its bug reads the right disk; a bitmap with
    # its bits in the wrong order reads as neither.
    assert vf.mismatch(data, buggy) is None or \
        vf.mismatch(data, right) is None


# -- 4. the library's readers on sector bitmaps and mixed sizes --------------

CHAINS = {
    # name: (block size, sizes newest first, build_chain arguments)
    '2M-odd-sizes-random-order': (
        2 * MiB, (9 * MiB + 3 * SECTOR, 8 * MiB + 5 * SECTOR, 5 * MiB),
        dict(order='random')),
    '2M-packed-reverse-no-batmap': (
        2 * MiB, (6 * MiB + SECTOR, 6 * MiB + SECTOR, 2 * MiB),
        dict(order='reverse', align=512, batmap=False)),
    '4K-one-byte-bitmaps': (
        4 * KiB, (301 * KiB, 250 * KiB, 199 * KiB, 64 * KiB),
        dict(order='random')),
    '512-one-bit-bitmaps': (
        512, (37 * KiB, 36 * KiB + SECTOR, 20 * KiB),
        dict(order='random', align=512)),
    '64K-preallocated-table': (
        64 * KiB, (MiB + 3 * SECTOR, MiB, 700 * KiB),
        dict(max_table_entries=4096, creator=b'vpc ')),
}


@pytest.fixture(params=sorted(CHAINS))
def chain(request, tmp_path):
    block_size, sizes, kw = CHAINS[request.param]
    specs = chain_specs(len(request.param), sizes, block_size)
    files = vf.build_chain(specs, rnd=random.Random(1), **kw)
    if block_size >= 4 * KiB:
        assert any(byte not in (0, 0xFF)
                   for s in specs for secs, _ in s.blocks.values()
                   for byte in enc.bitmap(secs, block_size)), \
            'no partly set bitmap byte: nothing is tested'
    return specs, files, vf.expected_disk(specs), tmp_path


def test_stream_reader_reads_the_encoders_chains(chain):
    specs, files, expected, tmp_path = chain
    for order in (None, list(reversed(range(len(files))))):
        tgz = tmp_path / 'img.tgz'
        vf.xenserver_tgz(str(tgz), files, order=order)
        out = tmp_path / 'disk.raw'
        result = vc.tgz.convert(str(tgz), str(out))
        assert result.virtual_size == specs[0].size
        vc.expect_file(out, expected)
        tgz.unlink()
        out.unlink()


def test_stream_reader_reads_each_dynamic_layer(chain):
    specs, _, _, tmp_path = chain
    base = specs[-1]
    files = vf.build_chain([base], order='random', align=512)
    path = write_files(tmp_path, files)[0]
    vc.converted(path, vf.expected_disk([base]))


def _mask(spec, idx):
    """The present sectors of a block as a number, sector 0 on top, only
    those inside the layer's size."""
    spb = spec.block_size // SECTOR
    sectors, _ = spec.blocks[idx]
    valid = min(spb, (spec.size - idx * spec.block_size) // SECTOR)
    present = range(spb) if sectors is None else sectors
    return sum(1 << (spb - 1 - s) for s in present if s < valid)


def test_vhdfile_reads_every_bitmap_and_block(chain):
    specs, files, expected, tmp_path = chain
    paths = write_files(tmp_path, files)
    for path, spec in zip(paths, specs):
        with image.VhdFile(str(path)) as vhd:
            assert vhd.size == spec.size
            assert sorted(vhd.allocated()) == sorted(spec.blocks)
            for idx, (_, data) in spec.blocks.items():
                assert vhd.mask(idx) == _mask(spec, idx), (path, idx)
                assert vhd.read_block(idx) == data
    files = [image.VhdFile(str(p)) for p in paths]
    try:
        disk = bytearray()
        for idx in range(files[0].nblocks):
            _, data = ops.read_chain_block(files, idx)
            disk += data
    finally:
        for f in files:
            f.close()
    assert vf.mismatch(bytes(disk[:specs[0].size]), expected) is None
    assert not any(disk[specs[0].size:])


def test_flatten_reads_the_encoders_chain(chain):
    # The library composes the chain through VhdFile; the flat result
    # goes to qemu-img, which shares nothing with either.
    specs, files, expected, tmp_path = chain
    paths = write_files(tmp_path, files)
    flat = tmp_path / 'flat.vhd'
    ops.flatten(str(paths[0]), str(flat), [str(p) for p in paths])
    vc.converted(flat, expected)
    if specs[0].block_size >= 4 * KiB:      # qemu: 512-byte blocks differ
        vc.qemu_converted(flat, expected)


def test_coalesce_chain_reads_the_encoders_chain(chain):
    specs, files, expected, tmp_path = chain
    work = tmp_path / 'work'
    work.mkdir()
    paths = write_files(work, files)
    base = ops.coalesce_chain([str(p) for p in paths],
                              journal_dir=str(tmp_path))
    with image.VhdFile(base) as vhd:
        size = vhd.size
    assert size >= specs[0].size
    vc.converted(base, expected, size)
