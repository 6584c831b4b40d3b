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
"""Where one backend keeps its volumes: the host, the SR, the NFS export.

A volume's or snapshot's ``provider_location`` is ``<sr_uuid>/<vdi_uuid>``;
:class:`Backend` is the one place that writes and reads it. A location in
another SR than the backend's is a volume of the historical driver, which
kept one SR per volume on the same export and told the host to forget the
SR after each use.
"""

import contextlib
import uuid

from cinder.i18n import _
from oslo_log import log as logging
from oslo_utils import excutils

from xenapinfs_driver import exception
from xenapinfs_driver import markers
from xenapinfs_driver.xenapi import session as xsession
from xenapinfs_driver.xenapi import storage

LOG = logging.getLogger(__name__)

# other_config keys recording which cinder object a VDI belongs to, so an
# operator looking at the SR (xe vdi-list) can tell.
# Defined beside the operation markers, which must tell them apart.
VOLUME_KEY, SNAPSHOT_KEY = markers.CINDER_KEYS
# uuid5 namespace of image_vdi_uuid (a fixed, random uuid).
IMAGE_VDI_NAMESPACE = uuid.UUID('6d1f3c2e-8a0b-4f7e-9c55-2b7d0e4a91c3')


def image_vdi_uuid(volume_id: str) -> str:
    """The uuid dom0's plugin gives the VDI of a volume made from an image.

    Derived from the volume's id, so that a delete finds the VDI of a
    create whose volume service was killed before it returned.
    """
    return str(uuid.uuid5(IMAGE_VDI_NAMESPACE, volume_id))


class Backend:
    """A logged-in session and the SR that ``do_setup`` found or made.

    :param session: the XenAPI session, logged in.
    :param sr: the ref of the backend's SR.
    :param sr_uuid: its uuid, the first part of every location written.
    :param server: the NFS server of the export.
    :param serverpath: the export's path on it, where old SRs live too.
    :param host: cinder's host of the volume service, which owns the
        markers of its operations (:attr:`ops`).
    :param tag: the SR's tag, and ``name`` its name, for when the host
        forgot it and it is introduced again.
    """

    def __init__(self, session: xsession.XenAPISession, sr: str,
                 sr_uuid: str, server: str, serverpath: str,
                 host: str | None = None, tag: str = '',
                 name: str = '') -> None:
        self.session = session
        self.sr = sr
        self.sr_uuid = sr_uuid
        self.server = server
        self.serverpath = serverpath
        self.tag = tag
        self.name = name
        self.ops = markers.Registry(host)

    # -- provider_location --

    @staticmethod
    def parse_location(location: str | None) -> tuple[str, str] | None:
        """``(sr_uuid, vdi_uuid)`` from a ``provider_location``, or ``None``.

        Two non-empty parts around one ``/`` or nothing: the driver never
        writes another shape, so any other value (empty, a part missing,
        extra parts) names no VDI of ours.
        """
        if not location or location.count('/') != 1:
            return None
        sr_uuid, vdi_uuid = location.split('/')
        return (sr_uuid, vdi_uuid) if sr_uuid and vdi_uuid else None

    def format_location(self, vdi_uuid: str) -> str:
        """The ``provider_location`` of VDI ``vdi_uuid`` in our SR."""
        return '%s/%s' % (self.sr_uuid, vdi_uuid)

    def location(self, obj) -> tuple[str, str]:
        """``(sr_uuid, vdi_uuid)`` of a volume or snapshot, or raise."""
        loc = self.parse_location(obj.provider_location)
        if loc is None:
            raise exception.XenAPINFSException(
                reason=_('%(id)s has no valid provider_location (%(loc)r)')
                % {'id': obj.id, 'loc': obj.provider_location})
        return loc

    def vdi(self, obj) -> str:
        """The ref of the VDI of a volume or snapshot in our SR."""
        sr_uuid, vdi_uuid = self.location(obj)
        if self.is_old_layout(sr_uuid):
            raise exception.XenAPINFSException(
                reason=_('%(id)s is in SR %(sr)s, a volume of the historical '
                         'one-SR-per-volume layout: unmanage it and manage '
                         'it again as "%(sr)s/%(vdi)s" to move it into this '
                         'backend\'s SR')
                % {'id': obj.id, 'sr': sr_uuid, 'vdi': vdi_uuid})
        ref = storage.vdi_by_uuid(self.session, vdi_uuid)
        if ref is None:
            raise exception.XenAPINFSException(
                reason=_('VDI %(vdi)s of %(id)s is missing from SR %(sr)s')
                % {'vdi': vdi_uuid, 'id': obj.id, 'sr': sr_uuid})
        return ref

    def volume_vdis(self, volume_id: str, leaf_uuid: str) -> list[str]:
        """The uuids of VDIs marked as the volume's, or named ``leaf_uuid``.

        dom0's plugin writes a VDI that XAPI knows only after a scan, and
        may have written it after its caller was gone: so a ``leaf_uuid``
        the host does not know yet is looked for again after one.
        """
        if storage.vdi_by_uuid(self.session, leaf_uuid) is None:
            self.session.call('SR.scan', self.sr)
        records = self.session.call('VDI.get_all_records_where',
                                    'field "SR"="%s"' % self.sr)
        return [rec['uuid'] for rec in records.values()
                if rec['uuid'] == leaf_uuid or
                rec.get('other_config', {}).get(VOLUME_KEY) == volume_id]

    def destroy_unrecorded(self, volume_id: str, leaf_uuid: str) -> None:
        """Destroy what :meth:`volume_vdis` finds: the VDIs of a volume
        whose location cinder never learnt."""
        marked = self.volume_vdis(volume_id, leaf_uuid)
        if not marked:
            LOG.info('%s has no VDI; nothing to delete.', volume_id)
        for vdi_uuid in marked:
            LOG.info('Destroying VDI %(vdi)s of %(id)s, which was never '
                     'recorded in cinder.', {'vdi': vdi_uuid,
                                             'id': volume_id})
            storage.destroy_vdi(self.session, vdi_uuid)

    # -- the historical layout --

    def is_old_layout(self, sr_uuid: str | None) -> bool:
        """Whether a location's SR is one of the historical layout."""
        return bool(sr_uuid) and sr_uuid != self.sr_uuid

    def old_sr(self, sr_uuid: str) -> contextlib.AbstractContextManager | None:
        """Attach old SR ``sr_uuid`` for a ``with``; ``None`` if gone.

        The host may know the SR still, or have forgotten it as the old
        driver told it to: then only the export can tell it exists.
        """
        if storage.sr_by_uuid(self.session, sr_uuid) is None and \
                sr_uuid not in storage.probe_nfs_srs(
                    self.session, self.server, self.serverpath):
            return None
        return storage.attached_sr(self.session, sr_uuid, self.server,
                                   self.serverpath)

    def destroy(self, sr_uuid: str, vdi_uuid: str) -> bool:
        """Destroy the VDI at a location; ``False`` if it was gone.

        An old SR is introduced for the duration and forgotten again, as
        the old driver left it. An SR the export no longer holds took its
        volume with it: that is "already gone", not a failure.
        """
        if not self.is_old_layout(sr_uuid):
            return storage.destroy_vdi(self.session, vdi_uuid)
        attached = self.old_sr(sr_uuid)
        if attached is None:
            LOG.info('SR %(sr)s of VDI %(vdi)s is not on %(server)s:%(path)s '
                     'any more.', {'sr': sr_uuid, 'vdi': vdi_uuid,
                                   'server': self.server,
                                   'path': self.serverpath})
            return False
        with attached:
            return storage.destroy_vdi(self.session, vdi_uuid)

    # -- marks --

    def copy(self, copier, source: str, key: str, value: str,
             *args, **kwargs) -> tuple[str, str]:
        """``copier(session, source, *args, **kwargs)``, a snapshot or
        clone, made cinder's ``key`` ``value``: ``(ref, uuid)``.

        The copy carries its operation's marker (:mod:`.markers`) from the
        instant it exists until it is tagged, so that a service killed in
        between leaves an orphan the sweep finds, never one it cannot.
        """
        with self.ops.operation('%s %s' % (key, value)) as op:
            with op.marking(self.session, source):
                ref, vdi_uuid = copier(self.session, source, *args,
                                       **kwargs)
            self.mark(ref, vdi_uuid, key, value)
        return ref, vdi_uuid

    def mark(self, ref: str, vdi_uuid: str, key: str, value: str) -> None:
        """Mark a new VDI as cinder's ``key`` ``value``, or destroy it.

        A snapshot or clone inherits its source's ``other_config``: the
        source's marks go, so that a snapshot never claims to be a volume,
        and so do operation markers, once the tag says whose it is.
        """
        try:
            for old in (VOLUME_KEY, SNAPSHOT_KEY):
                self.session.call('VDI.remove_from_other_config', ref, old)
            self.session.call('VDI.add_to_other_config', ref, key, value)
            markers.strip(self.session, ref, self.session.call(
                'VDI.get_other_config', ref))
        except Exception:
            with excutils.save_and_reraise_exception():
                storage.cleanup('VDI %s' % vdi_uuid, storage.destroy_vdi,
                                self.session, vdi_uuid)
