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
"""cinder-api, cinder-scheduler and cinder-volume as separate processes.

The configuration is ``cinder_conf``'s. The processes share one sqlite
file, whose transactions the stack makes take the write lock first
(``sqlite_lock``): with oslo.db's plain BEGIN, two volume services under
load fail with "database is locked".

Ready means: the API answers, and the scheduler lists a pool for every
backend (``GET /v3/scheduler-stats/get_pools``), which needs each volume
service up, its driver initialised and its capabilities received; only
then can a volume be placed. A volume type per backend is created, bound
to it by ``volume_backend_name``; the first is the default type.

Active-active: ``volume_services=N`` (N > 1) runs N cinder-volume
processes with the same backend sections, each with its own ``host``
(``<host>-1`` .. ``<host>-N``) and all in one ``cluster``, sharing the
file-based tooz coordination; their logs are ``cinder-volume-1.log`` ..
``cinder-volume-N.log``. ``kill_volume(i)`` SIGKILLs one (a crash: no
cleanup of any kind) and ``restart_volume(i)`` starts it again on the same
host, where cinder's start-up cleanup finds what it left. With
``private_locks`` each volume service locks in directories of its own
instead, as file locks on separate machines would: the locks then exclude
nothing across services, which is what a test of the shared locks
compares against.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.error
import urllib.request

from xenapinfs_driver.testing.stack import cinder_conf
from xenapinfs_driver.testing.stack import process
from xenapinfs_driver.testing.stack import sqlite_lock

SERVICES = ('cinder-api', 'cinder-scheduler', 'cinder-volume')
# The user id and project id every call is made as. With noauth the token
# is "user:project" and it reaches the driver as context.auth_token (and
# dom0 and glance as X-Auth-Token): distinctive, so that a log scan finds
# it wherever it is written.
ADMIN = ('xenapinfs-admin', 'xenapinfs-project')
# The clustered volume services' cluster, when there are several.
CLUSTER = 'xenapinfs-cluster'
# What a volume service logs once its driver is up (init_host, with its
# start-up clean-up, is done) and its RPC servers consume.
VOLUME_READY = 'Initializing RPC dependent components of volume driver'
# cinder's reinit_driver_count default.
REINIT_TRIES = 3


class Cinder(process.Service):
    """``with Cinder(workdir, log_dir, backends, rabbit=r) as c: c.url``.

    :param backends: ``{section: {option: value}}``; each needs
        ``volume_driver``. ``volume_backend_name`` defaults to the section
        name; it is what the scheduler and the volume type match on.
    :param rabbit: the ``rabbit.Rabbit`` the services talk through.
    :param image_volume_cache: turn on the image-volume cache in every
        backend, with cinder's internal tenant set.
    :param debug: ``[DEFAULT] debug`` for every service.
    :param volume_services: how many cinder-volume processes serve the
        backends; more than one makes them a cluster (active-active).
    :param cluster: the cluster name (``CLUSTER`` when there are several
        volume services; none for one, unless given).
    :param extra: more options, ``{section: {option: value}}``.
    :param coordination: ``[coordination] backend_url`` of every service
        (a lock service such as etcd); file locks in the work directory
        when none.
    :param private_locks: give each volume service its own file lock
        directories (``coordination-<n>``, ``locks-<n>``) in place of the
        shared ones: no lock is shared across services.
    """

    def __init__(self, workdir: str, log_dir: str, backends: dict, *,
                 rabbit, glance_url: str | None = None,
                 image_volume_cache: bool = False, debug: bool = False,
                 volume_services: int = 1, cluster: str | None = None,
                 extra: dict | None = None, env: dict | None = None,
                 coordination: str | None = None,
                 private_locks: bool = False):
        if not backends:
            raise ValueError('cinder needs at least one backend')
        if volume_services < 1:
            raise ValueError('cinder needs at least one volume service')
        if private_locks and coordination:
            raise ValueError('private_locks are file locks: no '
                             'coordination backend goes with them')
        self.workdir = os.path.join(os.path.abspath(workdir), 'cinder')
        self.log_dir = log_dir
        self.backends = {name: dict(opts) for name, opts in backends.items()}
        for name, opts in self.backends.items():
            opts.setdefault('volume_backend_name', name)
        self.rabbit = rabbit
        self.glance_url = glance_url
        self.image_volume_cache = image_volume_cache
        self.debug = debug
        self.extra = extra or {}
        self.extra_env = env or {}
        self.coordination = coordination or 'file://%s/coordination' % \
            self.workdir
        self.private_locks = private_locks
        self.host = 'xenapinfs-stack'
        self.volume_services = volume_services
        self.cluster = cluster or (CLUSTER if volume_services > 1 else None)
        self.port: int | None = None
        self.conf_path = os.path.join(self.workdir, 'cinder.conf')
        self.procs: list = []
        self._env: dict = {}

    @property
    def url(self) -> str:
        """The v3 endpoint, as the CLI's ``--os-endpoint`` wants it."""
        return 'http://%s:%d/v3' % (process.HOST, self.port)

    @property
    def default_type(self) -> str:
        return next(iter(self.backends))

    def log_path(self, service: str) -> str:
        return os.path.join(self.log_dir, '%s.log' % service)

    def volume_names(self) -> list:
        """The volume services' names (and log file names)."""
        if self.volume_services == 1:
            return ['cinder-volume']
        return ['cinder-volume-%d' % i
                for i in range(1, self.volume_services + 1)]

    def service_names(self) -> list:
        return list(SERVICES[:-1]) + self.volume_names()

    def volume_host(self, index: int = 0) -> str:
        """The ``host`` of volume service index (0-based)."""
        if self.volume_services == 1:
            return self.host
        return '%s-%d' % (self.host, index + 1)

    def volume_index(self, host: str) -> int:
        """Which volume service a volume's ``os-vol-host-attr:host``
        (``host@backend#pool``) names."""
        name = host.split('@', 1)[0]
        for index in range(self.volume_services):
            if self.volume_host(index) == name:
                return index
        raise ValueError('%r is no volume service of this stack' % host)

    def ports(self) -> list:
        return [self.port] if self.port else []

    def launch(self) -> None:
        """Configure, sync the database and start the services."""
        for sub in ('conversion', 'locks', 'coordination'):
            os.makedirs(os.path.join(self.workdir, sub), exist_ok=True)
        if self.private_locks:
            for index in range(self.volume_services):
                for path in cinder_conf.private_lock_dirs(self.workdir, index):
                    os.makedirs(path, exist_ok=True)
        self.port = process.free_port()
        # A backend section may hold a password: readable by us only.
        fd = os.open(self.conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o600)
        with os.fdopen(fd, 'w') as f:
            f.write(cinder_conf.main_text(self))
        env = dict(os.environ)
        env.update(self.extra_env)
        # Several processes write the one sqlite file: see sqlite_lock.
        site = os.path.join(self.workdir, 'site')
        sqlite_lock.write_sitecustomize(site)
        env['PYTHONPATH'] = os.pathsep.join(
            p for p in (site, env.get('PYTHONPATH')) if p)
        self._env = env
        sync = subprocess.run(
            [process.venv_bin('cinder-manage'), '--config-file',
             self.conf_path, 'db', 'sync'], env=env, capture_output=True,
            text=True, timeout=300)
        if sync.returncode:
            raise process.ServiceError('cinder-manage db sync failed:\n%s'
                                       % (sync.stdout + sync.stderr))
        # All at once: most of their start-up is importing cinder.
        for name in SERVICES[:-1]:
            self.procs.append(self._process(name, name))
        for index, name in enumerate(self.volume_names()):
            conf = cinder_conf.volume_file(self, index)
            self.procs.append(self._process('cinder-volume', name, conf))
        for proc in self.procs:
            proc.start()

    def _process(self, binary: str, name: str,
                 conf: str | None = None) -> process.Process:
        argv = [process.venv_bin(binary), '--config-file', self.conf_path]
        if conf:
            argv += ['--config-file', conf]
        return process.Process(name, argv, self.log_path(name),
                               env=self._env, cwd=self.workdir)

    def volume_procs(self) -> list:
        return self.procs[len(SERVICES) - 1:]

    def kill_volume(self, index: int) -> int:
        """SIGKILL volume service index and its whole process group (the
        oslo.service worker, privsep daemons): a crash, nothing runs its
        cleanup. Returns the killed group's id."""
        proc = self.volume_procs()[index]
        pid = proc.pid
        proc.kill()
        if proc.group_alive():
            raise process.ServiceError('process group %d survived SIGKILL'
                                       % pid)
        return pid

    def restart_volume(self, index: int, timeout: float = 120) -> None:
        """Start volume service index again (same host, same log, which
        grows) and wait until it has done its start-up clean-up and takes
        work."""
        old = self.volume_procs()[index]
        if old.alive():
            raise process.ServiceError('%s is still running' % old.name)
        path = old.log_path
        start = os.path.getsize(path) if os.path.exists(path) else 0
        proc = process.Process(old.name, old.argv, path, env=old.env,
                               cwd=old.cwd)
        self.procs[self.procs.index(old)] = proc
        proc.start()

        def ready():
            with open(path, 'rb') as f:
                f.seek(start)
                return VOLUME_READY.encode() in f.read()
        process.wait_until(ready, timeout, '%s to start again' % proc.name,
                           [proc], interval=0.5)

    def wait_ready(self, timeout: float = 120) -> None:
        process.wait_until(self._api_ready, timeout,
                           'cinder-api at %s' % self.url, self.procs)
        # A call to a queue nobody has declared yet is dropped, and the API
        # would wait rpc_response_timeout (60 s) for the answer: ask the
        # scheduler only once it consumes.
        process.wait_until(self._scheduler_listens, timeout,
                           'the cinder-scheduler queue', self.procs,
                           interval=0.5)
        process.wait_until(self._pools_ready, timeout,
                           'a scheduler pool for every backend', self.procs,
                           interval=0.5)
        process.wait_until(self._volumes_up, timeout,
                           'every volume service up', self.procs,
                           interval=0.5)
        for name, opts in self.backends.items():
            self.create_type(name, opts['volume_backend_name'])

    def _api_ready(self) -> bool:
        try:
            return self.api('GET', '/types')[0] == 200
        except OSError:
            return False

    def _scheduler_listens(self) -> bool:
        self._check_driver()
        return 'cinder-scheduler' in self.rabbit.queues()

    def _pools_ready(self) -> bool:
        self._check_driver()
        try:
            status, body = self.api('GET', '/scheduler-stats/get_pools',
                                    timeout=10)
        except OSError:
            return False
        if status != 200:
            return False
        names = {pool['name'].split('#')[0] for pool in body['pools']}
        # A cluster's backends are known by the cluster's name.
        owner = self.cluster or self.host
        return all('%s@%s' % (owner, b) in names for b in self.backends)

    def _volumes_up(self) -> bool:
        """Every volume service of every backend reports itself up (one
        pool is enough for the scheduler; a test wants them all)."""
        status, body = self.api('GET', '/os-services?binary=cinder-volume')
        if status != 200:
            return False
        up = {s['host'] for s in body['services'] if s['state'] == 'up'}
        return all('%s@%s' % (self.volume_host(i), b) in up
                   for i in range(self.volume_services)
                   for b in self.backends)

    def _check_driver(self) -> None:
        """Fail at once when a volume service has given up on a driver,
        rather than at the end of the wait."""
        for name in self.volume_names():
            path = self.log_path(name)
            try:
                with open(path, errors='replace') as f:
                    text = f.read()
            except OSError:
                continue
            # The manager tries once, then REINIT_TRIES more times.
            if text.count('Failed to initialize driver.') > REINIT_TRIES or \
                    'Unsupported drivers are disabled' in text:
                raise process.ServiceError(
                    '%s could not initialise its driver; the end of %s:\n%s'
                    % (name, path, process.log_tail(path, 60)))

    def create_type(self, name: str, backend_name: str) -> None:
        status, body = self.api('POST', '/types', {'volume_type': {
            'name': name, 'extra_specs': {
                'volume_backend_name': backend_name}}})
        if status != 200:
            raise process.ServiceError('volume type %s: HTTP %d %s'
                                       % (name, status, body))

    def api(self, method: str, path: str, body=None, *, auth=ADMIN,
            version: str = '3.0', timeout: float = 60,
            reply_headers: dict | None = None):
        """(status, decoded JSON or None) of one call to the v3 API.

        ``reply_headers``, when given, gets the answer's headers (its
        ``x-openstack-request-id`` names the call in every service's log).
        """
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={
                'X-Auth-Token': '%s:%s' % auth,
                'Content-Type': 'application/json',
                'Accept': 'application/json',
                'OpenStack-API-Version': 'volume %s' % version})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
                answer_headers = resp.headers
        except urllib.error.HTTPError as exc:
            with exc:
                status, raw = exc.code, exc.read()
                answer_headers = exc.headers
        except (socket.timeout, ConnectionError) as exc:
            raise OSError(str(exc)) from None
        if reply_headers is not None:
            reply_headers.update((k.lower(), v)
                                 for k, v in answer_headers.items())
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode('utf-8', 'replace')

    def stop(self) -> None:
        # The volume service first: it may be mid-call into the scheduler.
        for proc in reversed(self.procs):
            proc.stop(timeout=10)
        self.procs = []
