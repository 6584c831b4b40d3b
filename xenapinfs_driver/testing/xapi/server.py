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
"""``XapiServer``: the listeners, the database and the files, together.

The VHD files and the database file (``persist``) are under the root. A
server restarted over the same root is the same host, with the same
records, refs and uuids, but no session and no task (``restore``). With
``forget_srs`` it starts as a host that forgot its SRs: a client finds
them again with ``SR.probe``, ``SR.introduce``, ``PBD.create`` and
``PBD.plug`` (which scans).

In pool mode a second listener serves host B, a pool member: a login
there answers ``HOST_IS_SLAVE`` with the master listener's IP, so clients
must reconnect to that IP with the same scheme and port. Unless told
otherwise, both listeners get the same port (on 127.0.0.1 and 127.0.0.2).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import socketserver
import ssl
import threading
import time

from xenapinfs_driver.testing.xapi import api
from xenapinfs_driver.testing.xapi import collector as collectormod
from xenapinfs_driver.testing.xapi import control
from xenapinfs_driver.testing.xapi import db as dbmod
from xenapinfs_driver.testing.xapi import errors
from xenapinfs_driver.testing.xapi import faults as faultsmod
from xenapinfs_driver.testing.xapi import generic
from xenapinfs_driver.testing.xapi import hosts
from xenapinfs_driver.testing.xapi import persist
from xenapinfs_driver.testing.xapi import plugins as pluginsmod
from xenapinfs_driver.testing.xapi import restore
from xenapinfs_driver.testing.xapi import rpc
from xenapinfs_driver.testing.xapi import schema
from xenapinfs_driver.testing.xapi import sessions as sessionsmod
from xenapinfs_driver.testing.xapi import srs
from xenapinfs_driver.testing.xapi import storage as storagemod
from xenapinfs_driver.testing.xapi import vdis

LOG = logging.getLogger(__name__)
BIND_ATTEMPTS = 20
JOIN_TIMEOUT = 5.0
POLL = 0.05                     # how soon stop() is noticed


def _address(host: str) -> str:
    """The IP a host's PIF and HOST_IS_SLAVE show for a listen address."""
    return {'': '127.0.0.1', '0.0.0.0': '127.0.0.1', '::': '::1'}.get(
        host, host)


class _Listener(rpc.Listener):
    def __init__(self, address, *args, **kwargs):
        if ':' in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, *args, **kwargs)

    def server_bind(self):
        # HTTPServer.server_bind resolves the name (getfqdn), which can
        # hang on a machine without DNS: not needed here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class XapiServer:
    """A XenAPI server on loopback, backed by VHD files under root.

    :param exports: (server, path) pairs: the NFS exports that exist.
    :param sr_size: a quota in bytes per export (reported as the SRs'
        physical size); None for the real file system's.
    :param tls_cert: with tls_key, PEM files: the listeners speak HTTPS.
    :param forget_srs: start as a host that forgot its SRs (records
        gone, files kept).
    :param gc: ``auto``: the storage manager's garbage collector runs
        gc_delay seconds after the calls that leave work for it; ``off``:
        only the ``testing.gc_*`` controls run it (see ``collector``).
    :param dom0_plugins: who answers ``host.call_plugin``: ``'builtin'``
        (our stand-in) or ``'os-xenapi'`` (its real plugins, see
        ``osxenapi``).
    :raises persist.CorruptDatabase: the root's database file is not one.
    """

    def __init__(self, root: str, username: str = 'root',
                 password: str = '', listen=('127.0.0.1', 0),
                 slave_listen=None, exports=(), sr_size: int | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 forget_srs: bool = False, gc: str = 'auto',
                 gc_delay: float = collectormod.DEFAULT_DELAY,
                 dom0_plugins: str = 'builtin'):
        if bool(tls_cert) != bool(tls_key):
            raise ValueError('tls_cert and tls_key go together')
        self.root = os.path.realpath(root)
        self.listen = (listen[0], int(listen[1]))
        self.slave_listen = None if slave_listen is None else \
            (slave_listen[0], int(slave_listen[1]))
        self.tls = (tls_cert, tls_key) if tls_cert else None
        self.db = dbmod.Database()
        self.storage = storagemod.Storage(self.root, exports, sr_size)
        self.sessions = sessionsmod.Sessions(self.db, username, password)
        self.faults = faultsmod.Faults()
        self.calls = faultsmod.CallLog()
        self.plugins = pluginsmod.Plugins(self, dom0_plugins)
        self.collector = collectormod.Collector(self, gc, gc_delay)
        self.master_address = _address(self.listen[0])
        self.store = persist.Store(self.root)
        self.host_ref, self.member_ref = restore.start(
            self.db, self.store, self.storage, self.root,
            self.master_address, None if self.slave_listen is None
            else _address(self.slave_listen[0]), forget=forget_srs)
        self.host_uuid = self.db.get('host', self.host_ref)['uuid']
        self.db.computed['SR'] = \
            lambda ref, rec: storagemod.sr_stats(self, ref, rec)
        self.methods = self._methods()
        self._listeners = []
        self._serving = []
        self._threads = []
        self._lock = threading.Lock()

    @staticmethod
    def _methods() -> dict:
        table = {}
        for cls in schema.SCHEMAS:
            for name, func in generic.methods(cls).items():
                table[name] = api.method(
                    name, func, asynchronous=name in schema.ASYNC)
        for module in (sessionsmod, srs, vdis, hosts, pluginsmod):
            for name, func in module.METHODS.items():
                table[name] = api.method(
                    name, func, session=name not in
                    sessionsmod.UNAUTHENTICATED,
                    asynchronous=name in schema.ASYNC)
        for name in schema.REMOVED:
            table[name] = api.removed(name)
        for name, func in control.METHODS.items():
            table[name] = api.method(name, func, session=False,
                                     testing=True)
        return table

    # -- life cycle ----------------------------------------------------------

    def _ssl_context(self):
        if self.tls is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*self.tls)
        return ctx

    def _bind(self, ctx) -> list:
        """Both listeners; the same port for both unless told otherwise."""
        for _ in range(BIND_ATTEMPTS):
            master = _Listener(self.listen, self, self.host_ref, None, ctx)
            if self.slave_listen is None:
                return [master]
            port = self.slave_listen[1] or master.server_address[1]
            try:
                slave = _Listener((self.slave_listen[0], port), self,
                                  self.member_ref, self.master_address, ctx)
            except OSError as exc:
                master.server_close()
                if exc.errno != errno.EADDRINUSE or self.listen[1] or \
                        self.slave_listen[1]:
                    raise
                continue            # that port is taken there: another
            return [master, slave]
        raise OSError(errno.EADDRINUSE, 'no port free on both %s and %s'
                      % (self.listen[0], self.slave_listen[0]))

    def start(self) -> XapiServer:
        """Bind and serve in background threads; returns self."""
        self._listeners = self._bind(self._ssl_context())
        self.collector.repair_plugged()
        self.collector.start()
        for listener in self._listeners:
            thread = threading.Thread(target=listener.serve_forever,
                                      kwargs={'poll_interval': POLL},
                                      name='xapi-listen', daemon=True)
            thread.start()
            self._serving.append(thread)
        LOG.info('XenAPI test server on %s%s (root %s)', self.url,
                 ' and %s' % self.slave_url if self.slave_url else '',
                 self.root)
        return self

    def stop(self) -> None:
        """Close the sockets and connections; join every thread."""
        self.collector.stop(JOIN_TIMEOUT)
        for listener in self._listeners:
            listener.close_all(JOIN_TIMEOUT)
        self.plugins.stop()
        for thread in self._serving:
            thread.join(JOIN_TIMEOUT)
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
            if thread.is_alive():
                LOG.warning('a task thread did not end in %.0f s',
                            JOIN_TIMEOUT)
        self._listeners = []
        self._serving = []

    def __enter__(self) -> XapiServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def track(self, thread: threading.Thread) -> None:
        """A task thread, joined by stop()."""
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)

    @staticmethod
    def _url(listener) -> str:
        host, port = listener.server_address[:2]
        if ':' in host:
            host = '[%s]' % host
        scheme = 'https' if listener.ssl_context else 'http'
        return '%s://%s:%d' % (scheme, host, port)

    @property
    def url(self) -> str:
        return self._url(self._listeners[0])

    @property
    def slave_url(self) -> str | None:
        return self._url(self._listeners[1]) \
            if len(self._listeners) > 1 else None

    # -- calls ---------------------------------------------------------------

    def apply_fault(self, fault, call) -> bool:
        """Act on a rule that fired; True if the answer is to be dropped."""
        LOG.info('fault %s on %s: %s', fault.id, fault.method, fault.action)
        if fault.action == 'drop':
            raise faultsmod.Drop()
        if fault.action == 'error':
            raise errors.XapiError(*fault.error)
        if fault.action == 'delay':
            time.sleep(fault.seconds)
        elif fault.action == 'disk_full':
            call.disk_full = True
        return fault.action == 'drop_after'

    def rpc(self, name: str, params: tuple, listener) -> tuple[dict, bool]:
        """One XML-RPC call: (the response struct, drop the answer?)."""
        testing = name.startswith('testing.')
        fault = None
        if not testing:
            self.calls.add(name)
            fault = self.faults.take(name)
            if fault is not None:
                LOG.info('fault %s on %s: %s', fault.id, name, fault.action)
                if fault.action == 'drop':
                    raise faultsmod.Drop()
        call = api.Call(self, name, listener.host, listener.master_address)
        try:
            value = api.dispatch(call, params, fault)
            response = {'Status': 'Success', 'Value': value}
        except errors.XapiError as exc:
            response = {'Status': 'Failure', 'ErrorDescription': exc.details}
        except faultsmod.Drop:
            raise
        except Exception as exc:    # a bug here, told as XAPI tells one
            LOG.exception('%s failed', name)
            response = {'Status': 'Failure',
                        'ErrorDescription': ['INTERNAL_ERROR', str(exc)]}
        if response['Status'] == 'Success':
            LOG.info('%s', name)
        else:
            LOG.info('%s -> %s', name, response['ErrorDescription'][0])
        return response, fault is not None and fault.action == 'drop_after'
