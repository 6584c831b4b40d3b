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
"""Sequential input: a file or pipe, inflated on the fly when it is gzip.

Inflating runs in a thread of its own so that it overlaps with parsing and
writing on another core (zlib, isal and zlib-ng all release the GIL). The
queue between the two is short and every piece is at most CHUNK bytes, so
memory stays bounded however well the input compresses.
"""

from __future__ import annotations

import mmap
import os
import queue
import threading
import zlib

from xenapinfs_driver.vhd import errors

CHUNK = 1 << 20
READ_SIZE = 256 << 10
QUEUE_DEPTH = 8
MAP_WINDOW = 16 << 20
CLOSE_WAIT = 2.0
GZIP_MAGIC = b'\x1f\x8b'
MAX_GZIP_HEADER = 1 << 20


def pick_zlib(name: str | None = None):
    """The fastest inflater installed: isal, then zlib-ng, then zlib."""
    wanted = name or os.environ.get('XENAPINFS_VHD_ZLIB', '')
    candidates = [wanted] if wanted else ['isal', 'zlib-ng', 'zlib']
    for cand in candidates:
        try:
            if cand == 'isal':
                from isal import isal_zlib
                return 'isal', isal_zlib
            if cand == 'zlib-ng':
                from zlib_ng import zlib_ng
                return 'zlib-ng', zlib_ng
            if cand == 'zlib':
                return 'zlib', zlib
        except ImportError:
            continue
    raise ValueError('unknown or unavailable zlib implementation %r'
                     % wanted)


def gzip_header_length(buf) -> int | None:
    """Bytes of the gzip member header buf starts with (RFC 1952, 2.3), or
    None while buf does not hold all of it."""
    if len(buf) < 10:
        return None
    flags, pos = buf[3], 10
    if flags & 4:                               # FEXTRA
        if len(buf) < pos + 2:
            return None
        pos += 2 + (buf[pos] | buf[pos + 1] << 8)
    for bit in (8, 16):                         # FNAME, FCOMMENT
        if flags & bit:
            end = bytes(buf[pos:MAX_GZIP_HEADER]).find(b'\0')
            if end < 0:
                return None
            pos += end + 1
    if flags & 2:                               # FHCRC
        pos += 2
    return pos if pos <= len(buf) else None


class RawReader:
    """Reads a file object in pieces and counts what it consumed."""

    def __init__(self, fobj, total: int | None):
        self.fobj = fobj
        self.total = total
        self.consumed = 0
        self._head = b''
        self._mapped = False
        self._view = None
        self._win_start = self._win_end = 0

    def peek(self, n: int) -> bytes:
        """The first bytes, read once and handed out again by read()."""
        while len(self._head) < n:
            more = self.fobj.read(n - len(self._head))
            if not more:
                break
            self._head += more
        return self._head[:n]

    def read(self, n: int) -> bytes:
        if self._head:
            data, self._head = self._head[:n], self._head[n:]
        else:
            data = self.fobj.read(n)
        self.consumed += len(data)
        return data

    def map(self) -> None:
        """Read a regular file through memory maps from now on.

        The inflater then reads the compressed bytes where the page cache
        holds them, one copy fewer than read() makes. The file is mapped
        a window at a time, so that resident memory stays bounded. Pipes
        are read.
        """
        if self.total is None or self.total < 1 or self.consumed:
            return
        self._mapped = True
        self._head = b''

    def read_view(self, n: int):
        """Like read(), but a memoryview of a mapped window when it can."""
        if not self._mapped:
            return self.read(n)
        if self._view is None or self.consumed >= self._win_end:
            if self.consumed >= self.total:
                return b''
            # Dropping the old window unmaps it once no slice of it is
            # referenced any more (zlib keeps copies, not slices).
            self._view = None
            start = self.consumed - self.consumed % mmap.ALLOCATIONGRANULARITY
            length = min(MAP_WINDOW, self.total - start)
            try:
                window = mmap.mmap(self.fobj.fileno(), length, offset=start,
                                   prot=mmap.PROT_READ)
            except (OSError, ValueError):
                self._mapped = False   # e.g. a file system without mmap
                self.fobj.seek(self.consumed)
                return self.read(n)
            self._view = memoryview(window)
            self._win_start, self._win_end = start, start + length
        at = self.consumed - self._win_start
        data = self._view[at:at + min(n, self._win_end - self.consumed)]
        self.consumed += len(data)
        return data

    def close(self) -> None:
        self._view = None


class Inflater:
    """Iterates over the inflated pieces of a gzip stream, in a thread.

    Concatenated gzip members are one stream, as gzip(1) reads them;
    zero padding after the last member (tape blocking) is ignored.
    """

    def __init__(self, raw: RawReader, name: str, zlib_name=None):
        self.raw = raw
        self.name = name
        self.impl, self._zlib = pick_zlib(zlib_name)
        raw.map()
        self._queue: queue.Queue = queue.Queue(QUEUE_DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='vhd-inflate')
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self):
        try:
            self._inflate()
        except errors.VhdError as exc:
            self._put(exc)
        except OSError as exc:
            self._put(errors.VhdError('cannot read: %s'
                                      % (exc.strerror or exc),
                                      source=self.name))
        except Exception as exc:  # zlib.error, or isal's and zlib-ng's own
            self._put(errors.ArchiveError(
                'corrupt gzip data near compressed offset %d (%s)'
                % (self.raw.consumed, exc), source=self.name))
        else:
            self._put(None)

    def _inflate(self):
        dec = self._zlib.decompressobj(31)
        started = False
        member_start = True
        buf = b''
        while not self._stop.is_set():
            if not buf:
                buf = self.raw.read_view(READ_SIZE)
                if not buf:
                    break
            if dec.eof:
                # Between gzip members: another member, zero padding
                # (tape blocking, which gzip(1) accepts too) or garbage.
                if buf[:1] == b'\0':
                    self._drain_padding(buf)
                    return
                if not bytes(buf[:2]).startswith(GZIP_MAGIC[:len(buf)]):
                    raise errors.ArchiveError(
                        'trailing garbage after gzip data at compressed '
                        'offset %d' % (self.raw.consumed - len(buf)),
                        source=self.name)
                dec = self._zlib.decompressobj(31)
                member_start = True
            if member_start:
                buf = self._whole_header(buf)
                member_start = False
            started = True
            while True:
                out = dec.decompress(buf, CHUNK)
                if out and not self._put(out):
                    return
                if dec.eof:
                    buf = dec.unused_data
                    break
                buf = dec.unconsumed_tail
                # A full piece may leave output pending inside zlib.
                if not buf and len(out) < CHUNK:
                    break
        if started and not dec.eof:
            raise errors.ArchiveError(
                'truncated gzip data: the compressed stream ends early',
                source=self.name)

    def _whole_header(self, buf):
        """buf, read on until it holds its gzip member's whole header.

        isal (1.9) refuses a valid member whose header has a CRC (FHCRC)
        and is split between two decompress() calls: a pipe splits it after
        the 2 bytes peeked at, a read may end inside a later member's.
        """
        while gzip_header_length(buf) is None and \
                len(buf) < MAX_GZIP_HEADER:
            more = self.raw.read_view(READ_SIZE)
            if not more:
                break
            buf = bytes(buf) + bytes(more)
        return buf

    def _drain_padding(self, data):
        while data:
            if bytes(data).strip(b'\0'):
                raise errors.ArchiveError(
                    'trailing garbage after gzip data at compressed '
                    'offset %d' % (self.raw.consumed - len(data)),
                    source=self.name)
            data = self.raw.read_view(READ_SIZE)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self):
        self._stop.set()
        # The thread may sit in a read from a pipe whose writer has
        # stalled: it is a daemon, and ends at its next read or with the
        # process, so an error is reported now rather than after it.
        self._thread.join(CLOSE_WAIT)


def plain_chunks(raw: RawReader):
    while True:
        data = raw.read(CHUNK)
        if not data:
            return
        yield data


class Source:
    """The inflated input as a sequence of bytes read strictly forward.

    ``offset`` counts the bytes consumed so far. Bulk data is handed out
    as memoryview slices of the pieces it arrived in, so that it can be
    written without another copy. ``on_consume``, when set, is called as
    ``on_consume(data, offset)`` with every piece as it is consumed (read
    or skipped), ``offset`` being where the piece starts: what is read
    can be passed on, unchanged, as it goes.
    """

    def __init__(self, chunks, name: str):
        self._chunks = iter(chunks)
        self.name = name
        self._buf = b''
        self._pos = 0
        self.offset = 0
        self.on_chunk = None
        self.on_consume = None

    def _fill(self) -> bool:
        for chunk in self._chunks:
            if self.on_chunk is not None:
                self.on_chunk()
            if chunk:
                if self._pos < len(self._buf):
                    self._buf = self._buf[self._pos:] + chunk
                else:
                    self._buf = chunk
                self._pos = 0
                return True
        return False

    def peek(self, n: int) -> bytes:
        avail = len(self._buf) - self._pos
        if avail < n:
            # Join what is needed once, rather than growing a buffer.
            parts = [self._buf[self._pos:]]
            for chunk in self._chunks:
                if self.on_chunk is not None:
                    self.on_chunk()
                parts.append(chunk)
                avail += len(chunk)
                if avail >= n:
                    break
            self._buf = b''.join(parts)
            self._pos = 0
        return self._buf[self._pos:self._pos + n]

    def read_upto(self, n: int) -> bytes:
        data = self.peek(n)
        if self.on_consume is not None and data:
            self.on_consume(data, self.offset)
        self._pos += len(data)
        self.offset += len(data)
        return data

    def read_exact(self, n: int, what: str = 'data') -> bytes:
        data = self.read_upto(n)
        if len(data) != n:
            raise errors.Truncated(
                'input ends early (%d of %d bytes of %s)'
                % (len(data), n, what), source=self.name)
        return data

    def slices(self, n: int, what: str = 'data'):
        """Yield memoryviews covering the next n bytes."""
        while n > 0:
            if self._pos >= len(self._buf) and not self._fill():
                raise errors.Truncated(
                    'input ends early (%d bytes of %s missing)' % (n, what),
                    source=self.name)
            take = min(n, len(self._buf) - self._pos)
            view = memoryview(self._buf)[self._pos:self._pos + take]
            if self.on_consume is not None:
                self.on_consume(view, self.offset)
            self._pos += take
            self.offset += take
            n -= take
            yield view

    def skip(self, n: int, what: str = 'data'):
        for _ in self.slices(n, what):
            pass

    def at_eof(self) -> bool:
        return not self.peek(1)
