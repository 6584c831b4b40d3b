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
"""``xenapinfs-vhd`` as a real process, refereed by qemu-img and libvhdi.

The command runs as ``python -m xenapinfs_driver.cmd.vhd`` (and as the
installed console script when there is one). Two independent readers
judge its output:

- qemu-img (Debian qemu-utils) for single dynamic and fixed VHDs. qemu
  ignores sector bitmaps and parents (reference §3), so its images have
  full bitmaps or zeros under unset bits, and one test shows the
  differencing-disk pitfall.
- libvhdi (pip libvhdi-python, ``pyvhdi``) for chains. Its known bugs
  (reference §4) are avoided: original size = current size, present
  sectors in whole bitmap bytes (4 KiB-aligned runs of 8 sectors), and the
  same virtual size for every layer.

The pipeline pitfalls of reference §2 each get a test.
"""

import io
import json
import os
import pathlib
import pty
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from tests import vhd_factory as vf
from xenapinfs_driver.vhd import writer

try:
    import pyvhdi
except ImportError:                     # pragma: no cover
    pyvhdi = None

mismatch = vf.mismatch
MiB = vf.MiB
BS = vf.BS
SECTOR = vf.SECTOR
REPO = pathlib.Path(__file__).resolve().parents[2]
MODULE = 'xenapinfs_driver.cmd.vhd'
QEMU = shutil.which('qemu-img')
# The script beside this interpreter (a virtual environment's bin/, which
# need not be on PATH), else on PATH.
SCRIPT = shutil.which('xenapinfs-vhd', path=os.pathsep.join(
    [os.path.dirname(sys.executable), os.environ.get('PATH', '')]))

needs_qemu = pytest.mark.skipif(
    QEMU is None, reason='qemu-img not found (Debian package qemu-utils)')
needs_libvhdi = pytest.mark.skipif(
    pyvhdi is None, reason='pyvhdi not importable (pip libvhdi-python)')


# -- running the command -----------------------------------------------------

def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (str(REPO), env.get('PYTHONPATH')) if p)
    return env


def cli_argv(*args):
    return [sys.executable, '-m', MODULE, *map(str, args)]


def cli(*args, stdin=subprocess.DEVNULL, input=None, argv0=None):
    argv = ([argv0, *map(str, args)] if argv0 else cli_argv(*args))
    if input is not None:
        stdin = None
    return subprocess.run(argv, stdin=stdin, input=input,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=_env(), timeout=120)


def ok(proc):
    """Success: exit 0 and nothing on stderr (no terminal, no --progress)."""
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b''
    return proc.stdout.decode()


def failed(proc, *words):
    """Exit 1, one stderr line with the error prefix, naming each word."""
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert 'Traceback' not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith('xenapinfs-vhd: error: '), err
    for word in words:
        assert word in lines[0], (word, err)
    return lines[0]


def info_json(src):
    return json.loads(ok(cli('info', '--json', src)))


def convert(tmp_path, src, *options, name='out.raw'):
    dst = tmp_path / name
    ok(cli('convert', src, dst, *options))
    return dst.read_bytes()


def qemu_convert(tmp_path, vhd, name='qemu.raw'):
    dst = tmp_path / name
    subprocess.run([QEMU, 'convert', '-f', 'vpc', '-O', 'raw', str(vhd),
                    str(dst)], check=True, timeout=60,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return dst.read_bytes()


def qemu_virtual_size(vhd):
    out = subprocess.run([QEMU, 'info', '-f', 'vpc', '--output=json',
                          str(vhd)], check=True, timeout=60,
                         stdout=subprocess.PIPE).stdout
    return json.loads(out)['virtual-size']


# -- images ------------------------------------------------------------------

def _tgz_bytes(files, **kw):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'x.tgz')
        vf.xenserver_tgz(path, files, **kw)
        with open(path, 'rb') as f:
            return f.read()


_STANDARD = {}


def standard(tmp_path, name='img.tgz'):
    """The factory's 3-layer chain as a tgz in tmp_path (built once)."""
    if not _STANDARD:
        files, expected, specs = vf.standard_chain(seed=11)
        _STANDARD.update(tgz=_tgz_bytes(files), files=files,
                         expected=expected, specs=specs)
    path = tmp_path / name
    path.write_bytes(_STANDARD['tgz'])
    return path, _STANDARD['expected']


def write_tgz(tmp_path, specs, name='img.tgz', **kw):
    files = vf.build_chain(specs, rnd=random.Random(len(specs)), **kw)
    path = tmp_path / name
    vf.xenserver_tgz(path, files)
    return path, vf.expected_disk(specs), files


def full_layer(rnd, size, fill=0.7):
    """Allocated blocks are whole: what qemu can read right."""
    return vf.random_layer(rnd, size, fill=fill, full_prob=1.0)


def zero_under_unset(spec):
    """The same layer with zeros in the data of every unset sector."""
    blocks = {}
    for idx, (sectors, data) in spec.blocks.items():
        if sectors is not None:
            buf = bytearray(len(data))
            for s in sectors:
                buf[s * SECTOR:(s + 1) * SECTOR] = \
                    data[s * SECTOR:(s + 1) * SECTOR]
            data = bytes(buf)
        blocks[idx] = (sectors, data)
    return vf.LayerSpec(spec.size, blocks, spec.block_size)


def aligned_layer(rnd, size, fill=0.7, full_prob=0.2, density=0.5):
    """Present sectors in 4 KiB-aligned runs: whole bitmap bytes only."""
    pages = BS // 4096
    blocks = {}
    for idx in range(-(-size // BS)):
        if rnd.random() >= fill:
            continue
        data = rnd.randbytes(BS)
        if rnd.random() < full_prob:
            blocks[idx] = (None, data)
            continue
        sectors = set()
        page = 0
        while page < pages:
            run = rnd.randint(1, 24)
            if rnd.random() < density:
                sectors.update(range(8 * page, 8 * min(pages, page + run)))
            page += run
        blocks[idx] = (sectors, data)
    return vf.LayerSpec(size, blocks)


# -- the command as a process ------------------------------------------------

def test_convert_info_check_as_a_process(tmp_path):
    src, expected = standard(tmp_path)
    assert mismatch(convert(tmp_path, src), expected) is None
    doc = info_json(src)
    assert doc['source'] == str(src)
    assert doc['virtual_size'] == len(expected)
    assert [la['name'] for la in doc['layers']] == [
        './0.vhd', './1.vhd', './2.vhd']
    text = ok(cli('info', src))
    assert './0.vhd' in text and '%d' % len(expected) in text
    assert ok(cli('check', src)).startswith('%s: valid, 3 layers' % src)
    assert ok(cli('check', '-q', src)) == ''
    assert sorted(os.listdir(tmp_path)) == ['img.tgz', 'out.raw']


@pytest.mark.skipif(SCRIPT is None,
                    reason='console script xenapinfs-vhd not installed '
                           '(pip install -e .)')
def test_installed_console_script(tmp_path):
    src, expected = standard(tmp_path)
    dst = tmp_path / 'out.raw'
    ok(cli('convert', src, dst, argv0=SCRIPT))
    assert mismatch(dst.read_bytes(), expected) is None
    assert ok(cli('check', src, argv0=SCRIPT)).startswith(str(src))
    doc = json.loads(ok(cli('info', '--json', src, argv0=SCRIPT)))
    assert doc['virtual_size'] == len(expected)
    assert ok(cli('--help', argv0=SCRIPT)).startswith('usage: xenapinfs-vhd')
    bad = tmp_path / 'bad.tgz'
    bad.write_bytes(b'not an image at all' * 100)
    failed(cli('check', bad, argv0=SCRIPT), str(bad))
    assert cli('convert', argv0=SCRIPT).returncode == 2


@pytest.mark.parametrize('argv, code', [
    ([], 2), (['convert', 'only-src'], 2), (['info', '--bogus', 'x'], 2),
    (['--help'], 0), (['convert', '--help'], 0), (['info', '--help'], 0),
    (['check', '--help'], 0),
])
def test_exit_codes_of_usage_and_help(argv, code):
    proc = cli(*argv)
    assert proc.returncode == code
    if code == 0:
        assert proc.stdout.startswith(b'usage: xenapinfs-vhd')
        assert proc.stderr == b''
    else:
        assert b'usage: xenapinfs-vhd' in proc.stderr
        assert b'Traceback' not in proc.stderr


def test_check_exit_status(tmp_path):
    src, _ = standard(tmp_path)
    assert cli('check', '-q', src).returncode == 0
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF            # deflate data or its CRC
    bad = tmp_path / 'bad.tgz'
    bad.write_bytes(bytes(data))
    proc = cli('check', bad)
    failed(proc, str(bad))
    assert proc.stdout == b''
    assert cli('check', '-q', bad).returncode == 1


# -- standard input ----------------------------------------------------------

def test_convert_from_stdin_file(tmp_path):
    src, expected = standard(tmp_path)
    dst = tmp_path / 'out.raw'
    with open(src, 'rb') as f:
        ok(cli('convert', '-', dst, stdin=f))
    assert mismatch(dst.read_bytes(), expected) is None


def test_convert_from_stdin_pipe(tmp_path):
    src, expected = standard(tmp_path)
    dst = tmp_path / 'out.raw'
    ok(cli('convert', '-', dst, input=src.read_bytes()))
    assert mismatch(dst.read_bytes(), expected) is None
    doc = json.loads(ok(cli('info', '--json', '-', input=src.read_bytes())))
    assert doc['source'] == '<stdin>'
    assert doc['virtual_size'] == len(expected)


# -- pipeline pitfalls (reference §2) ----------------------------------------

def test_pitfall_top_size_not_a_multiple_of_2mib(tmp_path):
    # vhd-util resize rounds the disk up to 2 MiB: 257 MiB came out 258.
    rnd = random.Random(21)
    top = vf.LayerSpec(257 * MiB, {
        1: (None, rnd.randbytes(BS)),
        128: (set(range(0, 2048, 3)) | {2047}, rnd.randbytes(BS))})
    base = vf.LayerSpec(256 * MiB, {
        0: (None, rnd.randbytes(BS)), 127: (None, rnd.randbytes(BS))})
    src, expected, _ = write_tgz(tmp_path, [top, base])
    data = convert(tmp_path, src)
    assert len(data) == 257 * MiB
    assert mismatch(data, expected) is None
    # The last sector of the disk is sector 2047 of block 128.
    assert data[-SECTOR:] == top.blocks[128][1][2047 * SECTOR:2048 * SECTOR]
    assert info_json(src)['virtual_size'] == 257 * MiB


def test_pitfall_top_size_not_a_multiple_of_1mib(tmp_path):
    # vhd-util query -v truncates to MiB: the tail of the disk was lost.
    rnd = random.Random(22)
    size = 9 * MiB + 7 * SECTOR
    tail = set(range(2048 - 16, 2048 + 7))        # around 9 MiB, block 4
    top = vf.LayerSpec(size, {4: (tail, rnd.randbytes(BS))})
    mid_size = 5 * MiB + 3 * SECTOR               # its own tail: block 2
    mid = vf.LayerSpec(mid_size, {
        2: (set(range(2048 - 5, 2048 + 3)), rnd.randbytes(BS))})
    base = vf.random_layer(rnd, 4 * MiB, fill=1.0, full_prob=1.0)
    src, expected, _ = write_tgz(tmp_path, [top, mid, base])
    data = convert(tmp_path, src)
    assert len(data) == size
    assert mismatch(data, expected) is None
    assert data[-7 * SECTOR:] == top.blocks[4][1][2048 * SECTOR:2055 * SECTOR]
    assert data[-7 * SECTOR:].strip(b'\0')
    at = 5 * MiB
    assert data[at:at + 3 * SECTOR] == \
        mid.blocks[2][1][2048 * SECTOR:2051 * SECTOR]


def test_pitfall_preallocated_bat_lvm_style(tmp_path):
    # vhd-util resize -j crashes on a BAT of 1 Mi entries.
    rnd = random.Random(23)
    specs = [vf.random_layer(rnd, s) for s in (7 * MiB, 6 * MiB, 6 * MiB)]
    src, expected, _ = write_tgz(tmp_path, specs, max_table_entries=1 << 20)
    assert mismatch(convert(tmp_path, src), expected) is None
    doc = info_json(src)
    assert [la['max_table_entries'] for la in doc['layers']] == [1 << 20] * 3
    assert [la['allocated_blocks'] for la in doc['layers']] == [
        len(s.blocks) for s in specs]


def test_pitfall_exit_status_of_a_broken_image(tmp_path):
    # The published pipeline has no set -e: a failure went unnoticed.
    src, _ = standard(tmp_path)
    whole = src.read_bytes()
    src.write_bytes(whole[:len(whole) // 2])
    dst = tmp_path / 'out.raw'
    proc = cli('convert', src, dst)
    assert proc.returncode != 0
    failed(proc, str(src), 'truncated')
    assert proc.stdout == b''
    assert not dst.exists()
    assert os.listdir(tmp_path) == ['img.tgz']     # no temporary left
    dst.write_bytes(b'old disk')
    failed(cli('convert', src, dst), str(src))
    assert dst.read_bytes() == b'old disk'
    shell = subprocess.run(
        ['sh', '-c', 'set -e; "$@"; echo reached', 'sh',
         *cli_argv('convert', src, tmp_path / 'x.raw')],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
        timeout=60)
    assert shell.returncode == 1 and b'reached' not in shell.stdout


# -- qemu-img as referee -----------------------------------------------------

@needs_qemu
@pytest.mark.parametrize('kind', ['full bitmaps', 'zeros under unset bits'])
def test_qemu_agrees_on_a_dynamic_vhd(tmp_path, kind):
    rnd = random.Random(31)
    size = 9 * MiB + 3 * SECTOR
    if kind == 'full bitmaps':
        spec = full_layer(rnd, size)
    else:
        spec = zero_under_unset(vf.random_layer(rnd, size, fill=0.8))
        assert any(s is not None for s, _ in spec.blocks.values())
    vhd = tmp_path / 'disk.vhd'
    vhd.write_bytes(vf.build_chain([spec], order='random', rnd=rnd)[0])
    ours = convert(tmp_path, vhd)
    assert mismatch(ours, vf.expected_disk([spec])) is None
    assert mismatch(qemu_convert(tmp_path, vhd), ours) is None
    assert qemu_virtual_size(vhd) == info_json(vhd)['virtual_size'] == size


@needs_qemu
def test_qemu_agrees_on_a_fixed_vhd(tmp_path):
    rnd = random.Random(32)
    raw = rnd.randbytes(3 * MiB) + bytes(MiB) + rnd.randbytes(5 * SECTOR)
    buf = io.BytesIO()
    writer.write_fixed(buf, raw)
    vhd = tmp_path / 'fixed.vhd'
    vhd.write_bytes(buf.getvalue())
    ours = convert(tmp_path, vhd)
    assert mismatch(ours, raw) is None
    assert mismatch(qemu_convert(tmp_path, vhd), ours) is None
    assert qemu_virtual_size(vhd) == info_json(vhd)['virtual_size'] == \
        len(raw)


@needs_qemu
def test_fixed_vhd_from_standard_input(tmp_path):
    # Its only footer comes last: read from a pipe, it is found there.
    rnd = random.Random(34)
    raw = rnd.randbytes(2 * MiB) + bytes(3 * MiB) + rnd.randbytes(SECTOR)
    buf = io.BytesIO()
    writer.write_fixed(buf, raw)
    vhd = tmp_path / 'fixed.vhd'
    vhd.write_bytes(buf.getvalue())
    out = tmp_path / 'piped.raw'
    with open(vhd, 'rb') as f:
        ok(cli('convert', '-', out, stdin=f))
    assert mismatch(out.read_bytes(), qemu_convert(tmp_path, vhd)) is None
    # Not a VHD at all: refused once its end shows no footer.
    failed(cli('convert', '-', tmp_path / 'no.raw', input=raw),
           '<stdin>', 'conectix')
    assert not (tmp_path / 'no.raw').exists()


@needs_qemu
def test_qemu_pitfall_differencing_disk_without_its_parent(tmp_path):
    # qemu opens 0.vhd as if it were dynamic: no parent, no bitmaps.
    rnd = random.Random(33)
    top = vf.random_layer(rnd, 6 * MiB, fill=0.7, full_prob=0.3)
    base = full_layer(rnd, 6 * MiB, fill=1.0)
    src, expected, files = write_tgz(tmp_path, [top, base])
    leaf = tmp_path / '0.vhd'
    leaf.write_bytes(files[0])
    theirs = qemu_convert(tmp_path, leaf)
    ours = convert(tmp_path, src)
    assert mismatch(ours, expected) is None
    assert theirs != ours
    assert len(theirs) == len(ours)
    # What qemu gives: the leaf's allocated blocks whole, zeros elsewhere.
    whole = vf.LayerSpec(top.size, {i: (None, d)
                                    for i, (_, d) in top.blocks.items()})
    assert mismatch(theirs, vf.expected_disk([whole])) is None
    # We refuse the leaf alone instead of writing a wrong disk.
    failed(cli('convert', leaf, tmp_path / 'leaf.raw'), str(leaf),
           'differencing')


# -- libvhdi as referee ------------------------------------------------------

def libvhdi_read(paths, size, piece=None):
    """Open the chain top to base with pyvhdi and read the top."""
    handles = []
    try:
        for path in paths:
            h = pyvhdi.file()
            h.open(str(path))
            handles.append(h)
        for child, parent in zip(handles, handles[1:]):
            child.set_parent(parent)
        top = handles[0]
        assert top.get_media_size() == size
        if piece is None:
            return top.read_buffer_at_offset(size, 0)
        return b''.join(top.read_buffer_at_offset(min(piece, size - off),
                                                  off)
                        for off in range(0, size, piece))
    finally:
        for h in handles:
            h.close()


@needs_libvhdi
@pytest.mark.parametrize('depth, size, order, piece', [
    (2, 6 * MiB, 'index', None),
    (2, 7 * MiB + 12 * 1024, 'random', 1 << 20),
    (3, 8 * MiB, 'reverse', None),
    (3, 5 * MiB + 4096, 'random', 3 * 4096 + 1024),
])
def test_libvhdi_agrees_on_a_chain(tmp_path, depth, size, order, piece):
    rnd = random.Random(40 + depth + size)
    specs = [aligned_layer(rnd, size, fill=0.5 if i else 0.7)
             for i in range(depth)]
    src, expected, files = write_tgz(tmp_path, specs, order=order)
    paths = []
    for i, data in enumerate(files):
        paths.append(tmp_path / ('%d.vhd' % i))
        paths[-1].write_bytes(data)
    ours = convert(tmp_path, src)
    assert mismatch(ours, expected) is None
    # The older layers matter: the top alone is not the disk.
    assert vf.expected_disk(specs[:1]) != expected
    assert mismatch(libvhdi_read(paths, size, piece), ours) is None


# -- progress ----------------------------------------------------------------

def _slow_convert(tmp_path, src, stderr, *options, pause=1.3):
    """Feed the image on stdin with a pause, so conversion takes > 1 s."""
    data = src.read_bytes()
    dst = tmp_path / 'out.raw'
    proc = subprocess.Popen(cli_argv('convert', '-', dst, *options),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=stderr, env=_env())
    try:
        cut = len(data) // 4
        proc.stdin.write(data[:cut])
        proc.stdin.flush()
        time.sleep(pause)
        proc.stdin.write(data[cut:])
        proc.stdin.close()
        out = proc.stdout.read()
        err = proc.stderr.read() if proc.stderr else None
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rc, out, err, dst.read_bytes()


def _on_a_terminal(tmp_path, src, *options):
    master, slave = pty.openpty()
    chunks = []

    def drain():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:             # EIO: every slave end is closed
                return
            if not data:
                return
            chunks.append(data)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        result = _slow_convert(tmp_path, src, slave, *options)
    finally:
        os.close(slave)
    reader.join(10)
    os.close(master)
    return result, b''.join(chunks).decode()


@pytest.mark.parametrize('options, drawn', [([], True),
                                            (['--no-progress'], False)])
def test_progress_on_a_terminal(tmp_path, options, drawn):
    src, expected = standard(tmp_path)
    (rc, out, _, disk), err = _on_a_terminal(tmp_path, src, *options)
    assert (rc, out) == (0, b'')
    assert mismatch(disk, expected) is None
    if drawn:
        assert err.startswith('\r') and ' read ' in err and '/s' in err
        assert err.endswith('\x1b[K\r\x1b[K')
    else:
        assert err == ''


@pytest.mark.parametrize('options, drawn', [([], False),
                                            (['--progress'], True)])
def test_progress_not_a_terminal(tmp_path, options, drawn):
    src, expected = standard(tmp_path)
    rc, out, err, disk = _slow_convert(tmp_path, src, subprocess.PIPE,
                                       *options)
    assert (rc, out) == (0, b'')
    assert mismatch(disk, expected) is None
    if drawn:
        assert err.startswith(b'\r') and err.endswith(b'\x1b[K\r\x1b[K')
    else:
        assert err == b''


# -- pack: a raw disk to a XenServer image -----------------------------------

def raw_disk(path, size, seed):
    """A sparse raw disk: random blocks, one-byte blocks, written zeros."""
    rnd = random.Random(seed)
    disk = bytearray(size)
    with open(path, 'wb') as f:
        f.truncate(size)
        for idx in range(-(-size // BS)):
            at = idx * BS
            room = min(BS, size - at)
            kind = rnd.randrange(4)
            if kind == 0:
                data = rnd.randbytes(room)
            elif kind == 1:
                at += rnd.randrange(room)
                data = b'\x5a'
            elif kind == 2:
                data = bytes(room)
            else:
                continue
            os.pwrite(f.fileno(), data, at)
            disk[at:at + len(data)] = data
    return bytes(disk)


def stored_blocks(disk):
    return sum(1 for at in range(0, len(disk), BS)
               if disk[at:at + BS].strip(b'\0'))


@pytest.mark.parametrize('size', [12 * MiB, 9 * MiB + 5 * SECTOR])
def test_pack_then_convert_as_processes(tmp_path, size):
    src = tmp_path / 'disk.raw'
    disk = raw_disk(src, size, size)
    before = src.read_bytes()
    image = tmp_path / 'image.tgz'
    assert ok(cli('pack', src, image)) == ''
    assert src.read_bytes() == before
    assert mismatch(convert(tmp_path, image), disk) is None
    doc = info_json(image)
    assert doc['container'] == 'tgz'
    assert doc['virtual_size'] == size
    assert doc['warnings'] == []
    [layer] = doc['layers']
    assert layer['name'] == '0.vhd'
    assert (layer['type'], layer['creator'], layer['creator_version'],
            layer['hidden'], layer['batmap']) == (
                'dynamic', 'tap', '1.3', False, 'valid')
    assert layer['allocated_blocks'] == stored_blocks(disk)
    assert ok(cli('check', image)).startswith('%s: valid, 1 layer' % image)
    assert sorted(os.listdir(tmp_path)) == ['disk.raw', 'image.tgz',
                                            'out.raw']


@needs_qemu
def test_pack_read_back_by_tar_and_qemu(tmp_path):
    # GNU tar extracts 0.vhd and qemu-img reads it: neither is ours.
    size = 10 * MiB + 3 * SECTOR
    src = tmp_path / 'disk.raw'
    disk = raw_disk(src, size, 51)
    image = tmp_path / 'image.tgz'
    ok(cli('pack', '--level', '6', src, image))
    listing = subprocess.run(['tar', '-tvzf', str(image)], check=True,
                             stdout=subprocess.PIPE, timeout=60).stdout
    assert listing.decode().split()[-1] == '0.vhd'
    assert len(listing.splitlines()) == 1
    extracted = tmp_path / 'x'
    extracted.mkdir()
    subprocess.run(['tar', '-xzf', str(image), '-C', str(extracted)],
                   check=True, timeout=60)
    assert os.listdir(extracted) == ['0.vhd']
    vhd = extracted / '0.vhd'
    assert mismatch(qemu_convert(tmp_path, vhd), disk) is None
    assert qemu_virtual_size(vhd) == size


@needs_qemu
def test_pack_bare_vhd_read_by_qemu(tmp_path):
    size = 14 * MiB
    src = tmp_path / 'disk.raw'
    disk = raw_disk(src, size, 52)
    vhd = tmp_path / 'disk.vhd'
    ok(cli('pack', '--vhd', src, vhd))
    assert mismatch(qemu_convert(tmp_path, vhd), disk) is None
    assert qemu_virtual_size(vhd) == size
    assert mismatch(convert(tmp_path, vhd), disk) is None
    assert info_json(vhd)['layers'][0]['allocated_blocks'] == \
        stored_blocks(disk)


@needs_libvhdi
def test_pack_bare_vhd_read_by_libvhdi(tmp_path):
    size = 8 * MiB
    src = tmp_path / 'disk.raw'
    disk = raw_disk(src, size, 53)
    vhd = tmp_path / 'disk.vhd'
    ok(cli('pack', '--vhd', src, vhd))
    assert mismatch(libvhdi_read([vhd], size, piece=MiB), disk) is None


def test_pack_errors_as_a_process(tmp_path):
    src = tmp_path / 'disk.raw'
    raw_disk(src, 4 * MiB, 54)
    before = src.read_bytes()
    failed(cli('pack', tmp_path / 'none.raw', tmp_path / 'x.tgz'),
           str(tmp_path / 'none.raw'), 'No such file')
    failed(cli('pack', src, src), str(src), 'is the input file')
    failed(cli('pack', '-', tmp_path / 'x.tgz', input=before),
           'standard input')
    failed(cli('pack', tmp_path, tmp_path / 'x.tgz'), 'is a directory')
    failed(cli('pack', src, tmp_path / 'no' / 'x.tgz'), 'cannot create')
    assert src.read_bytes() == before
    assert os.listdir(tmp_path) == ['disk.raw']
    for argv in (['--level', '0'], ['--level', '10'],
                 ['--vhd', '--level', '1']):
        proc = cli('pack', *argv, src, tmp_path / 'x.tgz')
        assert proc.returncode == 2
        assert b'usage: xenapinfs-vhd pack' in proc.stderr
    assert ok(cli('pack', '--help')).startswith('usage: xenapinfs-vhd pack')
    assert os.listdir(tmp_path) == ['disk.raw']
