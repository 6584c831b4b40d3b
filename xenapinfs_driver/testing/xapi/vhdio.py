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
"""Reading a VDI's chain as one disk, and replacing a VDI's content.

``Chain`` opens a leaf and its ancestors (by their parent locators, as
blktap does) and composes blocks: the newest layer wins per sector. A
fixed VHD may be the base (a plugin may import one). ``write_vhd`` streams
the composed disk as one dynamic VHD, with only the blocks some layer has
data in. ``LeafRewriter`` builds a new leaf beside the VDI's file, over
the same parent, writes the new content into it, makes every sector the
new content leaves out read as zeros (writing zeros only where an
ancestor has data, so the file stays sparse), and swaps it in: a failure
leaves the VDI as it was.
"""

from __future__ import annotations

import os
import re
import uuid as uuidlib

from xenapinfs_driver.testing.xapi import blocks
from xenapinfs_driver.vhd import errors as vhderrors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import ops
from xenapinfs_driver.vhd import writer

SECTOR = fmt.SECTOR
MAX_DEPTH = 64          # opened for reading; the 30-layer limit is sm's
_RUNS = re.compile('1+')


def runs(mask: int, spb: int):
    """(first, end) sector runs of a mask, sector 0 in the top bit."""
    bits = format(mask, '0%db' % spb)
    return [(m.start(), m.end()) for m in _RUNS.finditer(bits)]


_ZEROS = bytes(16 << 20)


def is_zero(view) -> bool:
    n = len(view)
    if n <= len(_ZEROS):
        # Compared where it lies, up to its first non-zero byte: no copy.
        return _ZEROS.startswith(view)
    return not bytes(view).strip(b'\0')


class Chain:
    """A VHD and its ancestors, newest first, open for reading."""

    def __init__(self, path: str, max_depth: int = MAX_DEPTH):
        self.paths = ops.chain_of(path, max_depth)
        self.files = []
        try:
            for p in self.paths:
                self.files.append(image.VhdFile(p))
            self._check()
        except BaseException:
            self.close()
            raise
        top = self.files[0]
        self.size = top.size
        self.block_size = top.block_size if top.header else \
            writer.DEFAULT_BLOCK
        self.spb = self.block_size // SECTOR
        self.nblocks = -(-self.size // self.block_size)

    def _check(self) -> None:
        bs = None
        for pos, vhd in enumerate(self.files):
            if vhd.header is None:
                if pos != len(self.files) - 1:
                    raise vhderrors.ChainError('a fixed disk has no parent',
                                               source=vhd.path)
                continue
            if bs is not None and vhd.block_size != bs:
                raise vhderrors.ChainError(
                    'block size %d differs from the child\'s %d'
                    % (vhd.block_size, bs), source=vhd.path)
            bs = vhd.block_size
        for kid, par in zip(self.files, self.files[1:]):
            if kid.header.parent_unique_id != par.footer.unique_id:
                raise vhderrors.ChainError(
                    'the parent is not the disk the child was made from',
                    source=kid.path, field='parent unique id')

    def close(self) -> None:
        for f in self.files:
            f.close()
        self.files = []

    def __enter__(self) -> Chain:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _layer_mask(self, vhd, idx: int) -> int:
        if vhd.header is not None:
            return vhd.mask(idx) if idx < len(vhd.bat) else 0
        valid = min(self.spb, (vhd.size - idx * self.block_size) // SECTOR)
        if valid <= 0:
            return 0
        full = (1 << self.spb) - 1
        return full ^ ((1 << (self.spb - valid)) - 1)

    def _layer_data(self, vhd, idx: int) -> bytes:
        if vhd.header is not None:
            return vhd.read_block(idx)
        start = idx * self.block_size
        n = min(self.block_size, vhd.size - start)
        return os.pread(vhd.fd, n, start).ljust(self.block_size, b'\0')

    def extent(self, vhd, idx: int) -> blocks.Extent:
        """Block idx (whole) as vhd stores it."""
        if vhd.header is not None:
            return blocks.Extent(vhd.fd, vhd.bat[idx] * SECTOR +
                                 vhd.bm_size, self.block_size)
        return blocks.Extent(vhd.fd, idx * self.block_size, self.block_size)

    def mask(self, idx: int) -> int:
        """The sectors of block idx that some layer provides."""
        out = 0
        for vhd in self.files:
            out |= self._layer_mask(vhd, idx)
        return out

    def keys(self) -> list:
        """The blocks (below the top's size) some layer has data in."""
        cand = set()
        for vhd in self.files:
            if vhd.header is None:
                cand.update(range(-(-vhd.size // self.block_size)))
            else:
                cand.update(vhd.allocated())
        return [i for i in sorted(cand) if i < self.nblocks and self.mask(i)]

    def compose(self, idx: int) -> tuple[int, bytearray]:
        """(mask of present sectors, the block's data, zeros elsewhere)."""
        out = bytearray(self.block_size)
        have = 0
        full = (1 << self.spb) - 1
        for vhd in self.files:
            mask = self._layer_mask(vhd, idx) & ~have
            if not mask:
                continue
            data = self._layer_data(vhd, idx)
            for s, e in runs(mask, self.spb):
                out[s * SECTOR:e * SECTOR] = data[s * SECTOR:e * SECTOR]
            have |= mask
            if have == full:
                break
        return have, out


def vhd_length(chain: Chain, keys: list) -> int:
    """The size of what write_vhd writes."""
    lay = writer.Layout(chain.size, keys, chain.block_size, None, True, [],
                        writer.ALIGN)
    return lay.footer_offset + fmt.FOOTER_SIZE


def write_vhd(chain: Chain, fobj, keys: list | None = None,
              extents: bool = False) -> None:
    """The chain's disk as one dynamic tap VHD, written forward to fobj.

    With extents, fobj.write is also given Extent and composed blocks
    (see blocks.materialize), so that it may send file ranges as they are.
    """
    keys = chain.keys() if keys is None else keys
    fobj = fobj if extents else blocks.Bytes(fobj)
    writer.write_dynamic(fobj, chain.size, blocks.Blocks(chain, keys),
                         order=keys,
                         block_size=chain.block_size)


def flatten(path: str, dest: str) -> None:
    """A new dynamic VHD at dest holding path's chain's disk."""
    with Chain(path) as chain:
        tmp = '%s.%s.part' % (dest, uuidlib.uuid4().hex[:8])
        try:
            with open(tmp, 'xb') as f:
                write_vhd(chain, f)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


class LeafRewriter:
    """New content for the VDI whose file is leaf, written beside it.

    Use ``write`` for the data (sector-aligned), then ``finish`` and
    ``commit``; ``abort`` removes the new file. ``tmp`` never matches the
    ``<uuid>.vhd`` pattern, so a scan never sees it.
    """

    def __init__(self, leaf: str):
        self.leaf = leaf
        self.parent = ops.parent_path(leaf)
        self.tmp = os.path.join(os.path.dirname(leaf), '.%s.%s.part' % (
            os.path.basename(leaf), uuidlib.uuid4().hex[:8]))
        self.vhd = None
        self.parents = None
        size = ops.get_size(leaf)
        ops.create(self.tmp, size, parent=self.parent)
        try:
            self.vhd = image.VhdFile(self.tmp, writable=True)
            self.parents = Chain(self.parent) if self.parent else None
        except BaseException:
            self.abort()
            raise
        self.size = size
        self.block_size = self.vhd.block_size
        self.spb = self.vhd.spb
        self.written = {}

    def write(self, offset: int, data) -> None:
        """Write data at offset; all-zero blocks are left out."""
        view = memoryview(data)
        if offset % SECTOR or len(view) % SECTOR or \
                offset + len(view) > self.size:
            raise ValueError('%d bytes at %d do not fit a disk of %d bytes '
                             'in whole sectors' % (len(view), offset,
                                                   self.size))
        pos = 0
        while pos < len(view):
            idx, within = divmod(offset + pos, self.block_size)
            n = min(len(view) - pos, self.block_size - within)
            piece = view[pos:pos + n]
            if not is_zero(piece):
                self.vhd.write(offset + pos, piece)
                first, count = within // SECTOR, n // SECTOR
                self.written[idx] = self.written.get(idx, 0) | (
                    ((1 << count) - 1) << (self.spb - first - count))
            pos += n

    def file_size(self) -> int:
        return os.fstat(self.vhd.fd).st_size

    def finish(self) -> None:
        """Zero what an ancestor has and the new content did not write."""
        if self.parents is not None:
            zeros = bytes(self.block_size)
            for idx in self.parents.keys():
                base = idx * self.block_size
                need = self.parents.mask(idx) & ~self.written.get(idx, 0)
                if not need or base >= self.size:
                    continue
                n = min(self.block_size, self.size - base)
                self.vhd.write(base, zeros[:n], present=need)
        self.vhd.flush()

    def commit(self) -> None:
        self._close()
        os.replace(self.tmp, self.leaf)

    def _close(self) -> None:
        if self.vhd is not None:
            self.vhd.close()
            self.vhd = None
        if self.parents is not None:
            self.parents.close()
            self.parents = None

    def abort(self) -> None:
        self._close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass
