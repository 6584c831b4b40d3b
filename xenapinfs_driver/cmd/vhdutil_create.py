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
"""``vhd-util create`` and ``snapshot``: the subcommands that make a new
VHD."""

from __future__ import annotations

import errno
import os

from xenapinfs_driver.cmd import vhdutil_common as common
from xenapinfs_driver.vhd import chain
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import ops
from xenapinfs_driver.vhd import writer


# -- create and snapshot -----------------------------------------------------

def _entries(msize_mib: int, block: int) -> int | None:
    return -(-msize_mib * common.MiB // block) if msize_mib else None


def cmd_create(o: dict) -> int:
    common.not_implemented(o, {'r': 'fixed (reserved) disk'})
    if 's' not in o:
        raise common.Usage('-s size (MB) is required')
    name = o['n']
    size = common.int_arg(o['s'], 'size')
    msize = common.int_arg(o.get('S', '0'), 'size')
    if msize and msize < size:
        raise common.Failure('<-S size> must be greater than <-s size>')
    common.max_size(max(size, msize) * common.MiB)
    common.absent(name)
    ops.create(name, size * common.MiB,
               max_table_entries=_entries(msize, writer.DEFAULT_BLOCK))
    return 0


def _has_data(vhd) -> bool:
    return any(e != fmt.BAT_UNUSED for e in vhd.bat)


def cmd_snapshot(o: dict) -> int:
    common.not_implemented(o, {'m': 'raw parent'})
    if 'p' not in o:
        raise common.Usage('-p parent is required')
    name, pname = o['n'], o['p']
    common.need(pname)
    common.absent(name)
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
            backing = os.path.realpath(chain.parent_path(backing))
            if backing in seen:
                raise common.Failure('the parent chain of %s loops back '
                                     'to %s' % (pname, backing))
    size = ops.get_size(ppath)
    if 'l' in o:
        limit = common.int_arg(o['l'], 'depth limit')
        depth = len(chain.chain_of(backing))
        if limit and depth + 1 > limit:
            raise common.Failure('snapshot depth exceeded: current depth: '
                                 '%d, limit: %d' % (depth, limit),
                                 errno.ENOSPC)
    if 'S' in o:
        msize = common.int_arg(o['S'], 'size')
        common.max_size(msize * common.MiB)
        if msize * common.MiB < size:
            raise common.Failure('<-S size> must be at least the '
                                 'parent\'s size (%d MB)'
                                 % -(-size // common.MiB))
        with image.VhdFile(backing) as par:
            block = par.block_size if par.header else \
                writer.DEFAULT_BLOCK
        ops.create(name, size, parent=backing, block_size=block,
                   max_table_entries=_entries(msize, block))
    else:
        ops.snapshot(name, backing, size)
    return 0
