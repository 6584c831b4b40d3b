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
"""The backend's capabilities and capacity, as cinder's scheduler reads them.

Stats never raise (as cinder's in-tree drivers): a host that cannot be
read reports ``unknown`` capacities and ``backend_state: down``.
"""

from oslo_log import log as logging
from oslo_utils import units

from xenapinfs_driver import migrate
from xenapinfs_driver.xenapi import storage

LOG = logging.getLogger(__name__)


def collect(backend, conf, upkeep, **named) -> dict:
    """The stats dict; ``named`` are the values the driver class fixes.

    :param backend: the driver's :class:`.backend.Backend` (None before a
        successful setup).
    :param conf: reads one option of the backend's section.
    :param upkeep: the periodic work that rides on the stats poll (stale
        refs, the orphan sweep), run before the capacity is read.
    """
    data = dict(
        named, vendor_name='Open Source',
        total_capacity_gb='unknown', free_capacity_gb='unknown',
        reserved_percentage=conf('reserved_percentage') or 0,
        max_over_subscription_ratio=conf('max_over_subscription_ratio') or
        20.0,
        thin_provisioning_support=True, thick_provisioning_support=False,
        multiattach=False, QoS_support=False, sparse_copy_volume=True,
        backend_state='down')
    try:
        upkeep()
        total, used, provisioned = storage.sr_capacity(backend.session,
                                                       backend.sr)
        data.update(location_info=migrate.location_info(backend),
                    total_capacity_gb=round(total / units.Gi, 2),
                    free_capacity_gb=round(max(total - used, 0) / units.Gi,
                                           2),
                    provisioned_capacity_gb=round(provisioned / units.Gi, 2),
                    backend_state='up')
    except Exception as exc:  # stats must never raise
        LOG.warning('Cannot read the capacity of SR %(sr)s: %(err)s',
                    {'sr': backend and backend.sr_uuid, 'err': exc})
    return data
