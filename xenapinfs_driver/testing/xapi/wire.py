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
"""XenAPI's wire types, as markers a handler puts on its parameters.

``def vdi_resize(call, vdi: wire.Ref('VDI'), size: wire.Int)``: the
dispatcher reads the markers from the signature and decodes every
argument before the handler runs, as XAPI's generated server unmarshals
each parameter before it looks at the session. A value of the wrong type
is ``FIELD_TYPE_ERROR [name]``: the parameter's name, a record field's
own name, or what ``Named`` says. A nil anywhere in a value is a wrong
type too (XAPI cannot read one).

Decoding passes values through as the XML-RPC parser made them (they
belong to the call, and the database copies what it stores), except that
an ``int`` becomes a Python int and a ``Record`` comes back as a new dict
with its defaults filled in.
"""

from __future__ import annotations

import copy
import xmlrpc.client

from xenapinfs_driver.testing.xapi import errors


class WireType:
    """One wire type; ``decode`` checks a value and returns what to use."""

    def accepts(self, value) -> bool:
        raise NotImplementedError

    def decode(self, name: str, value):
        if not self.accepts(value):
            raise errors.field_type(name)
        return value


class Plain(WireType):
    """A scalar that XML-RPC carries as one Python type."""

    def __init__(self, kind: type, exclude: tuple = ()):
        self.kind = kind
        # bool is an int in Python, never a number on the wire.
        self.exclude = exclude

    def accepts(self, value) -> bool:
        return isinstance(value, self.kind) and \
            not isinstance(value, self.exclude)


class _IntAsString(WireType):
    """XAPI's int64: a decimal string (clients never send ``<int>``)."""

    def accepts(self, value) -> bool:
        try:
            int(value)
        except (TypeError, ValueError):
            return False
        return isinstance(value, str)

    def decode(self, name: str, value) -> int:
        return int(super().decode(name, value))


class Ref(Plain):
    """A ref of cls: any string (whether it names a record is
    ``HANDLE_INVALID``, the handler's business)."""

    def __init__(self, cls: str):
        super().__init__(str)
        self.cls = cls


class Set(WireType):
    """A set (an XML-RPC array) of one element type."""

    def __init__(self, element: WireType):
        self.element = element

    def accepts(self, value) -> bool:
        return isinstance(value, (list, tuple)) and \
            all(self.element.accepts(v) for v in value)


class MapOf(WireType):
    """A ``(K -> V) map``: a struct, whose member names are the keys
    written as strings (refs, enum names, ints as decimals)."""

    def __init__(self, key: WireType, value: WireType):
        self.key = key
        self.value = value

    def accepts(self, value) -> bool:
        return isinstance(value, dict) and all(
            self.key.accepts(k) and self.value.accepts(v)
            for k, v in value.items())


class Enum(WireType):
    """An enum: one of its value names, as a string.

    XAPI reads enum names case-insensitively (the old cinder library sent
    ``'disk'`` for ``Disk``); decoding gives the name as the model spells
    it, so that records only ever hold the model's spelling.
    """

    def __init__(self, name: str, values):
        self.name = name
        self.values = tuple(values)
        self._by_lower = {v.lower(): v for v in self.values}

    def accepts(self, value) -> bool:
        return isinstance(value, str) and value.lower() in self._by_lower

    def decode(self, name: str, value) -> str:
        return self._by_lower[super().decode(name, value).lower()]


class _Struct(WireType):
    """A struct whose members the handler itself judges."""

    def accepts(self, value) -> bool:
        return isinstance(value, dict)


class Record(WireType):
    """A class's record, as ``<class>.create`` takes it.

    :param required: field -> wire type; a missing one is a wrong type.
    :param optional: field -> (wire type, default). Other fields are
        ignored, as XAPI ignores what its record has no field for.
    """

    def __init__(self, required: dict, optional: dict | None = None):
        self.required = required
        self.optional = optional or {}

    def accepts(self, value) -> bool:
        return isinstance(value, dict)

    def decode(self, name: str, value) -> dict:
        super().decode(name, value)
        out = {}
        for field, kind in self.required.items():
            if field not in value:
                raise errors.field_type(field)
            out[field] = kind.decode(field, value[field])
        for field, (kind, default) in self.optional.items():
            out[field] = kind.decode(field, value[field]) \
                if field in value else copy.deepcopy(default)
        return out


class Named(WireType):
    """Another type, whose fault names ``field`` instead of the parameter
    (a generic setter's ``value`` stands for the field it sets)."""

    def __init__(self, field: str, kind: WireType):
        self.field = field
        self.kind = kind

    def accepts(self, value) -> bool:
        return self.kind.accepts(value)

    def decode(self, name: str, value):
        return self.kind.decode(self.field, value)


String = Plain(str)
Bool = Plain(bool)
Float = Plain((int, float), exclude=(bool,))
Int = _IntAsString()
Map = MapOf(String, String)
DateTime = Plain(xmlrpc.client.DateTime)
Struct = _Struct()
# Refs by name: a string in an annotation would read as a forward
# reference to linters.
HostRef = Ref('host')
SessionRef = Ref('session')
TaskRef = Ref('task')
SRRef = Ref('SR')
PBDRef = Ref('PBD')
VDIRef = Ref('VDI')
VBDRef = Ref('VBD')
VMRef = Ref('VM')


_SCALARS = {'string': String, 'bool': Bool, 'float': Float, 'int': Int,
            'datetime': DateTime}


def parse(ty: str, enums: dict) -> WireType:
    """The wire type of a type as XAPI's data model writes it:
    ``int``, ``VDI ref``, ``enum vdi_type``, ``string set``,
    ``(string -> enum vdi_operations) map``...

    :param enums: enum name -> its value names.
    """
    if ty in _SCALARS:
        return _SCALARS[ty]
    if ty.endswith(' set'):
        return Set(parse(ty[:-len(' set')], enums))
    if ty.startswith('(') and ty.endswith(') map'):
        key, value = ty[1:-len(') map')].split(' -> ', 1)
        return MapOf(parse(key, enums), parse(value, enums))
    if ty.endswith(' ref'):
        return Ref(ty[:-len(' ref')])
    if ty.startswith('enum '):
        name = ty[len('enum '):]
        return Enum(name, enums[name])
    raise ValueError('no wire type for %r' % ty)


def _has_nil(value) -> bool:
    if value is None:
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_nil(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nil(v) for v in value.values())
    return False


def decode(name: str, kind: WireType, value):
    """The argument a handler gets for parameter name; else the fault."""
    if _has_nil(value):
        raise errors.field_type(name)
    return kind.decode(name, value)
