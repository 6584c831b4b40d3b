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
"""NFS storage repositories and the VDIs in them.

XenAPI idioms used here, once:

* Refs are valid for a session only; uuids are permanent. Functions take
  and return uuids where a caller keeps them (``provider_location``).
* ``get_all_records_where`` finds objects in one call and without the race
  of ``get_all`` followed by ``get_record`` on objects that may vanish.
* ``UUID_INVALID`` and ``HANDLE_INVALID`` mean "gone": deleting something
  already gone is success (:func:`.recovery.is_gone`).
* An NFS SR is one directory ``<serverpath>/<sr_uuid>`` on the export, one
  ``<vdi_uuid>.vhd`` per VDI. A host knows an SR through its record and a
  plugged PBD; ``SR.introduce`` + ``PBD.create`` + ``PBD.plug`` make a host
  that forgot it know it again, files untouched.
* Snapshots and clones on a file SR are copy-on-write: the data moves to a
  hidden parent, and ``sm_config['vhd-parent']`` names it.
* What failed or whose answer was lost is undone by :mod:`.recovery`'s
  rules; the finders here say what a lost call would have made: a new VDI
  can be told by its name and its ``other_config`` (a snapshot or clone
  has those of its source until it is renamed).
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator
from typing import TYPE_CHECKING
import uuid as uuidlib

from cinder.i18n import _
from oslo_log import log as logging

from xenapinfs_driver import exception
from xenapinfs_driver.xenapi import recovery

if TYPE_CHECKING:   # for annotations only
    from xenapinfs_driver.xenapi.session import XenAPISession

LOG = logging.getLogger(__name__)

# other_config key marking the SR a backend owns, so a restart finds it.
TAG_KEY = 'xenapinfs-driver-backend'
VDI_BLOCK = 2 * 1024 * 1024  # a file SR's VHDs grow by 2 MiB blocks

# The callers' name for the cleanup rule, which recovery owns.
cleanup = recovery.cleanup


def _query(**fields):
    return ' and '.join('field "%s"="%s"' % (k, str(v).replace('"', ''))
                        for k, v in fields.items())


# -- storage repositories ------------------------------------------------

def find_sr(session: XenAPISession, tag: str) -> str | None:
    """The ref of the NFS SR tagged ``tag``, or ``None``."""
    found = [ref for ref, rec in session.call(
        'SR.get_all_records_where', _query(type='nfs')).items()
        if rec.get('other_config', {}).get(TAG_KEY) == tag]
    if len(found) > 1:
        raise exception.XenAPINFSException(
            reason=_('%(count)d SRs carry other_config %(key)s=%(tag)s; '
                     'keep one') % {'count': len(found), 'key': TAG_KEY,
                                    'tag': tag})
    return found[0] if found else None


def sr_by_uuid(session: XenAPISession, sr_uuid: str) -> str | None:
    try:
        return session.call('SR.get_by_uuid', sr_uuid)
    except exception.XenAPIError as exc:
        if recovery.is_gone(exc):
            return None
        raise


def create_nfs_sr(session: XenAPISession, server: str, serverpath: str,
                  name: str, tag: str) -> str:
    """Create an NFS SR on ``server:serverpath`` and tag it as ours."""
    device = {'server': server, 'serverpath': serverpath}

    def made():
        # Not tagged yet: an untagged NFS SR of this name is one that a
        # call whose answer was lost made.
        found = session.call('SR.get_all_records_where',
                             _query(type='nfs', name__label=name))
        return [ref for ref, rec in found.items()
                if TAG_KEY not in rec.get('other_config', {})]
    with recovery.reclaim_lost(session, 'SR.create', made, forget_sr):
        sr = session.call('SR.create', session.host_ref, device, '0', name,
                          'Cinder volumes (xenapinfs-driver)', 'nfs',
                          'user', True, {})
    try:
        session.call('SR.add_to_other_config', sr, TAG_KEY, tag)
    except exception.XenAPINFSException:
        recovery.cleanup('SR %s' % sr, forget_sr, session, sr)
        raise
    LOG.info('Created NFS SR %(sr)s on %(server)s:%(path)s for %(tag)s.',
             {'sr': session.call('SR.get_uuid', sr), 'server': server,
              'path': serverpath, 'tag': tag})
    return sr


def introduce_nfs_sr(session: XenAPISession, sr_uuid: str, server: str,
                     serverpath: str, name: str = '') -> str:
    """Make the host know an existing NFS SR again; return its ref.

    On failure everything introduced is forgotten again: the files on the
    export are never touched.
    """
    def made():
        sr = sr_by_uuid(session, sr_uuid)
        return [sr] if sr else []
    with recovery.reclaim_lost(session, 'SR.introduce', made, forget_sr):
        sr = session.call('SR.introduce', sr_uuid, name or sr_uuid,
                          'Cinder volumes (xenapinfs-driver)', 'nfs',
                          'user', True, {})
    try:
        plug_sr(session, sr, server, serverpath)
        session.call('SR.scan', sr)
    except exception.XenAPINFSException:
        recovery.cleanup('SR %s' % sr_uuid, forget_sr, session, sr)
        raise
    return sr


def plug_sr(session: XenAPISession, sr: str, server: str,
            serverpath: str) -> str:
    """Make sure this host has a plugged PBD for ``sr``."""
    pbds = session.call('PBD.get_all_records_where', _query(
        SR=sr, host=session.host_ref))
    if pbds:
        ref, rec = next(iter(pbds.items()))
        if not rec.get('currently_attached'):
            session.call('PBD.plug', ref)
        return ref
    device = {'server': server, 'serverpath': serverpath}
    pbd = session.call('PBD.create', {'host': session.host_ref, 'SR': sr,
                                      'device_config': device,
                                      'other_config': {}})
    try:
        session.call('PBD.plug', pbd)
    except exception.XenAPINFSException:
        recovery.cleanup('PBD %s' % pbd, recovery.unless_gone, session,
                         'PBD.destroy', pbd)
        raise
    return pbd


def forget_sr(session: XenAPISession, sr: str) -> None:
    """Unplug every PBD of ``sr`` and forget it; its files stay.

    An SR (or PBD) already gone counts as done, so that a second attempt
    after a lost answer succeeds.
    """
    pbds = recovery.unless_gone(session, 'SR.get_PBDs', sr)
    if pbds is recovery.GONE:
        return
    for pbd in pbds:
        rec = recovery.unless_gone(session, 'PBD.get_record', pbd)
        if rec is not recovery.GONE and rec.get('currently_attached'):
            session.call('PBD.unplug', pbd)
    recovery.unless_gone(session, 'SR.forget', sr)


def find_or_create_nfs_sr(session: XenAPISession, server: str,
                          serverpath: str, tag: str, name: str,
                          sr_uuid: str | None = None) -> tuple[str, str]:
    """The backend's SR: found by tag (or uuid), introduced, or created.

    :param sr_uuid: adopt this SR instead (one the host may have forgot).
    :returns: ``(ref, uuid)``, with the SR plugged on this host.
    """
    sr = sr_by_uuid(session, sr_uuid) if sr_uuid else find_sr(session, tag)
    if sr is None and sr_uuid:
        sr = introduce_nfs_sr(session, sr_uuid, server, serverpath, name)
        session.call('SR.add_to_other_config', sr, TAG_KEY, tag)
    elif sr is None:
        sr = create_nfs_sr(session, server, serverpath, name, tag)
    else:
        plug_sr(session, sr, server, serverpath)
        if sr_uuid:
            session.call('SR.remove_from_other_config', sr, TAG_KEY)
            session.call('SR.add_to_other_config', sr, TAG_KEY, tag)
    return sr, session.call('SR.get_uuid', sr)


def probe_nfs_srs(session: XenAPISession, server: str,
                  serverpath: str) -> set[str]:
    """The uuids of the SR directories on an NFS export (``SR.probe``)."""
    device = {'server': server, 'serverpath': serverpath}
    answer = session.call('SR.probe', session.host_ref, device, 'nfs', {})
    return set(re.findall(r'<UUID>\s*([0-9a-fA-F-]+)\s*</UUID>', answer))


@contextlib.contextmanager
def attached_sr(session: XenAPISession, sr_uuid: str, server: str,
                serverpath: str) -> Iterator[str]:
    """Yield the ref of SR ``sr_uuid``, introducing it for the duration.

    For volumes of the old driver, which kept one SR per volume and
    forgot each after use. An SR the host already knows is left as found.
    """
    sr = sr_by_uuid(session, sr_uuid)
    if sr is not None:
        plug_sr(session, sr, server, serverpath)
        yield sr
        return
    sr = introduce_nfs_sr(session, sr_uuid, server, serverpath)
    try:
        yield sr
    finally:
        recovery.cleanup('SR %s' % sr_uuid, forget_sr, session, sr)


def sr_capacity(session: XenAPISession, sr: str) -> tuple[int, int, int]:
    """``(total, used, provisioned)`` bytes of ``sr`` (after a scan)."""
    rec = session.call('SR.get_record', sr)
    return (int(rec.get('physical_size') or 0),
            int(rec.get('physical_utilisation') or 0),
            int(rec.get('virtual_allocation') or 0))


# -- VDIs --------------------------------------------------------------------

def round_size(size: int) -> int:
    """``size`` rounded up to the 2 MiB a file SR allocates by."""
    return -(-int(size) // VDI_BLOCK) * VDI_BLOCK


def vdi_by_uuid(session: XenAPISession, vdi_uuid: str) -> str | None:
    """The VDI's ref, or ``None`` when the host has no such VDI."""
    try:
        return session.call('VDI.get_by_uuid', vdi_uuid)
    except exception.XenAPIError as exc:
        if recovery.is_gone(exc):
            return None
        raise


def create_vdi(session: XenAPISession, sr: str, size: int, name: str,
               description: str = '',
               other_config: dict[str, str] | None = None
               ) -> tuple[str, str]:
    """A new empty VDI of ``size`` bytes; returns ``(ref, uuid)``.

    ``other_config`` should mark the VDI uniquely (the cinder volume it
    is for): a VDI made by a call whose answer was lost is found by it.
    """
    marks = dict(other_config or {})
    made = _lookalikes(session, sr, name, marks) if marks else \
        (lambda: [])
    with recovery.reclaim_lost(session, 'VDI.create', made):
        ref = session.call('VDI.create', {
            'name_label': name, 'name_description': description, 'SR': sr,
            'virtual_size': str(int(size)), 'type': 'user',
            'sharable': False, 'read_only': False, 'other_config': marks,
            'xenstore_data': {}, 'sm_config': {}, 'tags': []})
    with recovery.undo_on_error(session, ref):
        return ref, session.call('VDI.get_uuid', ref)


def destroy_vdi(session: XenAPISession, vdi_uuid: str) -> bool:
    """Destroy a VDI by uuid. ``False`` if it was already gone."""
    ref = vdi_by_uuid(session, vdi_uuid)
    if ref is None:
        return False
    try:
        session.call('VDI.destroy', ref)
    except exception.XenAPIError as exc:
        if recovery.is_gone(exc):
            return False
        raise
    return True


def _labelled(session, ref, name, description):
    session.call('VDI.set_name_label', ref, name)
    session.call('VDI.set_name_description', ref, description)


def snapshot_vdi(session: XenAPISession, ref: str, name: str,
                 description: str = '') -> tuple[str, str]:
    """A copy-on-write snapshot of ``ref``; returns ``(ref, uuid)``."""
    with recovery.reclaim_lost(session, 'VDI.snapshot',
                               _copies_of(session, ref)):
        snap = session.call('VDI.snapshot', ref, {})
    with recovery.undo_on_error(session, snap):
        _labelled(session, snap, name, description)
        return snap, session.call('VDI.get_uuid', snap)


def clone_vdi(session: XenAPISession, ref: str, name: str,
              description: str = '',
              size: int | None = None) -> tuple[str, str]:
    """A writable copy-on-write clone, grown to ``size`` if larger."""
    with recovery.reclaim_lost(session, 'VDI.clone',
                               _copies_of(session, ref)):
        new = session.call('VDI.clone', ref, {})
    with recovery.undo_on_error(session, new):
        _labelled(session, new, name, description)
        if size is not None:
            grow_vdi(session, new, size)
        return new, session.call('VDI.get_uuid', new)


def copy_vdi(session: XenAPISession, ref: str, sr: str, name: str,
             description: str = '',
             timeout: float = 3600.0) -> tuple[str, str]:
    """A full, independent copy of ``ref`` into ``sr``."""
    with recovery.reclaim_lost(session, 'VDI.copy',
                               _copies_of(session, ref, sr), lost_task=True):
        new = session.call_async('VDI.copy', ref, sr, timeout=timeout)
    with recovery.undo_on_error(session, new):
        _labelled(session, new, name, description)
        return new, session.call('VDI.get_uuid', new)


def grow_vdi(session: XenAPISession, ref: str, size: int) -> None:
    """Grow ``ref`` to at least ``size`` bytes; never shrinks."""
    if int(session.call('VDI.get_virtual_size', ref)) < int(size):
        session.call('VDI.resize', ref, str(round_size(size)))


# A walk that found a parent gone (the host's garbage collector coalesced
# it meanwhile) starts again from the leaf, this many times at most.
CHAIN_WALKS = 5


def vdi_chain(session: XenAPISession, ref: str,
              max_depth: int = 64) -> list[str]:
    """The uuids of ``ref``'s VHD chain, leaf first, base last.

    The storage manager coalesces chains in the background: a parent
    named by ``vhd-parent`` may be gone by the time it is looked up, and
    the leaf's record then names its new parent. The walk starts again.
    """
    for _attempt in range(CHAIN_WALKS):
        try:
            return _walk_chain(session, ref, max_depth)
        except _ParentGone:
            LOG.debug('VDI %s: the chain changed during the walk; again.',
                      ref)
    return _walk_chain(session, ref, max_depth)


class _ParentGone(Exception):
    """A parent of the chain vanished between two reads."""


def _walk_chain(session, ref, max_depth):
    chain = []
    rec = session.call('VDI.get_record', ref)
    while True:
        chain.append(rec['uuid'])
        parent = rec.get('sm_config', {}).get('vhd-parent')
        if not parent:
            return chain
        if parent in chain or len(chain) >= max_depth:
            raise exception.XenAPINFSException(
                reason=_('VDI %(vdi)s: vhd-parent chain loops or is deeper '
                         'than %(depth)d') % {'vdi': chain[0],
                                              'depth': max_depth})
        try:
            rec = session.call('VDI.get_record',
                               session.call('VDI.get_by_uuid', parent))
        except exception.XenAPIError as exc:
            if exc.error not in ('UUID_INVALID', 'HANDLE_INVALID'):
                raise
            raise _ParentGone() from exc


def _lookalikes(session, sr, name, marks, skip=()):
    """A finder: refs of the VDIs of ``sr`` named ``name`` that carry
    ``marks`` in their ``other_config``, except those in ``skip``."""
    def find():
        found = session.call('VDI.get_all_records_where',
                             _query(SR=sr, name__label=name))
        return [ref for ref, rec in found.items()
                if ref not in skip and rec.get('managed', True) and
                all(rec.get('other_config', {}).get(k) == v
                    for k, v in marks.items())]
    return find


def _copies_of(session, ref, sr=None):
    """A finder for new snapshots, clones or copies (into ``sr``) of VDI
    ``ref``: until renamed, they have its name and ``other_config``.
    Those there before are not new (a locked source makes one at a time).
    """
    rec = session.call('VDI.get_record', ref)
    sr = sr or rec['SR']
    name, marks = rec.get('name_label', ''), rec.get('other_config', {})
    before = _lookalikes(session, sr, name, marks)()
    return _lookalikes(session, sr, name, marks, skip=set(before) | {ref})


def new_uuid() -> str:
    return str(uuidlib.uuid4())


# -- the pool (driver-assisted migration) ---------------------------------

def pool_uuid(session):
    """The uuid of the pool of the session's host (a lone host is a pool
    of one): ``VDI.copy`` moves a VDI between any two SRs of one pool."""
    return session.call('pool.get_uuid', session.call('pool.get_all')[0])


def sr_attached(session, sr):
    """Whether a host of the pool has ``sr`` plugged (a copy into an SR
    nobody has plugged cannot start)."""
    return any(rec.get('currently_attached') for rec in session.call(
        'PBD.get_all_records_where', _query(SR=sr)).values())
