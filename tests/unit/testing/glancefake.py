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
"""A scripted glance v2 for the dom0 plugins, and the tgz images it serves.

``fake_glance`` serves ``/v2/images/<id>/file`` (GET: ``script.download``,
a (status, headers, body) triple; PUT: ``script.put_status``), the image
record (GET: ``{'status': script.get_status}``) and its PATCH, and keeps
every request in ``script.requests`` as (method, path, headers, body):
the behaviours a real glance cannot be made to show.
"""

import http.server
import io
import json
import tarfile
import threading

import pytest


def tgz_bytes(members, directories=('.',)) -> bytes:
    """A tar.gz of [(name, bytes)], directory entries ('./') first."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w:gz', compresslevel=1,
                      format=tarfile.GNU_FORMAT) as tf:
        for name in directories:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Script:
    """What the fake glance answers, and what it was sent."""

    def __init__(self):
        self.download = (200, {}, b'')
        self.get_status = 'queued'
        self.put_status = 204
        self.requests = []


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args):
        pass

    def _reply(self, status, headers=None, body=b''):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self):
        if self.headers.get('Transfer-Encoding') == 'chunked':
            out = b''
            while True:
                size = int(self.rfile.readline().strip(), 16)
                out += self.rfile.read(size)
                self.rfile.readline()
                if not size:
                    return out
        return self.rfile.read(int(self.headers.get('Content-Length', 0)))

    def do_GET(self):
        script = self.server.script
        script.requests.append(('GET', self.path, dict(self.headers), b''))
        if self.path.endswith('/file'):
            self._reply(*script.download)
        else:
            self._reply(200, {'Content-Type': 'application/json'},
                        json.dumps({'status': script.get_status}).encode())

    def do_PATCH(self):
        self.server.script.requests.append(
            ('PATCH', self.path, dict(self.headers), self._body()))
        self._reply(200)

    def do_PUT(self):
        script = self.server.script
        script.requests.append(('PUT', self.path, dict(self.headers),
                                self._body()))
        self._reply(script.put_status)


@pytest.fixture
def fake_glance():
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    server.daemon_threads = True
    server.script = Script()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,),
                              daemon=True)
    thread.start()
    server.url = 'http://127.0.0.1:%d/image-api' % server.server_port
    yield server
    server.shutdown()
    server.server_close()
    thread.join()
