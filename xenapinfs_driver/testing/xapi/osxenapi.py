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
"""os-xenapi's own dom0 plugins, run as XAPI runs them.

With ``dom0_plugins='os-xenapi'`` the server answers ``host.call_plugin``
for ``dom0_plugin_version.py`` and ``glance.py`` with the files os-xenapi
installs (``os_xenapi/dom0/etc/xapi.d/plugins``), loaded where they are and
never copied: the real plugin judges what our stand-in only imitates.
Each call is one child process (``osxenapi_shim.py``, which makes the
Python 2 code run on Python 3), given the ``methodCall`` on stdin, with
the venv's ``vhd-util`` (ours) first on its ``PATH``. Its answer becomes
what XAPI's ``xapi_plugins.ml`` makes of a plugin's output:

* a ``methodResponse`` with ``Success``: the value, which must be a str;
* with ``Failure``: that error, e.g. ``XENAPI_PLUGIN_FAILURE [fn, class
  name, message]`` for an exception;
* an exit status other than 0: ``XENAPI_PLUGIN_FAILURE ['non-zero exit',
  output, log]``, ``['signal: SIGKILL', output, log]`` for a signal;
* output that is not a response: ``['failed to parse plugin output',
  output, error]``.

dom0 paths: the plugins use ``sr_path`` as a path of their own machine,
so the caller maps it under the server's root first (``dom0_path``), and
the root is taken out of the messages that come back, which then name
the paths a real dom0 would.

Only these two plugins are offered: the others (``xenhost.py``,
``partition_utils.py``...) would run host commands on this machine.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import sysconfig
import threading
import xmlrpc.client

from xenapinfs_driver.testing.xapi import errors

LOG = logging.getLogger(__name__)
PLUGINS = ('dom0_plugin_version.py', 'glance.py')
SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                    'osxenapi_shim.py')
PLUGIN_FAILURE = 'XENAPI_PLUGIN_FAILURE'
# A plugin that outlives this has hung (its own socket timeout is 90 s).
CALL_TIMEOUT = 3600.0
LOG_TAIL = 4096


class Unavailable(RuntimeError):
    """os-xenapi is not installed, or its plugins are not where it puts
    them."""


def plugin_dir() -> str:
    """Where os-xenapi installed its dom0 plugins, without importing it
    (its ``__init__`` needs pbr)."""
    spec = importlib.util.find_spec('os_xenapi')
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable('os-xenapi is not installed: pip install '
                          'os-xenapi==0.3.4 (see test-requirements.txt)')
    for base in spec.submodule_search_locations:
        path = os.path.join(base, 'dom0', 'etc', 'xapi.d', 'plugins')
        if os.path.isfile(os.path.join(path, 'glance.py')):
            return path
    raise Unavailable('os-xenapi has no dom0 plugins under %s'
                      % list(spec.submodule_search_locations))


def scripts_dir() -> str:
    """The venv's console scripts: where our ``vhd-util`` is."""
    path = sysconfig.get_path('scripts')
    if not os.path.exists(os.path.join(path, 'vhd-util')):
        raise Unavailable('no vhd-util in %s: install this package' % path)
    return path


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class Runner:
    """Runs one plugin call per child process; ``stop`` kills any left.

    :param root: the server's root, where dom0's paths are.
    :param directory: the plugins' directory; os-xenapi's by default.
    """

    def __init__(self, root: str, timeout: float = CALL_TIMEOUT,
                 directory: str | None = None):
        self.root = root
        self.timeout = timeout
        self.directory = directory or plugin_dir()
        self.path = scripts_dir() + os.pathsep + os.environ.get('PATH', '')
        self._children = set()
        self._lock = threading.Lock()

    def dom0_text(self, text: str) -> str:
        """A message as dom0 would word it: the root taken out of paths."""
        return text.replace(self.root + os.sep, os.sep)

    def call(self, session: str, plugin: str, fn: str, args: dict) -> str:
        """Run plugin's fn; its value, or the XapiError XAPI raises."""
        if plugin not in PLUGINS:
            raise errors.XapiError('XENAPI_MISSING_PLUGIN', plugin)
        request = xmlrpc.client.dumps((session or '', args), fn,
                                      allow_none=False)
        env = dict(os.environ, PATH=self.path)
        proc = subprocess.Popen(
            [sys.executable, '-I', SHIM,
             os.path.join(self.directory, plugin)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=env, cwd=self.root)
        with self._lock:
            self._children.add(proc)
        try:
            out, err = proc.communicate(request.encode('utf-8'),
                                        timeout=self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        finally:
            with self._lock:
                self._children.discard(proc)
        output = out.decode('utf-8', 'replace')
        log = err.decode('utf-8', 'replace')
        LOG.debug('dom0 %s/%s (exit %s):\n%s', plugin, fn, proc.returncode,
                  log)
        return self._answer(proc.returncode, output, log[-LOG_TAIL:])

    def _answer(self, status: int, output: str, log: str) -> str:
        if status < 0:
            raise errors.XapiError(PLUGIN_FAILURE, 'signal: %s'
                                   % _signal_name(-status), output, log)
        if status > 0:
            raise errors.XapiError(PLUGIN_FAILURE, 'non-zero exit', output,
                                   log)
        try:
            (struct,), _ = xmlrpc.client.loads(output)
        except xmlrpc.client.Fault as fault:
            raise errors.XapiError(PLUGIN_FAILURE, 'fault',
                                   fault.faultCode, fault.faultString)
        except Exception as exc:
            raise errors.XapiError(PLUGIN_FAILURE,
                                   'failed to parse plugin output', output,
                                   str(exc))
        status = struct.get('Status') if isinstance(struct, dict) else None
        if status == 'Success' and isinstance(struct.get('Value'), str):
            return struct['Value']
        details = struct.get('ErrorDescription') \
            if status == 'Failure' else None
        if not isinstance(details, list) or not details:
            raise errors.XapiError(PLUGIN_FAILURE,
                                   'unexpected XMLRPC result', output)
        raise errors.XapiError(*[self.dom0_text(str(d)) for d in details])

    def stop(self) -> None:
        """Kill the calls still running: the server is going away."""
        with self._lock:
            children = list(self._children)
        for proc in children:
            if proc.poll() is None:
                LOG.warning('killing dom0 plugin process %d', proc.pid)
                proc.kill()
