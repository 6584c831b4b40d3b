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
"""The methods every class has: get_record, get_<field>, set_<field>...

A field's wire type comes from its default in ``schema``; a type error in
a setter or a map or tag editor names the field, not the parameter.

No ``from __future__ import annotations`` here: the handlers are closures
whose wire types depend on the class and field, so their annotations must
be evaluated where they are defined, not later from the module's globals.
"""

from xenapinfs_driver.testing.xapi import errors
from xenapinfs_driver.testing.xapi import schema
from xenapinfs_driver.testing.xapi import wire

# No client sets a DateTime field: none is writable.
_KINDS = ((bool, wire.Bool), (str, wire.String), (float, wire.Float),
          (dict, wire.Map), (list, wire.Set(wire.String)))


def field_type(cls: str, field: str) -> wire.WireType:
    """The wire type of a field, named after it for faults."""
    default = schema.SCHEMAS[cls].fields[field]
    value = default() if callable(default) else default
    kind = next(k for t, k in _KINDS if isinstance(value, t))
    return wire.Named(field, kind)


def methods(cls: str) -> dict:
    """get_record, get_<field>, set_<field>, add_to_<map>... of cls."""
    sch = schema.SCHEMAS[cls]
    ref = wire.Ref(cls)
    out = {}

    def get_record(call, self: ref):
        return call.db.record(cls, self)

    def get_by_uuid(call, uuid: wire.String):
        return call.db.by_uuid(cls, uuid)

    out['get_record'] = get_record
    out['get_by_uuid'] = get_by_uuid
    if sch.listable:
        def get_all(call):
            return call.db.refs(cls)

        def get_all_records(call):
            return {r: call.db.record(cls, r) for r in call.db.refs(cls)}

        def get_all_records_where(call, expr: wire.String):
            return call.db.where(cls, expr)
        out.update(get_all=get_all, get_all_records=get_all_records,
                   get_all_records_where=get_all_records_where)
        if 'name_label' in sch.fields:
            def get_by_name_label(call, label: wire.String):
                return call.db.find(cls, name_label=label)
            out['get_by_name_label'] = get_by_name_label
    for field in schema.all_fields(cls):
        out['get_' + field] = _getter(cls, field)
    for field in sch.writable:
        out['set_' + field] = _setter(cls, field)
        if field in sch.maps():
            out['add_to_' + field], out['remove_from_' + field] = \
                _map_editors(cls, field)
    if 'tags' in sch.writable:
        out['add_tags'], out['remove_tags'] = _tag_editors(cls)
    return {'%s.%s' % (cls, name): f for name, f in out.items()}


def _getter(cls, field):
    def get(call, self: wire.Ref(cls)):
        return call.db.record(cls, self)[field]
    return get


def _setter(cls, field):
    def set_(call, self: wire.Ref(cls), value: field_type(cls, field)):
        with call.db.lock:
            call.db.get(cls, self)
            call.db.update(cls, self, **{field: value})
        return ''
    return set_


def _map_editors(cls, field):
    key_type = wire.Named(field, wire.String)

    def add(call, self: wire.Ref(cls), key: key_type, value: key_type):
        with call.db.lock:
            rec = call.db.get(cls, self)
            if key in rec[field]:
                raise errors.XapiError('MAP_DUPLICATE_KEY', cls, field,
                                       rec['uuid'], key)
            rec[field][key] = value
        return ''

    def remove(call, self: wire.Ref(cls), key: key_type):
        with call.db.lock:
            call.db.get(cls, self)[field].pop(key, None)
        return ''
    return add, remove


def _tag_editors(cls):
    tag = wire.Named('tags', wire.String)

    def add(call, self: wire.Ref(cls), value: tag):
        with call.db.lock:
            tags = call.db.get(cls, self)['tags']
            if value not in tags:
                tags.append(value)
        return ''

    def remove(call, self: wire.Ref(cls), value: tag):
        with call.db.lock:
            tags = call.db.get(cls, self)['tags']
            if value in tags:
                tags.remove(value)
        return ''
    return add, remove
