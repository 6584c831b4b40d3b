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
"""The methods XAPI generates for every class (its implicit messages).

``get_record``, ``get_by_uuid``, ``get_<field>`` for every field;
``get_by_name_label`` and the ``get_all`` family where the class has
them; for a field a client may write, ``set_<field>``, and
``add_to_<field>``/``remove_from_<field>`` for a map or
``add_<field>``/``remove_<field>`` for a set. A field the model has
removed keeps its key in the record, but its getter answers
``MESSAGE_REMOVED`` (the dispatcher does that, see ``api``).

A field's wire type is the schema's; a type error in a setter or an
editor names the field, not the parameter.

No ``from __future__ import annotations`` here: the handlers are closures
whose wire types depend on the class and field, so their annotations must
be evaluated where they are defined, not later from the module's globals.
"""

from xenapinfs_driver.testing.xapi import errors
from xenapinfs_driver.testing.xapi import schema
from xenapinfs_driver.testing.xapi import wire


def field_type(cls: str, field: str) -> wire.WireType:
    """The wire type of a field, named after it for faults."""
    return wire.Named(field, schema.SCHEMAS[cls].types[field])


def methods(cls: str) -> dict:
    """The implicit messages of cls, by wire name."""
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

        def get_all_where(call, expr: wire.String):
            return list(call.db.where(cls, expr))

        def get_all_records_where(call, expr: wire.String):
            return call.db.where(cls, expr)
        out.update(get_all=get_all, get_all_records=get_all_records,
                   get_all_where=get_all_where,
                   get_all_records_where=get_all_records_where)
    if sch.by_name_label and 'name_label' in sch.fields:
        def get_by_name_label(call, label: wire.String):
            return call.db.find(cls, name_label=label)
        out['get_by_name_label'] = get_by_name_label
    for field in schema.all_fields(cls):
        if field not in sch.removed:
            out['get_' + field] = _getter(cls, field)
    for field in sch.writable:
        out['set_' + field] = _setter(cls, field)
    for field in sch.editable:
        if field in sch.maps():
            out['add_to_' + field], out['remove_from_' + field] = \
                _map_editors(cls, field)
        if field in sch.sets():
            out['add_' + field], out['remove_' + field] = \
                _set_editors(cls, field)
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
    kind = schema.SCHEMAS[cls].types[field]
    key_type = wire.Named(field, kind.key)
    value_type = wire.Named(field, kind.value)

    def add(call, self: wire.Ref(cls), key: key_type, value: value_type):
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


def _set_editors(cls, field):
    # A set holds a value once: adding it again or removing an absent one
    # changes nothing and is no error.
    element = wire.Named(field, schema.SCHEMAS[cls].types[field].element)

    def add(call, self: wire.Ref(cls), value: element):
        with call.db.lock:
            values = call.db.get(cls, self)[field]
            if value not in values:
                values.append(value)
        return ''

    def remove(call, self: wire.Ref(cls), value: element):
        with call.db.lock:
            values = call.db.get(cls, self)[field]
            if value in values:
                values.remove(value)
        return ''
    return add, remove
