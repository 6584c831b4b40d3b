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
"""HTTP/1.1 on a socket: XML-RPC at ``POST /`` (and ``/RPC2``), the data
handlers at ``PUT /import_raw_vdi`` and ``GET /export_raw_vdi``.

Connections are kept alive between XML-RPC calls, one thread each; TLS,
when configured, is negotiated in that thread, so a slow client never
holds up the others. A body XML-RPC cannot parse gets HTTP 500, as XAPI
answers. Log lines name the method or the path, never parameters: a
``session_id`` in a URL is shown as ``...``.
"""

from __future__ import annotations

import http.server
import logging
import re
import socket
import ssl
import sys
import threading
import xmlrpc.client

from xenapinfs_driver.testing.xapi import faults
from xenapinfs_driver.testing.xapi import transfer

LOG = logging.getLogger(__name__)
MAX_XMLRPC = 64 << 20
HANDSHAKE_TIMEOUT = 30
IDLE_TIMEOUT = 300
_SECRET = re.compile(r'(session_id=)[^&\s]*')


def redact(text: str) -> str:
    return _SECRET.sub(r'\1...', text)


class Handler(http.server.BaseHTTPRequestHandler):
    """One connection; the listener (``self.server``) knows the host."""

    protocol_version = 'HTTP/1.1'
    server_version = 'xapi-test'
    sys_version = ''
    timeout = IDLE_TIMEOUT

    def log_message(self, format, *args):
        LOG.debug('%s %s', self.address_string(), redact(format % args))

    def log_request(self, code='-', size='-'):
        path = self.path.split('?', 1)[0] if hasattr(self, 'path') else ''
        LOG.debug('%s %s %s %s', self.address_string(),
                  getattr(self, 'command', ''), path, code)

    def send_simple(self, code: int, text: str = '', close=True) -> None:
        """A complete response with a short text body."""
        body = text.encode('utf-8')
        self.send_response(code)
        self.send_header('Content-Type', 'text/plain; charset=utf-8')
        self.send_header('Content-Length', str(len(body)))
        if close:
            self.send_header('Connection', 'close')
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def drop(self) -> None:
        """Close without a word (a fault rule asked for it)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_POST(self):
        if self.path.split('?', 1)[0] not in ('/', '/RPC2'):
            self.send_simple(404, 'no such handler')
            return
        try:
            length = int(self.headers.get('Content-Length', ''))
        except ValueError:
            self.send_simple(411, 'XML-RPC needs a Content-Length')
            return
        if not 0 <= length <= MAX_XMLRPC:
            self.send_simple(413, 'request too large')
            return
        body = self.rfile.read(length)
        try:
            params, name = xmlrpc.client.loads(body)
        except Exception as exc:    # expat, or a bad value in the XML
            LOG.info('unparseable XML-RPC request: %s', exc)
            self.send_simple(500, 'cannot parse the XML-RPC request')
            return
        if not name:
            self.send_simple(500, 'no methodName in the request')
            return
        try:
            response, drop_after = self.server.xapi.rpc(
                name, params, self.server)
        except faults.Drop:
            self.drop()
            return
        try:
            data = xmlrpc.client.dumps((response,), methodresponse=True,
                                       allow_none=False)
        except (TypeError, OverflowError) as exc:
            # A handler returned None or an int XML-RPC cannot carry: a
            # bug here, told to the client the way XAPI tells one.
            LOG.error('%s: cannot encode the answer: %s', name, exc)
            data = xmlrpc.client.dumps(({
                'Status': 'Failure',
                'ErrorDescription': ['INTERNAL_ERROR', str(exc)]},),
                methodresponse=True)
        if drop_after:
            self.drop()
            return
        raw = data.encode('utf-8')
        self.send_response(200)
        self.send_header('Content-Type', 'text/xml')
        self.send_header('Content-Length', str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_PUT(self):
        if self.path.split('?', 1)[0] == '/import_raw_vdi':
            transfer.import_raw_vdi(self)
        else:
            self.send_simple(404, 'no such handler')

    def do_GET(self):
        if self.path.split('?', 1)[0] == '/export_raw_vdi':
            transfer.export_raw_vdi(self)
        else:
            self.send_simple(404, 'no such handler')


class Listener(http.server.ThreadingHTTPServer):
    """One listening socket of the server, for one host of the pool.

    :param master_address: None on the master; on a pool member, what a
        login there answers in ``HOST_IS_SLAVE``.
    """

    daemon_threads = True
    block_on_close = False          # stop() closes and joins instead

    def __init__(self, address, xapi, host: str,
                 master_address: str | None = None,
                 ssl_context: ssl.SSLContext | None = None):
        self.xapi = xapi
        self.host = host
        self.master_address = master_address
        self.ssl_context = ssl_context
        self._lock = threading.Lock()
        self._conns = set()
        self._workers = []
        super().__init__(address, Handler)

    def process_request(self, request, client_address):
        thread = threading.Thread(target=self.process_request_thread,
                                  args=(request, client_address),
                                  name='xapi-conn', daemon=True)
        with self._lock:
            self._workers = [t for t in self._workers if t.is_alive()]
            self._workers.append(thread)
        thread.start()

    def finish_request(self, request, client_address):
        # Headers and body go out in separate writes: without this, Nagle
        # and the client's delayed ACK cost 40 ms a call.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = request
        if self.ssl_context is not None:
            request.settimeout(HANDSHAKE_TIMEOUT)
            try:
                conn = self.ssl_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                # str(exc): a record holding the exception would hold
                # the socket open for as long as the record lives.
                LOG.info('TLS handshake with %s failed: %s',
                         client_address[0], str(exc))
                return
        with self._lock:
            self._conns.add(conn)
        try:
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            with self._lock:
                self._conns.discard(conn)
            if conn is not request:
                conn.close()

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            # The client went away: its business, not a server fault.
            LOG.info('connection from %s ended: %s', client_address[0], exc)
            return
        LOG.exception('connection from %s failed', client_address[0])

    def close_all(self, timeout: float = 5.0) -> None:
        """Stop accepting, end every connection, join their threads."""
        self.shutdown()
        self.server_close()
        with self._lock:
            conns = list(self._conns)
            workers = list(self._workers)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in workers:
            thread.join(timeout)
            if thread.is_alive():
                LOG.warning('a connection thread did not end in %.0f s',
                            timeout)
