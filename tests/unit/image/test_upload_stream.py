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
"""A XenServer image uploaded by the stream path: the export passed
through into the tgz with no local file, read back by our reader,
qemu-img and libvhdi and by a new volume; the raw-file fallback for a
host that lays its export out otherwise; and the faults, each of which
leaves no image, no snapshot, no task and no file behind."""

import contextlib
import io
import os
import shutil
import tarfile
import tempfile
from unittest import mock

from tests.unit.image import test_upload
from xenapinfs_driver.image import stream_out
from xenapinfs_driver import vhd
from xenapinfs_driver.xenapi import transfer

try:
    import pyvhdi
except ImportError:
    pyvhdi = None

MiB = test_upload.MiB
GiB = test_upload.GiB
QEMU = shutil.which('qemu-img')
disk_data = test_upload.disk_data


class _Padded:
    """An export with zeros before its footer: a layout whose length the
    BAT does not give (n: the export's length)."""

    def __init__(self, src, n):
        self.src, self.left, self.pad = src, n - 512, bytes(512)

    def read(self, n=-1):
        if self.left <= 0:
            if self.pad:
                data, self.pad = self.pad, b''
                return data
            return self.src.read(n)
        data = self.src.read(min(n, self.left))
        self.left -= len(data)
        return data


class StreamThroughTestCase(test_upload.StreamUploadTestCase):

    # Its helpers, not its tests: those run in their own module.
    locals().update({name: None for name in dir(
        test_upload.StreamUploadTestCase) if name.startswith('test_')})

    def test_no_local_file_and_three_readers_agree(self):
        with mock.patch.object(stream_out, '_raw_of',
                               side_effect=AssertionError('a raw file')):
            data = self.upload('vhd', 'ovf')
        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                self.assertEqual(['0.vhd'], tar.getnames())
                tar.extract('0.vhd', tmp, filter='data')
            member = os.path.join(tmp, '0.vhd')
            raw = os.path.join(tmp, 'ours.raw')
            vhd.convert(self.saved(tmp, data, 'up.tgz'), raw)
            self.assert_raw(raw, disk_data(), GiB)
            if QEMU is not None:
                self.assert_raw(self.qemu_raw(tmp, member, 'vpc'),
                                disk_data(), GiB)
            if pyvhdi is not None:
                handle = pyvhdi.file()
                handle.open(member)
                try:
                    self.assertEqual(GiB, handle.get_media_size())
                    self.assertEqual(disk_data(), handle.read_buffer_at_offset(
                        len(disk_data()), 0))
                finally:
                    handle.close()

    def test_a_volume_made_from_the_image_holds_the_disk(self):
        meta = self.new_image()
        self.driver.copy_volume_to_image(self.context, self.vol, self.images,
                                         meta)
        vol = self.new_volume()
        self.driver.copy_image_to_volume(self.context, vol, self.images,
                                         meta['id'])
        self.assert_disk(vol, disk_data())

    def test_a_host_sending_no_content_length(self):
        # The BAT alone gives the member's length.
        with self.export_changed(length=lambda n: None), \
                mock.patch.object(stream_out, '_raw_of',
                                  side_effect=AssertionError('a raw file')):
            data = self.upload('vhd', 'ovf')
        with tempfile.TemporaryDirectory() as tmp:
            raw = os.path.join(tmp, 'disk.raw')
            vhd.convert(self.saved(tmp, data, 'up.tgz'), raw)
            self.assert_raw(raw, disk_data(), GiB)

    def test_another_layout_goes_through_a_raw_file(self):
        seen = []
        raw_of = stream_out._raw_of

        def spy(*args):
            seen.append(args[0])
            return raw_of(*args)
        with self.export_changed(lambda n: n + 512,
                                 lambda src, n: _Padded(src, n)), \
                mock.patch.object(stream_out, '_raw_of', spy), \
                self.nothing_leaked():
            data = self.upload('vhd', 'ovf')
        self.assertEqual(1, len(seen))
        with tempfile.TemporaryDirectory() as tmp:
            raw = os.path.join(tmp, 'disk.raw')
            vhd.convert(self.saved(tmp, data, 'up.tgz'), raw)
            self.assert_raw(raw, disk_data(), GiB)

    # -- faults ---------------------------------------------------------------

    @contextlib.contextmanager
    def export_changed(self, length=None, stream=None):
        """The next export, its length or its stream changed."""
        real = transfer.export_vdi
        calls = []

        @contextlib.contextmanager
        def changed(session, ref, fmt='vhd'):
            with real(session, ref, fmt) as (src, n):
                calls.append(n)
                if len(calls) > 1:
                    yield src, n
                    return
                yield (stream(src, n) if stream else src,
                       length(n) if length else n)
        with mock.patch.object(transfer, 'export_vdi', changed):
            yield

    def test_an_export_ending_early(self):
        self.control.add_fault('http:export_raw_vdi', 'drop_after')
        self.assert_fails_cleanly()

    def test_an_export_longer_than_its_bat(self):
        class Longer:
            def __init__(self, src, n):
                self.src, self.extra = src, b'x' * 512

            def read(self, n=-1):
                data = self.src.read(n)
                if not data:
                    data, self.extra = self.extra, b''
                return data
        with self.export_changed(length=lambda n: None, stream=Longer):
            self.assert_fails_cleanly(vhd.VhdError, 'export of VDI',
                                      'length')

    def test_a_bat_pointing_past_the_promised_length(self):
        with self.export_changed(length=lambda n: n - 2 * MiB):
            self.assert_fails_cleanly(vhd.VhdError, 'export of VDI',
                                      'BAT entry')
