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
"""pytest fixtures that run real services (xenapinfs_driver.testing.stack).

A test module takes one by naming it at module level::

    glance_service = stack_fixture.glance_service

(an assignment rather than an import, so that flake8 does not read the
test functions' argument as a redefinition). A fixture is started once for
each module that names it, and stopped after that module's last test.

When the services are not installed the tests are skipped, except under
CI (``CI`` set), where test-requirements.txt and ``make system-deps``
must have installed them, so they fail.
"""

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

from xenapinfs_driver.testing.stack import glance as glancemod
from xenapinfs_driver.testing.stack import process
from xenapinfs_driver.testing.stack import rabbit as rabbitmod
from xenapinfs_driver.testing.stack import Stack


def require(*modules, rabbit=False):
    """Skip (or under CI fail) unless the services can run here."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if rabbit and not os.access(os.path.join(rabbitmod.RABBIT_BIN,
                                             'rabbitmq-server'), os.X_OK):
        missing.append('apt package %s' % rabbitmod.APT_PACKAGE)
    if not missing:
        return
    msg = '%s not installed (make test installs them)' % ', '.join(missing)
    if os.environ.get('CI'):
        pytest.fail(msg)
    pytest.skip(msg)


def xenapinfs_backend(url: str, mode: str = 'auto') -> dict:
    """A cinder backend section for our driver on the XenAPI test server
    (``running_xapi``) and its export; ``mode`` is
    ``xenapi_image_transfer``."""
    # NOTE: imported here: a green-tier module may import this one before
    # cinder's eventlet monkey-patching, which the XenAPI test server's
    # modules (selectors, threads) must not precede.
    from tests import xapi_fixture

    server, path = xapi_fixture.EXPORT
    return {'volume_driver': 'xenapinfs_driver.driver.XenAPINFSDriver',
            'xenapi_connection_url': url,
            'xenapi_connection_username': xapi_fixture.USERNAME,
            'xenapi_connection_password': xapi_fixture.PASSWORD,
            'xenapi_nfs_server': server,
            'xenapi_nfs_serverpath': path,
            'xenapi_image_transfer': mode}


def cli_table(output: str) -> list:
    """``[(property, value)]`` of a client's ``| Property | Value |``
    table."""
    return re.findall(r'^\|\s*(\S[^|]*?)\s*\|\s*(.*?)\s*\|$', output,
                      re.M)


def cli_field(output: str, name: str) -> str:
    """The value of property ``name`` in a client's table; fails naming
    it when the table has none."""
    match = re.search(r'^\|\s*%s\s*\|\s*(.*?)\s*\|$' % re.escape(name),
                      output, re.M)
    assert match, 'no %s in:\n%s' % (name, output)
    return match.group(1)


def cinder_cli(stack, *args) -> str:
    """What the ``cinder`` client prints for ``args`` (it must succeed)."""
    return stack.run_cli(stack.cinder_cli_args() + list(args)).stdout


def volume_vdi(xs, volume_id: str) -> str:
    """The ref of the one VDI the driver keeps for a cinder volume."""
    refs = xs.call('VDI.get_by_name_label', 'volume-%s' % volume_id)
    assert len(refs) == 1, refs
    return refs[0]


def _keep_logs_only(workdir) -> None:
    """Data (images, databases) goes; the logs stay for a post-mortem,
    under pytest's own temporary directory and its retention."""
    for name in os.listdir(workdir):
        path = os.path.join(workdir, name)
        if os.path.isdir(path) and name != 'logs':
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope='module')
def glance_service(tmp_path_factory):
    """glance-api 33 that takes identity headers at their word.

    It trusts ``X-Identity-Status: Confirmed`` with ``X-Tenant-Id`` and
    ``X-User-Id`` (``glance.identity_headers(project)``) as keystone's
    middleware would have set them: images belong to the project that
    created them, so a test sees whether the headers reached glance.
    """
    require('glance', 'gunicorn')
    workdir = str(tmp_path_factory.mktemp('glance'))
    os.makedirs(os.path.join(workdir, 'logs'))
    service = glancemod.Glance(workdir,
                               os.path.join(workdir, 'logs',
                                            'glance-api.log'),
                               trust_headers=True)
    with service:
        yield service
    assert not process.port_in_use(service.port)
    _keep_logs_only(workdir)


@contextlib.contextmanager
def running_xapi(root, verbose: bool = False, dom0_plugins=None,
                 exports=(), listen: str = '127.0.0.1:0', args=()):
    """The XenAPI test server as its own process, as a host would be:
    ``EXPORT``, ``USERNAME`` and ``PASSWORD`` of tests/xapi_fixture.py,
    and its ``DOM0_PLUGINS`` unless ``dom0_plugins`` says;
    ``exports``: more NFS exports, ``(server, path)`` each. Started again
    on the same ``root`` (and ``listen`` address, for its clients), it is
    the same host restarted; ``args`` are more options
    (``--forget-srs``...).

    Yields the ``Popen`` with ``url``, ``root`` (dom0's files) and
    ``log`` (its log file, ``root/xapi.log``) set. ``verbose`` logs each
    HTTP request too.
    """
    from tests import xapi_fixture  # see xenapinfs_backend

    root = str(root)
    pwfile = os.path.join(root, 'password')
    with open(pwfile, 'w') as f:
        f.write(xapi_fixture.PASSWORD)
    log = os.path.join(root, 'xapi.log')
    server, path = xapi_fixture.EXPORT
    argv = [sys.executable, '-m', 'xenapinfs_driver.cmd.xapi_server',
            '--listen', listen, '--root', os.path.join(root, 'dom0'),
            '--username', xapi_fixture.USERNAME, '--password-file', pwfile,
            '--export', '%s:%s' % (server, path),
            '--dom0-plugins', dom0_plugins or xapi_fixture.DOM0_PLUGINS]
    for more in exports:
        argv += ['--export', '%s:%s' % more]
    if verbose:
        argv.append('--verbose')
    argv += list(args)
    with open(log, 'a') as logf:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=logf,
                                text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r'listening on (\S+)', line)
        assert match, 'xapi server said %r' % line
        proc.url = match.group(1)
        proc.root = os.path.join(root, 'dom0')
        proc.log = log
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def assert_stopped(workdir, pids, ports) -> None:
    """No process of a stack is left, and its ports are free."""
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    busy = [p for p in ports if process.port_in_use(p)]
    assert not busy, 'ports still in use: %s' % busy
    # Also what left its process group (a daemon): nothing may still run
    # in the work directory or name it on its command line.
    left = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            cwd = os.readlink('/proc/%s/cwd' % pid)
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                cmdline = f.read().replace(b'\0', b' ').decode('utf-8',
                                                               'replace')
        except OSError:
            continue                        # gone meanwhile, or a kernel's
        if cwd.startswith(workdir) or workdir in cmdline:
            left.append('%s %s' % (pid, cmdline))
    assert not left, 'left running: %s' % left


@contextlib.contextmanager
def running_stack(tmp_path_factory, backends=None, **kw):
    """A started ``Stack`` in a new directory; on exit, checks that it
    stopped everything. Use it in a module-scoped fixture."""
    require('cinder', 'cinderclient', 'glance', 'glanceclient', 'gunicorn',
            rabbit=kw.get('rabbit', True))
    workdir = str(tmp_path_factory.mktemp('stack'))
    stack = Stack(workdir, backends, **kw)
    with stack:
        pids, ports = stack.pids(), stack.ports()
        yield stack
    assert_stopped(workdir, pids, ports)
    _keep_logs_only(workdir)


# The identity headers a caller's request carries and the driver forwards
# to dom0's plugin (and glance): a log line showing one with its value
# shows what lets anyone act as the caller, whatever the value is.
IDENTITY_HEADERS = ('X-Auth-Token', 'X-Service-Catalog', 'X-Identity-Status',
                    'X-Roles', 'X-Subject-Token', 'X-Service-Token')
# "X-Auth-Token: v", "'X-Auth-Token': 'v'", "X-Auth-Token=v", any case;
# a redacted value ("***", "<redacted>", "...") is fine.
_HEADER_VALUE = re.compile(
    r"""(%s)['"]?\s*[:=]\s*(?:b?['"])?(?!\*{3}|<redacted>|\.{3})([^\s'",}]+)"""
    % '|'.join(re.escape(h) for h in IDENTITY_HEADERS), re.I)


def find_secrets(paths, secrets) -> list:
    """``(path, line number, what)`` of each log line that shows one of
    ``secrets`` or an identity header's value."""
    found = []
    secrets = [s for s in secrets if s]
    for path in paths:
        with open(path, 'rb') as f:
            for number, raw in enumerate(f, 1):
                line = raw.decode('utf-8', 'replace')
                for secret in secrets:
                    if secret in line:
                        found.append((path, number, 'secret %r' % secret))
                match = _HEADER_VALUE.search(line)
                if match:
                    found.append((path, number, 'header %s=%s'
                                  % match.groups()))
    return found


def assert_no_secret_logged(stack, extra_paths=(), secrets=()) -> list:
    """No file the stack logs to (``stack.log_files()``) nor any of
    ``extra_paths`` (the XenAPI server's log, say) shows the tokens the
    clients sent (``stack.secrets()``), ``secrets`` (a password) or an
    identity header's value. Returns the files read."""
    paths = stack.log_files() + [str(p) for p in extra_paths]
    found = find_secrets(paths, list(stack.secrets()) + list(secrets))
    assert not found, 'secrets in logs:\n' + '\n'.join(
        '%s:%d: %s' % f for f in found[:20])
    return paths
