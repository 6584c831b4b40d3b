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
"""A one-layer VHD image goes from glance into the VDI with no local copy.

Against the in-process XenAPI test server; the VDI's own file is read by
qemu-img, a reader we did not write.
"""

import os
import random
import shutil
import subprocess
import tempfile
from unittest import mock

from cinder import exception as cinder_exception
from oslo_config import cfg
from oslo_utils import units
import pytest

from tests.unit.image import faults
from tests.unit.image import test_download
from tests.unit import test_driver
from tests import vhd_factory as vf
from xenapinfs_driver import exception
from xenapinfs_driver.image import stream_in
from xenapinfs_driver.testing.xapi import vdifiles
from xenapinfs_driver.xenapi import transfer

CONF = cfg.CONF
MiB = units.Mi
GiB = units.Gi
BS = 2 * MiB


def one_layer(seed, size=12 * MiB):
    """(VHD bytes, disk): full, partly present and absent blocks, stored
    in no particular order."""
    rnd = random.Random(seed)
    spec = vf.LayerSpec(size, {
        4: (None, rnd.randbytes(BS)),
        0: ({0, 1, 9, 4095}, rnd.randbytes(BS)),
        2: (None, rnd.randbytes(BS))})
    return (vf.build_chain([spec], order='random', rnd=rnd)[0],
            vf.expected_disk([spec]))


def tgz_of(members):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'image.tgz')
        vf.make_tar(path, members)
        with open(path, 'rb') as f:
            return f.read()


class PassthroughTestCase(test_download.StreamImages,
                          test_driver.DriverTestBase):

    def setUp(self):
        super().setUp()
        self.puts = []
        self.staged = []
        real_put = transfer.import_vdi_from
        real_raw = stream_in.import_raw

        def put(session, ref, length, fill, fmt='vhd', progress=None):
            seen = set()

            def watching(write):
                def each(data):
                    # What the image costs locally while it is sent.
                    seen.update(os.listdir(CONF.image_conversion_dir))
                    write(data)
                return fill(each)
            self.puts.append({'length': length, 'format': fmt,
                              'scratch': seen})
            return real_put(session, ref, length, watching, fmt, progress)

        def staged(session, ref, raw):
            self.staged.append(raw)
            return real_raw(session, ref, raw)
        self.mock_object(transfer, 'import_vdi_from', put)
        self.mock_object(stream_in, 'import_raw', staged)

    def vdi_file(self, vol):
        return vdifiles.vhd_path(self.sr_dir(), self.record(vol)['location'])

    def assert_vdi_file(self, vol, disk):
        """qemu-img reads the VDI's own file as ``disk`` then zeros."""
        qemu = shutil.which('qemu-img')
        if qemu is None:
            pytest.skip('qemu-img is not installed')
        with tempfile.TemporaryDirectory() as tmp:
            raw = os.path.join(tmp, 'disk.raw')
            subprocess.run([qemu, 'convert', '-q', '-f', 'vpc', '-O', 'raw',
                            self.vdi_file(vol), raw], check=True)
            self.assert_raw(raw, disk, vol.size * GiB)

    def assert_passed_through(self, length):
        self.assertEqual([], self.staged)
        self.assertEqual(1, len(self.puts))
        self.assertEqual(length, self.puts[0]['length'])
        self.assertEqual('vhd', self.puts[0]['format'])
        self.assertEqual(set(), self.puts[0]['scratch'])

    def test_one_layer_tgz(self):
        vhd, disk = one_layer(1)
        vol = self.clone_image(self.add_image(tgz_of([('./0.vhd', vhd)]),
                                              'vhd', 'ovf'))
        self.assert_passed_through(len(vhd))
        self.assert_vdi_file(vol, disk)
        self.assert_disk(vol, disk)
        self.assertEqual([], os.listdir(CONF.image_conversion_dir))

    def test_bare_vhd(self):
        vhd, disk = one_layer(2)
        vol = self.clone_image(self.add_image(vhd, 'vhd'))
        self.assert_passed_through(len(vhd))
        self.assert_vdi_file(vol, disk)

    def test_into_an_existing_volume(self):
        vhd, disk = one_layer(3)
        image = self.add_image(tgz_of([('0.vhd', vhd)]), 'vhd', 'ovf')
        vol = self.new_volume(data=test_driver.pattern(16 * MiB, 4))
        location = vol.provider_location
        self.puts.clear()
        self.driver.copy_image_to_volume(self.context, vol, self.images,
                                         image['id'])
        self.assertEqual(location, vol.provider_location)
        self.assert_passed_through(len(vhd))
        self.assert_disk(vol, disk)

    def test_other_shapes_are_staged(self):
        files, chain_disk, _specs = vf.standard_chain(seed=5)
        vhd, disk = one_layer(6)
        one_mib = vf.LayerSpec(4 * MiB, {1: (None, test_driver.pattern(
            MiB, 7))}, block_size=MiB)
        for data, container, want in (
                (tgz_of([('%d.vhd' % i, f) for i, f in enumerate(files)]),
                 'ovf', chain_disk),
                # The footer not right after the last block.
                (vhd[:-512] + bytes(4096) + vhd[-512:], 'bare', disk),
                # Blocks of another size than XenServer's.
                (tgz_of([('0.vhd', vf.build_chain([one_mib])[0])]), 'ovf',
                 vf.expected_disk([one_mib]))):
            self.puts.clear()
            self.staged.clear()
            vol = self.clone_image(self.add_image(data, 'vhd', container))
            self.assertEqual(1, len(self.staged))
            self.assert_disk(vol, want)

    def check_refused(self, data, container, words, error=None):
        """The image is refused, naming itself and ``words``; nothing is
        left: no VDI, no file, no scratch."""
        image = self.add_image(data, 'vhd', container)
        with self.nothing_leaked():
            with self.assertRaises(
                    error or cinder_exception.ImageUnacceptable) as err:
                self.clone_image(image)
        text = str(err.exception)
        self.assertIn(image['id'], text)
        for word in words:
            self.assertIn(word, text)
        return text

    def test_a_bad_end_is_refused(self):
        vhd, _disk = one_layer(8)
        footer = bytearray(vhd)
        footer[-512 + 64] ^= 0xFF              # its checksum
        gz = bytearray(tgz_of([('0.vhd', vhd)]))
        gz[-8] ^= 0xFF                         # the gzip CRC-32
        files, _disk, _specs = vf.standard_chain(seed=9)
        for data, container, words in (
                (bytes(footer), 'bare', ('footer checksum',)),
                (bytes(gz), 'ovf', ('gzip',)),
                (tgz_of([('0.vhd', vhd), ('1.vhd', files[1])]), 'ovf',
                 ('disk type', 'dynamic', '1.vhd'))):
            self.puts.clear()
            self.check_refused(data, container, words)
            # It was sent, but for its footer: the host never had it whole.
            self.assertEqual(1, len(self.puts))
            self.assertEqual([], self.staged)

    def test_a_short_stream_is_refused(self):
        vhd, _disk = one_layer(10)
        image = self.add_image(vhd, 'vhd')
        real = self.images.download

        def short(context, image_id, data=None):
            left = 5 * MiB
            for chunk in real(context, image_id):
                yield chunk[:left]
                left -= len(chunk[:left])
                if not left:
                    return
        with mock.patch.object(self.images, 'download', short):
            with self.nothing_leaked():
                with self.assertRaises(
                        cinder_exception.ImageUnacceptable) as err:
                    self.clone_image(image)
        self.assertIn(image['id'], str(err.exception))
        self.assertIn('block', str(err.exception))
        self.assertIn('ends early', str(err.exception))

    def test_glance_that_stops_sending(self):
        vhd, _disk = one_layer(11)
        image = self.add_image(tgz_of([('0.vhd', vhd)]), 'vhd', 'ovf')
        with faults.glance_stops(self.images, after=20):
            with self.nothing_leaked():
                with self.assertRaises(
                        cinder_exception.ImageDownloadFailed) as err:
                    self.clone_image(image)
        self.assertIn('connection reset by glance', str(err.exception))
        self.assertEqual(1, len(self.puts))

    def test_a_host_that_fails_midway(self):
        vhd, _disk = one_layer(12)
        image = self.add_image(vhd, 'vhd')
        self.control.add_fault('http:import_raw_vdi', 'disk_full')
        with self.nothing_leaked():
            self.assertRaises(exception.XenAPINFSException,
                              self.clone_image, image)

    def test_an_existing_volume_keeps_its_data_when_the_end_is_bad(self):
        # 0.vhd is sound, but a dynamic disk has no parent: found only
        # once all of 0.vhd but its footer was sent.
        vhd, _disk = one_layer(13)
        files, _disk, _specs = vf.standard_chain(seed=13)
        image = self.add_image(tgz_of([('0.vhd', vhd), ('1.vhd', files[1])]),
                               'vhd', 'ovf')
        before = test_driver.pattern(MiB, 14)
        vol = self.new_volume(data=before)
        self.puts.clear()
        with self.assertRaises(cinder_exception.ImageUnacceptable) as err:
            self.driver.copy_image_to_volume(self.context, vol, self.images,
                                             image['id'])
        self.assertIn('1.vhd', str(err.exception))
        self.assertEqual(1, len(self.puts))
        self.assertEqual(before, self.read(vol, MiB))
