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
"""glance-api 33 under gunicorn on loopback: file store, sqlite, no keystone.

What glance 33 accepts from a VHD driver, as run here (the operator-facing
facts, checked by tests/unit/testing/test_dom0_glance.py and
tests/e2e/test_stack.py):

* ``container_format=ovf, disk_format=vhd`` (a XenServer tar.gz of
  ``0.vhd`` .. ``n.vhd``) needs **no setting**: ``ovf`` is in the default
  ``[image_format] container_formats``, ``vhd`` in ``disk_formats``, and
  glance inspects the data of ``bare`` images only. It reports no
  ``virtual_size`` for it.
* ``container_format=bare, disk_format=vhd`` with a dynamic or
  differencing VHD (footer copy in the first 512 bytes) needs no setting
  either. A **fixed** VHD (footer only at the end) is taken for raw and
  refused with 415, unless ``[image_format] require_image_format_match =
  false``; so is a tar.gz declared bare/vhd. This module leaves the default
  (true) unless asked.
* Downloads carry ``Content-MD5`` (hex md5, no ETag).

Identity: ``trust_headers=False`` is glance's own no-auth flavor (the
empty ``[paste_deploy] flavor``: every request is an anonymous admin, and
images get no owner), what cinder with ``auth_strategy=noauth`` and the
glance CLI need. ``trust_headers=True`` is a ``trusted`` flavor whose
pipeline has glance's ``context`` filter without keystone: the
``X-Identity-Status: Confirmed``, ``X-Tenant-Id`` (or ``X-Project-Id``),
``X-User-Id`` and ``X-Roles`` headers a caller sends become the request's
identity, so an image is owned by, and private to, the project that
created it. That is how a test proves the dom0 plugin's ``extra_headers``
reach glance.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request

from xenapinfs_driver.testing.stack import process

# Our own paste file: glance's pipelines minus the middleware a loopback
# test has no use for (CORS, osprofiler, caching), plus "trusted".
PASTE = """\
[composite:glance-api]
paste.composite_factory = glance.api:root_app_factory
/: api
/healthcheck: healthcheck

[composite:glance-api-trusted]
paste.composite_factory = glance.api:root_app_factory
/: api
/healthcheck: healthcheck

[composite:api]
paste.composite_factory = glance.api:pipeline_factory
default = http_proxy_to_wsgi versionnegotiation unauthenticated-context rootapp
trusted = http_proxy_to_wsgi versionnegotiation context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[app:healthcheck]
paste.app_factory = oslo_middleware:Healthcheck.app_factory
backends = disable_by_file
disable_by_file_path = {workdir}/healthcheck_disable

[filter:versionnegotiation]
paste.filter_factory = \
glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

[filter:unauthenticated-context]
paste.filter_factory = \
glance.api.middleware.context:UnauthenticatedContextMiddleware.factory

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory
"""

CONF = """\
[DEFAULT]
debug = {debug}
enabled_backends = fs:file
image_cache_dir = {workdir}/cache

[glance_store]
default_backend = fs

[fs]
filesystem_store_datadir = {workdir}/images

[os_glance_staging_store]
filesystem_store_datadir = {workdir}/staging

[os_glance_tasks_store]
filesystem_store_datadir = {workdir}/tasks

[database]
connection = sqlite:///{workdir}/glance.sqlite

[paste_deploy]
flavor = {flavor}
config_file = {workdir}/etc/glance-api-paste.ini

[oslo_policy]
enforce_new_defaults = false
enforce_scope = false

[image_format]
require_image_format_match = {format_match}
"""


def identity_headers(project_id: str, user_id: str = 'user',
                     roles=('member', 'reader')) -> dict:
    """What nova's generate_identity_headers sends; a trusted glance
    takes them as the caller's identity."""
    return {'X-Auth-Token': 'not-checked',
            'X-User-Id': user_id,
            'X-Tenant-Id': project_id,
            'X-Roles': ','.join(roles),
            'X-Identity-Status': 'Confirmed'}


class Glance(process.Service):
    """``with Glance(workdir, log_path) as g: g.url``."""

    def __init__(self, workdir: str, log_path: str, *,
                 trust_headers: bool = False,
                 require_image_format_match: bool = True,
                 debug: bool = False, env: dict | None = None):
        self.workdir = os.path.join(os.path.abspath(workdir), 'glance')
        self.log_path = log_path
        self.trust_headers = trust_headers
        self.require_image_format_match = require_image_format_match
        self.debug = debug
        self.extra_env = env or {}
        self.port: int | None = None
        self.proc: process.Process | None = None

    @property
    def url(self) -> str:
        return 'http://%s:%d' % (process.HOST, self.port)

    def ports(self) -> list:
        return [self.port] if self.port else []

    def _write_config(self) -> str:
        etc = os.path.join(self.workdir, 'etc')
        for sub in ('etc', 'images', 'staging', 'tasks', 'cache'):
            os.makedirs(os.path.join(self.workdir, sub), exist_ok=True)
        values = {'workdir': self.workdir,
                  'debug': str(self.debug).lower(),
                  'flavor': 'trusted' if self.trust_headers else '',
                  'format_match': str(self.require_image_format_match
                                      ).lower()}
        with open(os.path.join(etc, 'glance-api-paste.ini'), 'w') as f:
            f.write(PASTE.format(**values))
        conf = os.path.join(etc, 'glance-api.conf')
        with open(conf, 'w') as f:
            f.write(CONF.format(**values))
        return conf

    def launch(self) -> None:
        """Start glance-api; its url is known from now on."""
        conf = self._write_config()
        env = dict(os.environ)
        env.update(self.extra_env)
        # glance.wsgi.api reads glance-api.conf from this directory.
        env['OS_GLANCE_CONFIG_DIR'] = os.path.dirname(conf)
        sync = subprocess.run(
            [process.venv_bin('glance-manage'), '--config-file', conf,
             'db', 'sync'], env=env, capture_output=True, text=True,
            timeout=300)
        if sync.returncode:
            raise process.ServiceError('glance-manage db sync failed:\n%s'
                                       % (sync.stdout + sync.stderr))
        self.port = process.free_port()
        argv = [process.venv_bin('gunicorn'), '--workers', '1',
                '--threads', '4', '--bind', '%s:%d' % (process.HOST,
                                                       self.port),
                # Uploads of large images take longer than the default 30 s
                # a worker may stay silent; stopping need not wait long.
                '--timeout', '600', '--graceful-timeout', '3',
                'glance.wsgi.api:application']
        self.proc = process.Process('glance-api', argv, self.log_path,
                                    env=env, cwd=self.workdir)
        self.proc.start()

    def wait_ready(self, timeout: float = 60) -> None:
        process.wait_until(lambda: process.http_get(self.url + '/versions')
                           == 200, timeout, 'glance-api at %s' % self.url,
                           [self.proc])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)
            self.proc = None

    # -- a minimal v2 client, for tests and set-up ------------------------

    def request(self, method: str, path: str, body=None,
                headers: dict | None = None, content_type=None):
        """(status, headers, body bytes) of one request to the v2 API."""
        data = body
        hdrs = dict(headers or {})
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            hdrs.setdefault('Content-Type', content_type
                            or 'application/json')
        elif content_type:
            hdrs['Content-Type'] = content_type
        req = urllib.request.Request(self.url + path, data=data,
                                     headers=hdrs, method=method)
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.headers, exc.read()

    def create_image(self, headers=None, **fields) -> dict:
        status, _, body = self.request('POST', '/v2/images', fields,
                                       headers)
        if status != 201:
            raise process.ServiceError('image create: HTTP %d %s'
                                       % (status, body[:500]))
        return json.loads(body)

    def upload(self, image_id: str, data: bytes, headers=None) -> int:
        """PUT the image data; the HTTP status."""
        return self.request('PUT', '/v2/images/%s/file' % image_id, data,
                            headers, 'application/octet-stream')[0]

    def show(self, image_id: str, headers=None) -> dict | None:
        status, _, body = self.request('GET', '/v2/images/%s' % image_id,
                                       headers=headers)
        return json.loads(body) if status == 200 else None
