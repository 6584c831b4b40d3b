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
"""Byte streams between the image clients and the VHD library.

glance hands out an image as an iterator of chunks and reads an upload
from a file object; the VHD library reads file objects and writes into a
callable. ``ChunkReader`` turns the first into a file object; ``Pipe``
runs a writer in a thread of its own and lets the reader pull what it
writes. Either holds a few chunks at most, so no image ever lands on
disk or in memory whole. In cinder-volume the threads are eventlet's
green threads (cinder patches ``threading`` and ``queue``): they take
turns whenever the queue is full or empty, or a socket waits.
"""

import queue
import os
import threading

# Chunks in flight from the writer to the reader: the memory a pipe costs
# is this many of the writer's pieces (1 MiB or less).
DEPTH = 4
_END = object()


def _read_all(fobj) -> bytes:
    """read() with no size: everything to the end, as file objects do."""
    parts = []
    while True:
        data = fobj.read(1 << 20)
        if not data:
            return b''.join(parts)
        parts.append(data)


# A sparse copy is written in pieces of this size; a piece of zeros is
# skipped. Small enough to keep scattered data sparse, large enough to
# cost few system calls.
SPARSE_PIECE = 64 << 10
_ZERO_PIECE = bytes(SPARSE_PIECE)


def copy_sparse(reader, fd: int, limit=None) -> int:
    """Copy what ``reader`` gives into the file ``fd`` from its start,
    all-zero pieces left as holes; the file is cut to the length, which
    is returned. ``limit(end)`` sees each piece's end before it is
    written, and raises to stop. A failing source raises FetchError."""
    offset = 0
    while True:
        piece = reader.read(SPARSE_PIECE)
        if not piece:
            break
        end = offset + len(piece)
        if limit is not None:
            limit(end)
        if piece != (_ZERO_PIECE if len(piece) == SPARSE_PIECE
                     else bytes(len(piece))):
            os.pwrite(fd, piece, offset)
        offset = end
    os.ftruncate(fd, offset)
    return offset


class FetchError(OSError):
    """The source failed (``cause``): the VHD library sees a read error,
    the caller tells it from a bad image by ``ChunkReader.error``."""


class ChunkReader:
    """A read-only file object over an iterator of byte chunks."""

    name = '<glance>'

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._buf = memoryview(b'')
        self.consumed = 0
        self.error = None

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes, from as many chunks as it takes: glance's
        are small (64 KiB), and each read costs the reader a round of
        work (an inflate call, a queue item) whatever its size."""
        if n is None or n < 0:
            return _read_all(self)
        parts, got = [], 0
        while got < n:
            if not self._buf:
                if not self._next(got):
                    break
                continue
            part, self._buf = self._buf[:n - got], self._buf[n - got:]
            parts.append(part)
            got += len(part)
        data = b''.join(parts)
        self.consumed += len(data)
        return data

    def _next(self, got: int) -> bool:
        """Take the next chunk; False at the end. A failure of the source
        is raised once nothing read before it is left to return."""
        if self.error is None:
            try:
                self._buf = memoryview(next(self._chunks))
                return True
            except StopIteration:
                return False
            except Exception as exc:
                # Kept for the caller; the reader only needs to stop.
                self.error = exc
        if got:
            return False
        raise FetchError(str(self.error) or type(self.error).__name__) \
            from self.error

    def close(self) -> None:
        close = getattr(self._chunks, 'close', None)
        if close is not None:
            close()


class Cancelled(Exception):
    """The reader went away: the writer stops."""


class Pipe:
    """``Pipe(produce)``: ``produce(write)`` runs in a thread, and
    ``read()`` returns what it wrote, then ``b''``.

    An error of the writer is raised by ``read`` and kept in ``error``;
    ``close()`` stops a writer whose reader gave up, and waits for it.
    """

    name = '<pipe>'

    def __init__(self, produce, depth: int = DEPTH):
        self._produce = produce
        self._queue = queue.Queue(depth)
        self._buf = memoryview(b'')
        self._closed = threading.Event()
        self._ended = False
        self.error = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='image-pipe')
        self._thread.start()

    def _put(self, item) -> None:
        while True:
            if self._closed.is_set():
                raise Cancelled()
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _write(self, data) -> None:
        if len(data):
            self._put(bytes(data))

    def _run(self) -> None:
        try:
            self._produce(self._write)
        except Cancelled:
            return
        except BaseException as exc:
            self.error = exc
        try:
            self._put(_END)
        except Cancelled:
            pass

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return _read_all(self)
        while not self._buf:
            if self._ended:
                return b''
            item = self._queue.get()
            if item is _END:
                self._ended = True
                if self.error is not None:
                    raise self.error
                return b''
            self._buf = memoryview(item)
        data, self._buf = self._buf[:n], self._buf[n:]
        return bytes(data)

    def close(self) -> None:
        """Stop the writer (if still running) and wait for it to end."""
        self._closed.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.2)
            except queue.Empty:
                pass
        self._thread.join()
