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
"""One-pass conversion: every input shape the issue and the pitfalls name."""

import gzip
import hashlib
import io
import os
import random
import shutil
import subprocess
import tarfile

import pytest

from tests import vhd_encoder as vf_encoder
from tests import vhd_factory as vf
from xenapinfs_driver.vhd import tgz as cv
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import writer

MiB = vf.MiB


@pytest.fixture
def chain():
    return vf.standard_chain()


def _convert(tmp_path, src, **kw):
    out = tmp_path / 'out.raw'
    result = cv.convert(str(src), str(out), **kw)
    return out.read_bytes(), result


def _sha(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


@pytest.mark.parametrize('prefix', ['./', ''])
@pytest.mark.parametrize('order', [None, [2, 1, 0], [1, 2, 0], [0, 2, 1]])
def test_tgz_chain_any_member_order(tmp_path, chain, prefix, order):
    files, expected, _ = chain
    src = tmp_path / 'img.tgz'
    vf.xenserver_tgz(src, files, prefix=prefix, order=order)
    before = _sha(src)
    data, result = _convert(tmp_path, src)
    assert data == expected
    assert result.container == 'tgz'
    assert [layer.name for layer in result.layers] == [
        '%s%d.vhd' % (prefix, i) for i in range(3)]
    assert _sha(src) == before          # the input is never modified
    assert os.listdir(tmp_path) == sorted(['img.tgz', 'out.raw']) or \
        sorted(os.listdir(tmp_path)) == ['img.tgz', 'out.raw']


@pytest.mark.parametrize('zlib_name', ['zlib', 'isal'])
def test_each_inflater_gives_the_same_disk(tmp_path, chain, zlib_name):
    pytest.importorskip('isal') if zlib_name == 'isal' else None
    files, expected, _ = chain
    src = tmp_path / 'img.tgz'
    vf.xenserver_tgz(src, files)
    data, result = _convert(tmp_path, src, zlib_name=zlib_name)
    assert result.inflater == zlib_name
    assert data == expected


@pytest.mark.parametrize('order', ['reverse', 'random'])
def test_blocks_in_any_physical_order(tmp_path, order):
    files, expected, _ = vf.standard_chain(seed=5, order=order)
    src = tmp_path / 'img.tgz'
    vf.xenserver_tgz(src, files)
    assert _convert(tmp_path, src)[0] == expected


def test_preallocated_bat_lvm_style(tmp_path):
    # LVM SRs preallocate 1 Mi BAT entries (2 TiB); vhd-util resize -j
    # crashes on those. Only the first ceil(size/block) entries count.
    files, expected, _ = vf.standard_chain(seed=2,
                                           max_table_entries=1 << 20)
    src = tmp_path / 'img.tgz'
    vf.xenserver_tgz(src, files)
    data, result = _convert(tmp_path, src)
    assert data == expected
    assert result.layers[0].header.max_table_entries == 1 << 20


@pytest.mark.parametrize('top_size', [
    257 * MiB // 64,                # not a multiple of 2 MiB
    9 * MiB + 7 * 512,              # not a multiple of 1 MiB
    8 * MiB,                        # same as the parent
])
def test_output_size_is_exactly_the_top_size(tmp_path, top_size):
    files, expected, specs = vf.standard_chain(
        seed=3, sizes=(top_size, 4 * MiB + 512, 3 * MiB))
    src = tmp_path / 'img.tgz'
    vf.xenserver_tgz(src, files)
    data, result = _convert(tmp_path, src)
    assert len(data) == top_size == result.virtual_size
    assert data == expected


def test_parent_smaller_reads_zero_beyond_its_end(tmp_path):
    rnd = random.Random(4)
    top = vf.LayerSpec(6 * MiB, {})         # the child adds nothing
    base = vf.random_layer(rnd, 2 * MiB, fill=1.0, full_prob=1.0)
    files = vf.build_chain([top, base])
    src = tmp_path / 'img.tgz'
    vf.xenserver_tgz(src, files)
    data, _ = _convert(tmp_path, src)
    assert data[:2 * MiB] == base.blocks[0][1]
    assert data[2 * MiB:] == bytes(4 * MiB)


def test_newest_layer_wins_per_sector(tmp_path):
    bs = vf.BS
    a, b, c = (bytes([v]) * bs for v in (0xAA, 0xBB, 0xCC))
    base = vf.LayerSpec(2 * MiB, {0: (None, a)})
    mid = vf.LayerSpec(2 * MiB, {0: ({0, 1, 2, 9}, b)})
    top = vf.LayerSpec(2 * MiB, {0: ({1, 9, 10}, c)})
    files = vf.build_chain([top, mid, base])
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        src = tmp_path / 'img.tgz'
        vf.xenserver_tgz(src, files, order=order)
        data, _ = _convert(tmp_path, src)
        sector = [data[s * 512] for s in range(12)]
        assert sector == [0xBB, 0xCC, 0xBB, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA,
                          0xAA, 0xCC, 0xCC, 0xAA], order


def test_unset_bits_in_the_base_read_as_zero(tmp_path):
    # The sector bitmap decides for dynamic disks too, not the BAT alone.
    base = vf.LayerSpec(2 * MiB, {0: ({3}, b'\x11' * vf.BS)})
    files = vf.build_chain([base])
    src = tmp_path / 'base.vhd'
    src.write_bytes(files[0])
    data, result = _convert(tmp_path, src)
    assert result.container == 'vhd'
    assert data == bytes(3 * 512) + b'\x11' * 512 + bytes(2 * MiB - 2048)


def test_legacy_names_and_swap_are_understood(tmp_path, chain):
    files, expected, _ = chain
    src = tmp_path / 'img.tgz'
    vf.make_tar(src, [('swap.vhd', b'ignored' * 100), ('base.vhd', files[2]),
                      ('snap.vhd', files[0]), ('image.vhd', files[1])])
    data, result = _convert(tmp_path, src)
    assert data == expected
    assert [layer.name for layer in result.layers] == [
        'snap.vhd', 'image.vhd', 'base.vhd']


def test_directory_entries_are_skipped(tmp_path, chain):
    files, expected, _ = chain
    src = tmp_path / 'img.tgz'
    vf.xenserver_tgz(src, files, directories=('.', './', 'sub/'))
    assert _convert(tmp_path, src)[0] == expected


@pytest.mark.parametrize('tar_format', [tarfile.USTAR_FORMAT,
                                        tarfile.GNU_FORMAT,
                                        tarfile.PAX_FORMAT])
def test_plain_tar_in_every_format(tmp_path, chain, tar_format):
    files, expected, _ = chain
    src = tmp_path / 'img.tar'
    vf.xenserver_tgz(src, files, gzip=False, fmt_=tar_format)
    data, result = _convert(tmp_path, src)
    assert result.container == 'tar'
    assert data == expected


def test_standard_input(tmp_path, chain, monkeypatch):
    files, expected, _ = chain
    src = tmp_path / 'img.tgz'
    vf.xenserver_tgz(src, files)

    class Stdin:
        buffer = open(src, 'rb')
    monkeypatch.setattr(cv.sys, 'stdin', Stdin)
    try:
        data, result = _convert(tmp_path, '-')
    finally:
        Stdin.buffer.close()
    assert result.source == '<stdin>'
    assert data == expected


def test_single_dynamic_vhd_gzipped(tmp_path):
    rnd = random.Random(7)
    spec = vf.random_layer(rnd, 5 * MiB + 512)
    files = vf.build_chain([spec])
    src = tmp_path / 'disk.vhd.gz'
    src.write_bytes(gzip.compress(files[0], 1))
    data, result = _convert(tmp_path, src)
    assert result.container == 'vhd.gz'
    assert data == vf.expected_disk([spec])


@pytest.mark.parametrize('gz', [False, True])
def test_fixed_vhd(tmp_path, gz):
    raw = random.Random(8).randbytes(3 * MiB) + bytes(MiB)
    buf = io.BytesIO()
    writer.write_fixed(buf, raw)
    src = tmp_path / ('fixed.vhd.gz' if gz else 'fixed.vhd')
    src.write_bytes(gzip.compress(buf.getvalue(), 1) if gz
                    else buf.getvalue())
    data, result = _convert(tmp_path, src)
    assert data == raw
    assert result.layers[0].disk_type == fmt.DISK_FIXED


class _Pipe(io.RawIOBase):
    """A stream with no size and no seek, as stdin or an HTTP body."""

    def __init__(self, data):
        self.data = memoryview(data)

    def readable(self):
        return True

    def readinto(self, buf):
        n = min(len(buf), len(self.data), 65536)
        buf[:n] = self.data[:n]
        self.data = self.data[n:]
        return n


@pytest.mark.parametrize('size', [None, 'known'])
def test_fixed_vhd_from_a_stream(tmp_path, size):
    """Its footer comes last: the disk is accepted once it has come."""
    raw = random.Random(9).randbytes(3 * MiB) + bytes(MiB)
    image = vf_encoder.encode_fixed(raw)
    inp = cv.Input(_Pipe(image), size=len(image) if size else None)
    out = tmp_path / 'out.raw'
    result = cv.convert(inp, str(out))
    assert out.read_bytes() == raw
    assert result.container == 'vhd'
    assert result.layers[0].disk_type == fmt.DISK_FIXED


@pytest.mark.parametrize('size', [None, 'known'])
def test_stream_that_is_no_vhd_is_refused_at_its_end(tmp_path, size):
    data = random.Random(11).randbytes(MiB)
    inp = cv.Input(_Pipe(data), size=len(data) if size else None)
    with pytest.raises(errors.InvalidFooter, match='no conectix cookie'):
        cv.convert(inp, str(tmp_path / 'out.raw'))
    assert os.listdir(tmp_path) == []


def test_fixed_vhd_stream_larger_than_the_limit_writes_nothing(tmp_path):
    image = vf_encoder.encode_fixed(bytes(range(256)) * (8 * 4096))
    inp = cv.Input(_Pipe(image), size=len(image))
    with pytest.raises(errors.LimitExceeded, match='fixed disk of'):
        cv.convert(inp, str(tmp_path / 'out.raw'),
                   limits=cv.Limits(max_size=MiB))
    assert os.listdir(tmp_path) == []


def test_fixed_base_under_a_differencing_child(tmp_path):
    rnd = random.Random(10)
    raw = rnd.randbytes(4 * MiB)
    fixed = io.BytesIO()
    f = writer.write_fixed(fixed, raw)
    top = vf.random_layer(rnd, 4 * MiB, fill=1.0)
    child = vf.build_chain([top], unique_ids=[rnd.randbytes(16)])[0]
    # Re-link the child to the fixed parent.
    child_io = io.BytesIO()
    writer.write_dynamic(
        child_io, top.size,
        {i: (vf._bitmap(s, vf.BS), d) for i, (s, d) in top.blocks.items()},
        parent=writer.Parent(f.unique_id, '1.vhd'))
    expected = bytearray(raw)
    expected[:] = vf.expected_disk([top, vf.LayerSpec(
        4 * MiB, {0: (None, raw[:2 * MiB]), 1: (None, raw[2 * MiB:])})])
    for order in ([0, 1], [1, 0]):
        src = tmp_path / 'img.tgz'
        vf.xenserver_tgz(src, [child_io.getvalue(), fixed.getvalue()],
                         order=order)
        assert _convert(tmp_path, src)[0] == bytes(expected), order
    del child


def test_output_is_sparse_for_a_new_file(tmp_path):
    spec = vf.LayerSpec(64 * MiB, {30: (None, b'\x01' * vf.BS)})
    src = tmp_path / 'img.tgz'
    vf.xenserver_tgz(src, vf.build_chain([spec]))
    out = tmp_path / 'out.raw'
    cv.convert(str(src), str(out))
    st = os.stat(out)
    assert st.st_size == 64 * MiB
    assert st.st_blocks * 512 < 8 * MiB


def test_allocated_zero_blocks_of_the_base_stay_holes(tmp_path):
    spec = vf.LayerSpec(16 * MiB, {i: (None, bytes(vf.BS)) for i in range(8)})
    src = tmp_path / 'img.tgz'
    vf.xenserver_tgz(src, vf.build_chain([spec]))
    out = tmp_path / 'out.raw'
    result = cv.convert(str(src), str(out))
    assert result.bytes_written == 0
    assert os.stat(out).st_blocks * 512 < MiB


def test_newer_zeros_overwrite_older_data_in_any_order(tmp_path):
    top = vf.LayerSpec(2 * MiB, {0: ({0, 1}, bytes(vf.BS))})
    base = vf.LayerSpec(2 * MiB, {0: (None, b'\x77' * vf.BS)})
    files = vf.build_chain([top, base])
    for order in ([0, 1], [1, 0]):
        src = tmp_path / 'img.tgz'
        vf.xenserver_tgz(src, files, order=order)
        data, _ = _convert(tmp_path, src)
        assert data[:1024] == bytes(1024)
        assert data[1024:] == b'\x77' * (2 * MiB - 1024)


@pytest.mark.parametrize('explicit', [True, False])
def test_zero_fill_writes_every_hole(tmp_path, explicit):
    spec = vf.LayerSpec(8 * MiB + 1024, {1: ({5, 6}, b'\x05' * vf.BS)})
    src = tmp_path / 'img.tgz'
    vf.xenserver_tgz(src, vf.build_chain([spec]))
    out = tmp_path / 'out.raw'
    result = cv.convert(str(src), str(out), zero_fill=explicit or None)
    data = out.read_bytes()
    assert data == vf.expected_disk([spec])
    if explicit:
        assert os.stat(out).st_blocks * 512 >= 8 * MiB
    del result


@pytest.mark.parametrize('old_size', [5 * MiB, MiB])
def test_in_place_zero_fills_over_old_contents(tmp_path, old_size):
    spec = vf.LayerSpec(4 * MiB, {1: ({0}, b'\x09' * vf.BS)})
    src = tmp_path / 'img.tgz'
    vf.xenserver_tgz(src, vf.build_chain([spec]))
    dev = tmp_path / 'dev'
    dev.write_bytes(b'\xee' * old_size)
    os.link(dev, tmp_path / 'other-name')
    result = cv.convert(str(src), str(dev), in_place=True)
    assert dev.read_bytes() == vf.expected_disk([spec])
    # The same file, written through: its other name sees the disk too.
    assert (tmp_path / 'other-name').read_bytes() == dev.read_bytes()
    assert result.bytes_written == 512


@pytest.fixture
def loop_device(tmp_path):
    """A real block device: a loop device over a file of 0xEE bytes."""
    backing = tmp_path / 'backing'
    backing.write_bytes(b'\xee' * (6 * MiB))
    if shutil.which('losetup') is None:
        pytest.skip('losetup not found')
    proc = subprocess.run(['losetup', '-f', '--show', str(backing)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip('cannot attach a loop device: %s' % proc.stderr.strip())
    dev = proc.stdout.strip()
    try:
        yield dev, backing
    finally:
        subprocess.run(['losetup', '-d', dev], check=True)


def test_block_device_is_written_in_place_and_zero_filled(tmp_path,
                                                          loop_device):
    dev, backing = loop_device
    spec = vf.LayerSpec(4 * MiB, {1: ({3, 4}, b'\x01' * vf.BS)})
    src = tmp_path / 'img.tgz'
    vf.xenserver_tgz(src, vf.build_chain([spec]))
    cv.convert(str(src), dev)
    with open(dev, 'rb') as f:
        data = f.read()
    assert data[:4 * MiB] == vf.expected_disk([spec])
    assert data[4 * MiB:] == b'\xee' * (2 * MiB)   # past the disk: kept
    del backing


def test_block_device_too_small_is_refused(tmp_path, loop_device):
    dev, _ = loop_device
    spec = vf.LayerSpec(8 * MiB, {0: (None, b'\x01' * vf.BS)})
    src = tmp_path / 'img.tgz'
    vf.xenserver_tgz(src, vf.build_chain([spec]))
    with pytest.raises(errors.TargetError) as info:
        cv.convert(str(src), dev)
    assert 'the device holds %d bytes' % (6 * MiB) in str(info.value)


def test_existing_output_is_replaced_only_on_success(tmp_path, chain):
    files, expected, _ = chain
    out = tmp_path / 'out.raw'
    out.write_bytes(b'old contents')
    os.chmod(out, 0o640)
    bad = tmp_path / 'bad.tgz'
    vf.xenserver_tgz(bad, files[:2])        # the base is missing
    with pytest.raises(errors.ChainError):
        cv.convert(str(bad), str(out))
    assert out.read_bytes() == b'old contents'
    assert sorted(os.listdir(tmp_path)) == ['bad.tgz', 'out.raw']
    good = tmp_path / 'good.tgz'
    vf.xenserver_tgz(good, files)
    cv.convert(str(good), str(out))
    assert out.read_bytes() == expected
    assert os.stat(out).st_mode & 0o777 == 0o640


def test_inspect_reports_layers_without_writing(tmp_path, chain):
    files, expected, specs = chain
    src = tmp_path / 'img.tgz'
    vf.xenserver_tgz(src, files)
    result = cv.inspect(str(src))
    assert [layer.size for layer in result.layers] == [s.size for s in specs]
    assert result.virtual_size == len(expected)
    assert [layer.allocated_blocks for layer in result.layers] == [
        len(s.blocks) for s in specs]
    top, mid, base = result.layers
    assert top.header.parent_unique_id == mid.footer.unique_id
    assert top.locators[0] == ('MacX', 'file://./1.vhd')
    assert result.warnings == []
    assert os.listdir(tmp_path) == ['img.tgz']
