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
"""RabbitMQ, glance and cinder, started in order and stopped in reverse.

Everything is stopped when the ``with`` block ends, whatever ends it: an
exception, Ctrl-C (KeyboardInterrupt) or SIGTERM, which is turned into
SystemExit while the stack runs so that the same path is taken; and, as a
last resort, at interpreter exit. Logs are ``workdir/logs/<service>.log``.
"""

from __future__ import annotations

import atexit
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

from xenapinfs_driver.testing.stack import cinder as cindermod
from xenapinfs_driver.testing.stack import etcd as etcdmod
from xenapinfs_driver.testing.stack import glance as glancemod
from xenapinfs_driver.testing.stack import process
from xenapinfs_driver.testing.stack import rabbit as rabbitmod

# The volume API microversion the CLI asks for: 3.x gives every command
# (upload-to-image options, manage, group) cinder 29 has.
VOLUME_API_VERSION = '3.70'
# The token the glance CLI sends: glance here checks none, but a log scan
# looks for it (see ``Stack.secrets``).
GLANCE_TOKEN = 'xenapinfs-glance-cli-token'


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


class Stack:
    """``with Stack(workdir, {'b1': {'volume_driver': ...}}) as s: ...``

    :param backends: cinder backend sections (see ``cinder.Cinder``).
    :param extra_env: environment for the cinder and glance processes
        (PYTHONPATH for a driver, for example).
    :param glance_options: keyword arguments for ``glance.Glance``.
    :param cinder_options: keyword arguments for ``cinder.Cinder``.
    :param etcd: run etcd, and coordinate cinder's services through it.
    """

    def __init__(self, workdir: str, backends: dict | None = None, *,
                 rabbit: bool = True, glance: bool = True,
                 cinder: bool = True, extra_env: dict | None = None,
                 glance_options: dict | None = None,
                 cinder_options: dict | None = None, etcd: bool = False):
        if cinder and not rabbit:
            raise ValueError('cinder needs rabbit')
        self.workdir = os.path.abspath(workdir)
        self.log_dir = os.path.join(self.workdir, 'logs')
        self.backends = backends or {}
        self.want = {'rabbit': rabbit, 'glance': glance, 'cinder': cinder,
                     'etcd': etcd}
        self.extra_env = extra_env or {}
        self.glance_options = glance_options or {}
        self.cinder_options = cinder_options or {}
        self.rabbit: rabbitmod.Rabbit | None = None
        self.etcd: etcdmod.Etcd | None = None
        self.glance: glancemod.Glance | None = None
        self.cinder: cindermod.Cinder | None = None
        self._started: list = []
        self._old_handler = None
        self._t0 = 0.0
        # Seconds from the first launch until each service was ready.
        self.startup_seconds: dict = {}

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        """Launch every service, then wait for each to be ready.

        All are launched first, because the addresses they need of each
        other are known at launch, and their boots (mostly importing
        Python) then overlap; cinder's services wait for RabbitMQ
        themselves.
        """
        os.makedirs(self.log_dir, exist_ok=True)
        atexit.register(self.stop)
        if self.want['rabbit']:
            self.rabbit = rabbitmod.Rabbit(
                self.workdir, os.path.join(self.log_dir, 'rabbitmq.log'))
            self._launch(self.rabbit)
        options = dict(self.cinder_options)
        if self.want['etcd']:
            self.etcd = etcdmod.Etcd(self.workdir,
                                     os.path.join(self.log_dir, 'etcd.log'))
            self._launch(self.etcd)
            options['coordination'] = self.etcd.backend_url
        if self.want['glance']:
            self.glance = glancemod.Glance(
                self.workdir, os.path.join(self.log_dir, 'glance-api.log'),
                env=self.extra_env, **self.glance_options)
            self._launch(self.glance)
        if self.want['cinder']:
            self.cinder = cindermod.Cinder(
                self.workdir, self.log_dir, self.backends,
                rabbit=self.rabbit,
                glance_url=self.glance.url if self.glance else None,
                env=self.extra_env, **options)
            self._launch(self.cinder)
        for name, service in (('rabbitmq', self.rabbit),
                              ('etcd', self.etcd),
                              ('glance', self.glance),
                              ('cinder', self.cinder)):
            if service is not None:
                service.wait_ready()
                self.startup_seconds[name] = round(
                    time.monotonic() - self._t0, 1)

    def _launch(self, service) -> None:
        if not self._started:
            self._t0 = time.monotonic()
        # Registered first: a launch that fails half way may still have
        # processes to stop.
        self._started.append(service)
        service.launch()

    def stop(self) -> None:
        """Stop what was started, newest first; safe to call twice."""
        errors = []
        while self._started:
            service = self._started.pop()
            try:
                service.stop()
            except Exception as exc:  # stop the others all the same
                errors.append('%s: %s' % (type(service).__name__, exc))
        atexit.unregister(self.stop)
        if errors:
            raise process.ServiceError('stopping: ' + '; '.join(errors))

    def __enter__(self) -> Stack:
        if threading.current_thread() is threading.main_thread():
            self._old_handler = signal.signal(signal.SIGTERM, _terminate)
        try:
            self.start()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc) -> None:
        # A second Ctrl-C or SIGTERM must not cut the stopping short and
        # leave services behind: it waits, and acts once all are stopped.
        main = threading.current_thread() is threading.main_thread()
        if main:
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self.stop()
        finally:
            if self._old_handler is not None:
                signal.signal(signal.SIGTERM, self._old_handler)
                self._old_handler = None
            if main:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    # -- what a user of the stack needs -------------------------------------

    def ports(self) -> list:
        return [p for s in (self.rabbit, self.etcd, self.glance,
                            self.cinder) if s for p in s.ports()]

    def pids(self) -> list:
        """The process groups of the services (their leaders' pids)."""
        procs = []
        if self.rabbit and self.rabbit.proc:
            procs.append(self.rabbit.proc)
        if self.etcd and self.etcd.proc:
            procs.append(self.etcd.proc)
        if self.glance and self.glance.proc:
            procs.append(self.glance.proc)
        if self.cinder:
            procs.extend(self.cinder.procs)
        return [p.pid for p in procs]

    def log_paths(self) -> dict:
        """{service: log file}; with several volume services, each has
        its own (``cinder-volume-1`` ...)."""
        names = []
        if self.want['rabbit']:
            names.append('rabbitmq')
        if self.want['etcd']:
            names.append('etcd')
        if self.want['glance']:
            names.append('glance-api')
        if self.cinder:
            names.extend(self.cinder.service_names())
        elif self.want['cinder']:
            names.extend(cindermod.SERVICES)
        return {n: os.path.join(self.log_dir, '%s.log' % n) for n in names}

    def log_files(self) -> list:
        """Every file the stack's services log to: the logs directory,
        whatever else is in it, and RabbitMQ's own log directory."""
        found = set(self.log_paths().values())
        for top in (self.log_dir, os.path.join(self.workdir, 'rabbitmq',
                                               'log')):
            for dirpath, _dirs, files in os.walk(top):
                found.update(os.path.join(dirpath, f) for f in files)
        return sorted(p for p in found if os.path.isfile(p))

    @property
    def auth_token(self) -> str:
        """The token the cinder CLI and ``cinder.api`` send (noauth:
        ``user:project``)."""
        return '%s:%s' % cindermod.ADMIN

    def secrets(self) -> list:
        """Values no log may show: the tokens the clients send."""
        return [self.auth_token, GLANCE_TOKEN]

    def cinder_cli_args(self, user=cindermod.ADMIN[0],
                        project=cindermod.ADMIN[1]) -> list:
        """``cinder`` and the options that reach our noauth cinder."""
        return ['cinder', '--os-auth-type', 'noauth',
                '--os-user-id', user, '--os-project-id', project,
                '--os-endpoint', self.cinder.url,
                '--os-volume-api-version', VOLUME_API_VERSION]

    def glance_cli_args(self) -> list:
        """``glance`` and the options that reach our no-auth glance; the
        token is never checked, but the client wants one to skip
        keystone."""
        return ['glance', '--os-image-url', self.glance.url,
                '--os-auth-token', GLANCE_TOKEN]

    def openstack_env(self) -> dict:
        """The same as environment variables, for a shell.

        cinderclient takes the older ``OS_AUTH_SYSTEM`` for its noauth
        plugin; ``OS_AUTH_TYPE`` would also send glanceclient to keystone.
        """
        env = {}
        if self.cinder:
            env.update({'OS_AUTH_SYSTEM': 'noauth',
                        'OS_USER_ID': cindermod.ADMIN[0],
                        'OS_PROJECT_ID': cindermod.ADMIN[1],
                        'CINDER_ENDPOINT': self.cinder.url,
                        'OS_VOLUME_API_VERSION': VOLUME_API_VERSION})
        if self.glance:
            env.update({'OS_IMAGE_URL': self.glance.url,
                        'OS_AUTH_TOKEN': GLANCE_TOKEN})
        return env

    def run_cli(self, args, *, check: bool = True, quiet: bool = False,
                env: dict | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a client command (``cinder ...`` or ``glance ...``), print
        it and its output, and return it. A bare command name is taken
        from this interpreter's bin directory. OS_* variables of the
        caller's environment are dropped: the command line (and env) say
        all."""
        args = [str(a) for a in args]
        run_env = {k: v for k, v in os.environ.items()
                   if not k.startswith(('OS_', 'CINDER_', 'GLANCE_'))}
        run_env.update(env or {})
        argv = list(args)
        if os.sep not in argv[0]:
            candidate = os.path.join(process.BIN_DIR, argv[0])
            if os.access(candidate, os.X_OK):
                argv[0] = candidate
        result = subprocess.run(argv, capture_output=True, text=True,
                                timeout=timeout, env=run_env,
                                stdin=subprocess.DEVNULL)
        if not quiet:
            print('$ ' + shlex.join(args))
            out = (result.stdout + result.stderr).rstrip()
            if out:
                print(out)
        if check and result.returncode:
            raise subprocess.CalledProcessError(
                result.returncode, args, result.stdout, result.stderr)
        return result

    def wait_volume(self, volume_id: str, status: str = 'available',
                    timeout: float = 60) -> dict:
        """Poll until the volume has status; a volume ending in error (or
        vanishing, unless 'deleted' is awaited) fails at once."""
        def check():
            code, body = self.cinder.api('GET', '/volumes/%s' % volume_id)
            if code == 404:
                if status == 'deleted':
                    return {'id': volume_id, 'status': 'deleted'}
                raise process.ServiceError('volume %s is gone' % volume_id)
            volume = body['volume']
            if volume['status'] == status:
                return volume
            if volume['status'].startswith('error') and \
                    not status.startswith('error'):
                raise process.ServiceError(
                    'volume %s is %s (see %s)'
                    % (volume_id, volume['status'], ', '.join(
                        self.log_paths()[n]
                        for n in self.cinder.volume_names())))
            return None
        return process.wait_until(check, timeout, 'volume %s %s'
                                  % (volume_id, status), self.cinder.procs,
                                  interval=0.5)
