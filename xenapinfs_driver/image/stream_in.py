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
"""The stream path into a VDI, with at most one local copy of the image.

A XenServer tgz holding one dynamic VHD (``0.vhd``), or a bare dynamic
VHD, needs no copy at all: its bytes go from glance's chunks straight into
the body of ``PUT /import_raw_vdi?format=vhd``, whose length the tar
header (or glance's image size) gives, validated on the way by the VHD
library (``vhd.forward``; :class:`Passthrough`).

Anything else has one copy, a sparse raw file in ``image_conversion_dir``
holding only the image's data (:class:`RawDisk`):

* other XenServer tgz and bare VHD images (chains, fixed disks, layouts a
  host may not read forward) flow from glance's chunks into the VHD
  library's one-pass reader, which composes the chain into it (no tgz, no
  extracted VHD on disk);
* ``raw`` images are written into it as they arrive, all-zero pieces
  skipped (they stay holes);
* ``bare``/``qcow2`` images need no raw file when their data lies plainly
  in the qcow2 file: ``qcow2_in`` reads it from there;
* anything else goes through cinder's ``fetch_to_raw`` (qemu-img needs a
  file to read), which holds the fetched image and the raw until it ends.

The raw file is then packed as one dynamic VHD straight into the body of
``PUT /import_raw_vdi?format=vhd`` (``vhdstream.PackedVhd``): no VHD file.
A full ``image_conversion_dir`` is an error that names it and the space
the image needs.
"""

import contextlib
import errno
import os

from cinder import exception as cinder_exception
from cinder.i18n import _
from cinder.image import format_inspector
from cinder.image import image_utils
from oslo_utils import units

from xenapinfs_driver.image import meta
from xenapinfs_driver.image import pipe
from xenapinfs_driver.image import precheck
from xenapinfs_driver.image import qcow2_in
from xenapinfs_driver import vhd
from xenapinfs_driver.vhd import errors as vhd_errors
from xenapinfs_driver.vhd import forward
from xenapinfs_driver.vhd import vhdstream
from xenapinfs_driver.xenapi import transfer


# One wording and one type (ImageLargerThanVolume) whichever path finds
# that the disk does not fit.
too_big = precheck.too_big


def no_space(image_id, directory, needed):
    """The error for a full ``image_conversion_dir``."""
    return cinder_exception.ImageTooBig(
        image_id=image_id,
        reason=_('image_conversion_dir %(dir)s is full: the image needs '
                 'up to %(need)d bytes of scratch space there (the data of '
                 'its disk), %(free)d are free') % {
            'dir': directory, 'need': needed,
            'free': _free(directory)})


def _free(directory):
    try:
        st = os.statvfs(directory)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def is_enospc(exc):
    while exc is not None:
        if getattr(exc, 'errno', None) == errno.ENOSPC or \
                os.strerror(errno.ENOSPC) in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def scratch_dir():
    return image_utils.CONF.image_conversion_dir


class RawDisk:
    """The image's disk staged as the sparse raw file ``path`` (or, from
    a qcow2 image, a disk object that reads the qcow2 file itself)."""

    how = 'stream'

    def __init__(self, path):
        self.path = path

    def write_into(self, session, ref):
        import_raw(session, ref, self.path)


class _SendFailed(Exception):
    """The host's connection broke (``error``): not the image's fault.

    Not an OSError, which the VHD library reports as a read error."""

    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


class Passthrough:
    """An image's one dynamic VHD, read from glance as it is sent."""

    how = 'stream, VHD passed through'

    def __init__(self, image_id, reader, inp, plan, limits):
        self.image_id = image_id
        self.reader = reader
        self.inp = inp
        self.plan = plan
        self.limits = limits

    def write_into(self, session, ref):
        def fill(write):
            def send(data):
                try:
                    write(data)
                except OSError as exc:
                    raise _SendFailed(exc) from exc
            try:
                forward.forward(self.inp, self.plan, send, self.limits)
                return
            except _SendFailed as exc:
                broken = exc.error
            # transfer asks the host why its connection broke. (Raised out
            # here, so that it is not chained to the wrapper around it.)
            raise broken
        with _image_errors(self.image_id, self.reader):
            transfer.import_vdi_from(session, ref, self.plan.length, fill,
                                     'vhd')


@contextlib.contextmanager
def staged(context, image_service, image_meta, size, prefix, max_depth):
    """Yield the image, ready to be written into a VDI by its
    ``write_into(session, ref)``: a :class:`Passthrough` or a
    :class:`RawDisk` (for a qcow2 image whose data lies plainly in its
    file, a disk read from that file: ``qcow2_in``).

    :raises ImageUnacceptable: unreadable, or larger than ``size``.
    :raises ImageDownloadFailed: glance stopped sending.
    :raises ImageTooBig: ``image_conversion_dir`` is full.
    """
    image_id = image_meta['id']
    kind = meta.kind(image_meta)
    if qcow2_in.mappable(image_meta):
        def converted():
            return _staged_raw(image_meta, size, prefix, lambda raw: _fetch(
                context, image_service, image_id, kind, raw, size))
        with qcow2_in.staged(context, image_service, image_meta, size,
                             prefix, converted, no_space) as disk:
            yield RawDisk(disk)
        return
    if kind not in (meta.XENSERVER, meta.BARE_VHD):
        with _staged_raw(image_meta, size, prefix, lambda raw: _fetch(
                context, image_service, image_id, kind, raw, size)) as raw:
            yield RawDisk(raw)
        return
    limits = vhd.Limits(max_depth=max_depth, max_size=size)
    reader = pipe.ChunkReader(image_service.download(context, image_id))
    inp = None
    try:
        with _image_errors(image_id, reader):
            # glance's size bounds a bare VHD, as a file's own size would.
            inp = vhd.Input(reader, size=image_meta.get('size')
                            if kind == meta.BARE_VHD else None)
            plan = forward.plan(inp, limits)
        if plan is not None:
            yield Passthrough(image_id, reader, inp, plan, limits)
            return
        with _staged_raw(image_meta, size, prefix, lambda raw: _compose(
                image_id, reader, inp, raw, limits)) as raw:
            yield RawDisk(raw)
    finally:
        if inp is not None:
            inp.close()
        reader.close()


@contextlib.contextmanager
def _staged_raw(image_meta, size, prefix, fill):
    """Yield a temporary file that ``fill(path)`` made the image's disk."""
    image_id = image_meta['id']
    with image_utils.temporary_file(prefix=prefix + 'raw_') as raw:
        try:
            fill(raw)
        except Exception as exc:
            if is_enospc(exc):
                raise no_space(image_id, os.path.dirname(raw),
                               image_meta.get('virtual_size') or
                               image_meta.get('size') or size) from exc
            raise
        virtual = os.path.getsize(raw)
        if virtual > size:
            raise too_big(image_id, virtual, size)
        yield raw


def _fetch(context, image_service, image_id, kind, raw, size):
    if kind == meta.RAW:
        _fetch_sparse(context, image_service, image_id, raw, size)
    else:
        # cinder checks the virtual size (in whole GiB) before
        # converting, and refuses backing files.
        image_utils.fetch_to_raw(
            context, image_service, image_id, raw, units.Mi,
            size=max(1, size // units.Gi), run_as_root=False)


def _download_failed(image_id, exc):
    return cinder_exception.ImageDownloadFailed(
        image_href=image_id, reason=str(exc) or type(exc).__name__)


@contextlib.contextmanager
def _image_errors(image_id, reader):
    """What goes wrong reading a VHD image from glance, as cinder's
    errors naming the image (a full disk is left to the caller)."""
    try:
        yield
    except (vhd.VhdError, pipe.FetchError) as exc:
        if reader.error is not None:
            raise _download_failed(image_id, reader.error) from exc
        if is_enospc(exc) or not isinstance(exc, vhd.VhdError):
            raise
        exc.source = None   # our stream or temporary file: means nothing
        reason = str(exc)
        if isinstance(exc, vhd_errors.LimitExceeded) and \
                (exc.field or '').endswith(('current size', 'file size')):
            reason = _('%(err)s, the size of the volume') % {'err': reason}
        raise cinder_exception.ImageUnacceptable(
            image_id=image_id, reason=reason) from exc


def _compose(image_id, reader, inp, raw, limits):
    """Read a VHD image from ``inp`` and write its disk to ``raw``."""
    with _image_errors(image_id, reader):
        # max_size: a disk larger than the volume is refused when its
        # footer is read, before its data is written. in_place: the
        # temporary file itself is written (no second name to clean up).
        vhd.convert(inp, raw, in_place=True, limits=limits)


def _fetch_sparse(context, image_service, image_id, raw, size):
    """Write a raw image to ``raw``, leaving its zero pieces as holes."""
    def limit(end):
        if end > size:
            raise too_big(image_id, end, size)
    reader = pipe.ChunkReader(image_service.download(context, image_id))
    try:
        with open(raw, 'r+b') as out:
            try:
                offset = pipe.copy_sparse(reader, out.fileno(), limit)
            except pipe.FetchError as exc:
                raise _download_failed(image_id, reader.error) from exc
    finally:
        reader.close()
    if offset == 0:
        raise cinder_exception.ImageUnacceptable(
            image_id=image_id, reason=_('it holds no data'))
    # The bytes become the disk as they are; still, a "raw" image holding
    # another format is refused, as cinder's own fetch does.
    found = str(format_inspector.detect_file_format(raw))
    if found != 'raw':
        raise cinder_exception.ImageUnacceptable(
            image_id=image_id,
            reason=_("The image format was claimed to be 'raw' but the "
                     "image data appears to be '%s'.") % found)


def import_raw(session, ref, raw):
    """Write the raw disk file ``raw`` (or a disk object from
    ``staged``) into the VDI ``ref``, packed as a dynamic VHD on the
    fly (only its non-zero blocks cross the wire)."""
    with vhdstream.PackedVhd(raw) as packed:
        transfer.import_vdi_from(session, ref, packed.length,
                                 packed.write_to, 'vhd')
