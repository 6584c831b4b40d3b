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
"""A volume service killed in the middle of a create from an image.

``clone_image`` never returns, so cinder never learns the volume's
``provider_location``; on restart it sets the volume to error, and the
user deletes it. The delete must find the VDI all the same. The kill is
played here by a ``BaseException`` raised in the copy: like SIGKILL, it
runs none of the driver's cleanup for errors (``except Exception``).
tests/e2e/test_reliability_e2e.py does it with a real SIGKILL.
"""

import io
import os
from unittest import mock
import uuid

from oslo_config import cfg
import pytest

from tests import stack_fixture
from tests.unit.image import test_download
from tests.unit import test_driver
from xenapinfs_driver import driver
from xenapinfs_driver.image import staging
from xenapinfs_driver.xenapi import plugin as xplugin

MiB = test_driver.MiB
glance_service = stack_fixture.glance_service


class Killed(BaseException):
    """The process dies here."""


def marked(testcase, volume_id):
    """uuids of the SR's VDIs marked as volume_id's."""
    return sorted(rec['uuid'] for rec in testcase.session.call(
        'VDI.get_all_records_where',
        'field "SR"="%s"' % testcase.driver.backend.sr).values()
        if rec['other_config'].get(driver.VOLUME_KEY) == volume_id)


class StreamCrashTestCase(test_driver.DriverTestBase):
    """The stream path makes the VDI, marked, then writes into it."""

    def setUp(self):
        super().setUp()
        self.images = test_download.image_service()
        data, self.disk = test_download.bare_vhd(
            4 * MiB, {0: test_driver.pattern(2 * MiB, 3)})
        self.image = self.images.create(self.context, {
            'id': str(uuid.uuid4()), 'name': 'bare', 'status': 'active',
            'visibility': 'private', 'protected': False,
            'container_format': 'bare', 'disk_format': 'vhd',
            'size': len(data), 'properties': {}}, data=io.BytesIO(data))
        test_download.run_privsep_in_process(self)

    def test_delete_finds_the_vdi_of_a_killed_copy(self):
        vol = self.volume()
        with self.nothing_leaked():
            with mock.patch.object(self.driver.downloader, '_import',
                                   side_effect=Killed):
                with self.assertRaises(Killed):
                    self.driver.clone_image(self.context, vol, None,
                                            self.image, self.images)
            self.assertIsNone(vol.provider_location)
            self.assertEqual(1, len(marked(self, vol.id)))
            vol.status = 'deleting'
            self.driver.delete_volume(vol)
            self.assertEqual([], marked(self, vol.id))

    def test_a_failed_manage_keeps_the_users_vdi(self):
        # manage_existing marks the VDI last; if cinder then fails, the
        # volume is error_managing and its delete must not take the VDI.
        vol = self.volume(status='error_managing_deleting')
        theirs = self.new_volume()
        self.session.call('VDI.remove_from_other_config', self.ref(theirs),
                          driver.VOLUME_KEY)
        self.session.call('VDI.add_to_other_config', self.ref(theirs),
                          driver.VOLUME_KEY, vol.id)
        self.driver.delete_volume(vol)
        self.assertTrue(self.exists(self.vdi_uuid(theirs)))

    def test_a_volume_with_no_vdi_deletes(self):
        with self.nothing_leaked():
            self.driver.delete_volume(self.volume(status='deleting'))

    def test_staged_files_of_a_killed_run_go_at_setup(self):
        conv = self.flags_dir()
        mine = staging.prefix('host-1@xs')
        other = staging.prefix('host-2@xs')
        self.assertNotEqual(mine, other)
        for name in (mine + 'raw_a', mine + 'vhd_b.vhd', other + 'raw_c',
                     'image_download_x', 'xenapinfs_raw_d'):
            open(os.path.join(conv, name), 'w').close()
        drv = self.make_driver()
        drv.host = 'host-1@xs'
        drv.do_setup(self.context)
        self.assertEqual(mine, drv.downloader.tmp_prefix)
        self.assertEqual(mine, drv.uploader.tmp_prefix)
        self.assertEqual(sorted([other + 'raw_c', 'image_download_x',
                                 'xenapinfs_raw_d']),
                         sorted(os.listdir(conv)))

    def test_staged_files_carry_the_services_prefix(self):
        drv = self.make_driver()
        drv.host = 'host-3@xs'
        drv.do_setup(self.context)
        seen = []
        real = drv.downloader._import

        def look(ref, staged):
            seen.extend(os.listdir(os.path.dirname(staged.path)))
            return real(ref, staged)
        # A raw image is staged (a one-layer VHD would go straight through).
        raw = self.images.create(self.context, {
            'id': str(uuid.uuid4()), 'name': 'raw', 'status': 'active',
            'visibility': 'private', 'protected': False,
            'container_format': 'bare', 'disk_format': 'raw',
            'size': len(self.disk), 'properties': {}},
            data=io.BytesIO(self.disk))
        vol = self.volume()
        with mock.patch.object(drv.downloader, '_import', look):
            drv.clone_image(self.context, vol, None, raw, self.images)
        prefix = staging.prefix('host-3@xs')
        self.assertNotEqual([], seen)
        self.assertTrue(all(n.startswith(prefix) for n in seen), seen)
        self.assertEqual([], os.listdir(self.flags_dir()))

    @staticmethod
    def flags_dir():
        return cfg.CONF.image_conversion_dir


@pytest.fixture(scope='class')
def _glance(request, glance_service):  # noqa: F811
    request.cls.glance = glance_service


@pytest.mark.usefixtures('_glance')
class PluginCrashTestCase(test_download.GlanceCaller,
                          test_driver.DriverTestBase):
    """dom0 writes the image's files; the VDI exists after a scan only."""

    driver_overrides = {'xenapi_image_transfer': 'plugin',
                        'xenapi_plugin_retries': 0}

    def setUp(self):
        super().setUp()
        self.image, self.disk, self.layers = self.add_xenserver_image(5)

    def test_the_volume_vdi_uuid_comes_from_its_id(self):
        vol = self.volume()
        model, _ = self.driver.clone_image(self.context, vol, None,
                                           self.image, self.images)
        self.assertEqual('%s/%s' % (self.driver.backend.sr_uuid,
                                    driver.image_vdi_uuid(vol.id)),
                         model['provider_location'])

    def test_delete_finds_what_dom0_wrote_for_a_killed_caller(self):
        vol = self.volume()
        real = xplugin.GlancePlugin.download_vhd

        def download_then_die(plugin, *args, **kwargs):
            real(plugin, *args, **kwargs)
            raise Killed()
        with self.nothing_leaked():
            with mock.patch.object(xplugin.GlancePlugin, 'download_vhd',
                                   download_then_die):
                with self.assertRaises(Killed):
                    self.driver.clone_image(self.context, vol, None,
                                            self.image, self.images)
            # The image's layers are in the SR, unknown to XAPI.
            self.assertEqual(self.layers, len(os.listdir(self.sr_dir())))
            vol.status = 'deleting'
            self.driver.delete_volume(vol)
        self.assertEqual([], os.listdir(self.sr_dir()))
