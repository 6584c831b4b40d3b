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
"""The upload half of the dom0 ``glance.py`` stand-in.

``Uploader`` does the plugin's glance v2 upload of a staged chain: PATCH
the image to ovf/vhd, check that it is ``queued``, PUT ``tar -zc .`` of
the staging directory, chunked, and map glance's answer onto the plugin's
errors (see ``dom0_glance`` for the contract).
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import os
import ssl
import tarfile
import urllib.parse

from xenapinfs_driver.testing.xapi import dom0_plugin

LOG = logging.getLogger(__name__)
# The plugin's errors, shared with the other half.
PluginError = dom0_plugin.PluginError
RetryableError = dom0_plugin.RetryableError
Failure = dom0_plugin.Failure
PATCH_TYPE = 'application/openstack-images-v2.1-json-patch'
# GNU tar -z runs gzip at its default level.
DEFAULT_COMPRESSION = 6

PERMANENT = frozenset((400, 401, 402, 403, 405, 406, 407, 409, 410, 411,
                       412, 413, 414, 415, 416, 417, 422, 423, 424, 426, 501,
                       505, 510))
EPHEMERAL = frozenset((408, 500, 502, 503, 504, 507))
# The plugin accepts only 204; glance 33 answers 204, other glances or
# proxies may say 200 or 201 for the same success.
UPLOADED = frozenset((200, 201, 204))


def _check_status(status, image_id, url):
    """Raise what the plugin raises for an HTTP error status."""
    if status == 404:
        raise Failure('ImageNotFound')
    if status in PERMANENT:
        raise PluginError('Got Permanent Error response [%d] while uploading '
                          'image [%s] to glance [%s]' % (status, image_id,
                                                         url))
    kind = 'Ephemeral' if status in EPHEMERAL else 'Unexpected'
    raise RetryableError('Got %s Error response [%d] while uploading image '
                         '[%s] to glance [%s]' % (kind, status, image_id,
                                                  url))


class _ChunkedBody:
    """A file object whose writes go out as HTTP/1.1 chunks."""

    def __init__(self, conn):
        self.conn = conn
        self.buf = bytearray()
        self.sent = 0

    def write(self, data) -> int:
        self.buf += data
        if len(self.buf) >= dom0_plugin.CHUNK:
            self._send()
        return len(data)

    def flush(self) -> None:
        pass

    def _send(self) -> None:
        if self.buf:
            self.conn.send(b'%x\r\n' % len(self.buf) + self.buf + b'\r\n')
            self.sent += len(self.buf)
            self.buf = bytearray()

    def finish(self) -> None:
        self._send()
        self.conn.send(b'0\r\n\r\n')


def _write_tarball(out, staging, count, level):
    """``tar -zc --directory=staging .``: ./, then ./0.vhd .. ./n.vhd."""
    with gzip.GzipFile(filename='', mode='wb', fileobj=out,
                       compresslevel=level) as gz:
        with tarfile.open(fileobj=gz, mode='w|',
                          format=tarfile.GNU_FORMAT) as tf:
            tf.add(staging, arcname='.', recursive=False)
            for seq in range(count):
                path = os.path.join(staging, '%d.vhd' % seq)
                with open(path, 'rb') as f:
                    info = tf.gettarinfo(arcname='./%d.vhd' % seq, fileobj=f)
                    tf.addfile(info, f)


class Uploader:
    """The plugin's v2 upload: PATCH the formats, check queued, PUT."""

    def __init__(self, endpoint, image_id, headers, properties):
        parts = dom0_plugin.check_endpoint(endpoint)
        self.parts = parts
        self.image_id = image_id
        self.headers = headers
        self.properties = properties
        self.path = '%s/v2/images/%s' % (parts.path.rstrip('/'),
                                         urllib.parse.quote(str(image_id),
                                                            safe=''))
        self.url = '%s://%s%s/file' % (parts.scheme, parts.netloc, self.path)

    def _connect(self):
        if self.parts.scheme == 'https':
            return http.client.HTTPSConnection(
                self.parts.netloc, timeout=dom0_plugin.SOCKET_TIMEOUT,
                context=ssl.create_default_context())
        return http.client.HTTPConnection(
            self.parts.netloc, timeout=dom0_plugin.SOCKET_TIMEOUT)

    def _request(self, method, path, body=None, headers=None):
        """One request on a new connection: (status, body bytes)."""
        conn = self._connect()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise RetryableError('%s %s: %s: %s' % (
                method, self.url, type(exc).__name__, exc)) from None
        finally:
            conn.close()

    def run(self, staging, count):
        self._update_meta()
        self._check_queued()
        self._put(staging, count)

    def _update_meta(self):
        body = [{'op': 'add', 'path': '/container_format', 'value': 'ovf'},
                {'op': 'add', 'path': '/disk_format', 'value': 'vhd'},
                {'op': 'add', 'path': '/visibility', 'value': 'private'}]
        for key, value in self.properties.items():
            body.append({'op': 'add', 'path': '/' + key.replace('_', '-'),
                         'value': str(value)})
        headers = {'Content-Type': PATCH_TYPE}
        headers.update(self.headers)
        status, _ = self._request('PATCH', self.path, json.dumps(body),
                                  headers)
        if status != 200:
            # As in the plugin: the status check that follows decides.
            LOG.error('image %s metadata not updated: HTTP %d',
                      self.image_id, status)

    def _check_queued(self):
        status, body = self._request('GET', self.path, headers=self.headers)
        if status != 200:
            _check_status(status, self.image_id, self.url)
        try:
            state = json.loads(body)['status']
        except (ValueError, KeyError, TypeError):
            raise RetryableError('unreadable image record from %s'
                                 % self.url) from None
        if state != 'queued':
            raise PluginError('Got Permanent Error while uploading image '
                              '[%s] to glance [%s]. Message: Cannot upload '
                              'data for image %s as the image status is %s'
                              % (self.image_id, self.url, self.image_id,
                                 state))

    def _put(self, staging, count):
        level = self.properties.get('xenapi_image_compression_level')
        try:
            level = int(level) if level is not None else DEFAULT_COMPRESSION
        except ValueError:
            level = DEFAULT_COMPRESSION
        if not 1 <= level <= 9:
            level = DEFAULT_COMPRESSION
        conn = self._connect()
        try:
            body = _ChunkedBody(conn)
            try:
                conn.putrequest('PUT', self.path + '/file',
                                skip_accept_encoding=True)
                headers = {'Content-Type': 'application/octet-stream',
                           'Transfer-Encoding': 'chunked'}
                headers.update(self.headers)
                for key, value in headers.items():
                    conn.putheader(key, value)
                conn.endheaders()
                _write_tarball(body, staging, count, level)
                body.finish()
            except (OSError, http.client.HTTPException) as exc:
                # Glance may have answered early (a refusal) and closed:
                # its status says more than the broken pipe does.
                status = self._early_status(conn)
                if status is None:
                    raise RetryableError('PUT %s failed after %d bytes: %s'
                                         % (self.url, body.sent,
                                            exc)) from None
            else:
                try:
                    resp = conn.getresponse()
                    status = resp.status
                    text = resp.read(4096)
                except (OSError, http.client.HTTPException) as exc:
                    raise RetryableError('PUT %s: no response: %s'
                                         % (self.url, exc)) from None
                if status in UPLOADED:
                    LOG.info('wrote %d bytes to %s', body.sent, self.url)
                    return
                LOG.error('HTTP %d writing %s: %s', status, self.url,
                          text.decode('utf-8', 'replace')[:500])
        finally:
            conn.close()
        _check_status(status, self.image_id, self.url)

    @staticmethod
    def _early_status(conn):
        try:
            resp = conn.getresponse()
            resp.read(4096)
            return resp.status
        except (OSError, http.client.HTTPException):
            return None
