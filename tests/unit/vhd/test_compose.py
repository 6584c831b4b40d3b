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
"""The composer on its own: coverage, holes, and layers in any order.

A fake target records every pwrite; replaying the records over zeros must
give the disk that tests/vhd_factory.expected_disk computes by plain
per-sector overlay, whatever order the layers arrive in.
"""

import itertools
import random
import types

import pytest

from tests import vhd_factory as vf
from xenapinfs_driver.vhd import compose
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import stream
from xenapinfs_driver.vhd import writer

BS = 4096                       # 8 sectors a block keeps masks readable
SPB = BS // 512
FULL = (1 << SPB) - 1


class Recorder:
    """A target that remembers its writes."""

    def __init__(self):
        self.writes = []

    def pwrite(self, view, offset):
        assert isinstance(view, memoryview)
        self.writes.append((offset, bytes(view)))

    def render(self, size):
        out = bytearray(size)
        for offset, data in self.writes:
            assert 0 <= offset and offset + len(data) <= size, offset
            out[offset:offset + len(data)] = data
        return bytes(out)


def _layer(rank, spec, fixed=False):
    return types.SimpleNamespace(
        name='%d.vhd' % rank, rank=rank, size=spec.size,
        block_size=None if fixed else spec.block_size)


def _feed(composer, rank, spec):
    """Hand one layer's blocks to the composer as the reader would."""
    layer = _layer(rank, spec)
    composer.begin_layer(layer)
    present = 0
    for idx, (sectors, data) in spec.blocks.items():
        bitmap = writer.bitmap_of(range(SPB) if sectors is None else sectors,
                                  spec.block_size)
        src = stream.Source([data[:700], data[700:]], 'x')
        present += composer.write_block(layer, idx, bitmap, src)
        assert src.offset == len(data) and src.at_eof()
    return present


def _feed_fixed(composer, rank, data):
    layer = types.SimpleNamespace(name='%d.vhd' % rank, rank=rank,
                                  size=len(data), block_size=None)
    pos = 0
    for piece in (data[:1000], data[1000:5000], data[5000:]):
        composer.write_fixed(rank, pos, memoryview(piece))
        pos += len(piece)
    composer.end_fixed(layer)


def _specs(seed=0):
    """Three layers, newest first, sizes growing to the top."""
    rnd = random.Random(seed)
    sizes = [9 * BS + 3 * 512, 8 * BS, 6 * BS + 512]
    specs = [vf.random_layer(rnd, s, fill=0.7, block_size=BS,
                             zero_prob=0.3, density=0.5)
             for s in sizes]
    # A block every layer has, partly, to make the overlay matter.
    for rank, spec in enumerate(specs):
        spec.blocks[1] = ({rank, rank + 3, 7 - rank},
                          bytes([0x10 + rank]) * BS)
    return specs


# -- order independence -------------------------------------------------------

@pytest.mark.parametrize('fresh', [True, False])
@pytest.mark.parametrize('order', list(itertools.permutations(range(3))))
def test_any_layer_order_gives_the_overlay(order, fresh):
    specs = _specs()
    expected = vf.expected_disk(specs)
    target = Recorder()
    composer = compose.Composer(target, fresh=fresh)
    for rank in order:
        _feed(composer, rank, specs[rank])
    assert target.render(specs[0].size) == expected
    assert composer.bytes_written == sum(len(d) for _, d in target.writes)


def test_each_byte_is_written_once_newest_first():
    specs = _specs(1)
    target = Recorder()
    composer = compose.Composer(target, fresh=False)
    for rank in range(3):
        _feed(composer, rank, specs[rank])
    ranges = sorted((off, off + len(d)) for off, d in target.writes)
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))
    assert target.render(specs[0].size) == vf.expected_disk(specs)


@pytest.mark.parametrize('fixed_first', [True, False])
def test_fixed_base_in_either_order(fixed_first):
    rnd = random.Random(3)
    base = rnd.randbytes(5 * BS)
    top = vf.LayerSpec(6 * BS + 512, {
        0: ({0, 5}, rnd.randbytes(BS)), 2: (None, bytes(BS)),
        4: ({7}, rnd.randbytes(BS)), 6: (None, rnd.randbytes(BS))}, BS)
    base_spec = vf.LayerSpec(len(base), {
        i: (None, base[i * BS:(i + 1) * BS]) for i in range(5)}, BS)
    target = Recorder()
    composer = compose.Composer(target)
    if fixed_first:
        _feed_fixed(composer, 1, base)
        _feed(composer, 0, top)
    else:
        _feed(composer, 0, top)
        _feed_fixed(composer, 1, base)
    assert target.render(top.size) == vf.expected_disk([top, base_spec])


def test_present_sectors_count_only_the_disk():
    # The last block runs past the size: its bits there do not count.
    spec = vf.LayerSpec(2 * BS + 1024, {2: (None, b'\x01' * BS),
                                        0: ({1, 2}, b'\x02' * BS)}, BS)
    target = Recorder()
    composer = compose.Composer(target)
    assert _feed(composer, 0, spec) == 2 + 2
    assert target.render(spec.size) == vf.expected_disk([spec])


# -- zero runs ----------------------------------------------------------------

def test_zeros_of_the_oldest_layer_are_not_written_on_a_fresh_target():
    spec = vf.LayerSpec(3 * BS, {0: (None, bytes(BS)),
                                 1: ({2}, bytes(BS)),
                                 2: (None, bytes(1000) + b'\x01' +
                                     bytes(BS - 1001))}, BS)
    target = Recorder()
    composer = compose.Composer(target, fresh=True)
    _feed(composer, 0, spec)
    assert target.writes and all(d.strip(b'\0') for _, d in target.writes)
    assert all(off >= 2 * BS for off, _ in target.writes)
    assert composer.bytes_written < BS
    assert target.render(spec.size) == vf.expected_disk([spec])
    assert composer.allocated(spec.size) == 2 * BS + 512


def test_zeros_are_written_where_the_target_is_not_fresh():
    spec = vf.LayerSpec(BS, {0: (None, bytes(BS))}, BS)
    target = Recorder()
    composer = compose.Composer(target, fresh=False)
    _feed(composer, 0, spec)
    assert composer.bytes_written == BS
    assert b''.join(d for _, d in sorted(target.writes)) == bytes(BS)


@pytest.mark.parametrize('newest_first', [True, False])
def test_newer_zeros_hide_older_data(newest_first):
    top = vf.LayerSpec(BS, {0: ({0, 1}, bytes(BS))}, BS)
    base = vf.LayerSpec(BS, {0: (None, b'\x77' * BS)}, BS)
    target = Recorder()
    composer = compose.Composer(target, fresh=True)
    for rank in ((0, 1) if newest_first else (1, 0)):
        _feed(composer, rank, [top, base][rank])
    assert target.render(BS) == bytes(1024) + b'\x77' * (BS - 1024)


def test_without_a_target_data_is_only_consumed():
    specs = _specs(2)
    composer = compose.Composer(None)
    for rank in (2, 0, 1):
        _feed(composer, rank, specs[rank])
    assert composer.bytes_written == 0
    size = specs[0].size
    present = set()
    for spec in specs:
        for idx, (sectors, _) in spec.blocks.items():
            for s in (range(SPB) if sectors is None else sectors):
                off = idx * BS + s * 512
                if off + 512 <= min(spec.size, size):
                    present.add(off)
    assert composer.allocated(size) == 512 * len(present)


def test_block_size_must_be_the_same_in_every_layer():
    composer = compose.Composer(Recorder())
    composer.begin_layer(types.SimpleNamespace(rank=1, size=BS,
                                               block_size=BS))
    with pytest.raises(errors.ChainError) as info:
        composer.begin_layer(types.SimpleNamespace(rank=0, size=BS,
                                                   block_size=2 * BS))
    assert info.value.field == 'block size'
    assert str(info.value) == ('block size: 8192 differs from the 4096 of '
                               'the other layers')


# -- coverage, holes, allocated -----------------------------------------------

def test_coverage_of_a_dynamic_layer():
    cov = compose.Coverage(0, 3 * BS, SPB)
    cov.set(0, FULL)
    cov.set(1, 0b10100001)
    cov.set(2, 0)
    assert [cov.mask(i, SPB) for i in range(4)] == [FULL, 0b10100001, 0, 0]
    assert cov.flags[2] == compose.NONE
    assert cov.mask(100, SPB) == 0


def test_coverage_of_a_fixed_layer():
    cov = compose.Coverage(1, 10 * 512, None, fixed=True)
    assert [cov.mask(i, SPB) for i in range(3)] == [FULL, 0b11000000, 0]


def _composer_with(spec, rank=0):
    composer = compose.Composer(None)
    _feed(composer, rank, spec)
    return composer


def _one_layer():
    blocks = {0: (None, b'a' * BS), 1: ({0, 1, 7}, b'b' * BS),
              3: ({2, 3}, b'c' * BS), 5: (None, b'd' * BS)}
    return vf.LayerSpec(5 * BS + 1024, blocks, BS)


def test_holes_and_allocated_of_one_layer():
    spec = _one_layer()
    composer = _composer_with(spec)
    holes = [h for h in composer.holes(spec.size) if h[1]]
    assert holes == [(BS + 1024, 2560), (2 * BS, BS + 1024),
                     (3 * BS + 2048, 2048 + BS)]
    assert composer.allocated(spec.size) == BS + 3 * 512 + 2 * 512 + 1024
    # The holes are exactly the sectors the overlay leaves unset.
    disk = vf.expected_disk([spec])
    in_holes = set()
    for off, length in holes:
        in_holes.update(range(off // 512, (off + length) // 512))
    for s in range(spec.size // 512):
        assert (s in in_holes) == (not disk[s * 512:(s + 1) * 512].strip(
            b'\0')), s


def test_holes_are_never_empty():
    # The last block is partly past the size and its part inside is full.
    spec = _one_layer()
    composer = _composer_with(spec)
    assert all(length > 0 for _, length in composer.holes(spec.size))


def test_holes_of_several_layers_are_their_union():
    composer = compose.Composer(None)
    _feed(composer, 0, vf.LayerSpec(4 * BS, {1: ({2, 3, 4, 5, 6},
                                                 bytes(BS))}, BS))
    _feed(composer, 1, vf.LayerSpec(3 * BS, {1: ({0, 1, 7}, bytes(BS)),
                                             2: ({0}, bytes(BS))}, BS))
    assert list(composer.holes(4 * BS)) == [(0, BS), (2 * BS + 512,
                                                      2 * BS - 512)]
    assert composer.allocated(4 * BS) == BS + 512


def test_holes_with_a_fixed_base():
    composer = compose.Composer(None)
    _feed_fixed(composer, 1, bytes(2 * BS + 1024))
    _feed(composer, 0, vf.LayerSpec(3 * BS, {2: ({4}, bytes(BS))}, BS))
    assert list(composer.holes(3 * BS)) == [(2 * BS + 1024, 1024),
                                            (2 * BS + 2560, 1536)]


@pytest.mark.parametrize('fixed_size, size, holes', [
    (None, 5 * 512, [(0, 5 * 512)]),
    (None, 0, []),
    (3 * BS, 5 * BS, [(3 * BS, 2 * BS)]),
    (3 * BS, 3 * BS, []),
])
def test_holes_without_a_dynamic_layer(fixed_size, size, holes):
    composer = compose.Composer(None)
    if fixed_size is not None:
        composer.end_fixed(types.SimpleNamespace(rank=0, size=fixed_size))
    assert list(composer.holes(size)) == holes
    assert composer.allocated(size) == size - sum(n for _, n in holes)


def test_zero_fill_writes_every_hole_in_bounded_pieces():
    size = 3 * (1 << 20) + BS
    spec = vf.LayerSpec(size, {0: (None, b'\x01' * BS),
                               300: ({3}, b'\x02' * BS)}, BS)
    target = Recorder()
    composer = compose.Composer(target)
    _feed(composer, 0, spec)
    data_writes = len(target.writes)
    composer.zero_fill(size)
    fills = target.writes[data_writes:]
    assert all(len(d) <= compose.ZERO_FILL_CHUNK and not d.strip(b'\0')
               for _, d in fills)
    covered = sorted((off, off + len(d)) for off, d in fills)
    merged = []
    for start, stop in covered:
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    assert merged == [(off, off + n) for off, n in composer.holes(size)
                      if n]
    assert sum(len(d) for _, d in target.writes) == size


def test_mask_memory_is_bounded():
    # Each partly filled block keeps its mask: spb / 8 + 64 bytes here.
    cost = SPB // 8 + 64
    composer = compose.Composer(Recorder(), mask_budget=3 * cost)
    blocks = {i: (None, bytes(BS)) for i in range(4)}
    blocks.update({i: ({1}, bytes(BS)) for i in range(4, 7)})
    _feed(composer, 1, vf.LayerSpec(16 * BS, blocks, BS))
    assert composer.mask_bytes == 3 * cost
    with pytest.raises(errors.LimitExceeded) as info:
        _feed(composer, 0, vf.LayerSpec(16 * BS, {9: ({0}, bytes(BS))}, BS))
    assert info.value.field == 'bitmap of block 9'
    assert str(info.value).startswith('bitmap of block 9: more partly '
                                      'filled blocks than')
