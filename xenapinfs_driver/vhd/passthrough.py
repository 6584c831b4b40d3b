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
"""A dynamic VHD stream packed as a XenServer image as it arrives.

XAPI's export (``format=vhd``) is one dynamic VHD whose blocks lie after
its head (footer copy, dynamic header, BAT), the footer right after the
last of them. The head alone then gives the length of the whole VHD: the
end of the block the BAT puts last, plus the footer. So the tar header of
``0.vhd`` can be written before the data arrives, and the VHD passed
through into the gzip compressor unchanged: no file at all.

``plan`` reads and judges the head (by ``validate``'s rules); a head
that is valid but laid out otherwise (a fixed or differencing disk, bytes
after the last block, no block and no length) raises ``NotStreamable``
with the bytes read, so that the caller can give the whole stream to the
full reader instead. ``write_tgz`` then checks on the way that the stream
is what the head promised: exactly that long, the trailing footer equal
to the copy at offset 0. Any other failure is a ``VhdError`` naming the
source and the field, raised before the archive is ended, so that a
reader of the archive never sees it complete.
"""

from __future__ import annotations

import array
import bisect
import dataclasses
import sys

from xenapinfs_driver.vhd import deflate
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import pack
from xenapinfs_driver.vhd import validate

CHUNK = 1 << 20
# The head is held in memory: the largest BAT the limits allow, plus room
# for the headers and what lies between them.
MAX_HEAD = 4 * validate.MAX_TABLE_ENTRIES + (1 << 20)


class NotStreamable(Exception):
    """A valid head whose layout gives no length: ``head`` holds the bytes
    read, which belong before the rest of the stream."""

    def __init__(self, reason: str, head: bytes):
        super().__init__(reason)
        self.head = head


@dataclasses.dataclass
class Plan:
    """What the head promises: the VHD is ``length`` bytes."""

    source: str
    head: bytes                  # footer copy to the BAT's end, as read
    length: int
    virtual_size: int
    offsets: array.array         # allocated blocks' byte offsets, rising
    indexes: array.array         # their BAT indexes
    span: int                    # bitmap plus data of one block


def _read_exact(src, n: int, at: int, source: str, what: str) -> bytes:
    """n bytes of src, which is at byte ``at`` of the stream."""
    data = bytearray()
    while len(data) < n:
        more = src.read(min(CHUNK, n - len(data)))
        if not more:
            raise errors.Truncated('the stream ends at byte %d, in the %s'
                                   % (at + len(data), what),
                                   source=source, field=what)
        data += more
    return bytes(data)


def plan(src, source: str, length: int | None = None,
         limits: validate.Limits | None = None) -> Plan:
    """Read the head of the VHD stream src (``length`` bytes if known).

    :raises NotStreamable: the layout is not the export's (``.head``).
    :raises VhdError: the head is invalid, or contradicts ``length``.
    """
    limits = limits or validate.Limits()
    head = bytearray()

    def read(n, what):
        data = _read_exact(src, n, len(head), source, what)
        head.extend(data)
        return data

    def elsewise(reason):
        raise NotStreamable(reason, bytes(head))
    try:
        raw = read(fmt.FOOTER_SIZE, 'footer copy')
        footer = fmt.Footer.from_bytes(raw)
        if footer.cookie != fmt.FOOTER_COOKIE:
            elsewise('no footer copy at offset 0 (a fixed disk?)')
        validate.check_footer(footer, raw, limits, 'footer copy')
        if footer.disk_type != fmt.DISK_DYNAMIC:
            elsewise('a %s disk' % fmt.DISK_TYPE_NAMES[footer.disk_type])
        if length is not None:
            validate.check_file_size(length)
        validate.check_data_offset(footer, length)
        if footer.data_offset + fmt.HEADER_SIZE > MAX_HEAD:
            elsewise('the dynamic header lies at %d' % footer.data_offset)
        read(footer.data_offset - len(head), 'gap before the dynamic header')
        raw = read(fmt.HEADER_SIZE, 'dynamic header')
        hdr = fmt.DynamicHeader.from_bytes(raw)
        needed = validate.check_header(hdr, raw, footer, limits, length)
        table_end = hdr.table_offset + 4 * hdr.max_table_entries
        if table_end > MAX_HEAD:
            elsewise('the BAT ends at %d' % table_end)
        read(hdr.table_offset - len(head), 'gap before the BAT')
        bat = array.array('I', read(4 * needed, 'BAT'))
        read(table_end - len(head), 'BAT')
    except errors.VhdError as exc:
        raise exc.located(source)
    if sys.byteorder == 'little':
        bat.byteswap()
    span = fmt.bitmap_size(hdr.block_size) + hdr.block_size
    try:
        offsets, indexes = _blocks(bat, span, len(head), length)
    except errors.VhdError as exc:
        raise exc.located(source)
    if offsets is None:
        elsewise('the blocks are not in the order of the BAT')
    if offsets:
        want = offsets[-1] + span + fmt.FOOTER_SIZE
        if length is not None and length != want:
            elsewise('%d bytes announced, but the blocks end the VHD at %d'
                     % (length, want))
    elif length is None:
        elsewise('no block, and no length announced')
    else:
        want = length
    if want < len(head) + fmt.FOOTER_SIZE:
        raise errors.Truncated('%d bytes cannot hold the head of %d and '
                               'the footer' % (want, len(head)),
                               source=source, field='length')
    return Plan(source, bytes(head), want, footer.current_size, offsets,
                indexes, span)


def _blocks(bat, span, head_end, length):
    """(offsets, indexes) of the allocated blocks, each past the head, the
    one before and inside length; (None, None) if they are not in the
    BAT's order (the full reader sorts them; here 12 bytes a block is all
    the memory they take)."""
    end = length - fmt.FOOTER_SIZE if length is not None else None
    offsets, indexes = array.array('Q'), array.array('I')
    prev = None
    for idx, entry in enumerate(bat):
        if entry == fmt.BAT_UNUSED:
            continue
        off = entry * fmt.SECTOR
        if off < head_end:
            raise errors.InvalidTable(
                'block %d at offset %d lies in the head (which ends at %d)'
                % (idx, off, head_end), field='BAT entry %d' % idx)
        if prev is not None and off < prev[0] + span:
            if off < prev[0]:
                return None, None
            raise errors.InvalidTable(
                'block %d at offset %d overlaps block %d' % (
                    idx, off, prev[1]), field='BAT entry %d' % idx)
        validate.check_block_fits(idx, off, span, end)
        offsets.append(off)
        indexes.append(idx)
        prev = (off, idx)
    return offsets, indexes


def _where(p: Plan, pos: int) -> str:
    """The part of the VHD at byte pos, for an error message."""
    k = bisect.bisect_right(p.offsets, pos) - 1
    if k >= 0 and pos < p.offsets[k] + p.span:
        return 'block %d' % p.indexes[k]
    return 'footer' if pos >= p.length - fmt.FOOTER_SIZE else \
        'space between blocks'


def copy(p: Plan, src, write) -> int:
    """``write`` the VHD: the head, then the rest of src as it comes,
    checking it against the plan before its last 512 bytes go."""
    write(p.head)
    pos = len(p.head)
    body_end = p.length - fmt.FOOTER_SIZE
    while pos < body_end:
        data = src.read(min(CHUNK, body_end - pos))
        if not data:
            raise errors.Truncated(
                'the stream ends at byte %d of the %d its BAT promises, in '
                'the %s' % (pos, p.length, _where(p, pos)),
                source=p.source, field=_where(p, pos))
        write(data)
        pos += len(data)
    tail = _read_exact(src, fmt.FOOTER_SIZE, pos, p.source, 'footer')
    try:
        validate.check_footer_copy(p.head[:fmt.FOOTER_SIZE], tail)
    except errors.VhdError as exc:
        raise exc.located(p.source)
    if src.read(1):
        raise errors.VhdError('the stream goes on past the %d bytes its BAT '
                              'promises' % p.length, source=p.source,
                              field='length')
    write(tail)
    return p.length


def write_tgz(p: Plan, src, write, *, level: int | None = None,
              zlib_name: str | None = None, workers: int | None = None,
              offload=None) -> pack.Result:
    """Write the planned VHD from src into ``write`` as a XenServer image.

    :param offload: ``offload(fn, *args)`` runs a compression (default: in
        the worker thread; under eventlet, give ``tpool.execute``).
    """
    level = pack.DEFAULT_LEVEL if level is None else level
    if not 1 <= level <= 9:
        raise ValueError('gzip level %r is not 1 to 9' % (level,))
    name, module, level = deflate.pick_compressor(zlib_name, level)
    counted = [0]

    def out(data):
        write(data)
        counted[0] += len(data)
    gz = deflate.ParallelGzip(out, module, level, workers, offload=offload)
    try:
        gz.write(pack.tar_header(p.length))
        copy(p, src, gz.write)
        gz.write(pack.tar_trailer(p.length, gz.tell()))
        gz.close()
    except BaseException:
        gz.abort()
        raise
    return pack.Result(
        source=p.source, dest=None, container='tgz', input_size=p.length,
        virtual_size=p.virtual_size, blocks=len(p.offsets),
        vhd_size=p.length, bytes_written=counted[0], compressor=name,
        level=level)
