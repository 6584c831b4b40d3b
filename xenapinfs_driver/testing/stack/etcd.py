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
"""A private etcd on loopback (apt ``etcd-server``), for cinder's locks.

Clustered volume services on several machines need a lock service that
all reach; file locks work on one machine only. This one is a single
member started as the current user with its own data directory, client
and peer ports free ports on 127.0.0.1: a distribution's etcd service, if
one runs, is neither used nor touched. cinder reaches it through tooz's
``etcd3gw`` driver (etcd's HTTP gateway): ``backend_url``.

Readiness is ``GET /health`` answering ``"health":"true"``; stopping is
SIGTERM to its process group, and the data directory goes with it.
:meth:`pause` and :meth:`resume` stop and start the same member on the
same ports and data (an outage of the lock service).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request

from xenapinfs_driver.testing.stack import process

ETCD = os.environ.get('XENAPINFS_ETCD', '/usr/bin/etcd')
APT_PACKAGE = 'etcd-server'


class Etcd(process.Service):
    """``with Etcd(workdir, log_path) as e: e.backend_url``."""

    def __init__(self, workdir: str, log_path: str):
        self.data_dir = os.path.join(os.path.abspath(workdir), 'etcd')
        self.log_path = log_path
        self.port = self.peer_port = None
        self.proc: process.Process | None = None

    @property
    def url(self) -> str:
        return 'http://%s:%d' % (process.HOST, self.port)

    @property
    def backend_url(self) -> str:
        """``[coordination] backend_url`` for tooz's etcd3gw driver."""
        return 'etcd3+http://%s:%d' % (process.HOST, self.port)

    def ports(self) -> list:
        return [p for p in (self.port, self.peer_port) if p]

    def _argv(self) -> list:
        if not os.access(ETCD, os.X_OK):
            raise process.ServiceError(
                '%s not found: install the %s apt package '
                '(tools/install-system-deps %s)'
                % (ETCD, APT_PACKAGE, APT_PACKAGE))
        peer = 'http://%s:%d' % (process.HOST, self.peer_port)
        return [ETCD, '--name', 'xenapinfs', '--data-dir', self.data_dir,
                '--listen-client-urls', self.url,
                '--advertise-client-urls', self.url,
                '--listen-peer-urls', peer,
                '--initial-advertise-peer-urls', peer,
                '--initial-cluster', 'xenapinfs=%s' % peer,
                # The test's wall time: no need for a durable fsync each.
                '--unsafe-no-fsync']

    def launch(self) -> None:
        self.port = process.free_port()
        self.peer_port = process.free_port()
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        self._start()

    def _start(self) -> None:
        # Only what etcd needs: an ETCD_* variable of the caller's
        # environment would override the command line's settings.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith('ETCD')}
        self.proc = process.Process('etcd', self._argv(), self.log_path,
                                    env=env, cwd=self.data_dir)
        self.proc.start()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + '/health',
                                        timeout=2) as resp:
                return json.loads(resp.read()).get('health') == 'true'
        except (OSError, ValueError):
            return False

    def wait_ready(self, timeout: float = 60) -> None:
        process.wait_until(self.healthy, timeout, 'etcd at %s' % self.url,
                           [self.proc], interval=0.2)

    def pause(self) -> None:
        """Stop the member, keeping its ports and data."""
        self.proc.stop(timeout=15)

    def resume(self) -> None:
        """Start it again where it was, and wait until it serves."""
        self._start()
        self.wait_ready()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=15)
            self.proc = None
        shutil.rmtree(self.data_dir, ignore_errors=True)
