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
"""The configuration files of the stack's cinder services.

What an operator writes for a single-node cinder without keystone
(reference dependencies.md, section 6): ``auth_strategy = noauth`` (the API
takes ``X-Auth-Token: user:project`` and makes everyone an admin; no
project id in the URL), RabbitMQ, sqlite, one section per backend. Two
settings exist only because there is no sudo here: oslo.privsep would
start its daemons through ``sudo cinder-rootwrap``; running as root,
``helper_command`` starts ``privsep-helper`` directly.

A volume service among several, in a cluster or with private locks gets a
second file, read after the first: its ``host``, ``cluster`` and lock
directories.
"""

from __future__ import annotations

import os
import sys

from xenapinfs_driver.testing.stack import process

# The internal tenant the image-volume cache keeps its volumes in.
INTERNAL_TENANT = ('cinder-internal-user', 'cinder-internal-project')


def value_text(value) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (list, tuple)):
        return ','.join(str(v) for v in value)
    return str(value)


def section(name: str, options: dict) -> str:
    lines = ['[%s]' % name]
    lines += ['%s = %s' % (k, value_text(v)) for k, v in options.items()]
    return '\n'.join(lines) + '\n\n'


def main_text(c) -> str:
    """``cinder.conf`` of every service of ``c`` (a ``cinder.Cinder``)."""
    w = c.workdir
    etc = os.path.join(sys.prefix, 'etc', 'cinder')
    helper = '%s --config-file %s' % (process.venv_bin('privsep-helper'),
                                      c.conf_path)
    default = {
        'debug': c.debug,
        'host': c.host,
        'my_ip': process.HOST,
        'state_path': w,
        'auth_strategy': 'noauth',
        'transport_url': c.rabbit.transport_url,
        'api_paste_config': os.path.join(etc, 'api-paste.ini'),
        'resource_query_filters_file': os.path.join(
            etc, 'resource_filters.json'),
        'osapi_volume_listen': process.HOST,
        'osapi_volume_listen_port': c.port,
        'osapi_volume_workers': 1,
        'enabled_backends': list(c.backends),
        'default_volume_type': c.default_type,
        'image_conversion_dir': os.path.join(w, 'conversion'),
        # Stopping must not wait the default 60 s for idle services.
        'graceful_shutdown_timeout': 5,
    }
    if c.glance_url:
        default['glance_api_servers'] = c.glance_url
    if c.image_volume_cache:
        default['cinder_internal_tenant_user_id'] = INTERNAL_TENANT[0]
        default['cinder_internal_tenant_project_id'] = INTERNAL_TENANT[1]
    sections = {
        'DEFAULT': default,
        'database': {'connection': 'sqlite:///%s/cinder.sqlite' % w},
        'oslo_concurrency': {'lock_path': os.path.join(w, 'locks')},
        'coordination': {'backend_url': c.coordination},
        'cinder_sys_admin': {'helper_command': helper},
        'privsep_osbrick': {'helper_command': helper},
    }
    for name, opts in c.backends.items():
        opts = dict(opts)
        if c.image_volume_cache:
            opts.setdefault('image_volume_cache_enabled', True)
        sections[name] = opts
    for name, opts in c.extra.items():
        sections.setdefault(name, {}).update(opts)
    return ''.join(section(n, o) for n, o in sections.items())


def volume_file(c, index: int) -> str | None:
    """Write the second config file of volume service ``index``: its
    host, cluster and private locks; None when there is one service, no
    cluster and no private locks."""
    if c.volume_services == 1 and not c.cluster and not c.private_locks:
        return None
    path = os.path.join(c.workdir, 'volume-%d.conf' % (index + 1))
    options = {'host': c.volume_host(index)}
    if c.cluster:
        options['cluster'] = c.cluster
    text = section('DEFAULT', options)
    if c.private_locks:
        # The later config file wins: these replace the shared ones.
        coordination, locks = private_lock_dirs(c.workdir, index)
        text += section('coordination', {
            'backend_url': 'file://%s' % coordination})
        text += section('oslo_concurrency', {'lock_path': locks})
    with open(path, 'w') as f:
        f.write(text)
    return path


def private_lock_dirs(workdir: str, index: int) -> tuple[str, str]:
    """The tooz and oslo.concurrency lock directories of volume service
    ``index`` when its locks are private."""
    return tuple(os.path.join(workdir, '%s-%d' % (kind, index + 1))
                 for kind in ('coordination', 'locks'))
