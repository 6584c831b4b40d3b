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
"""vhdstream: a raw disk packed into a stream, checked by qemu-img and
libvhdi (the referees) and by our own reader."""

import gzip
import io
import random
import shutil
import subprocess
import tarfile

import pytest

from xenapinfs_driver import vhd
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import vhdstream

try:
    import pyvhdi
except ImportError:
    pyvhdi = None

MiB = 1 << 20
QEMU = shutil.which('qemu-img')


def sparse_disk(path, size, blocks, seed=1):
    """A sparse file of size bytes with random 2 MiB blocks at blocks."""
    rnd = random.Random(seed)
    disk = bytearray(size)
    with open(path, 'wb') as f:
        f.truncate(size)
        for idx in blocks:
            data = rnd.randbytes(min(2 * MiB, size - idx * 2 * MiB))
            f.seek(idx * 2 * MiB)
            f.write(data)
            disk[idx * 2 * MiB:idx * 2 * MiB + len(data)] = data
    return bytes(disk)


def packed(path):
    out = io.BytesIO()
    with vhdstream.PackedVhd(str(path)) as p:
        length = p.length
        written = p.write_to(out.write)
    assert written == length == len(out.getvalue())
    return out.getvalue()


@pytest.mark.skipif(QEMU is None, reason='qemu-img not found')
@pytest.mark.parametrize('size', [9 * MiB, 9 * MiB + 7 * 512])
def test_length_is_known_first_and_qemu_reads_the_disk(tmp_path, size):
    src = tmp_path / 'disk.raw'
    disk = sparse_disk(src, size, [0, 3, 4])
    data = packed(src)
    img = tmp_path / 'out.vhd'
    img.write_bytes(data)
    out = tmp_path / 'qemu.raw'
    subprocess.run([QEMU, 'convert', '-f', 'vpc', '-O', 'raw', str(img),
                    str(out)], check=True, timeout=60)
    assert out.read_bytes()[:size] == disk
    # Only the blocks with data are in it: three of five.
    assert len(data) < 4 * 2 * MiB


@pytest.mark.skipif(pyvhdi is None, reason='pyvhdi not importable')
def test_libvhdi_reads_the_stream(tmp_path):
    src = tmp_path / 'disk.raw'
    size = 8 * MiB
    disk = sparse_disk(src, size, [1, 2], seed=2)
    img = tmp_path / 'out.vhd'
    img.write_bytes(packed(src))
    handle = pyvhdi.file()
    handle.open(str(img))
    try:
        assert handle.get_media_size() == size
        assert handle.read_buffer_at_offset(size, 0) == disk
    finally:
        handle.close()


def test_an_empty_disk_is_a_vhd_without_blocks(tmp_path):
    src = tmp_path / 'disk.raw'
    sparse_disk(src, 6 * MiB, [])
    img = tmp_path / 'out.vhd'
    img.write_bytes(packed(src))
    back = tmp_path / 'back.raw'
    result = vhd.convert(str(img), str(back))
    assert result.virtual_size == 6 * MiB and result.allocated == 0


@pytest.mark.parametrize('blocks', [[], [2]])
def test_what_a_forward_reader_needs(tmp_path, blocks):
    # XAPI reads an imported VHD forward: the blocks after the BAT, the
    # footer right after the last one, or after the BAT when there is
    # none; a batmap (blktap's) in between is not a footer.
    src = tmp_path / 'disk.raw'
    sparse_disk(src, 6 * MiB, blocks)
    data = packed(src)
    assert b'tdbatmap' not in data
    bat_end = 1536 + 512        # three entries of four bytes, one sector
    span = 512 + 2 * MiB        # bitmap and block
    body = len(data) - 512
    assert data[body:] == data[:512]
    if blocks:
        assert bat_end <= body - span   # the one block ends at the footer
    else:
        assert body == bat_end


def test_write_tgz_is_a_xenserver_image(tmp_path):
    src = tmp_path / 'disk.raw'
    disk = sparse_disk(src, 7 * MiB, [0, 3], seed=3)
    out = io.BytesIO()
    result = vhdstream.write_tgz(str(src), out.write)
    assert result.bytes_written == len(out.getvalue())
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        assert tar.getnames() == ['0.vhd']
    gzip.decompress(out.getvalue())     # one valid gzip stream
    tgz = tmp_path / 'img.tgz'
    tgz.write_bytes(out.getvalue())
    back = tmp_path / 'back.raw'
    vhd.convert(str(tgz), str(back))
    assert back.read_bytes() == disk


def test_a_write_that_fails_stops_the_packing(tmp_path):
    src = tmp_path / 'disk.raw'
    sparse_disk(src, 6 * MiB, [0, 1, 2])
    seen = []

    def write(data):
        seen.append(len(data))
        if sum(seen) > MiB:
            raise OSError('connection reset')
    with vhdstream.PackedVhd(str(src)) as p:
        with pytest.raises(OSError, match='connection reset'):
            p.write_to(write)
    assert sum(seen) < 6 * MiB


def test_bad_input_is_named(tmp_path):
    with pytest.raises(errors.VhdError) as err:
        vhdstream.PackedVhd(str(tmp_path / 'missing.raw'))
    assert 'missing.raw' in str(err.value)
    src = tmp_path / 'big.raw'
    sparse_disk(src, 4 * MiB, [])
    with pytest.raises(errors.LimitExceeded) as err:
        vhdstream.PackedVhd(str(src), max_size=2 * MiB)
    assert 'big.raw' in str(err.value)
    with pytest.raises(ValueError):
        vhdstream.write_tgz(str(src), lambda d: None, level=0)
