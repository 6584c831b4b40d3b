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
``vhd-util`` call it replaces. Unlike the one-pass reader, these follow
parent locators, as vhd-util does: they work on files in an SR or an
extracted image, where the locators point at the neighbouring files.
"""

from __future__ import annotations

import os
import tempfile

from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import journal as journalmod
from xenapinfs_driver.vhd import validate
from xenapinfs_driver.vhd import writer

VhdFile = image.VhdFile


def _pad(n: int, to: int = fmt.SECTOR) -> int:
    return n + (-n % to)


def _atomic_write(path: str, fill) -> None:
    """Write a new file through a temporary name; never replace one."""
    if os.path.lexists(path):
        raise errors.TargetError('already exists', source=path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, suffix='.part',
                                   prefix='.%s.' % os.path.basename(path))
    except OSError as exc:
        raise errors.TargetError('cannot create a file in %s: %s'
                                 % (directory, exc.strerror),
                                 source=path) from None
    try:
        with os.fdopen(fd, 'wb') as f:
            fill(f)
            # On disk before it takes its name: never a partial VHD under
            # the final name after a crash.
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.link(tmp, path)          # fails, as it should, if path appeared
    finally:
        os.unlink(tmp)


def parent_ref(parent_path: str, child_path: str) -> writer.Parent:
    """What a child of parent_path records about it (blktap's way)."""
    with VhdFile(parent_path) as par:
        unique_id = par.footer.unique_id
    rel = os.path.relpath(os.path.abspath(parent_path),
                          os.path.dirname(os.path.abspath(child_path)))
    return writer.Parent(unique_id, os.path.basename(parent_path),
                         writer.file_timestamp(parent_path),
                         writer.xenserver_locators(rel))


def _check_size(path: str, size: int) -> None:
    try:
        validate.check_disk_size(size)
    except errors.VhdError as exc:
        raise exc.located(source=path)


def create(path: str, size: int, *, parent: str | None = None,
           max_table_entries: int | None = None,
           block_size: int | None = None) -> None:
    """A new empty dynamic VHD, or a differencing child of parent.

    A child takes its parent's block size; max_table_entries larger than
    the size needs preallocates the BAT (LVM SR style), so that later
    growth up to it only rewrites the footers.
    """
    _check_size(path, size)
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
    _atomic_write(path, lambda f: writer.write_dynamic(
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
    _check_size(child, size)
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


def parent_path(path: str) -> str | None:
    """Where a differencing disk's parent is, by its locators."""
    with VhdFile(path) as vhd:
        if vhd.footer.disk_type != fmt.DISK_DIFFERENCING:
            return None
        hdr = vhd.header
        candidates = []
        order = (fmt.PLAT_MACX, fmt.PLAT_W2RU, fmt.PLAT_W2KU)
        for code in order:
            for loc in hdr.locators:
                if loc.code != code or not 0 < loc.data_length <= 4096:
                    continue
                raw = os.pread(vhd.fd, loc.data_length, loc.data_offset)
                text = fmt.decode_locator(code, raw)
                if text.startswith('file://'):
                    text = text[len('file://'):]
                candidates.append(text.replace('\\', '/'))
        candidates.append(hdr.parent_name)
    base = os.path.dirname(os.path.abspath(path))
    for cand in candidates:
        if not cand:
            continue
        full = os.path.normpath(os.path.join(base, cand))
        if os.path.isfile(full):
            return full
    raise errors.ChainError('parent not found (locators: %s)'
                            % ', '.join(c for c in candidates if c),
                            source=path, field='parent locator')


def chain_of(path: str, max_depth: int = 30) -> list:
    """path and its ancestors, newest first, by following locators."""
    chain = [os.path.abspath(path)]
    while True:
        par = parent_path(chain[-1])
        if par is None:
            return chain
        if par in chain or len(chain) >= max_depth:
            raise errors.ChainError('parent chain loops or is deeper than '
                                    '%d' % max_depth, source=path)
        chain.append(par)


def set_parent(child: str, parent: str) -> None:
    """Point child at parent (``vhd-util modify -p``).

    Sets the parent unique id, time stamp and name, and rewrites the
    existing locators in place with the parent's path relative to child.
    """
    if os.path.abspath(child) == os.path.abspath(parent):
        raise errors.ChainError('a disk cannot be its own parent',
                                source=child, field='parent')
    ref = parent_ref(parent, child)
    new = dict(ref.locators)
    with VhdFile(child, writable=True) as vhd:
        if vhd.footer.disk_type != fmt.DISK_DIFFERENCING:
            raise errors.ChainError('not a differencing disk', source=child,
                                    field='disk type')
        hdr = vhd.header
        updates = []
        for i, loc in enumerate(hdr.locators):
            if loc.code not in new:
                continue
            data = writer.encode_locator(loc.code, new[loc.code])
            space = fmt.locator_space(loc)
            if len(data) > space:
                raise errors.VhdError(
                    'the parent path does not fit in %d bytes' % space,
                    source=child, field='parent locator %d' % i)
            updates.append((loc, data, space))
        for loc, data, space in updates:
            os.pwrite(vhd.fd, data.ljust(space, b'\0'), loc.data_offset)
            loc.data_length = len(data)
        hdr.parent_unique_id = ref.unique_id
        hdr.parent_timestamp = ref.timestamp
        hdr.parent_name_raw = ref.name.encode('utf-16-be').ljust(
            512, b'\0')[:512]
        vhd.write_header()
        vhd.flush()


def resize(path: str, size: int, journal: str | None = None) -> None:
    """Grow the virtual size to size bytes (``vhd-util resize``).

    When the BAT has room (a preallocated LVM-style BAT always has), only
    the footers change. Otherwise the BAT grows in place: the blocks in
    its way move to the end of the file. Either way every byte changed is
    first saved to the journal, so an interrupted resize can be reverted;
    without a journal only the footer-only case is allowed (``-f``).
    """
    _check_size(path, size)
    if journal and os.path.lexists(journal):
        raise errors.TargetError('a journal is already there: an earlier '
                                 'edit was interrupted; revert it first',
                                 source=journal)
    with VhdFile(path, writable=True) as vhd:
        if vhd.header is None:
            raise errors.VhdError('cannot resize a fixed disk', source=path,
                                  field='disk type')
        if size < vhd.size:
            raise errors.VhdError('%d is smaller than the current %d; '
                                  'shrinking is not supported'
                                  % (size, vhd.size), source=path,
                                  field='size')
        if size == vhd.size:
            return
        needed = -(-size // vhd.block_size)
        grow = needed > vhd.header.max_table_entries
        if grow and journal is None:
            raise errors.VhdError(
                'the BAT holds %d entries, %d are needed: growing it needs '
                'a journal' % (vhd.header.max_table_entries, needed),
                source=path, field='max table entries')
        stale = _stale_tail(vhd)
        jrn = journalmod.Journal(journal, vhd.fd) if journal else None
        try:
            if jrn and stale:
                jrn.save(stale[0], vhd.bm_size)
                if vhd.batmap_offset is not None:
                    jrn.save(vhd.batmap_offset, fmt.SECTOR)
                    jrn.save(vhd.batmap_map_offset, len(vhd.batmap))
            if grow:
                _grow_table(vhd, needed, jrn)
            elif jrn:
                jrn.save(0, fmt.FOOTER_SIZE)
                jrn.save(vhd.footer_offset, fmt.FOOTER_SIZE)
                jrn.seal()
            if stale:
                _clear_tail(vhd, *stale)
            _set_size(vhd, size)
            vhd._write_footers()
        except BaseException:
            if jrn:
                # The journal stays: it is how the file is put back.
                os.close(jrn.jfd)
            raise
        if jrn:
            jrn.finish()
        else:
            vhd.flush()


def _stale_tail(vhd):
    """The last block's bitmap offset and index, if it has bits set past
    the disk's end: growing the disk would make their old bytes appear.
    """
    if vhd.size % vhd.block_size == 0:
        return None
    idx = vhd.size // vhd.block_size
    if idx >= len(vhd.bat) or vhd.bat[idx] == fmt.BAT_UNUSED:
        return None
    bm = vhd.bitmap(idx)
    keep = (vhd.size - idx * vhd.block_size) // fmt.SECTOR
    if not fmt.mask_of(bm, vhd.spb) & ((1 << (vhd.spb - keep)) - 1):
        return None
    return vhd.bat[idx] * fmt.SECTOR, idx


def _clear_tail(vhd, bm_at: int, idx: int) -> None:
    bm = bytearray(vhd.bitmap(idx))
    keep = (vhd.size - idx * vhd.block_size) // fmt.SECTOR
    fmt.set_mask(bm, vhd.spb, fmt.mask_of(bm, vhd.spb)
                 & ~((1 << (vhd.spb - keep)) - 1))
    os.pwrite(vhd.fd, bytes(bm), vhd.bat[idx] * fmt.SECTOR)
    vhd._set_batmap(idx, False)


def _set_size(vhd, size: int) -> None:
    cyl, heads, spt = fmt.chs_geometry(size)
    vhd.footer.current_size = size
    vhd.footer.geometry = (cyl << 16) | (heads << 8) | spt


def _grow_table(vhd, needed: int, jrn) -> None:
    hdr = vhd.header
    entries = -(-needed // 128) * 128           # whole BAT sectors
    table_end = hdr.table_offset + _pad(4 * entries)
    # What follows the BAT is laid out again after the bigger one.
    pos = table_end
    batmap = None
    if vhd.batmap_offset is not None:
        map_size = fmt.batmap_size(entries)
        batmap = (pos, pos + fmt.SECTOR, map_size)
        pos += fmt.SECTOR + map_size
    locs = []
    for loc in hdr.locators:
        if loc.code and loc.data_length:
            space = fmt.locator_space(loc)
            data = os.pread(vhd.fd, space, loc.data_offset)
            locs.append((loc, pos, data))
            pos += _pad(len(data))
    meta_end = pos
    span = vhd.bm_size + vhd.block_size
    moving = sorted((vhd.bat[i] * fmt.SECTOR, i) for i in
                    range(len(vhd.bat)) if vhd.bat[i] != fmt.BAT_UNUSED
                    and vhd.bat[i] * fmt.SECTOR < meta_end)
    # Everything overwritten below lies in these regions; the moved
    # blocks' copies go past the old end, which the truncation undoes.
    jrn.save(0, fmt.FOOTER_SIZE)
    jrn.save(vhd.footer.data_offset, fmt.HEADER_SIZE)
    jrn.save(hdr.table_offset, meta_end - hdr.table_offset)
    jrn.save(vhd.footer_offset, fmt.FOOTER_SIZE)
    jrn.seal()

    # 1. The blocks in the way, copied to the end (past the new metadata
    # too, when it reaches beyond the old end); then a footer after.
    end = max(vhd.footer_offset, meta_end)
    for old, idx in moving:
        data_at = _pad(end + vhd.bm_size, image.ALIGN)
        new = data_at - vhd.bm_size
        os.pwrite(vhd.fd, os.pread(vhd.fd, span, old), new)
        vhd.bat[idx] = new // fmt.SECTOR
        end = new + span
    vhd.footer_offset = end
    vhd.file_size = end + fmt.FOOTER_SIZE
    os.pwrite(vhd.fd, vhd.footer.to_bytes(), end)
    # 2. The bigger BAT, the batmap and the locators in their new places.
    vhd.bat.extend([fmt.BAT_UNUSED] * (entries - len(vhd.bat)))
    os.pwrite(vhd.fd, image.big_endian(vhd.bat).ljust(
        table_end - hdr.table_offset, b'\0'), hdr.table_offset)
    hdr.max_table_entries = entries
    if batmap is not None:
        header_at, map_at, map_size = batmap
        old_map = bytes(vhd.batmap)
        vhd.batmap = bytearray(old_map[:map_size].ljust(map_size, b'\0'))
        vhd.batmap_offset, vhd.batmap_map_offset = header_at, map_at
        os.pwrite(vhd.fd, bytes(vhd.batmap), map_at)
        vhd._write_batmap_header()
    for loc, at, data in locs:
        os.pwrite(vhd.fd, data, at)
        loc.data_offset = at
    vhd.write_header()


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
        _check_link(kid, par)
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


def _check_link(kid, par) -> None:
    """The parent must be the one the child was made from."""
    if kid.header.parent_unique_id != par.footer.unique_id:
        raise errors.ChainError(
            '%s is not the unique id %s of %s' % (
                kid.header.parent_uuid, par.footer.uuid, par.path),
            source=kid.path, field='parent unique id')


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


def fix_chain(chain: list) -> None:
    """Point each VHD of a chain (newest first) at the next one."""
    for child, parent in zip(chain, chain[1:]):
        set_parent(child, parent)


def discover_chain(directory: str) -> list:
    """0.vhd, 1.vhd, ... as long as they exist (cinder's discover)."""
    chain = []
    while os.path.exists(os.path.join(directory, '%d.vhd' % len(chain))):
        chain.append(os.path.join(directory, '%d.vhd' % len(chain)))
    return chain


def read_chain_block(files: list, idx: int) -> tuple[int, bytearray]:
    """Block idx of a chain of open VhdFiles (newest first): the mask of
    sectors some layer provides and the composed data."""
    top = files[0]
    bs, spb = top.block_size, top.spb
    out = bytearray(bs)
    have = 0
    full = (1 << spb) - 1
    for vhd in files:
        if idx >= len(vhd.bat) or vhd.bat[idx] == fmt.BAT_UNUSED:
            continue
        mask = vhd.mask(idx) & ~have
        if not mask:
            continue
        data = vhd.read_block(idx)
        bits = format(mask, '0%db' % spb)
        s = bits.find('1')
        while s >= 0:
            e = bits.find('0', s)
            e = spb if e < 0 else e
            out[s * fmt.SECTOR:e * fmt.SECTOR] = \
                data[s * fmt.SECTOR:e * fmt.SECTOR]
            s = bits.find('1', e)
        have |= mask
        if have == full:
            break
    return have, out


class _ChainBlocks:
    """The composed blocks of a chain, made when the writer asks."""

    def __init__(self, files):
        self.files = files
        top = files[0]
        self.keys = sorted({i for f in files for i in f.allocated()
                            if i < top.nblocks})

    def __iter__(self):
        return iter(self.keys)

    def __getitem__(self, idx):
        have, data = read_chain_block(self.files, idx)
        spb = self.files[0].spb
        if have == (1 << spb) - 1:
            return None, bytes(data)
        return writer.bitmap_of((s for s in range(spb)
                                 if have >> (spb - 1 - s) & 1),
                                self.files[0].block_size), bytes(data)


def flatten(top: str, dest: str, chain: list | None = None) -> None:
    """Copy a chain into one new dynamic VHD (``vhd-util copy``-like)."""
    paths = chain or chain_of(top)
    files = []
    try:
        for p in paths:
            files.append(VhdFile(p))
        for kid, par in zip(files, files[1:]):
            _check_link(kid, par)
            if par.header is None or kid.block_size != par.block_size:
                raise errors.ChainError(
                    'layers of different kinds or block sizes',
                    source=par.path, field='block size')
        if files[0].header is None:
            raise errors.ChainError('a fixed disk is flat already',
                                    source=top, field='disk type')
        blocks = _ChainBlocks(files)
        _atomic_write(dest, lambda f: writer.write_dynamic(
            f, files[0].size, blocks, order=blocks.keys,
            block_size=files[0].block_size))
    finally:
        for f in files:
            f.close()
