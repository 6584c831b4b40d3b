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
"""``xenapinfs-vhd`` in-process: exit codes, output, options, progress.

The command is called through ``main([...])``; stdout and stderr are
captured. Chains are generated with tests/vhd_factory.py, whose expected
disk is computed independently of the library's composer.
"""

import argparse
import dataclasses
import errno
import functools
import gzip
import io
import json
import os
import random
import sys
import tempfile
import types
import uuid

import pytest

from tests import vhd_factory as vf
from xenapinfs_driver.cmd import vhd as cmd
from xenapinfs_driver.vhd import writer

mismatch = vf.mismatch
MiB = vf.MiB
SECTOR = vf.SECTOR
PREFIX = 'xenapinfs-vhd: error: '
SIZES = (9 * MiB + 3 * SECTOR, 8 * MiB, 6 * MiB)


# -- helpers -----------------------------------------------------------------

@dataclasses.dataclass
class Image:
    path: str
    files: list
    expected: bytes
    specs: list
    ids: list


def _tar_bytes(make, *args, **kw):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'x')
        make(path, *args, **kw)
        with open(path, 'rb') as f:
            return f.read()


@functools.lru_cache(maxsize=None)
def _chain_data(seed=1, sizes=SIZES, hidden=True):
    """Generated once per process: building a tar.gz is the slow part."""
    rnd = random.Random(seed)
    specs = [vf.random_layer(rnd, s, fill=0.6 if i else 0.8)
             for i, s in enumerate(sizes)]
    ids = [rnd.randbytes(16) for _ in specs]
    files = vf.build_chain(specs, rnd=rnd, unique_ids=ids, hidden=hidden)
    tgz = _tar_bytes(vf.xenserver_tgz, files)
    return tgz, files, vf.expected_disk(specs), specs, ids


def _chain(tmp_path, name='img.tgz', **kw):
    tgz, files, expected, specs, ids = _chain_data(**kw)
    path = tmp_path / name
    path.write_bytes(tgz)
    return Image(str(path), files, expected, specs, ids)


@pytest.fixture
def image(tmp_path):
    return _chain(tmp_path)


def run(capsys, *argv):
    rc = cmd.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def usage(capsys, *argv):
    """Run argv expecting argparse to exit; return (code, out, err)."""
    with pytest.raises(SystemExit) as exc:
        cmd.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_error_line(err, *needles):
    """Exactly one line, the command's error prefix, naming each needle."""
    assert 'Traceback' not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert err.endswith('\n')
    assert lines[0].startswith(PREFIX), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def present(spec):
    """Absolute sector numbers a layer provides (within its size)."""
    spb = spec.block_size // SECTOR
    out = set()
    for idx, (sectors, _) in spec.blocks.items():
        for s in (range(spb) if sectors is None else sectors):
            off = idx * spec.block_size + s * SECTOR
            if off + SECTOR <= spec.size:
                out.add(off // SECTOR)
    return out


def uid(raw):
    return str(uuid.UUID(bytes=raw))


def corrupt(data, offset):
    data = bytearray(data)
    data[offset] ^= 0x5A
    return bytes(data)


def leftovers(directory, keep):
    return sorted(set(os.listdir(directory)) - set(keep))


# -- convert -----------------------------------------------------------------

def test_convert_writes_the_expected_disk(tmp_path, capsys, image):
    dst = tmp_path / 'out.raw'
    rc, out, err = run(capsys, 'convert', image.path, dst)
    assert (rc, out, err) == (0, '', '')
    assert mismatch(dst.read_bytes(), image.expected) is None
    assert leftovers(tmp_path, ['img.tgz', 'out.raw']) == []


def test_convert_a_single_vhd_and_a_gzipped_one(tmp_path, capsys):
    spec = vf.random_layer(random.Random(2), 5 * MiB + SECTOR)
    raw = vf.build_chain([spec])[0]
    for name, data in (('d.vhd', raw), ('d.vhd.gz', gzip.compress(raw, 1))):
        src = tmp_path / name
        src.write_bytes(data)
        dst = tmp_path / (name + '.raw')
        assert run(capsys, 'convert', src, dst) == (0, '', '')
        assert mismatch(dst.read_bytes(), vf.expected_disk([spec])) is None


def test_convert_replaces_an_existing_file_only_on_success(tmp_path, capsys,
                                                           image):
    dst = tmp_path / 'out.raw'
    dst.write_bytes(b'precious')
    bad = tmp_path / 'bad.tgz'
    bad.write_bytes(dict(_bad_input_data())['nobase.tgz'])
    rc, out, err = run(capsys, 'convert', bad, dst)
    assert rc == 1 and out == ''
    assert_error_line(err, str(bad), '1.vhd', 'disk type')
    assert dst.read_bytes() == b'precious'
    rc, out, err = run(capsys, 'convert', image.path, dst)
    assert (rc, out, err) == (0, '', '')
    assert mismatch(dst.read_bytes(), image.expected) is None


def test_convert_prints_warnings_and_succeeds(tmp_path, capsys):
    # Parents without the hidden flag: blktap would flag it, the disk is
    # the same.
    img = _chain(tmp_path, hidden=False)
    dst = tmp_path / 'out.raw'
    rc, out, err = run(capsys, 'convert', img.path, dst)
    assert rc == 0 and out == ''
    lines = err.splitlines()
    assert len(lines) == 2
    for line, name in zip(lines, ('./1.vhd', './2.vhd')):
        assert line.startswith('xenapinfs-vhd: warning: %s: ' % name)
        assert 'hidden' in line
    assert mismatch(dst.read_bytes(), img.expected) is None


def test_fsync_only_when_asked(tmp_path, capsys, image, monkeypatch):
    calls = []
    real = os.fsync

    def fsync(fd):
        calls.append(fd)
        return real(fd)
    monkeypatch.setattr(os, 'fsync', fsync)
    dst = tmp_path / 'out.raw'
    assert run(capsys, 'convert', image.path, dst) == (0, '', '')
    assert calls == []
    assert run(capsys, 'convert', '--fsync', image.path, dst) == (0, '', '')
    assert len(calls) == 1
    assert mismatch(dst.read_bytes(), image.expected) is None


def test_zero_fill_allocates_every_byte(tmp_path, capsys):
    spec = vf.LayerSpec(32 * MiB, {3: ({0, 1, 7}, b'\x42' * vf.BS)})
    src = tmp_path / 'img.tgz'
    vf.xenserver_tgz(src, vf.build_chain([spec]))
    sparse, full = tmp_path / 'sparse.raw', tmp_path / 'full.raw'
    assert run(capsys, 'convert', src, sparse) == (0, '', '')
    assert run(capsys, 'convert', '--zero-fill', src, full) == (0, '', '')
    expected = vf.expected_disk([spec])
    assert mismatch(sparse.read_bytes(), expected) is None
    assert mismatch(full.read_bytes(), expected) is None
    assert os.stat(sparse).st_blocks * 512 < 4 * MiB
    assert os.stat(full).st_blocks * 512 >= 32 * MiB


# -- limits and parent ids ---------------------------------------------------

@pytest.mark.parametrize('command', ['convert', 'info', 'check'])
def test_max_depth(tmp_path, capsys, image, command):
    extra = [tmp_path / 'out.raw'] if command == 'convert' else []
    rc, out, err = run(capsys, command, image.path, *extra,
                       '--max-depth', '2')
    assert rc == 1 and out == ''
    assert_error_line(err, image.path, './2.vhd', 'depth limit of 2')
    assert leftovers(tmp_path, ['img.tgz']) == []
    rc, out, err = run(capsys, command, image.path, *extra,
                       '--max-depth', '3')
    assert rc == 0 and err == ''
    if command == 'convert':
        data = (tmp_path / 'out.raw').read_bytes()
        assert mismatch(data, image.expected) is None


@pytest.mark.parametrize('limit, ok', [
    ('9M', False),                  # 9 MiB < 9 MiB + 3 sectors
    ('9438719', False),
    ('9438720', True),              # exactly the top's size
    ('9218K', True),
    ('9217KiB', False),
    ('10MiB', True),
    ('1g', True),
])
def test_max_size(tmp_path, capsys, image, limit, ok):
    assert SIZES[0] == 9438720
    dst = tmp_path / 'out.raw'
    rc, out, err = run(capsys, 'convert', image.path, dst,
                       '--max-size', limit)
    if ok:
        assert (rc, out, err) == (0, '', '')
        assert mismatch(dst.read_bytes(), image.expected) is None
    else:
        assert rc == 1 and out == ''
        assert_error_line(err, image.path, './0.vhd', 'current size',
                          '9438720')
        assert not dst.exists()


def _mismatched(tmp_path):
    rnd = random.Random(6)
    top = vf.random_layer(rnd, 4 * MiB)
    base = vf.random_layer(rnd, 4 * MiB, fill=1.0)
    ids = [rnd.randbytes(16), rnd.randbytes(16)]
    child = vf.build_chain([top, base], unique_ids=ids)[0]
    other = vf.build_chain([top, base],
                           unique_ids=[ids[0], rnd.randbytes(16)])[1]
    src = tmp_path / 'img.tgz'
    vf.xenserver_tgz(src, [child, other])
    return src, vf.expected_disk([top, base])


def test_parent_id_mismatch_is_an_error_unless_ignored(tmp_path, capsys):
    src, expected = _mismatched(tmp_path)
    dst = tmp_path / 'out.raw'
    rc, out, err = run(capsys, 'convert', src, dst)
    assert rc == 1 and out == ''
    assert_error_line(err, str(src), './0.vhd', 'parent unique id')
    assert not dst.exists()
    rc, out, err = run(capsys, 'convert', '--ignore-parent-ids', src, dst)
    assert (rc, out, err) == (0, '', '')
    assert mismatch(dst.read_bytes(), expected) is None
    assert run(capsys, 'check', src)[0] == 1
    assert run(capsys, 'check', '--ignore-parent-ids', src)[0] == 0
    rc, out, _ = run(capsys, 'info', '--json', '--ignore-parent-ids', src)
    assert rc == 0 and len(json.loads(out)['layers']) == 2


# -- info --------------------------------------------------------------------

def test_info_text(capsys, image):
    rc, out, err = run(capsys, 'info', image.path)
    assert rc == 0 and err == ''
    size = len(image.expected)
    first = out.splitlines()[0]
    assert first.startswith(image.path + ': ')
    assert 'tar.gz' in first and '3 layers' in first
    assert 'virtual size %d (9.0 MiB)' % size in first
    allocated = len(set().union(*map(present, image.specs))) * SECTOR
    assert '%s allocated' % cmd.human(allocated) in first
    for i, spec in enumerate(image.specs):
        assert './%d.vhd: ' % i in out
        assert '%d bytes (%s)' % (spec.size, cmd.human(spec.size)) in out
        assert uid(image.ids[i]) in out
        assert '%d of %d blocks' % (len(spec.blocks),
                                    -(-spec.size // vf.BS)) in out
    assert "'1.vhd'" in out and "'2.vhd'" in out
    assert 'MacX file://./1.vhd' in out
    assert out.count(', hidden') == 2


def test_info_json(capsys, image):
    rc, out, err = run(capsys, 'info', '--json', image.path)
    assert rc == 0 and err == ''
    doc = json.loads(out)
    assert {'source', 'container', 'virtual_size', 'allocated_bytes',
            'layers'} <= set(doc)
    assert doc['source'] == image.path
    assert doc['container'] == 'tgz'
    assert doc['virtual_size'] == len(image.expected) == SIZES[0]
    union = set().union(*map(present, image.specs))
    assert doc['allocated_bytes'] == len(union) * SECTOR
    assert doc['warnings'] == []
    layers = doc['layers']
    assert [la['name'] for la in layers] == ['./0.vhd', './1.vhd', './2.vhd']
    assert [la['type'] for la in layers] == ['differencing', 'differencing',
                                             'dynamic']
    for i, (la, spec) in enumerate(zip(layers, image.specs)):
        assert la['virtual_size'] == spec.size
        assert la['unique_id'] == uid(image.ids[i])
        assert la['block_size'] == vf.BS
        assert la['allocated_blocks'] == len(spec.blocks)
        assert la['max_table_entries'] == -(-spec.size // vf.BS)
        assert la['present_bytes'] == len(present(spec)) * SECTOR
        assert la['hidden'] is (i > 0)
        assert la['creator'] == 'tap'
        if i == 2:
            assert 'parent' not in la
            continue
        parent = la['parent']
        assert parent['unique_id'] == uid(image.ids[i + 1])
        assert parent['unique_id'] == layers[i + 1]['unique_id']
        assert parent['name'] == '%d.vhd' % (i + 1)
        assert parent['locators'] == [
            {'platform': 'MacX', 'path': 'file://./%d.vhd' % (i + 1)},
            {'platform': 'W2ku', 'path': '.\\%d.vhd' % (i + 1)},
            {'platform': 'W2ru', 'path': '.\\%d.vhd' % (i + 1)}]


def _fixed(tmp_path, name='fixed.vhd'):
    raw = random.Random(9).randbytes(2 * MiB) + bytes(MiB + SECTOR)
    buf = io.BytesIO()
    writer.write_fixed(buf, raw)
    path = tmp_path / name
    path.write_bytes(buf.getvalue())
    return path, raw


def test_info_json_fixed_vhd(tmp_path, capsys):
    src, raw = _fixed(tmp_path)
    rc, out, err = run(capsys, 'info', '--json', src)
    assert rc == 0 and err == ''
    doc = json.loads(out)
    assert doc['container'] == 'vhd'
    assert doc['virtual_size'] == len(raw) == doc['allocated_bytes']
    (layer,) = doc['layers']
    assert layer['name'] == 'fixed.vhd'
    assert layer['type'] == 'fixed'
    assert layer['virtual_size'] == len(raw)
    assert 'block_size' not in layer and 'parent' not in layer


@pytest.mark.parametrize('container', ['tgz', 'tar', 'vhd', 'vhd.gz'])
def test_info_names_the_container(tmp_path, capsys, container):
    spec = vf.random_layer(random.Random(3), 3 * MiB)
    raw = vf.build_chain([spec])[0]
    src = tmp_path / ('x.' + container)
    if container in ('tgz', 'tar'):
        vf.xenserver_tgz(src, [raw], gzip=container == 'tgz')
    else:
        src.write_bytes(gzip.compress(raw, 1) if container == 'vhd.gz'
                        else raw)
    rc, out, _ = run(capsys, 'info', '--json', src)
    assert rc == 0
    doc = json.loads(out)
    assert doc['container'] == container
    assert doc['virtual_size'] == 3 * MiB
    assert doc['layers'][0]['type'] == 'dynamic'
    rc, out, _ = run(capsys, 'info', src)
    assert rc == 0 and '1 layer,' in out


# -- check -------------------------------------------------------------------

def test_check_valid(capsys, image):
    rc, out, err = run(capsys, 'check', image.path)
    assert rc == 0 and err == ''
    assert out == '%s: valid, 3 layers, virtual size %d\n' % (
        image.path, SIZES[0])
    assert run(capsys, 'check', '--quiet', image.path) == (0, '', '')
    assert run(capsys, 'check', '-q', image.path) == (0, '', '')


def test_check_valid_with_warnings(tmp_path, capsys):
    img = _chain(tmp_path, hidden=False)
    rc, out, err = run(capsys, 'check', img.path)
    assert rc == 0 and err == ''
    lines = out.splitlines()
    assert len(lines) == 3
    assert all(line.startswith('warning: ') for line in lines[:2])
    assert lines[2].startswith(img.path + ': valid, 3 layers')
    assert run(capsys, 'check', '-q', img.path) == (0, '', '')


def test_check_invalid(tmp_path, capsys):
    src = tmp_path / 'bad.tgz'      # 1.vhd: a reserved header byte changed
    src.write_bytes(dict(_bad_input_data())['hdr.tgz'])
    rc, out, err = run(capsys, 'check', src)
    assert rc == 1 and out == ''
    assert_error_line(err, str(src), '1.vhd', 'dynamic header checksum')
    assert run(capsys, 'check', '--quiet', src) == (1, '', '')
    assert run(capsys, 'check', '-q', tmp_path / 'missing.tgz') == (1, '', '')


# -- invalid input: exit 1, one line ----------------------------------------

@functools.lru_cache(maxsize=None)
def _bad_input_data():
    """(file name, contents, words the error line must contain)."""
    tgz, f, _, _, _ = _chain_data()
    cases = []

    def tar(name, members):
        cases.append((name, _tar_bytes(vf.make_tar, members)))
    tar('hdr.tgz', [('0.vhd', f[0]), ('1.vhd', corrupt(f[1], 512 + 800)),
                    ('2.vhd', f[2])])
    tar('ftr.tgz', [('0.vhd', corrupt(f[0], 100)), ('1.vhd', f[1]),
                    ('2.vhd', f[2])])
    tar('nobase.tgz', [('0.vhd', f[0]), ('1.vhd', f[1])])
    tar('gap.tgz', [('0.vhd', f[0]), ('2.vhd', f[2])])
    tar('unsafe.tgz', [('../0.vhd', f[0])])
    cases.append(('trunc.tgz', tgz[:len(tgz) // 2]))
    cases.append(('junk.bin', random.Random(1).randbytes(4096)))
    return cases


BAD_WORDS = {
    'hdr.tgz': ['1.vhd', 'dynamic header checksum'],
    'ftr.tgz': ['0.vhd', 'footer copy checksum'],
    'nobase.tgz': ['1.vhd', 'disk type'],
    'gap.tgz': ['1.vhd missing'],
    'unsafe.tgz': ['../0.vhd', 'unsafe'],
    'trunc.tgz': ['truncated'],
    'junk.bin': ['not a XenServer image'],
    'missing.tgz': ['No such file'],
    'adir': ['directory'],
}


def _bad_inputs(tmp_path):
    """(path, words the error line must contain) for each bad input."""
    cases = []
    for name, data in _bad_input_data():
        (tmp_path / name).write_bytes(data)
        cases.append((tmp_path / name, BAD_WORDS[name]))
    (tmp_path / 'adir').mkdir()
    for name in ('missing.tgz', 'adir'):
        cases.append((tmp_path / name, BAD_WORDS[name]))
    return cases


@pytest.mark.parametrize('command', ['convert', 'info', 'check'])
def test_invalid_input_exit_1_one_line(tmp_path, capsys, command):
    outdir = tmp_path / 'out'
    outdir.mkdir()
    for src, words in _bad_inputs(tmp_path):
        extra = [outdir / 'disk.raw'] if command == 'convert' else []
        rc, out, err = run(capsys, command, src, *extra)
        assert rc == 1, (src, err)
        assert out == ''
        assert_error_line(err, str(src), *words)
        assert os.listdir(outdir) == []


@pytest.mark.parametrize('name', ['x\nxenapinfs-vhd: y.vhd', 'x\ry.vhd',
                                  'x\x1b[2Jy.vhd'])
def test_error_line_stays_one_line_for_hostile_member_names(tmp_path,
                                                            capsys, name):
    # Member names come from the input: a newline, a carriage return or
    # an escape sequence in one must not split or rewrite the error line.
    src = tmp_path / 'evil.tgz'
    vf.make_tar(src, [(name, b'\0' * 1024), ('0.vhd', b'\0' * 1024)])
    rc, out, err = run(capsys, 'check', src)
    assert rc == 1 and out == ''
    assert_error_line(err, str(src), 'y.vhd', 'unexpected member')
    assert not any(ord(c) < 32 for c in err[:-1]), repr(err)


def test_read_error_names_the_input(capsys):
    # /proc/self/mem opens, but reading offset 0 fails with EIO: an
    # OSError raised while reading, not while opening.
    path = '/proc/self/mem'
    try:
        with open(path, 'rb') as f:
            f.read(2)
    except OSError:
        pass
    else:
        pytest.skip('reading %s does not fail here' % path)
    for command in ('info', 'check'):
        rc, out, err = run(capsys, command, path)
        assert rc == 1 and out == ''
        assert_error_line(err, path)
    assert run(capsys, 'check', '-q', path) == (1, '', '')


def test_check_quiet_prints_nothing_on_a_read_error(capsys, monkeypatch):
    def broken(*args, **kw):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(cmd.convertmod, 'inspect', broken)
    assert run(capsys, 'check', '--quiet', 'img.tgz') == (1, '', '')


@pytest.mark.parametrize('dst, words', [
    ('nodir/out.raw', ['nodir', 'cannot create']),
    ('.', ['not a regular file']),
])
def test_output_error_exit_1_one_line(tmp_path, capsys, image, dst, words):
    target = str(tmp_path / dst)
    rc, out, err = run(capsys, 'convert', image.path, target)
    assert rc == 1 and out == ''
    assert_error_line(err, *words)
    assert leftovers(tmp_path, ['img.tgz']) == []


def test_os_error_while_writing(capsys, monkeypatch):
    def full(*args, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), '/x/out.raw')
    monkeypatch.setattr(cmd.convertmod, 'convert', full)
    rc, out, err = run(capsys, 'convert', 'in.tgz', '/x/out.raw')
    assert rc == 1 and out == ''
    assert_error_line(err, '/x/out.raw', os.strerror(errno.ENOSPC))


def test_interrupted_exit_130(capsys, monkeypatch):
    def interrupted(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(cmd.convertmod, 'convert', interrupted)
    rc, out, err = run(capsys, 'convert', 'in.tgz', 'out.raw')
    assert (rc, out, err) == (130, '', 'xenapinfs-vhd: interrupted\n')


# -- usage -------------------------------------------------------------------

@pytest.mark.parametrize('argv', [
    [],
    ['frobnicate', 'x'],
    ['convert'],
    ['convert', 'a.tgz'],
    ['convert', 'a.tgz', 'b.raw', 'c'],
    ['convert', 'a.tgz', 'b.raw', '--bogus'],
    ['convert', 'a.tgz', 'b.raw', '--max-depth', '0'],
    ['convert', 'a.tgz', 'b.raw', '--max-depth', 'two'],
    ['convert', 'a.tgz', 'b.raw', '--max-size', '0'],
    ['convert', 'a.tgz', 'b.raw', '--max-size', '-1G'],
    ['convert', 'a.tgz', 'b.raw', '--max-size', 'lots'],
    ['convert', 'a.tgz', 'b.raw', '--max-size', '1.5G'],
    ['info'],
    ['info', 'a.tgz', '--zero-fill'],
    ['check', 'a.tgz', '--json'],
])
def test_usage_errors_exit_2(capsys, argv):
    code, out, err = usage(capsys, *argv)
    assert code == 2
    assert out == ''
    assert 'usage: xenapinfs-vhd' in err
    assert err.splitlines()[-1].startswith('xenapinfs-vhd')
    assert 'Traceback' not in err


@pytest.mark.parametrize('argv, words', [
    ([], ['convert', 'info', 'check', 'exit status']),
    (['convert'], ['SRC', 'DST', '--zero-fill', '--fsync', '--max-depth',
                   '--max-size', '--ignore-parent-ids', '--progress']),
    (['info'], ['SRC', '--json', '--max-depth', '--ignore-parent-ids']),
    (['check'], ['SRC', '--quiet', '--max-size']),
])
def test_help_exits_0(capsys, argv, words):
    code, out, err = usage(capsys, *argv, '--help')
    assert code == 0 and err == ''
    assert out.startswith('usage: xenapinfs-vhd ' + ' '.join(argv))
    for word in words:
        assert word in out


@pytest.mark.parametrize('text, value', [
    ('512', 512), ('1K', 1 << 10), ('2M', 2 << 20), ('3G', 3 << 30),
    ('4T', 4 << 40), ('10MiB', 10 << 20), ('10MB', 10 << 20),
    ('5k', 5 << 10), (' 7g ', 7 << 30),
])
def test_size_argument(text, value):
    assert cmd._size(text) == value


@pytest.mark.parametrize('text', ['0', '-1', 'x', '', '1.5G', 'M', '1X'])
def test_size_argument_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        cmd._size(text)


@pytest.mark.parametrize('n, text', [
    (0, '0 B'), (1023, '1023 B'), (1024, '1.0 KiB'), (1536, '1.5 KiB'),
    (SIZES[0], '9.0 MiB'), (3 << 30, '3.0 GiB'), (2 << 40, '2.0 TiB'),
    (5 << 50, '5120.0 TiB'),
])
def test_human(n, text):
    assert cmd.human(n) == text


# -- progress ----------------------------------------------------------------

class Clock:
    """A monotonic clock that moves only when told (or by step per call)."""

    def __init__(self, step=0.0):
        self.now = 1000.0
        self.step = step
        self.calls = 0

    def monotonic(self):
        self.calls += 1
        now = self.now
        self.now += self.step
        return now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(cmd, 'time', types.SimpleNamespace(
        monotonic=c.monotonic))
    return c


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_waits_one_second(clock):
    buf = io.StringIO()
    p = cmd.Progress(buf, True)
    clock.now += 0.99
    p(10, 100)
    assert buf.getvalue() == ''
    p.done()
    assert buf.getvalue() == ''         # nothing shown, nothing cleared
    clock.now += 0.01
    p(50, 100)
    assert buf.getvalue() == (
        '\r[###############               ]  50%  50 B of 100 B  '
        '50 B/s\x1b[K')


def test_progress_throttles_and_clears(clock):
    buf = io.StringIO()
    p = cmd.Progress(buf, True)
    clock.now += 2.0
    p(1 << 20, 4 << 20)
    first = buf.getvalue()
    assert first.startswith('\r[#######') and ' 25%' in first
    assert '1.0 MiB of 4.0 MiB' in first and '512.0 KiB/s' in first
    clock.now += 0.1
    p(2 << 20, 4 << 20)
    assert buf.getvalue() == first      # less than 0.2 s later
    clock.now += 0.15
    p(6 << 20, 4 << 20)                 # past the end: clamped
    second = buf.getvalue()[len(first):]
    assert second.startswith('\r[' + '#' * 30 + '] 100%')
    assert second.endswith('\x1b[K')
    p.done()
    assert buf.getvalue().endswith('\x1b[K\r\x1b[K')


def test_progress_unknown_total(clock):
    buf = io.StringIO()
    p = cmd.Progress(buf, True)
    clock.now += 2.0
    p(4 << 20, None)
    assert buf.getvalue() == '\r4.0 MiB read  2.0 MiB/s\x1b[K'


def test_progress_disabled_never_draws(clock):
    buf = io.StringIO()
    p = cmd.Progress(buf, False)
    for _ in range(5):
        clock.now += 5.0
        p(1, 2)
        p(1, None)
    p.done()
    assert buf.getvalue() == ''


@pytest.mark.parametrize('flags, tty, drawn', [
    ([], True, True),
    (['--no-progress'], True, False),
    ([], False, False),
    (['--progress'], False, True),
])
def test_progress_in_convert(tmp_path, capsys, monkeypatch, clock, image,
                             flags, tty, drawn):
    clock.step = 1.0
    stream = Tty() if tty else io.StringIO()
    monkeypatch.setattr(sys, 'stderr', stream)
    dst = tmp_path / 'out.raw'
    assert cmd.main(['convert', image.path, str(dst), *flags]) == 0
    assert mismatch(dst.read_bytes(), image.expected) is None
    err = stream.getvalue()
    assert capsys.readouterr() == ('', '')
    if drawn:
        assert err.startswith('\r[') and '%' in err
        assert err.endswith('\x1b[K\r\x1b[K')
        assert '\n' not in err
    else:
        assert err == ''


def test_progress_not_with_quiet_and_not_in_json(capsys, monkeypatch, clock,
                                                 image):
    clock.step = 1.0
    stream = Tty()
    monkeypatch.setattr(sys, 'stderr', stream)
    assert cmd.main(['check', '-q', '--progress', image.path]) == 0
    assert stream.getvalue() == ''
    assert cmd.main(['info', '--json', image.path]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)['virtual_size'] == SIZES[0]
    assert stream.getvalue().endswith('\r\x1b[K')


def test_progress_cleared_before_the_error(tmp_path, monkeypatch, clock,
                                           image):
    clock.step = 1.0
    stream = Tty()
    monkeypatch.setattr(sys, 'stderr', stream)
    whole = open(image.path, 'rb').read()
    trunc = tmp_path / 'trunc.tgz'
    trunc.write_bytes(whole[:len(whole) * 3 // 4])
    assert cmd.main(['convert', str(trunc), str(tmp_path / 'o.raw')]) == 1
    err = stream.getvalue()
    assert err.startswith('\r[')
    drawn, _, last = err.rpartition('\r\x1b[K')
    assert drawn
    assert_error_line(last, str(trunc), 'truncated')
