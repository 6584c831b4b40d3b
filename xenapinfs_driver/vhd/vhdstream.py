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
"""A raw disk packed on the fly into a stream: no output file at all.

``PackedVhd``: a dynamic VHD whose length is known before its first byte,
since the layout follows from the non-zero blocks, which a first pass
finds (holes of a sparse file are not even read); so it can be the body of
a request with a Content-Length, such as ``PUT /import_raw_vdi``.
``write_tgz``: a XenServer image (tar.gz of ``0.vhd``) written into any
``write`` callable; its compressed length is only known at the end, which
suits a chunked upload. Either reads at most a few blocks at a time, so
memory does not grow with the disk.
"""

from __future__ import annotations

from xenapinfs_driver.vhd import deflate
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import pack
from xenapinfs_driver.vhd import writer


class _Sink:
    """What pack_into writes to: counts the bytes and passes them on."""

    path = None

    def __init__(self, write):
        self._write = write
        self.written = 0

    def tell(self) -> int:
        return self.written

    def write(self, data) -> int:
        self._write(data)
        self.written += len(data)
        return len(data)


def _open(path, max_size: int) -> pack.Disk:
    # Or a disk object with pack.Disk's interface, read from elsewhere.
    disk = pack.Disk(path) if isinstance(path, str) else path
    if disk.virtual_size > max_size:
        disk.close()
        raise errors.LimitExceeded('is %d bytes, more than the limit of %d'
                                   % (disk.virtual_size, max_size),
                                   source=path)
    return disk


class PackedVhd:
    """The raw disk at ``path`` as one dynamic VHD of ``length`` bytes.

    It has no batmap (the host writes the data into a VHD of its own, and
    the batmap is blktap's, not the format's): XAPI reads the body forward
    and expects the footer right after the BAT when there are no blocks,
    where a batmap would stand.

    ``with PackedVhd(path) as vhd: send(vhd.length); vhd.write_to(write)``
    """

    def __init__(self, path: str, max_size: int = pack.MAX_SIZE,
                 progress=None):
        self.disk = _open(path, max_size)
        try:
            self._read = pack.Counter(progress)
            self.blocks = self.disk.nonzero_blocks(self._read)
            self.length = pack.vhd_length(self.disk, self.blocks,
                                          batmap=False)
        except BaseException:
            self.disk.close()
            raise
        self.virtual_size = self.disk.virtual_size

    def __enter__(self) -> PackedVhd:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.disk.close()

    def write_to(self, write) -> int:
        """Call ``write(data)`` with the whole VHD, in order; its length."""
        sink = _Sink(write)
        writer.write_dynamic(
            sink, self.virtual_size,
            pack.LazyBlocks(self.disk, self.blocks, self._read),
            order=self.blocks, batmap=False)
        if sink.written != self.length:
            raise AssertionError('the VHD came out %d bytes, not %d'
                                 % (sink.written, self.length))
        return sink.written


def write_tgz(path: str, write, *, level: int | None = None,
              zlib_name: str | None = None, workers: int | None = None,
              max_size: int = pack.MAX_SIZE, progress=None,
              offload=None) -> pack.Result:
    """Write the raw disk at ``path`` as a XenServer image into ``write``.

    The arguments are ``pack.pack``'s, and ``offload`` ParallelGzip's;
    ``bytes_written`` of the result counts the compressed bytes.
    """
    level = pack.DEFAULT_LEVEL if level is None else level
    if not 1 <= level <= 9:
        raise ValueError('gzip level %r is not 1 to 9' % (level,))
    compressor = deflate.pick_compressor(zlib_name, level)
    disk = _open(path, max_size)
    try:
        return pack.pack_into(disk, _Sink(write), compressor, workers,
                              progress, offload)
    finally:
        disk.close()
