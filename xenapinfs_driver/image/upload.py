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
"""Make a glance image of a VDI.

The VDI is snapshotted first (copy-on-write, instant) and the snapshot is
what leaves, so a volume written meanwhile still uploads a consistent
disk; the snapshot is destroyed afterwards, whatever happens.

* ``ovf``/``vhd``: a XenServer tgz. By dom0's plugin, the whole chain leaf
  first (``0.vhd`` .. ``n.vhd``) as XenServer itself uploads; by the stream
  path, one ``0.vhd`` holding the consolidated disk.
* any other container with ``vhd``: one dynamic VHD (cinder 29's own
  ``vhd`` upload runs qemu-img, whose output XenServer does not resize).
* ``qcow2`` (except in a ``compressed`` container): the raw disk packed
  as qcow2 by the driver (``meta.packs_qcow2``), with compressed clusters
  when cinder's ``image_compress_on_upload`` is on (``vhd.qcow2c``, two
  passes over the disk), uncompressed when it is off (``vhd.qcow2out``).
* other formats: the raw disk through cinder's ``image_utils``, which
  converts with qemu-img.

The stream path always exports ``vhd``: only the allocated blocks cross
the network, where a ``raw`` export would send every zero of the volume.
It keeps at most one local copy (``stream_out``): a bare VHD goes from the
export to glance as it comes, and a XenServer image is the export packed
into a tgz as it comes (a raw file only if the host's layout needs it);
a qcow2 image is packed from one sparse raw file into glance's upload as
it is written; other formats go through that raw file, which cinder
converts into a second one.
"""

from cinder.image import image_utils
from oslo_log import log as logging

from xenapinfs_driver.image import chains
from xenapinfs_driver.image import meta
from xenapinfs_driver.image import staging
from xenapinfs_driver import markers
from xenapinfs_driver.image import stream_out
from xenapinfs_driver.xenapi import storage

LOG = logging.getLogger(__name__)


class Uploader:
    """Uploads VDIs of one SR to glance.

    :param level: gzip level of tgz images made by the stream path (1-3
        compress with isal where installed, 4-9 with zlib: slower).
    """

    # Names of the files staged in image_conversion_dir (see staging.py).
    tmp_prefix = staging.BASE
    # Whose operations mark their VDIs (the driver sets the service's).
    ops = markers.Registry(None)

    def __init__(self, session, sr_path, glance_plugin=None, max_depth=30,
                 level=1, chains=None):
        self.session = session
        # A depth.ChainGuard: the snapshot is a full copy past its depth.
        self.chains = chains
        self.sr_path = sr_path
        self.glance_plugin = glance_plugin
        self.max_depth = max_depth
        self.level = level

    def from_vdi(self, context, image_service, image_meta, vdi_uuid):
        image_id = image_meta['id']
        ref = self.session.call('VDI.get_by_uuid', vdi_uuid)
        # The snapshot carries the upload's marker from its first instant:
        # if it cannot be destroyed here (the host unreachable, the
        # service killed), the orphan sweep will. Past a chain depth it is
        # a full copy (depth.ChainGuard).
        name, why = 'upload of %s' % vdi_uuid, 'image %s' % image_id
        with self.ops.operation('upload of %s to image %s' % (
                vdi_uuid, image_id)) as op:
            with op.marking(self.session, ref):
                if self.chains is None:
                    snap, snap_uuid = storage.snapshot_vdi(
                        self.session, ref, name, why)
                else:
                    snap, snap_uuid, _full = self.chains.snapshot(
                        ref, name, why)
            try:
                self._upload(context, image_service, image_meta, snap,
                             snap_uuid)
            finally:
                storage.cleanup('upload snapshot %s' % snap_uuid,
                                storage.destroy_vdi, self.session,
                                snap_uuid)
        LOG.info('VDI %(vdi)s uploaded as image %(image)s.',
                 {'vdi': vdi_uuid, 'image': image_id})

    def _upload(self, context, image_service, image_meta, snap, snap_uuid):
        what = meta.kind(image_meta)
        if what == meta.XENSERVER and self.glance_plugin is not None:
            def send(chain):
                self.glance_plugin.upload_vhd(
                    image_meta['id'], meta.endpoint(context), self.sr_path,
                    chain, meta.identity_headers(context),
                    _plugin_properties(image_meta))
            chains.send_chain(self.session, snap, self.max_depth, send)
            return
        image_id = image_meta['id']

        def send(data):
            image_service.update(context, image_id, {}, data,
                                 purge_props=False)
        if what == meta.BARE_VHD:
            stream_out.send_export(self.session, snap, send)
            return
        if what == meta.XENSERVER:
            stream_out.send_export_tgz(self.session, snap, snap_uuid, send,
                                       self.level, self.tmp_prefix, image_id)
            return
        if meta.packs_qcow2(image_meta):
            # As cinder's upload_volume would, and before the export,
            # which would be wasted.
            image_utils.check_image_conversion_disable(
                image_meta['disk_format'], 'raw', image_id, upload=True)
            with stream_out.exported_raw(self.session, snap, self.tmp_prefix,
                                         image_id) as raw:
                stream_out.send_qcow2(raw, send, 'disk of image %s (VDI %s)'
                                      % (image_id, snap_uuid),
                                      compress=meta.compresses_qcow2())
            return
        with stream_out.exported_raw(self.session, snap, self.tmp_prefix,
                                     image_id) as raw:
            image_utils.upload_volume(context, image_service, image_meta,
                                      raw, run_as_root=False)


def _plugin_properties(image_meta):
    """The image properties XenServer's upload passes on (nova's set)."""
    props = image_meta.get('properties') or {}
    keep = ('auto_disk_config', 'os_type')
    return {k: str(props[k]) for k in keep if props.get(k) is not None}
