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
"""XAPI's raw data handlers: ``/import_raw_vdi`` and ``/export_raw_vdi``.

Query: ``session_id``, ``vdi`` (a ref or a uuid), ``format`` (``raw``,
the default, or ``vhd``) and an optional ``task_id`` (from
``task.create``), which ends ``success`` or ``failure`` with the error.

Import (``PUT``, body by Content-Length or chunked): ``raw`` is the disk
from offset 0, at most the VDI's size; ``vhd`` is a dynamic or fixed VHD
stream, read forward once, at most the VDI's size. Either way the VDI then
holds exactly that disk, zeros after it; the new content is built beside
the VDI's file and swapped in only when complete, so a failed import
leaves the VDI as it was. Export (``GET``): ``raw`` streams the whole
virtual size; ``vhd`` streams the chain as one dynamic VHD. Both set
Content-Length. A bad session gets 401, a bad query 400, an unknown VDI
404, any other failure 500 (with the failure in the task and the body).
Data connections are closed after each transfer.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse

from xenapinfs_driver.testing.xapi import api
from xenapinfs_driver.testing.xapi import blocks
from xenapinfs_driver.testing.xapi import errors
from xenapinfs_driver.testing.xapi import importer
from xenapinfs_driver.testing.xapi.importer import HttpFailure
from xenapinfs_driver.testing.xapi import sessions
from xenapinfs_driver.testing.xapi import vdifiles
from xenapinfs_driver.testing.xapi import vdis
from xenapinfs_driver.testing.xapi import vhdio
from xenapinfs_driver.vhd import errors as vhderrors

LOG = logging.getLogger(__name__)


class _Request:
    """What both handlers check before touching data."""

    def __init__(self, handler, name: str):
        self.handler = handler
        self.server = handler.server.xapi
        self.db = self.server.db
        self.name = name
        self.task = None
        self.call = api.Call(self.server, name, handler.server.host)
        query = urllib.parse.parse_qs(
            urllib.parse.urlsplit(handler.path).query)
        self.query = {k: v[-1] for k, v in query.items()}

    def start(self):
        """Validate; returns the fault rule that fired, if any."""
        self.server.calls.add(self.name)
        fault = self.server.faults.take(self.name)
        try:
            self.server.sessions.touch(self.query.get('session_id'))
        except errors.XapiError:
            raise HttpFailure(401, ['SESSION_INVALID',
                                    self.query.get('session_id', '')])
        task = self.query.get('task_id')
        if task is not None:
            if not self.db.exists('task', task):
                raise HttpFailure(404, ['HANDLE_INVALID', 'task', task])
            self.task = task
        self.format = self.query.get('format', 'raw')
        if self.format not in ('raw', 'vhd'):
            raise HttpFailure(400, ['INVALID_VALUE', 'format', self.format])
        vdi = self.query.get('vdi', '')
        with self.db.lock:
            if not self.db.exists('VDI', vdi):
                try:
                    vdi = self.db.by_uuid('VDI', vdi)
                except errors.XapiError:
                    raise HttpFailure(404, ['HANDLE_INVALID', 'VDI', vdi])
        self.vdi = vdi
        if fault is not None and fault.action != 'drop':
            self.server.apply_fault(fault, self.call)
        return fault

    def fail(self, exc: HttpFailure, answer: bool = True) -> None:
        LOG.info('%s failed: %s', self.name, ' '.join(exc.details))
        sessions.finish_task(self.db, self.task, error=exc.details)
        if answer:
            self.handler.send_simple(exc.status, ' '.join(exc.details))
        else:
            self.handler.drop()


def _dropped(req: _Request) -> None:
    """A ``drop`` fault: the connection breaks before any data moved.

    XAPI has the request, and so its task, by then: it fails the task as
    it does when a client goes away, and the client may ask it why.
    """
    LOG.info('%s: connection dropped (fault)', req.name)
    req.fail(HttpFailure(500, ['VDI_IO_ERROR', 'connection closed']),
             answer=False)


def _failure(exc) -> HttpFailure:
    if isinstance(exc, HttpFailure):
        return exc
    if isinstance(exc, errors.XapiError):
        return HttpFailure(500, exc.details)
    if isinstance(exc, (vhderrors.VhdError, ValueError)):
        return HttpFailure(500, ['VDI_IO_ERROR', str(exc)])
    return HttpFailure(500, ['VDI_IO_ERROR', '%s: %s' % (
        exc.__class__.__name__, exc)])


# -- import ------------------------------------------------------------------

def import_raw_vdi(handler) -> None:
    req = _Request(handler, 'http:import_raw_vdi')
    handler.close_connection = True
    body = None
    try:
        fault = req.start()
        if fault is not None and fault.action == 'drop':
            _dropped(req)
            return
        body = importer.Body(handler)
        _import(req, body)
    except Exception as exc:
        failure = _failure(exc)
        if not isinstance(exc, (HttpFailure, errors.XapiError)):
            LOG.exception('%s failed', req.name)
        if body is not None:
            body.drain()
        req.fail(failure)
        return
    sessions.finish_task(req.db, req.task)
    if fault is not None and fault.action == 'drop_after':
        handler.drop()
        return
    handler.send_simple(200)


def _import(req: _Request, body: importer.Body) -> None:
    db = req.db
    with db.lock:
        rec, path = vdis.locate(req.call, req.vdi, 'import')
        if rec['read_only']:
            raise errors.XapiError('VDI_READONLY', req.vdi)
        key = vdis.begin(db, req.vdi, 'import')
    try:
        rewriter = vhdio.LeafRewriter(path)
        try:
            imp = importer.Importer(req, rewriter, os.path.dirname(
                os.path.dirname(path)), path)
            if req.format == 'raw':
                imp.raw(body)
            else:
                imp.vhd(body)
            rewriter.finish()
            with db.lock:
                rewriter.commit()
                vdifiles.refresh(db, req.vdi, path)
        except BaseException:
            rewriter.abort()
            raise
    finally:
        vdis.end(db, req.vdi, key)
    LOG.info('%s: VDI %s written (%s, %d bytes)', req.name, rec['uuid'],
             req.format, body.consumed)


# -- export ------------------------------------------------------------------

def export_raw_vdi(handler) -> None:
    req = _Request(handler, 'http:export_raw_vdi')
    handler.close_connection = True
    try:
        fault = req.start()
        if fault is not None and fault.action == 'drop':
            _dropped(req)
            return
        if req.call.disk_full:
            raise errors.DiskFull()
        with req.db.lock:
            rec, path = vdis.locate(req.call, req.vdi, 'export')
            key = vdis.begin(req.db, req.vdi, 'export')
    except Exception as exc:
        req.fail(_failure(exc))
        return
    started = time.monotonic()
    headers_sent = False
    try:
        with vhdio.Chain(path) as chain:
            keys = chain.keys()
            length = chain.size if req.format == 'raw' else \
                vhdio.vhd_length(chain, keys)
            cut = length // 2 if fault is not None and \
                fault.action == 'drop_after' else None
            handler.send_response(200)
            handler.send_header('Content-Type', 'application/octet-stream')
            handler.send_header('Content-Length', str(length))
            handler.send_header('Connection', 'close')
            handler.end_headers()
            headers_sent = True
            out = blocks.Body(handler, cut)
            try:
                _send(chain, keys, req.format, out)
                out.flush()
            except blocks.Cut:
                LOG.info('%s: connection dropped after %d bytes (fault)',
                         req.name, cut)
                # What XAPI's task says when a client goes away mid-way.
                req.fail(HttpFailure(500, ['VDI_IO_ERROR', 'connection '
                                           'closed']), answer=False)
                return
    except Exception as exc:
        failure = _failure(exc)
        if not isinstance(exc, (OSError, errors.XapiError)):
            LOG.exception('%s failed', req.name)
        # Once the headers are out, only the task (and the connection
        # closing early) can tell.
        req.fail(failure, answer=not headers_sent)
        return
    finally:
        vdis.end(req.db, req.vdi, key)
    sessions.finish_task(req.db, req.task)
    LOG.info('%s: VDI %s sent (%s, %d bytes in %.1f s)', req.name,
             rec['uuid'], req.format, length, time.monotonic() - started)


def _send(chain, keys, fmt_name, out) -> None:
    if fmt_name == 'vhd':
        vhdio.write_vhd(chain, out, keys, extents=True)
        return
    parts = blocks.Blocks(chain, keys)
    have = set(keys)
    zeros = bytes(chain.block_size)
    for idx in range(chain.nblocks):
        base = idx * chain.block_size
        n = min(chain.block_size, chain.size - base)
        if idx not in have:
            out.write(memoryview(zeros)[:n])
            continue
        _, data = parts[idx]
        if n < chain.block_size:
            data = memoryview(blocks.materialize(data))[:n]
        out.write(data)
