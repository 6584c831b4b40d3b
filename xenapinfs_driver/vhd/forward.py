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
"""A one-layer image's VHD, passed on as it is read, never stored.

When a XenServer image holds a single dynamic VHD (``0.vhd``), or the
image is a plain dynamic VHD of known length, that VHD already is what a
host's ``PUT /import_raw_vdi?format=vhd`` takes: its bytes can go straight
into the request body, whose length the tar header (or the image's size)
gives before the first byte.

:func:`plan` decides from the first bytes only, looked at without being
consumed, so that an image it turns down is read from its start by the
other path. It takes only what a host reading the body strictly forward
(XAPI's VHD stream reader) is known to accept: blocks of 2 MiB anywhere
after the BAT, in any order, and the footer right after the last of them
(that reader takes the footer from there, not from the end).

:func:`forward` then reads the whole input, validating it by the same
rules as every other reader (``tgz.inspect``: tar members, footer, header,
BAT bounds, blocks inside the member, footer copy, the chain, the gzip
CRC), and passes the VHD's bytes on as they are consumed. The VHD's last
512 bytes (its footer) are held back until all of the input has been
read and found valid: an image found bad at its very end never reaches
the host whole, so the host fails the import.
"""

from __future__ import annotations

import array
import dataclasses
import os
import sys

from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import members
from xenapinfs_driver.vhd import stream
from xenapinfs_driver.vhd import tar
from xenapinfs_driver.vhd import tgz
from xenapinfs_driver.vhd import validate

# XenServer's block size; the only one a host is known to take.
BLOCK_SIZE = 2 << 20
# How far into the input plan() looks: the tar headers before the first
# member, then the VHD's metadata up to the end of a BAT of the largest
# size the limits allow (16 MiB). Further than this, the other path reads.
MAX_TAR_HEADERS = 64 << 10
MAX_HEAD = 20 << 20


@dataclasses.dataclass
class Plan:
    """The VHD to pass on: bytes [start, start + length) of the input."""

    name: str
    start: int
    length: int
    virtual_size: int


def plan(inp: tgz.Input, limits: validate.Limits) -> Plan | None:
    """The one dynamic VHD of ``inp`` if it can be passed on as it is,
    else None. Nothing of ``inp`` is consumed.

    A VHD found invalid here is also None: the other path reads it and
    names what is wrong, as it always has. What the input itself fails
    with (a read error, corrupt gzip data) is raised: the bytes read
    before the failure are lost, the other path could not read them.
    """
    try:
        return _plan(_Peeker(inp.src), inp, limits)
    except _InputFailed as exc:
        failed = exc.error
    except errors.VhdError:
        return None
    # Raised out here, so that it is not chained to the wrapper around it.
    raise failed


class _InputFailed(Exception):
    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


class _Peeker:
    """src.peek, its own errors told apart from those of what it holds."""

    def __init__(self, src):
        self.src = src

    def __call__(self, n: int) -> bytes:
        try:
            return self.src.peek(n)
        except (errors.VhdError, OSError) as exc:
            raise _InputFailed(exc) from exc


def _plan(peek, inp, limits):
    head = peek(tar.BLOCK)
    if tar.is_tar_header(head) or tar.has_tar_magic(head):
        member = _first_member(peek(MAX_TAR_HEADERS), limits)
        if member is None:
            return None
        name, start, length = member.name, member.data_offset, member.size
    elif inp.gzip or inp.size is None:
        return None             # a VHD of unknown length
    else:
        name, start, length = os.path.basename(inp.name), 0, inp.size
    return _layout(peek, name, start, length, limits)


def _first_member(buf: bytes, limits) -> tar.Member | None:
    """The first member that is a layer, if it is ``0.vhd``."""
    for member in tar.iter_members(stream.Source([buf], 'tar headers')):
        rank = members.member_rank(member, limits.max_depth)
        if rank is not None:
            return member if rank == ('numbered', 0) else None
    return None


def _peek(peek, at: int, n: int, what: str) -> bytes:
    if at + n > MAX_HEAD:
        raise errors.LimitExceeded('beyond the first %d bytes' % MAX_HEAD,
                                   field=what)
    data = peek(at + n)[at:]
    if len(data) != n:
        raise errors.Truncated('input ends early', field=what)
    return data


def _layout(peek, name, start, length, limits) -> Plan | None:
    validate.check_file_size(length)
    raw = _peek(peek, start, fmt.FOOTER_SIZE, 'footer copy')
    footer = fmt.Footer.from_bytes(raw)
    validate.check_footer(footer, raw, limits, 'footer copy')
    if footer.disk_type != fmt.DISK_DYNAMIC:
        return None
    validate.check_data_offset(footer, length)
    raw = _peek(peek, start + footer.data_offset, fmt.HEADER_SIZE,
                'dynamic header')
    hdr = fmt.DynamicHeader.from_bytes(raw)
    needed = validate.check_header(hdr, raw, footer, limits, length)
    if hdr.block_size != BLOCK_SIZE:
        return None
    bat = array.array('I', _peek(peek, start + hdr.table_offset,
                                 4 * hdr.max_table_entries, 'BAT'))
    if sys.byteorder == 'little':
        bat.byteswap()
    unused = array.array('I', [fmt.BAT_UNUSED])
    if bat[needed:] != unused * (len(bat) - needed):
        return None             # blocks past the disk: only ours ignore them
    used = [e for e in bat if e != fmt.BAT_UNUSED]
    if used:
        end = max(used) * fmt.SECTOR + fmt.bitmap_size(BLOCK_SIZE) + \
            BLOCK_SIZE
    else:
        # No block: the footer follows the BAT, sector-aligned.
        table = 4 * hdr.max_table_entries
        end = hdr.table_offset + table + (-table % fmt.SECTOR)
    if end != length - fmt.FOOTER_SIZE:
        return None
    return Plan(name, start, length, footer.current_size)


class Forwarder:
    """``on_consume`` for a Source: passes bytes [start, start + length)
    of it to ``write`` as they are consumed, but for the last ``hold``
    bytes, which :meth:`release` passes on."""

    def __init__(self, start: int, length: int, write,
                 hold: int = fmt.FOOTER_SIZE):
        self.start = start
        self.end = start + length
        self.cut = self.end - hold
        self.write = write
        self.held = bytearray()

    def __call__(self, data, offset: int) -> None:
        lo, hi = max(offset, self.start), min(offset + len(data), self.end)
        if lo >= hi:
            return
        view = memoryview(data)[lo - offset:hi - offset]
        if hi > self.cut:
            keep = max(lo, self.cut)
            self.held += view[keep - lo:]
            view = view[:keep - lo]
        if len(view):
            self.write(view)

    def release(self) -> None:
        if len(self.held) != self.end - self.cut:
            raise errors.Truncated('the VHD ended %d bytes early'
                                   % (self.end - self.cut - len(self.held)),
                                   field='footer')
        self.write(bytes(self.held))
        self.held = bytearray()


def forward(inp: tgz.Input, plan: Plan, write,
            limits: validate.Limits) -> tgz.Result:
    """Read all of ``inp`` (as planned, from its start), validating it,
    and call ``write(data)`` with the planned VHD's bytes, in order: all
    of them when the input is valid, never the last 512 otherwise.
    ``inp`` is closed."""
    forwarder = Forwarder(plan.start, plan.length, write)
    inp.src.on_consume = forwarder
    try:
        result = tgz.inspect(inp, limits=limits)
    finally:
        inp.src.on_consume = None
    if [layer.name for layer in result.layers] != [plan.name]:
        # plan() saw the same bytes: only a bug gets here.
        raise AssertionError('read %s, planned %s' % (
            [layer.name for layer in result.layers], plan.name))
    forwarder.release()
    return result
