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
"""passthrough: an export's VHD stream packed as a XenServer image as it
arrives, read back by our reader, qemu-img and libvhdi; every layout it
cannot predict is handed back, every lie of the stream is refused before
the archive ends."""

import gzip
import io
import random
import shutil
import subprocess
import tarfile

import pytest

from xenapinfs_driver import vhd
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import passthrough
from xenapinfs_driver.vhd import writer

try:
    import pyvhdi
except ImportError:
    pyvhdi = None

MiB = 1 << 20
BS = 2 * MiB
QEMU = shutil.which('qemu-img')
SOURCE = 'export of VDI 1234'


def exported(size, blocks, seed=1, **kwargs):
    """(vhd bytes, disk bytes): a dynamic VHD with random data at blocks
    (index: sectors present, None for all), as write_dynamic lays it out
    (kwargs: its layout options, order the physical order)."""
    rnd = random.Random(seed)
    disk = bytearray(size)
    content = {}
    for idx, sectors in blocks.items():
        data = bytearray(rnd.randbytes(BS))
        bitmap = None
        if sectors is not None:
            keep = bytearray(BS)
            for s in sectors:
                keep[s * 512:(s + 1) * 512] = data[s * 512:(s + 1) * 512]
            data, bitmap = keep, writer.bitmap_of(sectors)
        n = min(BS, size - idx * BS)
        disk[idx * BS:idx * BS + n] = data[:n]
        content[idx] = (bitmap, bytes(data))
    out = io.BytesIO()
    writer.write_dynamic(out, size, content, **kwargs)
    return out.getvalue(), bytes(disk)


# vhd-tool's layout (what XAPI sends): no batmap, blocks packed after the
# BAT with no padding, the footer right after the last.
CONTIGUOUS = {'batmap': False, 'align': 512}


def tgz_of(data, length=None, **kwargs):
    src = io.BytesIO(data)
    out = io.BytesIO()
    p = passthrough.plan(src, SOURCE, length)
    result = passthrough.write_tgz(p, src, out.write, **kwargs)
    assert result.bytes_written == len(out.getvalue())
    return p, out.getvalue()


def member(tgz):
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
        assert tar.getnames() == ['0.vhd']
        return tar.extractfile('0.vhd').read()


@pytest.mark.parametrize('layout', [{}, CONTIGUOUS], ids=['tap', 'vhd-tool'])
def test_the_member_is_the_export_and_our_reader_reads_it(tmp_path, layout):
    data, disk = exported(9 * MiB, {3: None, 0: None, 4: [0, 7, 300]},
                          **layout)
    p, tgz = tgz_of(data, len(data))
    assert p.length == len(data)
    assert member(tgz) == data
    path = tmp_path / 'img.tgz'
    path.write_bytes(tgz)
    back = tmp_path / 'back.raw'
    result = vhd.convert(str(path), str(back))
    assert len(result.layers) == 1
    assert back.read_bytes() == disk


def test_the_length_comes_from_the_bat_without_content_length():
    data, _ = exported(8 * MiB, {1: None, 2: None}, **CONTIGUOUS)
    p, tgz = tgz_of(data)
    assert p.length == len(data)
    assert member(tgz) == data


@pytest.mark.skipif(QEMU is None, reason='qemu-img not found')
def test_qemu_reads_the_member(tmp_path):
    data, disk = exported(7 * MiB + 1024, {0: None, 3: None},
                          **CONTIGUOUS)
    img = tmp_path / '0.vhd'
    img.write_bytes(member(tgz_of(data)[1]))
    out = tmp_path / 'qemu.raw'
    subprocess.run([QEMU, 'convert', '-f', 'vpc', '-O', 'raw', str(img),
                    str(out)], check=True, timeout=60)
    assert out.read_bytes()[:len(disk)] == disk


@pytest.mark.skipif(pyvhdi is None, reason='pyvhdi not importable')
def test_libvhdi_reads_the_member(tmp_path):
    data, disk = exported(8 * MiB, {1: None, 2: [5, 6]}, seed=2)
    img = tmp_path / '0.vhd'
    img.write_bytes(member(tgz_of(data)[1]))
    handle = pyvhdi.file()
    handle.open(str(img))
    try:
        assert handle.get_media_size() == len(disk)
        assert handle.read_buffer_at_offset(len(disk), 0) == disk
    finally:
        handle.close()


def test_an_empty_disk_streams_when_its_length_is_known():
    data, _ = exported(6 * MiB, {})
    p, tgz = tgz_of(data, len(data))
    assert member(tgz) == data and not p.offsets


# -- layouts handed back ------------------------------------------------------

def _not_streamable(data, length=None):
    src = io.BytesIO(data)
    with pytest.raises(passthrough.NotStreamable) as err:
        passthrough.plan(src, SOURCE, length)
    # What was read, then the rest: the whole stream, for the full reader.
    assert err.value.head + src.read() == data
    return str(err.value)


def test_a_fixed_disk_is_handed_back():
    out = io.BytesIO()
    writer.write_fixed(out, bytes(range(256)) * 8)
    assert 'fixed' in _not_streamable(out.getvalue())


def test_a_differencing_disk_is_handed_back():
    out = io.BytesIO()
    parent = writer.Parent(bytes(range(16)), 'parent.vhd')
    writer.write_dynamic(out, 4 * MiB, {0: (None, bytes(BS))},
                         parent=parent)
    assert 'differencing' in _not_streamable(out.getvalue())


def test_bytes_after_the_last_block_are_handed_back():
    data, _ = exported(4 * MiB, {0: None})
    assert 'announced' in _not_streamable(data, len(data) + 512)


def test_blocks_out_of_the_bats_order_are_handed_back():
    data, _ = exported(8 * MiB, {0: None, 1: None, 3: None},
                       order=[3, 0, 1])
    assert 'order' in _not_streamable(data, len(data))


def test_no_block_and_no_length_is_handed_back():
    data, _ = exported(4 * MiB, {})
    assert 'no block' in _not_streamable(data)


# -- lies refused -------------------------------------------------------------

def _refused(data, length=None, cls=errors.VhdError):
    """The error; and the archive written so far never ends."""
    src = io.BytesIO(data)
    out = io.BytesIO()
    with pytest.raises(cls) as err:
        p = passthrough.plan(src, SOURCE, length)
        passthrough.write_tgz(p, src, out.write)
    assert SOURCE in str(err.value)
    if out.getvalue():
        with pytest.raises((EOFError, OSError)):
            gzip.decompress(out.getvalue())
    return err.value


def test_a_stream_ending_early_is_refused():
    data, _ = exported(8 * MiB, {0: None, 1: None, 2: None}, **CONTIGUOUS)
    # Blocks 0, 1 and 2 follow each other: cut into the end of 1.
    cut = len(data) - 512 - (BS + 512) - 100
    err = _refused(data[:cut], cls=errors.Truncated)
    assert err.field == 'block 1'
    err = _refused(data[:-100], cls=errors.Truncated)
    assert err.field == 'footer'


def test_a_stream_longer_than_its_bat_is_refused():
    data, _ = exported(8 * MiB, {0: None}, **CONTIGUOUS)
    assert _refused(data + bytes(512)).field == 'length'


def test_a_trailing_footer_unlike_the_copy_is_refused():
    data, _ = exported(8 * MiB, {0: None})
    bad = bytearray(data)
    bad[-1] ^= 1
    err = _refused(bytes(bad), cls=errors.InvalidFooter)
    assert err.field == 'footer'


def test_a_bat_pointing_past_the_promised_length_is_refused():
    data, _ = exported(8 * MiB, {0: None, 2: None}, **CONTIGUOUS)
    err = _refused(data, len(data) - BS, cls=errors.InvalidTable)
    assert err.field == 'BAT entry 2'


def _with_bat(data, idx, sector):
    """data with BAT entry idx set to sector (the export writes no
    checksum over the BAT)."""
    table = fmt.FOOTER_SIZE + fmt.HEADER_SIZE
    bad = bytearray(data)
    bad[table + 4 * idx:table + 4 * idx + 4] = sector.to_bytes(4, 'big')
    return bytes(bad)


def test_overlapping_blocks_are_refused():
    data, _ = exported(8 * MiB, {0: None, 1: None}, **CONTIGUOUS)
    first = int.from_bytes(data[1536:1540], 'big')
    err = _refused(_with_bat(data, 1, first + 1), cls=errors.InvalidTable)
    assert 'overlaps block 0' in str(err)


def test_a_block_in_the_head_is_refused():
    data, _ = exported(8 * MiB, {0: None})
    err = _refused(_with_bat(data, 0, 2), cls=errors.InvalidTable)
    assert err.field == 'BAT entry 0'


def test_a_damaged_header_is_refused():
    data, _ = exported(4 * MiB, {0: None})
    bad = bytearray(data)
    bad[600] ^= 1
    err = _refused(bytes(bad), cls=errors.InvalidHeader)
    assert err.field == 'dynamic header checksum'


def test_a_huge_table_is_refused_before_it_is_read():
    data, _ = exported(4 * MiB, {0: None})
    hdr = fmt.DynamicHeader.from_bytes(data[512:1536])
    hdr.max_table_entries = 1 << 30
    raw = bytearray(hdr.to_bytes())
    raw[36:40] = fmt.checksum(raw, 36).to_bytes(4, 'big')
    err = _refused(data[:512] + bytes(raw) + data[1536:],
                   cls=errors.LimitExceeded)
    assert err.field == 'max table entries'


def test_a_failing_write_stops_the_copy():
    data, _ = exported(8 * MiB, {0: None, 1: None, 2: None})
    src = io.BytesIO(data)
    seen = []

    def write(chunk):
        seen.append(len(chunk))
        if sum(seen) > MiB:
            raise OSError('glance hung up')
    p = passthrough.plan(src, SOURCE)
    with pytest.raises(OSError, match='glance hung up'):
        passthrough.write_tgz(p, src, write)
    assert src.tell() < len(data)


def test_compression_runs_where_offload_says():
    data, _ = exported(8 * MiB, {0: None, 3: None})
    calls = []

    def offload(fn, *args):
        calls.append(fn)
        return fn(*args)
    assert member(tgz_of(data, offload=offload, workers=2)[1]) == data
    # One call per piece: each block is at least one.
    assert len(calls) >= 2
