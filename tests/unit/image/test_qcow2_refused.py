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
"""qcow2 images refused, and failed fetches: nothing is left behind."""

import os

from cinder import exception as cinder_exception
from cinder.image import image_utils
from oslo_concurrency import processutils
from oslo_config import cfg
from oslo_utils import units

from tests.unit.image import faults
from tests.unit.image import test_qcow2 as base
from xenapinfs_driver.image import qemu_map

CONF = cfg.CONF
MiB = units.Mi
pattern = base.pattern
qemu = base.qemu


class Qcow2RefusedTestCase(base.Qcow2Base):

    def test_backing_file_is_refused(self):
        backing = self.path('base.raw')
        with open(backing, 'wb') as f:
            f.write(pattern(MiB, 7))
        src = self.path('top.qcow2')
        qemu('create', '-q', '-f', 'qcow2', '-b', backing, '-F', 'raw', src)
        self.no_conversion()
        self.refused(self.add(src), 'backing file')

    def test_other_format_named_qcow2_is_refused(self):
        src = self.path('disk.vmdk')
        qemu('create', '-q', '-f', 'vmdk', src, str(4 * MiB))
        self.refused(self.add(src), "claimed to be 'qcow2'")

    def test_file_qemu_img_cannot_read_is_refused(self):
        src = self.path('u.qcow2')
        qemu('convert', '-f', 'raw', '-O', 'qcow2',
             self.raw(pattern(MiB, 13)), src)

        def unreadable(path, **kwargs):
            raise processutils.ProcessExecutionError(
                stderr="qemu-img: Could not open '%s': Image is not in "
                       "qcow2 format" % path)
        self.mock_object(image_utils, 'qemu_img_info', unreadable)
        self.refused(self.add(src), 'qemu-img info cannot read it',
                     'not in qcow2 format')

    def test_truncated_file_is_refused(self):
        src = self.path('t.qcow2')
        qemu('convert', '-f', 'raw', '-O', 'qcow2',
             self.raw(pattern(4 * MiB, 8)), src)
        for cut in (os.path.getsize(src) // 2, 100 * 1024):
            with open(src, 'r+b') as f:
                f.truncate(cut)
            # qemu-img itself reads the lost data as zeros.
            base.as_raw(src, 'qcow2')
            self.refused(self.add(src), 'corruptions')

    def test_map_past_the_end_of_the_file_is_refused(self):
        src = self.path('m.qcow2')
        qemu('convert', '-f', 'raw', '-O', 'qcow2',
             self.raw(pattern(2 * MiB, 9)), src)
        real = qemu_map.qemu_img

        def shifted(args, *rest, **kw):
            code, out, err = real(args, *rest, **kw)
            if args[0] == 'map':
                out = out.replace(b'"offset": ', b'"offset": 1')
            return code, out, err
        self.mock_object(qemu_map, 'qemu_img', shifted)
        self.refused(self.add(src), 'past the end of the file')

    def test_failed_fetches_leave_nothing(self):
        src = self.path('f.qcow2')
        qemu('convert', '-f', 'raw', '-O', 'qcow2',
             self.raw(pattern(4 * MiB, 12)), src)
        image = self.add(src)
        vol = self.new_volume()
        with faults.glance_stops(self.images):
            with self.nothing_leaked():
                with self.assertRaises(
                        cinder_exception.ImageDownloadFailed) as err:
                    self.driver.copy_image_to_volume(
                        self.context, vol, self.images, image['id'])
        self.assertIn('connection reset by glance', str(err.exception))
        with faults.directory_full(CONF.image_conversion_dir):
            with self.nothing_leaked():
                with self.assertRaises(cinder_exception.ImageTooBig) as err:
                    self.driver.copy_image_to_volume(
                        self.context, vol, self.images, image['id'])
        self.assertIn(CONF.image_conversion_dir, str(err.exception))
        self.assertIn('needs up to', str(err.exception))
