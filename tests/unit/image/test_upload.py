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
"""Volumes into images: copy_volume_to_image, both paths."""

import json
import os
import subprocess
import tarfile
import tempfile
from unittest import mock
import uuid

from cinder import exception as cinder_exception
from oslo_utils import units
import pytest

from tests import fake_images
from tests import stack_fixture
from tests.unit.image import test_download
from tests.unit import test_driver
from xenapinfs_driver import exception
from xenapinfs_driver import vhd
from xenapinfs_driver.xenapi import storage

MiB = units.Mi
GiB = units.Gi
pattern = test_driver.pattern
glance_service = stack_fixture.glance_service
PROJECT = 'project-up'


def disk_data():
    """What the test volumes hold: data, a hole, data not 2 MiB aligned."""
    return pattern(3 * MiB, 60) + bytes(2 * MiB) + pattern(MiB + 512, 61)


class StreamUploadTestCase(test_driver.DriverTestBase):

    def setUp(self):
        super().setUp()
        self.images = fake_images.ImageService()
        test_download.run_privsep_in_process(self)
        self.vol = self.new_volume(data=disk_data())

    def new_image(self):
        """The image assert_fails_cleanly uploads to."""
        return self.queued_image('vhd', 'ovf')

    def queued_image(self, disk_format, container_format):
        """A queued image in glance: its meta."""
        meta = {'id': str(uuid.uuid4()), 'name': 'up', 'status': 'queued',
                'disk_format': disk_format,
                'container_format': container_format, 'properties': {}}
        self.images.create(self.context, dict(meta))
        return meta

    def upload(self, disk_format, container_format='bare', vol=None):
        """copy_volume_to_image into a new queued image; its bytes."""
        meta = self.queued_image(disk_format, container_format)
        before = self.visible_vdis()
        self.driver.copy_volume_to_image(self.context, vol or self.vol,
                                         self.images, meta)
        # The upload's snapshot is gone again.
        self.assertEqual(sorted(before), sorted(self.visible_vdis()))
        return self.images._imagedata[meta['id']]

    def assert_fails_cleanly(self, exc_type=Exception, *words):
        """An upload into a new_image() fails with exc_type, naming
        words; no image data, not active, the volume unchanged."""
        meta = self.new_image()
        with self.nothing_leaked():
            with self.assertRaises(exc_type) as err:
                self.driver.copy_volume_to_image(self.context, self.vol,
                                                 self.images, meta)
        self.assertIsNone(self.images.data(meta['id']))
        self.assertNotEqual('active', self.images.show(
            self.context, meta['id'])['status'])
        for word in words:
            self.assertIn(word, str(err.exception))
        self.assertEqual(disk_data(), self.read(self.vol, len(disk_data())))

    def test_glance_refusing_mid_upload(self):
        def refuse(context, image_id, metadata, data=None, **kwargs):
            data.read(MiB)
            raise IOError('glance: 413 over quota')
        with mock.patch.object(self.images, 'update', refuse):
            self.assert_fails_cleanly(IOError, 'over quota')

    def saved(self, tmp, data, name):
        path = os.path.join(tmp, name)
        with open(path, 'wb') as f:
            f.write(data)
        return path

    def qemu_raw(self, tmp, path, fmt):
        out = os.path.join(tmp, 'qemu.raw')
        subprocess.run(['qemu-img', 'convert', '-q', '-f', fmt, '-O', 'raw',
                        path, out], check=True)
        return out

    def test_xenserver_image(self):
        data = self.upload('vhd', 'ovf')
        with tempfile.TemporaryDirectory() as tmp:
            tgz = self.saved(tmp, data, 'up.tgz')
            with tarfile.open(tgz, 'r:gz') as tf:
                self.assertEqual(['0.vhd'], [m.name for m in tf])
            raw = os.path.join(tmp, 'disk.raw')
            result = vhd.convert(tgz, raw)
            self.assertEqual(1, len(result.layers))
            self.assert_raw(raw, disk_data(), GiB)

    def test_xenserver_image_of_a_chain(self):
        # A volume with snapshots is a chain; the image holds its disk.
        snap = self.snapshot(self.vol)
        self.write(self.vol, pattern(MiB, 62))
        want = pattern(MiB, 62)
        with tempfile.TemporaryDirectory() as tmp:
            tgz = self.saved(tmp, self.upload('vhd', 'ovf'), 'up.tgz')
            raw = os.path.join(tmp, 'disk.raw')
            vhd.convert(tgz, raw)
            self.assert_raw(raw, want, GiB)
        self.assertTrue(self.exists(self.vdi_uuid(snap)))

    def test_bare_vhd_read_by_qemu(self):
        data = self.upload('vhd')
        with tempfile.TemporaryDirectory() as tmp:
            path = self.saved(tmp, data, 'up.vhd')
            info = json.loads(subprocess.run(
                ['qemu-img', 'info', '--output=json', '-f', 'vpc', path],
                check=True, capture_output=True).stdout)
            self.assertEqual(GiB, info['virtual-size'])
            # Sparse: only the data blocks travelled.
            self.assertLess(len(data), 16 * MiB)
            self.assert_raw(self.qemu_raw(tmp, path, 'vpc'), disk_data(),
                            GiB)

    def test_qcow2_read_by_qemu(self):
        data = self.upload('qcow2')
        with tempfile.TemporaryDirectory() as tmp:
            path = self.saved(tmp, data, 'up.qcow2')
            info = json.loads(subprocess.run(
                ['qemu-img', 'info', '--output=json', path],
                check=True, capture_output=True).stdout)
            self.assertEqual('qcow2', info['format'])
            self.assertEqual(GiB, info['virtual-size'])
            self.assert_raw(self.qemu_raw(tmp, path, 'qcow2'), disk_data(),
                            GiB)

    def test_snapshot_destroyed_on_failure(self):
        before = self.visible_vdis()
        state = self.control.state()
        self.control.add_fault('http:export_raw_vdi',
                               error=['VDI_IO_ERROR', 'boom'])
        meta = {'id': str(uuid.uuid4()), 'disk_format': 'vhd',
                'container_format': 'ovf'}
        self.images.create(self.context, dict(meta))
        self.assertRaises(exception.XenAPINFSException,
                          self.driver.copy_volume_to_image, self.context,
                          self.vol, self.images, meta)
        # An image service refusal, after the export.
        missing = {'id': str(uuid.uuid4()), 'disk_format': 'vhd',
                   'container_format': 'bare'}
        self.assertRaises(cinder_exception.ImageNotFound,
                          self.driver.copy_volume_to_image, self.context,
                          self.vol, self.images, missing)
        self.assertEqual(sorted(before), sorted(self.visible_vdis()))
        self.assertEqual(state['task'], self.control.state()['task'])
        self.assertEqual(disk_data(), self.read(self.vol, len(disk_data())))
        self.assertEqual([], os.listdir(test_download.CONF.
                                        image_conversion_dir))

    def test_failed_snapshot_uploads_nothing(self):
        self.control.add_fault('VDI.snapshot', error=['INTERNAL_ERROR', 'x'])
        meta = {'id': str(uuid.uuid4()), 'disk_format': 'vhd',
                'container_format': 'ovf'}
        self.images.create(self.context, dict(meta))
        with self.nothing_leaked():
            self.assertRaises(exception.XenAPIError,
                              self.driver.copy_volume_to_image, self.context,
                              self.vol, self.images, meta)
        self.assertNotIn(meta['id'], self.images._imagedata)


_glance = test_download._glance


@pytest.mark.usefixtures('_glance')
class PluginUploadTestCase(test_download.GlanceCaller,
                           test_driver.DriverTestBase):
    """dom0's upload_vhd2 into glance-api, as the caller."""

    driver_overrides = {'xenapi_image_transfer': 'plugin',
                        'xenapi_plugin_retries': 0}
    project = PROJECT

    def test_volume_to_xenserver_image_and_back(self):
        vol = self.new_volume(data=disk_data())
        self.snapshot(vol)      # a chain of two, as volumes often are
        self.write(vol, pattern(MiB, 63))
        want = pattern(MiB, 63)
        created = self.glance.create_image(self.headers, name='up',
                                           container_format='ovf',
                                           disk_format='vhd')
        meta = self.images.show(self.context, created['id'])
        meta['properties'] = {'os_type': 'linux'}
        before = self.visible_vdis()
        self.driver.copy_volume_to_image(self.context, vol, self.images,
                                         meta)
        self.assertEqual(sorted(before), sorted(self.visible_vdis()))
        shown = self.glance.show(created['id'], self.headers)
        self.assertEqual(('active', 'ovf', 'vhd', 'linux'),
                         (shown['status'], shown['container_format'],
                          shown['disk_format'], shown['os-type']))
        status, _h, body = self.glance.request(
            'GET', '/v2/images/%s/file' % created['id'],
            headers=self.headers)
        self.assertEqual(200, status)
        with tempfile.TemporaryDirectory() as tmp:
            tgz = os.path.join(tmp, 'up.tgz')
            with open(tgz, 'wb') as f:
                f.write(body)
            raw = os.path.join(tmp, 'disk.raw')
            result = vhd.convert(tgz, raw)
            # The whole chain, leaf first, as XenServer uploads it: the
            # upload snapshot, the volume's layer, the snapshot's base.
            self.assertEqual(3, len(result.layers))
            self.assert_raw(raw, want, GiB)
        # And back, through dom0 again, into a new volume.
        new = self.volume()
        model, cloned = self.driver.clone_image(
            self.context, new, None,
            self.images.show(self.context, created['id']), self.images)
        self.assertTrue(cloned)
        new.provider_location = model['provider_location']
        self.assert_disk(new, want)
        self.assertEqual(3, len(storage.vdi_chain(self.session,
                                                  self.ref(new))))

    def test_chain_coalesced_while_dom0_reads_it(self):
        # A snapshot made and deleted leaves a hidden parent with one
        # child: the host's GC coalesces it while dom0 is being called.
        vol = self.new_volume(data=disk_data())
        self.driver.delete_snapshot(self.snapshot(vol))
        self.write(vol, pattern(MiB, 64))
        created = self.glance.create_image(self.headers, name='gc',
                                           container_format='ovf',
                                           disk_format='vhd')
        meta = self.images.show(self.context, created['id'])
        plugin = self.driver.uploader.glance_plugin
        real, chains = plugin.upload_vhd, []

        def upload_during_gc(*args, **kwargs):
            chains.append(list(args[3]))
            if len(chains) == 1:
                self.assertTrue(self.control.gc_run())
            return real(*args, **kwargs)
        self.mock_object(plugin, 'upload_vhd', upload_during_gc)
        self.driver.copy_volume_to_image(self.context, vol, self.images,
                                         meta)
        self.assertEqual(2, len(chains))
        self.assertLess(len(chains[1]), len(chains[0]))
        self.assertEqual('active',
                         self.glance.show(created['id'],
                                          self.headers)['status'])

    def test_snapshot_destroyed_when_glance_refuses(self):
        vol = self.new_volume(data=disk_data())
        created = self.glance.create_image(self.headers, name='taken',
                                           container_format='ovf',
                                           disk_format='vhd')
        self.assertEqual(204, self.glance.upload(created['id'], b'x' * 512,
                                                 self.headers))
        meta = self.images.show(self.context, created['id'])
        with self.nothing_leaked():
            with self.assertRaises(exception.XenAPIError) as err:
                self.driver.copy_volume_to_image(self.context, vol,
                                                 self.images, meta)
        self.assertIn('status is active', str(err.exception))


class OsXenapiPluginUploadTestCase(PluginUploadTestCase):
    """The same, with os-xenapi's own glance.py answering in dom0."""

    server_kwargs = {'dom0_plugins': 'os-xenapi'}
