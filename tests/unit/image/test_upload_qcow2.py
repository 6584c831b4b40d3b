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
"""A qcow2 image uploaded by the stream path: the one raw file packed
into glance's upload as it is written, with no second file, uncompressed
or compressed (cinder's image_compress_on_upload); judged by qemu-img
against the volume's disk; and the faults, each of which leaves no image,
no snapshot, no task and no file behind."""

import json
import os
import subprocess
import tempfile
from unittest import mock

from cinder import exception as cinder_exception
from cinder.image import image_utils
import pytest

from tests import stack_fixture
from tests.unit.image import test_download
from tests.unit.image import test_upload
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import qcow2c
from xenapinfs_driver.vhd import qcow2out

MiB = test_upload.MiB
GiB = test_upload.GiB
CONF = test_download.CONF
disk_data = test_upload.disk_data


class Qcow2Mixin:

    # cinder's image_compress_on_upload: compressed clusters or not.
    compress = False

    def setUp(self):
        super().setUp()
        self.override_config('image_compress_on_upload', self.compress)

    def assert_qcow2_of(self, data, vol):
        """data is a clean qcow2 image of the volume's whole disk; its
        compressed extents (no offset in the file), in bytes."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self.saved(tmp, data, 'up.qcow2')
            subprocess.run(['qemu-img', 'check', '-q', '-f', 'qcow2', path],
                           check=True)
            extents = json.loads(subprocess.run(
                ['qemu-img', 'map', '--output=json', '-f', 'qcow2', path],
                check=True, capture_output=True).stdout)
            info = json.loads(subprocess.run(
                ['qemu-img', 'info', '--output=json', '-f', 'qcow2', path],
                check=True, capture_output=True).stdout)
            self.assertEqual(GiB, info['virtual-size'])
            with self.exported(vol) as raw:
                out = subprocess.run(['qemu-img', 'compare', '-f', 'raw',
                                      '-F', 'qcow2', raw, path],
                                     capture_output=True, text=True)
            self.assertEqual(0, out.returncode, out.stdout + out.stderr)
        packed = sum(e['length'] for e in extents
                     if e['data'] and 'offset' not in e)
        if not self.compress:
            self.assertEqual(0, packed)
        return packed


class StreamQcow2TestCase(Qcow2Mixin, test_upload.StreamUploadTestCase):

    # Its helpers, not its tests: those run in their own module.
    locals().update({name: None for name in dir(
        test_upload.StreamUploadTestCase) if name.startswith('test_')})

    def new_image(self, container_format='bare'):
        return self.queued_image('qcow2', container_format)

    # The base's own, for a qcow2 image.
    test_glance_refusing_mid_upload = \
        test_upload.StreamUploadTestCase.test_glance_refusing_mid_upload

    def test_packed_with_no_second_file(self):
        scratch = []
        real = self.images.update

        def update(context, image_id, metadata, data=None, **kwargs):
            # What image_conversion_dir holds while glance reads.
            scratch.append(os.listdir(CONF.image_conversion_dir))
            return real(context, image_id, metadata, data, **kwargs)
        with mock.patch.object(self.images, 'update', update), \
                mock.patch.object(image_utils, 'upload_volume',
                                  side_effect=AssertionError('converted')):
            data = self.upload('qcow2')
        self.assertEqual(1, len(scratch))
        self.assertEqual(1, len(scratch[0]), scratch)
        self.assertTrue(scratch[0][0].startswith(
            self.driver.uploader.tmp_prefix + 'raw_'), scratch)
        self.assertEqual([], os.listdir(CONF.image_conversion_dir))
        # Only the clusters with data travelled: the disk holds 4.5 MiB.
        self.assertLess(len(data), 5 * MiB)
        self.assert_qcow2_of(data, self.vol)

    def test_a_volume_written_after_a_snapshot(self):
        self.snapshot(self.vol)
        self.write(self.vol, test_upload.pattern(MiB, 70))
        self.assert_qcow2_of(self.upload('qcow2', 'ovf'), self.vol)

    def test_the_packer_follows_the_option(self):
        # Only the packer of the option's kind runs.
        unwanted = (qcow2out, 'Qcow2Out') if self.compress else \
            (qcow2c, 'Qcow2C')
        with mock.patch.object(*unwanted,
                               side_effect=AssertionError('packed')):
            self.assert_qcow2_of(self.upload('qcow2'), self.vol)

    def test_a_compressed_container_is_cinders(self):
        meta = self.new_image('compressed')
        with mock.patch.object(image_utils, 'upload_volume') as upload, \
                mock.patch.object(qcow2out, 'Qcow2Out',
                                  side_effect=AssertionError('packed')):
            self.driver.copy_volume_to_image(self.context, self.vol,
                                             self.images, meta)
        self.assertEqual(1, upload.call_count)

    def test_conversion_disabled_is_refused_before_the_export(self):
        self.override_config('image_conversion_disable', True)
        meta = self.new_image()
        self.control.clear_calls()
        with self.nothing_leaked():
            with self.assertRaises(
                    cinder_exception.ImageConversionNotAllowed) as err:
                self.driver.copy_volume_to_image(self.context, self.vol,
                                                 self.images, meta)
        self.assertIn(meta['id'], str(err.exception))
        self.assertIn('qcow2', str(err.exception))
        self.assertNotIn('http:export_raw_vdi', self.control.calls())
        self.assertIsNone(self.images.data(meta['id']))

    # -- faults ---------------------------------------------------------------

    def test_an_export_ending_early(self):
        self.control.add_fault('http:export_raw_vdi', 'drop_after')
        self.assert_fails_cleanly()

    def test_the_disk_failing_mid_image(self):
        # The writer's own failure is raised into the upload, so glance
        # never sees the image end, and is the error reported.
        real = qcow2out.Qcow2Out._run

        def fail(image, start, count):
            if start * qcow2out.CLUSTER >= 3 * MiB:
                raise errors.Truncated('ends early', source=image.disk.name)
            return real(image, start, count)
        with mock.patch.object(qcow2out.Qcow2Out, '_run', fail):
            self.assert_fails_cleanly(errors.Truncated, 'disk of image',
                                      'ends early')

    def test_a_disk_over_the_limit_names_the_image(self):
        meta = self.new_image()
        with mock.patch.object(qcow2out, 'MAX_SIZE', MiB), \
                self.nothing_leaked():
            with self.assertRaises(errors.LimitExceeded) as err:
                self.driver.copy_volume_to_image(self.context, self.vol,
                                                 self.images, meta)
        self.assertIn('image %s' % meta['id'], str(err.exception))
        self.assertIn('virtual size', str(err.exception))
        self.assertIsNone(self.images.data(meta['id']))


class StreamQcow2cTestCase(StreamQcow2TestCase):
    """The same, with image_compress_on_upload on (cinder's default): the
    driver's compressed packer, two passes over the one raw file."""

    compress = True

    def test_compressible_data_is_compressed(self):
        text = b''.join(b'line %d of a text file on the volume\n' % i
                        for i in range(200000))[:6 * MiB]
        self.write(self.vol, text)
        data = self.upload('qcow2')
        self.assertLess(len(data), MiB)
        self.assertEqual(6 * MiB, self.assert_qcow2_of(data, self.vol))

    def test_the_disk_failing_mid_image(self):
        # The second pass fails at its first compressed cluster, after
        # the plain ones went to glance: the writer's own failure is the
        # upload's.
        real = qcow2c.Qcow2C._squeezed
        passes = []

        def fail(image, indices):
            passes.append(indices)
            for n, got in enumerate(real(image, indices)):
                if len(passes) == 2 and n == 0:
                    raise errors.Truncated('ends early',
                                           source=image.disk.name)
                yield got
        with mock.patch.object(qcow2c.Qcow2C, '_squeezed', fail):
            self.assert_fails_cleanly(errors.Truncated, 'disk of image',
                                      'ends early')
        self.assertEqual(2, len(passes))

    def test_a_disk_changed_between_the_passes(self):
        real = qcow2c.Qcow2C._lay_out

        def lay_out(image):
            real(image)
            # As if the disk changed after the first pass.
            last = max(i for i, n in enumerate(image.lengths) if n)
            image.lengths[last] -= 1
        with mock.patch.object(qcow2c.Qcow2C, '_lay_out', lay_out):
            self.assert_fails_cleanly(errors.VhdError, 'disk of image',
                                      'changed while being read')


glance_service = stack_fixture.glance_service
_glance = test_download._glance


@pytest.mark.usefixtures('_glance')
class GlanceQcow2TestCase(Qcow2Mixin, test_download.GlanceCaller,
                          test_upload.StreamUploadTestCase):
    """Into glance-api, whose format inspector reads the upload too."""

    locals().update({name: None for name in dir(
        test_upload.StreamUploadTestCase) if name.startswith('test_')})
    project = test_upload.PROJECT

    def test_glance_takes_it_and_qemu_reads_the_volume(self):
        created = self.glance.create_image(self.headers, name='up',
                                           container_format='bare',
                                           disk_format='qcow2')
        meta = self.images.show(self.context, created['id'])
        with self.nothing_leaked():
            self.driver.copy_volume_to_image(self.context, self.vol,
                                             self.images, meta)
        shown = self.glance.show(created['id'], self.headers)
        self.assertEqual(('active', 'qcow2', GiB),
                         (shown['status'], shown['disk_format'],
                          shown['virtual_size']))
        status, _h, body = self.glance.request(
            'GET', '/v2/images/%s/file' % created['id'],
            headers=self.headers)
        self.assertEqual(200, status)
        self.assertEqual(shown['size'], len(body))
        self.assert_qcow2_of(body, self.vol)


class GlanceQcow2cTestCase(GlanceQcow2TestCase):
    """Compressed clusters into glance-api, whose inspector reads them."""

    compress = True
