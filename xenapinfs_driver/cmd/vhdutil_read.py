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
"""What ``vhd-util read -p`` prints: a VHD's metadata, laid out as blktap
lays it out, checksums marked Good! or Bad!. Kept apart from the command
so that the command's module stays about the commands.
"""

from __future__ import annotations

import os
import time

from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt

_p = errors.printable

_TYPES = ['None', 'Reserved (deprecated)', 'Fixed hard disk',
          'Dynamic hard disk', 'Differencing hard disk',
          'Reserved (deprecated)', 'Reserved (deprecated)']
_OS = {0x5769326B: 'Windows', 0x4D616320: 'Macintosh'}
_CODES = {fmt.PLAT_NONE: 'PLAT_CODE_NONE', fmt.PLAT_WI2R: 'PLAT_CODE_WI2R',
          fmt.PLAT_WI2K: 'PLAT_CODE_WI2K', fmt.PLAT_W2RU: 'PLAT_CODE_W2RU',
          fmt.PLAT_W2KU: 'PLAT_CODE_W2KU', fmt.PLAT_MAC: 'PLAT_CODE_MAC',
          fmt.PLAT_MACX: 'PLAT_CODE_MACX'}


def _n(value: int, hexa: bool) -> str:
    """A number the way vhd-util read prints it (C's %#x or %u)."""
    if hexa:
        return '%#x' % value if value else '0'
    return '%d' % value


def vhd_time(stamp: int) -> str:
    """ctime() of a VHD timestamp, local time, as vhd-util prints it."""
    epoch = time.mktime((2000, 1, 1, 0, 0, 0, 0, 0, -1))
    return time.ctime(epoch + stamp)


def _cstr(raw: bytes) -> str:
    return raw.split(b'\0', 1)[0].decode('latin-1')


def _good(stored: int, computed: int) -> str:
    return '0x%x|0x%x (%s)' % (stored, computed,
                               'Good!' if stored == computed else 'Bad!')


def footer_lines(raw: bytes, hexa: bool = False) -> list:
    f = fmt.Footer.from_bytes(raw)
    c, h, s = f.chs
    feats = ('<TEMP>' if f.features & 1 else '') + \
        ('<RESV>' if f.features & 2 else '')
    cos = int.from_bytes(f.creator_os, 'big')
    return [
        'VHD Footer Summary:', '-------------------',
        'Cookie              : %s' % _p(_cstr(f.cookie)),
        'Features            : (0x%08x) %s' % (f.features, feats),
        'File format version : Major: %d, Minor: %d' % (
            f.format_version >> 16, f.format_version & 0xFFFF),
        'Data offset         : %s' % _n(f.data_offset, hexa),
        'Timestamp           : %s' % vhd_time(f.timestamp),
        "Creator Application : '%s'" % _p(_cstr(f.creator_app)),
        'Creator version     : Major: %d, Minor: %d' % (
            f.creator_version >> 16, f.creator_version & 0xFFFF),
        'Creator OS          : %s' % _OS.get(cos, 'Unknown!'),
        'Original disk size  : %s MB (%s Bytes)' % (
            _n(f.original_size >> 20, hexa), _n(f.original_size, hexa)),
        'Current disk size   : %s MB (%s Bytes)' % (
            _n(f.current_size >> 20, hexa), _n(f.current_size, hexa)),
        'Geometry            : Cyl: %s, Hds: %s, Sctrs: %s' % (
            _n(c, hexa), _n(h, hexa), _n(s, hexa)),
        '                    : = %s MB (%s Bytes)' % (
            _n((c * h * s) >> 11, hexa), _n(c * h * s << 9, hexa)),
        'Disk type           : %s' % (
            _TYPES[f.disk_type] if f.disk_type < len(_TYPES)
            else 'Unknown type!'),
        'Checksum            : %s' % _good(
            f.checksum, fmt.checksum(raw, fmt.FOOTER_CHECKSUM_AT)),
        'UUID                : %s' % f.uuid,
        'Saved state         : %s' % ('No' if f.saved_state == 0 else 'Yes'),
        'Hidden              : %d' % f.hidden,
        '']


def header_lines(raw: bytes, hexa: bool = False) -> list:
    h = fmt.DynamicHeader.from_bytes(raw)
    return [
        'VHD Header Summary:', '-------------------',
        'Cookie              : %s' % _p(_cstr(h.cookie)),
        'Data offset (unusd) : %s' % _n(h.data_offset, hexa),
        'Table offset        : %s' % _n(h.table_offset, hexa),
        'Header version      : 0x%08x' % h.header_version,
        'Max BAT size        : %s' % _n(h.max_table_entries, hexa),
        'Block size          : %s (%s MB)' % (
            _n(h.block_size, hexa), _n(h.block_size >> 20, hexa)),
        'Parent name         : %s' % _p(h.parent_name),
        'Parent UUID         : %s' % h.parent_uuid,
        'Parent timestamp    : %s' % vhd_time(h.parent_timestamp),
        'Checksum            : %s' % _good(
            h.checksum, fmt.checksum(raw, fmt.HEADER_CHECKSUM_AT)),
        '']


def _locator_path(vhd, loc) -> str | None:
    space = fmt.locator_space(loc)
    if not 0 < loc.data_length <= max(space, fmt.SECTOR):
        return None
    raw = os.pread(vhd.fd, loc.data_length, loc.data_offset)
    text = fmt.decode_locator(loc.code, raw)
    if loc.code == fmt.PLAT_MACX and text.startswith('file://'):
        text = text[len('file://'):]
    return text.replace('\\', '/')


def headers_lines(vhd, hexa: bool = False) -> list:
    """``vhd-util read -p``: footer, header, locators, batmap."""
    lines = footer_lines(os.pread(vhd.fd, fmt.FOOTER_SIZE,
                                  vhd.footer_offset), hexa)
    if vhd.header is None:
        return lines
    lines += header_lines(os.pread(vhd.fd, fmt.HEADER_SIZE,
                                   vhd.footer.data_offset), hexa)
    if vhd.footer.disk_type == fmt.DISK_DIFFERENCING:
        lines += ['VHD Parent Locators:', '--------------------']
        for i, loc in enumerate(vhd.header.locators):
            if loc.code == fmt.PLAT_NONE:
                continue
            path = _locator_path(vhd, loc)
            lines += [
                'locator:            : %d' % i,
                '       code         : %s' % _CODES.get(loc.code, 'UNKOWN'),
                '       data_space   : %s' % _n(loc.data_space, hexa),
                '       data_length  : %s' % _n(loc.data_length, hexa),
                '       data_offset  : %s' % _n(loc.data_offset, hexa),
                ('       decoded name : %s' % _p(path)) if path is not None
                else 'failed to read parent name',
                '']
    if vhd.batmap_offset is not None:
        raw = os.pread(vhd.fd, fmt.BATMAP.size, vhd.batmap_offset)
        _, offset, secs, version, stored = fmt.BATMAP.unpack_from(raw)
        lines += [
            'VHD Batmap Summary:', '-------------------',
            'Batmap offset       : %s' % _n(offset, hexa),
            'Batmap size (secs)  : %s' % _n(secs, hexa),
            'Batmap version      : 0x%08x' % version,
            'Checksum            : %s' % _good(stored, fmt.checksum(
                bytes(vhd.batmap) + bytes(4), len(vhd.batmap))),
            '']
    return lines


def raw_dump_lines(path: str, hexa: bool) -> list:
    """The footer and header of a file the library refuses, unchecked."""
    lines = []
    try:
        with open(path, 'rb') as f:
            size = os.fstat(f.fileno()).st_size
            if size < fmt.FOOTER_SIZE:
                return ['%d bytes: too small for a VHD footer' % size]
            raw = os.pread(f.fileno(), fmt.FOOTER_SIZE,
                           size - fmt.FOOTER_SIZE)
            if raw[:8] != fmt.FOOTER_COOKIE:
                raw = os.pread(f.fileno(), fmt.FOOTER_SIZE, 0)
            lines += footer_lines(raw, hexa)
            off = fmt.Footer.from_bytes(raw).data_offset
            if off + fmt.HEADER_SIZE <= size:
                lines += header_lines(os.pread(f.fileno(), fmt.HEADER_SIZE,
                                               off), hexa)
    except (OSError, ValueError, OverflowError) as exc:
        lines.append('failed to read the headers: %s' % exc)
    return lines
