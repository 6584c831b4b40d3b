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
"""Compose the layers of a chain into one disk, in whatever order they come.

The newest layer wins per sector. Each layer's sector bitmaps are kept (one
byte per block, plus the mask of each partly filled block), so a layer only
writes the sectors no newer layer has written, and layers may arrive newest
first, base first, or mixed. A mask is an int of one bit per sector of the
block, sector 0 in the most significant bit, as the bitmap stores it.
"""

from __future__ import annotations

import array
import re

from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt

NONE, FULL, PARTIAL = 0, 1, 2     # what a layer holds of a block
_RUNS = re.compile(b'1+')
ZERO_FILL_CHUNK = 1 << 20
_ZEROS = bytes(ZERO_FILL_CHUNK)
FIXED_GRAIN = 1 << 16


def _is_zero(view) -> bool:
    if view[0] or view[-1]:
        return False
    n = len(view)
    if n <= ZERO_FILL_CHUNK:
        return view.tobytes() == (_ZEROS if n == ZERO_FILL_CHUNK
                                  else _ZEROS[:n])
    return not view.tobytes().strip(b'\0')


def _nonzero_runs(view, offset: int, grain: int):
    """(lo, hi) ranges of ``view`` (at disk ``offset``) that hold data,
    in pieces aligned to ``grain`` on the disk, adjacent ones joined."""
    start = None
    pos = 0
    end = len(view)
    while pos < end:
        stop = min(end, (offset + pos) // grain * grain + grain - offset)
        if _is_zero(view[pos:stop]):
            if start is not None:
                yield start, pos
                start = None
        elif start is None:
            start = pos
        pos = stop
    if start is not None:
        yield start, end


def _merge(runs, size):
    """Join adjacent (start, stop) runs, clip to size, as (start, length)."""
    start = stop = None
    for lo, hi in runs:
        hi = min(hi, size)
        if lo >= hi:
            continue
        if start is not None and lo == stop:
            stop = hi
            continue
        if start is not None:
            yield start, stop - start
        start, stop = lo, hi
    if start is not None:
        yield start, stop - start


class Coverage:
    """Which sectors of which blocks one layer provides."""

    def __init__(self, rank: int, size: int, spb: int | None, fixed=False):
        self.rank = rank
        self.size = size
        self.fixed = fixed
        self.spb = spb
        self.full = (1 << spb) - 1 if spb else 0
        nblocks = -(-size // (spb * fmt.SECTOR)) if spb else 0
        self.flags = bytearray(0 if fixed else nblocks)
        self.partial: dict[int, int] = {}
        # The blocks with data, so that nothing walks every block of a
        # big sparse disk.
        self.touched = array.array('I')

    def set(self, idx: int, mask: int) -> None:
        if mask and not self.flags[idx]:
            self.touched.append(idx)
        if mask == self.full:
            self.flags[idx] = FULL
        elif mask:
            self.flags[idx] = PARTIAL
            self.partial[idx] = mask

    def mask(self, idx: int, spb: int) -> int:
        if self.fixed:
            start = idx * spb
            have = self.size // fmt.SECTOR - start
            if have <= 0:
                return 0
            if have >= spb:
                return (1 << spb) - 1
            return ((1 << have) - 1) << (spb - have)
        if idx >= len(self.flags):
            return 0
        flag = self.flags[idx]
        if flag == FULL:
            return self.full
        if flag == PARTIAL:
            return self.partial[idx]
        return 0


class Composer:
    """Turns block data into positioned writes on a target.

    :param target: an object with ``pwrite(view, offset)``, or None to
        only read and account (``info`` and ``check``).
    :param fresh: the target reads zeros wherever nothing is written, so
        all-zero runs need not be written where no older layer wrote.
    """

    def __init__(self, target=None, fresh: bool = True,
                 mask_budget: int = 256 << 20):
        self.target = target
        self.fresh = fresh
        self.mask_budget = mask_budget
        self.mask_bytes = 0
        self.block_size: int | None = None
        self.spb: int | None = None
        self.layers: dict[int, Coverage] = {}
        self.bytes_written = 0

    # -- bookkeeping ---------------------------------------------------------

    def begin_layer(self, layer) -> None:
        bs = layer.block_size
        if self.block_size is None:
            self.block_size = bs
            self.spb = bs // fmt.SECTOR
        elif bs != self.block_size:
            raise errors.ChainError(
                '%d differs from the %d of the other layers'
                % (bs, self.block_size), field='block size')
        self.layers[layer.rank] = Coverage(layer.rank, layer.size, self.spb)

    def end_fixed(self, layer) -> None:
        self.layers[layer.rank] = Coverage(layer.rank, layer.size, None,
                                           fixed=True)

    def _newer(self, rank: int, idx: int) -> int:
        mask = 0
        for r, cov in self.layers.items():
            if r < rank:
                mask |= cov.mask(idx, self.spb)
        return mask

    def _older(self, rank: int, idx: int) -> int:
        mask = 0
        for r, cov in self.layers.items():
            if r > rank:
                mask |= cov.mask(idx, self.spb)
        return mask

    def union(self, idx: int) -> int:
        mask = 0
        for cov in self.layers.values():
            mask |= cov.mask(idx, self.spb)
        return mask

    # -- writing -------------------------------------------------------------

    def _emit(self, view, offset: int, runs, skip_zero: bool) -> None:
        """Write the parts of view (at disk offset) that runs select.

        runs is None for "all of it", else a list of (start, end) disk
        byte ranges sorted by start.
        """
        if self.target is None:
            return
        end = offset + len(view)
        pieces = ((offset, end),) if runs is None else runs
        for start, stop in pieces:
            if stop <= offset:
                continue
            if start >= end:
                break
            lo, hi = max(start, offset), min(stop, end)
            part = view[lo - offset:hi - offset]
            if skip_zero and _is_zero(part):
                continue
            self.target.pwrite(part, lo)
            self.bytes_written += hi - lo

    def _runs(self, mask: int, spb: int, base: int):
        bits = format(mask, '0%db' % spb).encode('ascii')
        return [(base + m.start() * fmt.SECTOR, base + m.end() * fmt.SECTOR)
                for m in _RUNS.finditer(bits)]

    def write_block(self, layer, idx: int, bitmap: bytes, src) -> int:
        """Consume one block's data from src; return its present sectors."""
        spb, bs = self.spb, self.block_size
        mask = fmt.mask_of(bitmap, spb)
        base = idx * bs
        valid = min(spb, (layer.size - base) // fmt.SECTOR)
        full = (1 << spb) - 1
        if valid < spb:
            mask &= full ^ ((1 << (spb - valid)) - 1)
        cov = self.layers[layer.rank]
        if mask and mask != full:
            # Partly filled blocks keep their mask until the end, for the
            # layers still to come: that is the memory a chain costs.
            self.mask_bytes += spb // 8 + 64
            if self.mask_bytes > self.mask_budget:
                raise errors.LimitExceeded(
                    'more partly filled blocks than the mask memory limit '
                    'of %d bytes allows' % self.mask_budget,
                    field='bitmap of block %d' % idx)
        cov.set(idx, mask)
        write = mask & ~self._newer(layer.rank, idx)
        if self.target is None or not write:
            src.skip(bs, 'block %d' % idx)
            return mask.bit_count()
        runs = None if write == full else self._runs(write, spb, base)
        skip_zero = self.fresh and not self._older(layer.rank, idx)
        offset = base
        for view in src.slices(bs, 'block %d' % idx):
            self._emit(view, offset, runs, skip_zero)
            offset += len(view)
        return mask.bit_count()

    def write_fixed(self, rank: int, offset: int, view) -> None:
        """Data of a fixed disk (always the base of its chain)."""
        if self.target is None:
            return
        if not any(r < rank for r in self.layers):
            if self.fresh:
                # A fixed disk's data comes in reads that straddle its
                # zero runs: holes are found per grain, not per read, so
                # the file holds little more than the data.
                for lo, hi in _nonzero_runs(view, offset, FIXED_GRAIN):
                    self._emit(view[lo:hi], offset + lo, None, False)
            else:
                self._emit(view, offset, None, False)
            return
        bs, spb = self.block_size, self.spb
        if bs is None:
            # Only fixed disks came before (an invalid chain, refused once
            # all is read): they cover everything up to their size.
            cover = max(c.size for r, c in self.layers.items() if r < rank)
            if offset + len(view) > cover:
                skip = max(0, cover - offset)
                self._emit(view[skip:], offset + skip, None, self.fresh)
            return
        # Newer layers already wrote: mask them block by block.
        end = offset + len(view)
        pos = offset
        while pos < end:
            idx = pos // bs
            stop = min(end, (idx + 1) * bs)
            newer = self._newer(rank, idx)
            part = view[pos - offset:stop - offset]
            if not newer:
                self._emit(part, pos, None, self.fresh)
            elif newer != (1 << spb) - 1:
                write = ((1 << spb) - 1) & ~newer
                self._emit(part, pos, self._runs(write, spb, idx * bs),
                           self.fresh)
            pos = stop

    def _touched(self, nblocks: int):
        """Sorted indices of the blocks some layer has data in."""
        touched = set()
        for cov in self.layers.values():
            if cov.fixed:
                touched.update(range(min(nblocks,
                                         -(-cov.size // self.block_size))))
            else:
                touched.update(cov.touched)
        return sorted(i for i in touched if i < nblocks)

    def holes(self, size: int):
        """Yield (offset, length) of the ranges no layer provides."""
        bs = self.block_size
        if bs is None:
            fixed = [c.size for c in self.layers.values() if c.fixed]
            covered = max(fixed, default=0)
            if covered < size:
                yield covered, size - covered
            return
        spb, full = self.spb, (1 << self.spb) - 1
        runs = []
        pos = 0                         # end of what has been accounted
        for idx in self._touched(-(-size // bs)):
            base = idx * bs
            if base > pos:
                runs.append((pos, base))
            mask = self.union(idx)
            if mask != full:
                runs.extend(self._runs(~mask & full, spb, base))
            pos = base + bs
            if len(runs) > 1024:
                yield from _merge(runs[:-1], size)
                runs = runs[-1:]
        if pos < size:
            runs.append((pos, size))
        yield from _merge(runs, size)

    def zero_fill(self, size: int) -> None:
        for offset, length in self.holes(size):
            while length:
                n = min(length, ZERO_FILL_CHUNK)
                self.target.pwrite(memoryview(_ZEROS)[:n], offset)
                offset += n
                length -= n

    def allocated(self, size: int) -> int:
        """Bytes of the composed disk that some layer provides."""
        return size - sum(length for _, length in self.holes(size))
