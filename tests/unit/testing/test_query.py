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
"""get_all_records_where's grammar: the parser alone, then on the wire."""

import pytest
import XenAPI

from tests import xapi_fixture
from xenapinfs_driver.testing.xapi import query

REC = {'name_label': 'a "quoted" one', 'SR': 'OpaqueRef:1',
       'managed': True, 'read_only': False, 'virtual_size': '1024'}


@pytest.mark.parametrize('expr, expected', [
    ('true', True),
    ('false', False),
    ('not true', False),
    ('not not true', True),
    ('field "SR"="OpaqueRef:1"', True),
    ('"OpaqueRef:1" = field "SR"', True),
    ('field "SR"="OpaqueRef:2"', False),
    ('field "managed"="true"', True),
    ('field "read_only"="false"', True),
    ('field "virtual_size"="1024"', True),
    ('field "name__label"="a \\"quoted\\" one"', True),
    ('field "SR"="OpaqueRef:1" and field "managed"="false"', False),
    ('field "SR"="OpaqueRef:2" or field "managed"="true"', True),
    # and binds tighter than or
    ('true or false and false', True),
    ('(true or false) and false', False),
    ('not (field "managed"="true" and field "SR"="OpaqueRef:1")', False),
    ('  TRUE  ', True),
    ('field "nothere"="x"', False),
    ('field "nothere"=field "nothere"', False),
    ('"x"="x"', True),
])
def test_evaluate(expr, expected):
    assert query.evaluate(query.parse(expr), REC) is expected


@pytest.mark.parametrize('expr, message', [
    ('', 'expected a string at offset 0, found the end'),
    ('field "a"', "expected '='"),
    ('field "a"="b" and', 'found the end'),
    ('field a="b"', "unknown word 'a'"),
    ('field "a"="b', "unexpected character '\"'"),
    ('(true', "expected ')'"),
    ('true true', "expected 'end'"),
    ('field "a" == "b"', "found '='"),
    ('field "a"="b" # c', "unexpected character '#'"),
])
def test_syntax_errors(expr, message):
    with pytest.raises(query.QueryError) as exc:
        query.parse(expr)
    assert message in str(exc.value)


def test_where_on_the_wire(session, sr, caplog):
    x = session.xenapi
    a = xapi_fixture.create_vdi(session, sr, 2 << 20, name_label='a')
    b = xapi_fixture.create_vdi(session, sr, 4 << 20, name_label='b')
    snap = x.VDI.snapshot(a, {})
    got = x.VDI.get_all_records_where(
        'field "SR"="%s" and field "managed"="true"' % sr)
    assert set(got) == {a, b, snap}
    assert got[b]['name_label'] == 'b'
    got = x.VDI.get_all_records_where(
        'field "is_a_snapshot"="true" or field "name__label"="b"')
    assert set(got) == {b, snap}
    got = x.VDI.get_all_records_where('not field "managed"="true"')
    assert [r['name_label'] for r in got.values()] == ['base copy']
    pbds = x.PBD.get_all_records_where(
        'field "SR"="%s" and field "currently_attached"="true"' % sr)
    assert list(pbds) == x.SR.get_PBDs(sr)
    assert x.VDI.get_all_records_where('false') == {}
    with pytest.raises(XenAPI.Failure) as exc:
        x.VDI.get_all_records_where('field "SR"=')
    code, message = exc.value.details
    assert code == 'INTERNAL_ERROR'
    assert 'does not parse' in message and 'offset 11' in message
    x.VDI.get_all_records_where('field "colour"="red"')
    assert 'unknown fields colour' in caplog.text
