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
"""Resource bombs: small inputs that claim huge sizes, counts or depths.

Each bomb runs in a child process with an address-space limit (RLIMIT_AS)
and a wall-clock timeout, and reports its peak RSS. A limit that stops
holding then shows as a MemoryError in the child, a timeout or a peak over
the bound, rather than as a test run that swaps or never ends. The
assertions are about what a clean refusal looks like (class, member,
field, message); time is only bounded by the timeout, not measured.

The limits are validate.Limits: max_depth 30, max_size 2 TiB,
max_table_entries 4 Mi, max_mask_memory 256 MiB, all configurable through
``convert(..., limits=Limits(...))`` and ``inspect``.
"""

from __future__ import annotations

import array
import gzip
import io
import json
import os
import pathlib
import random
import subprocess
import sys
import tracemalloc

import pytest

from tests import vhd_factory as vf
from tests.unit.vhd import badinput as bi
from xenapinfs_driver.vhd import compose
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import tgz
from xenapinfs_driver.vhd import writer

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
EiB = 1 << 60
ROOT = pathlib.Path(__file__).resolve().parents[3]

# The child's own interpreter, isal and one inflater thread take ~180 MiB
# of address space and ~30-45 MiB resident (measured); a 4 Mi-entry BAT
# adds ~50 MiB. A refusal must not get near AS_MB.
AS_MB = 512
RSS_REFUSED = 96        # MiB: a refusal allocates nothing big
RSS_ACCEPTED = 160      # MiB: accepting at a limit costs what it must
TIMEOUT = 60            # s: each bomb takes well under a few seconds

_CHILD = r'''
import json, resource, sys, time
spec = json.loads(sys.argv[1])
_, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (spec['as_mb'] << 20, hard))
from xenapinfs_driver.vhd import chain, errors, image, tgz
limits = tgz.Limits(**spec['limits'])
path, dest, call = spec['path'], spec['dest'], spec['call']
start = time.monotonic()
out = {'ok': True}
try:
    if call in ('inspect', 'stall'):
        stalled = []

        def progress(done, total):
            # 'stall': the reader stops for a second at its first piece,
            # while the inflater thread could race ahead.
            if call == 'stall' and not stalled:
                stalled.append(time.sleep(1.0))
        res = tgz.inspect(path, limits=limits, progress=progress)
        out['virtual_size'] = res.virtual_size
        out['layers'] = len(res.layers)
    elif call == 'convert':
        res = tgz.convert(path, dest, limits=limits)
        out['virtual_size'] = res.virtual_size
        out['bytes_written'] = res.bytes_written
    elif call == 'chain_of':
        out['chain'] = chain.chain_of(path)
    elif call == 'flatten':
        chain.flatten(path, dest)
    elif call == 'vhdfile':
        image.VhdFile(path, limits=limits).close()
except errors.VhdError as exc:
    out = {'error': type(exc).__name__, 'message': str(exc),
           'member': exc.member, 'field': exc.field, 'source': exc.source}
out['seconds'] = time.monotonic() - start
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent
# (pytest, with cinder loaded) through fork and exec.
with open('/proc/self/status') as f:
    hwm = [line for line in f if line.startswith('VmHWM:')][0]
out['maxrss_mib'] = int(hwm.split()[1]) / 1024
print(json.dumps(out))
'''


def bounded(call, path, *, dest=None, limits=None, rss_mb=RSS_REFUSED,
            timeout=TIMEOUT):
    """Run call on path in a bounded child; return what it reported.

    A child still running after timeout seconds fails the test (a hang).
    """
    spec = {'call': call, 'path': str(path), 'dest': str(dest or ''),
            'limits': limits or {}, 'as_mb': AS_MB}
    # Fewer malloc arenas: each reserves 64 MiB of address space.
    env = dict(os.environ, MALLOC_ARENA_MAX='2')
    proc = subprocess.run([sys.executable, '-c', _CHILD, json.dumps(spec)],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    # A MemoryError (the address-space limit) or any non-VhdError ends up
    # here, with the child's traceback.
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out['maxrss_mib'] < rss_mb, out
    return out


def refused(out, cls, *, source, member=None, field=None, says=()):
    """The child's refusal is cls, and names source, member and field."""
    assert out.get('error') == cls.__name__, out
    text = out['message']
    assert out['source'] == str(source) and text.startswith(
        str(source) + ': '), text
    assert '\n' not in text, text
    if member is not None:
        assert out['member'] == member, text
    if field is not None:
        assert out['field'] == field, text
        assert ': %s: ' % field in text, text
    for part in (says,) if isinstance(says, str) else says:
        assert part in text, text


def gz(tmp_path, raw: bytes, name='img.tgz', level=1) -> pathlib.Path:
    path = pathlib.Path(tmp_path) / name
    path.write_bytes(gzip.compress(bytes(raw), level, mtime=0))
    return path


def base256(value: int) -> bytes:
    """A 12-byte GNU base-256 tar size field."""
    return b'\x80' + value.to_bytes(11, 'big')


def empty_dynamic(size, block_size=2 * MiB, **kw) -> bytearray:
    """A dynamic VHD with nothing allocated: its BAT is all 0xFFFFFFFF,
    which gzip shrinks a thousandfold."""
    kw.setdefault('unique_id', bi.BASE_ID)
    kw.setdefault('timestamp', bi.TIMESTAMP)
    buf = io.BytesIO()
    writer.write_dynamic(buf, size, {}, block_size=block_size, **kw)
    return bytearray(buf.getvalue())


def test_default_limits():
    # The documented defaults; a change must be deliberate (and show here).
    limits = tgz.Limits()
    assert (limits.max_depth, limits.max_size, limits.max_table_entries,
            limits.max_mask_memory) == (30, 2 * TiB, 4 * MiB, 256 * MiB)


# -- huge sizes ---------------------------------------------------------------

@pytest.mark.parametrize('kind', ['tgz', 'vhd.gz', 'fixed'])
def test_virtual_size_of_2_63(kind, tmp_path):
    # A 10 KiB image claiming an 8 EiB disk: refused from its footer,
    # before a BAT of 2**63 / 4 KiB entries or an output is sized.
    if kind == 'fixed':
        vhd = bi.fixed(bytes(4 * KiB))
        bi.put_footer(vhd, '>Q', bi.F_CURRENT_SIZE, 1 << 63, which='footer')
        field = 'footer current size'
    else:
        vhd = bi.dynamic()
        bi.put_footer(vhd, '>Q', bi.F_CURRENT_SIZE, 1 << 63)
        field = 'footer copy current size'
    src = gz(tmp_path, bi.tar_bytes([('0.vhd', vhd)])) \
        if kind != 'vhd.gz' else gz(tmp_path, vhd, 'disk.vhd.gz')
    out = bounded('convert', src, dest=tmp_path / 'disk.raw')
    refused(out, errors.LimitExceeded, source=src, field=field,
            member=None if kind == 'vhd.gz' else '0.vhd',
            says='%d bytes exceeds the limit of %d' % (1 << 63, 2 * TiB))
    assert os.listdir(tmp_path) == [src.name]


@pytest.mark.parametrize('kind', ['dynamic', 'fixed', 'ignored', 'pax'])
def test_member_of_8_eib(kind, tmp_path):
    # A tar member whose size field (GNU base-256, or a pax record) says
    # 8 EiB, in front of a few KiB of data. A dynamic VHD is read up to
    # where its trailing footer would be, and the stream ends first; a
    # fixed disk of that size is over max_size before a byte is written;
    # a member that is not a layer is skipped until the stream ends.
    size = 8 * EiB
    name, vhd = b'0.vhd', bytes(bi.dynamic())
    if kind == 'fixed':
        vhd = bytes(bi.fixed(bytes(4 * KiB)))
    elif kind == 'ignored':
        name = b'swap.vhd'
    if kind == 'pax':
        raw = bi.raw_member(b'PaxHeader', bi.pax_record('size', str(size)),
                            b'x') + bytes(bi.tar_header(name, 0))
    else:
        raw = bytes(bi.tar_header(name, size_field=base256(size)))
    src = gz(tmp_path, raw + bi.padded(vhd) + bi.END)
    out = bounded('convert', src, dest=tmp_path / 'disk.raw')
    if kind == 'fixed':
        refused(out, errors.LimitExceeded, source=src, member='0.vhd',
                field='file size', says='exceeds the limit of %d' % (2 * TiB))
    elif kind == 'ignored':
        refused(out, errors.Truncated, source=src,
                says='of tar member swap.vhd missing')
    else:
        refused(out, errors.Truncated, source=src, member='0.vhd',
                field='footer', says='ends before offset %d' % (size - 512))


@pytest.mark.parametrize('size, limit, accepted', [
    (2 * TiB, None, True),
    (2 * TiB + 512, None, False),
    (2 * TiB, TiB, False),               # configurable
    (TiB, TiB, True),
])
def test_current_size_against_max_size(size, limit, accepted, tmp_path):
    # A 20 KiB tgz of an empty disk at, and just over, max_size.
    vhd = empty_dynamic(2 * TiB)
    bi.put_footer(vhd, '>Q', bi.F_CURRENT_SIZE, size)
    src = gz(tmp_path, bi.tar_bytes([('0.vhd', vhd)]))
    out = bounded('inspect', src, limits={'max_size': limit} if limit else {},
                  rss_mb=RSS_ACCEPTED if accepted else RSS_REFUSED)
    if accepted:
        assert out['virtual_size'] == size, out
    else:
        refused(out, errors.LimitExceeded, source=src, member='0.vhd',
                field='footer copy current size',
                says='exceeds the limit of %d' % (limit or 2 * TiB))


@pytest.mark.parametrize('kind', ['tgz', 'vhd', 'vhdfile'])
def test_table_of_2_32_entries(kind, tmp_path):
    # A header claiming 2**32 - 1 BAT entries (16 GiB of table): refused
    # from the header, before the table is read or allocated.
    vhd = bi.dynamic()
    bi.put_header(vhd, '>I', bi.H_MAX_ENTRIES, 0xFFFFFFFF)
    if kind == 'tgz':
        src = gz(tmp_path, bi.tar_bytes([('0.vhd', vhd)]))
    else:
        src = bi.write(tmp_path / 'disk.vhd', vhd)
    out = bounded('vhdfile' if kind == 'vhdfile' else 'convert', src,
                  dest=tmp_path / 'disk.raw')
    refused(out, errors.LimitExceeded, source=src, field='max table entries',
            says='%d exceeds the limit of %d' % (0xFFFFFFFF, 4 * MiB),
            member='0.vhd' if kind == 'tgz' else None)


@pytest.mark.parametrize('limit, accepted', [
    (None, True), (4 * MiB - 1, False), (1 * MiB, False)])
def test_table_at_the_limit(limit, accepted, tmp_path):
    # Exactly max_table_entries (4 Mi entries, a 16 MiB BAT: a 2 GiB disk
    # in 512-byte blocks, 75 KiB as a tgz) is accepted in bounded memory;
    # a lower configured limit refuses it.
    vhd = empty_dynamic(2 * GiB, block_size=512)
    src = gz(tmp_path, bi.tar_bytes([('0.vhd', vhd)]))
    out = bounded('inspect', src, rss_mb=RSS_ACCEPTED,
                  limits={'max_table_entries': limit} if limit else {})
    if accepted:
        assert out['virtual_size'] == 2 * GiB, out
    else:
        refused(out, errors.LimitExceeded, source=src, member='0.vhd',
                field='max table entries',
                says='%d exceeds the limit of %d' % (4 * MiB, limit))


# -- every block of a 1 TiB disk mapped --------------------------------------

BS = 2 * MiB
SPAN = 512 + BS                     # bitmap and data of one block
BLOCKS = TiB // BS                  # 512 Ki entries


def full_map(layout: str):
    """A 1 TiB VHD whose BAT maps all 512 Ki blocks, holding the data of
    one block only; and the size its BAT implies.

    'ordered': block i at its own place, in index order; 'reverse': in
    reverse order (the reader sorts them); 'same': every entry at the one
    block that is there.
    """
    one = bytes(bi.dynamic(size=TiB, blocks=(0,), block_size=BS,
                           batmap=False))
    first = bi.bat(one, 0)                      # sector of block 0
    table = bi.table_at(one)
    step = SPAN // 512
    if layout == 'ordered':
        entries = range(first, first + BLOCKS * step, step)
    elif layout == 'reverse':
        entries = range(first + (BLOCKS - 1) * step, first - 1, -step)
    else:
        entries = [first] * BLOCKS
    bat = array.array('I', entries)
    if sys.byteorder == 'little':
        bat.byteswap()
    vhd = bytearray(one)
    vhd[table:table + 4 * BLOCKS] = bat.tobytes()
    # The data of one block, then the footer: the rest is not there.
    end = first * 512 + SPAN
    claimed = end + (0 if layout == 'same' else (BLOCKS - 1) * SPAN) + 512
    return bytes(vhd[:end]) + bytes(vhd[-512:]), claimed


@pytest.mark.parametrize('layout', ['ordered', 'reverse', 'same'])
@pytest.mark.parametrize('container', ['tgz', 'vhd.gz'])
def test_one_tib_disk_every_block_mapped(layout, container, tmp_path):
    # Decision: a 1 TiB disk with every block mapped is within the limits
    # (XenServer has such disks), so it is not refused by a limit; reading
    # it costs 8 bytes of memory per mapped block, and time in proportion
    # to the bytes actually there. A 4 MiB input claiming it therefore
    # ends, fast and in bounded memory, where its data ends (or, when all
    # entries point at one block, at the first overlap).
    vhd, claimed = full_map(layout)
    if container == 'tgz':
        header = bytes(bi.tar_header(b'0.vhd', size_field=base256(claimed)))
        src = gz(tmp_path, header + bi.padded(vhd))
        member = '0.vhd'
    else:
        src = gz(tmp_path, vhd, 'disk.vhd.gz')
        member = None
    out = bounded('convert', src, dest=tmp_path / 'disk.raw')
    if layout == 'same':
        refused(out, errors.InvalidTable, source=src, member=member,
                field='BAT entry 1', says='overlaps block 0')
    else:
        second = 1 if layout == 'ordered' else BLOCKS - 2
        refused(out, errors.Truncated, source=src, member=member,
                says='block %d' % second)
    assert sorted(os.listdir(tmp_path)) == [src.name]


def test_every_block_mapped_and_present(tmp_path):
    # The expanding variant: 256 MiB in which every block is mapped and
    # present (zeros), 250 KiB as a tgz. Accepted, and memory does not
    # follow the inflated size: the inflater's queue is bounded and zero
    # blocks are left as holes in the new disk.
    size = 256 * MiB
    blocks = {i: (None, bytes(BS)) for i in range(size // BS)}
    buf = io.BytesIO()
    writer.write_dynamic(buf, size, blocks, block_size=BS,
                         unique_id=bi.BASE_ID, timestamp=1)
    src = gz(tmp_path, bi.tar_bytes([('0.vhd', buf.getvalue())]), level=9)
    assert src.stat().st_size < 512 * KiB
    dest = tmp_path / 'disk.raw'
    out = bounded('convert', src, dest=dest, rss_mb=RSS_REFUSED)
    assert out['virtual_size'] == size and out['bytes_written'] == 0, out
    assert dest.stat().st_size == size
    assert dest.stat().st_blocks * 512 < MiB          # sparse


def test_inflater_waits_for_a_slow_reader(tmp_path):
    # The inflater runs in a thread ahead of the reader; its queue is
    # what keeps a 1000:1 gzip from being inflated into memory while the
    # reader (or its target) is slow. The reader stalls for a second at
    # its first piece: 256 MiB could be inflated meanwhile.
    data = bytes(bi.fixed(bytes(256 * MiB)))
    src = gz(tmp_path, bi.tar_bytes([('0.vhd', data)]), level=9)
    out = bounded('stall', src)
    assert out['virtual_size'] == 256 * MiB and out['seconds'] >= 1, out


def test_fixed_disk_of_zeros_over_a_limit(tmp_path):
    # A gzip bomb as a fixed disk: 256 MiB of zeros in 250 KiB. Read in
    # bounded memory when within max_size; refused from the member size,
    # before it is inflated, when not.
    data = bytes(bi.fixed(bytes(256 * MiB)))
    src = gz(tmp_path, bi.tar_bytes([('0.vhd', data)]), level=9)
    assert src.stat().st_size < 512 * KiB
    out = bounded('inspect', src)
    assert out['virtual_size'] == 256 * MiB, out
    out = bounded('inspect', src, limits={'max_size': 128 * MiB})
    refused(out, errors.LimitExceeded, source=src, member='0.vhd',
            field='file size', says='exceeds the limit of %d' % (128 * MiB))


# -- partly filled blocks: max_mask_memory ------------------------------------

def _partial_blocks(n, block_size=4 * KiB):
    """A dynamic VHD of n blocks with only their first sector present."""
    bitmap = b'\x80'.ljust(512, b'\0')
    blocks = {i: (bitmap, bytes(block_size)) for i in range(n)}
    buf = io.BytesIO()
    writer.write_dynamic(buf, n * block_size, blocks, block_size=block_size,
                         unique_id=bi.BASE_ID, timestamp=1, align=512)
    return buf.getvalue()


def test_mask_memory_is_what_the_limit_counts(tmp_path, monkeypatch):
    # The masks of partly filled blocks are kept to the end, for the
    # layers to come: the budget must count what they really cost. The
    # heap the composer holds is measured when all layers are read, and
    # must be within twice what the limit charged (measured: 1.06-1.6x).
    n, bs = 5000, 4 * KiB
    charged = n * (bs // 512 // 8 + 64)
    src = bi.write(tmp_path / 'disk.vhd.gz', _partial_blocks(n, bs), gz=True)
    held = []
    real = compose.Composer.allocated

    def allocated(self, size):
        held.append(tracemalloc.get_traced_memory()[0])
        return real(self, size)

    monkeypatch.setattr(compose.Composer, 'allocated', allocated)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tgz.inspect(str(src), limits=tgz.Limits(max_mask_memory=charged))
    finally:
        tracemalloc.stop()
    assert held[0] - base < 2 * charged + MiB, (held[0] - base, charged)
    bi.assert_rejected(src, errors.LimitExceeded, field='bitmap of block %d'
                       % (n - 1), says='mask memory limit of %d'
                       % (charged - 1),
                       limits=tgz.Limits(max_mask_memory=charged - 1))


# -- depth and loops ----------------------------------------------------------

def _deep_chain(n):
    rnd = random.Random(n)
    specs = [vf.LayerSpec(4 * KiB, {0: (None, rnd.randbytes(4 * KiB))},
                          4 * KiB) for _ in range(n)]
    return vf.build_chain(specs, rnd=rnd, timestamp=1)


@pytest.mark.parametrize('depth, limit, accepted', [
    (30, None, True), (31, None, False), (31, 31, True), (6, 5, False)])
def test_chain_depth(depth, limit, accepted, tmp_path):
    # 31 layers (0.vhd .. 30.vhd) is one more than max_depth: refused at
    # the member that goes past it, before it is read.
    src = gz(tmp_path, bi.tar_bytes([('%d.vhd' % i, f) for i, f in
                                     enumerate(_deep_chain(depth))]))
    out = bounded('convert', src, dest=tmp_path / 'disk.raw',
                  limits={'max_depth': limit} if limit else {})
    if accepted:
        assert out['virtual_size'] == 4 * KiB, out
    else:
        last = (limit or 30)
        refused(out, errors.LimitExceeded, source=src,
                member='%d.vhd' % last,
                says='beyond the depth limit of %d layers' % last)


def _files(directory, files, names):
    for name, data in zip(names, files):
        (directory / name).write_bytes(data)
    return [directory / n for n in names]


@pytest.mark.parametrize('depth', [30, 31])
def test_chain_of_depth(depth, tmp_path):
    # ops follows parent locators as vhd-util does; a chain deeper than
    # its max_depth (30) is refused, not walked.
    paths = _files(tmp_path, _deep_chain(depth),
                   ['%d.vhd' % i for i in range(depth)])
    out = bounded('chain_of', paths[0])
    if depth == 30:
        assert out['chain'] == [str(p) for p in paths], out
    else:
        refused(out, errors.ChainError, source=paths[0],
                says='loops or is deeper than 30')


def _differencing(unique_id, parent_name, parent_id):
    return bytes(bi.differencing(parent_id, parent_name, unique_id=unique_id))


@pytest.mark.parametrize('call', ['chain_of', 'flatten', 'convert'])
@pytest.mark.parametrize('loop', ['a-b-a', 'a-a'])
def test_parent_loop(call, loop, tmp_path):
    # a.vhd's parent is b.vhd, whose parent is a.vhd (or a.vhd its own
    # parent): following locators must notice the loop, not go round it;
    # the one-pass reader never follows them at all.
    ida, idb = b'\xaa' * 16, b'\xbb' * 16
    if loop == 'a-b-a':
        _files(tmp_path, [_differencing(ida, 'b.vhd', idb),
                          _differencing(idb, 'a.vhd', ida)],
               ['a.vhd', 'b.vhd'])
    else:
        _files(tmp_path, [_differencing(ida, 'a.vhd', ida)],
               ['a.vhd'])
    src = tmp_path / 'a.vhd'
    before = sorted(os.listdir(tmp_path))
    # Seconds, not minutes: a loop that is walked round never ends.
    out = bounded(call, src, dest=tmp_path / 'flat.vhd', timeout=20)
    if call == 'convert':
        refused(out, errors.ChainError, source=src, field='disk type',
                says='parent locators are never followed')
    else:
        refused(out, errors.ChainError, source=src,
                says='parent chain loops')
    assert sorted(os.listdir(tmp_path)) == before


# -- the limits are configurable ----------------------------------------------

def _chain_image(tmp_path):
    """A 2-layer tgz with partly filled blocks, accepted by default."""
    base = bi.dynamic(unique_id=bi.BASE_ID)
    kid = bi.differencing(bi.BASE_ID, '1.vhd', blocks=(2, 5))
    # Block 5 of the child: only its first sector present.
    at = bi.bat(kid, 5) * 512
    kid[at:at + 512] = b'\x80'.ljust(512, b'\0')
    return bi.image(tmp_path, [('0.vhd', kid), ('1.vhd', base)], gz=True)


@pytest.mark.parametrize('entry', ['convert', 'inspect'])
@pytest.mark.parametrize('limits, member, field, says', [
    ({'max_size': bi.SIZE - 512}, '0.vhd', 'footer copy current size',
     'exceeds the limit of %d' % (bi.SIZE - 512)),
    ({'max_table_entries': 15}, '0.vhd', 'max table entries',
     '16 exceeds the limit of 15'),
    ({'max_depth': 1}, '1.vhd', None, 'beyond the depth limit of 1'),
    ({'max_mask_memory': 64}, '0.vhd', 'bitmap of block 5',
     'mask memory limit of 64'),
])
def test_a_lower_limit_refuses(entry, limits, member, field, says,
                               tmp_path):
    # What the defaults accept, each limit set lower refuses, through
    # convert(limits=) and inspect(limits=) alike.
    src = _chain_image(tmp_path)
    assert bi.convert_ok(src, tmp_path)
    if entry == 'convert':
        bi.assert_rejected(src, errors.LimitExceeded, member=member,
                           field=field, says=says,
                           limits=tgz.Limits(**limits))
    else:
        with pytest.raises(errors.LimitExceeded) as info:
            tgz.inspect(str(src), limits=tgz.Limits(**limits))
        assert info.value.member == member and says in str(info.value)
        if field:
            assert info.value.field == field


def test_vhdfile_takes_limits(tmp_path):
    # The random-access reader takes the same Limits.
    path = bi.write(tmp_path / 'disk.vhd', bi.dynamic())
    image.VhdFile(str(path)).close()
    for limits, field in ((tgz.Limits(max_size=bi.SIZE - 512),
                           'footer current size'),
                          (tgz.Limits(max_table_entries=15),
                           'max table entries')):
        with pytest.raises(errors.LimitExceeded) as info:
            image.VhdFile(str(path), limits=limits)
        assert info.value.field == field and info.value.source == str(path)


# -- random access: the layout check of a fully mapped BAT ------------------

def test_vhdfile_every_entry_mapped(tmp_path):
    entries = 4 * MiB
    vhd = empty_dynamic(entries * 512, block_size=512, batmap=False)
    table = bi.table_at(vhd)
    bat = array.array('I', range(1 << 20, (1 << 20) + 2 * entries, 2))
    if sys.byteorder == 'little':
        bat.byteswap()
    vhd[table:table + 4 * entries] = bat.tobytes()
    path = bi.write(tmp_path / 'disk.vhd', vhd)
    out = bounded('vhdfile', path, rss_mb=RSS_ACCEPTED)
    refused(out, errors.InvalidTable, source=path, field='BAT entry 0',
            says='runs past the end of the file')
