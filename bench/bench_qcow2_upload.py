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
"""Benchmark packing a raw disk into a compressed qcow2 (the upload way).

It generates a sparse raw disk (1 GiB by default, ``--size``) a quarter
of which is data in 4 MiB extents, half of them random (stored plainly:
deflate does not shrink them) and half text (compressed), then times, on
the same file, with a warm page cache, each in a subprocess so that its
wall time and peak RSS are its own:

* ours: ``vhd.qcow2c`` in its two passes, writing into a sink that only
  counts the bytes (an upload keeps no output file);
* the reference: ``qemu-img convert -c -O qcow2`` into a file, which is
  what cinder's ``upload_volume`` runs.

Our image is written once more into a file (untimed) and judged by
``qemu-img check`` and ``qemu-img compare``. The exit status is 1 when it
is wrong or a step fails, 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time

import bench_convert
from bench_convert import BenchError
from bench_convert import remove
from bench_convert import run
from bench_convert import warm

from xenapinfs_driver.vhd import qcow2c

MiB = 1 << 20
EXTENT = 4 * MiB
SEED = 20261207

OURS = 'ours: qcow2c, two passes'
QEMU = 'qemu-img convert -c -O qcow2'

# Our packer as a command of its own: the image goes into a sink that
# counts it; the count into the file named last, for the report.
PACK = """
import sys
from xenapinfs_driver.vhd import qcow2c
with qcow2c.Qcow2C(sys.argv[1]) as image:
    n = image.write_to(lambda data: None)
with open(sys.argv[2], 'w') as f:
    f.write(str(n))
"""


# -- the disk -----------------------------------------------------------------

def text(n: int) -> bytes:
    line = b'%08d: the quick brown fox jumps over the lazy dog, again\n'
    return b''.join(line % i for i in range(n // len(line % 0) + 1))[:n]


def write_disk(path: str, size: int) -> int:
    """Every fourth extent holds data, random and text in turn; the
    bytes of data."""
    rnd = random.Random(SEED)
    data = 0
    with open(path, 'wb') as f:
        f.truncate(size)
        for nth, offset in enumerate(range(0, size, 4 * EXTENT)):
            n = min(EXTENT, size - offset)
            piece = rnd.randbytes(n) if nth % 2 else text(n)
            os.pwrite(f.fileno(), piece, offset)
            data += n
    return data


# -- measuring ----------------------------------------------------------------

class Bench(bench_convert.Samples):
    """The timed steps: ours, and the reference."""

    def ours(self, raw: str):
        count = self.path('ours.length')
        try:
            sample = run([sys.executable, '-c', PACK, raw, count],
                         env=self.env)
            with open(count) as f:
                self.sizes[OURS] = int(f.read())
            return sample
        finally:
            remove(count)

    def reference(self, raw: str):
        out = self.path('qemu.qcow2')
        try:
            sample = run(['qemu-img', 'convert', '-c', '-f', 'raw', '-O',
                          'qcow2', raw, out])
            self.sizes[QEMU] = os.path.getsize(out)
            return sample
        finally:
            remove(out)

    def measure(self, raw: str) -> None:
        # Round robin, so that drift on the machine hits both alike.
        for rep in range(1, self.repeat + 1):
            self.log('run %d of %d' % (rep, self.repeat))
            self.add(OURS, self.ours(raw))
            self.add(QEMU, self.reference(raw))


def verify(raw: str, workdir: str) -> None:
    """Fail unless qemu-img finds our image clean and equal to the disk."""
    out = os.path.join(workdir, 'ours.qcow2')
    try:
        with qcow2c.Qcow2C(raw) as image, open(out, 'wb') as f:
            image.write_to(f.write)
        for argv in (['check', '-q', '-f', 'qcow2', out],
                     ['compare', '-q', '-f', 'raw', '-F', 'qcow2', raw,
                      out]):
            proc = subprocess.run(['qemu-img'] + argv, capture_output=True,
                                  text=True)
            if proc.returncode:
                raise BenchError('WRONG OUTPUT: qemu-img %s: %s' % (
                    argv[0], (proc.stdout + proc.stderr).strip()))
    finally:
        remove(out)


# -- report -------------------------------------------------------------------

def report(bench: Bench, info: dict) -> None:
    print()
    print('disk: %s raw, sparse, %s of data in %s extents, half random, '
          'half text; generation took %.0f s (not measured); median of %d '
          'warm runs' % (_mib(info['size']), _mib(info['data']),
                         _mib(EXTENT), info['generation'], bench.repeat))
    print('note: peak RSS includes the launcher\'s %s' % _mib(info['floor']))
    print()
    head = '%-30s %9s %9s %9s %10s' % (
        'step', 'median', 'best', 'peak RSS', 'output')
    print(head)
    print('-' * len(head))
    for name, samples in bench.samples.items():
        size = bench.sizes.get(name)
        print('%-30s %7.2f s %7.2f s %9s %10s' % (
            name, bench.median(name), min(s.seconds for s in samples),
            _mib(bench.peak(name)), '-' if size is None else _mib(size, 1)))
    print()
    ratio = bench.median(OURS) / bench.median(QEMU)
    print('time, ours / qemu-img:          %.2fx' % ratio)
    print('output, ours / qemu-img:        %.3fx' % (
        bench.sizes[OURS] / bench.sizes[QEMU]))
    print('local files, ours / qemu-img:   0 / %s (the disk aside)'
          % _mib(bench.sizes[QEMU], 1))


def _mib(n: int, places: int = 0) -> str:
    return '%.*f MiB' % (places, n / MiB)


# -- main ---------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size', type=int, default=1024,
                        help='MiB of the raw disk (default: 1024)')
    parser.add_argument('--repeat', type=int, default=3,
                        help='timed runs of each step; the median is shown '
                             '(default: 3)')
    parser.add_argument('--workdir', default=None,
                        help='where to create the scratch directory, a '
                             'quarter of --size and qemu-img\'s output '
                             '(default: the system temporary directory)')
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.size < 1:
        parser.error('--repeat and --size must be at least 1')
    if not shutil.which('qemu-img'):
        sys.stderr.write('bench_qcow2_upload: qemu-img is not installed\n')
        return 1

    def body(workdir):
        bench = Bench(workdir, args.repeat)
        raw = bench.path('disk.raw')
        bench.log('generating %s' % raw)
        start = time.perf_counter()
        size = args.size * MiB
        data = write_disk(raw, size)
        info = dict(size=size, data=data, floor=run(['true']).maxrss,
                    generation=time.perf_counter() - start)
        warm(raw)
        bench.log('  checking our image with qemu-img')
        verify(raw, workdir)
        bench.measure(raw)
        report(bench, info)
    return bench_convert.in_workdir('bench_qcow2_upload', args.workdir,
                                    body)


if __name__ == '__main__':
    sys.exit(main())
