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
"""Shared helpers of the bad-input tests: damaged images built in code.

Small VHDs come from the library's writer and are then damaged with
struct.pack_into at the offsets of the format reference (section 1);
tar archives are written with tarfile or from hand-made 512-byte headers.
``assert_rejected`` runs a conversion that must fail and checks what every
failure must look like: the error class, one line naming the source, the
member and the field, nothing left in the target directory, the input
unchanged.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pathlib
import struct
import tarfile
import tracemalloc

import pytest

from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import tgz
from xenapinfs_driver.vhd import writer

KiB = 1 << 10

# Small blocks keep the images tiny while giving a BAT of many entries.
BS = 4 * KiB
SIZE = 16 * BS                      # 64 KiB: 16 BAT entries
BLOCKS = (0, 1, 3, 6, 9)            # allocated blocks of the sample disk

# Offsets of the format reference, section 1.
F_COOKIE, F_VERSION, F_DATA_OFFSET = 0, 12, 16
F_CURRENT_SIZE, F_DISK_TYPE, F_CHECKSUM, F_UNIQUE_ID = 48, 60, 64, 68
H_COOKIE, H_TABLE_OFFSET, H_VERSION = 0, 16, 24
H_MAX_ENTRIES, H_BLOCK_SIZE, H_CHECKSUM, H_PARENT_ID = 28, 32, 36, 40
H_LOCATORS, LOCATOR_SIZE = 576, 24
L_CODE, L_SPACE, L_LENGTH, L_OFFSET = 0, 4, 8, 16


# -- the common assertions ----------------------------------------------------

def sha(path) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def assert_rejected(src, exc_class, *, member=None, field=None, says=(),
                    out_dir=None, max_memory=None, **kwargs):
    """Convert src, which must fail as described; return the exception.

    :param exc_class: the exact class (or a tuple of acceptable classes).
    :param member: the tar member the message must name after the source.
    :param field: the exception's field, which the message must show.
    :param says: further strings the message must contain.
    :param max_memory: a bound on the Python heap the attempt may use.
    """
    src = str(src)
    out_dir = pathlib.Path(out_dir or pathlib.Path(src).parent / 'out')
    out_dir.mkdir(exist_ok=True)
    before = sorted(os.listdir(out_dir))
    digest = sha(src)
    if max_memory is not None:
        tracemalloc.start()
    try:
        with pytest.raises(errors.VhdError) as info:
            tgz.convert(src, str(out_dir / 'disk.raw'), **kwargs)
        if max_memory is not None:
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        if max_memory is not None:
            tracemalloc.stop()
    exc = info.value
    text = str(exc)
    classes = exc_class if isinstance(exc_class, tuple) else (exc_class,)
    assert type(exc) in classes, '%s: %s' % (type(exc).__name__, text)
    assert text and '\n' not in text and '\r' not in text, repr(text)
    assert exc.source == src, text
    assert text.startswith(src + ': '), text
    if member is not None:
        assert exc.member == member, text
        assert text.startswith('%s: %s: ' % (src, member)), text
    if field is not None:
        assert exc.field == field, text
        assert ': %s: ' % field in text, text
    for part in (says,) if isinstance(says, str) else says:
        assert part in text, text
    assert sorted(os.listdir(out_dir)) == before, 'left behind'
    assert sha(src) == digest, 'the input was modified'
    if max_memory is not None:
        assert peak < max_memory, peak
    return exc


def convert_ok(src, tmp_path, **kwargs) -> bytes:
    """Convert src, which must succeed; return the disk."""
    out = pathlib.Path(tmp_path) / 'ok.raw'
    tgz.convert(str(src), str(out), **kwargs)
    data = out.read_bytes()
    out.unlink()
    return data


# -- VHD images and their damage ----------------------------------------------

def block_data(idx: int, block_size: int = BS) -> bytes:
    return bytes([idx + 1]) * block_size


# Fixed ids and time stamps make every image the same on every run.
BASE_ID, CHILD_ID, FIXED_ID = b'\x11' * 16, b'\x22' * 16, b'\x33' * 16
TIMESTAMP = 1


def dynamic(size=SIZE, blocks=BLOCKS, block_size=BS, **kw) -> bytearray:
    """A dynamic VHD whose allocated blocks hold their index + 1."""
    kw.setdefault('unique_id', BASE_ID)
    kw.setdefault('timestamp', TIMESTAMP)
    data = {i: (None, block_data(i, block_size)) for i in blocks}
    buf = io.BytesIO()
    writer.write_dynamic(buf, size, data, block_size=block_size, **kw)
    return bytearray(buf.getvalue())


def differencing(parent_id: bytes, parent_name='1.vhd', size=SIZE,
                 blocks=(2,), block_size=BS, **kw) -> bytearray:
    kw.setdefault('unique_id', CHILD_ID)
    kw.setdefault('timestamp', TIMESTAMP)
    data = {i: (None, block_data(i + 100, block_size)) for i in blocks}
    buf = io.BytesIO()
    writer.write_dynamic(
        buf, size, data, block_size=block_size,
        parent=writer.Parent(parent_id, parent_name, 0,
                             writer.xenserver_locators(parent_name)), **kw)
    return bytearray(buf.getvalue())


def fixed(data: bytes, **kw) -> bytearray:
    kw.setdefault('unique_id', FIXED_ID)
    kw.setdefault('timestamp', TIMESTAMP)
    buf = io.BytesIO()
    writer.write_fixed(buf, data, **kw)
    return bytearray(buf.getvalue())


def footer_at(buf, which: str) -> int:
    """Offset of the footer copy at 0 ('copy') or the trailing 'footer'."""
    return 0 if which == 'copy' else len(buf) - fmt.FOOTER_SIZE


def seal_footer(buf, which: str) -> None:
    """Recompute a footer's checksum after a change."""
    at = footer_at(buf, which)
    raw = buf[at:at + fmt.FOOTER_SIZE]
    struct.pack_into('>I', buf, at + F_CHECKSUM,
                     fmt.checksum(raw, F_CHECKSUM))


def put_footer(buf, code: str, off: int, value, which=('copy', 'footer'),
               seal=True) -> None:
    """Change a footer field in the given copies."""
    for w in (which,) if isinstance(which, str) else which:
        struct.pack_into(code, buf, footer_at(buf, w) + off, value)
        if seal:
            seal_footer(buf, w)


def header_at(buf) -> int:
    return struct.unpack_from('>Q', buf, F_DATA_OFFSET)[0]


def seal_header(buf) -> None:
    at = header_at(buf)
    raw = buf[at:at + fmt.HEADER_SIZE]
    struct.pack_into('>I', buf, at + H_CHECKSUM,
                     fmt.checksum(raw, H_CHECKSUM))


def put_header(buf, code: str, off: int, value, seal=True) -> None:
    struct.pack_into(code, buf, header_at(buf) + off, value)
    if seal:
        seal_header(buf)


def put_locator(buf, i: int, off: int, value, code='>I') -> None:
    put_header(buf, code, H_LOCATORS + i * LOCATOR_SIZE + off, value)


def table_at(buf) -> int:
    return struct.unpack_from('>Q', buf, header_at(buf) + H_TABLE_OFFSET)[0]


def bat(buf, idx: int) -> int:
    return struct.unpack_from('>I', buf, table_at(buf) + 4 * idx)[0]


def put_bat(buf, idx: int, sector: int) -> None:
    struct.pack_into('>I', buf, table_at(buf) + 4 * idx, sector)


# -- containers ---------------------------------------------------------------

def tar_bytes(members, *, fmt_=tarfile.GNU_FORMAT) -> bytes:
    """A tar of [(name, data)] or [(TarInfo, data)], no directory entry."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode='w', format=fmt_) as tf:
        for name, data in members:
            if isinstance(name, tarfile.TarInfo):
                info = name
            else:
                info = tarfile.TarInfo(name)
                info.mode = 0o644
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(bytes(data)))
            else:
                tf.addfile(info)
    return out.getvalue()


def write(path, data, *, gz=False) -> pathlib.Path:
    path = pathlib.Path(path)
    path.write_bytes(gzip.compress(bytes(data), 1) if gz else bytes(data))
    return path


def image(tmp_path, members, *, gz=False, name=None) -> pathlib.Path:
    """An image file holding the tar of members (gzipped when gz)."""
    name = name or ('img.tgz' if gz else 'img.tar')
    return write(pathlib.Path(tmp_path) / name, tar_bytes(members), gz=gz)


def container(tmp_path, vhd, kind: str) -> tuple:
    """vhd as 'tar' (member 0.vhd), 'vhd' or 'vhd.gz': (path, member)."""
    if kind == 'tar':
        return image(tmp_path, [('0.vhd', vhd)]), '0.vhd'
    path = pathlib.Path(tmp_path) / ('disk.' + kind)
    return write(path, vhd, gz=kind == 'vhd.gz'), None


# -- hand-made tar headers ----------------------------------------------------

def seal_tar(block: bytearray) -> bytearray:
    """Recompute the checksum of a 512-byte tar header."""
    block[148:156] = b' ' * 8
    block[148:156] = b'%06o\0 ' % sum(block)
    return block


def tar_header(name: bytes, size: int = 0, typeflag: bytes = b'0', *,
               size_field: bytes | None = None,
               prefix: bytes = b'') -> bytearray:
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b'0000644\0'
    h[108:116] = b'0000000\0'
    h[116:124] = b'0000000\0'
    h[124:136] = size_field if size_field is not None else b'%011o\0' % size
    h[136:148] = b'00000000000\0'
    h[156:157] = typeflag
    h[257:265] = b'ustar\x0000'
    h[345:345 + len(prefix)] = prefix
    return seal_tar(h)


def padded(data: bytes) -> bytes:
    return bytes(data) + bytes(-len(data) % 512)


def raw_member(name: bytes, data: bytes, typeflag: bytes = b'0',
               **kw) -> bytes:
    return bytes(tar_header(name, len(data), typeflag, **kw)) + padded(data)


def pax_record(key: str, value: str) -> bytes:
    body = (' %s=%s\n' % (key, value)).encode()
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


END = bytes(1024)
