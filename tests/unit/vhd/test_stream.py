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
"""The input side: forward reading, gzip inflating, and damaged gzip."""

import gzip
import io
import os
import zlib

import pytest

from tests import vhd_factory as vf
from tests.unit.vhd import badinput as bi
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import stream
from xenapinfs_driver.vhd import tgz


def _have(name):
    try:
        stream.pick_zlib(name)
    except ValueError:
        return False
    return True


INFLATERS = [pytest.param(n, marks=pytest.mark.skipif(
    not _have(n), reason='%s is not installed' % n))
    for n in ('zlib', 'isal', 'zlib-ng')]

# Conversions try the default (the fastest installed) and the stdlib one.
CONVERT_INFLATERS = [pytest.param(None, id='default'), 'zlib']

# A gzip member whose deflate data starts with an invalid block type.
BROKEN_MEMBER = b'\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff\x07' + bytes(16)


def _inflate(data: bytes, zlib_name='zlib', name='in.gz'):
    raw = stream.RawReader(io.BytesIO(data), len(data))
    inf = stream.Inflater(raw, name, zlib_name)
    try:
        return list(inf)
    finally:
        inf.close()


# -- RawReader and Source -----------------------------------------------------

def test_mapped_reading_crosses_windows(tmp_path, monkeypatch):
    # Windows far smaller than the file, reads that straddle their ends.
    monkeypatch.setattr(stream, 'MAP_WINDOW', 64 << 10)
    data = os.urandom(300 << 10)
    path = tmp_path / 'in.bin'
    path.write_bytes(data)
    with open(path, 'rb') as f:
        raw = stream.RawReader(f, len(data))
        assert raw.peek(2) == data[:2]
        raw.map()
        pieces = []
        while True:
            piece = raw.read_view(50 << 10)
            if not piece:
                break
            assert isinstance(piece, memoryview)
            assert len(piece) <= 50 << 10
            pieces.append(bytes(piece))
        raw.close()
    assert b''.join(pieces) == data
    assert raw.consumed == len(data)


def test_convert_through_small_map_windows(tmp_path, monkeypatch):
    monkeypatch.setattr(stream, 'MAP_WINDOW', 64 << 10)
    files, expected, _ = vf.standard_chain(seed=11)
    src = tmp_path / 'img.tgz'
    vf.xenserver_tgz(src, files)
    tgz.convert(str(src), str(tmp_path / 'out.raw'))
    assert (tmp_path / 'out.raw').read_bytes() == expected


def test_raw_reader_peek_is_read_again():
    raw = stream.RawReader(io.BytesIO(b'abcdefgh'), 8)
    assert raw.peek(3) == b'abc'
    assert raw.peek(5) == b'abcde'
    assert raw.consumed == 0
    assert raw.read(2) == b'ab'
    assert raw.read(10) == b'cde'       # the peeked bytes first
    assert raw.read(10) == b'fgh'
    assert raw.read(10) == b''
    assert raw.consumed == 8
    assert raw.peek(4) == b''


def test_source_reads_across_chunk_boundaries():
    src = stream.Source([b'ab', b'', b'cde', b'f', b'ghij'], 'x')
    assert src.peek(4) == b'abcd'
    assert src.read_exact(3) == b'abc'
    assert src.offset == 3
    views = list(src.slices(4))
    assert all(isinstance(v, memoryview) for v in views)
    assert b''.join(bytes(v) for v in views) == b'defg'
    src.skip(1)
    assert src.read_upto(10) == b'ij'
    assert src.offset == 10
    assert src.at_eof()


@pytest.mark.parametrize('call', [
    lambda s: s.read_exact(10, 'the footer'),
    lambda s: list(s.slices(10, 'the footer')),
    lambda s: s.skip(10, 'the footer'),
])
def test_source_reports_an_early_end_with_what_it_was_reading(call):
    src = stream.Source([b'0123', b'45'], 'img.tgz')
    with pytest.raises(errors.VhdError) as info:
        call(src)
    text = str(info.value)
    assert text.startswith('img.tgz: input ends early (')
    assert 'the footer' in text and '\n' not in text


def test_zero_length_requests_need_no_data():
    src = stream.Source([], 'x')
    assert src.read_exact(0) == b''
    assert list(src.slices(0)) == []
    src.skip(0)
    assert src.at_eof()


# -- the inflater -------------------------------------------------------------

def testpick_zlib_rejects_unknown_names(monkeypatch):
    with pytest.raises(ValueError):
        stream.pick_zlib('brotli')
    monkeypatch.setenv('XENAPINFS_VHD_ZLIB', 'zlib')
    assert stream.pick_zlib()[0] == 'zlib'


@pytest.mark.parametrize('zlib_name', INFLATERS)
def test_concatenated_members_and_zero_padding_are_one_stream(zlib_name):
    parts = [b'first ' * 1000, b'second', b'', b'third' * 7]
    data = b''.join(gzip.compress(p, 1) for p in parts) + bytes(3000)
    assert b''.join(_inflate(data, zlib_name)) == b''.join(parts)


@pytest.mark.parametrize('zlib_name', INFLATERS)
def test_pieces_are_bounded_however_well_the_input_compresses(zlib_name):
    data = gzip.compress(bytes(9 * stream.CHUNK + 5), 1)
    assert len(data) < stream.CHUNK // 16
    pieces = _inflate(data, zlib_name)
    assert max(len(p) for p in pieces) <= stream.CHUNK
    assert sum(len(p) for p in pieces) == 9 * stream.CHUNK + 5
    assert not any(bytes(p).strip(b'\0') for p in pieces)


@pytest.mark.parametrize('zlib_name', INFLATERS)
@pytest.mark.parametrize('tail, says', [
    (b'garbage!', 'trailing garbage after gzip data'),
    (bytes(100) + b'x', 'trailing garbage after gzip data'),
    (b'\x1f', 'truncated gzip data'),
    (BROKEN_MEMBER, 'corrupt gzip data'),
])
def test_what_follows_the_last_member_is_checked(zlib_name, tail, says):
    data = gzip.compress(b'payload' * 100, 1) + tail
    with pytest.raises(errors.ArchiveError) as info:
        _inflate(data, zlib_name, name='in.gz')
    text = str(info.value)
    assert text.startswith('in.gz: ' + says), text
    assert '\n' not in text


@pytest.mark.parametrize('zlib_name', INFLATERS)
@pytest.mark.parametrize('cut', [1, 4, 8, 30, 200])
def test_a_cut_stream_is_truncated(zlib_name, cut):
    data = gzip.compress(bytes(range(256)) * 40, 1)
    with pytest.raises(errors.ArchiveError) as info:
        _inflate(data[:-cut], zlib_name)
    assert 'truncated gzip data' in str(info.value)


def test_inflater_stops_when_closed_early():
    # 64 MiB of zeros in about 64 KiB: a reader that gives up after one
    # piece must not wait for the inflater, nor it for the reader.
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    data = b''.join(comp.compress(bytes(stream.CHUNK)) for _ in range(64))
    data += comp.flush()
    raw = stream.RawReader(io.BytesIO(data), len(data))
    inf = stream.Inflater(raw, 'bomb.gz', 'zlib')
    first = next(iter(inf))
    assert 0 < len(first) <= stream.CHUNK
    inf.close()
    assert not inf._thread.is_alive()


# -- through convert: damaged gzip around a valid image -----------------------

@pytest.fixture(scope='module')
def plain_tar():
    """A one-layer image as a plain tar, and the offset of 0.vhd's data."""
    vhd = bi.dynamic()
    tar = bi.tar_bytes([('0.vhd', vhd)])
    return tar, tar.index(b'conectix')


@pytest.mark.parametrize('zlib_name', CONVERT_INFLATERS)
def test_padding_and_concatenation_are_accepted(tmp_path, plain_tar,
                                                zlib_name):
    tar, _ = plain_tar
    expected = bi.convert_ok(bi.write(tmp_path / 'img.tar', tar), tmp_path)
    cut = len(tar) // 3
    data = gzip.compress(tar[:cut], 1) + gzip.compress(tar[cut:], 6) + \
        bytes(4096)
    src = bi.write(tmp_path / 'img.tgz', data)
    assert bi.convert_ok(src, tmp_path, zlib_name=zlib_name) == expected


@pytest.mark.parametrize('zlib_name', CONVERT_INFLATERS)
def test_trailing_garbage_after_the_gzip_data(tmp_path, plain_tar,
                                              zlib_name):
    src = bi.write(tmp_path / 'img.tgz',
                   gzip.compress(plain_tar[0], 1) + b'trailing garbage')
    bi.assert_rejected(src, errors.ArchiveError, zlib_name=zlib_name,
                       says='trailing garbage after gzip data')


@pytest.mark.parametrize('zlib_name', CONVERT_INFLATERS)
@pytest.mark.parametrize('cut', [4, 8])
def test_gzip_trailer_missing(tmp_path, plain_tar, zlib_name, cut):
    # Every byte of the tar is there; the CRC and length are not.
    src = bi.write(tmp_path / 'img.tgz',
                   gzip.compress(plain_tar[0], 1)[:-cut])
    bi.assert_rejected(src, errors.ArchiveError, zlib_name=zlib_name,
                       says='truncated gzip data')


# Where the inflated stream breaks off, relative to 0.vhd's first byte.
POSITIONS = {
    'tar header': -500,
    'footer copy': 100,
    'dynamic header': 512 + 100,
    'BAT': 1536 + 8,
    'block data': 8192 + 1000,
    'trailing footer': -300,        # from the end of 0.vhd
}


def _position(tar, start, where):
    rel = POSITIONS[where]
    if where == 'trailing footer':
        return start + len(bi.dynamic()) + rel
    return start + rel


@pytest.mark.parametrize('zlib_name', CONVERT_INFLATERS)
@pytest.mark.parametrize('where', list(POSITIONS))
def test_corrupt_gzip_is_reported_as_corrupt_gzip(tmp_path, plain_tar,
                                                  zlib_name, where):
    # A valid gzip member with the first bytes, then a broken one: the
    # reader gets good data up to the break, then the error.
    tar, start = plain_tar
    pos = _position(tar, start, where)
    src = bi.write(tmp_path / 'img.tgz',
                   gzip.compress(tar[:pos], 1) + BROKEN_MEMBER)
    bi.assert_rejected(
        src, errors.ArchiveError, zlib_name=zlib_name,
        member=None if where == 'tar header' else '0.vhd',
        says='corrupt gzip data near compressed offset')


@pytest.mark.parametrize('zlib_name', CONVERT_INFLATERS)
@pytest.mark.parametrize('where', list(POSITIONS))
def test_truncated_gzip_names_the_member(tmp_path, plain_tar, zlib_name,
                                         where):
    tar, start = plain_tar
    pos = _position(tar, start, where)
    data = gzip.compress(tar[:pos], 1) + gzip.compress(tar[pos:], 1)[:20]
    src = bi.write(tmp_path / 'img.tgz', data)
    exc = bi.assert_rejected(
        src, (errors.ArchiveError, errors.VhdError), zlib_name=zlib_name,
        member=None if where == 'tar header' else '0.vhd')
    assert 'truncated' in str(exc)


def test_corrupt_gzip_header(tmp_path, plain_tar):
    data = bytearray(gzip.compress(plain_tar[0], 1))
    data[2] = 7                         # compression method: not deflate
    src = bi.write(tmp_path / 'img.tgz', data)
    bi.assert_rejected(src, errors.ArchiveError, says='corrupt gzip data')


def test_gzip_magic_then_junk(tmp_path):
    src = bi.write(tmp_path / 'img.tgz', b'\x1f\x8b' + b'junk' * 500)
    bi.assert_rejected(src, errors.ArchiveError, says='corrupt gzip data')


@pytest.mark.parametrize('data', [
    b'',
    b'hello\n',
    b'#!/bin/sh\necho not an image\n' * 100,
    bytes(512),
    bytes(10000),
    b'conectiy' + bytes(3000),
], ids=['empty', 'short', 'text', 'zero-sector', 'zeros', 'near-cookie'])
def test_neither_gzip_nor_tar_nor_vhd(tmp_path, data):
    src = bi.write(tmp_path / 'notes.txt', data)
    bi.assert_rejected(src, errors.ArchiveError,
                       says='not a XenServer image')


def test_gzip_of_something_else(tmp_path):
    src = bi.write(tmp_path / 'notes.gz', b'some text, no image\n' * 200,
                   gz=True)
    exc = bi.assert_rejected(src, (errors.ArchiveError,
                                   errors.InvalidFooter))
    assert 'not a VHD' in str(exc) or 'not a XenServer image' in str(exc)


def test_missing_input(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    src = str(tmp_path / 'absent.tgz')
    with pytest.raises(errors.VhdError) as info:
        tgz.convert(src, str(out / 'disk.raw'))
    text = str(info.value)
    assert text.startswith(src + ': ') and 'No such file' in text
    assert list(out.iterdir()) == []


def test_directory_as_input(tmp_path):
    (tmp_path / 'dir.tgz').mkdir()
    out = tmp_path / 'out'
    out.mkdir()
    src = str(tmp_path / 'dir.tgz')
    with pytest.raises(errors.VhdError) as info:
        tgz.convert(src, str(out / 'disk.raw'))
    text = str(info.value)
    assert text.startswith(src + ': ') and 'is a directory' in text.lower()
    assert list(out.iterdir()) == []


@pytest.mark.parametrize('good', [True, False], ids=['complete', 'failing'])
def test_output_is_renamed_into_place_only_at_the_end(tmp_path, plain_tar,
                                                      good):
    tar, start = plain_tar
    src = bi.write(tmp_path / 'img.tgz', tar if good else
                   tar[:start + 9000], gz=True)
    out = tmp_path / 'out'
    out.mkdir()
    seen = []

    def progress(consumed, total):
        seen.append(sorted(os.listdir(out)))

    dest = out / 'disk.raw'
    if good:
        tgz.convert(str(src), str(dest), progress=progress)
        assert os.listdir(out) == ['disk.raw']
    else:
        with pytest.raises(errors.VhdError):
            tgz.convert(str(src), str(dest), progress=progress)
        assert os.listdir(out) == []
    assert seen
    for listing in seen:
        assert len(listing) == 1, listing
        assert listing[0].startswith('.disk.raw.')
        assert listing[0].endswith('.part')


def test_an_error_is_reported_while_the_writer_of_a_pipe_stalls(
        tmp_path, monkeypatch):
    # A tar whose first member is unsafe, gzip-compressed, on a pipe whose
    # writer then stalls without closing it: the error must come out
    # without waiting for more input.
    import tarfile
    import threading
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as tf:
        info = tarfile.TarInfo('/etc/0.vhd')
        info.size = 0
        tf.addfile(info)
    data = gzip.compress(buf.getvalue())[:-8]     # no trailer: not the end
    monkeypatch.setattr(stream, 'CLOSE_WAIT', 0.1)
    rfd, wfd = os.pipe()
    os.write(wfd, data)

    class Stdin:
        buffer = os.fdopen(rfd, 'rb', buffering=0)
    monkeypatch.setattr(tgz.sys, 'stdin', Stdin)
    outcome = []

    def run():
        try:
            tgz.convert('-', str(tmp_path / 'out.raw'))
        except errors.VhdError as exc:
            outcome.append(exc)
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)            # a hang check, not a speed measurement
    stalled = worker.is_alive()
    os.close(wfd)              # let everything finish either way
    worker.join()
    Stdin.buffer.close()
    assert not stalled
    assert isinstance(outcome[0], errors.ArchiveError)
    assert 'absolute path' in str(outcome[0])
    assert os.listdir(tmp_path) == []
