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
"""Adopting VDIs as cinder volumes, and listing those that can be.

A reference names a VDI by uuid (``{'source-id': uuid}``), by
``{'source-name': uuid or name_label}``, or as ``'<sr_uuid>/<vdi_uuid>'``
for volumes of the historical driver, which kept one SR per volume and
told the host to forget it after each use. Such a VDI is copied into the
backend's SR (its old SR is forgotten again afterwards, files untouched):
one SR per backend is what the rest of the driver relies on.
"""

from cinder import exception as cinder_exception
from cinder.i18n import _
from cinder.objects.snapshot import Snapshot
from cinder.objects.volume import Volume
from oslo_log import log as logging
from oslo_utils import excutils
from oslo_utils import units
from oslo_utils import uuidutils

from xenapinfs_driver import backend
from xenapinfs_driver.xenapi import storage

LOG = logging.getLogger(__name__)

VOLUME_KEY = backend.VOLUME_KEY


def _gib(size):
    return -(-int(size) // units.Gi)


def _invalid(existing_ref, reason):
    return cinder_exception.ManageExistingInvalidReference(
        existing_ref=existing_ref, reason=reason)


def _parse(existing_ref):
    """``(sr_uuid or None, vdi uuid or name)`` from a reference."""
    value = existing_ref.get('source-id') or existing_ref.get('source-name')
    if not value or not isinstance(value, str):
        raise _invalid(existing_ref, _('give source-id (a VDI uuid) or '
                                       'source-name'))
    # An old volume is named by its provider_location, '<sr>/<vdi>'.
    loc = backend.Backend.parse_location(value)
    if loc and uuidutils.is_uuid_like(loc[0]):
        return loc
    return None, value      # a name_label may hold a '/' too


def _quoted(value):
    """``value`` as a string literal of XAPI's query language."""
    return '"%s"' % value.replace('\\', '\\\\').replace('"', '\\"')


def _find(be, existing_ref, name):
    """The ref of the VDI ``name`` (uuid or unique label) in our SR."""
    ref = storage.vdi_by_uuid(be.session, name)
    if ref is None:
        found = [r for r, rec in be.session.call(
            'VDI.get_all_records_where',
            'field "name__label"=%s' % _quoted(name)).items()
            if rec.get('SR') == be.sr and rec.get('managed', True)]
        if len(found) != 1:
            raise _invalid(existing_ref, _('%(n)d VDIs in SR %(sr)s match '
                                           '%(name)s') %
                           {'n': len(found), 'sr': be.sr_uuid,
                            'name': name})
        ref = found[0]
    rec = be.session.call('VDI.get_record', ref)
    if rec.get('SR') != be.sr:
        raise _invalid(existing_ref, _('VDI %s is not in this backend\'s SR')
                       % rec['uuid'])
    reason = _unsafe(rec)
    if reason:
        raise _invalid(existing_ref, reason)
    return ref, rec


def _unsafe(rec):
    if not rec.get('managed', True):
        return _('a hidden base copy of other VDIs')
    if rec.get('is_a_snapshot'):
        return _('a snapshot')
    if rec.get('read_only'):
        return _('read-only')
    if rec.get('VBDs'):
        return _('attached to a VM')
    if rec.get('other_config', {}).get(VOLUME_KEY):
        return _('already a cinder volume')
    return None


def _find_legacy(be, existing_ref, name):
    """The ref of VDI ``name`` in an SR of the historical layout."""
    ref = storage.vdi_by_uuid(be.session, name)
    if ref is None:
        raise _invalid(existing_ref, _('no VDI %s') % name)
    reason = _unsafe(be.session.call('VDI.get_record', ref))
    if reason:
        raise _invalid(existing_ref, reason)
    return ref


def volume_size(be: backend.Backend, existing_ref: dict) -> int:
    sr_uuid, name = _parse(existing_ref)
    if be.is_old_layout(sr_uuid):
        with _legacy(be, existing_ref, sr_uuid):
            ref = _find_legacy(be, existing_ref, name)
            return _gib(be.session.call('VDI.get_virtual_size', ref))
    _ref, rec = _find(be, existing_ref, name)
    return _gib(rec['virtual_size'])


def manage_volume(be: backend.Backend, volume: Volume,
                  existing_ref: dict) -> dict:
    """Adopt the VDI as ``volume``; return its model update.

    The cinder mark is set last, so that a failure leaves the VDI as
    manageable as it was (and a copy made here is destroyed).
    """
    sr_uuid, name = _parse(existing_ref)
    copied = be.is_old_layout(sr_uuid)
    if copied:
        with _legacy(be, existing_ref, sr_uuid):
            old = _find_legacy(be, existing_ref, name)
            ref, vdi_uuid = storage.copy_vdi(be.session, old, be.sr,
                                             volume.name)
        LOG.info('Copied VDI %(old)s of SR %(sr)s into %(new)s for volume '
                 '%(vol)s; the old SR was forgotten, its files kept.',
                 {'old': name, 'sr': sr_uuid, 'new': vdi_uuid,
                  'vol': volume.id})
    else:
        ref, rec = _find(be, existing_ref, name)
        vdi_uuid = rec['uuid']
    try:
        # cinder sized the volume from manage_existing_get_size (whole
        # GiB, rounded up): the VDI must be as large as cinder thinks.
        storage.grow_vdi(be.session, ref, volume.size * units.Gi)
        be.session.call('VDI.set_name_label', ref, volume.name)
        be.session.call('VDI.remove_from_other_config', ref, VOLUME_KEY)
        be.session.call('VDI.add_to_other_config', ref, VOLUME_KEY,
                        volume.id)
    except Exception:
        with excutils.save_and_reraise_exception():
            if copied:
                storage.cleanup('VDI %s' % vdi_uuid, storage.destroy_vdi,
                                be.session, vdi_uuid)
            else:
                # NOTE: the mark may be set even so, its answer lost: a
                # VDI marked as a volume could never be managed again.
                storage.cleanup('the mark of VDI %s' % vdi_uuid,
                                be.session.call,
                                'VDI.remove_from_other_config', ref,
                                VOLUME_KEY)
    return {'provider_location': be.format_location(vdi_uuid)}


def unmanage(be: backend.Backend, volume: Volume) -> None:
    """Leave the VDI in the SR, no longer marked as cinder's."""
    loc = be.parse_location(volume.provider_location)
    ref = storage.vdi_by_uuid(be.session, loc[1]) if loc else None
    if ref is None:
        LOG.info('Volume %s has no VDI to unmanage.', volume.id)
        return
    be.session.call('VDI.remove_from_other_config', ref, VOLUME_KEY)


def _legacy(be, existing_ref, sr_uuid):
    """Attach an SR of the historical layout for the duration."""
    attached = be.old_sr(sr_uuid)
    if attached is None:
        raise _invalid(existing_ref, _('no SR %(sr)s on %(server)s:%(path)s')
                       % {'sr': sr_uuid, 'server': be.server,
                          'path': be.serverpath})
    return attached


def _ours(be, objs):
    """``{vdi_uuid: cinder id}`` of the cinder objects ``objs``."""
    found = {}
    for obj in objs:
        loc = be.parse_location(obj.provider_location)
        if loc:
            found[loc[1]] = obj.id
    return found


def list_volumes(be: backend.Backend,
                 cinder_volumes: list[Volume]) -> list[dict]:
    """Entries for cinder's get_manageable_volumes, before paging."""
    known = _ours(be, cinder_volumes)
    entries = []
    records = be.session.call('VDI.get_all_records_where',
                              'field "SR"="%s"' % be.sr)
    for rec in records.values():
        if not rec.get('managed', True) or rec.get('is_a_snapshot'):
            continue
        cinder_id = known.get(rec['uuid'])
        reason = _('already managed') if cinder_id else _unsafe(rec)
        entries.append({
            'reference': {'source-id': rec['uuid']},
            'size': _gib(rec['virtual_size']),
            'safe_to_manage': reason is None,
            'reason_not_safe': reason,
            'cinder_id': cinder_id,
            'extra_info': _extra_info(rec),
        })
    return entries


def _extra_info(rec):
    """What an operator sees beside an entry to tell VDIs apart.

    cinder turns each entry into a ``ManageableVolume`` or
    ``ManageableSnapshot``, whose ``extra_info`` is a dict of strings or
    None (``DictOfNullableStringsField``): a plain string fails there, and
    the listing answers HTTP 500.
    """
    return {'name_label': rec.get('name_label') or None,
            'name_description': rec.get('name_description') or None}


def list_snapshots(be: backend.Backend,
                   cinder_snapshots: list[Snapshot]) -> list[dict]:
    """Entries for cinder's get_manageable_snapshots, before paging."""
    known = _ours(be, cinder_snapshots)
    entries = []
    records = be.session.call('VDI.get_all_records_where',
                              'field "SR"="%s" and field "is_a_snapshot"='
                              '"true"' % be.sr)
    for ref, rec in records.items():
        parent = rec.get('snapshot_of')
        parent_uuid = None
        if parent and parent != 'OpaqueRef:NULL':
            try:
                parent_uuid = be.session.call('VDI.get_uuid', parent)
            except Exception:
                parent_uuid = None
        cinder_id = known.get(rec['uuid'])
        entries.append({
            'reference': {'source-id': rec['uuid']},
            'size': _gib(rec['virtual_size']),
            'safe_to_manage': False,
            'reason_not_safe': (_('already managed') if cinder_id else
                                _('managing snapshots is not supported')),
            'cinder_id': cinder_id,
            'source_reference': {'source-id': parent_uuid},
            'extra_info': _extra_info(rec),
        })
    return entries
