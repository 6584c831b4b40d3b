"""The dom0 plugin pickle contract, without a host."""

import pickle

import pytest

from xenapinfs_driver import exception
from xenapinfs_driver.xenapi import plugin

# What dom0's Python 2 plugins answer: pickle.dumps(obj) with Python 2's
# default protocol 0, where str is a byte string ('S' opcode).
PY2_ROOT = ("(dp0\nS'root'\np1\n(dp2\nS'uuid'\np3\nS'1f0e'\np4\nss"
            "S'n'\np5\nI7\ns.")
PY2_VERSION = "S'2.1'\np0\n."


def test_reads_python2_answers():
    assert plugin.loads(PY2_ROOT) == {'root': {'uuid': '1f0e'}, 'n': 7}
    assert plugin.loads(PY2_VERSION) == '2.1'


def test_dumps_is_protocol0_text_that_round_trips():
    args = {'args': [], 'kwargs': {'uuid_stack': ['a', 'b'], 'n': 2,
                                   'extra_headers': {'X-Roles': 'r1,r2'},
                                   'api_version': 2, 'label': 'caf\xe9'}}
    text = plugin.dumps(args)
    assert isinstance(text, str)
    # protocol 0 has no PROTO opcode and is line-oriented text
    assert not text.encode('latin-1').startswith(b'\x80')
    assert plugin.loads(text) == args


@pytest.mark.parametrize('obj', [pickle.Pickler, object(), {1: set()}])
def test_refuses_globals(obj):
    text = pickle.dumps(obj, protocol=0).decode('latin-1')
    with pytest.raises(exception.XenAPINFSException) as err:
        plugin.loads(text)
    assert 'plugin answer' in str(err.value)


def test_refuses_os_system_payload():
    # The classic pickle exploit: a global call. Never executed.
    evil = "cos\nsystem\n(S'touch /tmp/pwned-by-plugin'\ntR."
    with pytest.raises(exception.XenAPINFSException):
        plugin.loads(evil)


def test_refuses_oversized_or_non_text():
    with pytest.raises(exception.XenAPINFSException):
        plugin.loads('S' + 'a' * plugin.MAX_ANSWER)
    with pytest.raises(exception.XenAPINFSException):
        plugin.loads(b"S'x'\n.")


@pytest.mark.parametrize('text,want', [('2.1', (2, 1)), ('1.8', (1, 8)),
                                       ('10', (10,)), ('x.y', ())])
def test_parse_version(text, want):
    assert plugin.parse_version(text) == want
