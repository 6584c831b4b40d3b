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
"""A tar reader over a forward-only stream, that never extracts anything.

It reads POSIX ustar, GNU (long names, base-256 sizes) and pax headers.
The stdlib ``tarfile`` copies every member through small buffers; reading
headers here lets member data go straight from the inflated pieces to the
output. Nothing in a member header is trusted: sizes are bounded, names are
checked by the caller before use.
"""

from __future__ import annotations

import dataclasses
import re

from xenapinfs_driver.vhd import errors

BLOCK = 512
# GNU long names and pax records are small; a bound keeps a crafted header
# from making us buffer a huge "name".
MAX_META = 1 << 20

REGULAR = 'file'
DIRECTORY = 'directory'
LINK = 'link'
DEVICE = 'device'
FIFO = 'fifo'

_KINDS = {b'0': REGULAR, b'\0': REGULAR, b'7': REGULAR, b'5': DIRECTORY,
          b'1': LINK, b'2': LINK, b'3': DEVICE, b'4': DEVICE, b'6': FIFO}


@dataclasses.dataclass
class Member:
    name: str
    size: int
    kind: str
    data_offset: int


def _number(field: bytes, what: str) -> int:
    if field[:1] and field[0] & 0x80:
        # GNU base-256: big-endian two's complement with the top bit set.
        if field[0] & 0x40:
            raise errors.ArchiveError('negative %s in tar header' % what)
        value = field[0] & 0x3F
        for b in field[1:]:
            value = (value << 8) | b
        return value
    text = field.split(b'\0', 1)[0].strip(b' ')
    if not text:
        return 0
    # int() would take a sign, underscores or spaces inside: octal digits
    # only, so that no size is ever negative.
    if not re.fullmatch(rb'[0-7]+', text):
        raise errors.ArchiveError('bad octal %s %r in tar header'
                                  % (what, text[:16]))
    return int(text, 8)


def is_tar_header(block: bytes) -> bool:
    """Whether a 512-byte block looks like a tar header (by its checksum)."""
    if len(block) < BLOCK or not block.strip(b'\0'):
        return False
    if not block[148:156].strip(b' \0'):
        return False
    try:
        stored = _number(block[148:156], 'checksum')
    except errors.ArchiveError:
        return False
    rest = block[:148] + block[156:BLOCK]
    unsigned = sum(rest) + 8 * 32
    # Old tars summed signed chars: each byte above 127 counts 256 less.
    signed = unsigned - 256 * sum(1 for b in rest if b > 127)
    return stored in (unsigned, signed)


def has_tar_magic(block: bytes) -> bool:
    """POSIX or GNU magic: a tar header even if its checksum is wrong."""
    return block[257:262] == b'ustar'


def _pax_records(data: bytes) -> dict[str, str]:
    records = {}
    pos = 0
    while pos < len(data):
        if not data[pos:].strip(b'\0'):
            break
        space = data.find(b' ', pos)
        if space < 0:
            raise errors.ArchiveError('bad pax record in tar header')
        try:
            length = int(data[pos:space])
        except ValueError:
            raise errors.ArchiveError('bad pax record length') from None
        if length <= space - pos or pos + length > len(data):
            raise errors.ArchiveError('bad pax record length')
        key, _, value = data[space + 1:pos + length - 1].partition(b'=')
        records[key.decode('utf-8', 'replace')] = value.decode(
            'utf-8', 'surrogateescape')
        pos += length
    return records


def iter_members(src):
    """Yield each Member; the caller reads as much of its data as it wants.

    When the caller asks for the next member, whatever it left of the
    current one, and the padding to the next 512-byte block, is skipped.
    """
    long_name = None
    pax: dict[str, str] = {}
    while True:
        header = src.read_upto(BLOCK)
        if not header:
            return          # No end-of-archive blocks: tolerated, as tar(1).
        if len(header) < BLOCK:
            raise errors.ArchiveError('tar header truncated at offset %d'
                                      % (src.offset - len(header)))
        if not header.strip(b'\0'):
            # End of archive. Anything after it is not read.
            return
        if not is_tar_header(header):
            raise errors.ArchiveError('bad tar header checksum at offset %d'
                                      % (src.offset - BLOCK))
        size = _number(header[124:136], 'size')
        typeflag = header[156:157]
        start = src.offset
        if typeflag in (b'L', b'x', b'g', b'K'):
            if size > MAX_META:
                raise errors.ArchiveError(
                    'tar extended header of %d bytes exceeds %d'
                    % (size, MAX_META))
            data = src.read_exact(size, 'tar extended header')
            src.skip(-size % BLOCK, 'tar padding')
            if typeflag == b'L':
                long_name = data.split(b'\0', 1)[0].decode(
                    'utf-8', 'surrogateescape')
            elif typeflag == b'x':
                pax = _pax_records(data)
            continue        # 'g' (global) and 'K' (link name) are not used.
        name = header[0:100].split(b'\0', 1)[0]
        if header[257:263] == b'ustar\0':
            prefix = header[345:500].split(b'\0', 1)[0]
            if prefix:
                name = prefix + b'/' + name
        name = name.decode('utf-8', 'surrogateescape')
        if long_name is not None:
            name = long_name
        if 'path' in pax:
            name = pax['path']
        if 'size' in pax:
            if not re.fullmatch(r'[0-9]{1,20}', pax['size']):
                raise errors.ArchiveError('bad pax size %r'
                                          % pax['size'][:24])
            size = int(pax['size'])
        long_name, pax = None, {}
        kind = _KINDS.get(typeflag)
        if kind is None:
            raise errors.ArchiveError(
                'unsupported tar member type %r' % typeflag.decode(
                    'ascii', 'replace'), member=name)
        yield Member(name=name, size=size, kind=kind, data_offset=start)
        consumed = src.offset - start
        if consumed > size:
            raise errors.ArchiveError('member data read past its size %d'
                                      % size, member=name)
        src.skip(size - consumed + (-size % BLOCK), 'tar member ' + name)
