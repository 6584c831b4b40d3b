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

The eight classes a storage client sees (session, host, pool, SR, PBD,
VDI, VBD, task) are built from ``datamodel.json``, an extract of XAPI's
data model (``tools/trim_datamodel.py``): every field a real record has,
its wire type, and its default where the model gives one. ``_CHOSEN``
holds the values this server starts a record with where the model gives
none or gives one XAPI itself overrides on creation. VM and PIF, which the
server only carries for dom0 and the management interface, are declared
by hand with the few fields a storage client reads.

Stored values are wire values: ints travel as decimal strings, a datetime
as ``xmlrpc.client.DateTime``, an enum as its name. Reverse references
(``SR.VDIs``, ``VDI.VBDs``...) are not stored: ``BACKREFS`` says how the
database computes them on each read, so they can never go stale.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import xmlrpc.client

from xenapinfs_driver.testing.xapi import wire

NULL = 'OpaqueRef:NULL'
EPOCH = '19700101T00:00:00Z'
MODEL_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          'datamodel.json')


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
    fields: dict                    # field -> default (or a factory)
    types: dict                     # field -> wire.WireType
    writable: frozenset = frozenset()   # set_<field>
    # Maps and sets with add/remove messages (the RW ones, and those the
    # model gives explicit editors).
    editable: frozenset = frozenset()
    # Whether get_all, get_all_records and the _where forms exist (XAPI
    # does not list sessions).
    listable: bool = True
    by_name_label: bool = True
    # Fields whose key stays in the record but whose getter is gone.
    removed: frozenset = frozenset()
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
        return [f for f, t in self.types.items()
                if isinstance(t, wire.MapOf)]

    def sets(self) -> list:
        return [f for f, t in self.types.items() if isinstance(t, wire.Set)]


# Explicit messages of the model that behave as plain setters here (XAPI
# declares them by hand because the field is not RW, e.g. SR.name_label,
# which a client may change, but through the SR's backend).
_EXPLICIT_SETTERS = {
    'SR': ('name_label', 'name_description', 'shared'),
    'VDI': ('name_label', 'name_description', 'sharable', 'read_only'),
    'VBD': ('mode',),
    'PBD': ('device_config',),
    'task': ('other_config', 'status', 'progress', 'result', 'error_info'),
}
_EXPLICIT_EDITORS = {'task': ('other_config',)}
# The classes the model marks PersistNothing: a restart forgets them.
_NOT_PERSISTED = ('session', 'task')
# Values this server starts records with, where the model has no default
# (an enum needs one) or XAPI's own create sets another value.
_CHOSEN = {
    'session': dict(this_host=NULL, this_user=NULL, last_active=epoch,
                    is_local_superuser=True),
    'host': dict(enabled=True, API_version_major='2',
                 API_version_minor='16', API_version_vendor='XenSource',
                 edition='xcp-ng', sched_policy='credit'),
    'pool': {},
    'SR': {},
    'PBD': {},
    'VDI': dict(type='user', managed=True, snapshot_of=NULL),
    'VBD': dict(mode='RW', type='Disk'),
    # A task may be cancelled until it finishes.
    'task': dict(created=now, finished=epoch, status='pending',
                 allowed_operations=['cancel'], subtask_of=NULL),
}
_ZERO = {'string': '', 'int': '0', 'float': 0.0, 'bool': False,
         'datetime': epoch}


def _zero(ty: str):
    """The value of a type a field takes when nothing else says."""
    if ty.endswith(' set'):
        return []
    if ty.endswith(' map'):
        return {}
    if ty.endswith(' ref'):
        return NULL
    return _ZERO[ty]


def _from_model(ty: str, value):
    """The model's default of a field as a wire value."""
    if ty == 'int':
        return str(value)
    if ty == 'int set':
        return [str(v) for v in value]
    if ty == 'float':
        return float(value)
    if ty == 'datetime':
        return lambda: xmlrpc.client.DateTime(value)
    return value


def _modelled(name: str, model: dict, backrefs: dict) -> Schema:
    enums = model['enums']
    chosen = _CHOSEN[name]
    fields, types = {}, {}
    for f in model['fields'] + model['removed_fields']:
        types[f['name']] = wire.parse(f['type'], enums)
        if f['name'] in backrefs:
            continue
        if f['name'] in chosen:
            fields[f['name']] = chosen[f['name']]
        elif 'default' in f:
            fields[f['name']] = _from_model(f['type'], f['default'])
        elif f['type'].startswith('enum '):
            raise ValueError('%s.%s: an enum needs a chosen default'
                             % (name, f['name']))
        else:
            fields[f['name']] = _zero(f['type'])
    writable = {f['name'] for f in model['fields']
                if f['qualifier'] == 'RW'}
    flags = model['flags']
    return Schema(name, fields, types,
                  frozenset(writable | set(_EXPLICIT_SETTERS.get(name, ()))),
                  frozenset(writable | set(_EXPLICIT_EDITORS.get(name, ()))),
                  listable=flags['exposes_get_all_family'],
                  by_name_label=flags['has_get_by_name_label'],
                  removed=frozenset(f['name']
                                    for f in model['removed_fields']),
                  persist=name not in _NOT_PERSISTED)


def _by_hand(name: str, fields: dict, writable) -> Schema:
    """A class outside the extract: wire types follow the defaults."""
    kinds = ((bool, wire.Bool), (str, wire.String), (float, wire.Float),
             (dict, wire.Map), (list, wire.Set(wire.String)))
    types = {f: next(k for t, k in kinds if isinstance(v, t))
             for f, v in fields.items()}
    return Schema(name, fields, types, frozenset(writable),
                  frozenset(writable))


with open(MODEL_FILE) as _f:
    MODEL = json.load(_f)

# class -> {field: (class whose records point here, their field)}
BACKREFS = {
    'host': {'PBDs': ('PBD', 'host'), 'PIFs': ('PIF', 'host'),
             'resident_VMs': ('VM', 'resident_on')},
    'SR': {'PBDs': ('PBD', 'SR'), 'VDIs': ('VDI', 'SR')},
    'VDI': {'VBDs': ('VBD', 'VDI'), 'snapshots': ('VDI', 'snapshot_of')},
    'VM': {'VBDs': ('VBD', 'VM')},
}

_COMMON = {'uuid': '', 'other_config': {}}
_NAMED = dict(_COMMON, name_label='', name_description='', tags=[])
_NAMES = ('name_label', 'name_description', 'other_config', 'tags')

SCHEMAS = {n: _modelled(n, m, BACKREFS.get(n, {}))
           for n, m in MODEL['classes'].items()}
SCHEMAS.update({s.name: s for s in (
    _by_hand('VM', dict(_NAMED, power_state='Running', is_a_template=False,
                        is_control_domain=True, resident_on=NULL,
                        domid='0', memory_static_max='0', VCPUs_max='1',
                        allowed_operations=[], current_operations={}),
             _NAMES),
    _by_hand('PIF', dict(_COMMON, device='eth0', host=NULL, network=NULL,
                         MAC='', MTU='1500', VLAN='-1', physical=True,
                         currently_attached=True,
                         ip_configuration_mode='Static', IP='',
                         netmask='255.0.0.0', gateway='', DNS='',
                         management=True),
             ('other_config',)),
)})
# Wire names of the messages that have an Async form, and of those XAPI
# has removed (they answer MESSAGE_REMOVED).
ASYNC = frozenset(n for m in MODEL['classes'].values() for n in m['async'])
REMOVED = frozenset('%s.%s' % (c, n) for c, m in MODEL['classes'].items()
                    for n in m['removed_messages'])


def all_fields(cls: str) -> list:
    """Every field a record of cls has on the wire."""
    return list(SCHEMAS[cls].fields) + list(BACKREFS.get(cls, ()))
