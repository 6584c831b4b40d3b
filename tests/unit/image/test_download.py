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
"""Images into volumes: clone_image and copy_image_to_volume.

The stream path runs with cinder's in-memory FakeImageService; the dom0
plugin path with the test server's dom0 glance plugin fetching from a real
glance-api, and cinder's real GlanceImageService reading its metadata.
"""

import gzip
import io
import os
import subprocess
import tempfile
import uuid

from cinder import context
from cinder.db import api as db_api
from cinder import exception as cinder_exception
from cinder.image import glance
import cinder.privsep as cinder_privsep
from oslo_config import cfg
from oslo_utils import units
import pytest

from tests import fake_images
from tests import stack_fixture
from tests.unit import test_driver
from tests.unit.image import faults
from tests import vhd_encoder
from tests import vhd_factory
from xenapinfs_driver import driver
from xenapinfs_driver import exception
from xenapinfs_driver.image import stream_in
from xenapinfs_driver.testing.stack import glance as glancemod
from xenapinfs_driver.xenapi import storage

CONF = cfg.CONF
MiB = units.Mi
GiB = units.Gi
pattern = test_driver.pattern
glance_service = stack_fixture.glance_service
PROJECT = 'project-dl'


def image_service():
    """cinder's in-memory image service, one per test."""
    return fake_images.ImageService()


def xenserver_tgz(seed=1, **kw):
    """(tgz bytes, expected disk, layers) of a 3-layer XenServer image."""
    files, disk, _specs = vhd_factory.standard_chain(seed=seed, **kw)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'image.tgz')
        vhd_factory.xenserver_tgz(path, files)
        with open(path, 'rb') as f:
            return f.read(), disk, len(files)


def big_tgz(size):
    """A 2-layer XenServer image whose disk is ``size`` bytes, mostly holes."""
    specs = [vhd_factory.LayerSpec(size, {0: ({0, 1, 2},
                                              pattern(2 * MiB, 1))}),
             vhd_factory.LayerSpec(2 * MiB, {0: (None,
                                                 pattern(2 * MiB, 2))})]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'image.tgz')
        vhd_factory.xenserver_tgz(path, vhd_factory.build_chain(specs))
        with open(path, 'rb') as f:
            return f.read()


def bare_vhd(size, blocks):
    """One dynamic VHD: (bytes, disk). ``blocks``: index -> data."""
    spec = vhd_factory.LayerSpec(size, {i: (None, data)
                                        for i, data in blocks.items()})
    return (vhd_factory.build_chain([spec])[0],
            vhd_factory.expected_disk([spec]))


def qemu_image(raw, fmt, size=None):
    """``raw`` (or an empty disk of ``size``) in qemu-img format ``fmt``."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, 'disk.raw'), os.path.join(tmp, 'disk')
        if raw is None:
            subprocess.run(['qemu-img', 'create', '-q', '-f', fmt, dst,
                            str(size)], check=True)
        else:
            with open(src, 'wb') as f:
                f.write(raw)
            subprocess.run(['qemu-img', 'convert', '-q', '-f', 'raw', '-O',
                            fmt, src, dst], check=True)
        with open(dst, 'rb') as f:
            return f.read()


def qemu_read(image, fmt):
    """The disk qemu-img reads in ``image`` of format ``fmt``."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, 'image'), os.path.join(tmp, 'disk.raw')
        with open(src, 'wb') as f:
            f.write(image)
        subprocess.run(['qemu-img', 'convert', '-q', '-f', fmt, '-O', 'raw',
                        src, dst], check=True)
        with open(dst, 'rb') as f:
            return f.read()


def run_privsep_in_process(testcase):
    """cinder's qemu_img_info asks privsep's format inspector first.

    NOTE: cinder's TestCase refuses to start a privsep daemon (it would
    need root helpers); the inspector only reads the file, so it runs in
    this process instead, as it does in cinder's own unit tests' mocks.
    """
    testcase.mock_object(cinder_privsep.sys_admin_pctxt, 'client_mode',
                         False)


class StreamImages:
    """Images in cinder's in-memory image service, cloned into volumes."""

    def setUp(self):
        super().setUp()
        self.images = image_service()
        run_privsep_in_process(self)

    def add_image(self, data, disk_format, container_format='bare'):
        image_id = str(uuid.uuid4())
        self.images.create(self.context, {
            'id': image_id, 'name': 'img-%s' % disk_format,
            'status': 'active', 'visibility': 'private', 'protected': False,
            'disk_format': disk_format, 'container_format': container_format,
            'size': len(data), 'properties': {}}, data=io.BytesIO(data))
        return self.images.show(self.context, image_id)

    def clone_image(self, image_meta, size=1):
        vol = self.volume(size=size)
        model, cloned = self.driver.clone_image(self.context, vol, None,
                                                image_meta, self.images)
        self.assertTrue(cloned)
        vol.provider_location = model['provider_location']
        return vol


class StreamDownloadTestCase(StreamImages, test_driver.DriverTestBase):

    def test_xenserver_chain(self):
        data, disk, layers = xenserver_tgz()
        vol = self.clone_image(self.add_image(data, 'vhd', 'ovf'))
        self.assert_disk(vol, disk)
        rec = self.record(vol)
        self.assertEqual(vol.name, rec['name_label'])
        self.assertEqual(vol.id, rec['other_config'][driver.VOLUME_KEY])
        # The stream path writes one composed disk: no chain to inherit.
        self.assertEqual([self.vdi_uuid(vol)],
                         storage.vdi_chain(self.session, self.ref(vol)))
        # The staging files went.
        self.assertEqual([], os.listdir(CONF.image_conversion_dir))

    def test_bare_vhd(self):
        data, disk = bare_vhd(6 * MiB, {0: pattern(2 * MiB, 50),
                                        2: pattern(2 * MiB, 51)})
        vol = self.clone_image(self.add_image(data, 'vhd'))
        self.assert_disk(vol, disk)

    def test_bare_fixed_vhd(self):
        # glance takes one only with require_image_format_match off; its
        # footer comes last, so it is checked once the data has come,
        # and only its data is staged. qemu-img says what disk it holds.
        disk = pattern(2 * MiB, 52) + bytes(8 * MiB) + pattern(MiB, 53)
        data = vhd_encoder.encode_fixed(disk)
        self.assertEqual(disk, qemu_read(data, 'vpc'))
        sizes = self.staged_sizes()
        vol = self.clone_image(self.add_image(data, 'vhd'))
        self.assert_disk(vol, disk)
        self.assertLessEqual(sizes[0][1], 3 * MiB + 128 * 1024)
        self.assertEqual([], os.listdir(CONF.image_conversion_dir))

    def test_bare_fixed_vhd_refused(self):
        disk = pattern(2 * MiB, 57)
        bad_sum = bytearray(vhd_encoder.encode_fixed(disk))
        bad_sum[-512 + 64] ^= 0xFF          # the footer's checksum
        too_big = vhd_encoder.encode_fixed(bytes(GiB + MiB))
        sizes = self.staged_sizes()
        for data, words in ((bytes(bad_sum), ('footer', 'checksum')),
                            (disk, ('conectix',)),
                            (too_big, ('the size of the volume',))):
            image = self.add_image(data, 'vhd')
            with self.nothing_leaked():
                with self.assertRaises(
                        cinder_exception.ImageUnacceptable) as err:
                    self.clone_image(image)
            text = str(err.exception)
            self.assertIn(image['id'], text)
            for word in words:
                self.assertIn(word, text)
            self.assertEqual([], os.listdir(CONF.image_conversion_dir))
        self.assertEqual([], sizes)     # nothing reached the host

    def test_copy_image_to_volume_keeps_the_vdi(self):
        # What cinder's generic path (image cache on, ovf/vhd) calls.
        data, disk, _layers = xenserver_tgz(seed=2)
        image = self.add_image(data, 'vhd', 'ovf')
        vol = self.new_volume()
        location = vol.provider_location
        self.driver.copy_image_to_volume(self.context, vol, self.images,
                                         image['id'])
        self.assertEqual(location, vol.provider_location)
        self.assert_disk(vol, disk)

    def test_qcow2_and_raw_through_cinder(self):
        raw = pattern(3 * MiB, 52) + bytes(MiB) + pattern(MiB, 53)
        for fmt in ('qcow2', 'raw'):
            data = qemu_image(raw, fmt) if fmt != 'raw' else raw
            image = self.add_image(data, fmt)
            vol = self.volume()
            # qcow2 is not ours: cinder's generic path creates, then
            # copies; a raw image is ours, but copies the same way.
            if fmt == 'qcow2':
                self.assertEqual((None, False), self.driver.clone_image(
                    self.context, vol, None, image, self.images))
            vol.provider_location = self.driver.create_volume(vol)[
                'provider_location']
            self.driver.copy_image_to_volume(self.context, vol, self.images,
                                             image['id'])
            self.assert_disk(vol, raw)

    def test_image_larger_than_the_volume(self):
        big_vhd, _ = bare_vhd(GiB + 2 * MiB, {0: pattern(2 * MiB, 54)})
        big = big_tgz(GiB + 2 * MiB)
        big_qcow2 = qemu_image(None, 'qcow2', 2 * GiB)
        for data, disk_format, container in (
                (big_vhd, 'vhd', 'bare'), (big, 'vhd', 'ovf'),
                (big_qcow2, 'qcow2', 'bare')):
            image = self.add_image(data, disk_format, container)
            if container == 'ovf' or disk_format == 'vhd':
                # clone_image creates nothing for it.
                with self.nothing_leaked():
                    with self.assertRaises(
                            cinder_exception.ImageUnacceptable) as err:
                        self.clone_image(image)
                self.assertIn(image['id'], str(err.exception))
                self.assertIn('the size of the volume' if
                              disk_format == 'vhd' else "doesn't fit",
                              str(err.exception))
            # An existing volume is left as it was.
            before = pattern(MiB, 55)
            vol = self.new_volume(data=before)
            with self.assertRaises(cinder_exception.ImageUnacceptable):
                self.driver.copy_image_to_volume(self.context, vol,
                                                 self.images, image['id'])
            self.assertEqual(before, self.read(vol, MiB))
            self.assertEqual(str(GiB), self.record(vol)['virtual_size'])

    def test_corrupt_images_are_named(self):
        data, _disk, _layers = xenserver_tgz(seed=4)
        files, _disk, _specs = vhd_factory.standard_chain(seed=5)
        with tempfile.TemporaryDirectory() as tmp:
            gap = os.path.join(tmp, 'gap.tgz')
            vhd_factory.make_tar(gap, [('0.vhd', files[0]),
                                       ('2.vhd', files[2])])
            with open(gap, 'rb') as f:
                gapped = f.read()
        for bad, words in ((data[:len(data) // 2], ('gzip', 'end')),
                           (b'\x1f\x8b' + bytes(600), ('gzip',)),
                           (gapped, ('1.vhd',))):
            image = self.add_image(bad, 'vhd', 'ovf')
            with self.nothing_leaked():
                with self.assertRaises(
                        cinder_exception.ImageUnacceptable) as err:
                    self.clone_image(image)
            text = str(err.exception).lower()
            for word in words:
                self.assertIn(word, text)
            self.assertNotIn('xenapinfs_img_', text)   # no temp file name

    def test_failed_import_leaves_nothing(self):
        data, disk = bare_vhd(4 * MiB, {1: pattern(2 * MiB, 56)})
        image = self.add_image(data, 'vhd')
        self.control.add_fault('http:import_raw_vdi', 'disk_full')
        with self.nothing_leaked():
            self.assertRaises(exception.XenAPINFSException,
                              self.clone_image, image)

    def staged_sizes(self):
        """Record (apparent, allocated) bytes of each staged raw file as
        it is imported."""
        sizes = []
        real = stream_in.import_raw

        def spy(session, ref, raw):
            st = os.stat(raw)
            sizes.append((st.st_size, st.st_blocks * 512))
            return real(session, ref, raw)
        self.mock_object(stream_in, 'import_raw', spy)
        return sizes

    def test_raw_image_is_fetched_sparse(self):
        # 16 MiB with 2 MiB of data: the zeros are neither written to
        # scratch nor sent to the host.
        disk = bytes(5 * MiB) + pattern(MiB, 60) + bytes(9 * MiB) + \
            pattern(MiB, 61)
        sizes = self.staged_sizes()
        vol = self.clone_image(self.add_image(disk, 'raw'))
        self.assert_disk(vol, disk)
        self.assertEqual(1, len(sizes))
        self.assertEqual(len(disk), sizes[0][0])
        self.assertLessEqual(sizes[0][1], 2 * MiB + 128 * 1024)
        self.assertEqual([], os.listdir(CONF.image_conversion_dir))

    def test_xenserver_image_stages_only_its_data(self):
        data, disk, _layers = xenserver_tgz(seed=7)
        sizes = self.staged_sizes()
        vol = self.clone_image(self.add_image(data, 'vhd', 'ovf'))
        self.assert_disk(vol, disk)
        nonzero = sum(MiB for i in range(0, len(disk), MiB)
                      if disk[i:i + MiB].strip(b'\0'))
        self.assertLessEqual(sizes[0][1], nonzero + MiB)

    def test_raw_image_holding_another_format_is_refused(self):
        image = self.add_image(qemu_image(pattern(MiB, 62), 'qcow2'), 'raw')
        with self.nothing_leaked():
            with self.assertRaises(
                    cinder_exception.ImageUnacceptable) as err:
                self.clone_image(image)
        self.assertIn("claimed to be 'raw'", str(err.exception))
        self.assertIn('qcow2', str(err.exception))
        self.assertEqual([], os.listdir(CONF.image_conversion_dir))

    def test_glance_that_stops_sending(self):
        data, _disk, _layers = xenserver_tgz(seed=8)
        raw_disk = pattern(4 * MiB, 63)
        for blob, fmt, container in ((data, 'vhd', 'ovf'),
                                     (raw_disk, 'raw', 'bare')):
            image = self.add_image(blob, fmt, container)
            with faults.glance_stops(self.images):
                with self.nothing_leaked():
                    with self.assertRaises(
                            cinder_exception.ImageDownloadFailed) as err:
                        self.clone_image(image)
            self.assertIn('connection reset by glance', str(err.exception))
            self.assertEqual([], os.listdir(CONF.image_conversion_dir))

    def test_full_conversion_dir_is_named(self):
        data, _disk, _layers = xenserver_tgz(seed=9)
        for blob, fmt, container in ((data, 'vhd', 'ovf'),
                                     (pattern(MiB, 64), 'raw', 'bare')):
            image = self.add_image(blob, fmt, container)
            with faults.directory_full(CONF.image_conversion_dir):
                with self.nothing_leaked():
                    with self.assertRaises(
                            cinder_exception.ImageTooBig) as err:
                        self.clone_image(image)
            self.assertIn(CONF.image_conversion_dir, str(err.exception))
            self.assertIn('needs up to', str(err.exception))
            self.assertEqual([], os.listdir(CONF.image_conversion_dir))

    def test_clone_image_contract(self):
        xs = self.add_image(xenserver_tgz(seed=6)[0], 'vhd', 'ovf')
        bare = self.add_image(bare_vhd(2 * MiB, {0: pattern(2 * MiB, 58)})[0],
                              'vhd')
        other = self.add_image(qemu_image(pattern(MiB, 59), 'qcow2'),
                               'qcow2')
        raw = self.add_image(pattern(MiB, 59), 'raw')
        self.control.clear_calls()
        self.assertEqual((None, False), self.driver.clone_image(
            self.context, self.volume(), None, other, self.images))
        self.assertEqual([], self.control.calls())
        for image in (xs, bare, raw):
            model, cloned = self.driver.clone_image(
                self.context, self.volume(), None, image, self.images)
            self.assertTrue(cloned)
            self.assertTrue(model['provider_location'].startswith(
                self.driver.backend.sr_uuid + '/'))
        # With the image-volume cache, ovf/vhd and raw take cinder's generic
        # path (which caches them); a bare VHD is still ours: cinder cannot.
        cached = self.make_driver(image_volume_cache_enabled=True)
        cached.do_setup(self.context)
        for image in (xs, raw):
            self.assertEqual((None, False), cached.clone_image(
                self.context, self.volume(), None, image, self.images))
        self.assertTrue(cached.clone_image(
            self.context, self.volume(), None, bare, self.images)[1])


@pytest.fixture(scope='class')
def _glance(request, glance_service):  # noqa: F811
    request.cls.glance = glance_service


class GlanceCaller:
    """A real glance (the class's ``glance``) and cinder's glance image
    service, called with the identity of a member of ``project``."""

    project = PROJECT

    def setUp(self):
        super().setUp()
        self.override_config('glance_api_servers', [self.glance.url])
        self.context = context.RequestContext(
            user_id='user', project_id=self.project,
            roles=['member', 'reader'], auth_token='not-checked')
        self.headers = glancemod.identity_headers(self.project)
        real = glance.glanceclient.Client

        # NOTE: this glance trusts identity headers (no keystone), and
        # cinder with auth_strategy=noauth sends none: give its client the
        # headers keystone's middleware would have set for the caller.
        def client(version, endpoint, **params):
            return real(version, endpoint,
                        identity_headers=dict(self.headers), **params)
        self.mock_object(glance.glanceclient, 'Client', client)
        self.images = glance.GlanceImageService()

    def add_xenserver_image(self, seed):
        """A XenServer tgz in glance: ``(image meta, disk, layers)``."""
        data, disk, layers = xenserver_tgz(seed=seed)
        image = self.glance.create_image(self.headers, name='xs',
                                         container_format='ovf',
                                         disk_format='vhd')
        self.assertEqual(204, self.glance.upload(image['id'], data,
                                                 self.headers))
        return self.images.show(self.context, image['id']), disk, layers


@pytest.mark.usefixtures('_glance')
class PluginDownloadTestCase(GlanceCaller, test_driver.DriverTestBase):
    """dom0's download_vhd2 against glance-api, as the caller."""

    driver_overrides = {'xenapi_image_transfer': 'plugin',
                        'xenapi_plugin_retries': 0}

    def setUp(self):
        super().setUp()
        self.assertIsNotNone(self.driver.downloader.glance_plugin)

    def add_image(self, data, project_headers=None):
        headers = project_headers or self.headers
        image = self.glance.create_image(headers, name='xs',
                                         container_format='ovf',
                                         disk_format='vhd')
        self.assertEqual(204, self.glance.upload(image['id'], data, headers))
        return image['id']

    def test_chain_into_a_new_volume(self):
        data, disk, layers = xenserver_tgz(seed=8)
        image = self.images.show(self.context, self.add_image(data))
        self.assertEqual('ovf', image['container_format'])
        vol = self.volume()
        model, cloned = self.driver.clone_image(self.context, vol, None,
                                                image, self.images)
        self.assertTrue(cloned)
        vol.provider_location = model['provider_location']
        # The volume is the image's leaf, copy-on-write over its layers.
        chain = storage.vdi_chain(self.session, self.ref(vol))
        self.assertEqual(layers, len(chain))
        self.assertEqual(self.vdi_uuid(vol), chain[0])
        rec = self.record(vol)
        self.assertEqual(str(GiB), rec['virtual_size'])
        self.assertEqual(vol.name, rec['name_label'])
        self.assertEqual(vol.id, rec['other_config'][driver.VOLUME_KEY])
        self.assert_disk(vol, disk)
        # dom0's staging directory went; every file is a VDI.
        self.assertEqual(sorted('%s.vhd' % u for u in chain), self.files())
        # Deleting the volume takes the image's layers with it.
        self.driver.delete_volume(vol)
        self.assertEqual([], self.files())

    def test_into_an_existing_volume(self):
        data, disk, _layers = xenserver_tgz(seed=9)
        image_id = self.add_image(data)
        vol = self.new_volume()
        location = vol.provider_location
        self.driver.copy_image_to_volume(self.context, vol, self.images,
                                         image_id)
        self.assertEqual(location, vol.provider_location)
        self.assertEqual(disk, self.read(vol, len(disk)))
        # The downloaded chain was copied in, then removed.
        self.assertEqual(['%s.vhd' % self.vdi_uuid(vol)], self.files())

    def test_too_large_is_refused_and_removed(self):
        image = self.images.show(self.context,
                                 self.add_image(big_tgz(GiB + 2 * MiB)))
        with self.nothing_leaked():
            with self.assertRaises(cinder_exception.ImageUnacceptable):
                self.driver.clone_image(self.context, self.volume(), None,
                                        image, self.images)
        vol = self.new_volume(data=pattern(MiB, 57))
        self.control.clear_calls()
        with self.nothing_leaked():
            with self.assertRaises(cinder_exception.ImageUnacceptable):
                self.driver.copy_image_to_volume(self.context, vol,
                                                 self.images, image['id'])
        self.assertEqual(pattern(MiB, 57), self.read(vol, MiB))
        self.assertEqual(0, self.downloads())

    def test_the_callers_identity_reaches_glance(self):
        # An image of another project is not the caller's to read: glance
        # says so to the driver's own look at its head, before dom0.
        theirs = self.add_image(xenserver_tgz(seed=11)[0],
                                glancemod.identity_headers('someone-else'))
        self.control.clear_calls()
        with self.nothing_leaked():
            with self.assertRaises(cinder_exception.ImageNotFound):
                self.driver.clone_image(
                    self.context, self.volume(), None,
                    {'id': theirs, 'container_format': 'ovf',
                     'disk_format': 'vhd'}, self.images)
        self.assertEqual(0, self.downloads())

    def downloads(self):
        return self.control.calls().count('plugin:glance.py/download_vhd2')

    def messages(self, volume):
        return [m for m in db_api.message_get_all(context.get_admin_context())
                if m['resource_uuid'] == volume.id]

    def test_too_large_never_reaches_dom0(self):
        image = self.images.show(self.context,
                                 self.add_image(big_tgz(GiB + 2 * MiB)))
        vol = self.volume()
        self.control.clear_calls()
        with self.nothing_leaked():
            with self.assertRaises(exception.ImageLargerThanVolume):
                self.driver.clone_image(self.context, vol, None, image,
                                        self.images)
        self.assertEqual(0, self.downloads())
        self.assertEqual(['007'],
                         [m['detail_id'] for m in self.messages(vol)])

    def test_unreadable_heads_never_reach_dom0(self):
        data = xenserver_tgz(seed=12)[0]
        cases = {'plain': data[:1] + b'x' + data[2:],
                 'no tar': gzip.compress(b'conectix' + bytes(64 * 1024)),
                 'cut': data[:40],
                 'bad gzip': data[:10] + bytes(300)}
        for name, bad in cases.items():
            image = self.images.show(self.context, self.add_image(bad))
            vol = self.volume()
            self.control.clear_calls()
            with self.nothing_leaked():
                with self.assertRaises(exception.ImageRefused, msg=name):
                    self.driver.clone_image(self.context, vol, None, image,
                                            self.images)
            self.assertEqual(0, self.downloads(), name)
            self.assertEqual(['029'],
                             [m['detail_id'] for m in self.messages(vol)])

    def test_truncated_image_fetched_by_dom0_once(self):
        data = xenserver_tgz(seed=13)[0]
        image = self.images.show(self.context,
                                 self.add_image(data[:len(data) // 2]))
        self.driver.downloader.glance_plugin.retries = 3
        self.control.clear_calls()
        with self.nothing_leaked():
            with self.assertRaises(exception.ImageRefused) as err:
                self.driver.clone_image(self.context, self.volume(), None,
                                        image, self.images)
        self.assertEqual(1, self.downloads())
        self.assertIn('ends early', str(err.exception))

    def test_image_dom0_finds_broken_is_refused_not_rescheduled(self):
        # The head is sound (first footer copy, size); the base layer's
        # header is not, which only a whole read finds: dom0's check
        # fails with an error that is not RetryableError.
        files, _disk, _specs = vhd_factory.standard_chain(seed=15)
        base = bytearray(files[-1])
        base[512 + 36] ^= 0xFF      # the dynamic header's checksum
        files[-1] = bytes(base)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'image.tgz')
            vhd_factory.xenserver_tgz(path, files)
            with open(path, 'rb') as f:
                image = self.images.show(self.context,
                                         self.add_image(f.read()))
        self.driver.downloader.glance_plugin.retries = 3
        vol = self.volume()
        self.control.clear_calls()
        with self.nothing_leaked():
            with self.assertRaises(exception.ImageRefused) as err:
                self.driver.clone_image(self.context, vol, None, image,
                                        self.images)
        self.assertEqual(1, self.downloads())
        self.assertIn('checksum', str(err.exception))
        self.assertEqual(['029'],
                         [m['detail_id'] for m in self.messages(vol)])

    def test_transient_failure_of_a_good_image_is_retried(self):
        image, disk, _layers = self.add_xenserver_image(14)
        self.driver.downloader.glance_plugin.retries = 1
        self.control.add_fault('plugin:glance.py/download_vhd2', error=[
            'XENAPI_PLUGIN_FAILURE', 'download_vhd2', 'RetryableError',
            'glance answered 503'])
        self.control.clear_calls()
        vol = self.volume()
        model, cloned = self.driver.clone_image(self.context, vol, None,
                                                image, self.images)
        vol.provider_location = model['provider_location']
        self.assertEqual(2, self.downloads())
        self.assert_disk(vol, disk)


class OsXenapiPluginDownloadTestCase(PluginDownloadTestCase):
    """The same, with os-xenapi's own glance.py answering in dom0."""

    server_kwargs = {'dom0_plugins': 'os-xenapi'}
