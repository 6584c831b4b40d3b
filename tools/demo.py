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
"""``make demo``: a XenServer image made on the spot, turned into a disk.

It builds an ext4 file system holding a file, snapshots it the way
XenServer does (a dynamic base and differencing children, each holding only
the sectors that changed), packs the chain as a XenServer tar.gz, and then
runs ``xenapinfs-vhd info``, ``check`` and ``convert`` on it, printing each
command and its output. The converted disk must be byte-identical to the
file system it came from, and debugfs must read the newest file back.
qemu-img is shown failing on the same chain, which is why this exists.
"""

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid

from xenapinfs_driver.vhd import writer

MiB = 1 << 20
BS = writer.DEFAULT_BLOCK
SIZE = 64 * MiB
GROWN = 64 * MiB + 3 * 512      # the newest layer was grown, oddly


def run(argv, *, show=True, check=True, **kw):
    if show:
        print('$ ' + ' '.join([os.path.basename(argv[0])] + argv[1:]))
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    out = (proc.stdout + proc.stderr).rstrip()
    if show and out:
        print(out)
    if check and proc.returncode:
        raise SystemExit('demo: %s failed with status %d'
                         % (argv[0], proc.returncode))
    return proc


def debugfs(image, *requests):
    for r in requests:
        run(['debugfs', '-w', '-R', r, image], show=False)


def layer_blocks(old: bytes, new: bytes, size: int):
    """The blocks and sector bitmaps of a layer holding new's changes."""
    blocks = {}
    for idx in range(-(-size // BS)):
        a, b = old[idx * BS:(idx + 1) * BS], new[idx * BS:(idx + 1) * BS]
        b = b.ljust(BS, b'\0')
        a = a.ljust(BS, b'\0')
        sectors = [s for s in range(BS // 512)
                   if idx * BS + s * 512 < size
                   and a[s * 512:(s + 1) * 512] != b[s * 512:(s + 1) * 512]]
        if sectors:
            # Like blktap, keep only the written sectors; the rest of an
            # allocated block is zero and the bitmap says to look below.
            data = bytearray(BS)
            for s in sectors:
                data[s * 512:(s + 1) * 512] = b[s * 512:(s + 1) * 512]
            blocks[idx] = (writer.bitmap_of(sectors), bytes(data))
    return blocks


def base_blocks(disk: bytes):
    blocks = {}
    for idx in range(-(-len(disk) // BS)):
        data = disk[idx * BS:(idx + 1) * BS]
        if data.strip(b'\0'):
            blocks[idx] = (None, data)
    return blocks


def main():
    script = os.path.join(os.path.dirname(sys.executable), 'xenapinfs-vhd')
    cli = [script] if os.path.exists(script) else [
        sys.executable, '-m', 'xenapinfs_driver.cmd.vhd']
    work = tempfile.mkdtemp(prefix='xenapinfs-demo-')
    try:
        os.chdir(work)
        print('== 1. A disk with an ext4 file system, snapshotted twice\n')
        run(['truncate', '-s', str(SIZE), 'disk.raw'])
        run(['mkfs.ext4', '-q', '-F', '-L', 'demo', 'disk.raw'])
        with open('hello.txt', 'w') as f:
            f.write('written before the first snapshot\n')
        debugfs('disk.raw', 'write hello.txt hello.txt')
        gen0 = open('disk.raw', 'rb').read()

        with open('news.txt', 'w') as f:
            f.write('written after the first snapshot\n')
        debugfs('disk.raw', 'write news.txt news.txt')
        gen1 = open('disk.raw', 'rb').read()

        with open('news.txt', 'w') as f:
            f.write('rewritten after the second snapshot, on a grown disk\n')
        debugfs('disk.raw', 'rm news.txt', 'write news.txt news.txt')
        gen2 = open('disk.raw', 'rb').read() + bytes(GROWN - SIZE)

        print('\n== 2. The XenServer image: 0.vhd (newest) .. 2.vhd (base)\n')
        ids = [uuid.uuid4().bytes for _ in range(3)]
        vhds = {}
        buf = io.BytesIO()
        writer.write_dynamic(buf, SIZE, base_blocks(gen0), hidden=True,
                             unique_id=ids[2])
        vhds['2.vhd'] = buf.getvalue()
        for n, (old, new, size) in ((1, (gen0, gen1, SIZE)),
                                    (0, (gen1, gen2, GROWN))):
            buf = io.BytesIO()
            writer.write_dynamic(
                buf, size, layer_blocks(old, new, size), hidden=n > 0,
                unique_id=ids[n], parent=writer.Parent(
                    ids[n + 1], '%d.vhd' % (n + 1), 0,
                    writer.xenserver_locators('%s.vhd' % uuid.uuid4())))
            vhds['%d.vhd' % n] = buf.getvalue()
        with tarfile.open('image.tgz', 'w:gz', compresslevel=6) as tf:
            for name in ('2.vhd', '0.vhd', '1.vhd'):   # readdir order
                info = tarfile.TarInfo('./' + name)
                info.size = len(vhds[name])
                tf.addfile(info, io.BytesIO(vhds[name]))
        print('image.tgz: %d bytes, members ./2.vhd ./0.vhd ./1.vhd'
              % os.path.getsize('image.tgz'))
        for name in ('0.vhd', '1.vhd', '2.vhd'):
            with open(name, 'wb') as f:
                f.write(vhds[name])

        print('\n== 3. Inspect, check and convert it in one pass each\n')
        run(cli + ['info', 'image.tgz'])
        run(cli + ['check', 'image.tgz'])
        run(cli + ['convert', 'image.tgz', 'converted.raw'])
        got = open('converted.raw', 'rb').read()
        want = gen2
        print('\nsha256 of the disk as written: %s'
              % hashlib.sha256(want).hexdigest())
        print('sha256 of the converted disk:  %s'
              % hashlib.sha256(got).hexdigest())
        if got != want:
            raise SystemExit('demo: the converted disk differs')
        run(['debugfs', '-R', 'cat /news.txt', 'converted.raw'])
        run(['debugfs', '-R', 'cat /hello.txt', 'converted.raw'])

        if shutil.which('qemu-img'):
            print('\n== 4. What qemu-img makes of the same chain\n')
            run(['qemu-img', 'convert', '-f', 'vpc', '-O', 'raw', '0.vhd',
                 'qemu.raw'])
            qemu = open('qemu.raw', 'rb').read()
            print('qemu-img ignores the parents of 0.vhd: %d of %d MiB '
                  'differ from the real disk' % (
                      sum(qemu[i:i + MiB] != want[i:i + MiB]
                          for i in range(0, len(want), MiB)),
                      -(-len(want) // MiB)))
            run(['debugfs', '-R', 'cat /hello.txt', 'qemu.raw'], check=False)

        print('\n== 5. Bad input gets one line and leaves nothing behind\n')
        with open('image.tgz', 'rb') as f:
            half = f.read(os.path.getsize('image.tgz') // 2)
        with open('truncated.tgz', 'wb') as f:
            f.write(half)
        proc = run(cli + ['convert', 'truncated.tgz', 'out.raw'],
                   check=False)
        print('exit status %d; out.raw exists: %s'
              % (proc.returncode, os.path.exists('out.raw')))
        if proc.returncode != 1 or os.path.exists('out.raw'):
            raise SystemExit('demo: bad input was not refused cleanly')
        print('\ndemo: OK')
    finally:
        os.chdir('/')
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
