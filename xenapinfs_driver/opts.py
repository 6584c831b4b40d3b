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
"""The driver's options, the single place they are declared.

They are registered in cinder's shared backend group and read only from
the driver's own backend section (``self.configuration``), so that several
XenAPINFS backends can point at different hosts. The first six names are
those of the historical cinder driver, kept so old cinder.conf sections
work unchanged.
"""

from oslo_config import cfg

from cinder.volume import configuration

xenapi_opts = [
    cfg.StrOpt('xenapi_connection_url',
               help='URL of the XenServer or XCP-ng host to manage the SR '
                    'through, for example https://xenserver.example.com. '
                    'Any pool member works: the driver follows the pool '
                    'master.'),
    cfg.StrOpt('xenapi_connection_username',
               default='root',
               help='User name for the XenAPI login.'),
    cfg.StrOpt('xenapi_connection_password',
               secret=True,
               help='Password for the XenAPI login.'),
    cfg.StrOpt('xenapi_nfs_server',
               help='NFS server that holds the storage repository, as the '
                    'XenServer host reaches it.'),
    cfg.StrOpt('xenapi_nfs_serverpath',
               help='Exported path on the NFS server; the SR is a '
                    'directory named after its uuid below it.'),
    cfg.StrOpt('xenapi_sr_base_path',
               default='/var/run/sr-mount',
               help='Directory in dom0 where XenServer mounts SRs; the dom0 '
                    'glance plugin writes images to <this>/<sr uuid>.'),
    cfg.StrOpt('xenapi_sr_uuid',
               help='Use the NFS SR with this uuid instead of the one the '
                    'driver creates and tags on first start. The SR is '
                    'introduced if the host does not know it.'),
    cfg.StrOpt('xenapi_image_transfer',
               default='auto',
               choices=[('auto', 'Use the dom0 glance plugin when the host '
                                 'has it, else stream.'),
                        ('plugin', 'Always use the dom0 glance plugin '
                                   '(download_vhd2 / upload_vhd2).'),
                        ('stream', 'Move image data through the cinder '
                                   'host and XAPI\'s /import_raw_vdi and '
                                   '/export_raw_vdi handlers.')],
               help='How image data moves between glance and the SR.'),
    cfg.BoolOpt('xenapi_ssl_verify',
                default=True,
                help='Verify the TLS certificate of an https '
                     'xenapi_connection_url.'),
    cfg.StrOpt('xenapi_ssl_ca_bundle',
               help='CA bundle file to verify the host\'s certificate with, '
                    'instead of the system\'s trusted CAs.'),
    cfg.IntOpt('xenapi_connection_timeout',
               default=120, min=1,
               help='Seconds one XenAPI call may take before the '
                    'connection is given up. Long work (copies, plugin '
                    'transfers) runs as tasks and is not bound by this.'),
    cfg.IntOpt('xenapi_connection_retries',
               default=3, min=0,
               help='How many times a failed connection to the host is '
                    'retried, with backoff, before the operation fails.'),
    cfg.IntOpt('xenapi_connection_concurrent',
               default=4, min=1,
               help='How many XenAPI calls one volume service may run at '
                    'once (one login each).'),
    cfg.IntOpt('xenapi_plugin_retries',
               default=3, min=0,
               help='How many times a dom0 glance plugin transfer that '
                    'failed with a retryable error is tried again.'),
    cfg.IntOpt('xenapi_image_timeout',
               default=3600, min=1,
               help='Seconds an image transfer may take.'),
    cfg.IntOpt('xenapi_migration_timeout',
               default=7200, min=1,
               help='Seconds the host\'s copy of a volume into another '
                    'backend\'s SR (a migration or retype between two '
                    'XenAPINFS backends of one pool) may take.'),
    cfg.IntOpt('xenapi_max_chain_depth',
               default=30, min=1, max=30,
               help='Longest VHD chain accepted in an image that is '
                    'downloaded or uploaded; XenServer refuses chains '
                    'longer than 30.'),
    cfg.IntOpt('xenapi_full_copy_depth',
               default=25, min=2, max=29,
               help='Deepest VHD chain a copy-on-write snapshot, clone, '
                    'volume from snapshot or upload snapshot may have. '
                    'Past it the driver makes an independent full copy '
                    '(VDI.copy) instead, which takes time and space in '
                    'proportion to the data but starts a new chain: '
                    'XenServer refuses snapshots and clones of chains '
                    'deeper than 30, and each kept snapshot or clone adds '
                    'a level. The gap to 30 leaves room for snapshots '
                    'made outside cinder.'),
    cfg.IntOpt('xenapi_image_compression_level',
               default=1, min=1, max=9,
               help='gzip level of XenServer (ovf/vhd) images uploaded '
                    'by the stream path, which compresses on every core '
                    '(up to 8). What each costs, per core, on '
                    'incompressible data (most of a used disk): 1 (isal, '
                    'where installed) about 15 times zlib\'s speed, '
                    'hundreds of MiB/s; 2 and 3 (isal) several times '
                    'slower than 1; 4 to 9 (zlib-ng or zlib) 20 to 30 '
                    'MiB/s, which then bounds the upload\'s speed. Higher '
                    'levels make images smaller only where the data '
                    'compresses (text, zeros written out).'),
    cfg.IntOpt('xenapi_orphan_grace_period',
               default=600, min=0,
               help='Seconds a temporary VDI (an upload\'s snapshot, a '
                    'download\'s layers, a snapshot or clone not yet '
                    'tagged) must be old, and its operation gone, before '
                    'the orphan sweep destroys it. The sweep runs when '
                    'the volume service starts and at each stats poll.'),
    cfg.IntOpt('xenapi_orphan_sweep_budget',
               default=10, min=0,
               help='The most orphan VDIs one sweep destroys, so that a '
                    'stats poll stays short; 0 turns the sweep off.'),
]

CONF = cfg.CONF
CONF.register_opts(xenapi_opts, group=configuration.SHARED_CONF_GROUP)


def list_opts():
    """oslo.config.opts entry point, for the sample config generator."""
    return [('backend_defaults', xenapi_opts)]
