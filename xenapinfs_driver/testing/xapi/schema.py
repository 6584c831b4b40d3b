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
"""The classes the server knows: fields, defaults, what a client may set.

A field's default also fixes its wire type: ``str`` (ints and enums travel
as strings, as XAPI sends ``int`` fields), ``bool``, ``float``, ``dict``
(a map of str to str), ``list`` (a set or a list of refs) or
``DateTime``. Reverse references (``SR.VDIs``, ``VDI.VBDs``...) are not
stored: ``BACKREFS`` says how the database computes them on each read, so
they can never go stale.
"""

from __future__ import annotations

import dataclasses
import time
import xmlrpc.client

NULL = 'OpaqueRef:NULL'
EPOCH = '19700101T00:00:00Z'


def now() -> xmlrpc.client.DateTime:
    """The current time as XAPI sends it (``dateTime.iso8601``, UTC)."""
    return xmlrpc.client.DateTime(time.strftime('%Y%m%dT%H:%M:%SZ',
                                                time.gmtime()))


def epoch() -> xmlrpc.client.DateTime:
    return xmlrpc.client.DateTime(EPOCH)


@dataclasses.dataclass
class Schema:
    """One class: its stored fields (with defaults) and its API surface."""

    name: str
    fields: dict
    writable: frozenset = frozenset()
    # Whether get_all, get_all_records and get_all_records_where exist
    # (XAPI does not list sessions).
    listable: bool = True
    # Whether the database file keeps it across a restart: XAPI's
    # datamodel marks sessions and tasks ``PersistNothing``.
    persist: bool = True

    def default(self, field: str):
        value = self.fields[field]
        if callable(value):
            return value()
        if isinstance(value, (dict, list)):
            return type(value)(value)
        return value

    def maps(self) -> list:
        return [f for f, v in self.fields.items() if isinstance(v, dict)]


_COMMON = {'uuid': '', 'other_config': {}}
_NAMED = dict(_COMMON, name_label='', name_description='', tags=[])
_NAMES = frozenset(('name_label', 'name_description', 'other_config',
                    'tags'))

SCHEMAS = {s.name: s for s in (
    Schema('pool', dict(_NAMED, master=NULL, default_SR=NULL,
                        suspend_image_SR=NULL, crash_dump_SR=NULL,
                        ha_enabled=False),
           _NAMES | {'default_SR'}),
    Schema('host', dict(_NAMED, hostname='', address='', enabled=True,
                        API_version_major='2', API_version_minor='16',
                        API_version_vendor='XenSource',
                        software_version={}, edition='xcp-ng',
                        memory_overhead='0', allowed_operations=[],
                        current_operations={}),
           _NAMES),
    Schema('session', dict(_COMMON, this_host=NULL, this_user=NULL,
                           last_active=epoch, pool=False,
                           is_local_superuser=True, subject=NULL,
                           validation_time=epoch, auth_user_sid='',
                           auth_user_name='', rbac_permissions=[],
                           tasks=[], parent=NULL, originator=''),
           frozenset(('other_config',)), listable=False, persist=False),
    Schema('task', dict(_COMMON, name_label='', name_description='',
                        allowed_operations=['cancel'],
                        current_operations={}, created=now,
                        finished=epoch, status='pending',
                        resident_on=NULL, progress=0.0, type='',
                        result='', error_info=[], subtask_of=NULL,
                        subtasks=[], backtrace='()'),
           frozenset(('other_config', 'status', 'progress', 'result',
                      'error_info')), persist=False),
    Schema('SR', dict(_NAMED, allowed_operations=[], current_operations={},
                      virtual_allocation='0', physical_utilisation='0',
                      physical_size='0', type='', content_type='',
                      shared=False, sm_config={}, blobs={},
                      local_cache_enabled=False, introduced_by=NULL,
                      clustered=False, is_tools_sr=False),
           _NAMES | {'sm_config', 'shared'}),
    Schema('PBD', dict(_COMMON, host=NULL, SR=NULL, device_config={},
                       currently_attached=False),
           frozenset(('other_config', 'device_config'))),
    Schema('VDI', dict(_NAMED, allowed_operations=[], current_operations={},
                       SR=NULL, virtual_size='0', physical_utilisation='0',
                       type='user', sharable=False, read_only=False,
                       storage_lock=False, location='', managed=True,
                       missing=False, parent=NULL, xenstore_data={},
                       sm_config={}, is_a_snapshot=False, snapshot_of=NULL,
                       snapshot_time=epoch, allow_caching=False,
                       on_boot='persist', metadata_of_pool=NULL,
                       metadata_latest=False, is_tools_iso=False,
                       cbt_enabled=False),
           _NAMES | {'sm_config', 'xenstore_data', 'sharable',
                     'read_only'}),
    Schema('VBD', dict(_COMMON, allowed_operations=[], current_operations={},
                       VM=NULL, VDI=NULL, device='', userdevice='',
                       bootable=False, mode='RW', type='Disk',
                       unpluggable=True, storage_lock=False, empty=False,
                       currently_attached=False, status_code='0',
                       status_detail='', runtime_properties={},
                       qos_algorithm_type='', qos_algorithm_params={},
                       qos_supported_algorithms=[]),
           frozenset(('other_config', 'mode', 'userdevice', 'bootable',
                      'unpluggable'))),
    Schema('VM', dict(_NAMED, power_state='Running', is_a_template=False,
                      is_control_domain=True, resident_on=NULL, domid='0',
                      memory_static_max='0', VCPUs_max='1',
                      allowed_operations=[], current_operations={}),
           _NAMES),
    Schema('PIF', dict(_COMMON, device='eth0', host=NULL, network=NULL,
                       MAC='', MTU='1500', VLAN='-1', physical=True,
                       currently_attached=True, ip_configuration_mode='Static',
                       IP='', netmask='255.0.0.0', gateway='', DNS='',
                       management=True),
           frozenset(('other_config',))),
)}

# class -> {field: (class whose records point here, their field)}
BACKREFS = {
    'host': {'PBDs': ('PBD', 'host'), 'PIFs': ('PIF', 'host'),
             'resident_VMs': ('VM', 'resident_on')},
    'SR': {'PBDs': ('PBD', 'SR'), 'VDIs': ('VDI', 'SR')},
    'VDI': {'VBDs': ('VBD', 'VDI'), 'snapshots': ('VDI', 'snapshot_of')},
    'VM': {'VBDs': ('VBD', 'VM')},
}


def all_fields(cls: str) -> list:
    """Every field a record of cls has on the wire."""
    return list(SCHEMAS[cls].fields) + list(BACKREFS.get(cls, ()))
