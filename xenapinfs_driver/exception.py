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
"""The driver's exceptions, one home for every error it raises.

They derive from cinder's ``VolumeDriverException`` so that the volume
manager handles them like any driver failure (the volume goes to
``error``, the message reaches the operator's log). XenAPI failures are
converted once, at the session boundary, into :class:`XenAPIError`, which
keeps XenAPI's error code and parameters for callers that branch on them.
"""

from cinder import exception
from cinder.i18n import _


class XenAPINFSException(exception.VolumeDriverException):
    message = _("XenAPINFS driver failure: %(reason)s")


class XenAPIError(XenAPINFSException):
    """A XenAPI call answered with a failure.

    ``error`` is XenAPI's error code (``details[0]``), ``params`` the rest of
    its ``ErrorDescription``; ``method`` the call that failed.
    """

    message = _("XenAPI call %(method)s failed: %(error)s %(params)s")

    def __init__(self, method, details):
        details = [str(d) for d in (details or ['UNKNOWN_ERROR'])]
        self.method = method
        self.details = details
        self.error = details[0]
        self.params = details[1:]
        super().__init__(method=method, error=self.error,
                         params=self.params)


class XenAPIConnectionError(XenAPINFSException):
    """The host could not be reached, or the connection broke mid-call.

    ``sent``: the request may have reached the host, which may have done
    the call and lost only its answer. ``timed_out``: the host did not
    answer in time, and may still be doing the call.
    """

    message = _("Cannot talk to XenAPI at %(url)s (%(method)s): %(reason)s")

    def __init__(self, message=None, sent=False, timed_out=False, **kwargs):
        super().__init__(message, **kwargs)
        self.sent = sent
        self.timed_out = timed_out


class XenAPIAuthenticationError(XenAPINFSException):
    message = _("XenAPI at %(url)s refused the login of user %(user)s: "
                "%(reason)s")


class XenAPIMissingError(XenAPINFSException):
    message = _("The XenAPI client library is not installed (pip install "
                "XenAPI): %(reason)s")


class PluginVersionError(XenAPINFSException):
    message = _("The dom0 plugins on the host are version %(found)s; this "
                "driver needs %(needed)s. Install a current os-xenapi dom0 "
                "plugin set, or set xenapi_image_transfer = stream.")


class PluginRetriesExceeded(XenAPINFSException):
    message = _("The dom0 plugin call %(fn)s failed %(attempts)d times; "
                "last error: %(reason)s")


class ImageTransferError(XenAPINFSException):
    message = _("Image transfer failed: %(reason)s")


class SRNotFound(XenAPINFSException):
    message = _("Storage repository %(sr)s cannot be found or attached: "
                "%(reason)s")


class ImageRefused(exception.ImageUnacceptable):
    """An image that cannot be used as it is: retrying cannot help.

    An ``ImageUnacceptable``, so that cinder does not reschedule it.
    """


class ImageLargerThanVolume(exception.ImageUnacceptable):
    """An image whose disk does not fit in the volume."""
