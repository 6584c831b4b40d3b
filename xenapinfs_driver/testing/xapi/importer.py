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
"""The body of ``PUT /import_raw_vdi``, read once and written as it comes.

``Body`` reads by Content-Length or chunked encoding. ``Importer`` feeds a
``vhdio.LeafRewriter``: ``raw`` in whole blocks, ``vhd`` through the VHD
library's forward reader (``LayerReader``), whose blocks ``Composer``
receives: sectors a block's bitmap leaves out are zeros. After each write
it checks the export's quota (and a ``disk_full`` fault) and whether the
task is being cancelled.
"""

from __future__ import annotations

from xenapinfs_driver.testing.xapi import errors
from xenapinfs_driver.testing.xapi import sessions
from xenapinfs_driver.testing.xapi import vhdio
from xenapinfs_driver.vhd import errors as vhderrors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import layer as layermod
from xenapinfs_driver.vhd import stream

PIECE = 1 << 20
MAX_BODY_BLOCK = 16 << 20       # largest VHD block size accepted
DRAIN_LIMIT = 64 << 20          # what is read after a failure, at most


class HttpFailure(Exception):
    """Answer with this status; the details also go to the task."""

    def __init__(self, status: int, details):
        super().__init__(details)
        self.status = status
        self.details = list(details)


class Body:
    """The request body, by Content-Length or chunked."""

    def __init__(self, handler):
        self.rfile = handler.rfile
        te = handler.headers.get('Transfer-Encoding', '').lower()
        self.chunked = 'chunked' in te
        self.left = None
        self.chunk_left = 0
        self.done = False
        self.consumed = 0
        if not self.chunked:
            try:
                self.left = int(handler.headers.get('Content-Length', ''))
            except ValueError:
                raise HttpFailure(411, ['VDI_IO_ERROR', 'the request needs '
                                        'a Content-Length or chunked '
                                        'encoding']) from None
        self.length = self.left

    def _next_chunk(self) -> None:
        line = self.rfile.readline(1024)
        try:
            size = int(line.split(b';', 1)[0].strip(), 16)
        except ValueError:
            raise vhderrors.Truncated('bad chunk header') from None
        if size == 0:
            while self.rfile.readline(1024).strip():
                pass                # trailers
            self.done = True
        self.chunk_left = size

    def read(self, n: int) -> bytes:
        """Up to n bytes; b'' at the end of the body."""
        if self.done:
            return b''
        if not self.chunked:
            data = self.rfile.read(min(n, self.left)) if self.left else b''
            if self.left and not data:
                raise vhderrors.Truncated('the body ends %d bytes early'
                                          % self.left)
            self.left -= len(data)
            self.done = not self.left
        else:
            if not self.chunk_left:
                self._next_chunk()
                if self.done:
                    return b''
            data = self.rfile.read(min(n, self.chunk_left))
            if not data:
                raise vhderrors.Truncated('the body ends inside a chunk')
            self.chunk_left -= len(data)
            if not self.chunk_left:
                self.rfile.readline(16)     # the CRLF after the chunk
        self.consumed += len(data)
        return data

    def read_full(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            data = self.read(n - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        return b''.join(parts)

    def drain(self) -> bool:
        """Read what is left (bounded); whether the body was all read."""
        try:
            left = DRAIN_LIMIT
            while left > 0:
                data = self.read(min(PIECE, left))
                if not data:
                    return True
                left -= len(data)
        except (OSError, vhderrors.VhdError):
            pass
        return False


class Importer:
    """Feeds a LeafRewriter, checking space and cancellation as it goes.

    :param req: the transfer's request (its server, database, call, task).
    :param export: the export directory the quota applies to.
    """

    def __init__(self, req, rewriter, export: str, leaf: str):
        self.req = req
        self.rewriter = rewriter
        storage = req.server.storage
        self.quota = storage.sr_size
        self.base = storage.usage(export, [leaf, rewriter.tmp]) \
            if self.quota is not None else 0

    def write(self, offset: int, data) -> None:
        self.rewriter.write(offset, data)
        call = self.req.call
        if call.disk_full or (self.quota is not None and self.base +
                              self.rewriter.file_size() > self.quota):
            call.disk_full = False
            raise errors.DiskFull()
        if sessions.is_cancelling(self.req.db, self.req.task):
            raise errors.XapiError('TASK_CANCELLED', self.req.task)
        sessions.set_progress(self.req.db, self.req.task,
                              (offset + len(data)) / self.rewriter.size)

    def raw(self, body: Body) -> None:
        bs, size = self.rewriter.block_size, self.rewriter.size
        offset = 0
        while True:
            data = body.read_full(bs)
            if not data:
                return
            if offset + len(data) > size:
                raise errors.XapiError('VDI_IO_ERROR', 'the data is longer '
                                       'than the VDI (%d bytes)' % size)
            if len(data) % vhdio.SECTOR:
                data += bytes(-len(data) % vhdio.SECTOR)
            self.write(offset, data)
            offset += len(data)

    def vhd(self, body: Body) -> None:
        def chunks():
            while True:
                data = body.read(PIECE)
                if not data:
                    return
                yield data
        src = stream.Source(chunks(), 'body')
        composer = Composer(self)
        layer = layermod.LayerReader(src, 'body', body.length, 0, composer,
                                     layermod.Limits()).read()
        if src.read_upto(1):
            raise errors.XapiError('VDI_IO_ERROR', 'data after the VHD')
        if layer.disk_type == fmt.DISK_DYNAMIC:
            _footer_where_read_forward(layer, composer.last_end, src.offset)


def _footer_where_read_forward(layer, last_end: int | None,
                               length: int) -> None:
    """XAPI reads an imported VHD forward (vhd-tool, from ocaml-vhd's
    stream reader): the blocks after the BAT in any order with gaps
    skipped, then the footer right after the last block, or right after
    the sector-aligned BAT when there is none. Anything else there (a
    batmap, padding) it would take for the footer and refuse."""
    if last_end is None:
        hdr = layer.header
        table_end = hdr.table_offset + 4 * hdr.max_table_entries
        last_end = table_end + (-table_end % fmt.SECTOR)
    if length - fmt.FOOTER_SIZE != last_end:
        raise errors.XapiError(
            'VDI_IO_ERROR', 'the VHD footer is at offset %d, not at %d right '
            'after the last block (or the BAT), where XAPI reads it'
            % (length - fmt.FOOTER_SIZE, last_end))


class Composer:
    """What LayerReader calls with the body's blocks or fixed data."""

    def __init__(self, importer: Importer):
        self.imp = importer
        self.size = importer.rewriter.size
        self.pending = bytearray()
        self.pending_at = 0
        # Where the body's last block ended: past it comes the footer.
        self.last_end = None

    def begin_layer(self, layer) -> None:
        if layer.disk_type == fmt.DISK_DIFFERENCING:
            raise vhderrors.ChainError('a differencing VHD has no meaning '
                                       'alone', field='disk type')
        if layer.size > self.size:
            raise vhderrors.VhdError('its size %d exceeds the VDI\'s %d'
                                     % (layer.size, self.size),
                                     field='current size')
        if layer.block_size > MAX_BODY_BLOCK:
            raise vhderrors.LimitExceeded('blocks of %d bytes'
                                          % layer.block_size,
                                          field='block size')
        self.layer = layer

    def write_block(self, layer, idx, bitmap, src) -> int:
        bs = layer.block_size
        spb = bs // vhdio.SECTOR
        mask = fmt.mask_of(bitmap, spb)
        if not mask:
            src.skip(bs, 'block %d' % idx)
            self.last_end = max(self.last_end or 0, src.offset)
            return 0
        # The block is assembled once from the pieces it arrived in (a
        # block spans several reads of the body).
        data = bytearray(bs)
        view = memoryview(data)
        pos = 0
        for piece in src.slices(bs, 'block %d' % idx):
            view[pos:pos + len(piece)] = piece
            pos += len(piece)
        base = idx * bs
        valid = min(bs, layer.size - base)
        # Sectors the bitmap leaves out read as zeros, whatever is stored.
        for s, e in vhdio.runs(~mask & ((1 << spb) - 1), spb):
            data[s * vhdio.SECTOR:e * vhdio.SECTOR] = bytes(
                (e - s) * vhdio.SECTOR)
        self.imp.write(base, view[:valid])
        self.last_end = max(self.last_end or 0, src.offset)
        return mask.bit_count()

    def write_fixed(self, rank, offset, view) -> None:
        if offset + len(view) > self.size:
            raise vhderrors.VhdError('a fixed disk larger than the VDI')
        if not self.pending:
            self.pending_at = offset
        self.pending += view
        if len(self.pending) >= PIECE:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        n = len(self.pending) if final else \
            len(self.pending) - len(self.pending) % vhdio.SECTOR
        data = bytes(self.pending[:n])
        del self.pending[:n]
        if final and len(data) % vhdio.SECTOR:
            data += bytes(-len(data) % vhdio.SECTOR)
        if data:
            self.imp.write(self.pending_at, data)
        self.pending_at += n

    def end_fixed(self, layer) -> None:
        self._flush(final=True)
