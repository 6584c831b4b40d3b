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
"""``vhd-util modify``, ``resize``, ``coalesce``, ``set`` and ``revert``:
the subcommands that change an existing VHD."""

from __future__ import annotations

import errno
import os

from xenapinfs_driver.cmd import vhdutil_common as common
from xenapinfs_driver.vhd import chain
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import journal as journalmod
from xenapinfs_driver.vhd import ops
from xenapinfs_driver.vhd import resize as resizemod


# -- modify ------------------------------------------------------------------

def cmd_modify(o: dict) -> int:
    common.not_implemented(o, {'s': 'set the physical size',
                               'm': 'raw parent', 'z': 'zero the BAT'})
    name = o['n']
    common.need(name)
    if 'p' not in o:
        with image.VhdFile(name):
            return 0
    parent = o['p']
    common.need(parent)
    if os.path.realpath(parent) == os.path.realpath(name):
        raise common.Failure("failed to set parent to '%s': a VHD cannot "
                             "be its own parent" % parent)
    try:
        chain.set_parent(name, parent)
    except errors.VhdError as exc:
        raise common.Failure("failed to set parent to '%s': %s"
                             % (parent, exc))
    return 0


# -- resize ------------------------------------------------------------------

def _resize(path: str, size: int, journal: str | None, what: str) -> None:
    """resize.resize; if it fails after starting the journal, revert."""
    if journal is not None:
        common.absent(journal, 'creating journal failed: ')
    try:
        resizemod.resize(path, size, journal)
    except BaseException as exc:
        if journal is not None and os.path.exists(journal):
            try:
                journalmod.revert(path, journal)
            except (OSError, errors.VhdError) as rexc:
                raise common.Failure(
                    '%s failed: %s; reverting the journal %s failed too: '
                    '%s; run vhd-util revert -n %s -j %s'
                    % (what, exc, journal, rexc, path, journal)) from None
        if isinstance(exc, errors.VhdError):
            raise common.Failure('%s failed: %s' % (what, exc)) from None
        raise


def cmd_resize(o: dict) -> int:
    if 's' not in o:
        raise common.Usage('-s size (in MB) is required')
    if ('j' in o) == ('f' in o):
        raise common.Usage('one of -j journal and -f (fast) is required')
    name = o['n']
    mib = common.int_arg(o['s'], 'size')
    common.need(name)
    with image.VhdFile(name) as vhd:
        if not vhd.footer.creator_app.startswith(b'tap'):
            raise common.Failure('%s not created by xen; resize not '
                                 'supported' % name)
        if vhd.header is None:
            raise common.Failure('resizing a fixed VHD is not implemented '
                                 'by this vhd-util', errno.ENOSYS)
        current, block = vhd.size, vhd.block_size
    # Like blktap: whole blocks. A request for what query -v says (the
    # current size truncated to MiB) keeps the size: Cinder asks for that
    # when a parent is as big as its child.
    size = common.round_up(mib * common.MiB, block)
    common.max_size(size)
    if size == current or (size < current and mib == current >> 20):
        return 0
    if size < current:
        raise common.Failure('%s: size (%d) < curr size (%d): shrinking is '
                             'not supported' % (name, size, current),
                             errno.ENOSYS)
    _resize(name, size, o.get('j'), 'resize')
    return 0


# -- coalesce ----------------------------------------------------------------

def cmd_coalesce(o: dict) -> int:
    common.not_implemented(o, {'a': 'coalesce onto an ancestor'})
    name = o['n']
    common.need(name)
    try:
        if 'o' in o:
            common.absent(o['o'])
            chain.flatten(name, o['o'])
            return 0
        parent = chain.parent_path(name)
        if parent is None:
            raise common.Failure('error finding %s parent: not a '
                                 'differencing disk' % name)
        size = ops.get_size(name)
        if ops.get_size(parent) < size:
            # blktap fails here (ERANGE) and the tail of the child is
            # lost; grow the parent to the child's size first.
            journal = os.path.join(os.path.dirname(parent), '.%s.journal'
                                   % os.path.basename(parent))
            _resize(parent, size, journal, 'growing the parent')
        ops.coalesce(name, parent)
    except errors.VhdError as exc:
        raise common.Failure('error coalescing: %s' % exc) from None
    if 'p' in o:
        common.out('100.00%')
    return 0


# -- set and revert ----------------------------------------------------------

def cmd_set(o: dict) -> int:
    if 'f' not in o or 'v' not in o:
        raise common.Usage('-f field and -v value are required')
    field = o['f']
    if field == 'marker':
        raise common.Failure('field marker is not implemented by this '
                             'vhd-util', errno.ENOSYS)
    if field != 'hidden':
        raise common.Usage('invalid field %s' % field)
    value = common.int_arg(o['v'], 'value')
    if value > 1:
        # blktap takes 0..255 but its own check calls anything but 0 and
        # 1 an invalid hidden state.
        raise common.Usage('invalid value %d (hidden is 0 or 1)' % value)
    name = o['n']
    common.need(name)
    with image.VhdFile(name, writable=True) as vhd:
        vhd.set_hidden(bool(value))
        vhd.flush()
    return 0


def cmd_revert(o: dict) -> int:
    if 'j' not in o:
        raise common.Usage('-j journal is required')
    common.need(o['n'])
    common.need(o['j'])
    try:
        journalmod.revert(o['n'], o['j'])
    except errors.VhdError as exc:
        raise common.Failure('reverting journal failed: %s' % exc) from None
    return 0
