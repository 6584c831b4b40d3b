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
"""A XenAPI session on the PyPI ``XenAPI`` client.

What it adds to ``XenAPI.Session``:

* Login with an originator; a pool member's ``HOST_IS_SLAVE`` answer is
  followed to the master, keeping the URL's scheme and port. Every login
  is logged out on :meth:`XenAPISession.close`.
* A small pool of logged-in connections (:mod:`.connection`), so that
  cinder's green threads can call concurrently (one ``xmlrpc`` connection
  is not safe to share).
  ``SESSION_INVALID`` is handled by the client library, which logs in again.
* Timeouts, TLS verification on by default (a CA bundle can be given),
  and bounded retries with backoff on connection errors. A call that may
  have reached the host is retried only when it cannot change anything
  (getters, ``SR.scan``...): repeating ``VDI.create`` after a lost answer
  could create a second disk. A connection idle for a while is closed
  before reuse, so that a host's idle timeout becomes a clean reconnect
  rather than an ambiguous failure.
* Failures converted once, here, into :mod:`xenapinfs_driver.exception`.
  A connection error tells whether the call may have been done anyway
  (``sent``) or is maybe still running (``timed_out``), for callers that
  undo what a call with a lost answer made. Tasks (``Async.`` calls, and
  what is done when their answer is lost) are :mod:`.tasks`' job.
* Arguments checked before they leave: no ``None`` (XAPI refuses it), and
  integers sent as decimal strings, as XAPI's ``int`` type travels.

Only method names are logged, never arguments: they carry the password at
login and identity tokens in plugin calls.
"""

from __future__ import annotations

import contextlib
import http.client
import queue
import ssl
import threading
import time
from typing import Any, Callable, Collection, Iterable, Iterator
import urllib.parse
import xmlrpc.client

from cinder.i18n import _
from oslo_log import log as logging
from oslo_utils import importutils

from xenapinfs_driver import exception
from xenapinfs_driver.xenapi import connection
from xenapinfs_driver.xenapi import tasks

LOG = logging.getLogger(__name__)

# Calls that change nothing on the host, safe to send again when the
# connection broke after the request may have gone out.
_SAFE_PREFIXES = ('get_', 'logout')
_SAFE_METHODS = frozenset(['SR.scan', 'SR.probe', 'task.destroy',
                           'task.cancel'])


def is_safe(method: str) -> bool:
    """Whether sending ``method`` twice has the same effect as once."""
    name = method.split('.')[-1]
    return method in _SAFE_METHODS or name.startswith(_SAFE_PREFIXES)


def check_args(value: Any, where: str = 'argument') -> Any:
    """Return ``value`` ready for XAPI: ints as strings, no ``None``.

    XAPI's ``int`` travels as a decimal string, and XAPI refuses
    ``<nil/>``; sending either wrong is a programming error here, caught
    before the request leaves rather than as a confusing host failure.
    """
    if value is None:
        raise TypeError('None in XenAPI %s; send "", {} or OpaqueRef:NULL'
                        % where)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return {str(k): check_args(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [check_args(v, where) for v in value]
    return value


def scrub(text: object, secrets: Iterable[str]) -> str:
    """Replace every secret in ``text`` by ``***``."""
    text = str(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, '***')
    return text


class XenAPISession:
    """A pool of logged-in XenAPI connections to one host (the master).

    :param url: ``http(s)://host[:port]`` of any pool member.
    :param username: the XenAPI user, usually ``root``.
    :param password: its password; never logged.
    :param originator: tells the host who is calling (shown in its logs).
    :param timeout: socket timeout of one call, in seconds. Long work goes
        through :meth:`call_async`, which polls a task instead.
    :param retries: how many times a failed connection is retried.
    :param retry_interval: the first backoff, doubled up to 15 seconds.
    :param verify: check the host's TLS certificate (on by default).
    :param ca_bundle: a CA file for the host's certificate.
    :param max_connections: how many calls may run at once.
    :param xenapi: the ``XenAPI`` module (tests may pass another).
    :param sleep: how to wait ``seconds``; kept as the public attribute
        :attr:`sleep`, through which every pause of this layer (backoffs,
        task polls, the search for a lost call's work) goes, so that tests
        pass a recorder and never really wait.
    """

    api_version = '2.0'
    idle_timeout = 30.0

    def __init__(self, url: str, username: str, password: str, *,
                 originator: str = 'xenapinfs-driver',
                 timeout: float = 120.0, retries: int = 3,
                 retry_interval: float = 1.0, verify: bool = True,
                 ca_bundle: str | None = None, max_connections: int = 4,
                 xenapi: Any = None,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        scheme = urllib.parse.urlsplit(url or '').scheme
        if scheme not in ('http', 'https'):
            raise exception.XenAPINFSException(
                reason=_('xenapi_connection_url must be http:// or '
                         'https://, not %r') % url)
        self.xenapi = xenapi or importutils.try_import('XenAPI')
        if self.xenapi is None:
            raise exception.XenAPIMissingError(
                reason=_('import XenAPI failed'))
        self.url = url.rstrip('/')
        self.username = username
        self.password = password
        self.originator = originator
        self.timeout = timeout
        self.retries = retries
        self.retry_interval = retry_interval
        self.max_connections = max(1, int(max_connections))
        self.secrets = {password} if password else set()
        self.ssl_context = self._ssl_context(verify, ca_bundle)
        self.sleep = sleep
        self._idle = queue.LifoQueue()
        self._all = []
        self._slots = 0
        self._lock = threading.Lock()
        self._closed = False
        self.host_ref = None

    @staticmethod
    def _ssl_context(verify, ca_bundle):
        if not verify:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=ca_bundle or None)

    # -- connections --

    def connect(self) -> XenAPISession:
        """Log in once (following ``HOST_IS_SLAVE``) and find this host."""
        self._idle.put(self._grow_or_wait())
        self.host_ref = self._this_host()
        return self

    def _this_host(self):
        with self._borrow() as conn:
            return self._request(conn, 'session.get_this_host',
                                 [conn.handle])

    def _new_connection(self):
        attempt = 0
        while True:
            conn = connection.Connection(self, self.url)
            try:
                conn.login()
            except self.xenapi.Failure as exc:
                details = list(exc.details)
                if details and details[0] == 'HOST_IS_SLAVE' and \
                        len(details) > 1:
                    master = master_url(self.url, details[1])
                    LOG.info('XenAPI host %(old)s is a pool member; using '
                             'the pool master at %(new)s.',
                             {'old': self.url, 'new': master})
                    if master == self.url:
                        raise self.failure('session.login_with_password',
                                           details)
                    self.url = master
                    continue
                if details and details[0] == 'SESSION_AUTHENTICATION_FAILED':
                    raise exception.XenAPIAuthenticationError(
                        url=self.url, user=self.username,
                        reason=self.hide(details))
                raise self.failure('session.login_with_password', details)
            except (connection.NotSent,) + connection.AMBIGUOUS as exc:
                conn.transport.close()
                if isinstance(exc, ssl.SSLError) or attempt >= self.retries:
                    raise exception.XenAPIConnectionError(
                        url=self.url, method='session.login_with_password',
                        reason=self.hide(getattr(exc, 'cause', exc)))
                self._backoff(attempt, 'session.login_with_password', exc)
                attempt += 1
                continue
            with self._lock:
                self._all.append(conn)
            return conn

    @contextlib.contextmanager
    def _borrow(self):
        if self._closed:
            raise exception.XenAPINFSException(
                reason=_('session is closed'))
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = self._grow_or_wait()
        try:
            yield conn
        finally:
            if self._closed:
                conn.logout()
            else:
                self._idle.put(conn)

    def _grow_or_wait(self):
        # The slot is taken under the lock before the (slow) login, so
        # that concurrent callers never log in more than max_connections.
        with self._lock:
            grow = self._slots < self.max_connections
            if grow:
                self._slots += 1
        if not grow:
            return self._idle.get()
        try:
            return self._new_connection()
        except BaseException:
            with self._lock:
                self._slots -= 1
            raise

    @contextlib.contextmanager
    def borrow(self) -> Iterator[_Borrowed]:
        """Hold one connection: its ``handle`` stays valid meanwhile.

        For HTTP transfers, which pass the session id in the URL.
        """
        with self._borrow() as conn:
            yield _Borrowed(self, conn)

    def close(self) -> None:
        """Log out every connection. The session is unusable afterwards."""
        self._closed = True
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.logout()

    def __enter__(self) -> XenAPISession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls --

    def call(self, method: str, *args: Any,
             secrets: Iterable[str] = ()) -> Any:
        """Call ``Class.method`` with ``args`` (the session is prepended).

        :raises XenAPIError: the host answered with a failure.
        :raises XenAPIConnectionError: the host could not be reached.
        """
        with self._borrow() as conn:
            return self._request(conn, method, args, secrets)

    def _request(self, conn, method, args, secrets=()):
        args = check_args(list(args), method)
        attempt = 0
        while True:
            conn.drop_idle_socket()
            LOG.debug('XenAPI call %s', method)
            try:
                return conn.request(method, args)
            except self.xenapi.Failure as exc:
                raise self.failure(method, exc.details, secrets)
            except xmlrpc.client.Fault as exc:
                # The client library's own errors: a session it could not
                # renew, or an answer without Status.
                raise exception.XenAPIError(
                    method, ['XMLRPC_FAULT', str(exc.faultCode),
                             self.hide(exc.faultString, secrets)])
            except (connection.NotSent,) + connection.AMBIGUOUS as exc:
                conn.transport.close()
                sent = not isinstance(exc, connection.NotSent)
                cause = getattr(exc, 'cause', exc)
                retry = (not isinstance(cause, ssl.SSLError) and
                         (not sent or is_safe(method)))
                if not retry or attempt >= self.retries:
                    raise exception.XenAPIConnectionError(
                        url=self.url, method=method,
                        reason=self.hide(cause, secrets),
                        sent=sent, timed_out=isinstance(cause, TimeoutError))
                self._backoff(attempt, method, cause)
                attempt += 1

    def _backoff(self, attempt, method, exc):
        delay = min(self.retry_interval * (2 ** attempt), 15.0)
        LOG.warning('XenAPI %(method)s: connection to %(url)s failed '
                    '(%(err)s); retrying in %(delay).1f s.',
                    {'method': method, 'url': self.url, 'delay': delay,
                     'err': self.hide(getattr(exc, 'cause', exc))})
        self.sleep(delay)

    def hide(self, text: object, secrets: Iterable[str] = ()) -> str:
        """``text`` without the password nor any of ``secrets``."""
        return scrub(text, self.secrets | set(secrets))

    def failure(self, method: str, details: Iterable[object] | None,
                secrets: Iterable[str] = ()) -> exception.XenAPIError:
        """Our error for the host's failure ``details``, secrets hidden."""
        return exception.XenAPIError(
            method, [self.hide(d, secrets) for d in (details or [])])

    def call_async(self, method: str, *args: Any, timeout: float = 3600.0,
                   poll: float = 0.5, secrets: Iterable[str] = ()) -> Any:
        """Run ``Async.<method>`` and wait for its task (see
        :func:`.tasks.call_async`)."""
        return tasks.call_async(self, method, *args, timeout=timeout,
                                poll=poll, secrets=secrets)

    def forget_lost_tasks(self, method: str,
                          tokens: Collection[str]) -> None:
        """Destroy the ended tasks of lost ``Async.<method>`` calls whose
        result names one of ``tokens`` (see :func:`.tasks.forget_lost`)."""
        tasks.forget_lost(self, method, tokens)

    def http_connection(self, timeout: float | None = None
                        ) -> http.client.HTTPConnection:
        """A new HTTP(S) connection to the master, for XAPI's handlers."""
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme == 'https':
            return http.client.HTTPSConnection(
                parts.netloc, timeout=timeout or self.timeout,
                context=self.ssl_context)
        return http.client.HTTPConnection(parts.netloc,
                                          timeout=timeout or self.timeout)


class _Borrowed:
    """A held connection: calls go through it, its handle stays valid."""

    def __init__(self, session, conn):
        self._session = session
        self._conn = conn

    @property
    def handle(self) -> str:
        return self._conn.handle

    def call(self, method: str, *args: Any,
             secrets: Iterable[str] = ()) -> Any:
        return self._session._request(self._conn, method, args, secrets)


def master_url(url: str, address: str) -> str:
    """``url`` with its host replaced by ``address``, scheme and port kept."""
    parts = urllib.parse.urlsplit(url)
    host = address
    if ':' in host and not host.startswith('['):
        host = '[%s]' % host  # an IPv6 address in a URL
    netloc = host if parts.port is None else '%s:%d' % (host, parts.port)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path,
                                    parts.query, parts.fragment)).rstrip('/')
