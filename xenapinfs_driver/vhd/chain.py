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
"""Chains of VHD files, linked by their parent locators.

Unlike the one-pass reader, these follow parent locators, as vhd-util
does: they work on files in an SR or an extracted image, where the
locators point at the neighbouring files.
"""

from __future__ import annotations

import os

from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import writer

VhdFile = image.VhdFile


def parent_ref(parent_path: str, child_path: str) -> writer.Parent:
    """What a child of parent_path records about it (blktap's way)."""
    with VhdFile(parent_path) as par:
        unique_id = par.footer.unique_id
    rel = os.path.relpath(os.path.abspath(parent_path),
                          os.path.dirname(os.path.abspath(child_path)))
    return writer.Parent(unique_id, os.path.basename(parent_path),
                         writer.file_timestamp(parent_path),
                         writer.xenserver_locators(rel))


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


def check_link(kid, par) -> None:
    """The parent must be the one the child was made from."""
    if kid.header.parent_unique_id != par.footer.unique_id:
        raise errors.ChainError(
            '%s is not the unique id %s of %s' % (
                kid.header.parent_uuid, par.footer.uuid, par.path),
            source=kid.path, field='parent unique id')


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
            check_link(kid, par)
            if par.header is None or kid.block_size != par.block_size:
                raise errors.ChainError(
                    'layers of different kinds or block sizes',
                    source=par.path, field='block size')
        if files[0].header is None:
            raise errors.ChainError('a fixed disk is flat already',
                                    source=top, field='disk type')
        blocks = _ChainBlocks(files)
        writer.atomic_write(dest, lambda f: writer.write_dynamic(
            f, files[0].size, blocks, order=blocks.keys,
            block_size=files[0].block_size))
    finally:
        for f in files:
            f.close()
