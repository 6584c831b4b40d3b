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
"""Cinder volumes as VDIs on a XenServer / XCP-ng NFS storage repository.

Each backend owns one NFS SR, found by a tag in its ``other_config`` (or
pinned by ``xenapi_sr_uuid``) and created on first start; each volume and
snapshot is a VDI in it, a VHD file ``<serverpath>/<sr>/<vdi>.vhd``, and
``provider_location`` is ``<sr_uuid>/<vdi_uuid>``. Snapshots, clones and
volumes from snapshots are copy-on-write VHD chains, full copies only
when a chain would grow too deep (:mod:`.depth`).

This module only turns cinder objects into calls of the layers below:
``xenapi`` (session, SR/VDI operations) and ``image`` (glance transfers).
"""

from cinder import context
from cinder import coordination
from cinder import exception as cinder_exception
from cinder.i18n import _
from cinder import interface
from cinder.objects.snapshot import Snapshot
from cinder.objects.volume import Volume
from cinder.volume import driver
from cinder.volume import volume_utils
from oslo_log import log as logging
from oslo_utils import excutils
from oslo_utils import units

from xenapinfs_driver import adopt
from xenapinfs_driver import backend
from xenapinfs_driver import depth as chains
from xenapinfs_driver import exception
from xenapinfs_driver import failures
from xenapinfs_driver.image import download
from xenapinfs_driver.image import meta
from xenapinfs_driver.image import staging
from xenapinfs_driver.image import upload
from xenapinfs_driver import manage
from xenapinfs_driver import migrate
from xenapinfs_driver import opts
from xenapinfs_driver import resolve
from xenapinfs_driver import stats
from xenapinfs_driver import sweep
from xenapinfs_driver.xenapi import session as xsession
from xenapinfs_driver.xenapi import storage

LOG = logging.getLogger(__name__)

VOLUME_KEY = backend.VOLUME_KEY
SNAPSHOT_KEY = backend.SNAPSHOT_KEY
# Kept here too: a test or tool may know it by its first home.
image_vdi_uuid = backend.image_vdi_uuid


@interface.volumedriver
@resolve.on_stale_refs
class XenAPINFSDriver(driver.VolumeDriver):
    """Volumes as VHD files on a XenServer NFS SR, managed through XenAPI.

    .. code-block:: none

      Version history:
        1.0.0 - Historical in-tree driver (2012-2014): one SR per volume,
                create, delete, full-copy snapshots, plugin image paths.
        2.0.0 - Out-of-tree rewrite: one SR per backend, copy-on-write
                snapshots and clones, extend, revert, manage/unmanage,
                real capacity, dom0 plugin and XAPI streaming image paths,
                XenServer (ovf/vhd) images in and out, active-active.
        2.1.0 - Migrate and retype between backends of one pool by the host.
    """

    VERSION = '2.1.0'
    # ThirdPartySystems wiki page
    CI_WIKI_NAME = 'XenAPINFS_CI'
    SUPPORTS_ACTIVE_ACTIVE = True
    driver_prefix = 'xenapinfs'
    driver_volume_type = 'xensm'
    storage_protocol = 'xensm'

    def __init__(self, *args, session_factory=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(opts.xenapi_opts)
        self._session_factory = session_factory or xsession.XenAPISession
        self.backend = None
        self.chains = None
        self.downloader = None
        self.uploader = None

    @staticmethod
    def get_driver_options() -> list:
        return opts.xenapi_opts + driver.VolumeDriver._get_oslo_driver_opts(
            'reserved_percentage', 'max_over_subscription_ratio',
            'volume_backend_name')

    # -- setup --

    def _conf(self, name):
        return self.configuration.safe_get(name)

    def _backend(self):
        return (self._conf('volume_backend_name') or
                self.configuration.config_group or 'XenAPINFS')

    def _required(self):
        for name in ('xenapi_connection_url', 'xenapi_connection_password',
                     'xenapi_nfs_server', 'xenapi_nfs_serverpath'):
            if not self._conf(name):
                raise cinder_exception.InvalidConfigurationValue(
                    option=name, value=self._conf(name) and '***')

    def do_setup(self, context: context.RequestContext) -> None:
        """Log in to the host and find, introduce or create the SR."""
        self._required()
        c = self._conf
        session = self._session_factory(
            c('xenapi_connection_url'), c('xenapi_connection_username'),
            c('xenapi_connection_password'),
            originator='cinder-volume xenapinfs-driver %s' % self.VERSION,
            timeout=c('xenapi_connection_timeout'),
            retries=c('xenapi_connection_retries'),
            verify=c('xenapi_ssl_verify'),
            ca_bundle=c('xenapi_ssl_ca_bundle'),
            max_connections=c('xenapi_connection_concurrent'))
        try:
            session.connect()
            plugin = self._find_sr_and_plugin(session)
        except Exception:
            # A failed setup must not keep logins open on the host; cinder
            # calls do_setup again when the service restarts.
            with excutils.save_and_reraise_exception():
                session.close()
                self.backend = None
        sr, sr_uuid = self.backend.sr, self.backend.sr_uuid
        depth = c('xenapi_max_chain_depth')
        guard = c('xenapi_full_copy_depth'), c('xenapi_image_timeout')
        self.chains = chains.ChainGuard(session, sr, *guard)
        sr_path = '%s/%s' % (c('xenapi_sr_base_path').rstrip('/'), sr_uuid)
        self.downloader = download.Downloader(
            session, sr, sr_path, plugin, depth, c('xenapi_image_timeout'))
        self.uploader = upload.Uploader(
            session, sr_path, plugin, depth,
            c('xenapi_image_compression_level'), chains=self.chains)
        # Staged files of this service's last run, if it was killed: no
        # transfer of this service runs yet.
        tmp_prefix = staging.prefix(self.host)
        self.downloader.tmp_prefix = self.uploader.tmp_prefix = tmp_prefix
        staging.remove_leftovers(tmp_prefix)
        self.sweeper = sweep.start(self)
        LOG.info('XenAPINFS backend %(be)s uses SR %(sr)s; images move by '
                 '%(how)s.', {'be': self._backend(), 'sr': sr_uuid,
                              'how': 'the dom0 plugin' if plugin else
                              'streaming'})

    def _find_sr_and_plugin(self, session):
        """Build :attr:`backend` on the SR; the dom0 plugin, if used."""
        c = self._conf
        server, path = c('xenapi_nfs_server'), c('xenapi_nfs_serverpath')
        tag = '%s@%s:%s' % (self._backend(), server, path)
        name = 'Cinder %s' % self._backend()
        # Several volume services of one backend (active-active) start
        # together: one finds or creates the SR, the others then find it.
        with coordination.COORDINATOR.get_lock('%s-sr-%s' % (
                self.driver_prefix, self._backend())):
            sr, sr_uuid = adopt.find_sr(session, server, path, tag, name,
                                        c('xenapi_sr_uuid'), self.host)
        plugin = download.plugin_or_none(
            session, c('xenapi_image_transfer'), c('xenapi_plugin_retries'),
            c('xenapi_image_timeout'))
        self.backend = backend.Backend(session, sr, sr_uuid, server, path,
                                       self.host, tag, name)
        return plugin

    def check_for_setup_error(self) -> None:
        if self.backend is None:
            raise exception.XenAPINFSException(reason=_('do_setup failed'))
        self.backend.session.call('SR.get_record', self.backend.sr)

    def _model(self, vdi_uuid):
        return {'provider_location': self.backend.format_location(vdi_uuid)}

    # -- volumes --

    def create_volume(self, volume: Volume) -> dict:
        be = self.backend
        ref, vdi_uuid = storage.create_vdi(
            be.session, be.sr, volume.size * units.Gi, volume.name,
            volume.display_description or '', {VOLUME_KEY: volume.id})
        return self._model(vdi_uuid)

    @coordination.synchronized('{self.driver_prefix}-{volume.id}')
    def delete_volume(self, volume: Volume) -> None:
        if self.backend.parse_location(volume.provider_location) is None:
            return self._destroy_unrecorded(volume)
        self._destroy(volume)

    def _destroy_unrecorded(self, volume):
        """Destroy a volume's VDI when cinder never learnt where it is.

        A create from an image killed mid-copy leaves the volume's VDI,
        marked with the volume's id (stream path) or named
        :func:`image_vdi_uuid` of it (dom0's plugin; the image's other
        layers go with it as base copies). A volume that failed to be
        managed may have marked the user's VDI: that one stays.
        """
        if volume.status in ('error_managing', 'error_managing_deleting'):
            LOG.info('%s was never managed; no VDI to delete.', volume.id)
            return
        self.backend.destroy_unrecorded(volume.id, image_vdi_uuid(volume.id))

    def _destroy(self, obj):
        loc = self.backend.parse_location(obj.provider_location)
        if loc is None:
            LOG.info('%s has no VDI; nothing to delete.', obj.id)
        elif not self.backend.destroy(*loc):
            LOG.info('VDI %(vdi)s of %(id)s was already gone.',
                     {'vdi': loc[1], 'id': obj.id})

    @coordination.synchronized('{self.driver_prefix}-{volume.id}')
    def extend_volume(self, volume: Volume, new_size: int) -> None:
        storage.grow_vdi(self.backend.session, self.backend.vdi(volume),
                         new_size * units.Gi)

    @coordination.synchronized('{self.driver_prefix}-{src_vref.id}')
    def create_cloned_volume(self, volume: Volume, src_vref: Volume) -> dict:
        return self._clone(self.backend.vdi(src_vref), volume)

    def _clone(self, source, volume):
        """A clone of VDI ``source`` as ``volume`` (see depth)."""
        return self._model(self.backend.copy(
            self.chains.clone_copier, source, VOLUME_KEY, volume.id,
            volume.name, volume.display_description or '',
            volume.size * units.Gi, for_id=volume.id)[1])

    # -- snapshots --

    @coordination.synchronized('{self.driver_prefix}-{snapshot.volume_id}')
    def create_snapshot(self, snapshot: Snapshot) -> dict:
        return self._model(self.backend.copy(
            self.chains.snapshot_copier, self.backend.vdi(snapshot.volume),
            SNAPSHOT_KEY, snapshot.id, snapshot.name,
            snapshot.display_description or '', for_id=snapshot.id)[1])

    # NOTE: remotefs locks on the volume because its delete merges the
    # snapshot into the volume's file. This one destroys the snapshot's
    # own VDI only; the host's GC shortens the chain later, serialised by
    # the storage manager's SR lock with VDI.snapshot/resize/clone of the
    # volume, whose VDI keeps its uuid: an extend, snapshot or delete of
    # the volume has nothing to race. Only clones read a snapshot: a
    # volume from it takes this lock; a revert may not (cinder refuses to
    # delete a snapshot being restored), and a forced delete racing one
    # fails the revert before the volume is re-pointed, or loses to
    # VDI.clone, whose clone keeps the shared parent alive.
    @coordination.synchronized('{self.driver_prefix}-{snapshot.id}')
    def delete_snapshot(self, snapshot: Snapshot) -> None:
        self._destroy(snapshot)

    @coordination.synchronized('{self.driver_prefix}-{snapshot.id}')
    def create_volume_from_snapshot(self, volume: Volume,
                                    snapshot: Snapshot) -> dict:
        return self._clone(self.backend.vdi(snapshot), volume)

    @coordination.synchronized('{self.driver_prefix}-{volume.id}')
    def revert_to_snapshot(self, context: context.RequestContext,
                           volume: Volume, snapshot: Snapshot) -> None:
        """Point the volume at a fresh clone of the snapshot.

        A file SR cannot rewind a VHD in place; a clone is instant. The
        new VDI is recorded before the old one goes, so a crash between
        the two leaves an orphan VDI, never a volume without data.
        """
        be = self.backend
        old_location = volume.provider_location
        old = be.location(volume)[1]
        model = self._clone(be.vdi(snapshot), volume)
        try:
            volume.provider_location = model['provider_location']
            volume.save()
        except Exception:
            with excutils.save_and_reraise_exception():
                volume.provider_location = old_location
                new = be.parse_location(model['provider_location'])[1]
                storage.cleanup('VDI %s' % new, storage.destroy_vdi,
                                be.session, new)
        # The volume is reverted from here on: a VDI that will not go is
        # an orphan to report, not a failed revert.
        storage.cleanup('old VDI %s of volume %s' % (old, volume.id),
                        storage.destroy_vdi, be.session, old)

    # -- images --

    @failures.image_refusals
    def clone_image(self, context: context.RequestContext, volume: Volume,
                    image_location, image_meta: dict,
                    image_service) -> tuple[dict | None, bool]:
        """Take VHD and raw images here: cinder's generic path cannot read
        VHDs, and would write out a raw image in full (zeros too) first.

        A XenServer (ovf/vhd) or raw image goes through cinder's generic
        path when the image-volume cache is on, which ends in
        :meth:`copy_image_to_volume` and lets the cache clone later
        volumes; a bare VHD is taken here always, because the generic
        path runs ``qemu-img info -f vhd``, which qemu-img refuses.
        """
        kind = meta.kind(image_meta)
        if kind == meta.OTHER:
            return None, False
        if kind in (meta.XENSERVER, meta.RAW) and \
                self._conf('image_volume_cache_enabled'):
            return None, False
        _ref, vdi_uuid = self.downloader.new_vdi(
            context, image_service, image_meta, volume.size * units.Gi,
            volume.name, volume.display_description or '',
            {VOLUME_KEY: volume.id}, leaf_uuid=image_vdi_uuid(volume.id))
        return self._model(vdi_uuid), True

    @failures.image_refusals
    def copy_image_to_volume(self, context: context.RequestContext,
                             volume: Volume, image_service, image_id: str,
                             disable_sparse: bool = False) -> None:
        image_meta = image_service.show(context, image_id)
        self.downloader.to_vdi(context, image_service, image_meta,
                               self.backend.location(volume)[1],
                               volume.size * units.Gi)

    @coordination.synchronized('{self.driver_prefix}-{volume.id}')
    def copy_volume_to_image(self, context: context.RequestContext,
                             volume: Volume, image_service,
                             image_meta: dict) -> None:
        self.uploader.from_vdi(context, image_service, image_meta,
                               self.backend.location(volume)[1])

    # -- attach (the historical xensm contract) --

    def initialize_connection(self, volume: Volume, connector: dict,
                              initiator_data=None) -> dict:
        sr_uuid, vdi_uuid = self.backend.location(volume)
        return {
            'driver_volume_type': self.driver_volume_type,
            'data': {
                'name_label': volume.display_name or '',
                'name_description': volume.display_description or '',
                'sr_uuid': sr_uuid,
                'vdi_uuid': vdi_uuid,
                'sr_type': 'nfs',
                'server': self.backend.server,
                'serverpath': self.backend.serverpath,
                'introduce_sr_keys': ['sr_type', 'server', 'serverpath'],
            },
        }

    def terminate_connection(self, volume: Volume, connector: dict | None,
                             **kwargs) -> None:
        pass

    def create_export(self, context, volume: Volume, connector) -> None:
        pass

    def ensure_export(self, context, volume: Volume) -> None:
        pass

    def remove_export(self, context, volume: Volume) -> None:
        pass

    # -- stats --

    def _update_volume_stats(self):
        self._stats = stats.collect(
            self.backend, self._conf, upkeep=lambda: resolve.upkeep(self),
            volume_backend_name=self._backend(), driver_version=self.VERSION,
            storage_protocol=self.storage_protocol)

    def get_volume_stats(self, refresh: bool = False) -> dict:
        if refresh or not self._stats:
            self._update_volume_stats()
        return self._stats

    # -- migrate, retype (see migrate.py) --

    @coordination.synchronized('{self.driver_prefix}-{volume.id}')
    def migrate_volume(self, context: context.RequestContext, volume: Volume,
                       host: dict) -> tuple[bool, dict | None]:
        return migrate.migrate_volume(self.backend, context, volume, host,
                                      self._conf('xenapi_migration_timeout'))

    def update_migrated_volume(self, context: context.RequestContext,
                               volume: Volume, new_volume: Volume,
                               original_volume_status: str) -> dict:
        return migrate.update_migrated_volume(self.backend, volume,
                                              new_volume)

    def retype(self, context: context.RequestContext, volume: Volume,
               new_type, diff: dict, host: dict) -> tuple[bool, None]:
        return migrate.retype_needs_nothing(diff), None

    # -- manage / unmanage --

    def manage_existing(self, volume: Volume, existing_ref: dict) -> dict:
        return manage.manage_volume(self.backend, volume, existing_ref)

    def manage_existing_get_size(self, volume: Volume,
                                 existing_ref: dict) -> int:
        return manage.volume_size(self.backend, existing_ref)

    def unmanage(self, volume: Volume) -> None:
        manage.unmanage(self.backend, volume)

    def get_manageable_volumes(self, cinder_volumes: list[Volume], marker,
                               limit: int, offset: int, sort_keys: list[str],
                               sort_dirs: list[str]) -> list[dict]:
        entries = manage.list_volumes(self.backend, cinder_volumes)
        return volume_utils.paginate_entries_list(entries, marker, limit,
                                                  offset, sort_keys,
                                                  sort_dirs)

    def get_manageable_snapshots(self, cinder_snapshots: list[Snapshot],
                                 marker, limit: int, offset: int,
                                 sort_keys: list[str],
                                 sort_dirs: list[str]) -> list[dict]:
        entries = manage.list_snapshots(self.backend, cinder_snapshots)
        return volume_utils.paginate_entries_list(entries, marker, limit,
                                                  offset, sort_keys,
                                                  sort_dirs)
