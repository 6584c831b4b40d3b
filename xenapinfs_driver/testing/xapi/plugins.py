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
"""``host.call_plugin``: the dom0 plugins of os-xenapi 2.x.

As dom0's ``XenAPIPlugin.dispatch`` and os-xenapi's
``register_plugin_calls`` do: the arguments arrive as ``{'params':
pickle}`` (protocol 0, as a str), the result leaves pickled the same way,
and an exception becomes ``XENAPI_PLUGIN_FAILURE [fn, class name,
str(exc)]`` (clients retry when the class is ``RetryableError``). The
pickle is read with no globals at all and a size bound. Plugins:

``dom0_plugin_version.py``: ``get_version`` -> ``'2.1'``.
``glance.py``: ``download_vhd2`` and ``upload_vhd2``, whose real signatures
are mapped onto ``dom0_glance`` (another module of this package), with the
dom0 ``sr_path`` resolved under the server's root. With an export quota,
a download that leaves the export over it is undone and fails like a
full disk does in dom0 (``OSError``, errno 28).

With ``dom0_plugins='os-xenapi'``, os-xenapi's own plugins answer instead
(see ``osxenapi``), through the same faults, quota and ``sr_path`` checks;
the table below is then only the list of what exists.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import io
import logging
import os
import pickle
import threading

from xenapinfs_driver.testing.xapi import errors
from xenapinfs_driver.testing.xapi import faults
from xenapinfs_driver.testing.xapi import osxenapi
from xenapinfs_driver.testing.xapi import wire

LOG = logging.getLogger(__name__)
PLUGIN_VERSION = '2.1'
MAX_PICKLE = 1 << 20
IMPLEMENTATIONS = ('builtin', 'os-xenapi')


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError('global %s.%s is not allowed'
                                     % (module, name))


def loads(text) -> object:
    """Unpickle a plugin's argument string, safely."""
    if not isinstance(text, str):
        raise TypeError('params must be a str, not %s'
                        % type(text).__name__)
    if len(text) > MAX_PICKLE:
        raise ValueError('params exceed %d characters' % MAX_PICKLE)
    raw = text.encode('latin-1')
    return _NoGlobals(io.BytesIO(raw), encoding='latin1').load()


def dumps(value) -> str:
    return pickle.dumps(value, protocol=0).decode('latin-1')


# The plugin functions' real signatures, session left out.
def _download_sig(image_id, endpoint, uuid_stack, sr_path, extra_headers,
                  api_version=1):
    pass


def _upload_sig(vdi_uuids, image_id, endpoint, sr_path, extra_headers,
                properties, api_version=1):
    pass


class Plugins:
    """The plugin table; tests may replace the glance implementation."""

    def __init__(self, server, dom0_plugins: str = 'builtin'):
        if dom0_plugins not in IMPLEMENTATIONS:
            raise ValueError('dom0_plugins must be one of %s, not %r'
                             % (', '.join(IMPLEMENTATIONS), dom0_plugins))
        self.server = server
        self.implementation = dom0_plugins
        self.runner = osxenapi.Runner(server.root) \
            if dom0_plugins == 'os-xenapi' else None
        self._glance = None
        self._lock = threading.Lock()

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()

    def set_glance(self, impl) -> None:
        """Use impl (with dom0_glance's functions) instead of dom0_glance."""
        self._glance = impl

    def glance(self):
        with self._lock:
            if self._glance is None:
                self._glance = importlib.import_module(
                    'xenapinfs_driver.testing.xapi.dom0_glance')
            return self._glance

    def table(self) -> dict:
        return {'dom0_plugin_version.py': {'get_version': self._version},
                'glance.py': {'download_vhd2': self._download,
                              'upload_vhd2': self._upload}}

    def call(self, call, plugin: str, fn: str, args: dict) -> str:
        table = self.table()
        if plugin not in table:
            raise errors.XapiError('XENAPI_MISSING_PLUGIN', plugin)
        if fn not in table[plugin]:
            raise errors.XapiError('UNKNOWN_XENAPI_PLUGIN_FUNCTION', fn)
        name = 'plugin:%s/%s' % (plugin, fn)
        self.server.calls.add(name)
        fault = self.server.faults.take(name)
        drop_after = False
        if fault is not None:
            drop_after = self.server.apply_fault(fault, call)
        try:
            if call.disk_full and fn != 'download_vhd2':
                # Only a download writes: anything else fails at once.
                call.disk_full = False
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            with self.server.collector.plugin_call():
                if self.runner is not None:
                    result = self._real(call, plugin, fn, args)
                else:
                    result = dumps(table[plugin][fn](call, args))
        except errors.XapiError:
            raise
        except Exception as exc:    # what XenAPIPlugin.dispatch reports
            LOG.info('plugin %s failed: %s: %s', name,
                     exc.__class__.__name__, exc)
            raise errors.XapiError('XENAPI_PLUGIN_FAILURE', fn,
                                   exc.__class__.__name__, str(exc))
        if drop_after:
            raise faults.Drop()
        return result

    # -- the functions ------------------------------------------------------

    @staticmethod
    def _params(args, sig) -> dict:
        params = loads(args['params'])
        if not isinstance(params, dict):
            raise TypeError('params must pickle a dict')
        pargs = params.get('args', ())
        kwargs = params.get('kwargs', {})
        if not isinstance(pargs, (list, tuple)) or \
                not isinstance(kwargs, dict):
            raise TypeError('args must be a list and kwargs a dict')
        bound = inspect.signature(sig).bind(*pargs, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def _version(self, call, args):
        return PLUGIN_VERSION

    def _sr_dir(self, sr_path) -> str:
        try:
            path = self.server.storage.dom0_path(sr_path)
        except ValueError as exc:
            raise OSError(errno.ENOENT, str(exc)) from None
        if not os.path.isdir(path):
            raise OSError(errno.ENOENT, 'No such file or directory: %r'
                          % (sr_path,))
        return path

    def _undo_if_full(self, call, sr_dir, before) -> None:
        """A download that left the export over its quota is undone."""
        try:
            self.server.storage.check_space(call, os.path.dirname(sr_dir))
        except errors.DiskFull:
            for name in set(os.listdir(sr_dir)) - before:
                path = os.path.join(sr_dir, name)
                if os.path.isfile(path):
                    os.unlink(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None

    def _download(self, call, args):
        p = self._params(args, _download_sig)
        sr_dir = self._sr_dir(p['sr_path'])
        before = set(os.listdir(sr_dir))
        result = self.glance().download_vhd2(
            sr_dir, image_id=p['image_id'], endpoint=p['endpoint'],
            uuid_stack=p['uuid_stack'], extra_headers=p['extra_headers'],
            api_version=p['api_version'])
        self._undo_if_full(call, sr_dir, before)
        return result

    def _upload(self, call, args):
        p = self._params(args, _upload_sig)
        sr_dir = self._sr_dir(p['sr_path'])
        return self.glance().upload_vhd2(
            sr_dir, vdi_uuids=p['vdi_uuids'], image_id=p['image_id'],
            endpoint=p['endpoint'], extra_headers=p['extra_headers'],
            properties=p['properties'], api_version=p['api_version'])

    # -- os-xenapi's own ------------------------------------------------------

    def _real(self, call, plugin, fn, args):
        args, sr_dir = self._dom0_args(fn, args)
        before = set(os.listdir(sr_dir)) if sr_dir else None
        result = self.runner.call(call.session, plugin, fn, args)
        if fn == 'download_vhd2' and sr_dir:
            self._undo_if_full(call, sr_dir, before)
        return result

    def _dom0_args(self, fn, args):
        """args with sr_path under the root (as the plugin sees the SR),
        and the SR's real directory; unchanged when there is none."""
        if fn not in SR_PATH_ARG or not isinstance(args, dict) or \
                'params' not in args:
            return args, None
        params = loads(args['params'])
        if not isinstance(params, dict):
            return args, None
        pargs = list(params.get('args', ()))
        kwargs = dict(params.get('kwargs', {}))
        index = SR_PATH_ARG[fn]
        if 'sr_path' in kwargs:
            sr_path = kwargs['sr_path']
        elif len(pargs) > index:
            sr_path = pargs[index]
        else:
            return args, None       # the plugin says what is missing
        sr_dir = self._sr_dir(sr_path)
        mapped = os.path.join(self.server.root, sr_path.lstrip('/'))
        if 'sr_path' in kwargs:
            kwargs['sr_path'] = mapped
        else:
            pargs[index] = mapped
        return dict(args, params=dumps({'args': pargs,
                                        'kwargs': kwargs})), sr_dir


# Where a glance.py function takes sr_path when it comes positionally.
SR_PATH_ARG = {'download_vhd2': 3, 'upload_vhd2': 3}


def host_call_plugin(call, host: wire.HostRef, plugin: wire.String,
                     fn: wire.String, args: wire.Map):
    call.db.get('host', host)
    return call.server.plugins.call(call, plugin, fn, args)


METHODS = {'host.call_plugin': host_call_plugin}
