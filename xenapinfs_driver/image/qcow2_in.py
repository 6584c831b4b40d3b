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
"""A qcow2 image on the stream path with one local copy: the qcow2 file.

The file is fetched sparse into ``image_conversion_dir`` (or, when cinder
has fetched it already for this request, cinder's copy is used) and
checked as cinder's ``fetch_to_raw`` checks it: the format inspector's
safety check (no backing file, no data-file), ``qemu-img info`` (the
format matches ``disk_format``, the disk fits the volume). ``qemu-img
check`` must find no corruption: a file cut short reads as zeros in
qemu-img, which would make a volume with holes in place of data.

Then ``qemu-img map`` says where the guest's data lies in the file
(:mod:`.qemu_map`), compressed clusters are found and inflated where they
lie (:mod:`.qcow2_clusters`, every one checked first), and the caller
packs a :class:`~.qemu_map.MappedDisk` over it straight into the VDI: no
raw file. When the data cannot be read from the file as it is (encrypted
clusters, zstd compression, subclusters, an odd map),
the image is converted as before (``fallback``: cinder's ``fetch_to_raw``
into a raw file), with the fetched file lent to cinder so that it is not
fetched again; the reason is logged once.
"""

import contextlib
import errno
import json
import os

from cinder import exception as cinder_exception
from cinder.i18n import _
from cinder.image import format_inspector
from cinder.image import image_utils
from oslo_concurrency import processutils
from oslo_log import log as logging
from oslo_utils import units

from xenapinfs_driver.image import pipe
from xenapinfs_driver.image import precheck
from xenapinfs_driver.image import qcow2_clusters
from xenapinfs_driver.image import qemu_map

LOG = logging.getLogger(__name__)

# qemu-img check's exit codes: 0 clean, 3 leaked clusters only (harmless).
_CHECK_OK = (0, 3)


def mappable(image_meta):
    """Whether the image may take this path: a bare qcow2."""
    return (image_meta.get('disk_format') == 'qcow2' and
            image_meta.get('container_format') in ('bare', None))


def _refuse(image_id, reason):
    return cinder_exception.ImageUnacceptable(image_id=image_id,
                                              reason=reason)


@contextlib.contextmanager
def staged(context, image_service, image_meta, size, prefix, fallback,
           no_space):
    """Yield the image's disk: a MappedDisk, or the path of a raw file.

    ``fallback()``: a context manager yielding the raw file made by
    cinder's conversion; ``no_space(image_id, directory, needed)``: the
    error for a full ``image_conversion_dir``.
    """
    image_id = image_meta['id']
    # As fetch_to_raw would, before anything is fetched.
    image_utils.check_image_conversion_disable(
        image_meta['disk_format'], 'raw', image_id)
    held = image_utils.TemporaryImages.for_image_service(
        image_service).get(context, image_id)
    with contextlib.ExitStack() as stack:
        path = held
        if not held:
            path = stack.enter_context(image_utils.temporary_file(
                prefix=prefix + 'qcow2_'))
            _fetch_sparse(context, image_service, image_meta, path,
                          no_space)
        try:
            disk = open_disk(path, image_id, image_meta, size)
        except qemu_map.NotMappable as exc:
            LOG.info('Image %(image)s: converting it to a raw file with '
                     'qemu-img, since its data cannot be read from the '
                     'qcow2 file as it is: %(why)s',
                     {'image': image_id, 'why': exc})
            if not held:
                stack.enter_context(_lent(context, image_service, image_id,
                                          path))
            with fallback() as raw:
                yield raw
            return
        with contextlib.closing(disk):
            yield disk


@contextlib.contextmanager
def _lent(context, image_service, image_id, path):
    """cinder's fetch_to_raw takes the file from here, not from glance."""
    held = image_utils.TemporaryImages.for_image_service(
        image_service).temporary_images.setdefault(context.user_id, {})
    held[image_id] = path
    try:
        yield
    finally:
        held.pop(image_id, None)


def _fetch_sparse(context, image_service, image_meta, path, no_space):
    """Write the image's file to ``path``, its zero pieces left holes (a
    preallocated qcow2 file stays sparse)."""
    image_id = image_meta['id']
    reader = pipe.ChunkReader(image_service.download(context, image_id))
    try:
        with open(path, 'r+b') as out:
            pipe.copy_sparse(reader, out.fileno())
    except pipe.FetchError as exc:
        raise cinder_exception.ImageDownloadFailed(
            image_href=image_id,
            reason=str(reader.error) or type(reader.error).__name__
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise no_space(image_id, os.path.dirname(path),
                           image_meta.get('size') or
                           os.path.getsize(path)) from exc
        raise
    finally:
        reader.close()


def open_disk(path, image_id, image_meta, size):
    """The checked qcow2 file at ``path`` as a MappedDisk.

    :raises ImageUnacceptable: refused, as cinder refuses it, or damaged.
    :raises NotMappable: fine, but its data must be converted.
    """
    found = format_inspector.detect_file_format(path)
    if str(found) == 'qcow2' and not found.safety_check():
        if found.has_backing_file:
            reason = _('it has a backing file')
        elif found.has_data_file:
            reason = _('it has a data-file')
        else:
            reason = _('its qcow2 header has feature bits cinder does not '
                       'know')
        raise _refuse(image_id, reason)
    try:
        info = image_utils.qemu_img_info(path, run_as_root=False)
    except cinder_exception.Invalid as exc:
        raise _refuse(image_id, str(exc)) from exc
    except processutils.ProcessExecutionError as exc:
        # The temporary file's name means nothing to the user.
        why = (exc.stderr or '').replace(path, 'the image').strip()[:500]
        raise _refuse(image_id, _('qemu-img info cannot read it: %s')
                      % why) from exc
    image_utils.check_virtual_size(info.virtual_size,
                                   max(1, size // units.Gi), image_id)
    if info.virtual_size > size:
        raise precheck.too_big(image_id, info.virtual_size, size)
    if info.backing_file is not None:
        raise _refuse(image_id, _('fmt=%(fmt)s backed by: %(file)s') % {
            'fmt': info.file_format, 'file': info.backing_file})
    # The format matches disk_format; a qcow2 has no data-file.
    image_utils.check_image_format(
        path, image_utils.fixup_disk_format(image_meta['disk_format']),
        image_id, info, run_as_root=False)
    if info.encrypted:
        raise qemu_map.NotMappable('it is encrypted')
    limits = qemu_map.process_limits(
        image_utils.CONF.image_introspection_cpu_limit,
        image_utils.CONF.image_introspection_address_space_limit * units.Gi)
    _check(path, image_id, limits)
    code, out, err = qemu_map.qemu_img(
        ['map', '--output=json', '-f', 'qcow2', path],
        qemu_map.MAX_MAP_BYTES, limits=limits)
    if code != 0:
        raise qemu_map.NotMappable('qemu-img map failed: %s' % err)
    try:
        extents = qemu_map.parse(out, info.virtual_size,
                                 os.path.getsize(path), compressed=True)
        return qemu_map.MappedDisk(path, info.virtual_size, extents,
                                   name='image %s' % image_id,
                                   inflater=qcow2_clusters.Clusters)
    except qemu_map.Damaged as exc:
        raise _refuse(image_id, str(exc)) from exc


def _check(path, image_id, limits):
    """Refuse a damaged file: qemu-img would read zeros for lost data."""
    code, out, err = qemu_map.qemu_img(
        ['check', '--output=json', '-f', 'qcow2', path],
        qemu_map.MAX_CHECK_BYTES, limits=limits)
    try:
        report = json.loads(out) if out else {}
    except ValueError:
        report = {}
    bad = report.get('corruptions') if isinstance(report, dict) else None
    if code == 2 or bad:
        raise _refuse(image_id, _(
            'qemu-img check finds %(n)s corruptions in it: the file is '
            'damaged or cut short') % {'n': bad or 'some'})
    if code not in _CHECK_OK:
        raise qemu_map.NotMappable('qemu-img check failed: %s'
                                   % (err or 'exit status %d' % code))
