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
"""A raw disk packed on the fly into a qcow2 image: no output file.

The image is qcow2 version 3 with 64 KiB clusters, 16-bit refcounts, no
backing file, no compression, no snapshot. A first pass finds the
clusters holding a non-zero byte (holes of a sparse file are not even
read), and the whole layout follows from them, so the length is known
before the first byte and every byte is written once, forward::

    header | L1 table | refcount table | refcount blocks | L2 tables | data

Only the clusters that hold data are stored, in the disk's order; an L2
table exists only for a 512 MiB range with data. Every cluster of the
file is referenced once, so every refcount is 1 and every table entry
carries the "copied" flag (refcount exactly one), as a consistency check
expects.

Memory: one bit per cluster of the disk (the map of the first pass, 4 MiB
for the largest disk accepted, ``MAX_SIZE``), the L1 and refcount tables
(32 KiB and 8 KiB at that size), and one table or one run of data (1 MiB
at most) at a time.
"""

from __future__ import annotations

import struct

from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import pack
from xenapinfs_driver.vhd import validate

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
L2_ENTRIES = CLUSTER // 8           # 64-bit entries: 512 MiB of disk each
REFCOUNT_ORDER = 4                  # 16-bit refcounts
RC_ENTRIES = CLUSTER * 8 >> REFCOUNT_ORDER
VERSION = 3
HEADER_LENGTH = 104                 # the version 3 header, no extra field
MAGIC = b'QFI\xfb'
COPIED = 1 << 63                    # the entry's cluster has refcount 1
# XenServer's largest VDI: it bounds the cluster map (one bit a cluster).
MAX_SIZE = validate.MAX_SIZE
# Data clusters are read and written this many at a time (1 MiB), a
# piece the upload's pipe holds a few of.
RUN = 16

_HEADER = struct.Struct('>4sIQIIQIIQQIIQQQQII')


def _clusters(nbytes: int) -> int:
    return -(-nbytes // CLUSTER)


class Qcow2Out:
    """The raw disk at ``path`` as a qcow2 image of ``length`` bytes.

    ``with Qcow2Out(path) as image: send(image.length);
    image.write_to(write)``

    :param source: the name errors give the disk (default: ``path``).
    :param max_size: refuse larger disks (default: ``MAX_SIZE``, 2 TiB).
    :param progress: called as progress(bytes read, total or None).
    :raises LimitExceeded: the disk is larger than ``max_size``.
    """

    def __init__(self, path: str, source: str | None = None,
                 max_size: int | None = None, progress=None):
        if max_size is None:
            max_size = MAX_SIZE
        self.disk = pack.Disk(path)
        try:
            if source is not None:
                self.disk.name = source
            self.virtual_size = self.disk.virtual_size
            if self.virtual_size > max_size:
                raise errors.LimitExceeded(
                    'is %d bytes, more than the limit of %d for a qcow2 '
                    'image' % (self.virtual_size, max_size),
                    source=self.disk.name, field='virtual size')
            self._read = pack.Counter(progress)
            self._scan()
            self._lay_out()
        except BaseException:
            self.disk.close()
            raise

    def __enter__(self) -> Qcow2Out:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.disk.close()

    # -- the first pass and the layout ---------------------------------------

    def _scan(self) -> None:
        self.nclusters = _clusters(self.virtual_size)
        self._map = bytearray(-(-self.nclusters // 8))
        self.stored = 0
        for idx in self.disk.nonzero(self._read, CLUSTER):
            self._map[idx >> 3] |= 1 << (idx & 7)
            self.stored += 1

    def _lay_out(self) -> None:
        self.l1_size = -(-self.nclusters // L2_ENTRIES)
        # Data clusters of each L1 entry's range: an L2 table for each
        # range with any.
        per = L2_ENTRIES // 8
        self._l2_counts = [
            int.from_bytes(self._map[i * per:(i + 1) * per],
                           'little').bit_count()
            for i in range(self.l1_size)]
        self.l2_tables = sum(1 for n in self._l2_counts if n)
        self._place(self._data_clusters())

    def _data_clusters(self) -> int:
        """Clusters of the file after the L2 tables: one a data cluster.
        """
        return self.stored

    def _place(self, data_clusters: int) -> None:
        """The offsets of the tables, for ``data_clusters`` clusters of
        data after them."""
        l1_clusters = _clusters(self.l1_size * 8)
        table, blocks, total = refcount_layout(
            1 + l1_clusters + self.l2_tables + data_clusters)
        self.total_clusters = total
        self.l1_offset = CLUSTER
        self.rt_offset = self.l1_offset + l1_clusters * CLUSTER
        self.rt_clusters = table
        self.rb_offset = self.rt_offset + table * CLUSTER
        self.rb_count = blocks
        self.l2_offset = self.rb_offset + blocks * CLUSTER
        self.data_offset = self.l2_offset + self.l2_tables * CLUSTER
        self.length = total * CLUSTER
        if self.data_offset + data_clusters * CLUSTER != self.length:
            raise AssertionError('qcow2 layout does not add up')

    # -- the image -----------------------------------------------------------

    def write_to(self, write) -> int:
        """Call ``write(data)`` with the whole image, in order; its length.
        """
        written = 0
        for piece in self._pieces():
            write(piece)
            written += len(piece)
        if written != self.length:
            raise AssertionError('the qcow2 image came out %d bytes, not %d'
                                 % (written, self.length))
        return written

    def _pieces(self):
        yield self._header()
        yield _padded(self._l1())
        yield _padded(struct.pack(
            '>%dQ' % self.rb_count,
            *(self.rb_offset + k * CLUSTER for k in range(self.rb_count))))
        for k in range(self.rb_count):
            yield _padded(self._refcount_block(k))
        yield from self._l2_tables()
        yield from self._data()

    def _refcount_block(self, k: int) -> bytes:
        """The refcounts of the clusters block k counts, big-endian:
        every cluster of this file is referenced once."""
        ones = min(RC_ENTRIES, self.total_clusters - k * RC_ENTRIES)
        return b'\x00\x01' * ones

    def _header(self) -> bytes:
        head = _HEADER.pack(
            MAGIC, VERSION, 0, 0, CLUSTER_BITS, self.virtual_size, 0,
            self.l1_size, self.l1_offset, self.rt_offset, self.rt_clusters,
            0, 0, 0, 0, 0, REFCOUNT_ORDER, HEADER_LENGTH)
        # The rest of the cluster is zero: its first 8 bytes are the end
        # of the (empty) list of header extensions.
        return _padded(head)

    def _l1(self) -> bytes:
        entries, nth = [], 0
        for count in self._l2_counts:
            if count:
                entries.append((self.l2_offset + nth * CLUSTER) | COPIED)
                nth += 1
            else:
                entries.append(0)
        return struct.pack('>%dQ' % len(entries), *entries)

    def _l2_tables(self):
        entries = self._entries()
        for i, count in enumerate(self._l2_counts):
            if not count:
                continue
            table = [0] * L2_ENTRIES
            base = i * L2_ENTRIES
            for idx in self._set(base, base + L2_ENTRIES):
                table[idx - base] = next(entries)
            yield struct.pack('>%dQ' % L2_ENTRIES, *table)

    def _entries(self):
        """The L2 entries of the data clusters, in the disk's order: here
        the clusters are stored in that order, one after another."""
        for nth in range(self.stored):
            yield (self.data_offset + nth * CLUSTER) | COPIED

    def _set(self, lo: int, hi: int):
        """The clusters in [lo, hi) holding data, ascending (lo and hi
        multiples of 8)."""
        for pos in range(lo >> 3, min(hi >> 3, len(self._map))):
            byte = self._map[pos]
            while byte:
                low = byte & -byte
                yield (pos << 3) + low.bit_length() - 1
                byte ^= low

    def _data(self):
        start = count = 0
        for idx in self._set(0, (self.nclusters + 7) & ~7):
            if count and idx == start + count and count < RUN:
                count += 1
                continue
            if count:
                yield self._run(start, count)
            start, count = idx, 1
        if count:
            yield self._run(start, count)

    def _run(self, start: int, count: int) -> bytes:
        offset = start * CLUSTER
        n = min(count * CLUSTER, self.disk.size - offset)
        data = self.disk.pread(n, offset)
        self._read(n)
        if n < count * CLUSTER:
            # The last cluster runs past the disk: the rest is zero.
            data += bytes(count * CLUSTER - n)
        return data


def refcount_layout(fixed: int) -> tuple:
    """(refcount table clusters, refcount blocks, clusters of the file)
    for a file of ``fixed`` clusters besides its refcount structures."""
    # The refcount blocks count themselves and the table that points at
    # them: grow both until they cover every cluster of the file.
    blocks, table = 0, 1
    while True:
        total = fixed + table + blocks
        need_blocks = -(-total // RC_ENTRIES)
        need_table = _clusters(need_blocks * 8)
        if (need_blocks, need_table) == (blocks, table):
            return table, blocks, total
        blocks, table = need_blocks, need_table


def _padded(data: bytes) -> bytes:
    """data followed by zeros up to a whole number of clusters."""
    return data + bytes(-len(data) % CLUSTER)
