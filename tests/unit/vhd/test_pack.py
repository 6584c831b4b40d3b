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
"""A raw disk to a XenServer image, and back through convert.

Disks of a few MiB are generated here; the blocks that must be stored are
computed from the bytes with a plain comparison, independently of the
packer's two passes. The VHD is parsed with format.py and read back by
convert, qemu-img and libvhdi.
"""

import errno
import gzip
import hashlib
import io
import os
import random
import shutil
import struct
import subprocess
import tarfile
import tracemalloc

import pytest

from xenapinfs_driver.cmd import vhd as cmd
from xenapinfs_driver.vhd import deflate
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import pack
from xenapinfs_driver.vhd import tgz
from xenapinfs_driver.vhd import writer

try:
    import pyvhdi
except ImportError:                     # pragma: no cover
    pyvhdi = None

MiB = 1 << 20
BS = pack.BLOCK
SECTOR = fmt.SECTOR
QEMU = shutil.which('qemu-img')
COMPRESSORS = ['zlib', 'isal', 'zlib-ng']
MODULES = {'isal': 'isal', 'zlib-ng': 'zlib_ng'}


# -- disks --------------------------------------------------------------------

def make_disk(path, size, pieces=(), *, sparse=True):
    """A raw disk of size bytes with data at [(offset, bytes)]; the rest
    holes (sparse) or written zeros. Returns its contents."""
    assert all(offset + len(data) <= size for offset, data in pieces)
    disk = bytearray(size)
    with open(path, 'wb') as f:
        if sparse:
            f.truncate(size)
        else:
            f.write(bytes(size))
            f.flush()
        for offset, data in pieces:
            os.pwrite(f.fileno(), data, offset)
            disk[offset:offset + len(data)] = data
    return bytes(disk)


def nonzero_blocks(disk):
    return [i for i in range(-(-len(disk) // BS))
            if disk[i * BS:(i + 1) * BS].strip(b'\0')]


def padded(disk):
    """The disk a VHD holds: rounded up to a whole sector with zeros."""
    return disk + bytes(-len(disk) % SECTOR)


def sha(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def convert_back(tmp_path, image):
    out = tmp_path / 'back.raw'
    result = tgz.convert(str(image), str(out))
    data = out.read_bytes()
    out.unlink()
    return data, result


def vhd_of(tgz_path):
    """The bytes of 0.vhd in an image, read with the stdlib tarfile."""
    with tarfile.open(tgz_path, 'r:gz') as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == ['0.vhd']
        return tf.extractfile(members[0]).read()


def random_disk(rnd, size):
    """Random blocks, zero blocks and blocks with a few bytes of data."""
    pieces = []
    for idx in range(-(-size // BS)):
        kind = rnd.randrange(4)
        at = idx * BS
        room = min(BS, size - at)
        if kind == 0:
            pieces.append((at, rnd.randbytes(room)))
        elif kind == 1:
            off = rnd.randrange(room)
            pieces.append((at + off, b'\x01'))
        elif kind == 2:
            pieces.append((at, bytes(room)))     # written zeros: not stored
    return pieces


# -- round trips --------------------------------------------------------------

@pytest.mark.parametrize('size', [
    4 * MiB, 6 * MiB, 5 * MiB + 3 * SECTOR, 7 * MiB + 4096, 3 * SECTOR,
    BS + 1, 3 * MiB + 100, 1,
])
@pytest.mark.parametrize('sparse', [True, False])
def test_round_trip_gives_the_input(tmp_path, size, sparse):
    rnd = random.Random(size)
    src = tmp_path / 'disk.raw'
    disk = make_disk(src, size, random_disk(rnd, size), sparse=sparse)
    digest = sha(src)
    dst = tmp_path / 'image.tgz'
    result = pack.pack(str(src), str(dst))
    assert sha(src) == digest
    back, conv = convert_back(tmp_path, dst)
    assert back == padded(disk)
    assert result.input_size == size
    assert result.virtual_size == conv.virtual_size == len(padded(disk))
    assert result.blocks == len(nonzero_blocks(disk))
    assert conv.layers[0].allocated_blocks == result.blocks
    assert result.container == 'tgz'
    assert result.bytes_written == os.path.getsize(dst)
    assert sorted(os.listdir(tmp_path)) == ['disk.raw', 'image.tgz']


def test_sparse_file_with_holes(tmp_path):
    rnd = random.Random(2)
    size = 16 * MiB
    pieces = [
        (0, rnd.randbytes(4096)),                   # block 0
        (3 * BS - 4096, rnd.randbytes(8192)),       # ends 2, starts 3
        (6 * BS + 12345, b'\xff'),                  # one byte of block 6
        (7 * BS - 1, b'\x01'),                      # the last byte of 6
        (5 * BS, bytes(BS)),                        # allocated zeros
        (8 * BS - SECTOR, rnd.randbytes(SECTOR)),   # end of block 7
    ]
    src = tmp_path / 'disk.raw'
    disk = make_disk(src, size, pieces)
    assert os.stat(src).st_blocks * 512 < size // 2    # really sparse
    dst = tmp_path / 'image.tgz'
    result = pack.pack(str(src), str(dst))
    assert nonzero_blocks(disk) == [0, 2, 3, 6, 7]
    assert result.blocks == 5
    info = tgz.inspect(str(dst))
    assert info.layers[0].allocated_blocks == 5
    assert convert_back(tmp_path, dst)[0] == disk


@pytest.mark.parametrize('sparse', [True, False])
def test_a_disk_of_zeros_stores_no_block(tmp_path, sparse):
    src = tmp_path / 'zeros.raw'
    disk = make_disk(src, 5 * MiB, sparse=sparse)
    dst = tmp_path / 'image.tgz'
    result = pack.pack(str(src), str(dst))
    assert result.blocks == 0
    info = tgz.inspect(str(dst))
    assert info.layers[0].allocated_blocks == 0
    assert info.layers[0].batmap == 'valid'
    assert info.warnings == []
    assert convert_back(tmp_path, dst)[0] == disk
    # Footer copy, header, BAT, batmap header and map, footer.
    assert result.vhd_size == 512 + 1024 + 512 + 512 + 512 + 512


def test_size_not_a_multiple_of_512_is_padded(tmp_path):
    rnd = random.Random(4)
    size = 2 * MiB + 777
    src = tmp_path / 'odd.raw'
    disk = make_disk(src, size, [(0, rnd.randbytes(size))])
    dst = tmp_path / 'image.tgz'
    result = pack.pack(str(src), str(dst))
    assert result.virtual_size == 2 * MiB + 1024
    back, conv = convert_back(tmp_path, dst)
    assert back == disk + bytes(1024 - 777)
    assert conv.virtual_size == 2 * MiB + 1024


@pytest.mark.parametrize('workers', [1, 2, 3])
def test_pieces_and_workers(tmp_path, monkeypatch, workers):
    # Small pieces cut the VHD's metadata and blocks into many deflate
    # pieces, each with the last 32 KiB before it as dictionary: text
    # repeated across the cuts is coded as references into it.
    monkeypatch.setattr(deflate, 'PIECE', 5000)
    text = b''.join(b'line %d of a log file\n' % i for i in range(100000))
    src = tmp_path / 'disk.raw'
    disk = make_disk(src, 10 * BS, [(BS, text[:3 * BS]),
                                    (7 * BS + 99, text[:BS])])
    assert len(disk) == 10 * BS
    dst = tmp_path / 'image.tgz'
    pack.pack(str(src), str(dst), workers=workers)
    assert convert_back(tmp_path, dst)[0] == disk
    assert os.path.getsize(dst) < len(text) // 4
    assert tgz.inspect(str(dst)).layers[0].allocated_blocks == 4


# -- what the image looks like ------------------------------------------------

def test_one_member_named_0_vhd(tmp_path):
    src = tmp_path / 'disk.raw'
    make_disk(src, 6 * MiB, [(BS, b'data')])
    dst = tmp_path / 'image.tgz'
    result = pack.pack(str(src), str(dst))
    raw = gzip.decompress(dst.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        members = tf.getmembers()
        assert len(members) == 1
        member = members[0]
        assert member.name == '0.vhd'
        assert member.isreg()
        assert member.mode == 0o644
        assert member.size == result.vhd_size
        assert abs(member.mtime - os.path.getmtime(dst)) < 60
        vhd = tf.extractfile(member).read()
    # Member data, padding, two zero blocks, a whole record, as tar does.
    assert len(raw) % tarfile.RECORDSIZE == 0
    end = 512 + -(-result.vhd_size // 512) * 512
    assert raw[end:] == bytes(len(raw) - end) and len(raw) - end >= 1024
    assert vhd[:8] == fmt.FOOTER_COOKIE
    info = tgz.inspect(str(dst))
    assert info.container == 'tgz'
    assert [layer.name for layer in info.layers] == ['0.vhd']


@pytest.mark.parametrize('size', [6 * MiB, 9 * MiB + 5 * SECTOR, 1 << 30])
def test_vhd_fields_as_xenserver_writes_them(tmp_path, size):
    rnd = random.Random(size)
    src = tmp_path / 'disk.raw'
    pieces = [(0, rnd.randbytes(100)), (size - 1000, rnd.randbytes(1000)),
              (BS + 3, b'x')]
    disk = make_disk(src, size, pieces)
    dst = tmp_path / 'image.tgz'
    pack.pack(str(src), str(dst))
    vhd = vhd_of(dst)
    footer = fmt.Footer.from_bytes(vhd[-512:])
    assert vhd[:512] == vhd[-512:]
    assert footer.cookie == fmt.FOOTER_COOKIE
    assert footer.creator_app == b'tap\0'
    assert footer.creator_version == 0x00010003
    assert footer.disk_type == fmt.DISK_DYNAMIC
    assert footer.current_size == footer.original_size == size
    assert footer.chs == fmt.chs_geometry(size)
    assert footer.hidden == 0
    assert footer.data_offset == 512
    assert fmt.Footer.from_bytes(vhd[-512:]).to_bytes() == vhd[-512:]
    header = fmt.DynamicHeader.from_bytes(vhd[512:1536])
    assert header.block_size == BS
    assert header.table_offset == 1536
    assert header.max_table_entries == -(-size // BS)
    assert header.to_bytes() == vhd[512:1536]
    bat = struct.unpack_from('>%dI' % header.max_table_entries, vhd, 1536)
    stored = [i for i, e in enumerate(bat) if e != fmt.BAT_UNUSED]
    assert stored == nonzero_blocks(disk)
    for idx in stored:
        at = bat[idx] * SECTOR
        assert (at + SECTOR) % 4096 == 0        # data on a 4 KiB boundary
        assert vhd[at:at + SECTOR] == b'\xff' * SECTOR   # full bitmap
    info = tgz.inspect(str(dst))
    layer = info.layers[0]
    assert layer.batmap == 'valid'
    assert layer.batmap_bits[0] & 0x80                  # block 0 full
    assert info.warnings == []
    assert layer.warnings == []


@pytest.mark.skipif(QEMU is None, reason='qemu-img not found')
@pytest.mark.parametrize('size', [6 * MiB, 5 * MiB + 7 * SECTOR])
def test_bare_vhd_read_by_qemu(tmp_path, size):
    rnd = random.Random(size)
    src = tmp_path / 'disk.raw'
    disk = make_disk(src, size, random_disk(rnd, size))
    vhd = tmp_path / 'disk.vhd'
    result = pack.pack(str(src), str(vhd), vhd_only=True)
    assert result.container == 'vhd' and result.compressor is None
    assert os.path.getsize(vhd) == result.vhd_size == result.bytes_written
    out = tmp_path / 'qemu.raw'
    subprocess.run([QEMU, 'convert', '-f', 'vpc', '-O', 'raw', str(vhd),
                    str(out)], check=True, timeout=60)
    assert out.read_bytes() == disk
    back, conv = convert_back(tmp_path, vhd)
    assert back == disk
    assert conv.container == 'vhd'


@pytest.mark.skipif(pyvhdi is None, reason='pyvhdi not importable')
def test_bare_vhd_read_by_libvhdi(tmp_path):
    rnd = random.Random(8)
    size = 8 * MiB
    src = tmp_path / 'disk.raw'
    disk = make_disk(src, size, random_disk(rnd, size))
    vhd = tmp_path / 'disk.vhd'
    pack.pack(str(src), str(vhd), vhd_only=True)
    handle = pyvhdi.file()
    handle.open(str(vhd))
    try:
        assert handle.get_media_size() == size
        assert handle.read_buffer_at_offset(size, 0) == disk
    finally:
        handle.close()


@pytest.mark.parametrize('name', COMPRESSORS)
@pytest.mark.parametrize('level', [1, 6])
def test_each_compressor_gives_a_valid_gzip(tmp_path, name, level):
    if name in MODULES:
        pytest.importorskip(MODULES[name])
    rnd = random.Random(9)
    src = tmp_path / 'disk.raw'
    text = b'a compressible block ' * (BS // 21)
    disk = make_disk(src, 7 * MiB, [(0, rnd.randbytes(BS)), (BS, text)])
    dst = tmp_path / 'image.tgz'
    result = pack.pack(str(src), str(dst), zlib_name=name, level=level)
    assert result.compressor == name
    assert result.level == (min(level, 3) if name == 'isal' else level)
    # The stdlib reads it, trailer (CRC and length) included.
    tar = gzip.decompress(dst.read_bytes())
    assert len(tar) % tarfile.RECORDSIZE == 0
    if shutil.which('gzip'):
        subprocess.run(['gzip', '-t', str(dst)], check=True, timeout=60)
    assert convert_back(tmp_path, dst)[0] == disk


def test_compressor_picked_by_level(monkeypatch):
    monkeypatch.delenv('XENAPINFS_VHD_ZLIB', raising=False)
    name, _, level = deflate.pick_compressor(None, 1)
    try:
        import isal  # noqa: F401
        assert (name, level) == ('isal', 1)
    except ImportError:                         # pragma: no cover
        assert name in ('zlib-ng', 'zlib')
    # isal stops at level 3: higher levels go to zlib-ng or zlib.
    name, _, level = deflate.pick_compressor(None, 9)
    assert name in ('zlib-ng', 'zlib') and level == 9
    monkeypatch.setenv('XENAPINFS_VHD_ZLIB', 'zlib')
    assert deflate.pick_compressor(None, 1)[0] == 'zlib'
    monkeypatch.setenv('XENAPINFS_VHD_ZLIB', 'bogus')
    with pytest.raises(errors.VhdError, match='bogus'):
        deflate.pick_compressor(None, 1)
    with pytest.raises(errors.VhdError, match='lzma'):
        deflate.pick_compressor('lzma', 1)


def test_level_is_checked(tmp_path):
    src = tmp_path / 'disk.raw'
    make_disk(src, MiB)
    for level in (0, 10):
        with pytest.raises(ValueError):
            pack.pack(str(src), str(tmp_path / 'x.tgz'), level=level)
    assert os.listdir(tmp_path) == ['disk.raw']


# -- the passes ---------------------------------------------------------------

def test_without_seek_data(tmp_path, monkeypatch):
    # File systems without SEEK_DATA: every block is read and compared.
    real = os.lseek

    def lseek(fd, pos, how):
        if how in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, 'Invalid argument')
        return real(fd, pos, how)
    rnd = random.Random(10)
    src = tmp_path / 'disk.raw'
    disk = make_disk(src, 9 * MiB, random_disk(rnd, 9 * MiB))
    monkeypatch.setattr(pack.os, 'lseek', lseek)
    reads = []
    dst = tmp_path / 'image.tgz'
    result = pack.pack(str(src), str(dst),
                       progress=lambda done, total: reads.append(done))
    monkeypatch.undo()
    assert result.blocks == len(nonzero_blocks(disk))
    assert convert_back(tmp_path, dst)[0] == disk


def test_holes_are_not_read(tmp_path, monkeypatch):
    src = tmp_path / 'disk.raw'
    make_disk(src, 64 * MiB, [(40 * MiB, b'x' * 4096)])
    if os.stat(src).st_blocks * 512 > MiB:      # pragma: no cover
        pytest.skip('the file system does not keep holes')
    offsets = []
    real = os.pread

    def pread(fd, n, offset):
        offsets.append((offset, n))
        return real(fd, n, offset)
    monkeypatch.setattr(pack.os, 'pread', pread)
    dst = tmp_path / 'image.tgz'
    result = pack.pack(str(src), str(dst))
    assert result.blocks == 1
    # The scan read the data's page and no more than a piece of zeros
    # around it; the second pass its block.
    scanned = sum(n for offset, n in offsets[:-1])
    assert scanned <= pack.SCAN_PIECE
    assert offsets[-1] == (40 * MiB, BS)


def test_progress_counts_what_is_read(tmp_path):
    rnd = random.Random(11)
    src = tmp_path / 'disk.raw'
    disk = make_disk(src, 8 * MiB, [(0, rnd.randbytes(3 * BS))])
    calls = []
    pack.pack(str(src), str(tmp_path / 'image.tgz'),
              progress=lambda done, total: calls.append((done, total)))
    assert calls[0][1] is None                  # the scan: no total yet
    done, total = calls[-1]
    assert done == total
    assert total >= 3 * BS
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(disk) == 8 * MiB


def test_memory_stays_bounded(tmp_path):
    rnd = random.Random(12)
    size = 48 * MiB
    src = tmp_path / 'disk.raw'
    with open(src, 'wb') as f:
        for _ in range(size // BS):
            f.write(rnd.randbytes(BS))
    tracemalloc.start()
    try:
        result = pack.pack(str(src), str(tmp_path / 'image.tgz'))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.blocks == size // BS
    # A few blocks in flight, not the disk.
    assert peak < 10 * BS, peak


# -- bad input ----------------------------------------------------------------

def rejected(tmp_path, src, dst, exc_class, *says, source=None, **kw):
    """pack must fail with one line naming the file; nothing left."""
    before = sorted(os.listdir(tmp_path))
    digest = sha(src) if os.path.isfile(src) else None
    with pytest.raises(errors.VhdError) as info:
        pack.pack(str(src), str(dst), **kw)
    exc = info.value
    text = str(exc)
    assert type(exc) is exc_class, (type(exc), text)
    assert '\n' not in text
    assert exc.source == str(source or src), text
    for word in says:
        assert word in text, text
    assert sorted(os.listdir(tmp_path)) == before
    if digest is not None:
        assert sha(src) == digest
    return exc


def test_missing_input(tmp_path):
    rejected(tmp_path, tmp_path / 'nothing.raw', tmp_path / 'x.tgz',
             errors.VhdError, 'No such file')


def test_input_is_a_directory(tmp_path):
    (tmp_path / 'dir').mkdir()
    rejected(tmp_path, tmp_path / 'dir', tmp_path / 'x.tgz',
             errors.VhdError, 'is a directory')


def test_input_is_a_fifo(tmp_path):
    fifo = tmp_path / 'fifo'
    os.mkfifo(fifo)
    # Opening a FIFO for reading blocks until a writer comes: give one.
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        rejected(tmp_path, fifo, tmp_path / 'x.tgz', errors.VhdError,
                 'not a regular file or a block device')
    finally:
        os.close(writer)


def test_standard_input_is_refused(tmp_path):
    with pytest.raises(errors.VhdError, match='standard input'):
        pack.pack('-', str(tmp_path / 'x.tgz'))
    assert os.listdir(tmp_path) == []


def test_empty_input(tmp_path):
    src = tmp_path / 'empty.raw'
    src.write_bytes(b'')
    rejected(tmp_path, src, tmp_path / 'x.tgz', errors.VhdError, 'empty')


@pytest.mark.parametrize('how', ['same', 'symlink', 'hardlink'])
def test_output_is_the_input(tmp_path, how):
    src = tmp_path / 'disk.raw'
    make_disk(src, 2 * MiB, [(0, b'keep me')])
    dst = src
    if how == 'symlink':
        dst = tmp_path / 'link.tgz'
        dst.symlink_to(src)
    elif how == 'hardlink':
        dst = tmp_path / 'hard.tgz'
        os.link(src, dst)
    rejected(tmp_path, src, dst, errors.TargetError, 'is the input file',
             source=dst)
    assert src.read_bytes()[:7] == b'keep me'


def test_output_is_a_directory(tmp_path):
    src = tmp_path / 'disk.raw'
    make_disk(src, MiB)
    (tmp_path / 'out').mkdir()
    rejected(tmp_path, src, tmp_path / 'out', errors.TargetError,
             'is a directory', source=tmp_path / 'out')


def test_output_directory_missing(tmp_path):
    src = tmp_path / 'disk.raw'
    make_disk(src, MiB)
    dst = tmp_path / 'no' / 'x.tgz'
    rejected(tmp_path, src, dst, errors.TargetError, 'cannot create',
             source=dst)


def test_output_directory_not_writable(tmp_path, monkeypatch):
    src = tmp_path / 'disk.raw'
    make_disk(src, MiB)
    ro = tmp_path / 'ro'
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() == 0:
        # root writes anywhere: the refusal is simulated.
        def mkstemp(**kw):
            raise PermissionError(errno.EACCES, 'Permission denied')
        monkeypatch.setattr(pack.targetmod.tempfile, 'mkstemp', mkstemp)
    try:
        rejected(tmp_path, src, ro / 'x.tgz', errors.TargetError,
                 'cannot create a file in %s' % ro, 'Permission denied',
                 source=ro / 'x.tgz')
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o700)


def test_input_over_the_size_limit(tmp_path):
    src = tmp_path / 'disk.raw'
    make_disk(src, 4 * MiB)
    rejected(tmp_path, src, tmp_path / 'x.tgz', errors.LimitExceeded,
             'limit', max_size=2 * MiB)


def test_blocks_past_what_a_bat_entry_addresses(tmp_path, monkeypatch):
    monkeypatch.setattr(pack, 'MAX_SECTOR', 4096)
    src = tmp_path / 'disk.raw'
    make_disk(src, 6 * MiB, [(0, b'a'), (5 * MiB, b'b')])
    rejected(tmp_path, src, tmp_path / 'x.tgz', errors.LimitExceeded,
             '2 TiB')


@pytest.mark.parametrize('vhd_only', [False, True])
def test_write_error_leaves_nothing(tmp_path, monkeypatch, vhd_only):
    rnd = random.Random(13)
    src = tmp_path / 'disk.raw'
    make_disk(src, 8 * MiB, [(0, rnd.randbytes(4 * BS))])
    dst = tmp_path / 'image.tgz'
    dst.write_bytes(b'the old image')
    real = os.pwrite
    written = [0]

    def pwrite(fd, data, offset):
        if written[0] > MiB:
            raise OSError(errno.ENOSPC, 'No space left on device')
        written[0] += len(data)
        return real(fd, data, offset)
    monkeypatch.setattr(pack.targetmod.os, 'pwrite', pwrite)
    exc = rejected(tmp_path, src, dst, errors.TargetError,
                   'No space left', source=dst, vhd_only=vhd_only)
    assert 'cannot write at offset' in str(exc)
    assert dst.read_bytes() == b'the old image'


def test_input_shrinking_between_the_passes(tmp_path):
    rnd = random.Random(14)
    src = tmp_path / 'disk.raw'
    make_disk(src, 8 * MiB, [(0, rnd.randbytes(8 * MiB))])

    def shrink(done, total):
        if total is not None and os.path.getsize(src) > MiB:
            os.truncate(src, MiB)
    with pytest.raises(errors.Truncated, match='changed while being read'):
        pack.pack(str(src), str(tmp_path / 'x.tgz'), progress=shrink)
    assert sorted(os.listdir(tmp_path)) == ['disk.raw']


def test_interrupted_leaves_nothing(tmp_path):
    rnd = random.Random(15)
    src = tmp_path / 'disk.raw'
    make_disk(src, 8 * MiB, [(0, rnd.randbytes(8 * MiB))])

    def interrupt(done, total):
        if total is not None and done > 2 * BS:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        pack.pack(str(src), str(tmp_path / 'x.tgz'), progress=interrupt)
    assert sorted(os.listdir(tmp_path)) == ['disk.raw']


def test_existing_output_replaced_keeping_its_mode(tmp_path):
    src = tmp_path / 'disk.raw'
    disk = make_disk(src, 2 * MiB, [(7, b'new')])
    dst = tmp_path / 'image.tgz'
    dst.write_bytes(b'old')
    dst.chmod(0o600)
    pack.pack(str(src), str(dst))
    assert os.stat(dst).st_mode & 0o777 == 0o600
    assert convert_back(tmp_path, dst)[0] == disk


# -- the command --------------------------------------------------------------

def run_cmd(capsys, *argv):
    code = cmd.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_command_pack_and_convert(tmp_path, capsys):
    rnd = random.Random(16)
    src = tmp_path / 'disk.raw'
    disk = make_disk(src, 5 * MiB + 512, random_disk(rnd, 5 * MiB + 512))
    assert run_cmd(capsys, 'pack', src, tmp_path / 'i.tgz') == (0, '', '')
    assert run_cmd(capsys, 'pack', '--vhd', src, tmp_path / 'd.vhd') == (
        0, '', '')
    assert run_cmd(capsys, 'pack', '--level', '9', src,
                   tmp_path / 'i9.tgz') == (0, '', '')
    for name in ('i.tgz', 'd.vhd', 'i9.tgz'):
        assert convert_back(tmp_path, tmp_path / name)[0] == disk


@pytest.mark.parametrize('argv, says', [
    (['nothing.raw', 'x.tgz'], 'nothing.raw: No such file'),
    (['-', 'x.tgz'], 'standard input'),
    (['disk.raw', 'disk.raw'], 'is the input file'),
    (['disk.raw', 'no/x.tgz'], 'cannot create'),
])
def test_command_errors(tmp_path, capsys, monkeypatch, argv, says):
    monkeypatch.chdir(tmp_path)
    make_disk(tmp_path / 'disk.raw', MiB)
    code, out, err = run_cmd(capsys, 'pack', *argv)
    assert (code, out) == (1, '')
    assert err.startswith('xenapinfs-vhd: error: ') and says in err, err
    assert err.count('\n') == 1
    assert sorted(os.listdir(tmp_path)) == ['disk.raw']


@pytest.mark.parametrize('argv', [
    ['--level', '0', 'a', 'b'], ['--level', '10', 'a', 'b'],
    ['--level', 'x', 'a', 'b'], ['--vhd', '--level', '3', 'a', 'b'],
    ['only-src'],
])
def test_command_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as info:
        cmd.main(['pack', *argv])
    assert info.value.code == 2
    assert 'usage: xenapinfs-vhd pack' in capsys.readouterr().err


def test_the_last_block_may_not_land_on_the_unused_bat_value():
    # A BAT entry of 0xFFFFFFFF means "not allocated": a block whose
    # bitmap would start at that sector cannot be recorded.
    class Disk:
        # A BAT this long puts a stored block exactly on that sector.
        virtual_size = 1522561 * BS
        name = 'big.raw'
    lay = writer.Layout(Disk.virtual_size, range(1), BS, None, True, [],
                        writer.ALIGN)
    last = (0xFFFFFFFF * SECTOR + lay.bitmap_size - lay.first_data) \
        // lay.stride
    assert lay.offset_of(last) // SECTOR == 0xFFFFFFFF
    with pytest.raises(errors.LimitExceeded):
        pack.vhd_length(Disk, list(range(last + 1)))
    assert pack.vhd_length(Disk, list(range(last))) > 0
