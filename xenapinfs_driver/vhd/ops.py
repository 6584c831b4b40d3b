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
"""File operations on VHD chains, named after the vhd-util steps they do.

The names follow cinder's ``image_utils`` (discover, fix parents, size,
resize, coalesce, coalesce chain), so that each function maps to the
``vhd-util`` call it replaces. Here are the ones that make, size and
merge files; following and setting parents is ``chain``'s, growing a disk
``resize``'s.
"""

from __future__ import annotations

import os

from xenapinfs_driver.vhd import chain
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import resize as resizemod
from xenapinfs_driver.vhd import validate
from xenapinfs_driver.vhd import writer

VhdFile = image.VhdFile
# The chain operations and resize have their own modules; their names stay
# here too, where the driver's helpers and the test server look for them.
parent_ref = chain.parent_ref
parent_path = chain.parent_path
chain_of = chain.chain_of
set_parent = chain.set_parent
fix_chain = chain.fix_chain
discover_chain = chain.discover_chain
read_chain_block = chain.read_chain_block
flatten = chain.flatten
resize = resizemod.resize


def create(path: str, size: int, *, parent: str | None = None,
           max_table_entries: int | None = None,
           block_size: int | None = None) -> None:
    """A new empty dynamic VHD, or a differencing child of parent.

    A child takes its parent's block size; max_table_entries larger than
    the size needs preallocates the BAT (LVM SR style), so that later
    growth up to it only rewrites the footers.
    """
    validate.check_disk_size(size, path)
    ref = None
    if parent:
        ref = parent_ref(parent, path)
        with VhdFile(parent) as par:
            parent_bs = par.block_size if par.header else None
        if block_size is None:
            block_size = parent_bs
        elif parent_bs is not None and block_size != parent_bs:
            raise errors.ChainError('%d differs from the parent\'s %d'
                                    % (block_size, parent_bs), source=path,
                                    field='block size')
    block_size = block_size or writer.DEFAULT_BLOCK
    try:
        validate.check_block_size(block_size)
        if max_table_entries is not None:
            validate.check_table_entries(max_table_entries, size,
                                         block_size)
    except errors.VhdError as exc:
        raise exc.located(source=path)
    writer.atomic_write(path, lambda f: writer.write_dynamic(
        f, size, {}, parent=ref, block_size=block_size,
        max_table_entries=max_table_entries))


def snapshot(child: str, parent: str, size: int | None = None, *,
             max_table_entries: int | None = None,
             hide_parent: bool = True) -> None:
    """A new differencing child of parent (``vhd-util snapshot``).

    The parent becomes hidden, as a file SR marks every non-leaf VHD
    (vhd-util leaves that to its caller; here it is the default).
    """
    if os.path.abspath(child) == os.path.abspath(parent):
        raise errors.ChainError('a disk cannot be its own parent',
                                source=child, field='parent')
    parent_size = get_size(parent)
    if size is None:
        size = parent_size
    elif size < parent_size:
        raise errors.ChainError('%d is smaller than the parent' % size,
                                source=child, field='size')
    validate.check_disk_size(size, child)
    if os.path.lexists(child):
        raise errors.TargetError('already exists', source=child)
    with VhdFile(parent) as par:
        was_hidden = bool(par.footer.hidden)
    if hide_parent:
        # Before the child records the parent's time stamp: this write
        # changes it.
        set_hidden(parent, True)
    try:
        create(child, size, parent=parent,
               max_table_entries=max_table_entries)
    except BaseException:
        if hide_parent and not was_hidden:
            set_hidden(parent, False)
        raise


def set_hidden(path: str, hidden: bool) -> None:
    """Set blktap's hidden flag (``vhd-util set -f hidden``)."""
    with VhdFile(path, writable=True) as vhd:
        if bool(vhd.footer.hidden) != hidden:
            vhd.set_hidden(hidden)
            vhd.flush()


def get_size(path: str) -> int:
    """The virtual size in bytes (``vhd-util query -v`` gives MiB)."""
    with VhdFile(path) as vhd:
        return vhd.size


def coalesce(child: str, parent: str | None = None) -> int:
    """Write child's present sectors into its parent (``vhd-util
    coalesce``); the child is left as it was. Returns the sectors copied.
    """
    parent = parent or parent_path(child)
    if parent is None:
        raise errors.ChainError('not a differencing disk', source=child,
                                field='disk type')
    copied = 0
    with VhdFile(child) as kid, VhdFile(parent, writable=True) as par:
        if kid.footer.disk_type != fmt.DISK_DIFFERENCING:
            raise errors.ChainError('not a differencing disk', source=child,
                                    field='disk type')
        if par.header is None:
            raise errors.ChainError('the parent is a fixed disk',
                                    source=parent, field='disk type')
        chain.check_link(kid, par)
        if kid.block_size != par.block_size:
            raise errors.ChainError('block size %d differs from the '
                                    'parent\'s %d' % (kid.block_size,
                                                      par.block_size),
                                    source=child, field='block size')
        # Every check before the first write: a refused coalesce leaves
        # the parent as it was.
        work = []
        for idx in kid.allocated():
            mask = kid.mask(idx)
            if not mask:
                continue
            base = idx * kid.block_size
            last = base + (kid.spb - _trailing_zeros(mask)) * fmt.SECTOR
            if last > par.size:
                raise errors.ChainError(
                    'block %d reaches %d, past the parent\'s size %d: '
                    'resize the parent first' % (idx, last, par.size),
                    source=child, field='current size')
            work.append((idx, mask))
        for idx, mask in work:
            base = idx * kid.block_size
            data = kid.read_block(idx)
            valid = min(kid.block_size, par.size - base)
            shift = (kid.block_size - valid) // fmt.SECTOR
            par.write(base, memoryview(data)[:valid], mask >> shift << shift)
            copied += mask.bit_count()
        par.flush()
    return copied


def _trailing_zeros(mask: int) -> int:
    return (mask & -mask).bit_length() - 1


def coalesce_chain(chain: list, journal_dir: str | None = None) -> str:
    """Coalesce a chain (newest first) into its base; return the base.

    Each parent is first grown to its child's size, as cinder's
    ``coalesce_chain`` does with ``vhd-util resize``.
    """
    for child, parent in zip(chain, chain[1:]):
        size = get_size(child)
        if get_size(parent) < size:
            jpath = os.path.join(journal_dir or os.path.dirname(
                os.path.abspath(parent)), '.%s.journal'
                % os.path.basename(parent))
            resize(parent, size, jpath)
        coalesce(child, parent)
    return chain[-1]
