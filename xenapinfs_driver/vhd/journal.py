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
"""An undo journal for edits made to a file in place.

Before a byte of the file is overwritten, its old contents go to the
journal, which is flushed to disk first; the file's original size is kept
too. If the edit is interrupted, ``revert`` puts every byte back and cuts
the file to its old size; once the edit is complete and flushed, the
journal is deleted. This is what ``vhd-util resize -j`` promises.

Format: a 24-byte header (magic, original size, header checksum), then
records of (offset u64, length u32, crc32 u32, old bytes).
"""

from __future__ import annotations

import os
import struct
import zlib

from xenapinfs_driver.vhd import errors

MAGIC = b'xnfsjrn1'
HEAD = struct.Struct('>8sQI4x')
RECORD = struct.Struct('>QII')


class Journal:
    """Collects the old contents of the regions an edit overwrites."""

    def __init__(self, path: str, fd: int):
        self.path = path
        self.fd = fd
        size = os.fstat(fd).st_size
        head = HEAD.pack(MAGIC, size, zlib.crc32(MAGIC + size.to_bytes(
            8, 'big')))
        # The header is made durable under another name and then linked
        # in, so a journal that exists always has a whole header.
        tmp = '%s.%d.new' % (path, os.getpid())
        try:
            self.jfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                               0o600)
        except OSError as exc:
            raise errors.TargetError('cannot create the journal: %s'
                                     % exc.strerror, source=path) from None
        try:
            _write_all(self.jfd, head)
            os.fsync(self.jfd)
            os.link(tmp, path)
            _sync_dir(path)
        except FileExistsError:
            os.close(self.jfd)
            raise errors.TargetError(
                'a journal is already there: an earlier edit was '
                'interrupted; revert it first', source=path) from None
        except BaseException:
            os.close(self.jfd)
            raise
        finally:
            os.unlink(tmp)
        self.size = size
        self.saved: list = []

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop writing to the journal and keep it: after a failed edit,
        it is how the file is put back."""
        if self.jfd is not None:
            os.close(self.jfd)
            self.jfd = None

    def save(self, offset: int, length: int) -> None:
        """Keep the old bytes at [offset, offset + length) of the file."""
        end = min(offset + length, self.size)
        if end <= offset:
            return          # Past the old end: the truncation undoes it.
        for start, stop in self.saved:
            if start <= offset and end <= stop:
                return
        old = os.pread(self.fd, end - offset, offset)
        _write_all(self.jfd, RECORD.pack(offset, len(old), zlib.crc32(old))
                   + old)
        self.saved.append((offset, end))

    def seal(self) -> None:
        """Make the journal durable before the file is touched."""
        os.fsync(self.jfd)

    def finish(self) -> None:
        """The edit is complete and on disk: the journal is not needed."""
        os.fsync(self.fd)
        self.close()
        os.unlink(self.path)

    def abandon(self) -> None:
        """The edit failed before it changed the file: drop the journal."""
        self.close()
        os.unlink(self.path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while len(view):
        view = view[os.write(fd, view):]


def _sync_dir(path: str) -> None:
    """Make a new name durable: the directory holding it is flushed."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def revert(path: str, journal_path: str) -> int:
    """Undo an interrupted edit of path; return the records applied."""
    try:
        with open(journal_path, 'rb') as j:
            data = j.read()
    except OSError as exc:
        raise errors.VhdError(exc.strerror, source=journal_path) from None
    if len(data) < HEAD.size:
        raise errors.VhdError('too short to be a journal',
                              source=journal_path)
    magic, size, csum = HEAD.unpack_from(data)
    if magic != MAGIC or csum != zlib.crc32(MAGIC + size.to_bytes(8, 'big')):
        raise errors.VhdError('not a journal of this tool',
                              source=journal_path, field='header')
    records = []
    pos = HEAD.size
    while pos < len(data):
        if pos + RECORD.size > len(data):
            break           # A record cut short was never applied.
        offset, length, crc = RECORD.unpack_from(data, pos)
        old = data[pos + RECORD.size:pos + RECORD.size + length]
        if len(old) != length or zlib.crc32(old) != crc:
            break
        records.append((offset, old))
        pos += RECORD.size + length
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        raise errors.VhdError(exc.strerror, source=path) from None
    try:
        for offset, old in reversed(records):
            os.pwrite(fd, old, offset)
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(journal_path)
    return len(records)
