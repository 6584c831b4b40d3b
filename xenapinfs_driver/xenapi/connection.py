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
"""One logged-in connection to XAPI, over xmlrpc.

The standard xmlrpc transport silently sends a request again when a
reused connection breaks; ours makes one attempt and tells a connect-time
error (:class:`NotSent`: the request never left) from a later one
(:data:`AMBIGUOUS`: it may have been done), so that the session decides
whether to send it again, knowing the method.

A connection belongs to one :class:`.session.XenAPISession` (its
``owner``), whose settings (timeout, TLS context, credentials) it reads
and which hides secrets from what it logs.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import time
from typing import Any, Sequence
from typing import TYPE_CHECKING
import urllib.parse
import xmlrpc.client

from oslo_log import log as logging

if TYPE_CHECKING:   # for annotations only: session imports this module
    from xenapinfs_driver.xenapi.session import XenAPISession

LOG = logging.getLogger(__name__)

# Errors that prove the request never reached the host.
NOT_SENT = (ConnectionRefusedError, socket.gaierror)
# Errors after which the request's fate is unknown.
AMBIGUOUS = (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError)


class NotSent(Exception):
    """Wraps a connect-time error: the request never left."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Transport(xmlrpc.client.SafeTransport):
    """An xmlrpc transport with a timeout, a TLS context and one attempt.

    The standard transport silently sends a request again when a reused
    connection breaks; the session decides that instead, knowing the
    method. Connect errors are told apart from later ones.
    """

    def __init__(self, scheme: str, timeout: float,
                 context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self._scheme = scheme
        self.timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        if self._connection and host == self._connection[0]:
            return self._connection[1]
        chost, self._extra_headers, _x509 = self.get_host_info(host)
        if self._scheme == 'https':
            conn = http.client.HTTPSConnection(
                chost, timeout=self.timeout, context=self.context)
        else:
            conn = http.client.HTTPConnection(chost, timeout=self.timeout)
        self._connection = host, conn
        return conn

    def send_request(self, host: Any, handler: str, request_body: bytes,
                     debug: bool) -> http.client.HTTPConnection:
        conn = self.make_connection(host)
        if conn.sock is None:
            try:
                conn.connect()
            except NOT_SENT as exc:
                raise NotSent(exc)
            except ssl.SSLError:
                raise
            except OSError as exc:
                # A connect timeout or an unreachable network: nothing
                # was sent either.
                raise NotSent(exc)
        return super().send_request(host, handler, request_body, debug)

    def request(self, host: Any, handler: str, request_body: bytes,
                verbose: bool = False) -> tuple:
        return self.single_request(host, handler, request_body, verbose)

    def peer_closed(self) -> bool:
        """Whether the kept socket was closed by the host meanwhile.

        Between calls the host sends nothing: a socket that reads now
        says end of file (a host restarted, a toolstack gone). Sending on
        it would fail after the request may have left, an ambiguous end
        for a call that changes something; a new connection is clean.
        """
        sock = getattr(self._connection[1], 'sock', None) \
            if self._connection else None
        if sock is None:
            return False
        try:
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True


class Connection:
    """One logged-in ``XenAPI.Session`` and its transport."""

    def __init__(self, owner: XenAPISession, url: str) -> None:
        self.owner = owner
        self.url = url
        scheme = urllib.parse.urlsplit(url).scheme
        self.transport = Transport(scheme, owner.timeout, owner.ssl_context)
        self.proxy = owner.xenapi.Session(url, transport=self.transport,
                                          allow_none=False)
        self.last_used = time.monotonic()

    @property
    def handle(self) -> str:
        """The session id this connection logged in with.

        For calls that name the session (``session.get_this_host``) and
        the HTTP handlers' ``session_id``. ``XenAPI.Session`` offers it as
        its ``handle`` attribute (the ``_session`` it keeps).
        """
        return self.proxy.handle

    def login(self) -> None:
        o = self.owner
        self.proxy.login_with_password(o.username, o.password,
                                       o.api_version, o.originator)

    def drop_idle_socket(self) -> None:
        if time.monotonic() - self.last_used > self.owner.idle_timeout \
                or self.transport.peer_closed():
            self.transport.close()

    def request(self, method: str, args: Sequence[Any]) -> Any:
        self.last_used = time.monotonic()
        return self.proxy.xenapi_request(method, tuple(args))

    def logout(self) -> None:
        try:
            self.proxy.xenapi.session.logout()
        except Exception as exc:  # logging out must never hide an error
            LOG.debug('XenAPI logout failed: %s', self.owner.hide(exc))
        finally:
            self.transport.close()
