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
"""``vhd-util``: the part of blktap's tool that Cinder and XenServer call.

Cinder's ``image_utils`` (``modify -p``, ``query -v``, ``resize -j``,
``coalesce``) and the XenServer dom0 glance plugin (``query -p``/``-f``,
``check -p``, ``modify -p``) run ``vhd-util`` as a program; this one has
the same subcommands, option letters, output and exit codes, built on
``xenapinfs_driver.vhd.ops``. It is written from blktap's documented
behaviour; no blktap code is used.

Where it deliberately differs from blktap (each fixes a pitfall of the
published Cinder pipeline, see README.rst):

* ``resize`` rounds the new size up to a whole block (2 MiB), like
  blktap, but a request for the size ``query -v`` reports (the current
  size truncated to MiB) is a no-op instead of a refused shrink, and a
  preallocated BAT (``create -S``) is grown correctly with ``-j`` too.
* ``coalesce`` first grows the parent to the child's size when the child
  is the bigger, where blktap fails with ERANGE and loses the tail.

Output: what vhd-util prints on stdout is printed on stdout, with the
texts callers parse (``has no parent``, ``query failed``, ``hidden: N``,
``chain depth: N``, ``... is valid``, ``... invalid ...``). Every error is
one line on stderr, ``vhd-util: COMMAND: ...``; never a traceback.

Exit status, like vhd-util's (a positive errno): 0 success; 22 (EINVAL)
bad usage, an invalid VHD, or an operation the file does not allow;
2 (ENOENT), 13 (EACCES), 28 (ENOSPC)... the errno of a failed system call
on a named file; 17 (EEXIST) a file to create, or a journal, exists;
28 (ENOSPC) ``snapshot -l`` depth exceeded; 38 (ENOSYS) a blktap option or
command that is not implemented here; 130 interrupted.
"""

from __future__ import annotations

import errno
import getopt
import os
import sys
import time
import uuid as uuidlib

from xenapinfs_driver.cmd import _util
from xenapinfs_driver.cmd import vhdutil_read as dumping
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import journal as journalmod
from xenapinfs_driver.vhd import ops
from xenapinfs_driver.vhd import validate
from xenapinfs_driver.vhd import writer

PROG = 'vhd-util'
MiB = 1 << 20
# blktap refuses timestamps further in the future than this (NFS skew).
TIMESTAMP_SLACK = 1800
_p = errors.printable


class Usage(Exception):
    """The command line is wrong (exit EINVAL)."""


class Failure(Exception):
    """The operation failed: one line on stderr and an errno exit."""

    def __init__(self, message: str, code: int = errno.EINVAL):
        super().__init__(message)
        self.code = code


def _out(text: str = '') -> None:
    sys.stdout.write(text + '\n')


def _need(path: str) -> None:
    """Fail with the file's own errno (ENOENT, EACCES...) if it is not
    there; the library would only say that it is not a valid VHD."""
    os.stat(path)


def _absent(path: str, what: str = '') -> None:
    if os.path.lexists(path):
        raise Failure('%s%s: already exists' % (what, path), errno.EEXIST)


def _int(text: str, what: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise Usage('invalid %s %r' % (what, text)) from None
    if value < 0:
        raise Usage('invalid %s %r' % (what, text))
    return value


def _round_up(n: int, to: int) -> int:
    return n + (-n % to)


def _max_size(size: int) -> None:
    limit = validate.MAX_SIZE
    if size > limit:
        raise Failure('%d MB is more than the largest VHD the library opens '
                      '(%d MB)' % (-(-size // MiB), limit // MiB))


def _not_implemented(opts: dict, letters: dict) -> None:
    for letter, what in letters.items():
        if letter in opts:
            raise Failure('option -%s (%s) is not implemented by this '
                          'vhd-util' % (letter, what), errno.ENOSYS)


# -- query -------------------------------------------------------------------

def cmd_query(o: dict) -> int:
    name = o['n']
    _need(name)
    rc = 0
    with image.VhdFile(name) as vhd:
        if 'v' in o:
            _out('%d' % (vhd.size >> 20))
        if 's' in o:
            _out('%d' % (vhd.footer_offset + fmt.FOOTER_SIZE))
        if 'p' in o:
            if vhd.footer.disk_type != fmt.DISK_DIFFERENCING:
                _out('%s has no parent' % name)
            else:
                try:
                    _out(os.path.realpath(ops.parent_path(name)))
                except errors.VhdError as exc:
                    # The glance plugin looks for these words on stdout.
                    _out('query failed')
                    _err('query', exc)
                    rc = errno.EINVAL
        if 'f' in o:
            _out('hidden: %d' % vhd.footer.hidden)
        if 'd' in o:
            try:
                _out('chain depth: %d' % len(ops.chain_of(name)))
            except errors.VhdError as exc:
                _err('query', 'error checking chain depth: %s' % exc)
                rc = rc or errno.EINVAL
        if 'S' in o:
            entries = vhd.header.max_table_entries if vhd.header else 0
            block = vhd.block_size if vhd.header else 0
            _out('%d' % (entries * block >> 20))
    return rc


# -- modify ------------------------------------------------------------------

def cmd_modify(o: dict) -> int:
    _not_implemented(o, {'s': 'set the physical size',
                         'm': 'raw parent', 'z': 'zero the BAT'})
    name = o['n']
    _need(name)
    if 'p' not in o:
        with image.VhdFile(name):
            return 0
    parent = o['p']
    _need(parent)
    if os.path.realpath(parent) == os.path.realpath(name):
        raise Failure("failed to set parent to '%s': a VHD cannot be its "
                      "own parent" % parent)
    try:
        ops.set_parent(name, parent)
    except errors.VhdError as exc:
        raise Failure("failed to set parent to '%s': %s" % (parent, exc))
    return 0


# -- resize ------------------------------------------------------------------

def _resize(path: str, size: int, journal: str | None, what: str) -> None:
    """ops.resize; if it fails after starting the journal, revert."""
    if journal is not None:
        _absent(journal, 'creating journal failed: ')
    try:
        ops.resize(path, size, journal)
    except BaseException as exc:
        if journal is not None and os.path.exists(journal):
            try:
                journalmod.revert(path, journal)
            except (OSError, errors.VhdError) as rexc:
                raise Failure('%s failed: %s; reverting the journal %s '
                              'failed too: %s; run vhd-util revert -n %s '
                              '-j %s' % (what, exc, journal, rexc, path,
                                         journal)) from None
        if isinstance(exc, errors.VhdError):
            raise Failure('%s failed: %s' % (what, exc)) from None
        raise


def cmd_resize(o: dict) -> int:
    if 's' not in o:
        raise Usage('-s size (in MB) is required')
    if ('j' in o) == ('f' in o):
        raise Usage('one of -j journal and -f (fast) is required')
    name = o['n']
    mib = _int(o['s'], 'size')
    _need(name)
    with image.VhdFile(name) as vhd:
        if not vhd.footer.creator_app.startswith(b'tap'):
            raise Failure('%s not created by xen; resize not supported'
                          % name)
        if vhd.header is None:
            raise Failure('resizing a fixed VHD is not implemented by this '
                          'vhd-util', errno.ENOSYS)
        current, block = vhd.size, vhd.block_size
    # Like blktap: whole blocks. A request for what query -v says (the
    # current size truncated to MiB) keeps the size: Cinder asks for that
    # when a parent is as big as its child.
    size = _round_up(mib * MiB, block)
    _max_size(size)
    if size == current or (size < current and mib == current >> 20):
        return 0
    if size < current:
        raise Failure('%s: size (%d) < curr size (%d): shrinking is not '
                      'supported' % (name, size, current), errno.ENOSYS)
    _resize(name, size, o.get('j'), 'resize')
    return 0


# -- coalesce ----------------------------------------------------------------

def cmd_coalesce(o: dict) -> int:
    _not_implemented(o, {'a': 'coalesce onto an ancestor'})
    name = o['n']
    _need(name)
    try:
        if 'o' in o:
            _absent(o['o'])
            ops.flatten(name, o['o'])
            return 0
        parent = ops.parent_path(name)
        if parent is None:
            raise Failure('error finding %s parent: not a differencing '
                          'disk' % name)
        size = ops.get_size(name)
        if ops.get_size(parent) < size:
            # blktap fails here (ERANGE) and the tail of the child is
            # lost; grow the parent to the child's size first.
            journal = os.path.join(os.path.dirname(parent), '.%s.journal'
                                   % os.path.basename(parent))
            _resize(parent, size, journal, 'growing the parent')
        ops.coalesce(name, parent)
    except errors.VhdError as exc:
        raise Failure('error coalescing: %s' % exc) from None
    if 'p' in o:
        _out('100.00%')
    return 0


# -- check -------------------------------------------------------------------

_PARTS = [(errors.InvalidFooter, 'footer'), (errors.InvalidHeader, 'header'),
          (errors.InvalidTable, 'BAT'), (errors.ChainError, 'parent'),
          (errors.VhdError, 'file')]


def _problem(exc: errors.VhdError) -> str:
    part = next(p for cls, p in _PARTS if isinstance(exc, cls))
    what = '%s: %s' % (exc.field, exc.reason) if exc.field else exc.reason
    return '%s invalid: %s' % (part, _p(what))


def _vhd_now() -> int:
    return int(time.time()) - fmt.VHD_EPOCH


def _check_vhd(path: str, o: dict) -> str | None:
    """What is wrong with the VHD at path, in one line, or None."""
    try:
        vhd = image.VhdFile(path, check_layout='B' not in o)
    except errors.VhdError as exc:
        return _problem(exc)
    with vhd:
        now = None if 't' in o else _vhd_now() + TIMESTAMP_SLACK
        msg = validate.audit(vhd, now=now, bitmaps='b' in o)
        if msg or vhd.footer.disk_type != fmt.DISK_DIFFERENCING:
            return msg
        try:
            parent = ops.parent_path(path)
        except errors.VhdError as exc:
            return 'parent locator invalid: %s' % _p(exc.reason)
        if 'I' not in o:
            try:
                with image.VhdFile(parent) as par:
                    pid = par.footer.unique_id
            except errors.VhdError as exc:
                return 'invalid parent %s: %s' % (_p(parent), exc)
            if pid != vhd.header.parent_unique_id:
                return ('invalid parent %s: invalid parent uuid %s '
                        '(the parent is %s)' % (
                            _p(parent), vhd.header.parent_uuid,
                            uuidlib.UUID(bytes=pid)))
    return None


def cmd_check(o: dict) -> int:
    _not_implemented(o, {'i': 'ignore a missing primary footer',
                         's': 'statistics'})
    if 'B' in o and 'b' in o:
        raise Usage('-B precludes -b')
    name = o['n']
    _need(name)
    path = name
    seen = set()
    while True:
        msg = _check_vhd(path, o)
        if msg:
            _out(msg)
            _out('%s appears invalid; dumping metadata' % path)
            _dump(path, False)
            return errno.EINVAL
        _out('%s is valid' % path)
        if 'p' not in o:
            return 0
        with image.VhdFile(path) as vhd:
            if vhd.footer.disk_type != fmt.DISK_DIFFERENCING:
                return 0
        seen.add(os.path.realpath(path))
        path = os.path.realpath(ops.parent_path(path))
        if path in seen:
            _out('parent invalid: the chain loops back to %s' % _p(path))
            return errno.EINVAL


# -- create and snapshot -----------------------------------------------------

def _entries(msize_mib: int, block: int) -> int | None:
    return -(-msize_mib * MiB // block) if msize_mib else None


def cmd_create(o: dict) -> int:
    _not_implemented(o, {'r': 'fixed (reserved) disk'})
    if 's' not in o:
        raise Usage('-s size (MB) is required')
    name = o['n']
    size = _int(o['s'], 'size')
    msize = _int(o.get('S', '0'), 'size')
    if msize and msize < size:
        raise Failure('<-S size> must be greater than <-s size>')
    _max_size(max(size, msize) * MiB)
    _absent(name)
    ops.create(name, size * MiB,
               max_table_entries=_entries(msize, writer.DEFAULT_BLOCK))
    return 0


def _has_data(vhd) -> bool:
    return any(e != fmt.BAT_UNUSED for e in vhd.bat)


def cmd_snapshot(o: dict) -> int:
    _not_implemented(o, {'m': 'raw parent'})
    if 'p' not in o:
        raise Usage('-p parent is required')
    name, pname = o['n'], o['p']
    _need(pname)
    _absent(name)
    ppath = os.path.realpath(pname)
    backing = ppath
    if 'e' not in o:
        # Like blktap: an empty differencing parent is skipped, the new
        # child points at the first ancestor that holds data.
        seen = set()
        while True:
            with image.VhdFile(backing) as vhd:
                if vhd.footer.disk_type != fmt.DISK_DIFFERENCING or \
                        _has_data(vhd):
                    break
            seen.add(backing)
            backing = os.path.realpath(ops.parent_path(backing))
            if backing in seen:
                raise Failure('the parent chain of %s loops back to %s'
                              % (pname, backing))
    size = ops.get_size(ppath)
    if 'l' in o:
        limit = _int(o['l'], 'depth limit')
        depth = len(ops.chain_of(backing))
        if limit and depth + 1 > limit:
            raise Failure('snapshot depth exceeded: current depth: %d, '
                          'limit: %d' % (depth, limit), errno.ENOSPC)
    if 'S' in o:
        msize = _int(o['S'], 'size')
        _max_size(msize * MiB)
        if msize * MiB < size:
            raise Failure('<-S size> must be at least the parent\'s size '
                          '(%d MB)' % -(-size // MiB))
        with image.VhdFile(backing) as par:
            block = par.block_size if par.header else \
                writer.DEFAULT_BLOCK
        ops.create(name, size, parent=backing, block_size=block,
                   max_table_entries=_entries(msize, block))
    else:
        ops.snapshot(name, backing, size)
    return 0


# -- read --------------------------------------------------------------------

def _dump(path: str, hexa: bool) -> None:
    try:
        with image.VhdFile(path) as vhd:
            lines = dumping.headers_lines(vhd, hexa)
    except errors.VhdError:
        lines = dumping.raw_dump_lines(path, hexa)
    for line in lines:
        _out(line)


def cmd_read(o: dict) -> int:
    _not_implemented(o, {k: 'read -%s' % k for k in 'tbBmiejadcrR'})
    name = o['n']
    _need(name)
    hexa = 'x' in o
    try:
        vhd = image.VhdFile(name)
    except errors.VhdError as exc:
        _err('read', 'Failed to open %s' % exc)
        _out('')
        _out('%s appears invalid; dumping headers' % name)
        _out('')
        for line in dumping.raw_dump_lines(name, hexa):
            _out(line)
        return errno.EINVAL
    with vhd:
        if 'p' in o:
            for line in dumping.headers_lines(vhd, hexa):
                _out(line)
    return 0


# -- set and revert ----------------------------------------------------------

def cmd_set(o: dict) -> int:
    if 'f' not in o or 'v' not in o:
        raise Usage('-f field and -v value are required')
    field = o['f']
    if field == 'marker':
        raise Failure('field marker is not implemented by this vhd-util',
                      errno.ENOSYS)
    if field != 'hidden':
        raise Usage('invalid field %s' % field)
    value = _int(o['v'], 'value')
    if value > 1:
        # blktap takes 0..255 but its own check calls anything but 0 and
        # 1 an invalid hidden state.
        raise Usage('invalid value %d (hidden is 0 or 1)' % value)
    name = o['n']
    _need(name)
    with image.VhdFile(name, writable=True) as vhd:
        vhd.set_hidden(bool(value))
        vhd.flush()
    return 0


def cmd_revert(o: dict) -> int:
    if 'j' not in o:
        raise Usage('-j journal is required')
    _need(o['n'])
    _need(o['j'])
    try:
        journalmod.revert(o['n'], o['j'])
    except errors.VhdError as exc:
        raise Failure('reverting journal failed: %s' % exc) from None
    return 0


# -- dispatch ----------------------------------------------------------------

class Command:
    def __init__(self, func, optstring: str, usage: str):
        self.func = func
        self.optstring = optstring
        self.usage = usage


COMMANDS = {
    'create': Command(cmd_create, 'n:s:S:rh',
                      '<-n name> <-s size (MB)> [-r reserve] [-h help] '
                      '[<-S size (MB) for metadata preallocation '
                      '(see vhd-util resize)>]'),
    'snapshot': Command(cmd_snapshot, 'n:p:S:l:meh',
                        '<-n name> <-p parent name> [-l snapshot depth '
                        'limit] [-m parent_is_raw] [-S size (MB) for '
                        'metadata preallocation (see vhd-util resize)] [-e '
                        'link to supplied parent name even if it\'s empty] '
                        '[-h help]'),
    'query': Command(cmd_query, 'n:vspfdSh',
                     '<-n name> [-v print virtual size (in MB)] [-s print '
                     'physical utilization (bytes)] [-p print parent] [-f '
                     'print fields] [-d print chain depth] [-S print max '
                     'virtual size (MB) for fast resize] [-h help]'),
    'read': Command(cmd_read, 'n:pt:b:Bm:i:e:aj:d:c:r:R:xCh',
                    '<-n name> [-p print VHD headers] [-x print in hex] '
                    '[-h help]'),
    'set': Command(cmd_set, 'n:f:v:h',
                   '<-n name> <-f field> <-v value> [-h help]'),
    'resize': Command(cmd_resize, 'n:s:j:fh',
                      '<-n name> <-s size (in MB)> (<-j journal>|<-f fast>) '
                      '[-h help]'),
    'coalesce': Command(cmd_coalesce, 'n:o:a:sph',
                        '<-n name> [-o output] [-s sparse] [-p progress] '
                        '[-h help]'),
    'modify': Command(cmd_modify, 'n:s:p:mzh',
                      '<-n name> [-p NEW_PARENT set parent] [-h help]'),
    'check': Command(cmd_check, 'n:iItpbBsh',
                     '-n <file> [-I ignore parent uuids] [-t ignore '
                     'timestamps] [-B do not check BAT for overlapping '
                     '(precludes -b)] [-p check parents] [-b check bitmaps] '
                     '[-h help]'),
    'revert': Command(cmd_revert, 'n:j:h', '<-n name> <-j journal> [-h help]'),
}
# blktap's other commands, not implemented here (exit ENOSYS).
OTHER_COMMANDS = ('repair', 'fill', 'scan', 'copy', 'key')


def usage_text() -> str:
    return ('usage: %s COMMAND [OPTIONS]\nCOMMAND := { %s }\n'
            % (PROG, ' | '.join(COMMANDS)))


def _err(command: str, what) -> None:
    sys.stderr.write('%s: %s: %s\n' % (PROG, command, what))


def _parse(cmd: Command, args: list) -> dict | None:
    try:
        pairs, rest = getopt.getopt(args, cmd.optstring)
    except getopt.GetoptError as exc:
        raise Usage(str(exc)) from None
    if rest:
        raise Usage('unexpected argument %r' % rest[0])
    opts = {k[1:]: v for k, v in pairs}
    if 'h' in opts:
        return None
    if 'n' not in opts:
        raise Usage('-n name is required')
    return opts


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [a for a in argv if a != '--debug']      # as blktap does
    if not argv or argv[0] in ('-h', '--help', 'help'):
        (sys.stdout if argv else sys.stderr).write(usage_text())
        return 0 if argv else errno.EINVAL
    name, args = argv[0], argv[1:]
    cmd = COMMANDS.get(name)
    if cmd is None:
        if name in OTHER_COMMANDS:
            sys.stderr.write('%s: %s: not implemented by this vhd-util\n'
                             % (PROG, name))
            return errno.ENOSYS
        sys.stderr.write('%s: invalid COMMAND %s (one of: %s)\n'
                         % (PROG, _p(name), ', '.join(COMMANDS)))
        return errno.EINVAL
    try:
        opts = _parse(cmd, args)
        if opts is None:
            _out('options: ' + cmd.usage)
            return 0
        return cmd.func(opts)
    except Usage as exc:
        _err(name, "%s (see '%s %s -h')" % (_p(str(exc)), PROG, name))
        return errno.EINVAL
    except Failure as exc:
        _err(name, _p(str(exc)))
        return exc.code
    except errors.VhdError as exc:
        _err(name, exc)
        return errno.EINVAL
    except BrokenPipeError:
        _util.silence_stdout()
        return errno.EPIPE
    except OSError as exc:
        where = '%s: ' % _p(exc.filename) if exc.filename else ''
        _err(name, '%s%s' % (where, exc.strerror or exc))
        return exc.errno or errno.EIO
    except KeyboardInterrupt:
        _err(name, 'interrupted')
        return 130


if __name__ == '__main__':
    sys.exit(main())
