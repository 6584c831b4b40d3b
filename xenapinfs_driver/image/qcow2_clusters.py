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
"""The compressed clusters of a qcow2 file, inflated where they lie.

``qemu-img map`` gives no file offset for a compressed cluster, so the
driver finds it itself, as qemu does: the L1 table names the L2 table, the
L2 entry the cluster's bytes (its offset and its length in 512-byte
sectors), which are a raw deflate stream of one cluster. Published cloud
images are compressed qcow2 files, so reading these clusters in place
keeps such an image at one local copy, its own file.

Only what is read plainly is taken here: qcow2 version 2 or 3, zlib
compression, no extended L2 entries (subclusters), no feature bit this
module does not know. Anything else is :class:`~.qemu_map.NotMappable`
and the image is converted by qemu-img, as before. Damage (an entry
pointing past the file, data that does not inflate to a whole cluster) is
:class:`~.qemu_map.Damaged`, found by :meth:`Clusters.verify` before
anything is written. What is allocated is bounded: the L1 table (at most
:data:`MAX_L1_BYTES`), one L2 table and one cluster at a time.
"""

import os
import struct
import zlib

from xenapinfs_driver.image import qemu_map

MAGIC = b'QFI\xfb'
HEADER_V2 = 72
# incompatible_features bits (qcow2 specification, version 3).
DIRTY, CORRUPT, DATA_FILE, COMPRESSION_TYPE, EXTENDED_L2 = (
    1 << n for n in range(5))
KNOWN = DIRTY | CORRUPT | DATA_FILE | COMPRESSION_TYPE | EXTENDED_L2
ZLIB = 0
OFFSET_MASK = 0x00fffffffffffe00        # L1 and standard L2 entries
COMPRESSED = 1 << 62
MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21
# An L1 table this large maps 4 Mi L2 tables: far past any real image.
MAX_L1_BYTES = 32 << 20
SECTOR = 512


class Clusters:
    """Reads guest bytes held in compressed clusters of the qcow2 file
    open as ``fd`` (of ``file_size`` bytes); ``name`` appears in errors.

    :raises NotMappable: a layout this module does not read.
    """

    def __init__(self, fd, file_size, name):
        self.fd = fd
        self.file_size = file_size
        self.name = name
        head = self._pread(112, 0, 'the header')
        if len(head) < HEADER_V2 or head[:4] != MAGIC:
            raise qemu_map.NotMappable('no qcow2 header')
        (version, backing, bits, size, crypt, l1_size,
         l1_offset) = struct.unpack_from('>I Q 4x I Q I I Q', head, 4)
        if version not in (2, 3):
            raise qemu_map.NotMappable('qcow2 version %d' % version)
        if backing or crypt:
            raise qemu_map.NotMappable('a backing file or encryption')
        if not MIN_CLUSTER_BITS <= bits <= MAX_CLUSTER_BITS:
            raise qemu_map.NotMappable('cluster_bits %d' % bits)
        incompatible, compression = 0, ZLIB
        if version == 3:
            incompatible, = struct.unpack_from('>Q', head, 72)
            header_length, = struct.unpack_from('>I', head, 100)
            if incompatible & COMPRESSION_TYPE and header_length > 104 \
                    and len(head) > 104:
                compression = head[104]
        # A corrupt image is qemu's to judge; the other two change what
        # an L2 entry means or where the data is.
        if incompatible & ~KNOWN or incompatible & (CORRUPT | DATA_FILE |
                                                    EXTENDED_L2):
            raise qemu_map.NotMappable('incompatible features %#x'
                                       % incompatible)
        if compression != ZLIB:
            raise qemu_map.NotMappable('compression type %d (not zlib)'
                                       % compression)
        self.cluster_bits = bits
        self.cluster_size = 1 << bits
        self.virtual_size = size
        self.l2_entries = self.cluster_size // 8
        self.csize_shift = 62 - (bits - 8)
        self.csize_mask = (1 << (bits - 8)) - 1
        self.coffset_mask = (1 << self.csize_shift) - 1
        if l1_size * 8 > MAX_L1_BYTES:
            raise qemu_map.NotMappable('an L1 table of %d entries' % l1_size)
        self.l1 = struct.unpack('>%dQ' % l1_size, self._exact(
            l1_size * 8, l1_offset, 'the L1 table'))
        self._l2 = (None, None)         # (offset, table)
        self._cluster = (None, None)    # (guest cluster, bytes)

    # -- reading the file --

    def _pread(self, n, offset, what):
        try:
            return os.pread(self.fd, n, offset)
        except OSError as exc:
            raise qemu_map.Damaged('cannot read %s at offset %d: %s'
                                   % (what, offset, exc.strerror)) from None

    def _exact(self, n, offset, what):
        if offset + n > self.file_size:
            raise qemu_map.Damaged(
                '%s (%d bytes at offset %d) lies past the end of the file '
                '(%d bytes): the file is cut short'
                % (what, n, offset, self.file_size))
        data = self._pread(n, offset, what)
        if len(data) < n:
            raise qemu_map.Damaged('%s at offset %d: the file changed '
                                   'while being read' % (what, offset))
        return data

    def _entry(self, cluster):
        """The L2 entry of guest cluster ``cluster``."""
        l1_index, l2_index = divmod(cluster, self.l2_entries)
        if l1_index >= len(self.l1):
            raise qemu_map.Damaged('guest cluster %d lies past its L1 table'
                                   % cluster)
        table_offset = self.l1[l1_index] & OFFSET_MASK
        if not table_offset:
            return 0
        if self._l2[0] != table_offset:
            self._l2 = (table_offset, self._exact(
                self.cluster_size, table_offset, 'an L2 table'))
        return struct.unpack_from('>Q', self._l2[1], l2_index * 8)[0]

    def cluster(self, index):
        """Guest cluster ``index``, inflated: ``cluster_size`` bytes.

        :raises NotMappable: it is not a compressed cluster.
        :raises Damaged: its data does not inflate to a whole cluster.
        """
        if self._cluster[0] == index:
            return self._cluster[1]
        entry = self._entry(index)
        if not entry & COMPRESSED:
            raise qemu_map.NotMappable('guest cluster %d has no offset in '
                                       'the map but is not compressed'
                                       % index)
        offset = entry & self.coffset_mask
        sectors = ((entry >> self.csize_shift) & self.csize_mask) + 1
        length = sectors * SECTOR - (offset & (SECTOR - 1))
        # The last compressed cluster may end before its last sector does.
        length = min(length, self.file_size - offset)
        where = 'the compressed guest cluster %d (file offset %d)' % (
            index, offset)
        if length <= 0:
            raise qemu_map.Damaged('%s lies past the end of the file'
                                   % where)
        packed = self._exact(length, offset, where)
        inflater = zlib.decompressobj(-15)
        try:
            data = inflater.decompress(packed, self.cluster_size)
        except zlib.error as exc:
            raise qemu_map.Damaged('%s does not inflate: %s'
                                   % (where, exc)) from None
        if len(data) < self.cluster_size:
            raise qemu_map.Damaged('%s inflates to %d bytes, not %d'
                                   % (where, len(data), self.cluster_size))
        self._cluster = (index, data)
        return data

    def read(self, offset, n):
        """``n`` guest bytes from guest ``offset``, all in compressed
        clusters."""
        out = bytearray()
        end = offset + n
        while offset < end:
            index, skip = divmod(offset, self.cluster_size)
            take = min(end - offset, self.cluster_size - skip)
            out += self.cluster(index)[skip:skip + take]
            offset += take
        return bytes(out)

    def verify(self, start, stop, block, data_blocks):
        """Inflate every cluster of guest bytes ``start..stop`` once, so
        that damage is found before anything is written, and set
        ``data_blocks[i]`` for each ``block``-sized piece of the disk
        they hold a non-zero byte of."""
        offset = start
        while offset < stop:
            index, skip = divmod(offset, self.cluster_size)
            take = min(stop - offset, self.cluster_size - skip)
            piece = self.cluster(index)[skip:skip + take]
            if piece.count(0) != len(piece):
                for i in range(offset // block,
                               (offset + take - 1) // block + 1):
                    data_blocks[i] = 1
            offset += take
