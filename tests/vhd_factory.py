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
"""Build VHD chains and XenServer tarballs in code, with the expected disk.

The files are encoded by tests/vhd_encoder.py, which shares no code with
the library, and the expected disk is computed here by the plainest
possible overlay (base first, each newer layer's present sectors on top),
independently of the library's composer: a test compares the library's
reading with two computations of its own.
"""

from __future__ import annotations

import dataclasses
import io
import random
import tarfile

from tests import vhd_encoder as enc

MiB = 1 << 20
BS = enc.DEFAULT_BLOCK
SECTOR = enc.SECTOR


@dataclasses.dataclass
class LayerSpec:
    """One layer: its virtual size and its blocks.

    blocks maps a block index to (sectors, data): sectors is a set of
    sector numbers within the block, or None for all of them.
    """

    size: int
    blocks: dict
    block_size: int = BS


def random_layer(rnd: random.Random, size: int, *, fill=0.5, density=0.6,
                 block_size=BS, full_prob=0.3, zero_prob=0.0) -> LayerSpec:
    """Random blocks: some full, some with random sector subsets."""
    spb = block_size // SECTOR
    nblocks = -(-size // block_size)
    blocks = {}
    for idx in range(nblocks):
        if rnd.random() >= fill:
            continue
        if rnd.random() < zero_prob:
            data = bytes(block_size)
        else:
            data = rnd.randbytes(block_size)
        if rnd.random() < full_prob:
            sectors = None
        else:
            # Runs of sectors, the way file systems write.
            sectors = set()
            s = 0
            while s < spb:
                run = rnd.randint(1, 64)
                if rnd.random() < density:
                    sectors.update(range(s, min(spb, s + run)))
                s += run
        blocks[idx] = (sectors, data)
    return LayerSpec(size, blocks, block_size)


def expected_disk(specs_newest_first) -> bytes:
    """The disk the chain holds: size of the newest, newest layer wins."""
    size = specs_newest_first[0].size
    out = bytearray(size)
    for spec in reversed(specs_newest_first):
        spb = spec.block_size // SECTOR
        for idx, (sectors, data) in spec.blocks.items():
            for s in (range(spb) if sectors is None else sectors):
                off = idx * spec.block_size + s * SECTOR
                if off + SECTOR <= spec.size:
                    out[off:off + SECTOR] = data[s * SECTOR:(s + 1) * SECTOR]
    return bytes(out)


def _bitmap(sectors, block_size):
    return None if sectors is None else enc.bitmap(sectors, block_size)


def build_chain(specs_newest_first, *, order='index', rnd=None,
                max_table_entries=None, batmap=True, creator=enc.TAP_CREATOR,
                names=None, unique_ids=None, hidden=True, **kw) -> list:
    """Return the VHD files of a chain as bytes, newest first.

    order: 'index', 'reverse' or 'random' physical order of blocks.
    """
    rnd = rnd or random.Random(0)
    n = len(specs_newest_first)
    names = names or ['%d.vhd' % i for i in range(n)]
    ids = unique_ids or [rnd.randbytes(16) for _ in range(n)]
    files = [None] * n
    for pos in range(n - 1, -1, -1):
        spec = specs_newest_first[pos]
        keys = sorted(spec.blocks)
        if order == 'reverse':
            keys.reverse()
        elif order == 'random':
            rnd.shuffle(keys)
        parent = None
        if pos + 1 < n:
            parent = enc.Parent(
                ids[pos + 1], names[pos + 1], 0,
                enc.xenserver_locators(names[pos + 1]))
        files[pos] = enc.encode_dynamic(
            spec.size, spec.blocks, order=keys, parent=parent,
            block_size=spec.block_size,
            max_table_entries=max_table_entries, batmap=batmap,
            hidden=hidden and pos > 0, unique_id=ids[pos], creator=creator,
            **kw)
    return files


def make_tar(path, members, *, gzip=True, fmt_=tarfile.GNU_FORMAT,
             directories=('.',)) -> None:
    """Write members [(name, bytes)] as tar(.gz); dirs entries first."""
    # Level 1: random test data does not compress, and level 9 is slow.
    extra = {'compresslevel': 1} if gzip else {}
    with tarfile.open(path, 'w:gz' if gzip else 'w', format=fmt_,
                      **extra) as tf:
        for d in directories:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tf.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))


def xenserver_tgz(path, files_newest_first, *, prefix='./', order=None,
                  gzip=True, **kw) -> None:
    """A XenServer image: 0.vhd .. n.vhd, optionally shuffled."""
    members = [('%s%d.vhd' % (prefix, i), data)
               for i, data in enumerate(files_newest_first)]
    if order is not None:
        members = [members[i] for i in order]
    make_tar(path, members, gzip=gzip, **kw)


def standard_chain(seed=1, sizes=(9 * MiB + 3 * SECTOR, 8 * MiB, 6 * MiB),
                   **kw):
    """A 3-layer chain with sizes growing to the top, and its disk."""
    rnd = random.Random(seed)
    specs = [random_layer(rnd, s, fill=0.6 if i else 0.8)
             for i, s in enumerate(sizes)]
    return build_chain(specs, rnd=rnd, **kw), expected_disk(specs), specs


def mismatch(actual: bytes, expected: bytes):
    """None if equal, else a short note on where they first differ.

    Used as ``assert mismatch(a, b) is None``: pytest's own diff of two
    disks of many MiB takes longer than a whole test module.
    """
    if actual == expected:
        return None
    n = min(len(actual), len(expected))
    off = 0
    while off < n and actual[off:off + MiB] == expected[off:off + MiB]:
        off += MiB
    while off < n and actual[off] == expected[off]:
        off += 1
    return 'lengths %d and %d, first difference at byte %d' % (
        len(actual), len(expected), off)


def trimmed(spec: LayerSpec) -> LayerSpec:
    """The layer as tapdisk writes it: no sector present past its end."""
    spb = spec.block_size // SECTOR
    for idx, (secs, data) in list(spec.blocks.items()):
        valid = (spec.size - idx * spec.block_size) // SECTOR
        if valid < spb:
            secs = set(range(spb)) if secs is None else secs
            spec.blocks[idx] = ({s for s in secs if s < valid}, data)
    return spec
