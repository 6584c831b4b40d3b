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
"""Benchmark every image path through the real services.

It starts the stack of the end-to-end tier (RabbitMQ, glance, cinder-api,
-scheduler and -volume, the XenAPI test server in its own process), with
two backends on one SR: ``xs_plugin`` (dom0's glance plugin) and
``xs_stream`` (XAPI's HTTP handlers). It makes a sparse disk of
``--size`` bytes holding ``--data`` bytes of random data in scattered
2 MiB blocks, and from it four images: a XenServer tgz (ovf/vhd) of one
layer, the same disk as a two-layer chain (ovf/vhd), a qcow2 and a raw.
Then, through cinder's API, it times each path:

* create from ovf/vhd (either image) by the plugin and by the stream
  path, from qcow2 and from raw (stream path);
* upload to ovf/vhd by the plugin and by the stream path, and to qcow2;
* with ``--fixed``, create from the same disk as a bare fixed VHD (glance's
  format check off for the run: it takes a fixed VHD for raw data),
  against the raw image's create;
* with ``--compressible`` (half of each data block text), create from a
  compressed qcow2 of the disk, against the plain qcow2's create.

While each runs it samples, every 50 ms, the bytes allocated in cinder's
``image_conversion_dir`` (scratch) and the resident memory of the volume
service's processes. Every volume made is read back through XAPI and
every image uploaded is read back from glance, and compared with the
disk: a mismatch stops the run with exit status 1.

``--before CHECKOUT`` runs the whole set first with the services
importing another checkout of the driver (the code before a change), so
that each path's speed-up is measured in the same run. The ratios come
last. The machine is shared, so times vary: compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from tests import stack_fixture  # noqa: E402
from tests import xapi_fixture  # noqa: E402
from xenapinfs_driver.testing.stack import Stack  # noqa: E402
from xenapinfs_driver import vhd  # noqa: E402
from xenapinfs_driver.vhd import image as vhdimage  # noqa: E402
from xenapinfs_driver.vhd import ops as vhdops  # noqa: E402
from xenapinfs_driver.vhd import pack  # noqa: E402
from xenapinfs_driver.vhd import format as fmt  # noqa: E402
from xenapinfs_driver.vhd import vhdstream  # noqa: E402
from xenapinfs_driver.vhd import writer  # noqa: E402
from xenapinfs_driver.xenapi import session as xsession  # noqa: E402
from xenapinfs_driver.xenapi import transfer  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
BLOCK = 2 * MiB


class BenchError(Exception):
    pass


def parse_size(text: str) -> int:
    match = re.fullmatch(r'(\d+)([KMG]?)i?B?', text.strip(), re.I)
    if not match:
        raise argparse.ArgumentTypeError('not a size: %r' % text)
    unit = {'': 1, 'K': 1 << 10, 'M': MiB, 'G': GiB}[match.group(2).upper()]
    return int(match.group(1)) * unit


# -- the disk and its images --------------------------------------------

def make_disk(path: str, size: int, data: int, seed: int = 15,
              compressible: bool = False) -> None:
    """A sparse raw disk with ``data`` bytes of random data in scattered
    2 MiB blocks (no two adjacent), as a used file system looks; with
    ``compressible``, half of each block is text."""
    rng = random.Random(seed)
    nblocks = size // BLOCK
    want = min(data // BLOCK, nblocks // 2)
    picks = sorted(rng.sample(range(nblocks // 2), want))
    with open(path, 'wb') as f:
        f.truncate(size)
        for i in picks:
            f.seek(2 * i * BLOCK)
            if compressible:
                text = (b'block %08d of a file system ' % i) * BLOCK
                f.write(rng.randbytes(BLOCK // 2) + text[:BLOCK // 2])
            else:
                f.write(rng.randbytes(BLOCK))


def digest(path: str, size: int) -> str:
    """sha256 of the first ``size`` bytes, zeros past the end of file."""
    h = hashlib.sha256()
    left = size
    with open(path, 'rb') as f:
        while left:
            chunk = f.read(min(8 * MiB, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    zeros = bytes(8 * MiB)
    while left:
        n = min(len(zeros), left)
        h.update(zeros[:n])
        left -= n
    return h.hexdigest()


def data_blocks(path: str, size: int):
    """Offsets of the 2 MiB blocks of a sparse file that hold data."""
    with open(path, 'rb') as f:
        pos = 0
        while pos < size:
            try:
                start = os.lseek(f.fileno(), pos, os.SEEK_DATA)
            except OSError:
                return
            end = os.lseek(f.fileno(), start, os.SEEK_HOLE)
            yield from range(start - start % BLOCK, end, BLOCK)
            pos = end


def make_chain(work: str, raw: str, size: int, tgz: str) -> None:
    """The same disk as a two-layer XenServer image, as a snapshot leaves
    it: a base (1.vhd) with every other data block, a differencing leaf
    (0.vhd) with the rest."""
    base_raw, base, leaf = (os.path.join(work, n) for n in (
        'base.raw', '1.vhd', '0.vhd'))
    blocks = list(data_blocks(raw, size))
    with open(raw, 'rb') as src, open(base_raw, 'wb') as out:
        out.truncate(size)
        for off in blocks[::2]:
            os.pwrite(out.fileno(), os.pread(src.fileno(), BLOCK, off), off)
    with vhdstream.PackedVhd(base_raw) as packed, open(base, 'wb') as out:
        packed.write_to(out.write)
    vhdops.snapshot(leaf, base)
    with open(raw, 'rb') as src, vhdimage.VhdFile(leaf, writable=True) as v:
        for off in blocks[1::2]:
            v.write(off, os.pread(src.fileno(), BLOCK, off))
        v.flush()
    with tarfile.open(tgz, 'w:gz', compresslevel=1) as tar:
        tar.add(leaf, '0.vhd')
        tar.add(base, '1.vhd')
    for path in (base_raw, base, leaf):
        os.unlink(path)


def make_images(work: str, size: int, data: int, fixed: bool = False,
                compressible: bool = False) -> dict:
    raw = os.path.join(work, 'disk.raw')
    make_disk(raw, size, data, compressible=compressible)
    out = {}
    if compressible:
        out['qcow2c'] = os.path.join(work, 'compressed.qcow2')
        subprocess.run(['qemu-img', 'convert', '-c', '-f', 'raw', '-O',
                        'qcow2', raw, out['qcow2c']], check=True)
    if fixed:
        out['fixed'] = os.path.join(work, 'fixed.vhd')
        subprocess.run(['cp', '--sparse=always', raw, out['fixed']],
                       check=True)
        with open(out['fixed'], 'ab') as f:
            f.write(writer.make_footer(size, fmt.DISK_FIXED).to_bytes())
    tgz = os.path.join(work, 'disk.tgz')
    pack.pack(raw, tgz)
    chain = os.path.join(work, 'chain.tgz')
    make_chain(work, raw, size, chain)
    dense = os.path.join(work, 'dense.raw')
    with open(dense, 'wb') as f:
        rng = random.Random(16)
        for _ in range(data // BLOCK):
            f.write(rng.randbytes(BLOCK))
    qcow2 = os.path.join(work, 'disk.qcow2')
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw,
                    qcow2], check=True)
    out.update({'raw': raw, 'tgz': tgz, 'qcow2': qcow2, 'dense': dense,
                'chain': chain})
    return out


# -- sampling ------------------------------------------------------------

def allocated(directory: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(directory):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass                # removed meanwhile
    return total


def tree(pid: int) -> list:
    """pid and its descendants."""
    kids = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def rss(pids) -> int:
    """The largest resident set of the processes, in bytes."""
    best = 0
    for pid in pids:
        try:
            with open('/proc/%d/status' % pid) as f:
                for line in f:
                    if line.startswith('VmRSS:'):
                        best = max(best, int(line.split()[1]) * 1024)
        except OSError:
            pass
    return best


class Sampler:
    """Peak scratch and RSS while a step runs."""

    def __init__(self, scratch: str, pid: int):
        self.scratch = scratch
        self.pids = tree(pid)
        self.peak_scratch = 0
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak_scratch = max(self.peak_scratch,
                                    allocated(self.scratch))
            self.peak_rss = max(self.peak_rss, rss(self.pids))
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# -- one stack, every path -----------------------------------------------

class Run:
    """The paths, timed on one stack whose services import ``code``."""

    def __init__(self, label, code, work, images, size, data, vol_gib):
        self.label = label
        self.code = code
        self.work = work
        self.images = images
        self.size = size
        self.data = data
        self.vol_gib = vol_gib
        self.samples = {}
        self.probe = None
        self.expected = digest(images['raw'], vol_gib * GiB)

    def glance(self, stack, *args):
        return stack.run_cli(stack.glance_cli_args() + list(args),
                             quiet=True).stdout

    def add_image(self, stack, path, disk_format, container):
        out = self.glance(stack, 'image-create', '--name',
                          os.path.basename(path), '--disk-format',
                          disk_format, '--container-format', container,
                          '--file', path)
        rows = dict(stack_fixture.cli_table(out))
        if rows.get('status') != 'active':
            raise BenchError('image %s: %s' % (path, out))
        return rows['id']

    def volume_pid(self, stack, backend):
        # One cinder-volume, which forks a process per backend: its tree.
        return stack.cinder.volume_procs()[0].pid

    def step(self, stack, name, backend, start, wait):
        scratch = os.path.join(stack.cinder.workdir, 'conversion')
        with Sampler(scratch, self.volume_pid(stack, backend)) as s:
            t0 = time.monotonic()
            ident = start()
            wait(ident)
            seconds = time.monotonic() - t0
        left = os.listdir(scratch)
        if left:
            raise BenchError('%s left %s in image_conversion_dir'
                             % (name, left))
        self.samples.setdefault(name, []).append({
            'seconds': seconds, 'scratch': s.peak_scratch,
            'rss': s.peak_rss})
        print('  %-26s %7.1f s %7.1f MiB/s  scratch %6d MiB  RSS %4d MiB'
              % (name, seconds, self.data / MiB / seconds,
                 s.peak_scratch // MiB, s.peak_rss // MiB), flush=True)
        return ident

    def create(self, stack, name, backend, image_id):
        def start():
            code, body = stack.cinder.api('POST', '/volumes', {'volume': {
                'size': self.vol_gib, 'imageRef': image_id,
                'volume_type': backend}})
            if code != 202:
                raise BenchError('create %s: HTTP %d %s' % (name, code,
                                                            body))
            return body['volume']['id']

        def wait(vid):
            stack.wait_volume(vid, 'available', timeout=3600)
        return self.step(stack, name, backend, start, wait)

    def upload(self, stack, name, backend, vid, disk_format, container):
        def start():
            code, body = stack.cinder.api(
                'POST', '/volumes/%s/action' % vid, {
                    'os-volume_upload_image': {
                        'image_name': name, 'disk_format': disk_format,
                        'container_format': container, 'force': False}})
            if code != 202:
                raise BenchError('upload %s: HTTP %d %s' % (name, code,
                                                            body))
            return body['os-volume_upload_image']['image_id']

        def wait(image_id):
            deadline = time.monotonic() + 3600
            while True:
                status = stack.glance.show(image_id)['status']
                if status == 'active':
                    break
                if status not in ('queued', 'saving', 'importing') or \
                        time.monotonic() > deadline:
                    raise BenchError('upload %s: image %s' % (name, status))
                time.sleep(0.1)
            stack.wait_volume(vid, 'available', timeout=600)
        return self.step(stack, name, backend, start, wait)

    # -- checks (untimed) --

    def check_volume(self, xs, vid, name):
        ref = xs.call('VDI.get_by_name_label', 'volume-%s' % vid)[0]
        exported = os.path.join(self.work, 'check.vhd')
        raw = os.path.join(self.work, 'check.raw')
        try:
            with open(exported, 'wb') as f:
                transfer.export_to_file(xs, ref, f, 'vhd')
            vhd.convert(exported, raw)
            if digest(raw, self.vol_gib * GiB) != self.expected:
                raise BenchError('%s: the volume does not hold the disk'
                                 % name)
        finally:
            for p in (exported, raw):
                if os.path.exists(p):
                    os.unlink(p)

    def check_image(self, stack, image_id, disk_format, name):
        got = os.path.join(self.work, 'check.img')
        raw = os.path.join(self.work, 'check.raw')
        try:
            self.glance(stack, 'image-download', '--file', got, image_id)
            if disk_format == 'vhd':
                vhd.convert(got, raw)
            else:
                subprocess.run(['qemu-img', 'convert', '-f', disk_format,
                                '-O', 'raw', got, raw], check=True)
            if digest(raw, self.vol_gib * GiB) != self.expected:
                raise BenchError('%s: the image does not hold the disk'
                                 % name)
        finally:
            for p in (got, raw):
                if os.path.exists(p):
                    os.unlink(p)

    def delete(self, stack, vid):
        stack.cinder.api('DELETE', '/volumes/%s' % vid)
        stack.wait_volume(vid, 'deleted', timeout=300)

    @property
    def results(self):
        """Per path: the median time, the largest scratch and RSS."""
        out = {}
        for name, runs in self.samples.items():
            times = sorted(r['seconds'] for r in runs)
            out[name] = {'seconds': times[len(times) // 2],
                         'scratch': max(r['scratch'] for r in runs),
                         'rss': max(r['rss'] for r in runs),
                         'runs': len(runs)}
        return out

    # -- the set --

    def add_images(self, stack):
        self.img = {
            'tgz': self.add_image(stack, self.images['tgz'], 'vhd', 'ovf'),
            'qcow2': self.add_image(stack, self.images['qcow2'], 'qcow2',
                                    'bare'),
            'raw': self.add_image(stack, self.images['raw'], 'raw', 'bare'),
            'chain': self.add_image(stack, self.images['chain'], 'vhd',
                                    'ovf'),
        }
        if 'fixed' in self.images:
            self.img['fixed'] = self.add_image(stack, self.images['fixed'],
                                               'vhd', 'bare')
        if 'qcow2c' in self.images:
            self.img['qcow2c'] = self.add_image(
                stack, self.images['qcow2c'], 'qcow2', 'bare')
        self.vols = {}

    def steps(self):
        """The paths in order, each ``(name, run(xs, stack))``."""
        def create(name, backend, image):
            def go(xs, stack):
                vid = self.create(stack, name, backend, self.img[image])
                self.check_volume(xs, vid, name)
                self.vols[name] = vid
            return name, go

        def upload(name, backend, source, fmt, container):
            def go(xs, stack):
                image_id = self.upload(stack, name, backend,
                                       self.vols[source], fmt, container)
                self.check_image(stack, image_id, fmt, name)
            return name, go

        def clean(xs, stack):
            for vid in self.vols.values():
                self.delete(stack, vid)
            self.vols = {}
        return [
            create('create ovf/vhd plugin', 'xs_plugin', 'tgz'),
            create('create ovf/vhd stream', 'xs_stream', 'tgz'),
            create('create qcow2 stream', 'xs_stream', 'qcow2'),
            create('create raw stream', 'xs_stream', 'raw'),
            create('create chain plugin', 'xs_plugin', 'chain'),
            create('create chain stream', 'xs_stream', 'chain'),
        ] + ([
            create('create fixed vhd stream', 'xs_stream', 'fixed'),
        ] if 'fixed' in self.img else []) + ([
            create('create qcow2 compressed stream', 'xs_stream', 'qcow2c'),
        ] if 'qcow2c' in self.img else []) + [
            upload('upload ovf/vhd plugin', 'xs_plugin',
                   'create ovf/vhd plugin', 'vhd', 'ovf'),
            upload('upload ovf/vhd stream', 'xs_stream',
                   'create ovf/vhd stream', 'vhd', 'ovf'),
            upload('upload qcow2 stream', 'xs_stream',
                   'create qcow2 stream', 'qcow2', 'bare'),
            (None, clean)]


# -- format=raw streaming: a measurement for a decision --------------------

def raw_probe(xs, stack, work, image_id, size, label):
    """A raw image into a VDI two ways, in this process, the same way:
    streamed straight from glance into ``PUT /import_raw_vdi?format=raw``
    (no local copy, every zero sent), and the driver's way (fetched
    sparse into one file, then packed as a VHD into the PUT)."""
    from xenapinfs_driver.image import pipe
    from xenapinfs_driver.image import stream_in
    from xenapinfs_driver.xenapi import storage
    import urllib.request

    sr = next(ref for ref, rec in xs.call('SR.get_all_records').items()
              if rec['type'] == 'nfs')
    url = '%s/v2/images/%s/file' % (stack.glance.url, image_id)
    out = {}
    for way in ('format=raw stream', 'sparse file + vhd'):
        ref, vdi_uuid = storage.create_vdi(xs, sr, -(-size // GiB) * GiB,
                                           'probe')
        raw = os.path.join(work, 'probe.raw')
        try:
            t0 = time.monotonic()
            with urllib.request.urlopen(url, timeout=600) as resp:
                if way == 'format=raw stream':
                    transfer.import_vdi(xs, ref, resp, size, 'raw')
                    scratch = 0
                else:
                    zeros = bytes(pipe.SPARSE_PIECE)
                    with open(raw, 'wb') as f:
                        pos = 0
                        while True:
                            piece = resp.read(len(zeros))
                            if not piece:
                                break
                            if piece != zeros[:len(piece)]:
                                os.pwrite(f.fileno(), piece, pos)
                            pos += len(piece)
                        f.truncate(pos)
                    scratch = os.stat(raw).st_blocks * 512
                    stream_in.import_raw(xs, ref, raw)
            out[way] = (time.monotonic() - t0, scratch)
        finally:
            if os.path.exists(raw):
                os.unlink(raw)
            storage.destroy_vdi(xs, vdi_uuid)
        print('  %-8s %-20s %6.1f s  scratch %6d MiB'
              % (label, way, out[way][0], out[way][1] // MiB), flush=True)
    return out


@contextlib.contextmanager
def started(label, code, work, images, args):
    """A stack whose services import the driver from ``code``: yields
    ``(run, xs, stack)``."""
    run = Run(label, code, work, images, args.size, args.data,
              args.volume_gib)
    path = os.pathsep.join(p for p in (code, os.environ.get('PYTHONPATH'))
                           if p)
    root = tempfile.mkdtemp(prefix='stack-', dir=work)
    old = os.environ.get('PYTHONPATH')
    # The XenAPI server's process inherits it, as the services do.
    os.environ['PYTHONPATH'] = path
    try:
        xroot = os.path.join(root, 'xapi')
        os.makedirs(xroot)
        with stack_fixture.running_xapi(xroot) as xapi:
            backends = {
                'xs_plugin': stack_fixture.xenapinfs_backend(xapi.url,
                                                             'plugin'),
                'xs_stream': stack_fixture.xenapinfs_backend(xapi.url,
                                                             'stream')}
            # qcow2 uploads uncompressed, one pass over the disk, so that
            # runs compare with earlier ones (bench_qcow2_upload.py times
            # the compressed packer).
            # glance takes a bare fixed VHD only with its check off.
            with Stack(os.path.join(root, 'stack'), backends,
                       extra_env={'PYTHONPATH': path},
                       glance_options={'require_image_format_match': False}
                       if args.fixed else None,
                       cinder_options={'extra': {'DEFAULT': {
                           'image_compress_on_upload': False}}}) as stack:
                if old is None:
                    del os.environ['PYTHONPATH']
                else:
                    os.environ['PYTHONPATH'] = old
                xs = xsession.XenAPISession(
                    xapi.url, xapi_fixture.USERNAME,
                    xapi_fixture.PASSWORD).connect()
                try:
                    run.add_images(stack)
                    yield run, xs, stack
                finally:
                    xs.close()
    finally:
        if old is None:
            os.environ.pop('PYTHONPATH', None)
        else:
            os.environ['PYTHONPATH'] = old
        shutil.rmtree(root, ignore_errors=True)


def run_all(work, images, args):
    """Every path on each stack, the stacks taking turns path by path, so
    that a change in the machine's load hits both alike."""
    with contextlib.ExitStack() as stacks:
        runs = []
        if args.before:
            runs.append(stacks.enter_context(started(
                'before', os.path.abspath(args.before), work, images,
                args)))
        runs.append(stacks.enter_context(started('after', ROOT, work,
                                                 images, args)))
        for _ in range(args.repeat):
            plans = [(run, xs, stack, run.steps())
                     for run, xs, stack in runs]
            for index in range(len(plans[0][3])):
                for run, xs, stack, steps in plans:
                    name, go = steps[index]
                    if name:
                        print('  %-6s' % run.label, end='', flush=True)
                    go(xs, stack)
        after_run, xs, stack = runs[-1]
        if not args.no_raw_probe:
            print('format=raw streaming against the driver\'s way (raw '
                  'images):', flush=True)
            after_run.probe = {
                'sparse': raw_probe(
                    xs, stack, work, after_run.add_image(
                        stack, images['raw'], 'raw', 'bare'),
                    args.size, 'sparse'),
                'dense': raw_probe(
                    xs, stack, work, after_run.add_image(
                        stack, images['dense'], 'raw', 'bare'),
                    args.data, 'dense')}
        return after_run, (runs[0][0] if args.before else None)


def ratio(a, b):
    return a / b if b else float('inf')


def report(after: Run, before: Run | None, data: int) -> None:
    r = after.results
    print()
    print('Peak scratch per data byte (goal <= 1.1x of the image\'s data):')
    for name, res in r.items():
        print('  %-26s %5.2fx' % (name, res['scratch'] / data))
    print('RSS of the volume service: %d to %d MiB over the paths'
          % (min(x['rss'] for x in r.values()) // MiB,
             max(x['rss'] for x in r.values()) // MiB))
    print()
    print('Ratios (time / time, same run):')
    print('  stream create / plugin create (goal <= 1.3): %.2f' % ratio(
        r['create ovf/vhd stream']['seconds'],
        r['create ovf/vhd plugin']['seconds']))
    print('  the same, from a two-layer chain: %.2f' % ratio(
        r['create chain stream']['seconds'],
        r['create chain plugin']['seconds']))
    print('  upload ovf/vhd stream / create ovf/vhd stream: %.2f' % ratio(
        r['upload ovf/vhd stream']['seconds'],
        r['create ovf/vhd stream']['seconds']))
    print('  upload ovf/vhd stream / upload ovf/vhd plugin: %.2f' % ratio(
        r['upload ovf/vhd stream']['seconds'],
        r['upload ovf/vhd plugin']['seconds']))
    if 'create fixed vhd stream' in r:
        print('  fixed vhd stream create / raw stream create: %.2f' % ratio(
            r['create fixed vhd stream']['seconds'],
            r['create raw stream']['seconds']))
    if 'create qcow2 compressed stream' in r:
        print('  compressed qcow2 create / qcow2 create: %.2f' % ratio(
            r['create qcow2 compressed stream']['seconds'],
            r['create qcow2 stream']['seconds']))
    if after.probe:
        for kind, ways in after.probe.items():
            print('  %s raw image, format=raw stream / sparse file + vhd: '
                  '%.2f' % (kind, ratio(ways['format=raw stream'][0],
                                        ways['sparse file + vhd'][0])))
    if before is not None:
        print('  speed-up against %s (before time / after time):'
              % before.code)
        for name, res in r.items():
            old = before.results.get(name)
            if old:
                print('    %-26s %5.2fx   scratch %6d -> %6d MiB'
                      % (name, ratio(old['seconds'], res['seconds']),
                         old['scratch'] // MiB, res['scratch'] // MiB))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size', type=parse_size, default=GiB,
                        help='virtual size of the disk (default 1G)')
    parser.add_argument('--data', type=parse_size, default=None,
                        help='bytes of data in it (default 3/8 of --size)')
    parser.add_argument('--before', metavar='CHECKOUT',
                        help='also run with the services importing this '
                             'checkout of the driver, first')
    parser.add_argument('--repeat', type=int, default=1,
                        help='run every path N times on the stack; the '
                             'median time is shown (default 1)')
    parser.add_argument('--no-raw-probe', action='store_true',
                        help='skip the format=raw streaming measurement')
    parser.add_argument('--workdir', help='scratch directory (default: the '
                                          'system temporary directory)')
    parser.add_argument('--fixed', action='store_true',
                        help='also time a volume from a bare fixed VHD '
                             '(glance\'s format check is then off for the '
                             'run, as such images need)')
    parser.add_argument('--compressible', action='store_true',
                        help='make half of each data block text, and also '
                             'time a volume from a compressed qcow2 '
                             '(qemu-img convert -c) of the disk')
    parser.add_argument('--json', help='write the figures to this file')
    args = parser.parse_args(argv)
    if args.data is None:
        args.data = args.size * 3 // 8
    args.volume_gib = -(-args.size // GiB) + 1
    work = tempfile.mkdtemp(prefix='bench-image-paths-', dir=args.workdir)
    try:
        print('disk: %d MiB virtual, %d MiB of data in 2 MiB blocks; '
              'volumes of %d GiB' % (args.size // MiB, args.data // MiB,
                                     args.volume_gib), flush=True)
        images = make_images(work, args.size, args.data, args.fixed,
                             args.compressible)
        after, before = run_all(work, images, args)
        report(after, before, args.data)
        if args.json:
            with open(args.json, 'w') as f:
                json.dump({'after': after.results,
                           'before': before and before.results,
                           'raw_probe': after.probe}, f,
                          indent=1)
    except BenchError as exc:
        print('FAILED: %s' % exc, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
