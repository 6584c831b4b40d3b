"""The session's pure helpers: argument checks, URLs, scrubbing."""

import pytest

from xenapinfs_driver.xenapi import session
from xenapinfs_driver.xenapi import tasks


def test_ints_become_strings_bools_stay():
    got = session.check_args([5, True, {'virtual_size': 1 << 40},
                              ['a', 3], 'x'])
    assert got == ['5', True, {'virtual_size': str(1 << 40)}, ['a', '3'],
                   'x']


@pytest.mark.parametrize('bad', [None, [None], {'k': None}, [{'a': [None]}]])
def test_none_is_refused(bad):
    with pytest.raises(TypeError) as err:
        session.check_args(bad, 'VDI.create')
    assert 'VDI.create' in str(err.value)


@pytest.mark.parametrize('url,addr,want', [
    ('https://10.0.0.2', '10.0.0.1', 'https://10.0.0.1'),
    ('http://slave.example:8080/', '10.0.0.1', 'http://10.0.0.1:8080'),
    ('https://[fe80::2]:443', 'fe80::1', 'https://[fe80::1]:443'),
])
def test_master_url_keeps_scheme_and_port(url, addr, want):
    assert session.master_url(url, addr) == want


@pytest.mark.parametrize('method,safe', [
    ('VDI.get_record', True), ('SR.get_all_records_where', True),
    ('task.get_record', True), ('SR.scan', True), ('session.logout', True),
    ('VDI.create', False), ('VDI.destroy', False), ('PBD.plug', False),
    ('host.call_plugin', False), ('Async.VDI.copy', False)])
def test_only_read_calls_are_safe_to_resend(method, safe):
    assert session.is_safe(method) is safe


def test_scrub():
    assert session.scrub("['X', 'hunter2 and tok']", {'hunter2', 'tok', ''}) \
        == "['X', '*** and ***']"


def test_task_result():
    assert tasks.parse_result('<value>OpaqueRef:1</value>') == \
        'OpaqueRef:1'
    assert tasks.parse_result('') == ''
    assert tasks.parse_result('plain') == 'plain'
