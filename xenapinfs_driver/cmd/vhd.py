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
"""``xenapinfs-vhd``: XenServer images and VHD files without vhd-util.

Exit status: 0 success (for ``check``: the image is valid), 1 the input is
invalid or the output could not be written (one line on stderr says which
file and which field), 2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from xenapinfs_driver.cmd import pipes
from xenapinfs_driver.vhd import tgz as convertmod
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt

_p = errors.printable

PROG = 'xenapinfs-vhd'

DESCRIPTION = """\
Turn a XenServer image (a tar.gz of a VHD chain 0.vhd .. n.vhd) or a VHD
file into a raw disk in one pass, and inspect or check one; pack a raw disk
into a XenServer image. Inputs are never modified; parent locators are
never followed.
"""

EPILOG = """\
examples:
  %(prog)s convert image.tgz disk.raw      XenServer export to a raw disk
  %(prog)s convert - disk.raw < image.tgz  the same, from standard input
  %(prog)s convert base.vhd /dev/sdX       a VHD onto a block device
  %(prog)s info --json image.tgz           layers, sizes, allocation
  %(prog)s check image.tgz && echo valid
  %(prog)s pack disk.raw image.tgz         a raw disk to a XenServer image
  %(prog)s pack --vhd disk.raw disk.vhd    the same as a bare dynamic VHD

exit status: 0 success, 1 invalid input or output error, 2 usage error,
130 interrupted.
"""


def _size(text: str) -> int:
    units = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}
    text = text.strip().upper().rstrip('B').rstrip('I')
    mult = units.get(text[-1:], 1)
    if text[-1:] in units:
        text = text[:-1]
    try:
        value = int(text) * mult
    except ValueError:
        raise argparse.ArgumentTypeError('not a size: %r' % text) from None
    if value <= 0:
        raise argparse.ArgumentTypeError('size must be positive')
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError('not a number: %r' % text) from None
    if value <= 0:
        raise argparse.ArgumentTypeError('must be positive')
    return value


def human(n: int) -> str:
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if abs(n) < 1024 or unit == 'TiB':
            return ('%d %s' % (n, unit) if unit == 'B'
                    else '%.1f %s' % (n, unit))
        n /= 1024.0


class Progress:
    """A one-line progress bar on a terminal, after the first second."""

    def __init__(self, stream, enabled: bool):
        self.stream = stream
        self.enabled = enabled
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, consumed: int, total: int | None) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.2 or \
                now - self.start < 1.0:
            return
        self.last = now
        rate = consumed / max(now - self.start, 1e-6)
        if total:
            frac = min(consumed / total, 1.0)
            bar = '#' * int(frac * 30)
            line = '[%-30s] %3d%%  %s of %s  %s/s' % (
                bar, frac * 100, human(consumed), human(total), human(rate))
        else:
            line = '%s read  %s/s' % (human(consumed), human(rate))
        self.stream.write('\r' + line + '\x1b[K')
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write('\r\x1b[K')
            self.stream.flush()


def _level(text: str) -> int:
    value = _positive(text)
    if value > 9:
        raise argparse.ArgumentTypeError('must be 1 to 9')
    return value


def _limits(args) -> convertmod.Limits:
    return convertmod.Limits(max_depth=args.max_depth,
                             max_size=args.max_size)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument('--max-depth', type=_positive, default=30,
                   help='refuse chains of more layers (default: 30, '
                        'XenServer\'s limit)')
    p.add_argument('--max-size', type=_size, default=2 << 40,
                   help='refuse disks larger than this, e.g. 4T '
                        '(default: 2T)')
    p.add_argument('--ignore-parent-ids', action='store_true',
                   help='accept a child whose recorded parent unique id '
                        'differs from the next layer\'s (normally an '
                        'error: the layers do not belong together)')
    p.add_argument('--progress', dest='progress', action='store_true',
                   default=None, help='show progress even when stderr is '
                                      'not a terminal')
    p.add_argument('--no-progress', dest='progress', action='store_false',
                   help='never show progress')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True

    p = sub.add_parser(
        'convert', help='write the disk an image holds as a raw disk',
        description='Write the disk that SRC holds to DST as raw bytes. '
        'SRC is a XenServer image (tar.gz or tar of 0.vhd .. n.vhd), a VHD '
        '(dynamic or fixed, optionally gzip-compressed) or - for standard '
        'input. A new DST is written under a temporary name and renamed '
        'at the end, sparse; an existing file is replaced only when the '
        'conversion succeeds. A block device is written in place and '
        'zero-filled where the image has no data.')
    p.add_argument('src', metavar='SRC')
    p.add_argument('dst', metavar='DST')
    p.add_argument('--zero-fill', action='store_true', default=None,
                   help='write zeros where no layer has data instead of '
                        'leaving holes (automatic when writing in place)')
    p.add_argument('--in-place', action='store_true',
                   help='write into an existing DST file instead of '
                        'replacing it (keeps its inode, owner and other '
                        'names; zero-fills over its old contents; left '
                        'partly written if the conversion fails)')
    p.add_argument('--fsync', action='store_true',
                   help='flush the output to stable storage before '
                        'returning')
    _add_common(p)

    p = sub.add_parser(
        'info', help='show the layers, sizes and allocation of an image',
        description='Read SRC once and show its layers (newest first), '
        'their sizes, unique ids, parent references and allocation.')
    p.add_argument('src', metavar='SRC')
    p.add_argument('--json', action='store_true',
                   help='print one JSON object instead of text')
    _add_common(p)

    p = sub.add_parser(
        'check', help='validate an image; the exit status tells',
        description='Read SRC once and validate every structure. Exit '
        'status 0: valid (warnings may still be printed); 1: invalid.')
    p.add_argument('src', metavar='SRC')
    p.add_argument('--quiet', '-q', action='store_true',
                   help='print nothing, only set the exit status')
    _add_common(p)

    p = sub.add_parser(
        'pack', help='write a raw disk as a XenServer image',
        description='Write the raw disk SRC (a file or a block device) to '
        'DST as a XenServer image: a tar.gz holding 0.vhd, a dynamic VHD '
        'as XenServer writes it (creator tap 1.3), in which only the 2 MiB '
        'blocks holding a non-zero byte are stored. The VHD has the size '
        'of SRC, rounded up to a multiple of 512 bytes with zeros if it is '
        'not one. SRC is read twice (once to find its data, skipping the '
        'holes of a sparse file, once to write it) and never modified; '
        'standard input cannot be used. DST is written under a temporary '
        'name and renamed at the end. convert turns DST back into SRC.')
    p.add_argument('src', metavar='SRC')
    p.add_argument('dst', metavar='DST')
    # The level is gzip's: there is none without the tar.gz.
    shape = p.add_mutually_exclusive_group()
    shape.add_argument('--vhd', action='store_true',
                       help='write the dynamic VHD itself, not a tar.gz of '
                            'it')
    shape.add_argument('--level', type=_level, default=None,
                       help='gzip level, 1 (fastest, the default) to 9; '
                            'isal, used when installed, stops at 3, so '
                            'higher levels use zlib-ng or zlib')
    p.add_argument('--max-size', type=_size,
                   default=convertmod.Limits().max_size,
                   help='refuse disks larger than this, e.g. 4T '
                        '(default: 2T, as convert)')
    p.add_argument('--progress', dest='progress', action='store_true',
                   default=None, help='show progress even when stderr is '
                                      'not a terminal')
    p.add_argument('--no-progress', dest='progress', action='store_false',
                   help='never show progress')
    return parser


def layer_dict(layer) -> dict:
    f = layer.footer
    d = {
        'name': layer.name,
        'type': fmt.DISK_TYPE_NAMES[f.disk_type],
        'virtual_size': f.current_size,
        'original_size': f.original_size,
        'unique_id': str(f.uuid),
        'creator': f.creator_app.decode('latin-1').rstrip('\0 '),
        'creator_version': '%d.%d' % (f.creator_version >> 16,
                                      f.creator_version & 0xFFFF),
        'hidden': bool(f.hidden),
        'geometry': list(f.chs),
        'present_bytes': layer.present_sectors * fmt.SECTOR,
    }
    if layer.header is not None:
        h = layer.header
        d.update({
            'block_size': h.block_size,
            'max_table_entries': h.max_table_entries,
            'allocated_blocks': layer.allocated_blocks,
            'batmap': layer.batmap,
        })
        if f.disk_type == fmt.DISK_DIFFERENCING:
            d['parent'] = {
                'unique_id': str(h.parent_uuid),
                'name': h.parent_name,
                'locators': [{'platform': p, 'path': path}
                             for p, path in layer.locators],
            }
    return d


def result_dict(result) -> dict:
    return {
        'source': result.source,
        'container': result.container,
        'virtual_size': result.virtual_size,
        'allocated_bytes': result.allocated,
        'layers': [layer_dict(layer) for layer in result.layers],
        'warnings': result.warnings,
    }


def print_info(result, out) -> None:
    kinds = {'tgz': 'XenServer image (tar.gz)', 'tar': 'XenServer image '
             '(tar)', 'vhd': 'VHD', 'vhd.gz': 'VHD (gzip)'}
    out.write('%s: %s, %d layer%s, virtual size %d (%s), %s allocated\n' % (
        _p(result.source), kinds[result.container], len(result.layers),
        '' if len(result.layers) == 1 else 's', result.virtual_size,
        human(result.virtual_size), human(result.allocated)))
    for layer in result.layers:
        d = layer_dict(layer)
        out.write('  %s: %s, %d bytes (%s), unique id %s, creator %s %s%s\n'
                  % (_p(d['name']), d['type'], d['virtual_size'],
                     human(d['virtual_size']), d['unique_id'], d['creator'],
                     d['creator_version'], ', hidden' if d['hidden'] else ''))
        if 'block_size' in d:
            out.write('    %d of %d blocks of %s allocated, %s present, '
                      'batmap %s\n' % (
                          d['allocated_blocks'], d['max_table_entries'],
                          human(d['block_size']), human(d['present_bytes']),
                          d['batmap']))
        if 'parent' in d:
            par = d['parent']
            out.write('    parent %s %r'
                      % (par['unique_id'], _p(par['name'])))
            if par['locators']:
                out.write(', locators %s' % ', '.join(
                    '%s %s' % (lo['platform'], _p(lo['path']))
                    for lo in par['locators']))
            out.write('\n')
    for w in result.warnings:
        out.write('  warning: %s\n' % _p(w))


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    progress = Progress(sys.stderr, show and not getattr(args, 'quiet',
                                                         False))
    try:
        if args.command == 'pack':
            # Imported here: its threads and tar code cost every other
            # subcommand start-up time.
            from xenapinfs_driver.vhd import pack as packmod
            packmod.pack(args.src, args.dst, vhd_only=args.vhd,
                         level=args.level, max_size=args.max_size,
                         progress=progress)
            progress.done()
            return 0
        common = dict(limits=_limits(args),
                      check_parents=not args.ignore_parent_ids,
                      progress=progress)
        if args.command == 'convert':
            result = convertmod.convert(args.src, args.dst,
                                        zero_fill=args.zero_fill,
                                        in_place=args.in_place,
                                        fsync=args.fsync, **common)
            progress.done()
            for w in result.warnings:
                sys.stderr.write('%s: warning: %s\n' % (PROG, _p(w)))
            return 0
        result = convertmod.inspect(args.src, **common)
        progress.done()
        if args.command == 'info':
            if args.json:
                json.dump(result_dict(result), sys.stdout, indent=2)
                sys.stdout.write('\n')
            else:
                print_info(result, sys.stdout)
            return 0
        if not args.quiet:
            for w in result.warnings:
                sys.stdout.write('warning: %s\n' % _p(w))
            sys.stdout.write('%s: valid, %d layer%s, virtual size %d\n' % (
                result.source, len(result.layers),
                '' if len(result.layers) == 1 else 's',
                result.virtual_size))
        return 0
    except errors.VhdError as exc:
        progress.done()
        if not getattr(args, 'quiet', False):
            sys.stderr.write('%s: error: %s\n' % (PROG, exc))
        return 1
    except BrokenPipeError:
        # The reader went away (info | head): not worth a message.
        pipes.silence_stdout()
        return 1
    except OSError as exc:
        progress.done()
        if not getattr(args, 'quiet', False):
            sys.stderr.write('%s: error: %s%s\n' % (
                PROG, exc.filename + ': ' if exc.filename else '',
                exc.strerror or exc))
        return 1
    except KeyboardInterrupt:
        progress.done()
        sys.stderr.write('%s: interrupted\n' % PROG)
        return 130


if __name__ == '__main__':
    sys.exit(main())
