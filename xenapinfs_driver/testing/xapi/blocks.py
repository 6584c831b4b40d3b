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
"""A chain's blocks as the export writes them: read only when sent.

``Blocks`` gives writer.write_dynamic each block of a ``vhdio.Chain``:
its bitmap from the layers' masks alone, its data as a placeholder; a
block one layer holds whole is an ``Extent`` of that layer's file, which
the export sends by sendfile, any other is composed once when written.
"""

from __future__ import annotations

import os
import ssl

from xenapinfs_driver.vhd import errors as vhderrors

PIECE = 1 << 20     # what the body gathers small writes into


class Extent:
    """Block data lying as is in one layer's file: ``length`` bytes at
    ``offset`` of ``fd``, read (or sent by sendfile) only when written."""

    __slots__ = ('fd', 'offset', 'length')

    def __init__(self, fd: int, offset: int, length: int):
        self.fd, self.offset, self.length = fd, offset, length

    def __len__(self) -> int:
        return self.length

    def read(self) -> bytes:
        data = os.pread(self.fd, self.length, self.offset)
        if len(data) != self.length:
            raise vhderrors.VhdError('%d bytes at offset %d: the file ends '
                                     'early' % (self.length, self.offset))
        return data


class _Composed:
    """A block made of several layers: composed only when written."""

    __slots__ = ('chain', 'idx', 'length')

    def __init__(self, chain, idx: int):
        self.chain, self.idx, self.length = chain, idx, chain.block_size

    def __len__(self) -> int:
        return self.length

    def read(self) -> bytes:
        return bytes(self.chain.compose(self.idx)[1])


def materialize(data):
    """The bytes of data, which may be an Extent or a composed block."""
    return data.read() if isinstance(data, (Extent, _Composed)) else data


class Bytes:
    """A file object for write_vhd that takes only bytes (a real file)."""

    def __init__(self, fobj):
        self.fobj = fobj

    def write(self, data) -> int:
        return self.fobj.write(materialize(data))


class Blocks:
    """The composed blocks of a chain, as writer.write_dynamic wants them.

    The writer asks for each block twice (its bitmap for the BAT, then its
    data): the bitmap comes from the layers' masks alone, and the data is
    a placeholder, read once when written. A block one layer holds whole
    is that layer's bytes: an Extent, which the export sends from the
    file without copying it through Python.
    """

    def __init__(self, chain, keys: list):
        self.chain = chain
        self.keys = keys

    def __iter__(self):
        return iter(self.keys)

    def __getitem__(self, idx):
        chain = self.chain
        full = (1 << chain.spb) - 1
        have = 0
        for vhd in chain.files:
            mask = chain._layer_mask(vhd, idx)
            if have == 0 and mask == full:
                return None, chain.extent(vhd, idx)
            have |= mask
        if have == full:
            return None, _Composed(chain, idx)
        pad = -chain.spb % 8
        bitmap = (have << pad).to_bytes((chain.spb + pad) // 8, 'big')
        return bitmap, _Composed(chain, idx)


class Body:
    """The response body: small writes (VHD metadata) are gathered into
    big sends, and block data lying whole in a layer's file goes from the
    file to the socket by sendfile, never through Python.

    limit: a drop_after fault; Cut is raised once that many bytes went.
    """

    def __init__(self, handler, limit: int | None = None):
        self.wfile = handler.wfile
        self.sock = handler.connection
        # TLS encrypts in Python's ssl module: no sendfile there.
        self.sendfile = not isinstance(self.sock, ssl.SSLSocket)
        self.buf = bytearray()
        self.sent = 0
        self.limit = limit

    def write(self, data) -> int:
        n = len(data)
        if isinstance(data, Extent):
            self.flush()
            self._send_extent(data)
            return n
        data = materialize(data)
        if n >= PIECE:
            self.flush()
            self._send(data)
        else:
            self.buf += data
            if len(self.buf) >= PIECE:
                self.flush()
        return n

    def flush(self) -> None:
        if self.buf:
            data = bytes(self.buf)
            self.buf.clear()
            self._send(data)

    def _room(self, n: int) -> int:
        if self.limit is None:
            return n
        return max(0, min(n, self.limit - self.sent))

    def _send(self, data) -> None:
        room = self._room(len(data))
        self.wfile.write(memoryview(data)[:room])
        self.sent += room
        if room < len(data):
            raise Cut()

    def _send_extent(self, ext) -> None:
        room = self._room(ext.length)
        if room and self.sendfile:
            try:
                with os.fdopen(os.dup(ext.fd), 'rb', buffering=0) as f:
                    self.sock.sendfile(f, ext.offset, room)
            except ValueError:
                # A non-blocking socket (eventlet's, when the server runs
                # in a patched process): refused before anything went.
                self.sendfile = False
            else:
                self.sent += room
                if room < ext.length:
                    raise Cut()
                return
        self._send(ext.read())


class Cut(Exception):
    """drop_after: enough was sent."""
