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
import sys

from xenapinfs_driver.cmd import pipes
from xenapinfs_driver.cmd import vhdutil_common as common
from xenapinfs_driver.cmd import vhdutil_create as creating
from xenapinfs_driver.cmd import vhdutil_edit as editing
from xenapinfs_driver.cmd import vhdutil_inspect as inspecting
from xenapinfs_driver.vhd import errors

PROG = common.PROG
_p = errors.printable
_err = common.err
Usage = common.Usage
Failure = common.Failure


# -- dispatch ----------------------------------------------------------------

class Command:
    def __init__(self, func, optstring: str, usage: str):
        self.func = func
        self.optstring = optstring
        self.usage = usage


COMMANDS = {
    'create': Command(creating.cmd_create, 'n:s:S:rh',
                      '<-n name> <-s size (MB)> [-r reserve] [-h help] '
                      '[<-S size (MB) for metadata preallocation '
                      '(see vhd-util resize)>]'),
    'snapshot': Command(creating.cmd_snapshot, 'n:p:S:l:meh',
                        '<-n name> <-p parent name> [-l snapshot depth '
                        'limit] [-m parent_is_raw] [-S size (MB) for '
                        'metadata preallocation (see vhd-util resize)] [-e '
                        'link to supplied parent name even if it\'s empty] '
                        '[-h help]'),
    'query': Command(inspecting.cmd_query, 'n:vspfdSh',
                     '<-n name> [-v print virtual size (in MB)] [-s print '
                     'physical utilization (bytes)] [-p print parent] [-f '
                     'print fields] [-d print chain depth] [-S print max '
                     'virtual size (MB) for fast resize] [-h help]'),
    'read': Command(inspecting.cmd_read, 'n:pt:b:Bm:i:e:aj:d:c:r:R:xCh',
                    '<-n name> [-p print VHD headers] [-x print in hex] '
                    '[-h help]'),
    'set': Command(editing.cmd_set, 'n:f:v:h',
                   '<-n name> <-f field> <-v value> [-h help]'),
    'resize': Command(editing.cmd_resize, 'n:s:j:fh',
                      '<-n name> <-s size (in MB)> (<-j journal>|<-f fast>) '
                      '[-h help]'),
    'coalesce': Command(editing.cmd_coalesce, 'n:o:a:sph',
                        '<-n name> [-o output] [-s sparse] [-p progress] '
                        '[-h help]'),
    'modify': Command(editing.cmd_modify, 'n:s:p:mzh',
                      '<-n name> [-p NEW_PARENT set parent] [-h help]'),
    'check': Command(inspecting.cmd_check, 'n:iItpbBsh',
                     '-n <file> [-I ignore parent uuids] [-t ignore '
                     'timestamps] [-B do not check BAT for overlapping '
                     '(precludes -b)] [-p check parents] [-b check bitmaps] '
                     '[-h help]'),
    'revert': Command(editing.cmd_revert, 'n:j:h',
                      '<-n name> <-j journal> [-h help]'),
}
# blktap's other commands, not implemented here (exit ENOSYS).
OTHER_COMMANDS = ('repair', 'fill', 'scan', 'copy', 'key')


def usage_text() -> str:
    return ('usage: %s COMMAND [OPTIONS]\nCOMMAND := { %s }\n'
            % (PROG, ' | '.join(COMMANDS)))


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
            common.out('options: ' + cmd.usage)
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
        pipes.silence_stdout()
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
