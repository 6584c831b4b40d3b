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
"""Calls to the dom0 plugins: ``dom0_plugin_version.py`` and ``glance.py``.

The contract is the one dom0's Python 2 plugins speak (os-xenapi's
``XenAPIPlugin.dispatch``): the arguments travel as ``{'params': s}`` where
``s`` is ``pickle.dumps({'args': [...], 'kwargs': {...}})`` with protocol 0,
an ASCII-safe text that Python 2 reads; the answer is a pickle of the same
kind. A plugin's exception comes back as
``XENAPI_PLUGIN_FAILURE [fn, class name, message]``.

Answers are unpickled by :func:`loads`, which allows no globals at all:
the plugins return only strings, numbers, lists and dicts, and anything
else in the stream is refused instead of run.
"""

from __future__ import annotations

import io
import pickle
import time
from typing import Any, Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from cinder import exception as cinder_exception
from cinder.i18n import _
from oslo_log import log as logging

from xenapinfs_driver import exception

if TYPE_CHECKING:   # for annotations only
    from xenapinfs_driver.xenapi.session import XenAPISession

LOG = logging.getLogger(__name__)

VERSION_PLUGIN = 'dom0_plugin_version.py'
GLANCE_PLUGIN = 'glance.py'
# 1.3 added the *_vhd2 calls by URL, 1.4 glance v2, 1.8 the '.py' names;
# 2.x is the current series. Older hosts cannot serve this driver.
MIN_VERSION = (1, 8)
MAX_ANSWER = 1 << 20  # a plugin answer is a few hundred bytes


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):
        # NOTE: its text ends up in the error loads() raises.
        raise pickle.UnpicklingError(
            _('plugin answer refers to %(module)s.%(name)s; only plain '
              'data is accepted') % {'module': module, 'name': name})


def dumps(obj: Any) -> str:
    """Pickle ``obj`` the way dom0's plugins expect: protocol 0, as str."""
    return pickle.dumps(obj, protocol=0).decode('latin-1')


def loads(text: str) -> Any:
    """Unpickle a plugin answer, refusing anything but plain data."""
    if not isinstance(text, str) or len(text) > MAX_ANSWER:
        raise exception.XenAPINFSException(
            reason=_('plugin answer is not a pickle of at most %d bytes')
            % MAX_ANSWER)
    try:
        return _NoGlobals(io.BytesIO(text.encode('latin-1')),
                          encoding='latin-1').load()
    except Exception as exc:
        raise exception.XenAPINFSException(
            reason=_('cannot read the plugin answer: %s') % exc)


def call(session: XenAPISession, plugin: str, fn: str, *args: Any,
         secrets: Iterable[str] = (), timeout: float = 3600.0,
         **kwargs: Any) -> Any:
    """Call ``plugin``'s ``fn`` with pickled arguments; unpickle the answer.

    Runs as a task (``Async.host.call_plugin``) so that a long transfer is
    polled rather than waited for on one socket read.
    """
    params = {'params': dumps({'args': list(args), 'kwargs': kwargs})}
    try:
        answer = session.call_async('host.call_plugin', session.host_ref,
                                    plugin, fn, params, timeout=timeout,
                                    secrets=secrets)
    except exception.XenAPIError as exc:
        # NOTE: named after the plugin function, not host.call_plugin:
        # that is what the operator needs to know failed.
        raise exception.XenAPIError('host.call_plugin %s/%s' % (plugin, fn),
                                    exc.details)
    return loads(answer)


def parse_version(text: object) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(text).split('.')[:2])
    except ValueError:
        return ()


def get_version(session: XenAPISession) -> str:
    """The dom0 plugin set's version, e.g. ``'2.1'``."""
    return call(session, VERSION_PLUGIN, 'get_version', timeout=60.0)


def _needed() -> str:
    """The plugin versions this driver can use, as the operator reads it."""
    major, minor = MIN_VERSION
    return _('%(major)d.%(minor)d or later') % {'major': major,
                                                'minor': minor}


def check_version(session: XenAPISession) -> str:
    """Refuse hosts whose plugins lack the calls this driver makes.

    :raises PluginVersionError: the plugins are missing or too old.
    """
    try:
        found = get_version(session)
    except exception.XenAPIError as exc:
        if exc.error in ('XENAPI_MISSING_PLUGIN',
                         'UNKNOWN_XENAPI_PLUGIN_FUNCTION'):
            raise exception.PluginVersionError(found=_('(not installed)'),
                                               needed=_needed())
        raise
    version = parse_version(found)
    if not version or version < MIN_VERSION:
        raise exception.PluginVersionError(
            found=found, needed=_needed())
    return found


def _retryable(exc):
    # Only the plugin's own verdict: it cleaned its staging area first. A
    # broken connection while starting the task leaves its fate unknown,
    # and a second run could race the first on the same uuids.
    return (isinstance(exc, exception.XenAPIError) and
            exc.error == 'XENAPI_PLUGIN_FAILURE' and len(exc.params) > 1 and
            exc.params[1] == 'RetryableError')


def _plugin_failed(exc):
    # The plugin ran and raised: its class name and message are the
    # plugin's own (os-xenapi's raises bare Exception, IndexError or
    # SubprocessException for a broken VHD, not RetryableError).
    return (isinstance(exc, exception.XenAPIError) and
            exc.error == 'XENAPI_PLUGIN_FAILURE' and len(exc.params) > 1)


def _image_not_found(exc):
    return (isinstance(exc, exception.XenAPIError) and
            exc.error == 'XENAPI_PLUGIN_FAILURE' and len(exc.params) > 2 and
            exc.params[2] == 'ImageNotFound')


class GlancePlugin:
    """dom0's ``glance.py``: ``download_vhd2`` and ``upload_vhd2``.

    :param session: a connected :class:`~.session.XenAPISession`.
    :param retries: extra attempts after a ``RetryableError``.
    :param interval: the first backoff in seconds, doubled up to 15.
    :param timeout: how long one attempt may take, in seconds.
    """

    def __init__(self, session: XenAPISession, retries: int = 3,
                 interval: float = 0.5, timeout: float = 3600.0,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        self.session = session
        self.retries = max(0, int(retries))
        self.interval = interval
        self.timeout = timeout
        self._sleep = sleep

    def _call(self, fn, for_image, secrets, on_failure=None, **kwargs):
        delay = self.interval
        for attempt in range(self.retries + 1):
            try:
                return call(self.session, GLANCE_PLUGIN, fn,
                            secrets=secrets, timeout=self.timeout, **kwargs)
            except exception.XenAPINFSException as exc:
                if _image_not_found(exc):
                    raise cinder_exception.ImageNotFound(image_id=for_image)
                if _plugin_failed(exc) and on_failure is not None:
                    on_failure(exc)   # raises when the image is at fault
                if not _retryable(exc) or attempt == self.retries:
                    if _retryable(exc):
                        raise exception.PluginRetriesExceeded(
                            fn=fn, attempts=attempt + 1, reason=exc)
                    raise
                LOG.warning('dom0 %(fn)s for image %(image)s failed '
                            '(attempt %(n)d of %(total)d): %(err)s; '
                            'retrying in %(delay).1f s.',
                            {'fn': fn, 'image': for_image, 'n': attempt + 1,
                             'total': self.retries + 1, 'err': exc,
                             'delay': delay})
                self._sleep(delay)
                delay = min(delay * 2, 15.0)

    def download_vhd(self, image_id: str, endpoint: str, sr_path: str,
                     uuid_stack: Iterable[str],
                     extra_headers: Mapping[str, str],
                     on_failure: Callable[[Exception], object] | None = None
                     ) -> str:
        """Fetch a XenServer image into the SR; return the leaf's uuid.

        ``uuid_stack`` gives one uuid per VHD of the chain; dom0 pops them
        from the end, the leaf (``0.vhd``) first. The new files become
        VDIs only after ``SR.scan``. ``on_failure(exc)`` is called
        after each failure the plugin itself raised (retryable or not),
        and raises to put the blame on the image.
        """
        result = self._call('download_vhd2', image_id,
                            list(extra_headers.values()),
                            on_failure=on_failure,
                            image_id=image_id, endpoint=endpoint,
                            uuid_stack=list(uuid_stack), sr_path=sr_path,
                            extra_headers=dict(extra_headers), api_version=2)
        try:
            return result['root']['uuid']
        except (TypeError, KeyError):
            raise exception.ImageTransferError(
                reason=_('download_vhd2 of image %(image)s answered '
                         '%(answer)r') % {'image': image_id,
                                          'answer': result})

    def upload_vhd(self, image_id: str, endpoint: str, sr_path: str,
                   vdi_uuids: Iterable[str], extra_headers: Mapping[str, str],
                   properties: Mapping[str, Any] | None = None) -> None:
        """Send a VHD chain (leaf first) to glance as a XenServer tgz."""
        self._call('upload_vhd2', image_id, list(extra_headers.values()),
                   vdi_uuids=list(vdi_uuids), image_id=image_id,
                   endpoint=endpoint, sr_path=sr_path,
                   extra_headers=dict(extra_headers),
                   properties=dict(properties or {}), api_version=2)
