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
"""Benchmark packing a raw disk into a XenServer image (the upload way).

It generates a 1 GiB sparse raw disk with 450 MiB of poorly compressible
data in separate extents (and some written zeros), then times, on the same
file, with a warm page cache:

* our pack (``xenapinfs-vhd pack``, to a tar.gz, and ``pack --vhd``, to a
  bare VHD), each in a subprocess, so that its wall time and peak RSS are
  its own;
* the reference: ``qemu-img convert -O vpc -o subformat=dynamic`` then
  ``tar czf``, each step alone and their sum.

The output of our first tar.gz is converted back and compared with the
input (untimed). The ratio against the goal comes last. The exit status
is 0 whether the goal is met or not; it is 1 when the output is wrong or
a step fails.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import time

# The launcher, its samples and the block contents are those of the
# conversion benchmark, so that both measure alike.
import bench_convert
from bench_convert import BenchError
from bench_convert import remove
from bench_convert import run
from bench_convert import Sample
from bench_convert import warm

from xenapinfs_driver import vhd
from xenapinfs_driver.vhd import deflate
from xenapinfs_driver.vhd import pack

MiB = 1 << 20
GiB = 1 << 30
BS = pack.BLOCK

# The disk: 1 GiB, 225 blocks of data (450 MiB) none of which touches
# another, so that every one is an extent of its own, and a few blocks of
# zeros written out (a file system's zeroed space), which pack must find
# and leave out.
DISK_SIZE = 1 * GiB
DATA_BLOCKS = 225
ZERO_BLOCKS = 8
SEED = 20240611

OURS = 'ours: pack (tar.gz)'
OURS_VHD = 'ours: pack --vhd'
QEMU = 'qemu-img convert -O vpc'
TAR = 'tar czf'
REFERENCE = 'qemu-img convert + tar czf'

GOAL_VS_REFERENCE = 10.0
GOAL_RSS_MIB = 100


# -- the disk -----------------------------------------------------------------

def plan_disk(rnd: random.Random) -> tuple:
    """Data blocks and zero blocks, no two of them side by side."""
    nblocks = DISK_SIZE // BS
    count = DATA_BLOCKS + ZERO_BLOCKS
    # k of n positions with a free one between any two: k sorted picks
    # out of n - k + 1, the i-th moved up by i.
    picks = sorted(rnd.sample(range(nblocks - count + 1), count))
    spaced = [p + i for i, p in enumerate(picks)]
    rnd.shuffle(spaced)
    return sorted(spaced[:DATA_BLOCKS]), sorted(spaced[DATA_BLOCKS:])


def write_disk(path: str, data_blocks: list, zero_blocks: list,
               data: bench_convert.BlockData) -> None:
    with open(path, 'wb') as f:
        f.truncate(DISK_SIZE)
        for idx in data_blocks:
            os.pwrite(f.fileno(), data.get(0, idx), idx * BS)
        zeros = bytes(BS)
        for idx in zero_blocks:
            os.pwrite(f.fileno(), zeros, idx * BS)


def extents(path: str) -> int:
    """How many data extents the file has, as SEEK_DATA sees them."""
    count = 0
    pos = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        while pos < size:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            pos = os.lseek(fd, pos, os.SEEK_HOLE)
            count += 1
    finally:
        os.close(fd)
    return count


# -- checks -------------------------------------------------------------------

def verify(image: str, raw: str, scratch: str, blocks: int) -> None:
    """Fail unless the image converts back to exactly the raw disk."""
    back = os.path.join(scratch, 'back.raw')
    try:
        result = vhd.convert(image, back)
        if result.warnings:
            raise BenchError('WRONG OUTPUT: %s' % '; '.join(result.warnings))
        stored = result.layers[0].allocated_blocks
        if stored != blocks:
            raise BenchError('WRONG OUTPUT: %d blocks stored, the disk has '
                             '%d of data' % (stored, blocks))
        with open(raw, 'rb') as want, open(back, 'rb') as got:
            pos = 0
            while True:
                a = want.read(8 * MiB)
                b = got.read(8 * MiB)
                if a != b:
                    raise BenchError('WRONG OUTPUT: the disk converted back '
                                     'differs from the input near offset %d'
                                     % pos)
                if not a:
                    break
                pos += len(a)
    finally:
        remove(back)


# -- measuring ----------------------------------------------------------------

class Bench(bench_convert.Samples):
    """The timed steps: ours, and the reference."""

    def ours(self, raw: str, *options, check=None) -> Sample:
        out = self.path('ours.vhd' if options else 'ours.tgz')
        argv = [sys.executable, '-m', 'xenapinfs_driver.cmd.vhd', 'pack',
                '--no-progress', *options, raw, out]
        try:
            sample = run(argv, env=self.env)
            self.sizes[OURS_VHD if options else OURS] = os.path.getsize(out)
            if check is not None:
                check(out)
            return sample
        finally:
            remove(out)

    def reference(self, raw: str) -> tuple:
        out_vhd = self.path('ref.vhd')
        out_tgz = self.path('ref.tgz')
        try:
            qemu = run(['qemu-img', 'convert', '-f', 'raw', '-O', 'vpc',
                        '-o', 'subformat=dynamic', raw, out_vhd])
            self.sizes[QEMU] = os.path.getsize(out_vhd)
            tar = run(['tar', 'czf', out_tgz, '-C', self.workdir,
                       os.path.basename(out_vhd)])
            self.sizes[TAR] = self.sizes[REFERENCE] = \
                os.path.getsize(out_tgz)
            return qemu, tar
        finally:
            remove(out_vhd)
            remove(out_tgz)

    def measure(self, raw: str, check) -> None:
        floor = run(['true']).maxrss
        self.notes.append('peak RSS includes the launcher\'s %s'
                          % _mib(floor))
        have_ref = all(shutil.which(t) for t in ('qemu-img', 'tar', 'gzip'))
        if not have_ref:
            self.notes.append('qemu-img, tar or gzip is not installed: no '
                              'reference')
        # Round robin, so that drift on the machine hits every case alike.
        for rep in range(1, self.repeat + 1):
            self.log('run %d of %d' % (rep, self.repeat))
            self.add(OURS, self.ours(raw, check=check if rep == 1 else None))
            self.add(OURS_VHD, self.ours(raw, '--vhd'))
            if have_ref:
                qemu, tar = self.reference(raw)
                self.add(QEMU, qemu)
                self.add(TAR, tar)
                self.add(REFERENCE, Sample(qemu.seconds + tar.seconds,
                                           max(qemu.maxrss, tar.maxrss)))


# -- report -------------------------------------------------------------------

def report(bench: Bench, info: dict) -> None:
    print()
    zeros = ZERO_BLOCKS * BS
    print('disk: %s raw, sparse, %s written in %d extents: %s of data, %s '
          'of zeros' % (_mib(DISK_SIZE), _mib(info['data'] + zeros),
                        info['extents'], _mib(info['data']), _mib(zeros)))
    print('our compressor: %s level %d; generation took %.0f s (not '
          'measured); median of %d warm runs' % (
              info['compressor'], info['level'], info['generation'],
              bench.repeat))
    for note in bench.notes:
        print('note: %s' % note)
    print()
    head = '%-28s %9s %9s %10s %9s %9s' % (
        'step', 'median', 'best', 'data MiB/s', 'peak RSS', 'output')
    print(head)
    print('-' * len(head))
    for name, samples in bench.samples.items():
        median = bench.median(name)
        peak = bench.peak(name)
        size = bench.sizes.get(name)
        print('%-28s %7.2f s %7.2f s %10.0f %9s %9s' % (
            name, median, min(s.seconds for s in samples),
            info['data'] / MiB / median, '-' if peak is None else _mib(peak),
            '-' if size is None else _mib(size)))
    print()
    for name, value, goal, met in goals(bench):
        print('%-28s %8s   goal %-14s %s' % (
            name, value, goal, 'n/a' if met is None else
            'PASS' if met else 'MISS'))


def goals(bench: Bench) -> list:
    """(what, value, goal, met) of each goal; the ratio last."""
    lines = []
    peak = max(bench.peak(OURS), bench.peak(OURS_VHD))
    lines.append(('peak RSS of ours', _mib(peak), '< %d MiB' % GOAL_RSS_MIB,
                  peak < GOAL_RSS_MIB * MiB))
    goal = '>= %gx' % GOAL_VS_REFERENCE
    ref = bench.median(REFERENCE)
    if ref is None:
        lines.append(('ratio reference / ours', 'n/a', goal, None))
    else:
        ratio = ref / bench.median(OURS)
        lines.append(('ratio reference / ours', '%.1fx' % ratio, goal,
                      ratio >= GOAL_VS_REFERENCE))
    return lines


def _mib(n: int) -> str:
    return '%.0f MiB' % (n / MiB)


# -- main ---------------------------------------------------------------------

def prepare(bench: Bench) -> tuple:
    """Generate the disk; return its path and what to show."""
    start = time.perf_counter()
    rnd = random.Random(SEED)
    data_blocks, zero_blocks = plan_disk(rnd)
    raw = bench.path('disk.raw')
    bench.log('generating %s' % raw)
    write_disk(raw, data_blocks, zero_blocks, bench_convert.BlockData(SEED))
    generation = time.perf_counter() - start
    warm(raw)
    compressor, _, level = deflate.pick_compressor(None, pack.DEFAULT_LEVEL)
    info = dict(data=DATA_BLOCKS * BS, extents=extents(raw),
                generation=generation, compressor=compressor, level=level,
                blocks=len(data_blocks))
    return raw, info


def main(argv=None) -> int:
    args = bench_convert.parse_args(argv, __doc__, repeat=3,
                                    scratch='2 GiB')

    def body(workdir):
        bench = Bench(workdir, args.repeat)
        raw, info = prepare(bench)

        def check(image):
            bench.log('  checking that %s converts back to the disk'
                      % os.path.basename(image))
            verify(image, raw, workdir, info['blocks'])
        bench.measure(raw, check)
        report(bench, info)
    return bench_convert.in_workdir('bench_pack', args.workdir, body)


if __name__ == '__main__':
    sys.exit(main())
