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
"""gzip output compressed in parallel pieces, with the fastest deflate
available (isal, zlib-ng or zlib)."""

from __future__ import annotations

import collections
import concurrent.futures
import os
import struct

from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import stream

# isal has four levels; 3 compresses about as well as zlib's 6.
ISAL_MAX_LEVEL = 3
# deflate's window: each piece is compressed with the stream's last 32 KiB
# as its dictionary, so cutting the stream costs no compression.
WINDOW = 32 << 10
# Small writes (tar header, VHD metadata, padding) are gathered into
# pieces of this size; block data goes to the compressor as it is read.
PIECE = 1 << 20
# Compression threads: one per core, up to this many; each holds a piece
# in flight, so memory stays a few MiB per thread.
MAX_WORKERS = 8
# gzip header: deflate, no name, no time stamp (a stream has none), OS
# Unix, as gzip(1) writes it for standard input.
_GZIP_HEADER = b'\x1f\x8b\x08\x00\x00\x00\x00\x00%c\x03'


def pick_compressor(name: str | None, level: int) -> tuple:
    """(name, module, level): the fastest compressor for the level.

    isal only has levels up to 3; a higher level picks zlib-ng or zlib
    unless isal is asked for by name (or XENAPINFS_VHD_ZLIB).
    """
    wanted = name or os.environ.get('XENAPINFS_VHD_ZLIB', '')
    candidates = [wanted] if wanted else (
        ['isal', 'zlib-ng', 'zlib'] if level <= ISAL_MAX_LEVEL
        else ['zlib-ng', 'zlib'])
    for cand in candidates:
        try:
            impl, module = stream.pick_zlib(cand)
        except ValueError:
            continue
        if impl == 'isal':
            level = min(level, ISAL_MAX_LEVEL)
        return impl, module, level
    raise errors.VhdError('unknown or unavailable compressor %r' % wanted,
                          field='XENAPINFS_VHD_ZLIB' if not name else None)


def _deflate(module, level: int, zdict: bytes, data, final: bool) -> tuple:
    """One piece as raw deflate, ending on a byte boundary (or the end)."""
    if zdict:
        comp = module.compressobj(level, module.DEFLATED, -15, zdict=zdict)
    else:
        comp = module.compressobj(level, module.DEFLATED, -15)
    return comp.compress(data), comp.flush(
        module.Z_FINISH if final else module.Z_SYNC_FLUSH)


class ParallelGzip:
    """A gzip stream whose pieces are compressed on worker threads.

    Each piece is raw deflate with the 32 KiB before it as dictionary and
    a sync flush at its end, so the pieces joined in order are one deflate
    stream, as pigz makes it. zlib, isal and zlib-ng release the GIL while
    compressing, so reading and compressing overlap and as many pieces
    compress at once as there are workers. At most workers + 1 pieces are
    in flight, which bounds memory to a few blocks.

    ``offload(fn, *args)``, if given, runs each compression: a program
    whose threads are green (eventlet) passes one that runs it in a real
    thread, or the pieces would take turns on one core.
    """

    def __init__(self, write, module, level: int, workers: int | None,
                 offload=None):
        self._write = write
        self._module = module
        self._level = level
        self._offload = offload
        if workers is None:
            workers = min(MAX_WORKERS, os.cpu_count() or 1)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max(1, workers), thread_name_prefix='vhd-deflate')
        self._limit = max(1, workers) + 1
        self._pending = collections.deque()
        self._small = []
        self._small_size = 0
        self._history = b''
        self._crc = 0
        self._pos = 0
        write(_GZIP_HEADER % (4 if level == 1 else 2 if level == 9 else 0))

    def tell(self) -> int:
        """Bytes written so far, uncompressed."""
        return self._pos + self._small_size

    def write(self, data) -> int:
        n = len(data)
        if n >= PIECE:
            self._flush_small()
            self._submit(data, False)
        else:
            self._small.append(bytes(data))
            self._small_size += n
            if self._small_size >= PIECE:
                self._flush_small()
        return n

    def _flush_small(self) -> None:
        if self._small:
            data = b''.join(self._small)
            self._small = []
            self._small_size = 0
            self._submit(data, False)

    def _submit(self, data, final: bool) -> None:
        self._crc = self._module.crc32(data, self._crc)
        self._pos += len(data)
        args = (_deflate, self._module, self._level, self._history, data,
                final)
        if self._offload is not None:
            args = (self._offload,) + args
        self._pending.append(self._pool.submit(*args))
        if len(data) >= WINDOW:
            self._history = bytes(data[-WINDOW:])
        else:
            self._history = (self._history + bytes(data))[-WINDOW:]
        while len(self._pending) > self._limit:
            self._drain_one()

    def _drain_one(self) -> None:
        for part in self._pending.popleft().result():
            if part:
                self._write(part)

    def close(self) -> None:
        """Compress what is left, end the stream and write its trailer."""
        self._flush_small()
        self._submit(b'', True)
        while self._pending:
            self._drain_one()
        self._write(struct.pack('<II', self._crc, self._pos & 0xFFFFFFFF))
        self._pool.shutdown()

    def abort(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)
