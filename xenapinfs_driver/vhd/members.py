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
"""The XenServer image convention: which tar member is which layer.

A XenServer image is a tar.gz of ``0.vhd`` (the leaf) .. ``n.vhd`` (the
base), written by ``tar -C dir .`` so members may be ``./0.vhd`` and come in
any order. Older images use ``snap.vhd``, ``image.vhd`` and ``base.vhd``
(newest to oldest); ``swap.vhd`` is not part of the disk. This is the dom0
plugin's convention, checked here before a byte of a member is used.
"""

from __future__ import annotations

import re

from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import tar

LEGACY = {'snap.vhd': 0, 'image.vhd': 1, 'base.vhd': 2}
IGNORED = {'swap.vhd'}
_NUMBERED = re.compile(r'(0|[1-9][0-9]{0,8})\.vhd')


def member_rank(member: tar.Member, depth_limit: int):
    """Return ('numbered'|'legacy', rank), or None for a member to skip."""
    name = member.name
    if '\\' in name or name.startswith('/'):
        raise errors.ArchiveError('unsafe member name (absolute path)',
                                  member=name)
    parts = [p for p in name.split('/') if p not in ('', '.')]
    if '..' in parts:
        raise errors.ArchiveError("unsafe member name ('..')", member=name)
    if member.kind == tar.DIRECTORY:
        return None
    if member.kind != tar.REGULAR:
        raise errors.ArchiveError('unsafe member: a %s, not a regular file'
                                  % member.kind, member=name)
    if len(parts) != 1:
        raise errors.ArchiveError('unexpected member in a subdirectory',
                                  member=name)
    base = parts[0]
    if base in IGNORED:
        return None
    if base in LEGACY:
        return 'legacy', LEGACY[base]
    match = _NUMBERED.fullmatch(base)
    if not match:
        raise errors.ArchiveError('unexpected member: a XenServer image '
                                  'holds only 0.vhd .. n.vhd', member=name)
    rank = int(match.group(1))
    if rank >= depth_limit:
        raise errors.LimitExceeded(
            'chain position %d is beyond the depth limit of %d layers'
            % (rank, depth_limit), member=name)
    return 'numbered', rank


class ChainBuilder:
    """Collects layers as they are read and checks how they fit."""

    def __init__(self, depth_limit: int, check_parents: bool = True):
        self.depth_limit = depth_limit
        self.check_parents = check_parents
        self.style: str | None = None
        self.layers: dict = {}
        self.names: dict = {}

    def claim(self, style: str, rank: int, name: str) -> None:
        """Reserve a position before the member is read."""
        if self.style not in (None, style):
            raise errors.ArchiveError(
                'mixes numbered members with legacy snap/image/base names',
                member=name)
        self.style = style
        if rank in self.names:
            raise errors.ArchiveError(
                'duplicate member: %s is already the layer at position %d'
                % (self.names[rank], rank), member=name)
        if len(self.names) >= self.depth_limit:
            raise errors.LimitExceeded('more than %d layers'
                                       % self.depth_limit, member=name)
        self.names[rank] = name

    def add(self, layer) -> None:
        self.layers[layer.rank] = layer

    def finish(self) -> list:
        """Return the layers newest first, after checking the chain."""
        if not self.layers:
            raise errors.ArchiveError('no VHD in the archive (expected '
                                      '0.vhd .. n.vhd)')
        ranks = sorted(self.layers)
        if self.style == 'numbered' and ranks != list(range(len(ranks))):
            missing = sorted(set(range(ranks[-1] + 1)) - set(ranks))
            raise errors.ChainError('gap in the chain: %s missing'
                                    % ', '.join('%d.vhd' % m
                                                for m in missing))
        chain = [self.layers[r] for r in ranks]
        for child, parent in zip(chain, chain[1:]):
            self._check_link(child, parent)
        base = chain[-1]
        if base.disk_type == fmt.DISK_DIFFERENCING:
            raise errors.ChainError(
                'the oldest layer is a differencing disk whose parent is '
                'not in the input (parent locators are never followed)',
                member=base.name, field='disk type')
        return chain

    def _check_link(self, child, parent) -> None:
        if child.disk_type != fmt.DISK_DIFFERENCING:
            raise errors.ChainError(
                'is a %s disk, but %s follows it in the chain'
                % (fmt.DISK_TYPE_NAMES[child.disk_type], parent.name),
                member=child.name, field='disk type')
        if child.size < parent.size:
            raise errors.ChainError(
                '%d is smaller than its parent %s (%d)'
                % (child.size, parent.name, parent.size),
                member=child.name, field='current size')
        if self.check_parents and \
                child.header.parent_unique_id != parent.footer.unique_id:
            raise errors.ChainError(
                '%s does not match the unique id %s of %s'
                % (child.header.parent_uuid, parent.footer.uuid, parent.name),
                member=child.name, field='parent unique id')
