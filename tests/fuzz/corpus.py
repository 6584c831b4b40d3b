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
"""The fuzzer's seed inputs, generated in code, and where their fields are.

Each seed is a small image our own writer makes (a few KiB to ~200 KiB):
tgz chains of 1 to 8 layers in ustar, GNU and pax tar, bare dynamic,
fixed and differencing VHDs, legacy names, hand-made base-256 and pax size
headers, concatenated and flagged gzip members. Besides the bytes, a seed
lists the offsets of its tar header, footer, dynamic header, locator, BAT,
batmap and bitmap fields with boundary values for each, and where its
checksums are: random bytes almost never get past a checksum, while a
boundary value written into a known field and then resealed reaches the
code behind it.

Everything is deterministic (fixed ids, time stamps and gzip headers), so
that an input is reproduced from its seed and index alone.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import random
import struct
import tarfile
import zlib

from tests import vhd_factory as vf
from tests.unit.vhd import badinput as bi
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import writer

KiB = 1 << 10
TIMESTAMP = 1


@dataclasses.dataclass(frozen=True)
class Field:
    """A field at a known offset of a seed's uncompressed bytes."""

    offset: int
    width: int
    label: str
    values: tuple            # replacements, each exactly width bytes


@dataclasses.dataclass(frozen=True)
class Seal:
    """A checksum to recompute after a mutation: footer, header, tar or
    batmap (whose map offset counts from the VHD at base)."""

    kind: str
    offset: int
    base: int = 0


@dataclasses.dataclass(frozen=True)
class Seed:
    name: str
    raw: bytes               # the tar or VHD, before wrapping
    wrap: str                # how the input file stores raw (see WRAPS)
    valid: bool              # whether convert must accept it unmutated
    fields: tuple = ()
    seals: tuple = ()
    disk: bytes | None = None     # the disk it holds, when valid


# -- boundary values ----------------------------------------------------------

# Sizes and counts the library has limits or special cases for.
_DOMAIN = (0, 1, 2, 511, 512, 513, 1024, 1536, 4096, 2 << 20, 256 << 20,
           (256 << 20) + 1, 1 << 22, (1 << 22) + 1, 1 << 31, 1 << 32,
           1 << 40, 2 << 40, (2 << 40) + 512, 1 << 62, 1 << 63)


def be_values(orig: int, width: int, extra=()) -> tuple:
    """Big-endian boundary values around orig, the type's and the domain's
    edges, and extra (e.g. the file's length)."""
    top = (1 << 8 * width) - 1
    vals = {0, 1, top, top - 1, top >> 1, (top >> 1) + 1}
    vals.update(v for v in _DOMAIN if v <= top)
    for delta in (1, -1, 512, -512, 4096, -4096):
        vals.add((orig + delta) & top)
    vals.update(((orig * 2) & top, orig >> 1))
    vals.update(v & top for v in extra if v >= 0)
    vals.discard(orig)
    return tuple(v.to_bytes(width, 'big') for v in sorted(vals))


def tar_number_values(orig: int, width: int) -> tuple:
    """Octal and GNU base-256 encodings, and what a strict parser refuses."""
    out = []
    for v in (0, 1, 511, 512, orig - 1, orig + 1, orig + 512, orig * 2,
              8 ** (width - 1) - 1):
        if 0 <= v < 8 ** (width - 1):
            out.append(b'%0*o\0' % (width - 1, v))
    for v in (orig, 1 << 33, (1 << 62) + 512, (1 << 63) - 1, 1 << 63,
              (1 << 8 * (width - 1)) - 1):
        if v < 1 << 8 * (width - 1):
            out.append(bytes([0x80]) + v.to_bytes(width - 1, 'big'))
    out += [b'\xff' * width,                          # negative base-256
            b' ' * width, bytes(width), b'9' * (width - 1) + b'\0',
            b'-1'.ljust(width, b'\0'), b'+17'.ljust(width, b'\0'),
            b'1_0'.ljust(width, b'\0'), b' 17 '.ljust(width, b'\0'),
            b'0x10'.ljust(width, b'\0')]
    return tuple(v[:width].ljust(width, b'\0') for v in out)


def _padded(values, width):
    return tuple(v[:width].ljust(width, b'\0') for v in values)


NAMES = _padded((b'0.vhd', b'./0.vhd', b'1.vhd', b'2.vhd', b'29.vhd',
                 b'30.vhd', b'999999999.vhd', b'00.vhd', b'../0.vhd',
                 b'/0.vhd', b'a\\0.vhd', b'dir/0.vhd', b'swap.vhd',
                 b'snap.vhd', b'base.vhd', b'image.vhd', b'.', b'',
                 b'0.vhd\n\x1b[31m', b'\xff\xfe.vhd'), 100)
PREFIXES = _padded((b'', b'.', b'..', b'dir', b'/'), 155)
TYPES = tuple(bytes([c]) for c in b'0\x0057125346LxgKSVM')
MAGICS = _padded((b'ustar\x0000', b'ustar  \0', b'ustar', b''), 8)
COOKIES = _padded((b'conectix', b'cxsparse', b'tdbatmap', b'', b'\xff' * 8,
                   b'conectiy'), 8)
CREATORS = _padded((b'tap\0', b'vpc ', b'qemu', b'', b'\xff' * 4), 4)
BITMAPS = tuple(v.to_bytes(4, 'big') for v in
                (0, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 0x00FF00FF, 1))

_FOOTER_FIELDS = (            # offset, width, label (Hard Disk Footer)
    (0, 8, 'cookie'), (8, 4, 'features'), (12, 4, 'format version'),
    (16, 8, 'data offset'), (28, 4, 'creator app'),
    (32, 4, 'creator version'), (40, 8, 'original size'),
    (48, 8, 'current size'), (56, 4, 'geometry'), (60, 4, 'disk type'),
    (64, 4, 'checksum'), (85, 1, 'hidden'))
_HEADER_FIELDS = (            # Dynamic Disk Header
    (0, 8, 'cookie'), (8, 8, 'data offset'), (16, 8, 'table offset'),
    (24, 4, 'header version'), (28, 4, 'max table entries'),
    (32, 4, 'block size'), (36, 4, 'checksum'), (40, 16, 'parent id'))
_LOCATOR_FIELDS = ((0, 4, 'code'), (4, 4, 'data space'),
                   (8, 4, 'data length'), (16, 8, 'data offset'))
_BATMAP_FIELDS = ((0, 8, 'cookie'), (8, 8, 'map offset'),
                  (16, 4, 'map sectors'), (20, 4, 'version'),
                  (24, 4, 'checksum'))
_PLATFORMS = (fmt.PLAT_NONE, fmt.PLAT_MACX, fmt.PLAT_W2KU, fmt.PLAT_W2RU,
              fmt.PLAT_WI2R, fmt.PLAT_MAC, 0xFFFFFFFF)


def _field(raw, at, width, label, extra=()) -> Field:
    if label.endswith('cookie'):
        values = COOKIES
    elif label.endswith('creator app'):
        values = CREATORS
    elif label.endswith('parent id'):
        values = (bytes(16), b'\xff' * 16) + tuple(extra)
    else:
        orig = int.from_bytes(raw[at:at + width], 'big')
        values = be_values(orig, width, extra)
    return Field(at, width, label, values)


# -- where the fields of a VHD and of a tar are ------------------------------

def vhd_fields(raw: bytes, base: int, size: int, fields: list,
               seals: list, ids=()) -> None:
    """Fields and checksums of the VHD at raw[base:base + size]."""
    extra = (size, size - 512, size - 1024, size + 512, size - 1536)
    tail = base + size - fmt.FOOTER_SIZE
    dynamic = raw[base:base + 8] == fmt.FOOTER_COOKIE
    for at in ((base, tail) if dynamic else (tail,)):
        seals.append(Seal('footer', at))
        for off, width, label in _FOOTER_FIELDS:
            more = extra if 'size' in label or 'offset' in label else ()
            fields.append(_field(raw, at + off, width, 'footer ' + label,
                                 more))
        fields.append(Field(at + 60, 4, 'footer disk type', tuple(
            v.to_bytes(4, 'big') for v in (0, 1, 2, 3, 4, 5, 0xFFFFFFFF))))
    if not dynamic:
        return
    footer = fmt.Footer.from_bytes(raw[base:base + fmt.FOOTER_SIZE])
    h_at = base + footer.data_offset
    hdr = fmt.DynamicHeader.from_bytes(raw[h_at:h_at + fmt.HEADER_SIZE])
    seals.append(Seal('header', h_at))
    for off, width, label in _HEADER_FIELDS:
        fields.append(_field(raw, h_at + off, width, 'header ' + label,
                             ids if 'parent' in label else extra))
    for i, loc in enumerate(hdr.locators[:4]):
        at = h_at + fmt.LOCATORS_AT + i * fmt.LOCATOR.size
        for off, width, label in _LOCATOR_FIELDS:
            fields.append(_field(raw, at + off, width,
                                 'locator %d %s' % (i, label), extra))
        fields.append(Field(at, 4, 'locator %d platform' % i, tuple(
            v.to_bytes(4, 'big') for v in _PLATFORMS)))
    t_at = base + hdr.table_offset
    entries = [int.from_bytes(raw[t_at + 4 * i:t_at + 4 * i + 4], 'big')
               for i in range(hdr.max_table_entries)]
    used = [e for e in entries if e != fmt.BAT_UNUSED]
    # BAT entries: other blocks' sectors (overlaps), the metadata's, the
    # end of the file, unused.
    sectors = tuple(used[:8]) + (0, 1, 2, 3, hdr.table_offset // 512,
                                 size // 512, size // 512 - 1,
                                 fmt.BAT_UNUSED)
    for i in range(min(len(entries), 24)):
        fields.append(_field(raw, t_at + 4 * i, 4, 'BAT entry %d' % i,
                             sectors))
    table_end = hdr.table_offset + 4 * hdr.max_table_entries
    bm_at = base + table_end + (-table_end % fmt.SECTOR)
    if raw[bm_at:bm_at + 8] == fmt.BATMAP_COOKIE:
        seals.append(Seal('batmap', bm_at, base))
        for off, width, label in _BATMAP_FIELDS:
            fields.append(_field(raw, bm_at + off, width, 'batmap ' + label,
                                 extra))
    for e in used[:6]:
        fields.append(Field(base + e * 512, 4, 'bitmap', BITMAPS))


def _tar_size(field: bytes) -> int:
    if field[0] & 0x80:
        return int.from_bytes(field[1:], 'big')
    text = field.split(b'\0', 1)[0].strip()
    return int(text, 8) if text else 0


def tar_fields(raw: bytes, fields: list, seals: list, ids=()) -> None:
    """Walk the tar headers of raw; describe them and the VHDs inside."""
    pos = 0
    name = pax_size = None
    while pos + 512 <= len(raw):
        h = raw[pos:pos + 512]
        if not h.strip(b'\0'):
            break
        size = _tar_size(h[124:136])
        flag = h[156:157]
        seals.append(Seal('tar', pos))
        fields.extend((
            Field(pos, 100, 'tar name', NAMES),
            Field(pos + 124, 12, 'tar size', tar_number_values(size, 12)),
            Field(pos + 148, 8, 'tar checksum', tar_number_values(0, 8)),
            Field(pos + 156, 1, 'tar type', TYPES),
            Field(pos + 257, 8, 'tar magic', MAGICS),
            Field(pos + 345, 155, 'tar prefix', PREFIXES)))
        data = pos + 512
        body = raw[data:data + size]
        if flag == b'L':
            name = body.split(b'\0', 1)[0]
        elif flag == b'x':
            fields.append(Field(data, min(size, 32), 'pax records', _padded(
                (bi.pax_record('size', '9' * 20),
                 bi.pax_record('size', str(1 << 63)),
                 bi.pax_record('size', '-1'),
                 bi.pax_record('path', '../0.vhd'),
                 b'99999999 size=1\n', b'x size=1\n', b'3 x\n'),
                min(size, 32))))
            for rec in body.split(b'\n'):
                if b' path=' in rec:
                    name = rec.split(b'=', 1)[1]
                elif b' size=' in rec:
                    pax_size = int(rec.split(b'=', 1)[1])
        else:
            name = name or h[0:100].split(b'\0', 1)[0]
            if pax_size is not None:
                size, pax_size = pax_size, None
            if name.endswith(b'.vhd') and flag in (b'0', b'\0') and \
                    size >= 512 and data + size <= len(raw):
                vhd_fields(raw, data, size, fields, seals, ids)
            name = None
        pos = data + size + (-size % 512)


# -- gzip wrappers ------------------------------------------------------------

WRAPS = ('plain', 'gz', 'gz9', 'gz-multi', 'gz-pad', 'gz-garbage',
         'gz-header')


def gzip_member(data: bytes, level: int = 1, flags: int = 0) -> bytes:
    """One gzip member, mtime 0; flags adds FHCRC/FEXTRA/FNAME/FCOMMENT."""
    head = bytearray(b'\x1f\x8b\x08' + bytes([flags]) + bytes(4) +
                     b'\x00\x03')
    if flags & 4:
        head += struct.pack('<H', 6) + b'XY\x02\x00ab'
    if flags & 8:
        head += b'0.tgz\0'
    if flags & 16:
        head += b'a comment\0'
    if flags & 2:
        head += struct.pack('<H', zlib.crc32(head) & 0xFFFF)
    comp = zlib.compressobj(level, zlib.DEFLATED, -15)
    body = comp.compress(data) + comp.flush()
    return bytes(head) + body + struct.pack(
        '<II', zlib.crc32(data), len(data) & 0xFFFFFFFF)


def wrap(raw: bytes, how: str) -> bytes:
    """The input file for raw, stored as `how` (one of WRAPS)."""
    if how == 'plain':
        return bytes(raw)
    if how == 'gz9':
        return gzip_member(raw, 9)
    if how == 'gz-multi':
        a, b = len(raw) // 3, 2 * len(raw) // 3
        return b''.join(gzip_member(p) for p in (raw[:a], raw[a:b], raw[b:]))
    if how == 'gz-header':
        return gzip_member(raw, 6, flags=2 | 4 | 8 | 16)
    out = gzip_member(raw)
    if how == 'gz-pad':
        out += bytes(1024)          # tape blocking, which gzip(1) accepts
    elif how == 'gz-garbage':
        out += b'garbage!'
    return out


# -- the seeds ----------------------------------------------------------------

def _chain(seed, sizes, bs=4 * KiB, order='index', fill=0.5, **kw):
    """VHD files (newest first), the disk, the unique ids."""
    rnd = random.Random(seed)
    specs = [vf.random_layer(rnd, s, block_size=bs, fill=fill)
             for s in sizes]
    ids = [bytes([seed, i]) * 8 for i in range(len(sizes))]
    files = vf.build_chain(specs, rnd=rnd, order=order, unique_ids=ids,
                           timestamp=TIMESTAMP, **kw)
    return files, vf.expected_disk(specs), ids


def _tar(members, fmt_=tarfile.GNU_FORMAT, directory=True) -> bytes:
    """A tar with mtime 0 everywhere; members [(name, bytes)]."""
    entries = []
    if directory:
        info = tarfile.TarInfo('.')
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        entries.append((info, None))
    return bi.tar_bytes(entries + list(members), fmt_=fmt_)


def _numbered(files, prefix='./'):
    return [('%s%d.vhd' % (prefix, i), f) for i, f in enumerate(files)]


def _fixed_base_chain():
    """A dynamic child (0.vhd) over a fixed base (1.vhd), and the disk."""
    rnd = random.Random(7)
    bs = 4 * KiB
    base = rnd.randbytes(32 * KiB)
    kid = vf.random_layer(rnd, 40 * KiB, block_size=bs)
    fixed = io.BytesIO()
    writer.write_fixed(fixed, base, unique_id=b'\x07' * 16,
                       timestamp=TIMESTAMP)
    child = io.BytesIO()
    writer.write_dynamic(
        child, kid.size, {i: (None if s is None else writer.bitmap_of(s, bs),
                              d) for i, (s, d) in kid.blocks.items()},
        block_size=bs, unique_id=b'\x08' * 16, timestamp=TIMESTAMP,
        parent=writer.Parent(b'\x07' * 16, '1.vhd', 0,
                             writer.xenserver_locators('1.vhd')))
    base_spec = vf.LayerSpec(len(base), {
        i: (None, base[i * bs:(i + 1) * bs]) for i in range(len(base) // bs)},
        bs)
    return [child.getvalue(), fixed.getvalue()], vf.expected_disk(
        [kid, base_spec])


def _hand_made(members, trailer=bi.END) -> bytes:
    return b''.join(members) + trailer


def _build() -> list:
    seeds = []

    def add(name, raw, wrap_='gz', valid=True, disk=None, ids=()):
        fields, seals = [], []
        if name.startswith('vhd-'):
            vhd_fields(raw, 0, len(raw), fields, seals, ids)
        else:
            tar_fields(raw, fields, seals, ids)
        seeds.append(Seed(name, bytes(raw), wrap_, valid, tuple(fields),
                          tuple(seals), disk))

    files, disk, ids = _chain(1, [64 * KiB])
    add('tgz-1', _tar(_numbered(files)), disk=disk, ids=ids)
    files, disk, ids = _chain(2, [48 * KiB, 40 * KiB], order='random')
    add('tgz-2-random-order', _tar(_numbered(files)), disk=disk, ids=ids)
    files, disk, ids = _chain(3, [64 * KiB + 1536, 48 * KiB, 32 * KiB])
    add('tgz-3-pax', _tar(_numbered(files), tarfile.PAX_FORMAT), disk=disk,
        ids=ids)
    add('tgz-3-ustar-base-first',
        _tar(_numbered(files, '')[::-1], tarfile.USTAR_FORMAT,
             directory=False), disk=disk, ids=ids)
    add('tar-3', _tar(_numbered(files)), 'plain', disk=disk, ids=ids)
    add('tgz-3-multi-member', _tar(_numbered(files)), 'gz-multi',
        disk=disk, ids=ids)
    add('tgz-3-gz-header', _tar(_numbered(files)), 'gz-header', disk=disk,
        ids=ids)
    add('tgz-3-gz-pad', _tar(_numbered(files)), 'gz-pad', disk=disk,
        ids=ids)

    files, disk, ids = _chain(4, [40 * KiB, 32 * KiB, 24 * KiB],
                              names=['snap.vhd', 'image.vhd', 'base.vhd'])
    add('tgz-legacy', _tar(list(zip(('snap.vhd', 'image.vhd', 'base.vhd'),
                                    files)) + [('swap.vhd', bytes(1024))]),
        disk=disk, ids=ids)

    files, disk, ids = _chain(5, [32 * KiB])
    long_name = './' * 60 + '0.vhd'          # '.' parts are ignored
    add('tgz-gnu-longname', _tar([(long_name, files[0])]), disk=disk,
        ids=ids)
    add('tgz-pax-path', _tar([(long_name, files[0])], tarfile.PAX_FORMAT),
        disk=disk, ids=ids)
    vhd = files[0]
    add('tgz-base256-size', _hand_made([
        bytes(bi.tar_header(b'0.vhd', size_field=b'\x80' + len(vhd).to_bytes(
            11, 'big'))) + bi.padded(vhd)]), disk=disk, ids=ids)
    pax = bi.pax_record('size', str(len(vhd)))
    add('tgz-pax-size', _hand_made([
        bi.raw_member(b'PaxHeader', pax, b'x'),
        bytes(bi.tar_header(b'0.vhd', 0)) + bi.padded(vhd)]), disk=disk,
        ids=ids)
    noend = _tar(_numbered(files)).rstrip(b'\0')
    add('tgz-no-end-blocks', noend + bytes(-len(noend) % 512), disk=disk,
        ids=ids)

    files, disk = _fixed_base_chain()
    add('tgz-fixed-base', _tar(_numbered(files)), disk=disk)

    files, disk, ids = _chain(6, [36 * KiB, 36 * KiB], batmap=False,
                              creator=b'vpc ', max_table_entries=256)
    add('tgz-prealloc-vpc', _tar(_numbered(files)), disk=disk, ids=ids)
    files, disk, ids = _chain(7, [24 * KiB, 16 * KiB], order='reverse')
    add('tgz-reverse-blocks', _tar(_numbered(files)), disk=disk, ids=ids)
    files, disk, ids = _chain(8, [16 * KiB, 12 * KiB], bs=512, fill=0.4)
    add('tgz-bs512', _tar(_numbered(files)), disk=disk, ids=ids)
    files, disk, ids = _chain(9, [128 * KiB + 512], bs=64 * KiB, fill=0.7)
    add('tgz-bs64k', _tar(_numbered(files)), disk=disk, ids=ids)
    files, disk, ids = _chain(10, [8 * KiB] * 8, fill=0.5)
    add('tgz-deep-8', _tar(_numbered(files)), disk=disk, ids=ids)

    files, disk, ids = _chain(11, [48 * KiB])
    add('vhd-dynamic', files[0], 'plain', disk=disk, ids=ids)
    add('vhd-dynamic.gz', files[0], 'gz', disk=disk, ids=ids)
    files, _, ids = _chain(12, [24 * KiB, 16 * KiB])
    add('vhd-differencing', files[0], 'plain', valid=False, ids=ids)
    data = random.Random(13).randbytes(24 * KiB)
    buf = io.BytesIO()
    writer.write_fixed(buf, data, unique_id=b'\x0d' * 16,
                       timestamp=TIMESTAMP)
    add('vhd-fixed', buf.getvalue(), 'plain', disk=data)
    add('vhd-fixed.gz', buf.getvalue(), 'gz', disk=data)
    add('tgz-swap-only', _tar([('swap.vhd', bytes(2048))]), valid=False)
    return seeds


@functools.cache
def seeds() -> tuple:
    return tuple(_build())
