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
"""Plain http.client calls to the data handlers, as a client makes them."""

import http.client
import io
import os
import urllib.parse

from xenapinfs_driver.vhd import writer

MiB = 1 << 20


def _conn(url, timeout=30, context=None):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == 'https':
        return http.client.HTTPSConnection(parts.hostname, parts.port,
                                           timeout=timeout, context=context)
    return http.client.HTTPConnection(parts.hostname, parts.port,
                                      timeout=timeout)


def query(session, vdi, fmt=None, task=None) -> str:
    q = {'session_id': session.handle, 'vdi': vdi}
    if fmt:
        q['format'] = fmt
    if task:
        q['task_id'] = task
    return urllib.parse.urlencode(q)


def put(url, qs, body: bytes, chunked=False, chunk=256 * 1024):
    """PUT /import_raw_vdi; returns (status, text)."""
    conn = _conn(url)
    try:
        if chunked:
            conn.putrequest('PUT', '/import_raw_vdi?' + qs)
            conn.putheader('Transfer-Encoding', 'chunked')
            conn.endheaders()
            for i in range(0, len(body), chunk):
                piece = body[i:i + chunk]
                conn.send(b'%x\r\n%s\r\n' % (len(piece), piece))
            conn.send(b'0\r\n\r\n')
        else:
            conn.request('PUT', '/import_raw_vdi?' + qs, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def get(url, qs):
    """GET /export_raw_vdi; returns (status, headers, body)."""
    conn = _conn(url)
    try:
        conn.request('GET', '/export_raw_vdi?' + qs)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def dynamic_vhd(disk: bytes, size: int | None = None) -> bytes:
    """A tap dynamic VHD holding disk (zero blocks left out)."""
    size = size or len(disk)
    bs = writer.DEFAULT_BLOCK
    blocks = {}
    for idx in range(-(-size // bs)):
        data = disk[idx * bs:(idx + 1) * bs].ljust(bs, b'\0')
        if data.strip(b'\0'):
            blocks[idx] = (None, data)
    out = io.BytesIO()
    writer.write_dynamic(out, size, blocks)
    return out.getvalue()


def import_data(server, session, vdi, data: bytes, fmt='raw', **kwargs):
    """Import data into vdi; asserts the handler said 200."""
    status, text = put(server.url, query(session, vdi, fmt), data, **kwargs)
    assert status == 200, (status, text)


def export_data(server, session, vdi, fmt='raw') -> bytes:
    status, _, body = get(server.url, query(session, vdi, fmt))
    assert status == 200, status
    return body


def vdi_file(server, session, vdi) -> str:
    """Where a VDI's VHD file is on disk."""
    x = session.xenapi
    sr_uuid = x.SR.get_uuid(x.VDI.get_SR(vdi))
    return os.path.join(server.root, 'var', 'run', 'sr-mount', sr_uuid,
                        '%s.vhd' % x.VDI.get_location(vdi))


def pattern(size: int, seed: int = 0, holes: bool = True) -> bytes:
    """Recognisable data: every 4 KiB page numbered, some pages zero."""
    out = bytearray(size)
    for page in range(size // 4096):
        if holes and (page * 7 + seed) % 5 == 0:
            continue
        stamp = b'%d:%d;' % (seed, page)
        out[page * 4096:(page + 1) * 4096] = (stamp * (4096 // len(stamp)
                                                       + 1))[:4096]
    return bytes(out)
