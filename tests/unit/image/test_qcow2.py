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
"""qcow2 images into volumes with one local copy: the qcow2 file.

The images are made here with qemu-img (and qemu-io); what the volume
holds is read from its VHD file by qemu-img and compared with qemu-img's
own reading of the image.
"""

import json
import os
import shutil
import subprocess
import tempfile

from cinder import exception as cinder_exception
from cinder.image import image_utils
import fixtures
from oslo_config import cfg
from oslo_utils import units
import pytest

from tests.unit.image import test_download as dl
from tests.unit.image import test_qcow2_clusters
from tests.unit import test_driver
from xenapinfs_driver.image import stream_in

CONF = cfg.CONF
MiB = units.Mi
pattern = test_driver.pattern
QEMU_IO = shutil.which('qemu-io')


def qemu(*args):
    subprocess.run(['qemu-img'] + list(args), check=True, timeout=120,
                   stdout=subprocess.DEVNULL)


def qemu_io(path, *commands):
    cmd = ['qemu-io', '-f', 'qcow2']
    for command in commands:
        cmd += ['-c', command]
    subprocess.run(cmd + [path], check=True, timeout=120,
                   stdout=subprocess.DEVNULL)


def as_raw(path, fmt):
    """The disk of the image file ``path``, as qemu-img reads it."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'disk.raw')
        qemu('convert', '-f', fmt, '-O', 'raw', path, out)
        with open(out, 'rb') as f:
            return f.read()


def qemu_map_of(path, fmt='qcow2'):
    return json.loads(subprocess.run(
        ['qemu-img', 'map', '--output=json', '-f', fmt, path], check=True,
        timeout=120, capture_output=True).stdout)


class Qcow2Base(test_driver.DriverTestBase):
    """The helpers of the tests of qcow2 images (no test itself)."""

    def setUp(self):
        super().setUp()
        self.images = dl.image_service()
        dl.run_privsep_in_process(self)
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.made = []      # prefixes of the temporary files made
        real = image_utils.temporary_file

        def recording(*args, **kwargs):
            self.made.append(kwargs.get('prefix'))
            return real(*args, **kwargs)
        self.mock_object(image_utils, 'temporary_file', recording)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def add(self, path, disk_format='qcow2'):
        with open(path, 'rb') as f:
            data = f.read()
        return dl.StreamDownloadTestCase.add_image(self, data, disk_format)

    def create(self, image):
        vol = self.new_volume()
        self.driver.copy_image_to_volume(self.context, vol, self.images,
                                         image['id'])
        return vol

    def raw(self, data):
        with open(self.path('in.raw'), 'wb') as f:
            f.write(data)
        return self.path('in.raw')

    def vhd_file(self, vol):
        return os.path.join(self.sr_dir(), self.vdi_uuid(vol) + '.vhd')

    def assert_volume(self, vol, source):
        """The volume's VHD is the image, then zeros: qemu-img compares
        them (a larger image's excess must read as zeros)."""
        result = subprocess.run(
            ['qemu-img', 'compare', '-f', 'qcow2', '-F', 'vpc', source,
             self.vhd_file(vol)], timeout=120, capture_output=True,
            text=True)
        self.assertEqual(0, result.returncode,
                         result.stdout + result.stderr)

    def watch_import(self):
        """At the import, the moment of peak scratch: what is in
        image_conversion_dir, and the bytes it holds."""
        seen = []
        real = stream_in.import_raw

        def spy(session, ref, disk):
            names = os.listdir(CONF.image_conversion_dir)
            used = sum(os.stat(os.path.join(CONF.image_conversion_dir, n)
                               ).st_blocks * 512 for n in names)
            seen.append((names, used, type(disk).__name__))
            return real(session, ref, disk)
        self.mock_object(stream_in, 'import_raw', spy)
        return seen

    def no_conversion(self):
        self.mock_object(image_utils, 'fetch_to_raw',
                         side_effect=AssertionError('fetch_to_raw called'))

    def refused(self, image, *words):
        before = pattern(MiB, 11)
        vol = self.new_volume(data=before)
        with self.nothing_leaked():
            with self.assertRaises(
                    cinder_exception.ImageUnacceptable) as err:
                self.driver.copy_image_to_volume(self.context, vol,
                                                 self.images, image['id'])
        self.assertEqual(before, self.read(vol, MiB))
        text = str(err.exception)
        self.assertIn(image['id'], text)
        for word in words:
            self.assertIn(word, text)
        self.assertNotIn(CONF.image_conversion_dir, text)
        return text


class Qcow2TestCase(Qcow2Base):

    def test_data_is_read_from_the_qcow2_file(self):
        # Blocks partly data, data across a block boundary, a last block
        # and sector shorter than the rest; small clusters make many
        # extents. (Subclusters, extended_l2, cinder's inspector refuses.)
        disk = bytearray(9 * MiB + 3 * 512)
        disk[100 * 1024:164 * 1024] = pattern(64 * 1024, 1)
        disk[2 * MiB - 4096:2 * MiB + 8192] = pattern(12288, 2)
        disk[6 * MiB:8 * MiB] = pattern(2 * MiB, 3)
        disk[-700:] = pattern(700, 4)
        with open(self.path('disk.raw'), 'wb') as f:
            f.write(disk)
        for name, options in (('plain', []),
                              ('small', ['-o', 'cluster_size=4096'])):
            src = self.path(name + '.qcow2')
            qemu('convert', '-f', 'raw', '-O', 'qcow2', *options,
                 self.path('disk.raw'), src)
            self.made.clear()
            self.no_conversion()
            seen = self.watch_import()
            vol = self.create(self.add(src))
            self.assert_volume(vol, src)
            self.assert_disk(vol, bytes(disk))
            # One local copy: the qcow2 file, nothing more at the peak.
            (names, used, kind), = seen
            self.assertEqual('MappedDisk', kind)
            self.assertEqual(1, len(names), names)
            self.assertIn('qcow2_', names[0])
            self.assertLessEqual(used, os.path.getsize(src))
            self.assertEqual(1, len(self.made))
            self.assertTrue(self.made[0].endswith('qcow2_'))
            self.assertEqual([], os.listdir(CONF.image_conversion_dir))
            # The zero blocks (1, 3, 4 and 5) are holes in the VHD.
            stored = {e['start'] // (2 * MiB) for e in qemu_map_of(
                self.vhd_file(vol), 'vpc') if e['data']}
            self.assertEqual({0, 1, 3, 4}, stored)

    @pytest.mark.skipif(QEMU_IO is None, reason='qemu-io not found')
    def test_zero_clusters_are_holes(self):
        src = self.path('zero.qcow2')
        qemu('create', '-q', '-f', 'qcow2', src, str(8 * MiB))
        qemu_io(src, 'write -P 0x33 0 6M', 'write -z 1M 1M',
                'write -z 4M 2M', 'write -z -u 2M 64k')
        # The zero cluster at 1 MiB keeps its host cluster: fill it with
        # garbage, which qemu-img does not read and neither may we.
        zeros = [e for e in qemu_map_of(src) if e['zero'] and
                 'offset' in e and e['start'] == MiB]
        self.assertEqual(1, len(zeros), qemu_map_of(src))
        with open(src, 'r+b') as f:
            f.seek(zeros[0]['offset'])
            f.write(b'\xee' * MiB)
        self.no_conversion()
        vol = self.create(self.add(src))
        self.assert_volume(vol, src)
        expected = bytearray(b'\x33' * 6 * MiB)
        expected[MiB:2 * MiB] = bytes(MiB)
        expected[2 * MiB:2 * MiB + 65536] = bytes(65536)
        expected[4 * MiB:6 * MiB] = bytes(2 * MiB)
        self.assert_disk(vol, bytes(expected))
        stored = {e['start'] // (2 * MiB) for e in qemu_map_of(
            self.vhd_file(vol), 'vpc') if e['data']}
        self.assertNotIn(2, stored)     # 4-6 MiB: all zero clusters

    def compressible(self):
        """A raw disk of compressible text, zeros and random data (which
        qemu-img stores plainly: compressing it would not shrink it)."""
        with open(self.path('disk.raw'), 'wb') as f:
            f.write(b'compressible' * (MiB // 4) + bytes(MiB) +
                    pattern(MiB, 6) + b'tail' * 1000)
        return self.path('disk.raw')

    def test_compressed_clusters_are_inflated_in_place(self):
        # Published cloud images are compressed qcow2 files: still one
        # local copy, the file itself.
        src = self.path('c.qcow2')
        qemu('convert', '-c', '-f', 'raw', '-O', 'qcow2',
             self.compressible(), src)
        self.assertTrue(any(e['data'] and 'offset' not in e
                            for e in qemu_map_of(src)))
        self.no_conversion()
        seen = self.watch_import()
        vol = self.create(self.add(src))
        self.assert_volume(vol, src)
        with open(self.path('disk.raw'), 'rb') as f:
            self.assert_disk(vol, f.read())
        (names, used, kind), = seen
        self.assertEqual('MappedDisk', kind)
        self.assertEqual(1, len(names), names)
        self.assertLessEqual(used, os.path.getsize(src))
        self.assertEqual([], os.listdir(CONF.image_conversion_dir))

    def test_damaged_compressed_cluster_is_refused_before_writing(self):
        # qemu-img check does not inflate clusters: the driver does, all
        # of them, before the volume is touched.
        src = self.path('d.qcow2')
        qemu('convert', '-c', '-f', 'raw', '-O', 'qcow2',
             self.compressible(), src)
        offset, _length = test_qcow2_clusters._first_compressed(src)
        with open(src, 'r+b') as f:
            f.seek(offset)
            f.write(b'\xff' * 64)
        self.no_conversion()
        self.refused(self.add(src), 'compressed guest cluster 0',
                     'file offset %d' % offset)

    def test_zstd_compressed_image_is_converted_fetched_once(self):
        src = self.path('z.qcow2')
        qemu('convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o',
             'compression_type=zstd', self.compressible(), src)
        image = self.add(src)
        fetches, real_fetch = [], self.images.download

        def download(context, image_id, data=None):
            fetches.append(image_id)
            return real_fetch(context, image_id, data)
        self.mock_object(self.images, 'download', download)
        converted, real = [], image_utils.fetch_to_raw
        self.mock_object(image_utils, 'fetch_to_raw', lambda *a, **k: (
            converted.append(a[2]), real(*a, **k))[1])
        log = self.useFixture(fixtures.FakeLogger(level='INFO'))
        vol = self.create(image)
        self.assert_volume(vol, src)
        self.assertEqual([image['id']], fetches)
        self.assertEqual([image['id']], converted)
        self.assertEqual(1, log.output.count('cannot be read from the '
                                             'qcow2 file'))
        self.assertIn('not zlib', log.output)
        self.assertEqual([], os.listdir(CONF.image_conversion_dir))

    def test_a_copy_cinder_holds_is_used_as_it_is(self):
        src = self.path('held.qcow2')
        qemu('convert', '-f', 'raw', '-O', 'qcow2',
             self.raw(pattern(3 * MiB, 10)), src)
        image = self.add(src)
        held = image_utils.TemporaryImages.for_image_service(self.images)
        held.temporary_images[self.context.user_id] = {image['id']: src}
        self.mock_object(self.images, 'download',
                         side_effect=AssertionError('fetched'))
        self.no_conversion()
        seen = self.watch_import()
        vol = self.create(image)
        self.assert_volume(vol, src)
        self.assertEqual([([], 0, 'MappedDisk')], seen)
        self.assertTrue(os.path.exists(src))    # cinder's, not ours
