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
"""Moving a volume to another backend: migrate, retype, after-migration.

cinder's generic migration (and cinder-backup) attach both volumes to the
cinder host through os-brick, which has no connector for ``xensm``: it
cannot move these volumes. The host can: ``VDI.copy`` copies a detached
VDI into any SR of its pool inside dom0. So each backend reports, in its
stats' ``location_info``, the pool and SR it uses
(``XenAPINFSDriver:<pool uuid>:<sr uuid>``), and a volume whose
destination names the same pool moves by one copy; any other destination
is left to cinder's generic path, which says what it cannot do.

The copy is recorded before the source goes: a failure up to then leaves
the source as it was and nothing in the destination SR; one after it
leaves, at worst, an orphan of the source, reported in the log.
"""

import time

from cinder import context
from cinder import exception as cinder_exception
from cinder.i18n import _
from cinder import objects
from cinder.objects.volume import Volume
from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import excutils

from xenapinfs_driver import backend
from xenapinfs_driver import exception
from xenapinfs_driver.xenapi import storage

LOG = logging.getLogger(__name__)

# The first field of location_info: another driver's value never starts so.
DRIVER = 'XenAPINFSDriver'
# Back-end QoS would be the host's to enforce; front-end QoS is nova's.
BACKEND_QOS = ('back-end', 'both')
# Seconds between looks at a copy the host may still be running.
POLL = 0.5


def location_info(be: backend.Backend) -> str:
    """What a destination's ``location_info`` says: pool and SR."""
    return '%s:%s:%s' % (DRIVER, storage.pool_uuid(be.session), be.sr_uuid)


def parse_location_info(text) -> tuple[str, str] | None:
    """``(pool uuid, sr uuid)`` of a backend of this driver, else None."""
    parts = str(text or '').split(':')
    if len(parts) != 3 or parts[0] != DRIVER or not all(parts[1:]):
        return None
    return parts[1], parts[2]


def migrate_volume(be: backend.Backend, ctxt: context.RequestContext,
                   volume: Volume, host: dict,
                   timeout: float) -> tuple[bool, dict | None]:
    """Copy a detached volume into the destination's SR, in our pool.

    :returns: ``(True, model update)`` when moved; ``(False, None)`` when
        the destination is not a backend of this driver in this pool, or
        the volume is attached, so that cinder's generic path decides.
    :raises InvalidVolume: the volume has snapshots (cinder refuses to
        migrate those: they would stay behind in the source SR).
    :raises SRNotFound: the destination names our pool, but its SR is not
        there or not plugged; nothing was copied.
    """
    dest = parse_location_info(
        (host.get('capabilities') or {}).get('location_info'))
    if dest is None or volume.volume_attachment:
        LOG.info('Volume %(id)s: %(host)s is no detached-copy destination '
                 'of this driver; leaving the migration to cinder.',
                 {'id': volume.id, 'host': host.get('host')})
        return False, None
    if objects.SnapshotList.get_all_for_volume(ctxt, volume.id):
        raise cinder_exception.InvalidVolume(
            reason=_('Volume must not have snapshots.'))
    pool, dest_sr_uuid = dest
    if pool != storage.pool_uuid(be.session):
        LOG.info('Volume %(id)s: %(host)s is in pool %(pool)s, not ours; '
                 'leaving the migration to cinder.',
                 {'id': volume.id, 'host': host.get('host'), 'pool': pool})
        return False, None
    if dest_sr_uuid == be.sr_uuid:
        return True, None
    dest_sr = storage.sr_by_uuid(be.session, dest_sr_uuid)
    if dest_sr is None or not storage.sr_attached(be.session, dest_sr):
        raise exception.SRNotFound(
            sr=dest_sr_uuid, reason=_('the destination %s names it, but no '
                                      'host of the pool has it plugged')
            % host.get('host'))
    source = be.vdi(volume)
    old_location, old_uuid = volume.provider_location, be.location(volume)[1]
    size = be.session.call('VDI.get_virtual_size', source)
    # What an earlier attempt left when the host was lost mid-copy.
    _destroy_copies(be, dest_sr, volume.id)
    try:
        ref, new_uuid = storage.copy_vdi(
            be.session, source, dest_sr, volume.name,
            volume.display_description or '', timeout=timeout)
    except Exception:
        with excutils.save_and_reraise_exception():
            storage.cleanup('copies of %s in SR %s' % (volume.id,
                                                       dest_sr_uuid),
                            _undo_copy, be, source, dest_sr, volume.id)
    new_location = '%s/%s' % (dest_sr_uuid, new_uuid)
    try:
        _verify(be, ref, dest_sr, size)
        be.mark(ref, new_uuid, backend.VOLUME_KEY, volume.id)
        # Recorded before the source goes, as a revert does: a crash
        # between the two leaves an orphan, never a volume without data.
        volume.provider_location = new_location
        volume.save()
    except Exception:
        with excutils.save_and_reraise_exception():
            volume.provider_location = old_location
            storage.cleanup('VDI %s' % new_uuid, storage.destroy_vdi,
                            be.session, new_uuid)
    # The volume has moved from here on: a source that will not go is an
    # orphan to report, not a failed migration.
    storage.cleanup('VDI %s of volume %s, moved to SR %s' % (
        old_uuid, volume.id, dest_sr_uuid), storage.destroy_vdi, be.session,
        old_uuid)
    LOG.info('Volume %(id)s moved to SR %(sr)s (%(host)s).',
             {'id': volume.id, 'sr': dest_sr_uuid, 'host': host.get('host')})
    return True, {'provider_location': new_location}


def _copies(be, sr, volume_id):
    """uuids of the VDIs of ``sr`` marked as volume ``volume_id``'s: in
    the destination, before the volume is recorded there, copies only
    (a copy has its source's ``other_config``)."""
    records = be.session.call('VDI.get_all_records_where',
                              'field "SR"="%s"' % sr)
    return [rec['uuid'] for rec in records.values()
            if rec.get('other_config', {}).get(backend.VOLUME_KEY) ==
            volume_id]


def _destroy_copies(be, sr, volume_id):
    for vdi_uuid in _copies(be, sr, volume_id):
        LOG.warning('Destroying VDI %(vdi)s, a copy of volume %(id)s that '
                    'a failed migration left in SR %(sr)s.',
                    {'vdi': vdi_uuid, 'id': volume_id, 'sr': sr})
        storage.destroy_vdi(be.session, vdi_uuid)


def _undo_copy(be, source, sr, volume_id):
    """Destroy what a failed copy made, once the host has stopped it.

    The copy may run on after its caller gave up on it (polls lost, a
    timeout): the source VDI shows a ``copy`` operation meanwhile, and
    the volume is locked, so that copy is this one. If the host stays
    out of reach, the next migration of the volume finds the leftover.
    """
    deadline = time.monotonic() + be.session.timeout
    while 'copy' in be.session.call('VDI.get_current_operations',
                                    source).values():
        if time.monotonic() > deadline:
            break
        time.sleep(POLL)
    _destroy_copies(be, sr, volume_id)


def _verify(be, ref, sr, size):
    """The copy is a whole disk of the source's size in the right SR."""
    rec = be.session.call('VDI.get_record', ref)
    if rec.get('SR') != sr or int(rec.get('virtual_size', 0)) != int(size) \
            or rec.get('sm_config', {}).get('vhd-parent'):
        raise exception.XenAPINFSException(
            reason=_('the copy %(vdi)s is not a whole disk of %(size)s '
                     'bytes in the destination SR') %
            {'vdi': rec.get('uuid'), 'size': size})


def update_migrated_volume(be: backend.Backend, volume: Volume,
                           new_volume: Volume) -> dict:
    """After cinder's generic migration into this backend: give the new
    VDI the volume's name and mark, so that ``_name_id`` can go.

    If the VDI cannot be renamed, the volume keeps the new volume's name
    (``_name_id``), which is what the VDI is called.
    """
    location = new_volume.provider_location
    try:
        ref = be.vdi(new_volume)
        # The name the volume has once cinder drops its _name_id.
        be.session.call('VDI.set_name_label', ref,
                        cfg.CONF.volume_name_template % volume.id)
        be.session.call('VDI.remove_from_other_config', ref,
                        backend.VOLUME_KEY)
        be.session.call('VDI.add_to_other_config', ref, backend.VOLUME_KEY,
                        volume.id)
    except exception.XenAPINFSException as exc:
        LOG.warning('Volume %(id)s keeps the name of %(new)s: %(err)s',
                    {'id': volume.id, 'new': new_volume.name_id,
                     'err': exc})
        return {'_name_id': new_volume.name_id,
                'provider_location': location}
    return {'_name_id': None, 'provider_location': location}


def retype_needs_nothing(diff: dict | None) -> bool:
    """Whether a new type asks nothing of this backend that the old did
    not: the scheduler has matched its extra specs with our capabilities
    already; a changed encryption changes the data, back-end QoS would be
    ours to enforce."""
    def changed(specs):
        return {k for k, (old, new) in (specs or {}).items() if old != new}
    diff = diff or {}
    if changed(diff.get('encryption')):
        return False
    qos = diff.get('qos_specs') or {}
    consumers = set(qos.get('consumer') or ())
    return not (changed(qos) and consumers & set(BACKEND_QOS))
