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
* a XenServer image: the export's head (footer copy, dynamic header,
  BAT) gives the length of the VHD, so the tar header of ``0.vhd`` goes
  first and the VHD passes through into the gzip compressor as it
  arrives, checked on the way against its head (``vhd.passthrough``):
  nothing local. Should the host lay its export out otherwise, the
  one-pass reader writes it into a sparse raw file in
  ``image_conversion_dir`` (the one copy), which is packed and
  compressed straight into glance's upload;
* a qcow2 image: the same raw file (the one copy), packed as a qcow2
  image on the fly straight into glance's upload (``vhd.qcow2out``;
  ``vhd.qcow2c`` for compressed clusters, which reads the file twice);
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
from xenapinfs_driver.vhd import passthrough
from xenapinfs_driver.vhd import qcow2c
from xenapinfs_driver.vhd import qcow2out
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
    with transfer.export_vdi(session, ref, 'vhd') as (stream, length):
        with _raw_of(stream, length, prefix, image_id) as raw:
            yield raw


@contextlib.contextmanager
def _raw_of(stream, length, prefix, image_id):
    with image_utils.temporary_file(prefix=prefix + 'raw_') as raw:
        try:
            # in_place: the temporary file itself is written, so no
            # second name is left should the service be killed.
            vhd.convert(stream, raw, in_place=True)
        except vhd.VhdError as exc:
            if stream_in.is_enospc(exc):
                raise stream_in.no_space(image_id, stream_in.scratch_dir(),
                                         length or 0) from exc
            raise
        yield raw


def send_export_tgz(session, ref, vdi_uuid, send, level, prefix, image_id):
    """``send(fileobj)`` the VDI as a XenServer image made from its export
    as it arrives; through a raw file if the export's layout asks it.

    :raises VhdError: the export is not what its head promised (named
        after the VDI, with the field); raised into the upload before
        its end, so that glance never completes the image.
    """
    source = 'export of VDI %s' % vdi_uuid
    with transfer.export_vdi(session, ref, 'vhd') as (stream, length):
        try:
            plan = passthrough.plan(stream, source, length)
        except passthrough.NotStreamable as exc:
            LOG.info('%(src)s cannot be passed through (%(why)s): '
                     'packing it from a raw file.',
                     {'src': source, 'why': exc})
            whole = _Prefixed(exc.head, stream)
            with _raw_of(whole, length, prefix, image_id) as raw:
                send_tgz(raw, send, level)
            return
        _log_tgz(_send_made(lambda write: passthrough.write_tgz(
            plan, stream, write, level=level, offload=offload()), send))


class _Prefixed:
    """What was read of a stream already, then the rest of it."""

    name = '<export>'

    def __init__(self, head, rest):
        self._head = memoryview(head)
        self._rest = rest

    def read(self, n=-1):
        if not self._head:
            return self._rest.read(n)
        n = len(self._head) if n is None or n < 0 else n
        data, self._head = self._head[:n], self._head[n:]
        return bytes(data)


def offload():
    """How compression gets a core of its own: cinder's threads are
    eventlet's green threads, which take turns on one core; eventlet's
    tpool runs a call in a real thread. None where nothing is patched."""
    try:
        from eventlet import patcher
        from eventlet import tpool
    except ImportError:
        return None
    return tpool.execute if patcher.is_monkey_patched('thread') else None


def send_tgz(raw, send, level):
    """``send(fileobj)`` the raw disk as a XenServer image, compressed on
    the fly (``level``: gzip level; isal for 1 to 3)."""
    _log_tgz(_send_made(lambda write: vhdstream.write_tgz(
        raw, write, level=level, offload=offload()), send))


def send_qcow2(raw, send, source, compress=False):
    """``send(fileobj)`` the raw disk as a qcow2 image, packed on the fly;
    its length is known before the first byte: with ``compress``, because
    a first pass compresses every cluster to learn its size.

    :param source: what errors call the disk (the VDI, the image).
    :raises VhdError: the disk is larger than the writer's limit, or
        changed while being read: raised into the upload before its end.
    """
    if compress:
        image = qcow2c.Qcow2C(raw, source=source, offload=offload())
    else:
        image = qcow2out.Qcow2Out(raw, source=source)
    with image:
        LOG.debug('%(src)s: qcow2 image of %(n)d bytes, %(data)d data '
                  'clusters%(how)s', {
                      'src': source, 'n': image.length,
                      'data': image.stored,
                      'how': ', %d compressed' % image.compressed
                      if compress else ''})
        _send_made(image.write_to, send)


def _send_made(make, send):
    """``send(fileobj)`` what ``make(write)`` writes, as it is written;
    the writer's failure is the one raised. What ``make`` returns."""
    result = []
    data = pipe.Pipe(lambda write: result.append(make(write)))
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
    return result[0] if result else None


def _log_tgz(result):
    if result is not None:
        LOG.debug('XenServer image packed on the fly: %(n)d bytes, '
                  '%(how)s level %(level)s', {
                      'n': result.bytes_written, 'how': result.compressor,
                      'level': result.level})
