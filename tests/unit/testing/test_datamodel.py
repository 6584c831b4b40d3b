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
"""The test server held against XAPI's data model.

``tests/data/xapi-datamodel.json`` is this test's own copy of the model
for the eight classes a storage client sees (written by
``tools/trim_datamodel.py``). Records are made by real operations and
read over XML-RPC, so every value is checked as a client receives it,
with a type reader of this test's own, not the server's.
"""

import json
import os
import xmlrpc.client

import pytest
import XenAPI

from tests import xapi_fixture
from xenapinfs_driver.testing.xapi import wire
from xenapinfs_driver.testing.xapi import server as servermod

MODEL = json.load(open(os.path.join(
    os.path.dirname(__file__), '..', '..', 'data', 'xapi-datamodel.json')))
CLASSES = MODEL['classes']


def details(exc) -> list:
    return exc.value.details


def conforms(ty: str, value, enums: dict) -> bool:
    """Whether value is what XAPI sends for a value of type ty."""
    if ty.endswith(' set'):
        return isinstance(value, list) and all(
            conforms(ty[:-len(' set')], v, enums) for v in value)
    if ty.startswith('(') and ty.endswith(') map'):
        key, val = ty[1:-len(') map')].split(' -> ', 1)
        return isinstance(value, dict) and all(
            conforms(key, k, enums) and conforms(val, v, enums)
            for k, v in value.items())
    if ty.endswith(' ref'):
        return isinstance(value, str) and value.startswith('OpaqueRef:')
    if ty.startswith('enum '):
        return value in enums[ty[len('enum '):]]
    if ty == 'int':                 # a decimal string, never <int>
        return isinstance(value, str) and \
            value.lstrip('-').isdigit()
    kinds = {'string': str, 'bool': bool, 'float': float,
             'datetime': xmlrpc.client.DateTime}
    return type(value) is kinds[ty]


def test_the_type_reader_can_say_no():
    enums = {'e': ['A']}
    assert not conforms('int', 5, enums)
    assert not conforms('float', True, enums)
    assert not conforms('enum e', 'a', enums)
    assert not conforms('(string -> enum e) map', {'k': 'B'}, enums)
    assert not conforms('VDI ref', '', enums)
    assert not conforms('datetime', '19700101T00:00:00Z', enums)
    assert conforms('int set', ['0', '-1'], enums)


@pytest.fixture(scope='module')
def records():
    """cls -> [record], made by real operations on a pool of two hosts."""
    with xapi_fixture.running_server(
            slave_listen=('127.0.0.2', 0)) as server:
        session = xapi_fixture.login(server)
        x = session.xenapi
        sr = xapi_fixture.create_sr(session, shared=True)
        vdi = xapi_fixture.create_vdi(session, sr, 4 << 20)
        x.VDI.snapshot(vdi, {})
        x.VDI.clone(vdi, {})
        dom0 = next(r for r, v in x.VM.get_all_records().items()
                    if v['is_control_domain'])
        vbd = x.VBD.create({
            'VM': dom0, 'VDI': vdi, 'userdevice': 'autodetect',
            'bootable': False, 'mode': 'RW', 'type': 'Disk', 'empty': False,
            'other_config': {}, 'qos_algorithm_type': '',
            'qos_algorithm_params': {}})
        x.VBD.plug(vbd)
        done = x.Async.VDI.copy(vdi, sr)
        failed = x.Async.VDI.destroy('OpaqueRef:gone')
        for task in (done, failed):
            xapi_fixture.wait_task(session, task)
        x.task.create('pending', 'left running')
        out = {cls: list(getattr(x, cls).get_all_records().values())
               for cls in CLASSES if CLASSES[cls]['flags'][
                   'exposes_get_all_family']}
        out['session'] = [x.session.get_record(session.handle)]
        yield out
        session.xenapi.session.logout()


@pytest.mark.parametrize('cls', sorted(CLASSES))
def test_records_have_every_field_with_its_type(records, cls):
    model = CLASSES[cls]
    assert records[cls], 'no %s made' % cls
    fields = {f['name']: f['type']
              for f in model['fields'] + model['removed_fields']}
    for rec in records[cls]:
        assert sorted(rec) == sorted(fields)
        wrong = {f: rec[f] for f, ty in fields.items()
                 if not conforms(ty, rec[f], model['enums'])}
        assert wrong == {}


def test_the_records_cover_the_states_that_matter(records):
    vdis = records['VDI']
    assert {v['is_a_snapshot'] for v in vdis} == {True, False}
    assert any(v['snapshots'] for v in vdis)
    assert {t['status'] for t in records['task']} >= {
        'success', 'failure', 'pending'}
    assert len(records['host']) == 2 and len(records['PBD']) == 2
    assert any(v['currently_attached'] for v in records['VBD'])


def _model_messages() -> dict:
    out = {}
    for cls in CLASSES.values():
        for m in cls['messages']:
            params = m['params']
            if params and params[0]['name'] == 'session_id':
                params = params[1:]
            out[m['wire_name']] = dict(m, params=params)
    return out


MESSAGES = _model_messages()
REMOVED = {'%s.%s' % (c, n) for c, m in CLASSES.items()
           for n in m['removed_messages']}
SERVED = {n: m for n, m in servermod.XapiServer._methods().items()
          if n.split('.')[0] in CLASSES}


def test_the_server_answers_no_method_the_model_lacks():
    assert sorted(set(SERVED) - set(MESSAGES) - REMOVED) == []
    assert sorted(n for n in REMOVED if not SERVED[n].removed) == []


def test_every_implicit_message_is_served():
    implicit = {n for n, m in MESSAGES.items() if 'implicit' in m}
    assert sorted(implicit - set(SERVED)) == []


@pytest.mark.parametrize('name', sorted(set(SERVED) - REMOVED))
def test_each_method_has_the_model_signature(name):
    served, model = SERVED[name], MESSAGES[name]
    assert served.asynchronous == model['async']
    params = model['params']
    assert len(served.params) == len(params)
    assert served.required == sum('default' not in p for p in params)
    for kind, param in zip(served.types, params):
        _check_param(name, kind, param, CLASSES[name.split('.')[0]])


# A value of each model type, and one of another type, to see that the
# handler's marker takes the first and refuses the second.
_GOOD = {'string': 'x', 'int': '12', 'bool': True, 'float': 0.5,
         'datetime': xmlrpc.client.DateTime('20240101T00:00:00Z')}
_BAD = {'string': 5, 'int': 'twelve', 'bool': 'true', 'float': 'x',
        'datetime': 'x'}


def _samples(ty: str, enums: dict) -> tuple:
    if ty.endswith(' set'):
        good, bad = _samples(ty[:-len(' set')], enums)
        return [good], [bad]
    if ty.startswith('(') and ty.endswith(') map'):
        good, bad = _samples(ty[1:-len(') map')].split(' -> ', 1)[1],
                             enums)
        return {'k': good}, {'k': bad}
    if ty.endswith(' ref'):
        return 'OpaqueRef:x', 7
    if ty.startswith('enum '):
        return enums[ty[len('enum '):]][0], 'no such value'
    return _GOOD[ty], _BAD[ty]


def _check_param(name, kind, param, model):
    if 'struct' in MESSAGES[name]:       # a constructor's record
        struct = MESSAGES[name]['struct']
        assert isinstance(kind, wire.Record)
        assert sorted(kind.required) == sorted(
            m for m, optional in struct.items() if not optional)
        assert sorted(kind.optional) == sorted(
            m for m, optional in struct.items() if optional)
        return
    good, bad = _samples(param['type'], model['enums'])
    assert kind.accepts(good), (name, param)
    assert not kind.accepts(bad), (name, param)


# -- over the wire -----------------------------------------------------------

def test_getters_and_setters_have_no_async_form(xapi_server, session, sr):
    x = session.xenapi
    for call in (lambda: x.Async.VDI.get_record(sr),
                 lambda: x.Async.SR.set_other_config(sr, {})):
        with pytest.raises(XenAPI.Failure) as exc:
            call()
        assert details(exc)[0] == 'Fault'
    assert details(exc)[1] == ('No async mode for this operation '
                               '(rpc: SR.set_other_config)')
    # The count, the types and the session come first, as in the
    # generated server (a raw proxy: XenAPI.Session would log in again).
    proxy = xmlrpc.client.ServerProxy(xapi_server.url)
    stale = proxy.Async.SR.get_record('OpaqueRef:stale', sr)
    assert stale['ErrorDescription'] == ['SESSION_INVALID',
                                         'OpaqueRef:stale']
    short = getattr(proxy, 'Async.SR.get_record')(session.handle)
    assert short['ErrorDescription'] == [
        'MESSAGE_PARAMETER_COUNT_MISMATCH', 'SR.get_record', '1', '0']


def test_removed_messages(xapi_server, session, sr):
    x = session.xenapi
    vdi = xapi_fixture.create_vdi(session, sr, 1 << 20)
    dom0 = next(r for r, v in x.VM.get_all_records().items()
                if v['is_control_domain'])
    vbd = x.VBD.create({
        'VM': dom0, 'VDI': vdi, 'userdevice': '1', 'bootable': False,
        'mode': 'RO', 'type': 'Disk', 'empty': False, 'other_config': {},
        'qos_algorithm_type': '', 'qos_algorithm_params': {}})
    # The record keeps the key; its getter is gone.
    assert x.VBD.get_record(vbd)['metrics'] == 'OpaqueRef:NULL'
    with pytest.raises(XenAPI.Failure) as exc:
        x.VBD.get_metrics(vbd)
    assert details(exc) == ['MESSAGE_REMOVED']
    with pytest.raises(XenAPI.Failure) as exc:
        x.host.license_apply(x.host.get_all()[0], 'bGljZW5zZQ==')
    assert details(exc) == ['MESSAGE_REMOVED']
    proxy = xmlrpc.client.ServerProxy(xapi_server.url)
    answer = proxy.VBD.get_metrics('OpaqueRef:stale', vbd)
    assert answer['ErrorDescription'] == ['SESSION_INVALID',
                                          'OpaqueRef:stale']


def test_arity_follows_the_defaults(session, sr):
    x = session.xenapi
    vdi = xapi_fixture.create_vdi(session, sr, 1 << 20)
    # No defaults: the count must be exact.
    with pytest.raises(XenAPI.Failure) as exc:
        x.VDI.get_record()
    assert details(exc) == ['MESSAGE_PARAMETER_COUNT_MISMATCH',
                            'VDI.get_record', '1', '0']
    with pytest.raises(XenAPI.Failure) as exc:
        x.VDI.resize(vdi)
    assert details(exc) == ['MESSAGE_PARAMETER_COUNT_MISMATCH',
                            'VDI.resize', '2', '1']
    # Defaults: what the message has no parameter for is ignored.
    snap = x.VDI.snapshot(vdi, {}, 'ignored')
    assert x.VDI.get_is_a_snapshot(snap) is True
    with pytest.raises(XenAPI.Failure) as exc:
        x.SR.create()
    assert details(exc) == ['MESSAGE_PARAMETER_COUNT_MISMATCH',
                            'SR.create', '8', '0']


def test_model_messages_and_forms_answer(xapi_server, session, sr):
    x = session.xenapi
    vdi = xapi_fixture.create_vdi(session, sr, 1 << 20, name_label='a')
    assert x.VDI.get_all_where('field "name_label" = "a"') == [vdi]
    assert x.VDI.get_crash_dumps(vdi) == []
    host = x.host.get_all()[0]
    assert x.host.get_license_server(host) == {
        'address': 'localhost', 'port': '27000'}
    x.host.set_display(host, 'disabled')
    with pytest.raises(XenAPI.Failure) as exc:
        x.host.set_display(host, 'off')
    assert details(exc) == ['FIELD_TYPE_ERROR', 'display']
    x.pool.add_tags(x.pool.get_all()[0], 'cinder')
    with pytest.raises(XenAPI.Failure) as exc:
        x.pool.get_by_name_label('')
    assert details(exc)[0] == 'MESSAGE_METHOD_UNKNOWN'
    # Class_message is the sync form under another name.
    proxy = xmlrpc.client.ServerProxy(xapi_server.url)
    answer = proxy.VDI_get_uuid(session.handle, vdi)
    assert answer['Value'] == x.VDI.get_uuid(vdi)
