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
"""What the driver checks itself before and after dom0 fetches an image.

dom0's glance plugin downloads a XenServer image straight into the SR and
reports every tar failure as ``RetryableError``, so a corrupt image would
be fetched ``xenapi_plugin_retries + 1`` times per schedule, and an image
larger than the volume would be written whole before its size is known.
:class:`Checker` settles what it can without dom0:

* :meth:`Checker.head`, before dom0 is called: the first compressed bytes
  of the image from glance (at most :data:`HEAD_LIMIT`) must inflate to a
  tar archive whose first VHD starts with a valid footer copy, whose
  virtual size fits the volume. The rest of the stream is not read.
* :meth:`Checker.after_failure`, when dom0's plugin raised (its
  ``RetryableError``, or the bare exceptions os-xenapi's plugin raises
  when ``vhd-util`` refuses a layer): the whole image is read once
  through the VHD library; if it is broken the failure is the image's
  and is neither retried nor rescheduled, else it was dom0's.

Either refusal is :class:`.exception.ImageRefused` or
:class:`.exception.ImageLargerThanVolume`, both ``ImageUnacceptable``,
which cinder does not reschedule.
"""

import zlib

from cinder.i18n import _
from cinder.image import image_utils
from oslo_log import log as logging

from xenapinfs_driver import exception
from xenapinfs_driver import vhd
from xenapinfs_driver.vhd import errors as vhd_errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import members
from xenapinfs_driver.vhd import stream
from xenapinfs_driver.vhd import tar
from xenapinfs_driver.vhd import validate

LOG = logging.getLogger(__name__)

# Compressed bytes read for the head: a tar header or two and a VHD's
# footer copy inflate from far less; this bounds a stream that does not.
HEAD_LIMIT = 1 << 20
# Inflated bytes kept while looking for the first VHD.
INFLATE_LIMIT = 4 << 20


def too_big(image_id: str, virtual: int,
            size: int) -> exception.ImageLargerThanVolume:
    """The error for a disk of ``virtual`` bytes and a volume of ``size``."""
    return exception.ImageLargerThanVolume(
        image_id=image_id,
        reason=_('its disk is %(disk)d bytes, larger than the volume '
                 '(%(vol)d bytes)') % {'disk': virtual, 'vol': size})


class _HeadExhausted(Exception):
    """The bounded head ended before it showed what was looked for."""


def _inflated(chunks, consumed):
    """The gzip stream of glance's ``chunks``, inflated, bounded."""
    inflater, inflated = zlib.decompressobj(16 + zlib.MAX_WBITS), 0
    for chunk in chunks:
        consumed[0] += len(chunk)
        while chunk:
            data = inflater.decompress(chunk, stream.CHUNK)
            chunk = inflater.unconsumed_tail
            inflated += len(data)
            if consumed[0] > HEAD_LIMIT or inflated > INFLATE_LIMIT:
                raise _HeadExhausted()
            if data:
                yield data
            if inflater.eof:
                return


class Checker:
    """The checks of one image for one volume of ``size`` bytes."""

    def __init__(self, context, image_service, image_meta: dict, size: int,
                 max_depth: int = 30, tmp_prefix: str = 'tmp') -> None:
        self.context = context
        self.image_service = image_service
        self.image_id = image_meta['id']
        self.size = size
        self.max_depth = max_depth
        self.tmp_prefix = tmp_prefix
        self.verified = False

    def _refuse(self, reason):
        return exception.ImageRefused(image_id=self.image_id,
                                      reason=reason)

    def head(self) -> None:
        """Refuse an image whose first bytes show it cannot be used.

        :raises ImageRefused: not a readable XenServer image.
        :raises ImageLargerThanVolume: its first VHD is larger than the
            volume (a chain's layers never shrink toward the leaf).
        """
        chunks = self.image_service.download(self.context, self.image_id)
        consumed, virtual = [0], None
        try:
            pieces = iter(chunks)
            first = next(pieces, b'')
            if first[:2] != stream.GZIP_MAGIC:
                raise self._refuse(_('it is not gzip-compressed; a '
                                     'XenServer image is a tar.gz of '
                                     '0.vhd .. n.vhd'))
            inflated = _inflated(_chain_first(first, pieces), consumed)
            virtual = self._first_vhd_size(stream.Source(inflated,
                                                         self.image_id))
        except _HeadExhausted:
            pass
        except zlib.error as exc:
            raise self._refuse(_('its gzip stream is corrupt: %s') % exc)
        except vhd_errors.VhdError as exc:
            exc.source = None
            raise self._refuse(str(exc))
        finally:
            close = getattr(chunks, 'close', None)
            if close is not None:
                close()
        if virtual is None:
            LOG.debug('Image %(image)s: no VHD footer in its first %(n)d '
                      'bytes; dom0 checks it.', {'image': self.image_id,
                                                 'n': consumed[0]})
        elif virtual > self.size:
            raise too_big(self.image_id, virtual, self.size)

    def _first_vhd_size(self, src):
        """The first VHD member's virtual size; None when the head does
        not show it (a fixed VHD keeps its footer only at its end)."""
        if not src.peek(1):
            raise vhd_errors.Truncated('the image ends within its first '
                                       'bytes')
        for member in tar.iter_members(src):
            if members.member_rank(member, self.max_depth) is None:
                continue
            validate.check_file_size(member.size)
            raw = src.read_exact(fmt.FOOTER_SIZE, member.name)
            if raw[:8] != fmt.FOOTER_COOKIE:
                return None
            footer = fmt.Footer.from_bytes(raw)
            validate.check_footer(footer, raw, validate.Limits(),
                                  member.name + ' footer copy')
            return footer.current_size
        raise self._refuse(_('it holds no VHD (0.vhd .. n.vhd)'))

    def after_failure(self, exc: Exception) -> None:
        """Called before dom0 is asked again after ``exc``: raise when
        the image itself is broken, so that it is not fetched again."""
        if self.verified:
            return
        LOG.info('dom0 could not fetch image %(image)s (%(err)s); reading '
                 'it here once to tell a broken image from a transient '
                 'failure.', {'image': self.image_id, 'err': exc})
        with image_utils.temporary_file(prefix=self.tmp_prefix + 'chk_'
                                        ) as path:
            image_utils.fetch(self.context, self.image_service,
                              self.image_id, path, None, None)
            try:
                result = vhd.inspect(path, limits=vhd.Limits(
                    max_depth=self.max_depth))
            except vhd.VhdError as err:
                err.source = None   # our temporary file: means nothing
                raise self._refuse(str(err)) from exc
        if result.virtual_size > self.size:
            raise too_big(self.image_id, result.virtual_size, self.size)
        self.verified = True


def _chain_first(first, chunks):
    yield first
    yield from chunks
