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
"""The wire-type markers, and the dispatcher's one check of them."""

import pytest

from xenapinfs_driver.testing.xapi import api
from xenapinfs_driver.testing.xapi import errors
from xenapinfs_driver.testing.xapi import wire

RECORD = wire.Record({'SR': wire.SRRef, 'size': wire.Int},
                     {'tags': (wire.Set(wire.String), [])})


def fault(kind, value, name='p'):
    with pytest.raises(errors.XapiError) as exc:
        wire.decode(name, kind, value)
    return exc.value.details


@pytest.mark.parametrize('kind, good, bad', [
    (wire.String, ['', 'x'], [1, True, b'x', []]),
    (wire.Bool, [True, False], [0, 1, 'true']),
    (wire.Int, ['0', '-3', str(1 << 40)], [1, True, 'big', '', 1.5]),
    (wire.Float, [0.5, 1], [True, '0.5']),
    (wire.VDIRef, ['OpaqueRef:x', ''], [1, {}]),
    (wire.Map, [{}, {'a': 'b'}], [{'a': 1}, [], 'a']),
    (wire.Set(wire.String), [[], ['a'], ('a',)], [['a', 1], {}, 'a']),
    (wire.Struct, [{}, {'a': [1]}], [[], 'a']),
])
def test_scalars_and_collections(kind, good, bad):
    for value in good:
        wire.decode('p', kind, value)
    for value in bad:
        assert fault(kind, value) == ['FIELD_TYPE_ERROR', 'p']


def test_int_becomes_an_int():
    assert wire.decode('size', wire.Int, '4096') == 4096


def test_a_nil_anywhere_names_the_parameter():
    assert fault(wire.Struct, {'a': [None]}, 'rule') == [
        'FIELD_TYPE_ERROR', 'rule']
    assert fault(RECORD, {'SR': None, 'size': '1'}, 'args') == [
        'FIELD_TYPE_ERROR', 'args']


def test_a_map_is_not_copied():
    value = {'a': 'b'}
    assert wire.decode('p', wire.Map, value) is value


def test_record_fields_named_and_defaulted():
    assert fault(RECORD, {'size': '1'}) == ['FIELD_TYPE_ERROR', 'SR']
    assert fault(RECORD, {'SR': 'r', 'size': 1}) == [
        'FIELD_TYPE_ERROR', 'size']
    assert fault(RECORD, {'SR': 'r', 'size': '1', 'tags': 'a'}) == [
        'FIELD_TYPE_ERROR', 'tags']
    assert fault(RECORD, ['SR']) == ['FIELD_TYPE_ERROR', 'p']
    one = wire.decode('args', RECORD, {'SR': 'r', 'size': '2', 'x': 'y'})
    assert one == {'SR': 'r', 'size': 2, 'tags': []}
    one['tags'].append('t')
    two = wire.decode('args', RECORD, {'SR': 'r', 'size': '2'})
    assert two['tags'] == []


def test_named_names_the_field():
    kind = wire.Named('other_config', wire.Map)
    assert fault(kind, {'k': 1}, 'value') == [
        'FIELD_TYPE_ERROR', 'other_config']


def test_every_parameter_needs_a_wire_type():
    def typed(call, sr: wire.SRRef, size: wire.Int = '0'):
        pass

    def untyped(call, sr: wire.SRRef, size):
        pass
    m = api.method('SR.typed', typed)
    assert (m.params, m.required, m.types) == (
        ('sr', 'size'), 1, (wire.SRRef, wire.Int))
    with pytest.raises(TypeError, match='size'):
        api.method('SR.untyped', untyped)
