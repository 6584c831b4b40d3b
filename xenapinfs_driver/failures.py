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
"""Tell the end user why an image could not become a volume.

cinder 29's create-volume flow records a user message (``cinder
message-list``) for an ``ImageTooBig`` raised by its own download, but
not for what a driver's ``clone_image`` or ``copy_image_to_volume``
raises: a refused image would leave the user with a volume in ``error``
and no word. cinder's messages carry fixed texts only, never the
exception's own, so the refusal is recorded as the closest of them:

* the image's disk is larger than the volume: "copy image to volume:
  Image used for creating volume exceeds available space."
* the image is unreadable or not a XenServer image: "copy image to
  volume: The image disk format must be the same as the volume format for
  the volume type you are requesting."

The exact reason stays in the exception, in the volume service's log.
"""

import functools

from cinder import exception as cinder_exception
from cinder.message import api as message_api
from cinder.message import message_field
from oslo_log import log as logging
from oslo_utils import excutils

from xenapinfs_driver import exception

LOG = logging.getLogger(__name__)


def detail_of(exc: Exception):
    """The user message detail of a refused image, or None."""
    if isinstance(exc, exception.ImageLargerThanVolume):
        return message_field.Detail.NOT_ENOUGH_SPACE_FOR_IMAGE
    if isinstance(exc, cinder_exception.ImageUnacceptable):
        return message_field.Detail.IMAGE_FORMAT_UNACCEPTABLE
    return None


def record_image_refusal(context, volume, exc: Exception) -> None:
    """Record a user message for a refused image; never raises."""
    detail = detail_of(exc)
    if detail is None:
        return
    try:
        message_api.API().create(
            context, message_field.Action.COPY_IMAGE_TO_VOLUME,
            resource_uuid=volume.id, detail=detail)
    except Exception as err:  # the message must not hide the failure
        LOG.warning('Cannot record the user message for volume %(vol)s: '
                    '%(err)s', {'vol': volume.id, 'err': err})


def image_refusals(method):
    """Decorate a driver method ``(self, context, volume, ...)`` so that
    a refused image is told to the volume's owner.

    ``ImageTooBig`` is left to cinder, which records it itself.
    """
    @functools.wraps(method)
    def wrapper(self, context, volume, *args, **kwargs):
        try:
            return method(self, context, volume, *args, **kwargs)
        except cinder_exception.ImageUnacceptable as exc:
            with excutils.save_and_reraise_exception():
                LOG.error('Image refused for volume %(vol)s: %(err)s',
                          {'vol': volume.id, 'err': exc})
                record_image_refusal(context, volume, exc)
    return wrapper
