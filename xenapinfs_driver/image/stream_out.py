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
"""The stream path out of a VDI, with at most one local copy of the disk.

``GET /export_raw_vdi?format=vhd`` is read as a stream:

* a bare VHD image is that stream, passed on to glance as it arrives:
  nothing local at all;
* a XenServer image: the one-pass reader writes the export into a sparse
  raw file in ``image_conversion_dir`` (the one copy), which is packed
  and gzip-compressed straight into glance's upload (no tgz file);
* other formats: the same raw file, which cinder's ``upload_volume``
  converts with qemu-img (its own output is a second file, for the time
  of the upload).
"""

import contextlib

from cinder.image import image_utils
from oslo_log import log as logging

from xenapinfs_driver.image import pipe
from xenapinfs_driver.image import stream_in
from xenapinfs_driver import vhd
from xenapinfs_driver.vhd import vhdstream
from xenapinfs_driver.xenapi import transfer

LOG = logging.getLogger(__name__)


def send_export(session, ref, send):
    """``send(fileobj)`` the VDI's export (one dynamic VHD) as it comes."""
    with transfer.export_vdi(session, ref, 'vhd') as (stream, _length):
        send(stream)


@contextlib.contextmanager
def exported_raw(session, ref, prefix, image_id):
    """Yield the VDI's disk as a sparse raw file in image_conversion_dir.

    :raises ImageTooBig: the directory is full (named, with the space the
        disk's data needs).
    """
    with image_utils.temporary_file(prefix=prefix + 'raw_') as raw:
        length = None
        try:
            with transfer.export_vdi(session, ref, 'vhd') as exported:
                stream, length = exported
                # in_place: the temporary file itself is written, so no
                # second name is left should the service be killed.
                vhd.convert(stream, raw, in_place=True)
        except vhd.VhdError as exc:
            if stream_in.is_enospc(exc):
                raise stream_in.no_space(image_id, stream_in.scratch_dir(),
                                         length or 0) from exc
            raise
        yield raw


def send_tgz(raw, send, level):
    """``send(fileobj)`` the raw disk as a XenServer image, compressed on
    the fly (``level``: gzip level; isal for 1 to 3)."""
    result = []
    data = pipe.Pipe(lambda write: result.append(
        vhdstream.write_tgz(raw, write, level=level)))
    try:
        send(data)
    except BaseException:
        # The writer's own failure explains the upload's best.
        data.close()
        if data.error is not None:
            raise data.error
        raise
    data.close()
    if data.error is not None:
        raise data.error
    if result:
        LOG.debug('XenServer image packed on the fly: %(n)d bytes, '
                  '%(how)s level %(level)s', {
                      'n': result[0].bytes_written,
                      'how': result[0].compressor,
                      'level': result[0].level})
