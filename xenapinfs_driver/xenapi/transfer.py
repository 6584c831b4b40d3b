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
"""Disk data in and out of a VDI through XAPI's HTTP handlers.

``PUT /import_raw_vdi`` and ``GET /export_raw_vdi`` (XenServer 6.5 and
later, any SR type) move a disk as ``raw`` bytes or as one ``vhd`` stream,
without a dom0 plugin. Each transfer runs under a task: the HTTP status
says the bytes moved, the task says whether XAPI wrote them.

The session id travels in the query string, so URLs are never logged.
"""

from __future__ import annotations

import contextlib
import http.client
import shutil
from typing import BinaryIO, Callable, Iterator
from typing import TYPE_CHECKING
import urllib.parse

from cinder.i18n import _

from xenapinfs_driver import exception
from xenapinfs_driver.xenapi import tasks

if TYPE_CHECKING:   # for annotations only
    from xenapinfs_driver.xenapi.session import XenAPISession

CHUNK = 1 << 20
FORMATS = ('raw', 'vhd')


def _path(handler, handle, task, vdi, fmt):
    query = urllib.parse.urlencode([('session_id', handle),
                                    ('task_id', task), ('vdi', vdi),
                                    ('format', fmt)])
    return '/%s?%s' % (handler, query)


def _check_format(fmt):
    if fmt not in FORMATS:
        raise exception.ImageTransferError(
            reason=_('unknown transfer format %r (raw or vhd)') % fmt)


def _finish(session, held, task, what, status, reason):
    """Raise unless both the HTTP answer and the task say success."""
    _raise_if_failed(session, held, task, what)
    if status != 200:
        raise exception.ImageTransferError(
            reason=_('%(what)s answered HTTP %(status)d %(reason)s') % {
                'what': what, 'status': status, 'reason': reason})


def _raise_if_failed(session, held, task, what):
    """Once the task has ended, raise the failure it reports, if any."""
    rec = tasks.settled(session, task, what, held.call)
    if rec.get('status') == 'failure':
        raise exception.XenAPIError(what, rec.get('error_info') or
                                    ['TASK_FAILURE'])


def import_vdi(session: XenAPISession, vdi_ref: str, source: BinaryIO,
               length: int, fmt: str = 'vhd',
               progress: Callable[[int], object] | None = None) -> None:
    """Write ``length`` bytes read from file object ``source`` into a VDI.

    With ``fmt='vhd'`` the bytes are one VHD whose disk becomes the VDI's
    content; with ``'raw'`` they are the disk itself, from offset 0.
    """
    def fill(write):
        left = int(length)
        while left:
            data = source.read(min(CHUNK, left))
            if not data:
                break
            write(data)
            left -= len(data)
    import_vdi_from(session, vdi_ref, length, fill, fmt, progress)


def import_vdi_from(session: XenAPISession, vdi_ref: str, length: int,
                    fill: Callable[[Callable[[bytes], None]], object],
                    fmt: str = 'vhd',
                    progress: Callable[[int], object] | None = None) -> None:
    """Like :func:`import_vdi`, but ``fill(write)`` makes the body.

    ``fill`` calls ``write(data)`` until it has written exactly ``length``
    bytes: a VHD packed on the fly goes straight into the request, with no
    file of its own. Fewer or more bytes fail the transfer.
    """
    _check_format(fmt)
    what = 'PUT /import_raw_vdi'
    length = int(length)
    with session.borrow() as held, tasks.created(
            session, 'import_raw_vdi', held.call) as task:
        conn = session.http_connection()
        sent = 0

        def write(data):
            nonlocal sent
            if sent + len(data) > length:
                raise exception.ImageTransferError(
                    reason=_('the source is longer than the %d bytes '
                             'announced') % length)
            conn.send(data)
            sent += len(data)
            if progress:
                progress(len(data))
        try:
            conn.putrequest('PUT', _path('import_raw_vdi', held.handle,
                                         task, vdi_ref, fmt))
            conn.putheader('Content-Type', 'application/octet-stream')
            conn.putheader('Content-Length', str(length))
            conn.endheaders()
            fill(write)
            if sent < length:
                raise exception.ImageTransferError(
                    reason=_('the source ended %d bytes early')
                    % (length - sent))
            resp = conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException) as exc:
            # The host may still report why it hung up: ask the task.
            conn.close()
            _raise_if_failed(session, held, task, what)
            raise exception.XenAPIConnectionError(url=session.url,
                                                  method=what, reason=exc)
        except BaseException:
            # Our side gave up (a short or failing source): hang up, and
            # let the host notice before the caller touches the VDI again.
            conn.close()
            tasks.settled(session, task, what, held.call)
            raise
        finally:
            conn.close()
        _finish(session, held, task, what, resp.status, resp.reason)


class _Reader:
    """The response body; a broken connection becomes our error."""

    def __init__(self, resp, url, what):
        self._resp = resp
        self._url = url
        self._what = what

    def read(self, n: int = -1) -> bytes:
        try:
            return self._resp.read(n)
        except (OSError, http.client.HTTPException) as exc:
            raise exception.XenAPIConnectionError(
                url=self._url, method=self._what, reason=exc)


@contextlib.contextmanager
def export_vdi(session: XenAPISession, vdi_ref: str,
               fmt: str = 'vhd') -> Iterator[tuple[_Reader, int | None]]:
    """Yield ``(stream, length)`` for the VDI's disk as ``raw`` or ``vhd``.

    ``length`` is ``None`` when the host sends no Content-Length. The
    task is checked when the block ends without error.
    """
    _check_format(fmt)
    what = 'GET /export_raw_vdi'
    with session.borrow() as held, tasks.created(
            session, 'export_raw_vdi', held.call) as task:
        conn = session.http_connection()
        try:
            try:
                conn.request('GET', _path('export_raw_vdi', held.handle,
                                          task, vdi_ref, fmt))
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                _raise_if_failed(session, held, task, what)
                raise exception.XenAPIConnectionError(
                    url=session.url, method=what, reason=exc)
            if resp.status != 200:
                resp.read()
                _finish(session, held, task, what, resp.status, resp.reason)
            length = resp.getheader('Content-Length')
            reader = _Reader(resp, session.url, what)
            try:
                yield reader, (int(length) if length is not None else None)
            except BaseException:
                # The reader gave up (glance refused the upload, say): hang
                # up, and let the host end the task before the caller
                # touches the VDI again (destroying it would be refused).
                # The response holds the socket: closing the connection
                # alone would not hang up.
                resp.close()
                conn.close()
                tasks.settled(session, task, what, held.call)
                raise
            while reader.read(CHUNK):
                pass  # drain, so the task can complete
        finally:
            conn.close()
        _finish(session, held, task, what, 200, 'OK')


def export_to_file(session: XenAPISession, vdi_ref: str, dest: BinaryIO,
                   fmt: str = 'vhd') -> int:
    """Save the VDI's disk to the open file ``dest``; return bytes written."""
    with export_vdi(session, vdi_ref, fmt) as (stream, length):
        before = dest.tell()
        shutil.copyfileobj(stream, dest, CHUNK)
        written = dest.tell() - before
    if length is not None and written != length:
        raise exception.ImageTransferError(
            reason=_('export of VDI sent %(sent)d of %(size)d bytes') % {
                'sent': written, 'size': length})
    return written
