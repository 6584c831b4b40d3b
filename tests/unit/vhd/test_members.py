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
"""Which member is which layer, and whether the layers fit together."""

import tarfile

import pytest

from tests.unit.vhd import badinput as bi
from xenapinfs_driver.vhd import members as membersmod
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import layer as layermod
from xenapinfs_driver.vhd import tar
from xenapinfs_driver.vhd import tgz
from xenapinfs_driver.vhd import writer


def _uid(vhd) -> bytes:
    return bytes(vhd[bi.F_UNIQUE_ID:bi.F_UNIQUE_ID + 16])


def _chain(n, *, sizes=None, block_sizes=None, blocks=True):
    """n small layers, newest first: a dynamic base, differencing above.

    The base holds bi.BLOCKS; the layer at position pos holds block
    1 + n - pos.
    """
    sizes = sizes or [bi.SIZE] * n
    block_sizes = block_sizes or [bi.BS] * n
    files = [None] * n
    files[-1] = bi.dynamic(size=sizes[-1], block_size=block_sizes[-1],
                           blocks=bi.BLOCKS if blocks else (),
                           unique_id=bytes([0x40 + n]) * 16)
    for pos in range(n - 2, -1, -1):
        files[pos] = bi.differencing(
            _uid(files[pos + 1]), '%d.vhd' % (pos + 1), size=sizes[pos],
            block_size=block_sizes[pos],
            blocks=((1 + n - pos) % 16,) if blocks else (), hidden=pos > 0,
            unique_id=bytes([0x40 + pos]) * 16)
    return files


def _numbered(files):
    return [('%d.vhd' % i, f) for i, f in enumerate(files)]


# -- member names -------------------------------------------------------------

def _member(name, kind=tar.REGULAR):
    return tar.Member(name=name, size=0, kind=kind, data_offset=0)


@pytest.mark.parametrize('name, kind, expected', [
    ('0.vhd', tar.REGULAR, ('numbered', 0)),
    ('./0.vhd', tar.REGULAR, ('numbered', 0)),
    ('.//./12.vhd', tar.REGULAR, ('numbered', 12)),
    ('29.vhd', tar.REGULAR, ('numbered', 29)),
    ('snap.vhd', tar.REGULAR, ('legacy', 0)),
    ('./image.vhd', tar.REGULAR, ('legacy', 1)),
    ('base.vhd', tar.REGULAR, ('legacy', 2)),
    ('swap.vhd', tar.REGULAR, None),
    ('./swap.vhd', tar.REGULAR, None),
    ('.', tar.DIRECTORY, None),
    ('./', tar.DIRECTORY, None),
    ('sub/', tar.DIRECTORY, None),
])
def test_member_rank_accepts(name, kind, expected):
    assert membersmod.member_rank(_member(name, kind), 30) == expected


@pytest.mark.parametrize('name, kind, cls, says', [
    ('/0.vhd', tar.REGULAR, errors.ArchiveError, 'absolute path'),
    ('//0.vhd', tar.REGULAR, errors.ArchiveError, 'absolute path'),
    ('\\0.vhd', tar.REGULAR, errors.ArchiveError, 'unsafe member name'),
    ('a\\..\\0.vhd', tar.REGULAR, errors.ArchiveError,
     'unsafe member name'),
    ('../0.vhd', tar.REGULAR, errors.ArchiveError, "'..'"),
    ('./../0.vhd', tar.REGULAR, errors.ArchiveError, "'..'"),
    ('a/../0.vhd', tar.REGULAR, errors.ArchiveError, "'..'"),
    ('..', tar.DIRECTORY, errors.ArchiveError, "'..'"),
    ('0.vhd', tar.LINK, errors.ArchiveError, 'a link, not a regular file'),
    ('swap.vhd', tar.LINK, errors.ArchiveError, 'a link'),
    ('0.vhd', tar.DEVICE, errors.ArchiveError, 'a device'),
    ('0.vhd', tar.FIFO, errors.ArchiveError, 'a fifo'),
    ('sub/0.vhd', tar.REGULAR, errors.ArchiveError, 'subdirectory'),
    ('./sub/swap.vhd', tar.REGULAR, errors.ArchiveError, 'subdirectory'),
    ('README', tar.REGULAR, errors.ArchiveError, 'unexpected member'),
    ('00.vhd', tar.REGULAR, errors.ArchiveError, 'unexpected member'),
    ('0.VHD', tar.REGULAR, errors.ArchiveError, 'unexpected member'),
    ('-1.vhd', tar.REGULAR, errors.ArchiveError, 'unexpected member'),
    ('0.vhd.bak', tar.REGULAR, errors.ArchiveError, 'unexpected member'),
    ('1234567890.vhd', tar.REGULAR, errors.ArchiveError,
     'unexpected member'),
    ('30.vhd', tar.REGULAR, errors.LimitExceeded,
     'chain position 30 is beyond the depth limit of 30'),
    ('999999999.vhd', tar.REGULAR, errors.LimitExceeded, 'depth limit'),
])
def test_member_rank_refuses(name, kind, cls, says):
    with pytest.raises(errors.VhdError) as info:
        membersmod.member_rank(_member(name, kind), 30)
    assert type(info.value) is cls
    assert info.value.member == name
    assert says in str(info.value)


# -- the chain builder on its own ---------------------------------------------

def _layer(name, rank, disk_type=fmt.DISK_DIFFERENCING, size=bi.SIZE,
           uid=None, parent_uid=bytes(16)):
    footer = writer.make_footer(size, disk_type,
                                unique_id=uid or bytes([rank + 1]) * 16)
    hdr = None
    if disk_type != fmt.DISK_FIXED:
        hdr = fmt.DynamicHeader(fmt.HEADER_COOKIE, fmt.NO_DATA_OFFSET, 1536,
                                0x10000, 16, bi.BS, 0, parent_uid, 0,
                                bytes(512))
    return layermod.Layer(name, rank, footer, hdr)


def _linked(n):
    """n Layers that fit, newest first."""
    layers = []
    for rank in range(n):
        kind = fmt.DISK_DYNAMIC if rank == n - 1 else fmt.DISK_DIFFERENCING
        layers.append(_layer('%d.vhd' % rank, rank, kind,
                             parent_uid=bytes([rank + 2]) * 16))
    return layers


def test_builder_returns_the_layers_newest_first():
    builder = membersmod.ChainBuilder(30)
    for layer in reversed(_linked(3)):
        builder.claim('numbered', layer.rank, layer.name)
        builder.add(layer)
    assert [la.name for la in builder.finish()] == ['0.vhd', '1.vhd',
                                                    '2.vhd']


def test_builder_refuses_mixed_styles_and_duplicates():
    builder = membersmod.ChainBuilder(30)
    builder.claim('numbered', 0, '0.vhd')
    with pytest.raises(errors.ArchiveError) as info:
        builder.claim('legacy', 1, 'image.vhd')
    assert info.value.member == 'image.vhd'
    assert 'mixes numbered members with legacy' in str(info.value)
    with pytest.raises(errors.ArchiveError) as info:
        builder.claim('numbered', 0, './0.vhd')
    assert str(info.value) == ('./0.vhd: duplicate member: 0.vhd is '
                               'already the layer at position 0')


def test_builder_counts_legacy_layers_against_the_limit():
    builder = membersmod.ChainBuilder(2)
    builder.claim('legacy', 0, 'snap.vhd')
    builder.claim('legacy', 1, 'image.vhd')
    with pytest.raises(errors.LimitExceeded) as info:
        builder.claim('legacy', 2, 'base.vhd')
    assert str(info.value) == 'base.vhd: more than 2 layers'


@pytest.mark.parametrize('mutate, cls, says', [
    (lambda ls: ls.clear(), errors.ArchiveError, 'no VHD in the archive'),
    (lambda ls: ls.pop(1), errors.ChainError,
     'gap in the chain: 1.vhd missing'),
    (lambda ls: ls.pop(), errors.ChainError,
     '1.vhd: disk type: the oldest layer is a differencing disk'),
    (lambda ls: setattr(ls[0].footer, 'current_size', bi.SIZE - 512),
     errors.ChainError,
     '0.vhd: current size: 65024 is smaller than its parent 1.vhd (65536)'),
    (lambda ls: setattr(ls[0].header, 'parent_unique_id', b'?' * 16),
     errors.ChainError, '0.vhd: parent unique id: '),
    (lambda ls: setattr(ls[1].footer, 'disk_type', fmt.DISK_DYNAMIC),
     errors.ChainError,
     '1.vhd: disk type: is a dynamic disk, but 2.vhd follows it'),
    (lambda ls: setattr(ls[0].footer, 'disk_type', fmt.DISK_FIXED),
     errors.ChainError, '0.vhd: disk type: is a fixed disk'),
])
def test_builder_checks_the_links(mutate, cls, says):
    layers = _linked(3)
    mutate(layers)
    builder = membersmod.ChainBuilder(30)
    for layer in layers:
        builder.claim('numbered', layer.rank, layer.name)
        builder.add(layer)
    with pytest.raises(errors.VhdError) as info:
        builder.finish()
    assert type(info.value) is cls
    assert str(info.value).startswith(says), str(info.value)


def test_builder_ignores_parent_ids_when_told():
    layers = _linked(2)
    builder = membersmod.ChainBuilder(30, check_parents=False)
    for layer in layers:
        builder.add(layer)
    assert builder.finish() == layers


# -- through convert: unsafe members ------------------------------------------

def _info(name, type_=tarfile.REGTYPE, linkname=''):
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    info.mode = 0o644
    return info


_PAX = _info('harmless')           # the pax path says otherwise
_PAX.pax_headers = {'path': '../1.vhd'}

UNSAFE = [
    ('symlink', _info('1.vhd', tarfile.SYMTYPE, '/etc/shadow'), None,
     '1.vhd', 'a link, not a regular file'),
    ('symlink to swap', _info('swap.vhd', tarfile.SYMTYPE, '../x'), None,
     'swap.vhd', 'a link'),
    ('hard link', _info('1.vhd', tarfile.LNKTYPE, '0.vhd'), None,
     '1.vhd', 'a link'),
    ('character device', _info('1.vhd', tarfile.CHRTYPE), None,
     '1.vhd', 'a device'),
    ('block device', _info('1.vhd', tarfile.BLKTYPE), None, '1.vhd',
     'a device'),
    ('fifo', _info('1.vhd', tarfile.FIFOTYPE), None, '1.vhd', 'a fifo'),
    ('absolute path', '/1.vhd', b'x' * 600, '/1.vhd', 'absolute path'),
    ('absolute long name', '/' + 'a' * 150 + '/1.vhd', b'x', None,
     'absolute path'),
    ('dot-dot', '../1.vhd', b'x' * 600, '../1.vhd', "('..')"),
    ('dot-dot inside', 'a/../1.vhd', b'x', 'a/../1.vhd', "('..')"),
    ('dot-dot directory', _info('../', tarfile.DIRTYPE), None, '../',
     "('..')"),
    ('dot-dot in a pax path', _PAX, b'x', '../1.vhd', "('..')"),
    ('duplicate', './0.vhd', b'x' * 600, './0.vhd',
     'duplicate member: 0.vhd is already the layer at position 0'),
    ('same name twice', '0.vhd', b'x' * 600, '0.vhd',
     'duplicate member'),
    ('mixed names', 'snap.vhd', b'x' * 600, 'snap.vhd',
     'mixes numbered members with legacy snap/image/base names'),
    ('subdirectory', 'sub/1.vhd', b'x', 'sub/1.vhd', 'subdirectory'),
    ('unknown name', 'README.txt', b'hello', 'README.txt',
     'unexpected member'),
    ('unknown vhd name', 'disk.vhd', b'x' * 600, 'disk.vhd',
     'holds only 0.vhd .. n.vhd'),
]


@pytest.mark.parametrize('gz', [False, True], ids=['tar', 'tgz'])
@pytest.mark.parametrize('info, data, member, says', [
    pytest.param(*c[1:], id=c[0]) for c in UNSAFE])
def test_unsafe_or_unexpected_member(tmp_path, gz, info, data, member,
                                     says):
    # A valid 0.vhd comes first and is written before the bad member.
    members = [('0.vhd', bi.dynamic()), (info, data)]
    fmt_ = tarfile.PAX_FORMAT if isinstance(info, tarfile.TarInfo) and \
        info.pax_headers else tarfile.GNU_FORMAT
    src = bi.write(tmp_path / 'img', bi.tar_bytes(members, fmt_=fmt_),
                   gz=gz)
    exc = bi.assert_rejected(src, errors.ArchiveError, member=member,
                             says=says)
    if member is None:
        assert exc.member.startswith('/aaa')


@pytest.mark.parametrize('name', ['x\ny.vhd', '0.vhd\n', 'evil\r.vhd',
                                  '1.vhd\nerror: all fine'])
def test_member_names_cannot_break_the_line(tmp_path, name):
    src = bi.image(tmp_path, [('0.vhd', bi.dynamic()), (name, b'x')])
    bi.assert_rejected(src, errors.ArchiveError)


def test_an_archive_without_a_vhd(tmp_path):
    src = bi.image(tmp_path, [(_info('.', tarfile.DIRTYPE), None),
                              ('./swap.vhd', b'swap' * 200)], gz=True)
    bi.assert_rejected(src, errors.ArchiveError,
                       says='no VHD in the archive')


# -- through convert: layers that do not fit ----------------------------------

def test_gap_in_the_chain(tmp_path):
    files = _chain(4)
    src = bi.image(tmp_path, [m for m in _numbered(files)
                              if m[0] not in ('1.vhd', '2.vhd')])
    bi.assert_rejected(src, errors.ChainError,
                       says='gap in the chain: 1.vhd, 2.vhd missing')


@pytest.mark.parametrize('drop', ['the base', 'all but the top'])
def test_oldest_layer_is_a_differencing_disk(tmp_path, drop):
    files = _chain(3)
    kept = _numbered(files)[:2] if drop == 'the base' else \
        _numbered(files)[:1]
    src = bi.image(tmp_path, kept)
    bi.assert_rejected(src, errors.ChainError, member=kept[-1][0],
                       field='disk type', says='parent is not in the input')


def test_single_differencing_vhd(tmp_path):
    src = bi.write(tmp_path / 'child.vhd', _chain(2)[0])
    bi.assert_rejected(src, errors.ChainError, field='disk type',
                       says='differencing disk')


def test_child_smaller_than_its_parent(tmp_path):
    files = _chain(3, sizes=[bi.SIZE, bi.SIZE - 4096, bi.SIZE])
    src = bi.image(tmp_path, _numbered(files), gz=True)
    bi.assert_rejected(src, errors.ChainError, member='1.vhd',
                       field='current size',
                       says='61440 is smaller than its parent 2.vhd (65536)')


def test_parent_unique_id_mismatch(tmp_path):
    base = bi.dynamic()
    child = bi.differencing(b'\x5a' * 16)
    src = bi.image(tmp_path, [('0.vhd', child), ('1.vhd', base)])
    bi.assert_rejected(src, errors.ChainError, member='0.vhd',
                       field='parent unique id',
                       says='5a5a5a5a-5a5a-5a5a-5a5a-5a5a5a5a5a5a does not '
                       'match the unique id')
    disk = bi.convert_ok(src, tmp_path, check_parents=False)
    expected = bytearray(bi.SIZE)
    for i in bi.BLOCKS:
        expected[i * bi.BS:(i + 1) * bi.BS] = bi.block_data(i)
    expected[2 * bi.BS:3 * bi.BS] = bi.block_data(102)
    assert disk == bytes(expected)


def test_two_dynamic_disks(tmp_path):
    src = bi.image(tmp_path, [('0.vhd', bi.dynamic()),
                              ('1.vhd', bi.dynamic(unique_id=b'1' * 16))])
    bi.assert_rejected(src, errors.ChainError, member='0.vhd',
                       field='disk type',
                       says='is a dynamic disk, but 1.vhd follows it')


@pytest.mark.parametrize('order', [[0, 1], [1, 0]])
@pytest.mark.parametrize('parent', ['fixed', 'dynamic'])
def test_fixed_disk_with_a_parent(tmp_path, order, parent):
    files = [bi.fixed(b'\x11' * bi.SIZE),
             bi.fixed(b'\x22' * bi.SIZE, unique_id=b'2' * 16)
             if parent == 'fixed' else bi.dynamic()]
    members = _numbered(files)
    src = bi.image(tmp_path, [members[i] for i in order])
    bi.assert_rejected(src, errors.ChainError, member='0.vhd',
                       field='disk type',
                       says='is a fixed disk, but 1.vhd follows it')


@pytest.mark.parametrize('order', [[0, 1], [1, 0]])
def test_block_sizes_differ_between_layers(tmp_path, order):
    files = _chain(2, block_sizes=[2 * bi.BS, bi.BS])
    members = _numbered(files)
    members = [members[i] for i in order]
    second = members[1][0]
    sizes = (bi.BS, 2 * bi.BS) if second == '0.vhd' else (2 * bi.BS, bi.BS)
    src = bi.image(tmp_path, members)
    bi.assert_rejected(src, errors.ChainError, member=second,
                       field='block size',
                       says='%d differs from the %d of the other layers'
                       % (sizes[1], sizes[0]))


# -- depth --------------------------------------------------------------------

@pytest.fixture(scope='module')
def deep():
    return _numbered(_chain(31, blocks=False))


def test_thirty_layers_are_accepted(tmp_path, deep):
    top = deep[-30:]
    top = [('%d.vhd' % i, data) for i, (_, data) in enumerate(top)]
    src = bi.image(tmp_path, top)
    assert bi.convert_ok(src, tmp_path) == bytes(bi.SIZE)


def test_thirty_one_layers_exceed_the_default_limit(tmp_path, deep):
    src = bi.image(tmp_path, deep)
    bi.assert_rejected(src, errors.LimitExceeded, member='30.vhd',
                       says='beyond the depth limit of 30 layers')
    bi.convert_ok(src, tmp_path, limits=tgz.Limits(max_depth=31))


def test_depth_limit_is_configurable(tmp_path):
    files = _chain(4)
    src = bi.image(tmp_path, list(reversed(_numbered(files))), gz=True)
    bi.assert_rejected(src, errors.LimitExceeded, member='3.vhd',
                       says='depth limit of 3 layers',
                       limits=tgz.Limits(max_depth=3))


def test_legacy_names_count_against_the_depth_limit(tmp_path):
    files = _chain(3)
    src = bi.image(tmp_path, [('snap.vhd', files[0]),
                              ('image.vhd', files[1]),
                              ('base.vhd', files[2])])
    bi.assert_rejected(src, errors.LimitExceeded, member='base.vhd',
                       says='more than 2 layers',
                       limits=tgz.Limits(max_depth=2))
    assert len(bi.convert_ok(src, tmp_path)) == bi.SIZE
