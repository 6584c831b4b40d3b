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
"""Keep VHD chains below the host's depth limit.

A copy-on-write snapshot or clone of a VDI adds one level to the chain
of the VDI and of the copy: a volume snapshotted and cloned for years
reaches the storage manager's limit (30), where ``VDI.snapshot`` and
``VDI.clone`` fail with ``SR_BACKEND_FAILURE_109`` and the volume can no
longer be snapshotted, cloned or uploaded. So when the copy's chain would
be deeper than ``threshold``, :class:`ChainGuard` makes an independent
copy (``Async.VDI.copy``, one level, a full data copy) instead; the data
is the same either way. A host whose garbage collector shortened the
chain meanwhile (after snapshot deletes) gets copy-on-write again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from oslo_log import log as logging

from xenapinfs_driver import exception
from xenapinfs_driver.xenapi import recovery
from xenapinfs_driver.xenapi import storage

if TYPE_CHECKING:   # for annotations only
    from xenapinfs_driver.xenapi.session import XenAPISession

LOG = logging.getLogger(__name__)

# The storage manager's own limit and its error when a chain passes it.
HOST_LIMIT = 30
CHAIN_TOO_LONG = 'SR_BACKEND_FAILURE_109'


def chain_depth(session: XenAPISession, ref: str) -> int:
    """How many VHDs ``ref``'s chain holds, the VDI itself included."""
    return len(storage.vdi_chain(session, ref, HOST_LIMIT + 1))


def is_chain_too_long(exc: Exception) -> bool:
    """Whether the host refused a snapshot or clone for its depth."""
    return (isinstance(exc, exception.XenAPIError) and
            exc.error == CHAIN_TOO_LONG)


class ChainGuard:
    """Snapshots and clones that never make a chain deeper than allowed.

    :param session: a connected XenAPI session.
    :param sr: the ref of the SR full copies are written to.
    :param threshold: the deepest chain a copy-on-write result may have.
    :param timeout: seconds a full copy may take.
    """

    def __init__(self, session: XenAPISession, sr: str, threshold: int,
                 timeout: float = 3600.0) -> None:
        self.session = session
        self.sr = sr
        self.threshold = threshold
        self.timeout = timeout
        # Full copies made by this service, for the operator's figures.
        self.full_copies = 0

    def _needs_copy(self, ref: str, what: str, for_id: str) -> bool:
        depth = chain_depth(self.session, ref)
        if depth + 1 <= self.threshold:
            return False
        LOG.info('%(what)s for %(id)s is a full copy: the source\'s VHD '
                 'chain is %(depth)d deep, and a copy-on-write one would '
                 'pass xenapi_full_copy_depth (%(max)d).',
                 {'what': what, 'id': for_id, 'depth': depth,
                  'max': self.threshold})
        return True

    def _copy(self, ref, name, description, size=None):
        self.full_copies += 1
        new, new_uuid = storage.copy_vdi(self.session, ref, self.sr, name,
                                         description, timeout=self.timeout)
        if size is not None:
            with recovery.undo_on_error(self.session, new):
                storage.grow_vdi(self.session, new, size)
        return new, new_uuid, True

    def _refused(self, exc, what, for_id):
        """Whether to fall back to a full copy after ``exc``."""
        if not is_chain_too_long(exc):
            return False
        # Another service may have deepened the chain since it was read.
        LOG.warning('The host refused a copy-on-write %(what)s for %(id)s '
                    'as too deep (%(err)s); making a full copy.',
                    {'what': what, 'id': for_id, 'err': exc})
        return True

    def snapshot(self, ref: str, name: str, description: str = '',
                 for_id: str = '') -> tuple[str, str, bool]:
        """A snapshot of ``ref``: ``(ref, uuid, full copy?)``."""
        if self._needs_copy(ref, 'snapshot', for_id or name):
            return self._copy(ref, name, description)
        try:
            return storage.snapshot_vdi(self.session, ref, name,
                                        description) + (False,)
        except exception.XenAPIError as exc:
            if not self._refused(exc, 'snapshot', for_id or name):
                raise
        return self._copy(ref, name, description)

    def clone(self, ref: str, name: str, description: str = '',
              size: int | None = None,
              for_id: str = '') -> tuple[str, str, bool]:
        """A writable clone of ``ref``, grown to ``size`` if larger:
        ``(ref, uuid, full copy?)``."""
        if self._needs_copy(ref, 'clone', for_id or name):
            return self._copy(ref, name, description, size)
        try:
            return storage.clone_vdi(self.session, ref, name, description,
                                     size) + (False,)
        except exception.XenAPIError as exc:
            if not self._refused(exc, 'clone', for_id or name):
                raise
        return self._copy(ref, name, description, size)

    # The shape Backend.copy calls, ``copier(session, source, ...)``: it
    # marks what either makes, copy-on-write or full.

    def snapshot_copier(self, session, ref: str, *args,
                        **kwargs) -> tuple[str, str]:
        return self.snapshot(ref, *args, **kwargs)[:2]

    def clone_copier(self, session, ref: str, *args,
                     **kwargs) -> tuple[str, str]:
        return self.clone(ref, *args, **kwargs)[:2]
