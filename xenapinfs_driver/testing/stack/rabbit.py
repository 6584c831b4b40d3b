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
"""A private RabbitMQ node on loopback (apt ``rabbitmq-server``).

It runs beside a system RabbitMQ, if there is one, without touching it:

* the upstream scripts in ``/usr/lib/rabbitmq/bin`` are run as the
  current user. Debian's ``/usr/sbin`` wrappers switch to the ``rabbitmq``
  user, which then needs data directories it owns and can reach (pytest's
  0700 temporary directories are not), and they share the system node's
  cookie. Here ``HOME`` is private, so the Erlang cookie is too;
* the node name is unique per run, and the AMQP, distribution and epmd
  ports are free ports on 127.0.0.1. epmd gets a port of its own
  (``ERL_EPMD_PORT``), so the one this node starts is never the system's,
  and stopping it cannot disturb another node;
* the configuration, environment and plugin files are ours, so that
  nothing in ``/etc/rabbitmq`` applies.

Readiness is the AMQP port accepting connections, then ``rabbitmqctl
status``; stopping is ``rabbitmqctl stop``, then ``epmd -kill``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

from xenapinfs_driver.testing.stack import process

RABBIT_BIN = os.environ.get('XENAPINFS_RABBITMQ_BIN', '/usr/lib/rabbitmq/bin')
APT_PACKAGE = 'rabbitmq-server'
# Both the node and the command-line tool's hidden node listen for
# distribution on loopback only.
LOOPBACK_DIST = '-kernel inet_dist_use_interface {127,0,0,1}'


class Rabbit(process.Service):
    """``with Rabbit(workdir, log_path) as r: r.transport_url``."""

    def __init__(self, workdir: str, log_path: str):
        self.workdir = os.path.abspath(workdir)
        self.log_path = log_path
        self.node = 'xenapinfs-%s@localhost' % uuid.uuid4().hex[:8]
        self.port = self.dist_port = self.epmd_port = None
        self.proc: process.Process | None = None
        self.env: dict = {}

    @property
    def transport_url(self) -> str:
        return 'rabbit://guest:guest@%s:%d/' % (process.HOST, self.port)

    def ports(self) -> list:
        return [p for p in (self.port, self.dist_port, self.epmd_port) if p]

    def _tool(self, name: str) -> str:
        path = os.path.join(RABBIT_BIN, name)
        if not os.access(path, os.X_OK):
            raise process.ServiceError(
                '%s not found: install the %s apt package '
                '(tools/install-system-deps %s)'
                % (path, APT_PACKAGE, APT_PACKAGE))
        return path

    def _environment(self) -> dict:
        base = os.path.join(self.workdir, 'rabbitmq')
        for sub in ('home', 'mnesia', 'log'):
            os.makedirs(os.path.join(base, sub), exist_ok=True)
        conf = os.path.join(base, 'rabbitmq.conf')
        with open(conf, 'w') as f:
            # guest may log in from loopback only (the default, said here
            # so that a reader of the file knows who connects).
            f.write('loopback_users.guest = true\n')
        with open(os.path.join(base, 'enabled_plugins'), 'w') as f:
            f.write('[].\n')
        open(os.path.join(base, 'rabbitmq-env.conf'), 'w').close()
        env = dict(os.environ)
        env.update({
            'HOME': os.path.join(base, 'home'),
            'RABBITMQ_NODENAME': self.node,
            'RABBITMQ_NODE_IP_ADDRESS': process.HOST,
            'RABBITMQ_NODE_PORT': str(self.port),
            'RABBITMQ_DIST_PORT': str(self.dist_port),
            'ERL_EPMD_PORT': str(self.epmd_port),
            'ERL_EPMD_ADDRESS': process.HOST,
            'RABBITMQ_MNESIA_BASE': os.path.join(base, 'mnesia'),
            'RABBITMQ_LOG_BASE': os.path.join(base, 'log'),
            'RABBITMQ_LOGS': '-',
            'RABBITMQ_CONFIG_FILE': conf,
            'RABBITMQ_ADVANCED_CONFIG_FILE': os.path.join(base,
                                                          'advanced.config'),
            'RABBITMQ_CONF_ENV_FILE': os.path.join(base, 'rabbitmq-env.conf'),
            'RABBITMQ_ENABLED_PLUGINS_FILE': os.path.join(base,
                                                          'enabled_plugins'),
            'RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS': LOOPBACK_DIST,
            'RABBITMQ_CTL_ERL_ARGS': LOOPBACK_DIST,
        })
        return env

    def ctl(self, *args, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([self._tool('rabbitmqctl'), '-n', self.node,
                               *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def queues(self) -> set:
        """The names of the queues declared now (none if it fails)."""
        result = self.ctl('list_queues', '--quiet', '--no-table-headers',
                          'name')
        if result.returncode:
            return set()
        return set(result.stdout.split())

    def launch(self) -> None:
        """Start the node; its transport_url is known from now on."""
        server = self._tool('rabbitmq-server')
        self.port = process.free_port()
        self.dist_port = process.free_port()
        self.epmd_port = process.free_port()
        self.env = self._environment()
        self.proc = process.Process('rabbitmq', [server], self.log_path,
                                    env=self.env, cwd=self.workdir)
        self.proc.start()

    def wait_ready(self, timeout: float = 90) -> None:
        process.wait_until(lambda: process.port_in_use(self.port), timeout,
                           'rabbitmq on port %d' % self.port, [self.proc])
        status = self.ctl('status')
        if status.returncode:
            raise process.ServiceError('rabbitmqctl status failed: %s'
                                       % (status.stderr or status.stdout))

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.alive():
            try:
                self.ctl('stop', timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self.proc.stop(timeout=15)
        self.proc = None
        epmd = shutil.which('epmd') or '/usr/bin/epmd'
        # epmd refuses -kill while a node is registered: it can only be
        # ours (the port is private), and the node has just stopped.
        subprocess.run([epmd, '-port', str(self.epmd_port), '-kill'],
                       env=self.env, capture_output=True, timeout=10)
        process.wait_until(lambda: not process.port_in_use(self.epmd_port),
                           10, 'epmd on port %d to exit' % self.epmd_port)
