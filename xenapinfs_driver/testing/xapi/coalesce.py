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
"""The garbage collector's file steps, each safe against a crash.

Every use of the VHD library by the collector is here. A parent is never
written in place: ``merged_copy`` writes a copy of it with the child's
sectors in, and ``install`` renames the copy over the file, so a crash
leaves either the old parent or the new one, both of which read the same
through the child. A child is re-linked (``relink``) with its header and
locators saved first to an undo journal. The names involved never match
``<uuid>.vhd``, so a scan never takes them for VDIs::

    .<uuid>.vhd.gc           a parent's merged copy being written
    .<uuid>.vhd.gc.journal   the copy's resize journal
    .<uuid>.vhd.relink       undo journal of a child being re-linked
    .<uuid>.coalesced        <uuid>'s data is in its parent (named inside):
                             its children are to be re-linked to the
                             parent, then it is to be deleted

``recover`` puts an SR directory back in order after a crash: it drops
unfinished copies (roll back), reverts half-written re-links, and
finishes each coalesce whose marker it finds (roll forward). It is
idempotent, so running it again after a second crash is safe.
"""

from __future__ import annotations

import logging
import os
import shutil

from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import journal as journalmod
from xenapinfs_driver.vhd import ops

LOG = logging.getLogger(__name__)
COPY = '.gc'
RELINK = '.relink'
MARKER = '.coalesced'


def vhd(sr_dir: str, uuid: str) -> str:
    return os.path.join(sr_dir, '%s.vhd' % uuid)


def scratch(path: str) -> str:
    """Where the merged copy that will replace path is written."""
    head, tail = os.path.split(path)
    return os.path.join(head, '.%s%s' % (tail, COPY))


def _sync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def merged_copy(child: str, parent: str, dest: str,
                unhide: bool = False) -> None:
    """dest: parent's disk with child's sectors written over it.

    parent is only read. The copy keeps parent's unique id and parent
    locators, so it can stand in for parent (or, unhidden, for a leaf).
    """
    jpath = dest + '.journal'
    try:
        shutil.copyfile(parent, dest)
        size = ops.get_size(child)
        if ops.get_size(dest) < size:
            # The child was grown after it was made: so must the copy be.
            ops.resize(dest, size, jpath)
        ops.coalesce(child, dest)
        if unhide:
            ops.set_hidden(dest, False)
        _sync(dest)
    except BaseException:
        for p in (dest, jpath):
            if os.path.exists(p):
                os.unlink(p)
        raise
    if os.path.exists(jpath):
        os.unlink(jpath)        # the copy is complete: nothing to undo


def install(tmp: str, path: str) -> None:
    """Rename tmp over path, durably."""
    os.replace(tmp, path)
    _sync(os.path.dirname(path))


def _header_regions(path: str) -> list:
    """(offset, length) of what a re-link may rewrite: footers, header,
    parent locators."""
    with image.VhdFile(path) as disk:
        out = [(0, fmt.FOOTER_SIZE),
               (disk.file_size - fmt.FOOTER_SIZE, fmt.FOOTER_SIZE),
               (disk.footer.data_offset, fmt.HEADER_SIZE)]
        for loc in disk.header.locators:
            if loc.code:
                space = loc.data_space if loc.data_space >= fmt.SECTOR \
                    else loc.data_space * fmt.SECTOR
                out.append((loc.data_offset, space))
        return out


def relink(child: str, parent: str) -> None:
    """Point child at parent, its old header kept in an undo journal."""
    head, tail = os.path.split(child)
    jpath = os.path.join(head, '.%s%s' % (tail, RELINK))
    regions = _header_regions(child)
    fd = os.open(child, os.O_RDWR)
    try:
        jrn = journalmod.Journal(jpath, fd)
        for offset, length in regions:
            jrn.save(offset, length)
        jrn.seal()
        ops.set_parent(child, parent)
        jrn.finish()
    finally:
        os.close(fd)


def mark(sr_dir: str, uuid: str, parent_uuid: str) -> None:
    """Record, durably, that uuid's data is now in parent_uuid."""
    path = os.path.join(sr_dir, '.%s%s' % (uuid, MARKER))
    with open(path + '.new', 'w', encoding='ascii') as f:
        f.write(parent_uuid)
        f.flush()
        os.fsync(f.fileno())
    install(path + '.new', path)


def unmark(sr_dir: str, uuid: str) -> None:
    path = os.path.join(sr_dir, '.%s%s' % (uuid, MARKER))
    if os.path.exists(path):
        os.unlink(path)
        _sync(sr_dir)


def finish(sr_dir: str, uuid: str, parent_uuid: str, children) -> None:
    """Re-link uuid's children to parent_uuid, delete uuid, drop the
    marker: the end of a coalesce, also after a crash."""
    parent = vhd(sr_dir, parent_uuid)
    for kid in children:
        relink(vhd(sr_dir, kid), parent)
    if os.path.exists(vhd(sr_dir, uuid)):
        os.unlink(vhd(sr_dir, uuid))
    unmark(sr_dir, uuid)


def recover(sr_dir: str, children_of) -> list:
    """Undo or finish what a crash interrupted; the uuids touched.

    children_of(uuid) lists the VHDs whose parent is uuid, read after the
    re-link journals have been reverted.
    """
    touched = []
    names = sorted(os.listdir(sr_dir))
    for name in names:
        path = os.path.join(sr_dir, name)
        if not name.startswith('.'):
            continue
        if name.endswith(COPY) or name.endswith(COPY + '.journal') or \
                name.endswith('.new'):
            LOG.info('%s: an unfinished garbage collection step, removed',
                     path)
            os.unlink(path)
        elif name.endswith(RELINK):
            child = os.path.join(sr_dir, name[1:-len(RELINK)])
            LOG.info('%s: an interrupted re-link, reverted', child)
            journalmod.revert(child, path)
            touched.append(os.path.basename(child)[:-len('.vhd')])
    for name in names:
        if name.startswith('.') and name.endswith(MARKER):
            uuid = name[1:-len(MARKER)]
            with open(os.path.join(sr_dir, name), encoding='ascii') as f:
                parent_uuid = f.read().strip()
            kids = children_of(uuid) if os.path.exists(
                vhd(sr_dir, uuid)) else []
            LOG.info('coalesce of %s into %s: finished after a restart',
                     uuid, parent_uuid)
            finish(sr_dir, uuid, parent_uuid, kids)
            touched.extend([uuid, parent_uuid] + list(kids))
    return touched
