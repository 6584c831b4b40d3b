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
"""XenServer's dom0 ``glance.py`` plugin, as functions on an SR directory.

The test XenAPI server answers ``host.call_plugin('glance.py',
'download_vhd2' | 'upload_vhd2', ...)`` with these functions; they do what
the plugin does on a real dom0 (os-xenapi's ``glance.py`` and ``utils.py``,
plugin version 2.x), with our VHD library in place of ``tar`` and
``vhd-util``:

* ``download_vhd2`` GETs ``{endpoint}/v2/images/{id}/file``, unpacks the
  gzip'd tar into a staging directory inside the SR while computing its
  md5, checks it against ``ETag``, else ``Content-MD5`` (what glance 33
  sends, as hex), else ``x-image-meta-checksum``, names the VHDs with uuids
  popped from the end of ``uuid_stack`` (``0.vhd``, the leaf, first),
  points each child at its parent and moves them into the SR.
* ``upload_vhd2`` hard-links the chain (leaf first) into a staging
  directory as ``0.vhd`` .. ``n.vhd``, PATCHes the image to ovf/vhd,
  checks that it is ``queued`` and PUTs ``tar -zc .`` of it, chunked.

Errors keep the plugin's classes, because the caller only sees the class
name: ``RetryableError`` (the client retries exactly this name),
``PluginError`` (permanent) and ``Failure`` with ``'ImageNotFound'`` (the
plugin raises ``XenAPI.Failure('ImageNotFound')`` for a 404 on upload). As
in the plugin, ``RetryableError`` is not a ``PluginError``. Where the real
plugin fails with a bare ``Exception`` or ``OSError`` (a gap in the
sequence, a hidden leaf, a missing VHD) these raise ``PluginError``.

Beyond the plugin, and only where it is safe to be stricter: the archive is
never trusted (no links, devices, absolute paths, ``..`` or
subdirectories; duplicates refused), uuids must be uuids, only the leaf
may replace an existing SR file (what callers that reuse a VDI rely on),
and the socket timeout is per connection rather
than the process-wide default. Glance v1 (``api_version=1``, the plugin's
default) no longer exists: it is refused.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import logging
import os
import shutil
import ssl
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid as uuidmod
import zlib

from xenapinfs_driver.vhd import errors as vhd_errors
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import ops
from xenapinfs_driver.vhd import stream
from xenapinfs_driver.vhd import tar

LOG = logging.getLogger(__name__)

# The plugin's socket.setdefaulttimeout(90): a lost glance must not hang
# the call forever.
SOCKET_TIMEOUT = 90
CHUNK = 1 << 16
LEGACY_NAMES = ('snap.vhd', 'image.vhd', 'base.vhd')
SWAP = 'swap.vhd'
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


class PluginError(Exception):
    """A permanent failure: the caller must not retry."""


class RetryableError(Exception):
    """A transient failure: the caller may retry the whole call."""


class Failure(Exception):
    """What the plugin raises as ``XenAPI.Failure('ImageNotFound')``."""


ERRORS = (PluginError, RetryableError, Failure)


def download_vhd2(sr_dir, *, image_id, endpoint, uuid_stack, extra_headers,
                  api_version=1):
    """Download an image into sr_dir; return ``{'root': {'uuid': leaf}}``.

    :param endpoint: glance's full URL, with any path prefix.
    :param uuid_stack: uuids for the VHDs, popped from the end (the leaf
        takes the last one); it is consumed as on dom0.
    """
    _check_api_version(api_version)
    _check_endpoint(endpoint)
    url = '%s/v2/images/%s/file' % (endpoint.rstrip('/'),
                                    urllib.parse.quote(str(image_id), safe=''))
    staging = tempfile.mkdtemp(dir=sr_dir)
    try:
        _download_and_verify(url, extra_headers or {}, staging)
        return _import_vhds(sr_dir, staging, uuid_stack)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def upload_vhd2(sr_dir, *, vdi_uuids, image_id, endpoint, extra_headers,
                properties, api_version=1):
    """Upload the chain vdi_uuids (leaf first) into a queued image."""
    _check_api_version(api_version)
    staging = tempfile.mkdtemp(dir=sr_dir)
    try:
        # Hard links: the SR's files are read, never renamed or changed.
        for seq, vdi_uuid in enumerate(vdi_uuids):
            source = os.path.join(sr_dir, '%s.vhd' % _checked_uuid(vdi_uuid))
            try:
                os.link(source, os.path.join(staging, '%d.vhd' % seq))
            except OSError as exc:
                raise PluginError('cannot stage %s: %s'
                                  % (source, exc.strerror)) from None
        _Uploader(endpoint, image_id, extra_headers or {},
                  properties or {}).run(staging, len(vdi_uuids))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_api_version(api_version):
    if str(api_version) != '2':
        raise PluginError('glance API v%s is not supported: glance v1 was '
                          'removed; call with api_version=2' % api_version)


def _check_endpoint(endpoint):
    # urllib would also open file:// and ftp:// URLs.
    parts = urllib.parse.urlsplit(str(endpoint))
    if parts.scheme not in ('http', 'https') or not parts.netloc:
        raise PluginError('not an http(s) endpoint: %s' % endpoint)
    return parts


def _checked_uuid(value) -> str:
    """A uuid becomes a file name in the SR: nothing else may."""
    try:
        return str(uuidmod.UUID(str(value)))
    except ValueError:
        raise PluginError('not a uuid: %r' % (value,)) from None


# -- download -----------------------------------------------------------------

class _HashingReader:
    """The response body, read in bounded pieces and hashed on the way."""

    def __init__(self, resp):
        self.resp = resp
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.count = 0

    def read(self, n: int) -> bytes:
        data = self.resp.read(n)
        self.md5.update(data)
        self.count += len(data)
        return data


def _inflated(read):
    """The inflated pieces of a gzip stream, at most CHUNK bytes each.

    Concatenated members are one stream, as gzip(1) reads them; zeros after
    the last member (tape padding) are accepted, anything else is not.
    """
    dec = zlib.decompressobj(31)
    started = False
    buf = b''
    while True:
        if not buf:
            buf = read(CHUNK)
            if not buf:
                break
        if dec.eof:
            if not buf.strip(b'\0'):
                buf = b''
                continue
            dec = zlib.decompressobj(31)
        started = True
        while True:
            out = dec.decompress(buf, CHUNK)
            if out:
                yield out
            if dec.eof:
                buf = dec.unused_data
                break
            buf = dec.unconsumed_tail
            # A full piece may leave output pending inside zlib.
            if not buf and len(out) < CHUNK:
                break
    if not started:
        raise vhd_errors.ArchiveError('the image is empty')
    if not dec.eof:
        raise vhd_errors.Truncated('the gzip stream ends early')


def _member_name(member) -> str | None:
    """The file name a member is unpacked as; None to skip it."""
    name = member.name
    parts = [p for p in name.split('/') if p not in ('', '.')]
    if name.startswith('/') or '..' in parts:
        raise vhd_errors.ArchiveError('unsafe member name', member=name)
    if member.kind == tar.DIRECTORY and not parts:
        return None                       # "./", what tar -c . writes first
    if member.kind != tar.REGULAR:
        raise vhd_errors.ArchiveError('a %s member is not allowed'
                                      % member.kind, member=name)
    if len(parts) != 1:
        raise vhd_errors.ArchiveError('a member in a subdirectory is not '
                                      'allowed', member=name)
    return parts[0]


def _extract(reader, staging):
    """``tar -zx`` of the body into staging, without trusting it."""
    src = stream.Source(_inflated(reader.read), 'image')
    seen = set()
    for member in tar.iter_members(src):
        name = _member_name(member)
        if name is None:
            continue
        if name in seen:
            raise vhd_errors.ArchiveError('duplicate member', member=name)
        seen.add(name)
        with open(os.path.join(staging, name), 'xb') as out:
            for piece in src.slices(member.size, member.name):
                out.write(piece)
    # The rest of the body: the gzip trailer is checked and the md5 covers
    # every byte, as when tar reads its input to the end.
    while src.read_upto(CHUNK):
        pass


def _download_and_verify(url, headers, staging):
    request = urllib.request.Request(url, headers=headers)
    # No proxy from the environment: the upload side (http.client) uses
    # none either, and a dom0 talks to glance directly.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        resp = opener.open(request, timeout=SOCKET_TIMEOUT)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise RetryableError('HTTP %d from %s: %s'
                             % (exc.code, url, exc.reason)) from None
    except urllib.error.URLError as exc:
        raise RetryableError('cannot reach %s: %s'
                             % (url, exc.reason)) from None
    except (http.client.HTTPException, OSError) as exc:
        raise RetryableError('%s from %s: %s'
                             % (type(exc).__name__, url, exc)) from None
    reader = _HashingReader(resp)
    with resp:
        try:
            _extract(reader, staging)
        except (vhd_errors.VhdError, zlib.error, OSError,
                http.client.HTTPException) as exc:
            raise RetryableError('cannot unpack %s after %d bytes: %s'
                                 % (url, reader.count, exc)) from None
        expected = (resp.headers.get('etag')
                    or resp.headers.get('content-md5')
                    or resp.headers.get('x-image-meta-checksum'))
    checksum = reader.md5.hexdigest()
    LOG.info('read %d bytes from %s', reader.count, url)
    if expected is None:
        LOG.info('no checksum header to compare md5 %s with', checksum)
    elif expected != checksum:
        raise RetryableError('checksum %s from glance does not match the '
                             'md5 %s of the %d bytes read from %s'
                             % (expected, checksum, reader.count, url))


def _handle_old_style_images(staging):
    """snap, image, base -> 0, 1, 2 (numbered in that order, as found);
    a lone VHD of any name becomes 0.vhd."""
    seq = 0
    for name in LEGACY_NAMES:
        path = os.path.join(staging, name)
        if os.path.exists(path):
            target = os.path.join(staging, '%d.vhd' % seq)
            if os.path.exists(target):
                # The plugin would silently replace it: a layer lost.
                raise PluginError('Corrupt image. It has both %s and '
                                  '%d.vhd' % (name, seq))
            os.rename(path, target)
            seq += 1
    names = os.listdir(staging)
    if len(names) == 1 and names[0] != '0.vhd' and names[0].endswith('.vhd'):
        os.rename(os.path.join(staging, names[0]),
                  os.path.join(staging, '0.vhd'))


def _sequenced_vhds(staging) -> list:
    """0.vhd .. n-1.vhd, checked to have no gaps; swap.vhd is ignored."""
    names = sorted(os.listdir(staging))
    count = sum(1 for n in names if n.endswith('.vhd') and n != SWAP)
    for seq in range(count):
        if not os.path.exists(os.path.join(staging, '%d.vhd' % seq)):
            raise PluginError('Corrupt image. Expected seq number: %d. '
                              'Files: %s' % (seq, names))
    if not count:
        raise PluginError('Corrupt image. No VHD in it. Files: %s' % names)
    return [os.path.join(staging, '%d.vhd' % seq) for seq in range(count)]


def _import_vhds(sr_dir, staging, uuid_stack):
    _handle_old_style_images(staging)
    numbered = _sequenced_vhds(staging)
    if len(uuid_stack) < len(numbered):
        raise PluginError('the image holds %d VHDs but uuid_stack only %d '
                          'uuids' % (len(numbered), len(uuid_stack)))
    files = []
    for seq, path in enumerate(numbered):
        vdi_uuid = _checked_uuid(uuid_stack.pop())
        target = os.path.join(staging, '%s.vhd' % vdi_uuid)
        # The real plugin's os.rename replaces any file. Callers rely on
        # that for the leaf only: cinder's driver puts an existing VDI's
        # uuid last in the stack, so that the image lands in that VDI. A
        # parent replacing a file would corrupt other VDIs: refused here.
        if os.path.lexists(target) or (seq and os.path.lexists(
                os.path.join(sr_dir, '%s.vhd' % vdi_uuid))):
            raise PluginError('%s.vhd already exists' % vdi_uuid)
        os.rename(path, target)
        files.append(target)
    try:
        # From the base up, as the plugin runs vhd-util modify -p: each
        # child records its parent's time stamp, which relinking changes.
        for child, parent in reversed(list(zip(files, files[1:]))):
            ops.set_parent(child, parent)
        with image.VhdFile(files[0]) as leaf:
            if leaf.footer.hidden:
                raise PluginError('VHD %s is marked as hidden without child'
                                  % os.path.basename(files[0]))
        chain = ops.chain_of(files[0])
    except vhd_errors.VhdError as exc:
        raise PluginError('invalid VHD chain: %s' % exc) from None
    if chain != [os.path.abspath(f) for f in files]:
        raise PluginError('the chain of %s is %s, not the %d VHDs of the '
                          'image' % (os.path.basename(files[0]),
                                     [os.path.basename(c) for c in chain],
                                     len(files)))
    moved = []
    try:
        # Parents first: the leaf, which may replace a live VDI's file,
        # goes last, when its whole chain is in place.
        for path in reversed(files):
            dest = os.path.join(sr_dir, os.path.basename(path))
            os.rename(path, dest)
            moved.append(dest)
    except BaseException:
        for dest in moved:
            os.unlink(dest)
        raise
    leaf_uuid = os.path.basename(files[0])[:-len('.vhd')]
    return {'root': {'uuid': leaf_uuid}}


# -- upload -------------------------------------------------------------------

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
        if len(self.buf) >= CHUNK:
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


class _Uploader:
    """The plugin's v2 upload: PATCH the formats, check queued, PUT."""

    def __init__(self, endpoint, image_id, headers, properties):
        parts = _check_endpoint(endpoint)
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
                self.parts.netloc, timeout=SOCKET_TIMEOUT,
                context=ssl.create_default_context())
        return http.client.HTTPConnection(self.parts.netloc,
                                          timeout=SOCKET_TIMEOUT)

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
