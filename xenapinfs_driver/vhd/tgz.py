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
"""One pass from a XenServer image to a raw disk: the public entry points.

gzip stream -> tar headers -> VHD structures -> positioned writes. The
input is opened read-only and read once, front to back; nothing is
extracted; parent locators are never followed. This replaces the published
pipeline ``tar -xzf``, ``vhd-util modify -p``, ``resize``, ``coalesce`` per
layer, then ``qemu-img convert``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import sys

from xenapinfs_driver.vhd import members as membersmod
from xenapinfs_driver.vhd import compose
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import layer as layermod
from xenapinfs_driver.vhd import stream
from xenapinfs_driver.vhd import tar
from xenapinfs_driver.vhd import target as targetmod

Limits = layermod.Limits
_NONZERO = re.compile(b'[^\\x00]')


@dataclasses.dataclass
class Result:
    """What was read: the layers newest first and the composed disk."""

    source: str
    container: str              # 'tgz', 'tar', 'vhd' or 'vhd.gz'
    inflater: str | None
    layers: list
    virtual_size: int
    allocated: int
    bytes_written: int = 0
    warnings: list = dataclasses.field(default_factory=list)


class Input:
    """The input file opened read-only, inflated if it is gzip.

    ``Input(path)`` opens a file name, '-' or a file object. Its first
    bytes can be looked at (``src.peek``) before it is handed, unread, to
    :func:`convert` or :func:`inspect`, which read it and close it.
    ``size``: the length of a file object, when its owner knows it (a
    plain VHD is then bounded by it, as a file is by its own size).
    """

    def __init__(self, path: str, zlib_name: str | None = None,
                 size: int | None = None):
        self.name = path
        self.inflater = None
        self.own = not hasattr(path, 'read')
        if not self.own:
            # A stream handed over by the caller (an HTTP body): it has no
            # size, and the caller closes it.
            self.fobj = path
            self.name = getattr(path, 'name', None) or '<stream>'
            total = None
        elif path == '-':
            self.fobj = sys.stdin.buffer
            self.name = '<stdin>'
            total = None
        else:
            try:
                self.fobj = open(path, 'rb')
            except OSError as exc:
                raise errors.VhdError(exc.strerror, source=path) from None
            st = os.fstat(self.fobj.fileno())
            if stat.S_ISDIR(st.st_mode):
                self.fobj.close()
                raise errors.VhdError('is a directory', source=path)
            total = st.st_size if stat.S_ISREG(st.st_mode) else None
        self.total = total
        self.size = total if total is not None else size
        self.raw = stream.RawReader(self.fobj, total)
        magic = self.raw.peek(2)
        self.gzip = magic == stream.GZIP_MAGIC
        if self.gzip:
            self.inflater = stream.Inflater(self.raw, self.name, zlib_name)
            chunks = self.inflater
        else:
            chunks = stream.plain_chunks(self.raw)
        self.src = stream.Source(chunks, self.name)

    def tail(self, n: int) -> bytes | None:
        """The last n bytes of a plain regular file, else None."""
        if self.gzip or self.total is None or self.total < n:
            return None
        return os.pread(self.fobj.fileno(), n, self.total - n)

    def close(self) -> None:
        if self.inflater is not None:
            self.inflater.close()
        self.raw.close()
        if self.own and self.fobj is not sys.stdin.buffer:
            self.fobj.close()


def _read_layers(inp: Input, composer, limits: Limits,
                 check_parents: bool):
    builder = membersmod.ChainBuilder(limits.max_depth, check_parents)
    head = inp.src.peek(tar.BLOCK)
    if tar.is_tar_header(head) or tar.has_tar_magic(head):
        container = 'tgz' if inp.gzip else 'tar'
        for member in tar.iter_members(inp.src):
            rank = membersmod.member_rank(member, limits.max_depth)
            if rank is None:
                continue
            builder.claim(rank[0], rank[1], member.name)
            try:
                layer = layermod.LayerReader(
                    inp.src, member.name, member.size, rank[1], composer,
                    limits).read()
            except errors.VhdError as exc:
                raise exc.located(member=member.name)
            builder.add(layer)
        # Read to the end, so that the gzip trailer (CRC and length) is
        # checked and garbage after the archive is noticed.
        while inp.src.read_upto(stream.CHUNK):
            pass
        return container, builder.finish()

    container = 'vhd.gz' if inp.gzip else 'vhd'
    if head[:8] != fmt.FOOTER_COOKIE and not inp.gzip:
        # A fixed VHD's only footer is its last 512 bytes: a file shows
        # them now; a stream (stdin, an image from glance) only at its
        # end, where the layer reader looks for them before the disk is
        # accepted.
        tail = inp.tail(fmt.FOOTER_SIZE)
        if inp.total is not None and (tail is None or
                                      tail[:8] != fmt.FOOTER_COOKIE):
            raise errors.ArchiveError(
                'not a XenServer image: neither gzip, nor tar, nor VHD '
                '(no conectix cookie at the start or the end)')
    name = os.path.basename(inp.name)
    builder.claim('numbered', 0, name)
    layer = layermod.LayerReader(inp.src, name, inp.size if not inp.gzip
                                 else None, 0, composer, limits).read()
    if not inp.src.at_eof():
        # Only a stream of a declared size can get here: a file ends
        # where its size says, and a stream of no size is read to its end.
        raise errors.ArchiveError('data after the VHD, which should end at '
                                  'byte %d' % inp.src.offset)
    builder.add(layer)
    return container, builder.finish()


def _run(path, composer, limits, check_parents, zlib_name, on_input=None):
    try:
        inp = path if isinstance(path, Input) else Input(path, zlib_name)
    except OSError as exc:
        raise errors.VhdError(
            'cannot read: %s' % (exc.strerror or exc),
            source=path if isinstance(path, str) else '<stream>') from None
    try:
        if on_input is not None:
            on_input(inp)
        container, layers = _read_layers(inp, composer, limits,
                                         check_parents)
    except errors.VhdError as exc:
        raise exc.located(source=inp.name)
    except OSError as exc:
        raise errors.VhdError('cannot read: %s' % (exc.strerror or exc),
                              source=inp.name) from None
    finally:
        inp.close()
    size = layers[0].size
    return Result(source=inp.name, container=container,
                  inflater=inp.inflater.impl if inp.inflater else None,
                  layers=layers, virtual_size=size,
                  allocated=composer.allocated(size),
                  warnings=_warnings(layers, composer))


def _warnings(layers, composer) -> list:
    """Things blktap would flag but that do not change the disk."""
    out = []
    for pos, layer in enumerate(layers):
        out.extend('%s: %s' % (layer.name, w) for w in layer.warnings)
        hidden = pos > 0
        if layer.header is not None and bool(layer.footer.hidden) != hidden:
            out.append('%s: hidden flag is %d, expected %d for %s' % (
                layer.name, layer.footer.hidden, hidden,
                'a parent' if hidden else 'the leaf'))
        if layer.batmap == 'valid':
            idx = _batmap_mismatch(layer, composer.layers[layer.rank])
            if idx is not None:
                out.append('%s: batmap marks block %d full but its bitmap '
                           'is not' % (layer.name, idx))
    return out


def _batmap_mismatch(layer, cov):
    """The first block the batmap calls full whose bitmap is not, or None."""
    # The last block may run past the disk; its tail is not counted.
    whole = layer.size // layer.block_size
    bits = layer.batmap_bits
    for match in _NONZERO.finditer(bits):
        byte = match.start()
        for bit in range(8):
            idx = byte * 8 + bit
            if idx >= whole:
                return None
            if bits[byte] & (0x80 >> bit) and \
                    cov.flags[idx] != compose.FULL:
                return idx
    return None


def inspect(path: str, *, limits: Limits | None = None,
            check_parents: bool = True, zlib_name: str | None = None,
            progress=None) -> Result:
    """Read and validate an image without writing anything."""
    limits = limits or Limits()
    composer = compose.Composer(None, mask_budget=limits.max_mask_memory)
    return _run(path, composer, limits, check_parents,
                zlib_name, _progress_hook(progress))


def convert(path: str, dest: str, *, zero_fill: bool | None = None,
            fsync: bool = False, in_place: bool = False,
            limits: Limits | None = None,
            check_parents: bool = True, zlib_name: str | None = None,
            progress=None) -> Result:
    """Write the disk a XenServer image (or VHD) holds to dest, raw.

    path is a file name, '-' for standard input, a file object read
    once from where it stands (an HTTP body), or an :class:`Input`.

    :param zero_fill: write zeros where no layer has data. Default: only
        when dest is written in place (a block device, or an existing file
        with in_place), where old contents would show through.
    :param in_place: write into an existing dest rather than replace it.
    :param progress: called as progress(consumed, total) while reading.
    """
    limits = limits or Limits()
    _refuse_same_file(path, dest)
    target = targetmod.FileTarget(dest, zero_fill, fsync, in_place)
    composer = compose.Composer(target, fresh=target.fresh
                                and not target.zero_fill,
                                mask_budget=limits.max_mask_memory)
    try:
        result = _run(path, composer, limits, check_parents,
                      zlib_name, _progress_hook(progress))
        target.check_size(result.virtual_size)
        if target.zero_fill:
            composer.zero_fill(result.virtual_size)
        target.commit(result.virtual_size)
    except BaseException:
        target.abort()
        raise
    result.bytes_written = composer.bytes_written
    return result


def _refuse_same_file(path: str, dest: str) -> None:
    """The input is never modified: not even by naming it as the output."""
    if isinstance(path, Input) or path == '-' or hasattr(path, 'read'):
        return
    try:
        same = os.path.samefile(path, dest)
    except OSError:
        return
    if same:
        raise errors.TargetError('is the input file; the input is never '
                                 'overwritten', source=dest)


def _progress_hook(progress):
    if progress is None:
        return None

    def attach(inp):
        inp.src.on_chunk = lambda: progress(inp.raw.consumed, inp.total)
    return attach
