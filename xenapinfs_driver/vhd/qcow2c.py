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
"""A raw disk packed on the fly into a compressed qcow2 image.

The layout is :mod:`.qcow2out`'s (version 3, 64 KiB clusters, 16-bit
refcounts, no backing file), but each data cluster is stored compressed,
as ``qemu-img convert -c`` stores it: raw deflate with a 4 KiB window
(what qemu inflates), or plainly where deflate does not make it smaller::

    header | L1 | refcount table | refcount blocks | L2 tables |
    plain clusters | compressed clusters, byte after byte | zeros

The tables come first and hold the compressed sizes, so the disk is read
twice: the first pass compresses every data cluster and keeps only its
compressed length; the second compresses it again, identically (zlib is
deterministic for the same data and parameters), and writes it. The
second costs CPU, not space: no output file, the length known before the
first byte. A cluster whose compressed length differs between the passes
means the disk changed: the image fails loudly rather than come out
wrong.

Compressed clusters are packed one after another; a host cluster holding
parts of k of them has refcount k, which is what a consistency check
counts. Plain clusters (refcount 1) carry the "copied" flag; compressed
ones never do.

Memory: :mod:`.qcow2out`'s map, plus 2 bytes per data cluster for the
compressed lengths (64 MiB for a full disk of ``MAX_SIZE``, 2 TiB) and 2
bytes per cluster of compressed output for its refcounts (at most as
much), and a few runs of clusters in flight per compression thread.
"""

from __future__ import annotations

import array
import collections
import concurrent.futures
import os
import sys
import zlib

from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import qcow2out

CLUSTER = qcow2out.CLUSTER
CLUSTER_BITS = qcow2out.CLUSTER_BITS
COPIED = qcow2out.COPIED
COMPRESSED = 1 << 62
# The sector count of a compressed entry sits above its host offset.
CSIZE_SHIFT = 62 - (CLUSTER_BITS - 8)
SECTOR = 512
# qemu's level; its inflate takes a window of 4 KiB at most.
LEVEL = 6
WBITS = -12
MAX_REFCOUNT = 0xFFFF
MAX_WORKERS = 8
RUN = qcow2out.RUN
# Compressed clusters are gathered into writes of about this size.
PIECE = 1 << 20


def squeeze(data: bytes, level: int = LEVEL) -> bytes | None:
    """The cluster as raw deflate, or None if that is not smaller."""
    comp = zlib.compressobj(level, zlib.DEFLATED, WBITS)
    out = comp.compress(data) + comp.flush()
    return out if len(out) < CLUSTER else None


def entry(offset: int, length: int) -> int:
    """The L2 entry of a compressed cluster of ``length`` bytes at host
    ``offset``: the count is of the 512-byte sectors it touches after
    its first."""
    sectors = ((offset + length - 1) >> 9) - (offset >> 9)
    return offset | COMPRESSED | (sectors << CSIZE_SHIFT)


class Qcow2C(qcow2out.Qcow2Out):
    """The raw disk at ``path`` as a compressed qcow2 image of ``length``
    bytes: ``with Qcow2C(path) as image: send(image.length);
    image.write_to(write)``.

    :param level: zlib level (1-9).
    :param workers: compression threads (default: one per core, up to
        8; 1 compresses in the caller's thread).
    :param offload: ``offload(fn, *args)`` runs each compression (a
        program whose threads are green gives them a real one).
    Other parameters are :class:`.qcow2out.Qcow2Out`'s.
    """

    def __init__(self, path: str, source: str | None = None,
                 max_size: int | None = None, progress=None,
                 level: int = LEVEL, workers: int | None = None,
                 offload=None):
        self.level = level
        if workers is None:
            workers = min(MAX_WORKERS, os.cpu_count() or 1)
        self.workers = max(1, workers)
        self._offload = offload
        super().__init__(path, source, max_size, progress)

    # -- the first pass and the layout ---------------------------------------

    def _scan(self) -> None:
        super()._scan()
        # 0: stored plainly; else the compressed length (< CLUSTER).
        self.lengths = array.array('H')
        for _idx, out in self._squeezed(self._stored()):
            self.lengths.append(0 if out is None else len(out))

    def _data_clusters(self) -> int:
        """The plain clusters and the clusters the compressed ones fill;
        the refcounts of the latter."""
        self.plain = self.lengths.count(0)
        self.compressed = self.stored - self.plain
        self._area = array.array('H')
        pos = 0
        for n in self.lengths:
            if not n:
                continue
            last = (pos + n - 1) >> CLUSTER_BITS
            if len(self._area) <= last:
                self._area.extend(bytes(last + 1 - len(self._area)))
            for c in range(pos >> CLUSTER_BITS, last + 1):
                if self._area[c] == MAX_REFCOUNT:
                    raise errors.VhdError(
                        'a host cluster would hold more compressed '
                        'clusters than a 16-bit refcount counts',
                        source=self.disk.name)
                self._area[c] += 1
            pos += n
        self.compressed_bytes = pos
        return self.plain + len(self._area)

    def _lay_out(self) -> None:
        super()._lay_out()
        self.area_offset = self.data_offset + self.plain * CLUSTER

    # -- the image -----------------------------------------------------------

    def _refcount_block(self, k: int) -> bytes:
        # Every cluster before the compressed area is referenced once.
        lo = k * qcow2out.RC_ENTRIES
        hi = min(lo + qcow2out.RC_ENTRIES, self.total_clusters)
        start = self.area_offset // CLUSTER
        counts = array.array('H', [1]) * max(0, min(hi, start) - lo)
        counts.extend(self._area[max(0, lo - start):max(0, hi - start)])
        if len(counts) != hi - lo:
            raise AssertionError('refcount block %d counts %d clusters, '
                                 'not %d' % (k, len(counts), hi - lo))
        if sys.byteorder == 'little':
            counts.byteswap()       # refcounts are big-endian
        return counts.tobytes()

    def _entries(self):
        """Plain clusters from ``data_offset`` one after another, the
        compressed ones byte after byte from ``area_offset``."""
        plain, pos = 0, 0
        for n in self.lengths:
            if n:
                yield entry(self.area_offset + pos, n)
                pos += n
            else:
                yield (self.data_offset + plain * CLUSTER) | COPIED
                plain += 1

    def _data(self):
        which = zip(self._stored(), self.lengths)
        plain = (idx for idx, n in which if not n)
        for idx in plain:
            yield self._cluster(idx)
        which = zip(self._stored(), self.lengths)
        todo = (idx for idx, n in which if n)
        sizes = (n for n in self.lengths if n)
        gathered, size = [], 0
        for (idx, out), n in zip(self._squeezed(todo), sizes):
            if out is None or len(out) != n:
                raise errors.VhdError(
                    'cluster %d compressed to %s bytes, not %d as before: '
                    'the disk changed while being read'
                    % (idx, 'no fewer' if out is None else len(out), n),
                    source=self.disk.name)
            gathered.append(out)
            size += n
            if size >= PIECE:
                yield b''.join(gathered)
                gathered, size = [], 0
        # The file ends on a cluster boundary, as the layout counts it.
        gathered.append(bytes(-self.compressed_bytes % CLUSTER))
        if size or gathered[-1]:
            yield b''.join(gathered)

    # -- reading and compressing ---------------------------------------------

    def _stored(self):
        """The clusters holding data, ascending."""
        return self._set(0, (self.nclusters + 7) & ~7)

    def _cluster(self, idx: int) -> bytes:
        offset = idx * CLUSTER
        n = min(CLUSTER, self.disk.size - offset)
        data = self.disk.pread(n, offset)
        self._read(n)
        if n < CLUSTER:
            # The last cluster runs past the disk: the rest is zero.
            data += bytes(CLUSTER - n)
        return data

    def _squeeze_run(self, run: list) -> list:
        """(index, compressed or None) of each cluster of the run: what a
        worker does, reading included (pread and zlib release the GIL)."""
        out = []
        for idx in run:
            offset = idx * CLUSTER
            n = min(CLUSTER, self.disk.size - offset)
            data = self.disk.pread(n, offset)
            if n < CLUSTER:
                data += bytes(CLUSTER - n)
            out.append((idx, n, squeeze(data, self.level)))
        return out

    def _runs(self, indices):
        run = []
        for idx in indices:
            run.append(idx)
            if len(run) == RUN:
                yield run
                run = []
        if run:
            yield run

    def _squeezed(self, indices):
        """Yield (index, compressed or None) for the clusters, in order;
        runs of them compress on the workers, a few in flight each."""
        if self.workers == 1:
            for run in self._runs(indices):
                yield from self._counted(self._squeeze_run(run))
            return
        pending = collections.deque()
        with concurrent.futures.ThreadPoolExecutor(
                self.workers, thread_name_prefix='qcow2-deflate') as pool:
            try:
                for run in self._runs(indices):
                    if self._offload is not None:
                        pending.append(pool.submit(
                            self._offload, self._squeeze_run, run))
                    else:
                        pending.append(pool.submit(self._squeeze_run, run))
                    if len(pending) > 2 * self.workers:
                        yield from self._counted(
                            pending.popleft().result())
                while pending:
                    yield from self._counted(pending.popleft().result())
            finally:
                # A failure (or a consumer gone) waits for no more work.
                for future in pending:
                    future.cancel()

    def _counted(self, results):
        for idx, n, out in results:
            self._read(n)       # the counter is the caller's thread's
            yield idx, out
