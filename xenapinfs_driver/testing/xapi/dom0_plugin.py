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
"""What both halves of the dom0 ``glance.py`` stand-in share.

The plugin's error classes (the caller sees only their names, see
``dom0_glance``), its socket timeout and read size, and the checks of the
arguments both entry points take.
"""

from __future__ import annotations

import urllib.parse
import uuid as uuidmod

# The plugin's socket.setdefaulttimeout(90): a lost glance must not hang
# the call forever.
SOCKET_TIMEOUT = 90
CHUNK = 1 << 16


class PluginError(Exception):
    """A permanent failure: the caller must not retry."""


class RetryableError(Exception):
    """A transient failure: the caller may retry the whole call."""


class Failure(Exception):
    """What the plugin raises as ``XenAPI.Failure('ImageNotFound')``."""


ERRORS = (PluginError, RetryableError, Failure)


def check_api_version(api_version):
    if str(api_version) != '2':
        raise PluginError('glance API v%s is not supported: glance v1 was '
                          'removed; call with api_version=2' % api_version)


def check_endpoint(endpoint):
    # urllib would also open file:// and ftp:// URLs.
    parts = urllib.parse.urlsplit(str(endpoint))
    if parts.scheme not in ('http', 'https') or not parts.netloc:
        raise PluginError('not an http(s) endpoint: %s' % endpoint)
    return parts


def checked_uuid(value) -> str:
    """A uuid becomes a file name in the SR: nothing else may."""
    try:
        return str(uuidmod.UUID(str(value)))
    except ValueError:
        raise PluginError('not a uuid: %r' % (value,)) from None
