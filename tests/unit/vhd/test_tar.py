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
"""The forward-only tar reader: every header dialect, and damaged ones."""

import random
import tarfile

import pytest

from tests.unit.vhd import badinput as bi
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import stream
from xenapinfs_driver.vhd import tar
from xenapinfs_driver.vhd import tgz
from xenapinfs_driver.vhd import writer

GiB = 1 << 30


def _members(data: bytes):
    """[(name, size, kind, data)] as iter_members yields them."""
    src = stream.Source([data[i:i + 700] for i in range(0, len(data), 700)],
                        'x.tar')
    out = []
    for m in tar.iter_members(src):
        assert m.data_offset == src.offset
        out.append((m.name, m.size, m.kind, src.read_exact(m.size)))
    return out


def _fail(data: bytes, cls=errors.ArchiveError):
    with pytest.raises(cls) as info:
        _members(data)
    text = str(info.value)
    assert '\n' not in text
    return text


# -- what must be accepted ----------------------------------------------------

LONG = 'd' * 60 + '/' + 'f' * 60 + '.vhd'


@pytest.mark.parametrize('tar_format', [tarfile.USTAR_FORMAT,
                                        tarfile.GNU_FORMAT,
                                        tarfile.PAX_FORMAT])
def test_long_names_in_every_format(tar_format):
    data = bi.tar_bytes([('short', b'abc'), (LONG, b'x' * 700),
                         ('last', b'')], fmt_=tar_format)
    assert _members(data) == [
        ('short', 3, tar.REGULAR, b'abc'),
        (LONG, 700, tar.REGULAR, b'x' * 700),
        ('last', 0, tar.REGULAR, b'')]


def test_gnu_long_name_header_is_used():
    data = bi.tar_bytes([('n' * 150, b'1')], fmt_=tarfile.GNU_FORMAT)
    assert data[156:157] == b'L'            # really a GNU long name
    assert _members(data)[0][0] == 'n' * 150


def test_pax_path_and_size_override_the_header():
    pax = bi.pax_record('path', 'real/name') + bi.pax_record('size', '5')
    data = (bi.raw_member(b'././@PaxHeader', pax, b'x') +
            bytes(bi.tar_header(b'placeholder', 0)) + bi.padded(b'12345') +
            bi.END)
    assert _members(data) == [('real/name', 5, tar.REGULAR, b'12345')]


def test_pax_and_gnu_names_apply_to_the_next_member_only():
    data = (bi.raw_member(b'././@LongLink', b'long-one\0', b'L') +
            bi.raw_member(b'a', b'1') + bi.raw_member(b'b', b'2') + bi.END)
    assert [m[0] for m in _members(data)] == ['long-one', 'b']


@pytest.mark.parametrize('size', [0, 5, 512, 70000])
def test_base256_sizes(size):
    field = b'\x80' + size.to_bytes(11, 'big')
    body = bytes(range(256)) * (size // 256 + 1)
    data = (bytes(bi.tar_header(b'big', size_field=field)) +
            bi.padded(body[:size]) + bi.raw_member(b'next', b'n') + bi.END)
    assert _members(data) == [('big', size, tar.REGULAR, body[:size]),
                              ('next', 1, tar.REGULAR, b'n')]


def test_base256_size_as_tarfile_writes_it():
    info = tarfile.TarInfo('huge')
    info.size = 9 * GiB                     # beyond 11 octal digits
    header = info.tobuf(tarfile.GNU_FORMAT)
    assert header[124] & 0x80
    first = next(tar.iter_members(stream.Source([header], 'x')))
    assert (first.name, first.size) == ('huge', 9 * GiB)


def test_unread_data_and_padding_are_skipped():
    data = (bi.raw_member(b'a', b'A' * 1000) + bi.raw_member(b'b', b'B' * 3) +
            bi.END)
    src = stream.Source([data], 'x')
    names = [m.name for m in tar.iter_members(src)]   # reads no data
    assert names == ['a', 'b']


def test_end_of_archive_stops_reading():
    data = bi.raw_member(b'a', b'1') + bi.END + b'anything at all' * 100
    assert [m[0] for m in _members(data)] == ['a']


def test_missing_end_of_archive_is_tolerated():
    data = bi.raw_member(b'a', b'1') + bi.raw_member(b'b', b'22')
    assert [m[0] for m in _members(data)] == ['a', 'b']


@pytest.mark.parametrize('typeflag, kind', [
    (b'0', tar.REGULAR), (b'\0', tar.REGULAR), (b'7', tar.REGULAR),
    (b'5', tar.DIRECTORY), (b'1', tar.LINK), (b'2', tar.LINK),
    (b'3', tar.DEVICE), (b'4', tar.DEVICE), (b'6', tar.FIFO),
])
def test_member_kinds(typeflag, kind):
    data = bytes(bi.tar_header(b'm', 0, typeflag)) + bi.END
    assert _members(data) == [('m', 0, kind, b'')]


def test_ustar_prefix_is_joined():
    data = bytes(bi.tar_header(b'0.vhd', 0, prefix=b'dir/sub')) + bi.END
    assert _members(data)[0][0] == 'dir/sub/0.vhd'


# -- is_tar_header ------------------------------------------------------------

def test_is_tar_header():
    good = bi.tar_header(b'0.vhd', 10)
    assert tar.is_tar_header(bytes(good))
    assert not tar.is_tar_header(bytes(good[:511]))
    assert not tar.is_tar_header(bytes(512))
    bad = bytearray(good)
    bad[0] ^= 1
    assert not tar.is_tar_header(bytes(bad))
    bad = bytearray(good)
    bad[148:156] = b'zzzzzzz\0'
    assert not tar.is_tar_header(bytes(bad))


def test_is_tar_header_accepts_a_signed_checksum():
    # Old tars summed the header as signed chars (tarfile accepts this
    # header: 256 + the sum of the other bytes as signed chars).
    h = bi.tar_header('\xe9t\xe9.vhd'.encode('latin-1'), 10)
    h[148:156] = b' ' * 8
    signed = sum(b - 256 if b > 127 else b for b in h)
    h[148:156] = b'%06o\0 ' % signed
    assert tar.is_tar_header(bytes(h))


# A dynamic footer (64 KiB, time stamp 1) with this unique id has bytes
# that a wrong "signed" checksum (unsigned sum minus twice the high bytes)
# finds equal to the empty checksum field at 148: a VHD, not a tar.
TAR_LOOKALIKE_ID = bytes.fromhex('3b36302aed30528b4779daba792b8bfe')


def test_vhd_footers_are_not_tar_headers():
    rnd = random.Random(0)
    lookalikes = []
    for _ in range(3000):
        uid = rnd.randbytes(16)
        footer = writer.make_footer(bi.SIZE, fmt.DISK_DYNAMIC,
                                    unique_id=uid, timestamp=1).to_bytes()
        if tar.is_tar_header(footer):
            lookalikes.append(uid.hex())
    assert lookalikes == []


def test_a_plain_vhd_is_read_as_a_vhd(tmp_path):
    vhd = bi.dynamic(unique_id=TAR_LOOKALIKE_ID)
    src = bi.write(tmp_path / 'disk.vhd', vhd)
    result = tgz.convert(str(src), str(tmp_path / 'disk.raw'))
    assert result.container == 'vhd'
    assert (tmp_path / 'disk.raw').read_bytes()[:bi.BS] == bi.block_data(0)
    assert not tar.is_tar_header(bytes(vhd[:512]))


# -- what must be refused -----------------------------------------------------

def _bad_checksum(block):
    block = bytearray(block)
    block[148:156] = b'%06o\0 ' % (int(block[148:154], 8) + 1)
    return bytes(block)


def test_bad_header_checksum():
    data = (bi.raw_member(b'a', b'1') +
            _bad_checksum(bi.tar_header(b'b', 0)) + bi.END)
    assert _fail(data) == 'bad tar header checksum at offset 1024'


def test_truncated_header():
    data = bi.raw_member(b'a', b'1') + bytes(bi.tar_header(b'b', 0))[:300]
    assert _fail(data) == 'tar header truncated at offset 1024'


@pytest.mark.parametrize('field, says', [
    (b'\xc0' + bytes(10) + b'\x05', 'negative size in tar header'),
    (b'12z\0' + bytes(8), "bad octal size b'12z' in tar header"),
    (b'9' * 11 + b'\0', "bad octal size b'99999999999' in tar header"),
])
def test_bad_size_fields(field, says):
    data = bytes(bi.tar_header(b'a', size_field=field)) + bi.END
    assert _fail(data) == says


@pytest.mark.parametrize('typeflag', [b'x', b'g', b'L', b'K'])
def test_huge_extended_headers_are_refused_before_reading(typeflag):
    # 10 MiB claimed, 1 KiB present: refused on the size alone.
    data = bytes(bi.tar_header(b'meta', 10 << 20, typeflag)) + bytes(1024)
    assert _fail(data) == 'tar extended header of %d bytes exceeds %d' % (
        10 << 20, tar.MAX_META)


def test_extended_header_cut_short():
    data = bytes(bi.tar_header(b'meta', 2000, b'x')) + b'9' * 700
    text = _fail(data, errors.Truncated)
    assert 'input ends early' in text and 'tar extended header' in text


@pytest.mark.parametrize('records, says', [
    (b'99 path=x\n', 'bad pax record length'),
    (b'abc path=x\n', 'bad pax record length'),
    (b'3 path=x\n', 'bad pax record'),
    (b'no-space-at-all', 'bad pax record in tar header'),
    (bi.pax_record('size', 'ten'), "bad pax size 'ten'"),
    (bi.pax_record('size', '-1'), 'bad pax size'),
    (bi.pax_record('size', '-512'), 'bad pax size'),
])
def test_bad_pax_records(records, says):
    data = (bi.raw_member(b'././@PaxHeader', records, b'x') +
            bi.raw_member(b'swap.vhd', b'S' * 600) + bi.END)
    assert _fail(data).startswith(says)


@pytest.mark.parametrize('typeflag', [b'S', b'V', b'M', b'D', b'A'])
def test_unknown_member_types(typeflag):
    data = bytes(bi.tar_header(b'0.vhd', 0, typeflag)) + bi.END
    with pytest.raises(errors.ArchiveError) as info:
        _members(data)
    assert info.value.member == '0.vhd'
    assert str(info.value) == "0.vhd: unsupported tar member type %r" % (
        typeflag.decode())


# -- through convert ----------------------------------------------------------

@pytest.fixture(scope='module')
def vhd():
    return bytes(bi.dynamic())


def test_accepted_dialects_give_the_same_disk(tmp_path, vhd):
    plain = bi.image(tmp_path, [('0.vhd', vhd)])
    expected = bi.convert_ok(plain, tmp_path)
    assert expected[:bi.BS] == bi.block_data(0)
    field = b'\x80' + len(vhd).to_bytes(11, 'big')
    variants = {
        'gnu-long': bi.tar_bytes([('./' * 60 + '0.vhd', vhd)]),
        'pax-path': (bi.raw_member(b'p', bi.pax_record('path', '0.vhd'),
                                   b'x') + bi.raw_member(b'decoy', vhd) +
                     bi.END),
        'pax-size': (bi.raw_member(b'p', bi.pax_record('size', len(vhd)),
                                   b'x') +
                     bytes(bi.tar_header(b'0.vhd', 0)) + vhd + bi.END),
        'base-256': (bytes(bi.tar_header(b'0.vhd', size_field=field)) + vhd +
                     bi.END),
        'no-end': bi.raw_member(b'0.vhd', vhd),
    }
    for name, data in variants.items():
        src = bi.write(tmp_path / (name + '.tar'), data)
        assert bi.convert_ok(src, tmp_path) == expected, name


@pytest.mark.parametrize('gz', [False, True], ids=['tar', 'tgz'])
@pytest.mark.parametrize('which', [0, 1], ids=['first', 'second'])
def test_bad_tar_header_checksum(tmp_path, vhd, gz, which):
    members = [bi.raw_member(b'swap.vhd', b'x' * 100),
               bi.raw_member(b'0.vhd', vhd)]
    members[which] = _bad_checksum(members[which][:512]) + \
        members[which][512:]
    src = bi.write(tmp_path / 'img', b''.join(members) + bi.END, gz=gz)
    offset = 0 if which == 0 else 1024
    bi.assert_rejected(src, errors.ArchiveError,
                       says='bad tar header checksum at offset %d' % offset)


@pytest.mark.parametrize('typeflag', [b'S', b'V'])
def test_unsupported_member_type(tmp_path, vhd, typeflag):
    src = bi.write(tmp_path / 'img.tar', bi.raw_member(b'0.vhd', vhd) +
                   bi.raw_member(b'1.vhd', b'z' * 600, typeflag) + bi.END)
    bi.assert_rejected(src, errors.ArchiveError, member='1.vhd',
                       says='unsupported tar member type')


# Where a plain tar is cut, relative to 0.vhd's data (negative: from its
# end, or in the header).
CUTS = {
    'tar header': -212,
    'footer copy': 100,
    'dynamic header': 700,
    'BAT': 1540,
    'block data': 9000,
    'trailing footer': 'end-100',
}


@pytest.mark.parametrize('where', list(CUTS))
@pytest.mark.parametrize('gz', [False, True], ids=['tar', 'tgz'])
def test_truncated_member(tmp_path, vhd, where, gz):
    data = bi.raw_member(b'0.vhd', vhd) + bi.END
    cut = CUTS[where]
    pos = 512 + (len(vhd) - 100 if cut == 'end-100' else cut)
    src = bi.write(tmp_path / 'img', data[:pos], gz=gz)
    exc = bi.assert_rejected(
        src, (errors.Truncated, errors.ArchiveError),
        member=None if where == 'tar header' else '0.vhd')
    text = str(exc)
    assert 'ends early' in text or 'truncated' in text, text


def test_truncated_padding_of_an_ignored_member(tmp_path, vhd):
    data = bi.raw_member(b'0.vhd', vhd) + bi.raw_member(b'swap.vhd',
                                                        b's' * 100)
    src = bi.write(tmp_path / 'img.tar', data[:-200])
    bi.assert_rejected(src, errors.Truncated,
                       says=('input ends early', 'tar member swap.vhd'))


@pytest.mark.parametrize('name', [b'evil\ndir/', b'a\rb/', b'\x1b[2Jx/'])
def test_control_characters_of_a_skipped_member_stay_escaped(tmp_path, vhd,
                                                             name):
    # A directory entry is skipped, its data too: cut short, the message
    # names it, on one line.
    src = bi.write(tmp_path / 'img.tar', bi.raw_member(b'0.vhd', vhd) +
                   bytes(bi.tar_header(name, 5000, b'5')) + b'x' * 600)
    exc = bi.assert_rejected(src, errors.Truncated, says='input ends early')
    assert '\x1b' not in str(exc)


@pytest.mark.parametrize('payload', ['vhd', 'junk'])
def test_member_claiming_100_gib_in_a_tiny_archive(tmp_path, vhd, payload):
    # Memory and time bounded: nothing is read or allocated for the size
    # claimed, only for the bytes present.
    body = vhd if payload == 'vhd' else b'j' * 5000
    field = b'\x80' + (100 * GiB).to_bytes(11, 'big')
    src = bi.write(tmp_path / 'img.tar',
                   bytes(bi.tar_header(b'0.vhd', size_field=field)) + body)
    exc = bi.assert_rejected(src, errors.Truncated, member='0.vhd',
                             max_memory=32 << 20)
    # Where the data should have been: about 100 GiB in.
    assert '10737' in str(exc) and 'ends' in str(exc)


@pytest.mark.parametrize('typeflag', [b'x', b'L'])
def test_pax_header_of_10_mib(tmp_path, vhd, typeflag):
    src = bi.write(tmp_path / 'img.tar',
                   bytes(bi.tar_header(b'meta', 10 << 20, typeflag)) +
                   bi.pax_record('path', '0.vhd') + bi.END +
                   bi.raw_member(b'0.vhd', vhd) + bi.END)
    bi.assert_rejected(src, errors.ArchiveError, says='exceeds',
                       max_memory=8 << 20)


@pytest.mark.parametrize('field', [b'-1', b'+17', b'1_0', b'0 7'])
def test_a_size_that_is_not_plain_octal_is_refused(field):
    # int() takes a sign or underscores: a size of -1 once made a member
    # reader "overrun" its member with a traceback.
    data = bytes(bi.tar_header(b'dir/', typeflag=b'5',
                               size_field=field.ljust(11) + b'\0'))
    assert 'bad octal size' in _fail(data + bi.END)
