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
"""Benchmark the one-pass conversion of a XenServer image to a raw disk.

It generates a 3-layer chain (a 1 GiB dynamic base with ~400 MiB of data,
two differencing children with ~50 MiB each, the top grown by 64 MiB), as
a XenServer image (tar.gz of ./0.vhd ./1.vhd ./2.vhd), and the same data
with a 1 TiB virtual size. It then times, on the same files, with a warm
page cache:

* our convert (the ``xenapinfs-vhd convert`` command, in a subprocess, so
  that its wall time and peak RSS are its own);
* the reference: ``tar -xzf`` then ``qemu-img convert`` of the base, the
  steps of the published vhd-util pipeline that exist without vhd-util;
* bare decompression of the same file: ``gzip -dc`` and the Python
  zlib, isal and zlib-ng inflaters, each a command of its own as well.

The 1 GiB output is compared with the disk computed here by a plain
overlay, independently of the library. The ratios against the goals come
last. The exit status is 0 whether the goals are met or not; it is 1 when
the output is wrong or a step fails.
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import errno
import importlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

try:
    import xenapinfs_driver
except ImportError:
    # Run from a checkout without installing: use the package next door.
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    import xenapinfs_driver
from xenapinfs_driver import vhd
from xenapinfs_driver.vhd import writer

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
SECTOR = 512
BS = writer.DEFAULT_BLOCK
SPB = BS // SECTOR

# The shape of the chain, that of the reference baseline: the base's size,
# how much the top grew over its parents, and the blocks of data each layer
# holds.
BASE_SIZE = 1 * GiB
GROWTH = 64 * MiB
BASE_BLOCKS = 200               # 400 MiB
CHILD_BLOCKS = 25               # 50 MiB per child
GROWN_BLOCKS = 4                # of the top's, in the grown range
PARTIAL_SHARE = 0.3             # of the children's blocks

# Block contents: most blocks are a slice of a random pool (which deflate
# cannot shrink: its window is 32 KiB, far smaller than the pool), one in
# TEXT_SHARE is compressible text, the way files of already compressed data
# and plain text sit in their own extents on a real disk. gzip then stores
# most deflate blocks, as in the published baseline.
POOL_SIZE = 64 * MiB
TEXT_SHARE = 8

READ_SIZE = 256 * KiB           # as the library reads its input
CHUNK = 1 * MiB                 # as the library inflates it
SEED = 20240601

# Rows of the table that the ratios use.
OURS = 'ours, 1 GiB image'
OURS_ZLIB = 'ours, 1 GiB, XENAPINFS_VHD_ZLIB=zlib'
OURS_TIB = 'ours, 1 TiB image'
REFERENCE = 'tar -xzf + qemu-img convert'
QEMU = 'qemu-img convert 2.vhd'
DECOMPRESSION = ('gzip -dc > /dev/null', 'python zlib', 'python isal',
                 'python zlib-ng')

GOAL_VS_REFERENCE = 6.0
AIM_VS_REFERENCE = 8.0
GOAL_VS_INFLATE = 2.0
GOAL_SIZE_INDEPENDENT = 1.1
GOAL_RSS_MIB = 100


class BenchError(Exception):
    """A step failed or the output is wrong: the run is not valid."""


# -- the chain ----------------------------------------------------------------

@dataclasses.dataclass
class LayerPlan:
    """One VHD of the chain: n of n.vhd (0 is the newest) and its blocks.

    blocks maps a block index to its present sectors, as a list of
    (first, end) runs, or None when the whole block is present.
    """

    number: int
    size: int
    blocks: dict
    order: list
    unique_id: bytes

    @property
    def name(self) -> str:
        return '%d.vhd' % self.number


def plan_chain(rnd: random.Random) -> list:
    """The 1 GiB chain, newest first."""
    nblocks = BASE_SIZE // BS
    grown = GROWTH // BS
    base = dict.fromkeys(rnd.sample(range(nblocks), BASE_BLOCKS))
    middle = {idx: _maybe_partial(rnd)
              for idx in rnd.sample(range(nblocks), CHILD_BLOCKS)}
    top_keys = (rnd.sample(range(nblocks), CHILD_BLOCKS - GROWN_BLOCKS)
                + rnd.sample(range(nblocks, nblocks + grown), GROWN_BLOCKS))
    top = {idx: _maybe_partial(rnd) for idx in top_keys}
    layers = []
    for number, (size, blocks) in enumerate(
            [(BASE_SIZE + GROWTH, top), (BASE_SIZE, middle),
             (BASE_SIZE, base)]):
        # blktap allocates blocks as the guest writes them: the physical
        # order is not the index order.
        order = sorted(blocks)
        rnd.shuffle(order)
        layers.append(LayerPlan(number, size, blocks, order,
                                rnd.randbytes(16)))
    return layers


def _maybe_partial(rnd: random.Random):
    """None (a full block) or runs of sectors, as file systems write."""
    if rnd.random() >= PARTIAL_SHARE:
        return None
    runs = []
    first = 0
    while first < SPB:
        end = min(SPB, first + rnd.randint(1, 64))
        if rnd.random() < 0.6:
            runs.append((first, end))
        first = end
    return runs or [(0, 1)]


def resized(layers: list, base_size: int) -> list:
    """The same blocks in a chain whose base is base_size bytes."""
    return [dataclasses.replace(layer, size=layer.size - BASE_SIZE
                                + base_size) for layer in layers]


class BlockData:
    """The contents of every block, reproducible from the layer and index."""

    def __init__(self, seed: int):
        self.pool = random.Random(seed).randbytes(POOL_SIZE)

    def get(self, number: int, idx: int) -> bytes:
        pick = random.Random((number << 32) | idx)
        if pick.randrange(TEXT_SHARE) == 0:
            words = b' '.join(b'%d.vhd:%06d:%d' % (number, idx, i)
                              for i in range(BS // 16))
            return (words * 2)[:BS]
        start = pick.randrange(POOL_SIZE - BS)
        return self.pool[start:start + BS]


class LazyBlocks(collections.abc.Mapping):
    """What writer.write_dynamic wants, made one block at a time.

    The whole layer never sits in memory: each block is generated when
    the writer asks for it.
    """

    def __init__(self, layer: LayerPlan, data: BlockData):
        self.layer = layer
        self.data = data

    def __getitem__(self, idx: int):
        runs = self.layer.blocks[idx]
        bitmap = None
        if runs is not None:
            bitmap = writer.bitmap_of(s for first, end in runs
                                      for s in range(first, end))
        return bitmap, self.data.get(self.layer.number, idx)

    def __iter__(self):
        return iter(self.layer.blocks)

    def __len__(self) -> int:
        return len(self.layer.blocks)


def expected_block(layers: list, data: BlockData, idx: int) -> bytes:
    """Block idx of the disk: base first, each newer layer on top."""
    out = bytearray(BS)
    for layer in reversed(layers):
        if idx not in layer.blocks:
            continue
        block = data.get(layer.number, idx)
        runs = layer.blocks[idx] or [(0, SPB)]
        for first, end in runs:
            out[first * SECTOR:end * SECTOR] = \
                block[first * SECTOR:end * SECTOR]
    return bytes(out)


def data_end(layers: list) -> int:
    """The end of the last block any layer holds."""
    return BS * (1 + max(max(layer.blocks) for layer in layers))


def write_image(path: str, layers: list, data: BlockData,
                scratch: str) -> tuple:
    """Start writing the chain as a XenServer image: a tar.gz of 0..n.vhd.

    The tar is written here; it is compressed by gzip(1) at its default
    level, in the background, as ``tar czf`` in dom0 does. isal's fast
    levels would be quicker but code incompressible data as literals
    instead of storing it, which makes the file several times slower to
    inflate than a real XenServer export. Return the tar's size and the
    gzip process, to be waited for with finish_image().
    """
    files = []
    tar_path = path + '.tar'
    try:
        for pos, layer in enumerate(layers):
            parent = None
            if pos + 1 < len(layers):
                up = layers[pos + 1]
                parent = writer.Parent(up.unique_id, up.name, 0,
                                       writer.xenserver_locators(up.name))
            files.append(os.path.join(scratch, layer.name))
            with open(files[-1], 'wb') as f:
                writer.write_dynamic(
                    f, layer.size, LazyBlocks(layer, data),
                    order=layer.order, parent=parent, hidden=pos > 0,
                    unique_id=layer.unique_id)
        with tarfile.open(tar_path, mode='w',
                          format=tarfile.GNU_FORMAT) as tf:
            tf.add(scratch, arcname='.', recursive=False)
            for name in files:
                tf.add(name, arcname='./' + os.path.basename(name))
    finally:
        for name in files:
            remove(name)
    with open(tar_path, 'rb') as src, open(path, 'wb') as dst:
        proc = subprocess.Popen(['gzip', '-c'], stdin=src, stdout=dst)
    return os.path.getsize(tar_path), proc


def finish_image(path: str, proc) -> None:
    try:
        if proc.wait():
            raise BenchError('gzip failed with status %d on %s'
                             % (proc.returncode, path))
    finally:
        remove(path + '.tar')


# -- checks -------------------------------------------------------------------

def verify(path: str, layers: list, data: BlockData) -> str:
    """Fail unless the raw disk at path is the one the chain holds."""
    size = layers[0].size
    actual = os.path.getsize(path)
    if actual != size:
        raise BenchError('%s holds %d bytes, 0.vhd says %d'
                         % (path, actual, size))
    end = data_end(layers)
    with open(path, 'rb') as f:
        for idx in range(end // BS):
            got = f.read(BS)
            want = expected_block(layers, data, idx)
            if got != want:
                sector = next(s for s in range(SPB)
                              if got[s * SECTOR:(s + 1) * SECTOR]
                              != want[s * SECTOR:(s + 1) * SECTOR])
                holders = [layer.name for layer in layers
                           if idx in layer.blocks]
                raise BenchError(
                    'WRONG OUTPUT: block %d sector %d (disk offset %d) '
                    'differs from the expected disk (layers holding the '
                    'block: %s)' % (idx, sector, idx * BS + sector * SECTOR,
                                    ', '.join(holders) or 'none'))
        return _check_zero_tail(f, end, size)


def _check_zero_tail(f, start: int, size: int,
                     budget: int = 256 * MiB) -> str:
    """Check that the disk past the data is zero, reading only extents."""
    fd = f.fileno()
    pos = start
    while pos < size:
        try:
            pos = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            if exc.errno == errno.EINVAL:
                return 'tail not checked (no SEEK_DATA here)'
            raise
        stop = os.lseek(fd, pos, os.SEEK_HOLE)
        if stop - pos > budget:
            return 'tail not checked (the file system reports no holes)'
        budget -= stop - pos
        f.seek(pos)
        while pos < stop:
            piece = f.read(min(CHUNK, stop - pos))
            if piece.strip(b'\0'):
                raise BenchError('WRONG OUTPUT: data at offset %d, past '
                                 'the last block of the chain' % pos)
            pos += len(piece)
    return 'tail all zero'


# -- measuring ----------------------------------------------------------------

@dataclasses.dataclass
class Sample:
    seconds: float
    maxrss: int | None = None        # bytes


# Linux counts the memory of the process that execs into a command in the
# command's peak RSS, so a command started straight from this (large)
# process would report at least our size. A small launcher starts each
# command instead, and times it without its own start-up. It ignores ^C
# (the command, in the same process group, gets it too) so that it always
# reaps the command, and without a traceback.
LAUNCHER = """\
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
start = time.perf_counter()
pid = os.posix_spawnp(sys.argv[1], sys.argv[1:], os.environ, file_actions=[
    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)],
    setsigdef=[signal.SIGINT])
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - start, usage.ru_maxrss,
      os.waitstatus_to_exitcode(status))
"""


def run(argv: list, env=None) -> Sample:
    """Run a command, output to /dev/null: its wall time and peak RSS."""
    proc = subprocess.run([sys.executable, '-I', '-S', '-c', LAUNCHER]
                          + argv, env=env, stdout=subprocess.PIPE)
    if proc.returncode:
        raise BenchError('cannot run %s' % ' '.join(argv))
    seconds, maxrss, status = proc.stdout.split()
    if int(status):
        raise BenchError('%s exited with status %d'
                         % (' '.join(argv), int(status)))
    return Sample(float(seconds), int(maxrss) * KiB)   # KiB on Linux


# Bare decompression as a command of its own, like ours: the interpreter
# starts, imports one inflater and inflates the file in the pieces the
# library uses, nothing else. Timing it in this process instead would
# leave out the start-up that our command pays.
INFLATE = """
import sys, importlib
dec = importlib.import_module(sys.argv[1]).decompressobj(31)
with open(sys.argv[2], 'rb', buffering=0) as f:
    for buf in iter(lambda: f.read(%d), b''):
        while True:
            out = dec.decompress(buf, %d)
            buf = dec.unconsumed_tail
            if not buf and len(out) < %d:
                break
sys.exit(0 if dec.eof else 1)
""" % (READ_SIZE, CHUNK, CHUNK)


def inflate(path: str, module: str) -> Sample:
    """Inflate a gzip file bare, in a command of its own."""
    return run([sys.executable, '-c', INFLATE, module, path])


def inflaters() -> dict:
    """The Python inflaters installed: row name to module name."""
    found = {'python zlib': 'zlib'}
    for name, module in (('python isal', 'isal.isal_zlib'),
                         ('python zlib-ng', 'zlib_ng.zlib_ng')):
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        found[name] = module
    return found


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def warm(path: str) -> None:
    """Read a file once so that every run finds it in the page cache."""
    with open(path, 'rb', buffering=0) as f:
        while f.read(8 * MiB):
            pass


class Samples:
    """The timings of each step by name, and their summaries; the scratch
    directory ``workdir``, and the environment of the timed commands."""

    def __init__(self, workdir: str, repeat: int):
        self.samples = collections.defaultdict(list)
        self.workdir = workdir
        self.repeat = repeat
        self.sizes = {}
        self.notes = []
        self.env = child_env()

    def path(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    def log(self, text: str) -> None:
        sys.stderr.write(text + '\n')
        sys.stderr.flush()

    def add(self, name: str, sample: Sample) -> None:
        self.samples[name].append(sample)
        self.log('  %-36s %7.2f s' % (name, sample.seconds))

    def median(self, name: str) -> float | None:
        if name not in self.samples:
            return None
        return statistics.median(s.seconds for s in self.samples[name])

    def peak(self, name: str) -> int | None:
        rss = [s.maxrss for s in self.samples.get(name, ())
               if s.maxrss is not None]
        return max(rss) if rss else None


class Bench(Samples):
    def __init__(self, workdir: str, repeat: int):
        super().__init__(workdir, repeat)
        self.out = os.path.join(workdir, 'out.raw')

    # -- the steps ---------------------------------------------------------

    def ours(self, image: str, size: int, env=None) -> Sample:
        argv = [sys.executable, '-m', 'xenapinfs_driver.cmd.vhd', 'convert',
                image, self.out, '--no-progress']
        try:
            sample = run(argv, env=env or self.env)
            actual = os.path.getsize(self.out)
            if actual != size:
                raise BenchError('WRONG OUTPUT: %d bytes, 0.vhd says %d'
                                 % (actual, size))
            return sample
        finally:
            remove(self.out)

    def reference(self, image: str) -> tuple:
        extracted = self.path('extracted')
        shutil.rmtree(extracted, ignore_errors=True)
        os.mkdir(extracted)
        try:
            untar = run(['tar', '-xzf', image, '-C', extracted])
            qemu = run(['qemu-img', 'convert', '-f', 'vpc', '-O', 'raw',
                        os.path.join(extracted, '2.vhd'), self.out])
            return untar, qemu
        finally:
            shutil.rmtree(extracted, ignore_errors=True)
            remove(self.out)

    def measure(self, image_gib: str, image_tib: str, sizes: tuple) -> None:
        floor = run(['true']).maxrss
        self.notes.append('peak RSS includes the launcher\'s %s'
                          % _mib(floor))
        have_qemu = shutil.which('qemu-img') is not None
        if not have_qemu:
            self.notes.append('qemu-img is not installed: no reference')
        forced = dict(self.env, XENAPINFS_VHD_ZLIB='zlib')
        # Round robin, so that drift on the machine hits every case alike.
        for rep in range(1, self.repeat + 1):
            self.log('run %d of %d' % (rep, self.repeat))
            self.add(OURS, self.ours(image_gib, sizes[0]))
            self.add(OURS_ZLIB, self.ours(image_gib, sizes[0], forced))
            self.add(OURS_TIB, self.ours(image_tib, sizes[1]))
            if have_qemu:
                untar, qemu = self.reference(image_gib)
                self.add('tar -xzf', untar)
                self.add(QEMU, qemu)
                self.add(REFERENCE, Sample(untar.seconds + qemu.seconds,
                                           max(untar.maxrss, qemu.maxrss)))
            self.add(DECOMPRESSION[0], run(['gzip', '-dc', image_gib]))
            for name, module in inflaters().items():
                self.add(name, inflate(image_gib, module))


# -- report -------------------------------------------------------------------

def report(bench: Bench, info: dict) -> None:
    print()
    print('image: %s; %s compressed, %s of tar' % (
        info['shape'], _mib(info['tgz_size']), _mib(info['tar_size'])))
    print('1 TiB image: the same blocks, a %d-byte disk; %s compressed'
          % (info['size_tib'], _mib(info['tgz_tib_size'])))
    print('our inflater: %s; generation took %.0f s (not measured); '
          'median of %d warm runs' % (info['inflater'], info['generation'],
                                      bench.repeat))
    for note in bench.notes:
        print('note: %s' % note)
    print()
    head = '%-38s %9s %9s %10s %9s' % (
        'step', 'median', 'best', 'tgz MiB/s', 'peak RSS')
    print(head)
    print('-' * len(head))
    for name, samples in bench.samples.items():
        median = bench.median(name)
        # How fast the compressed image goes through; qemu-img reads the
        # extracted base instead.
        rate = '-'
        if name != QEMU:
            size = info['tgz_tib_size' if name == OURS_TIB else 'tgz_size']
            rate = '%.0f' % (size / MiB / median)
        peak = bench.peak(name)
        print('%-38s %7.2f s %7.2f s %10s %9s' % (
            name, median, min(s.seconds for s in samples), rate,
            '-' if peak is None else _mib(peak)))
    print()
    for name, value, goal, ok in ratios(bench):
        print('%-30s %8s   goal %-26s %s' % (
            name, value, goal, 'n/a' if ok is None else
            'PASS' if ok else 'MISS'))


def ratios(bench: Bench) -> list:
    """(what, value, goal, met) of each goal."""
    ours = bench.median(OURS)
    lines = []
    goal = '>= %gx (aim %gx)' % (GOAL_VS_REFERENCE, AIM_VS_REFERENCE)
    ref = bench.median(REFERENCE)
    if ref is None:
        lines.append(('ratio tar+qemu-img / ours', 'n/a', goal, None))
    else:
        lines.append(('ratio tar+qemu-img / ours', '%.1fx' % (ref / ours),
                      goal, ref / ours >= GOAL_VS_REFERENCE))
    fastest = min((n for n in DECOMPRESSION if n in bench.samples),
                  key=bench.median)
    ratio = ours / bench.median(fastest)
    lines.append(('ours / fastest decompression', '%.2fx' % ratio,
                  '<= %gx (%s)' % (GOAL_VS_INFLATE, fastest),
                  ratio <= GOAL_VS_INFLATE))
    ratio = bench.median(OURS_TIB) / ours
    lines.append(('ours 1 TiB / ours 1 GiB', '%.2fx' % ratio,
                  '<= %gx' % GOAL_SIZE_INDEPENDENT,
                  ratio <= GOAL_SIZE_INDEPENDENT))
    peak = max(bench.peak(n) for n in (OURS, OURS_ZLIB, OURS_TIB))
    lines.append(('peak RSS of ours', _mib(peak), '< %d MiB' % GOAL_RSS_MIB,
                  peak < GOAL_RSS_MIB * MiB))
    return lines


def _mib(n: int) -> str:
    return '%.0f MiB' % (n / MiB)


# -- main ---------------------------------------------------------------------

def prepare(bench: Bench) -> tuple:
    """Generate both images; check our output once; return what to show."""
    start = time.perf_counter()
    rnd = random.Random(SEED)
    layers = plan_chain(rnd)
    layers_tib = resized(layers, TiB)
    data = BlockData(SEED)
    image_gib = bench.path('image-1g.tgz')
    image_tib = bench.path('image-1t.tgz')
    scratch = bench.path('layers')
    os.mkdir(scratch)
    bench.log('generating %s' % image_gib)
    tar_size, gzip_gib = write_image(image_gib, layers, data, scratch)
    bench.log('generating %s' % image_tib)
    try:
        _, gzip_tib = write_image(image_tib, layers_tib, data, scratch)
    finally:
        finish_image(image_gib, gzip_gib)
    finish_image(image_tib, gzip_tib)
    os.rmdir(scratch)
    generation = time.perf_counter() - start

    # The check runs through the library's API, which also tells which
    # inflater the command picks by default.
    inflater = None
    for image, chain in ((image_gib, layers), (image_tib, layers_tib)):
        bench.log('checking the output of %s' % image)
        try:
            result = vhd.convert(image, bench.out)
            status = verify(bench.out, chain, data)
        finally:
            remove(bench.out)
        for warning in result.warnings:
            bench.notes.append('%s: warning: %s' % (image, warning))
        inflater = inflater or result.inflater
        bench.log('  the output is the expected disk (%s)' % status)
    for image in (image_gib, image_tib):
        warm(image)

    shape = ', '.join('%s %s with %s of blocks' % (
        layer.name, _mib(layer.size), _mib(len(layer.blocks) * BS))
        for layer in layers)
    info = dict(shape=shape, inflater=inflater, generation=generation,
                tgz_size=os.path.getsize(image_gib),
                tgz_tib_size=os.path.getsize(image_tib), tar_size=tar_size,
                size_tib=layers_tib[0].size)
    return image_gib, image_tib, (layers[0].size, layers_tib[0].size), info


def parse_args(argv, doc: str, repeat: int, scratch: str):
    """The options every benchmark here takes."""
    parser = argparse.ArgumentParser(description=doc.split('\n')[0])
    parser.add_argument('--repeat', type=int, default=repeat,
                        help='timed runs of each step; the median is shown '
                             '(default: %d)' % repeat)
    parser.add_argument('--workdir', default=None,
                        help='where to create the scratch directory, about '
                             '%s (default: the system temporary '
                             'directory)' % scratch)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error('--repeat must be at least 1')
    return args


def child_env() -> dict:
    """The environment of a timed command: it runs the code this script
    imported, and picks its compressor or inflater itself."""
    package_root = os.path.dirname(os.path.dirname(
        os.path.abspath(xenapinfs_driver.__file__)))
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [package_root] + [p for p in [os.environ.get('PYTHONPATH')] if p])
    env.pop('XENAPINFS_VHD_ZLIB', None)
    return env


def in_workdir(name: str, parent: str | None, body) -> int:
    """Run ``body(workdir)`` in a new scratch directory under ``parent``,
    removed afterwards: the exit status, 1 for a BenchError (printed as
    ``name: error``) and 130 for Ctrl-C."""
    workdir = tempfile.mkdtemp(prefix=name.replace('_', '-') + '-',
                               dir=parent)
    try:
        body(workdir)
        return 0
    except BenchError as exc:
        sys.stderr.write('%s: %s\n' % (name, exc))
        return 1
    except KeyboardInterrupt:
        sys.stderr.write('%s: interrupted\n' % name)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None) -> int:
    args = parse_args(argv, __doc__, repeat=5, scratch='3 GiB')

    def body(workdir):
        bench = Bench(workdir, args.repeat)
        image_gib, image_tib, sizes, info = prepare(bench)
        bench.measure(image_gib, image_tib, sizes)
        report(bench, info)
    return in_workdir('bench_convert', args.workdir, body)


if __name__ == '__main__':
    sys.exit(main())
