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
"""Run one fuzz input through the library and check the outcome.

Any input may be refused, but only with a VhdError: every other exception
escapes run_one and is a bug. Beyond that, whatever happens:

- the refusal is one non-empty line that starts with the input's path and
  has the path as its ``source`` (the contract of errors.VhdError);
- the input file is unchanged and nothing is left beside it or in the
  output directory (a failed convert leaves no temporary file, a
  successful one only the disk, of the virtual size);
- inspect and convert agree: the same result, or the same refusal;
- for gzip input, the outcome does not depend on the inflater installed
  (isal, zlib-ng or zlib), nor on whether the input is a file (read
  through memory maps) or a pipe (read, its size unknown);
- a disk converted in place over an old, longer file full of garbage is
  the same disk (the zero-filling of holes and of partial blocks);
- a plain single VHD that both readers accept reads the same through the
  random-access VhdFile as through convert.

A violation raises Bug.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import sys
import tempfile
import zlib

from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import ops
from xenapinfs_driver.vhd import stream
from xenapinfs_driver.vhd import tgz

INPUT_NAME = 'input.img'
DISK_NAME = 'disk.raw'
# Blocks the random-access cross-check reads at most, to keep it cheap.
MAX_COMPARED_BLOCKS = 256
# Largest disk converted a second time, in place: a mutated size field
# can make a valid disk of up to max_size (2 TiB), all of it zero-filled.
MAX_IN_PLACE = 16 << 20


class Bug(AssertionError):
    """An outcome no input may have."""


class Hang(Bug):
    """One input took longer than the time limit."""


def inflaters() -> list:
    """The zlib implementations installed, fastest first."""
    found = []
    for name in ('isal', 'zlib-ng', 'zlib'):
        try:
            stream.pick_zlib(name)
        except ValueError:
            continue
        found.append(name)
    return found


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise Hang in the main thread if the block runs longer than seconds.

    Only for in-process runs (CI): the long runner's parent process also
    kills a child that does not answer, which catches a hang in C code.
    """
    if not seconds:
        yield
        return

    def alarm(signum, frame):
        raise Hang('no result after %.1f s: a hang?' % seconds)

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def check_error(exc: errors.VhdError, source: str) -> None:
    """The contract of a refusal: one line, naming the input first."""
    text = str(exc)
    if not isinstance(exc.reason, str) or not exc.reason.strip():
        raise Bug('%s without a reason: %r' % (type(exc).__name__, text))
    if '\n' in text or '\r' in text:
        raise Bug('message of more than one line: %r' % text)
    if exc.source != source or not text.startswith(source + ': '):
        raise Bug('message does not name the input %s first: %r (source '
                  '%r)' % (source, text, exc.source))


def _attempt(fn, *args, **kwargs):
    """fn's result, or the VhdError it raised; anything else escapes."""
    try:
        return fn(*args, **kwargs)
    except errors.VhdError as exc:
        return exc


def _outcome(res) -> str:
    if isinstance(res, errors.VhdError):
        return 'refused %s' % type(res).__name__
    return 'ok %s' % res.container


def _summary(res, names: bool):
    """What a result says; without the names when the input had another
    (a vhd from a pipe is '<stdin>', from a file its basename)."""
    layers = [((layer.name,) if names else ()) + (
        layer.rank, layer.present_sectors) for layer in res.layers]
    warnings = res.warnings if names else [
        w.split(': ', 1)[-1] for w in res.warnings]
    return (res.container, res.virtual_size, res.allocated, layers,
            warnings)


def _same(a, b, what: str, messages: bool = True) -> None:
    """a and b (results or refusals) must agree; messages=False compares
    refusals by class and results without names."""
    if isinstance(a, errors.VhdError) or isinstance(b, errors.VhdError):
        if type(a) is not type(b) or (messages and str(a) != str(b)):
            raise Bug('%s disagree: %s (%s) and %s (%s)' % (
                what, _outcome(a), a if isinstance(a, errors.VhdError)
                else '', _outcome(b), b if isinstance(b, errors.VhdError)
                else ''))
        return
    mine, theirs = _summary(a, messages), _summary(b, messages)
    if mine != theirs:
        raise Bug('%s disagree on the result: %r and %r'
                  % (what, mine, theirs))


def _listing(directory: str) -> list:
    return sorted(os.listdir(directory))


def run_one(data: bytes, zlib_name: str | None = None) -> str:
    """Run data through inspect, convert and VhdFile; return the outcome.

    :param zlib_name: the inflater; by default one of those installed,
        picked by the input's CRC so that a run covers all of them.
    """
    impls = inflaters()
    if zlib_name is None:
        zlib_name = impls[zlib.crc32(data) % len(impls)]
    tmp = tempfile.mkdtemp(prefix='vhdfuzz-')
    try:
        in_dir, out_dir = os.path.join(tmp, 'in'), os.path.join(tmp, 'out')
        os.mkdir(in_dir)
        os.mkdir(out_dir)
        src = os.path.join(in_dir, INPUT_NAME)
        dest = os.path.join(out_dir, DISK_NAME)
        with open(src, 'wb') as f:
            f.write(data)

        seen = _attempt(tgz.inspect, src, zlib_name=zlib_name)
        done = _attempt(tgz.convert, src, dest, zlib_name=zlib_name)
        for res in (seen, done):
            if isinstance(res, errors.VhdError):
                check_error(res, src)
        _same(seen, done, 'inspect and convert')
        if isinstance(done, errors.VhdError):
            if _listing(out_dir):
                raise Bug('a refused convert left %s' % _listing(out_dir))
        else:
            if _listing(out_dir) != [DISK_NAME]:
                raise Bug('convert left %s' % _listing(out_dir))
            if os.path.getsize(dest) != done.virtual_size:
                raise Bug('disk of %d bytes, virtual size %d'
                          % (os.path.getsize(dest), done.virtual_size))

        if not isinstance(done, errors.VhdError) and \
                done.virtual_size <= MAX_IN_PLACE:
            _in_place(src, dest, done, zlib_name)

        if data[:2] == stream.GZIP_MAGIC:
            if len(impls) > 1:
                other = impls[(impls.index(zlib_name) + 1) % len(impls)]
                # Messages quote each inflater's own text: compare classes.
                _same(seen, _attempt(tgz.inspect, src, zlib_name=other),
                      'inflaters %s and %s' % (zlib_name, other),
                      messages=False)
            piped = _from_stdin(src, zlib_name)
            _same(seen, piped, 'file and pipe', messages=False)
            if isinstance(piped, errors.VhdError) and \
                    piped.field != seen.field:
                raise Bug('file and pipe disagree on the field: %s and %s'
                          % (seen, piped))

        _random_access(src, done, dest)

        if _listing(in_dir) != [INPUT_NAME]:
            raise Bug('left beside the input: %s' % _listing(in_dir))
        with open(src, 'rb') as f:
            if f.read() != data:
                raise Bug('the input was modified')
        return _outcome(done)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _in_place(src: str, dest: str, done, zlib_name: str) -> None:
    """Convert again over an old file: the same disk must come out."""
    old = dest + '.old'
    with open(old, 'wb') as f:
        f.write(b'\xa5' * (done.virtual_size + 4096))
    try:
        again = _attempt(tgz.convert, src, old, in_place=True,
                         zlib_name=zlib_name)
        _same(done, again, 'convert and convert in place')
        with open(dest, 'rb') as a, open(old, 'rb') as b:
            if a.read() != b.read():
                raise Bug('convert in place over old data gives another '
                          'disk: holes or partial blocks not zero-filled?')
    finally:
        os.unlink(old)


def _from_stdin(src: str, zlib_name: str):
    """inspect('-') with the input as standard input."""
    saved = sys.stdin
    with open(src, 'rb') as f:
        sys.stdin = io.TextIOWrapper(f)
        try:
            res = _attempt(tgz.inspect, '-', zlib_name=zlib_name)
        finally:
            sys.stdin.detach()
            sys.stdin = saved
    if isinstance(res, errors.VhdError):
        check_error(res, '<stdin>')
    return res


def _random_access(src: str, done, dest: str) -> None:
    """Open the input as vhd-util's operations do; compare with convert."""
    try:
        vhd = image.VhdFile(src)
    except errors.VhdError as exc:
        check_error(exc, src)
        return
    with vhd:
        compare = (not isinstance(done, errors.VhdError)
                   and done.container == 'vhd')
        disk = open(dest, 'rb') if compare else None
        try:
            if vhd.header is None:
                if disk is not None and disk.read() != os.pread(
                        vhd.fd, vhd.size, 0):
                    raise Bug('VhdFile and convert read different fixed '
                              'disks')
                return
            for idx in vhd.allocated()[:MAX_COMPARED_BLOCKS]:
                try:
                    mask = vhd.mask(idx)
                    data = vhd.read_block(idx)
                except errors.VhdError as exc:
                    check_error(exc, src)
                    return
                if disk is not None:
                    _compare_block(vhd, idx, mask, data, disk)
        finally:
            if disk is not None:
                disk.close()
        differencing = vhd.footer.disk_type == fmt.DISK_DIFFERENCING
    if differencing:
        try:
            ops.chain_of(src)
        except errors.VhdError as exc:
            # The parent, not the input, may be what is wrong.
            if not exc.source or not str(exc).startswith(exc.source):
                raise Bug('chain_of: message without its file: %r'
                          % str(exc))


def _compare_block(vhd, idx, mask, data, disk) -> None:
    """The block's present sectors are the disk's; the others are zero
    (a single VHD: nothing below it)."""
    base = idx * vhd.block_size
    got = os.pread(disk.fileno(), vhd.block_size, base)
    for s in range(min(vhd.spb, len(got) // fmt.SECTOR)):
        want = data[s * fmt.SECTOR:(s + 1) * fmt.SECTOR] \
            if mask >> (vhd.spb - 1 - s) & 1 else bytes(fmt.SECTOR)
        if got[s * fmt.SECTOR:(s + 1) * fmt.SECTOR] != want:
            raise Bug('VhdFile and convert disagree on sector %d of '
                      'block %d' % (s, idx))
