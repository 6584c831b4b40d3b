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
"""Fill a VDI with an image's disk.

Plugin path (XenServer images only): dom0 fetches the tgz from glance and
moves its VHDs into the SR under fresh uuids, one per VHD, which dom0 pops
from the end of the stack, the leaf (``0.vhd``) first; after ``SR.scan``
the leaf is a new VDI on top of the image's chain. A volume made by
:meth:`Downloader.new_vdi` (``clone_image``) simply is that VDI,
copy-on-write over the image's layers. An existing volume
(:meth:`Downloader.to_vdi`, ``copy_image_to_volume``) must keep its uuid,
because cinder keeps its ``provider_location``: the leaf is copied into it
by XAPI (``VDI.copy`` with ``into_vdi``, in dom0) and then destroyed.
Existing VHD files are never overwritten: dom0 may refuse it, and tapdisk
may hold the old file open.

Stream path (any image, ``stream_in``): an image holding one dynamic VHD
goes from glance straight into the body of
``PUT /import_raw_vdi?format=vhd``, validated on the way; any other flows
into one sparse raw file in ``image_conversion_dir`` (VHD chains through
our one-pass reader; other formats through cinder's ``fetch_to_raw``),
which is packed as one dynamic VHD straight into that body.

Either way the disk must fit the volume: glance reports no virtual size
for ``ovf`` images, so it is checked here, on the stream path before any
VDI is touched; on the plugin path from the image's first bytes before
dom0 is asked (:mod:`.precheck`, which also reads the whole image once
after dom0 fails, so that a broken image is not fetched again), and from
the downloaded leaf before the volume is touched.
"""

import contextlib

from cinder.i18n import _
from oslo_log import log as logging
from oslo_utils import excutils

from xenapinfs_driver import exception
from xenapinfs_driver.image import meta
from xenapinfs_driver.image import precheck
from xenapinfs_driver.image import staging
from xenapinfs_driver.image import stream_in
from xenapinfs_driver import markers
from xenapinfs_driver.xenapi import plugin as xplugin
from xenapinfs_driver.xenapi import storage

LOG = logging.getLogger(__name__)

NULL_REF = 'OpaqueRef:NULL'


class Downloader:
    """Writes images into VDIs of one SR.

    :param session: a connected XenAPI session.
    :param sr: the SR's ref; ``sr_path`` its mount point in dom0.
    :param glance_plugin: a :class:`~.xplugin.GlancePlugin`, or ``None``
        when the host has no usable plugin (stream path only).
    :param max_depth: the longest VHD chain accepted.
    :param timeout: seconds a copy inside dom0 may take.
    """

    # Names of the files staged in image_conversion_dir (see staging.py).
    tmp_prefix = staging.BASE
    # Whose operations mark their VDIs (the driver sets the service's).
    ops = markers.Registry(None)

    def __init__(self, session, sr, sr_path, glance_plugin=None,
                 max_depth=30, timeout=3600.0):
        self.session = session
        self.sr = sr
        self.sr_path = sr_path
        self.glance_plugin = glance_plugin
        self.max_depth = max_depth
        self.timeout = timeout

    def _by_plugin(self, image_meta):
        return (meta.kind(image_meta) == meta.XENSERVER and
                self.glance_plugin is not None)

    def new_vdi(self, context, image_service, image_meta, size, name,
                description='', other_config=None, leaf_uuid=None):
        """A new VDI of ``size`` bytes holding the image: ``(ref, uuid)``.

        Nothing is left behind when it fails. ``leaf_uuid``: the uuid dom0
        gives the new VDI on the plugin path (a caller that is killed in
        the download can find it again); a fresh one when None.
        """
        image_id = image_meta['id']
        if self._by_plugin(image_meta):
            ref, vdi_uuid = self._download(
                context, image_id, size, leaf_uuid, check=self._checker(
                    context, image_service, image_meta, size))
            with self._discard_on_error(vdi_uuid):
                self.session.call('VDI.set_name_label', ref, name)
                self.session.call('VDI.set_name_description', ref,
                                  description)
                for key, value in (other_config or {}).items():
                    self.session.call('VDI.remove_from_other_config', ref,
                                      key)
                    self.session.call('VDI.add_to_other_config', ref, key,
                                      value)
                storage.grow_vdi(self.session, ref, size)
            how = 'dom0 plugin'
        else:
            with self._staged(context, image_service, image_meta,
                              size) as image:
                ref, vdi_uuid = storage.create_vdi(
                    self.session, self.sr, size, name, description,
                    other_config)
                with self._discard_on_error(vdi_uuid):
                    self._import(ref, image)
            how = image.how
        LOG.info('Image %(image)s written to new VDI %(vdi)s (%(how)s).',
                 {'image': image_id, 'vdi': vdi_uuid, 'how': how})
        return ref, vdi_uuid

    def to_vdi(self, context, image_service, image_meta, vdi_uuid, size):
        """Write the image into the existing VDI ``vdi_uuid`` of ``size``.

        The VDI keeps its uuid. An image that does not fit leaves it
        untouched.
        """
        image_id = image_meta['id']
        if self._by_plugin(image_meta):
            target = self.session.call('VDI.get_by_uuid', vdi_uuid)
            stack = self._stack()
            # The volume names the uuids dom0 is given while they may
            # exist: what a service killed meanwhile leaves, the orphan
            # sweep finds by them.
            with self.ops.operation('download of image %s into %s' % (
                    image_id, vdi_uuid)) as op, \
                    op.marking(self.session, target, fresh=stack):
                leaf, leaf_uuid = self._download(
                    context, image_id, size, stack=stack,
                    check=self._checker(context, image_service, image_meta,
                                        size))
                with self._discard(leaf_uuid):
                    with _lost_task(self.session, 'VDI.copy', [target]):
                        self.session.call_async('VDI.copy', leaf, self.sr,
                                                NULL_REF, target,
                                                timeout=self.timeout)
            how = 'dom0 plugin'
        else:
            with self._staged(context, image_service, image_meta,
                              size) as image:
                ref = self.session.call('VDI.get_by_uuid', vdi_uuid)
                self._import(ref, image)
            how = image.how
        LOG.info('Image %(image)s written to VDI %(vdi)s (%(how)s).',
                 {'image': image_id, 'vdi': vdi_uuid, 'how': how})

    # -- dom0 plugin --

    def _stack(self):
        return [storage.new_uuid() for _ in range(self.max_depth)]

    def _checker(self, context, image_service, image_meta, size):
        return precheck.Checker(context, image_service, image_meta, size,
                                self.max_depth, self.tmp_prefix)

    def _download(self, context, image_id, size, leaf_uuid=None,
                  stack=None, check=None):
        """Fetch the image into new VDIs; ``(ref, uuid)`` of the leaf.

        ``check``: a :class:`.precheck.Checker`, run before dom0 is asked
        and after it fails.
        """
        if check is not None:
            check.head()
        stack = list(stack or self._stack())
        if leaf_uuid:
            stack[-1] = leaf_uuid   # dom0 pops the leaf's first
        fresh = set(stack)
        try:
            with _lost_task(self.session, 'host.call_plugin', fresh):
                leaf_uuid = self.glance_plugin.download_vhd(
                    image_id, meta.endpoint(context), self.sr_path, stack,
                    meta.identity_headers(context),
                    on_failure=check and check.after_failure)
        except Exception:
            # NOTE: dom0 may have moved VHDs into the SR before it failed,
            # or before its answer was lost: they carry our fresh uuids.
            with excutils.save_and_reraise_exception():
                storage.cleanup('the VHDs of image %s' % image_id,
                                self._remove_fresh, fresh)
        if leaf_uuid not in fresh:
            # Not one of ours: never touch (let alone destroy) it.
            raise exception.ImageTransferError(
                reason=_('dom0 put image %(image)s at VDI %(vdi)s, which '
                         'is none of the uuids it was given')
                % {'image': image_id, 'vdi': leaf_uuid})
        with self._discard_on_error(leaf_uuid):
            # The files are in the SR; XAPI knows them after a scan.
            self.session.call('SR.scan', self.sr)
            ref = self.session.call('VDI.get_by_uuid', leaf_uuid)
            virtual = int(self.session.call('VDI.get_virtual_size', ref))
            if virtual > size:
                raise stream_in.too_big(image_id, virtual, size)
        return ref, leaf_uuid

    def _staged(self, context, image_service, image_meta, size):
        """The image, read up to where it can be sent (stream_in.staged):
        passed through as it is, or staged as a sparse raw file."""
        return stream_in.staged(context, image_service, image_meta, size,
                                self.tmp_prefix, self.max_depth)

    def _import(self, ref, image):
        """Write the staged image into the VDI."""
        image.write_into(self.session, ref)

    @contextlib.contextmanager
    def _discard_on_error(self, vdi_uuid):
        try:
            yield
        except Exception:
            with self._discard(vdi_uuid):
                pass
            raise

    @contextlib.contextmanager
    def _discard(self, vdi_uuid):
        """Run the block, then destroy a downloaded leaf, quietly.

        Its parents, the image's other layers, go with it: XenServer's
        garbage collector removes hidden VHDs no VDI uses any more.
        """
        try:
            yield
        finally:
            storage.cleanup('downloaded VDI %s' % vdi_uuid,
                            self._remove_fresh, {vdi_uuid})

    def _remove_fresh(self, uuids):
        """Destroy the VDIs of ``uuids``, fresh ones dom0 wrote."""
        if len(uuids) == 1 and \
                storage.destroy_vdi(self.session, next(iter(uuids))):
            return
        # The scan may not have run: files without records.
        self.session.call('SR.scan', self.sr)
        for rec in self.session.call('VDI.get_all_records_where',
                                     'field "SR"="%s"' % self.sr).values():
            if rec['uuid'] in uuids and rec.get('managed', True):
                storage.destroy_vdi(self.session, rec['uuid'])


@contextlib.contextmanager
def _lost_task(session, method, tokens):
    """When the answer to ``Async.<method>`` in the block is lost, destroy
    its task once ended (the session waited): its result names one of
    ``tokens``."""
    try:
        yield
    except exception.XenAPIConnectionError as exc:
        if exc.sent:
            session.forget_lost_tasks(method, tokens)
        raise


def plugin_or_none(session, mode, retries, timeout):
    """A glance plugin client when ``mode`` allows and the host has one.

    ``plugin`` insists (and fails when missing), ``stream`` never uses it,
    ``auto`` uses it when the version check passes.
    """
    if mode == 'stream':
        return None
    try:
        xplugin.check_version(session)
    except exception.PluginVersionError as exc:
        if mode == 'plugin':
            raise
        LOG.info('Using the stream path for images: %s', exc)
        return None
    return xplugin.GlancePlugin(session, retries=retries, timeout=timeout)
