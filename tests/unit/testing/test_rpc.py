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
"""The wire protocol, sessions, generic calls, tasks, pool mode and TLS.

Every test talks to a real server through a socket with the PyPI
``XenAPI`` client (or http.client where the client has no say).
"""

import http.client
import logging
import os
import shutil
import ssl
import subprocess
import urllib.parse
import xmlrpc.client

import pytest
import XenAPI

from tests import xapi_fixture
from tests.unit.testing import httputil
from xenapinfs_driver.testing.xapi import api

WRONG = 'not-the-password-8d1f'


def details(exc_info):
    return exc_info.value.details


# -- sessions ----------------------------------------------------------------

def test_login_logout(xapi_server):
    s = xapi_fixture.login(xapi_server, originator='unit')
    ref = s.handle
    assert ref.startswith('OpaqueRef:')
    rec = s.xenapi.session.get_record(ref)
    assert rec['originator'] == 'unit'
    assert rec['this_host'] == xapi_server.host_ref
    assert isinstance(rec['last_active'], xmlrpc.client.DateTime)
    assert s.xenapi.session.get_this_host(ref) == xapi_server.host_ref
    assert s.xenapi.session.get_uuid(ref) == rec['uuid']
    s.xenapi.session.logout()
    raw = xmlrpc.client.ServerProxy(xapi_server.url)
    assert raw.pool.get_all(ref) == {
        'Status': 'Failure', 'ErrorDescription': ['SESSION_INVALID', ref]}


def test_bad_password_never_echoed_or_logged(xapi_server, caplog):
    caplog.set_level(logging.DEBUG)
    raw = xmlrpc.client.ServerProxy(xapi_server.url)
    answer = raw.session.login_with_password('root', WRONG, '1.0', 't')
    assert answer == {'Status': 'Failure', 'ErrorDescription': [
        'SESSION_AUTHENTICATION_FAILED', 'root', 'Authentication failure']}
    good = xapi_fixture.login(xapi_server)
    good.xenapi.pool.get_all()
    assert WRONG not in caplog.text
    assert xapi_fixture.PASSWORD not in caplog.text
    assert 'login_with_password' in caplog.text
    for exc_args in (('root', WRONG), ('nobody', xapi_fixture.PASSWORD)):
        with pytest.raises(XenAPI.Failure) as exc:
            XenAPI.Session(xapi_server.url).xenapi.login_with_password(
                *exc_args)
        assert WRONG not in str(details(exc))
        assert xapi_fixture.PASSWORD not in str(details(exc))


def test_session_invalid_and_transparent_relogin(xapi_server, session,
                                                 control):
    old = session.handle
    assert control.invalidate_sessions() == 1
    # The client sees SESSION_INVALID, logs in again and retries.
    assert session.xenapi.pool.get_all()
    assert session.handle != old
    raw = xmlrpc.client.ServerProxy(xapi_server.url)
    assert raw.VDI.get_all(old)['ErrorDescription'] == [
        'SESSION_INVALID', old]
    calls = control.calls()
    assert calls.count('session.login_with_password') == 2


def test_session_call_without_session(xapi_server):
    raw = xmlrpc.client.ServerProxy(xapi_server.url)
    assert raw.pool.get_all('OpaqueRef:nope')['ErrorDescription'] == [
        'SESSION_INVALID', 'OpaqueRef:nope']


# -- generic errors ----------------------------------------------------------

def test_error_shapes(session, sr):
    x = session.xenapi
    with pytest.raises(XenAPI.Failure) as exc:
        x.VDI.get_record('OpaqueRef:missing')
    assert details(exc) == ['HANDLE_INVALID', 'VDI', 'OpaqueRef:missing']
    with pytest.raises(XenAPI.Failure) as exc:
        x.SR.get_by_uuid('0f0f')
    assert details(exc) == ['UUID_INVALID', 'SR', '0f0f']
    with pytest.raises(XenAPI.Failure) as exc:
        x.VDI.frobnicate(sr)
    assert details(exc) == ['MESSAGE_METHOD_UNKNOWN', 'VDI.frobnicate']
    with pytest.raises(XenAPI.Failure) as exc:
        x.SR.get_record(sr, 'extra')
    assert details(exc) == ['MESSAGE_PARAMETER_COUNT_MISMATCH',
                            'SR.get_record', '1', '2']
    # Expected counts only the parameters without a default (VDI.copy's
    # sr, base_vdi and into_vdi have one), as XAPI's generated server.
    with pytest.raises(XenAPI.Failure) as exc:
        x.VDI.copy()
    assert details(exc) == ['MESSAGE_PARAMETER_COUNT_MISMATCH',
                            'VDI.copy', '1', '0']
    # The client marshals None as <nil/>; XAPI could not read it.
    with pytest.raises(XenAPI.Failure) as exc:
        x.SR.introduce('', None, None, 'nfs', '', False, {})
    assert details(exc) == ['FIELD_TYPE_ERROR', 'name_label']
    with pytest.raises(XenAPI.Failure) as exc:
        x.SR.get_record(None)
    assert details(exc) == ['FIELD_TYPE_ERROR', 'self']


def test_type_errors_are_decided_once(xapi_server, session):
    """The cases where the old per-module checks answered differently."""
    x = session.xenapi
    # The parameter that is wrong is named (task.create said 'label').
    with pytest.raises(XenAPI.Failure) as exc:
        x.task.create('t', 5)
    assert details(exc) == ['FIELD_TYPE_ERROR', 'description']
    # Not a failed login: the name cannot even be read.
    with pytest.raises(XenAPI.Failure) as exc:
        XenAPI.Session(xapi_server.url).xenapi.login_with_password(5, 'x')
    assert details(exc) == ['FIELD_TYPE_ERROR', 'uname']
    # A ref that is not a string is a type error, not HANDLE_INVALID...
    with pytest.raises(XenAPI.Failure) as exc:
        x.SR.get_record(5)
    assert details(exc) == ['FIELD_TYPE_ERROR', 'self']
    # ... found before the session is looked at, as XAPI unmarshals first.
    raw = xmlrpc.client.ServerProxy(xapi_server.url)
    assert raw.SR.get_record('OpaqueRef:nope', 5)['ErrorDescription'] == [
        'FIELD_TYPE_ERROR', 'self']
    # An int travels as a decimal string: SR.create took any string.
    host = x.session.get_this_host(session.handle)
    with pytest.raises(XenAPI.Failure) as exc:
        x.SR.create(host, xapi_fixture.DEVICE_CONFIG, 'big', 'n', '', 'nfs',
                    'user', False, {})
    assert details(exc) == ['FIELD_TYPE_ERROR', 'physical_size']


def test_unparseable_request_is_http_500(xapi_server):
    parts = urllib.parse.urlsplit(xapi_server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port)
    conn.request('POST', '/', body=b'<methodCall><oops', headers={
        'Content-Type': 'text/xml'})
    assert conn.getresponse().status == 500
    conn.close()


def test_rpc2_path_and_keep_alive(xapi_server):
    parts = urllib.parse.urlsplit(xapi_server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port)
    for path in ('/', '/RPC2', '/'):
        body = xmlrpc.client.dumps(('root', xapi_fixture.PASSWORD),
                                   'session.login_with_password')
        conn.request('POST', path, body=body.encode())
        resp = conn.getresponse()
        assert resp.status == 200
        (value,), _ = xmlrpc.client.loads(resp.read())
        assert value['Status'] == 'Success'
    conn.close()


# -- generic calls -----------------------------------------------------------

def test_pool_and_hosts(xapi_server, session):
    x = session.xenapi
    assert session.API_version == '2.16'
    pool = x.pool.get_all()[0]
    master = x.pool.get_master(pool)
    assert master == xapi_server.host_ref
    assert x.host.get_uuid(master) == xapi_server.host_uuid
    version = x.host.get_software_version(master)
    assert version['product_brand'] == 'XCP-ng'
    assert version['product_version'] == '8.2.1'
    assert x.host.get_address(master) == '127.0.0.1'
    pif = x.PIF.get_all_records_where('field "host"="%s"' % master)
    assert [r['IP'] for r in pif.values()] == ['127.0.0.1']
    dom0 = x.VM.get_all_records_where('field "is_control_domain"="true" '
                                      'and field "resident_on"="%s"'
                                      % master)
    assert len(dom0) == 1
    vm = list(dom0)[0]
    assert x.VM.get_by_uuid(dom0[vm]['uuid']) == vm
    assert x.host.get_resident_VMs(master) == [vm]


def test_setters_maps_and_tags(session, sr):
    x = session.xenapi
    x.SR.set_name_label(sr, 'renamed')
    assert x.SR.get_by_name_label('renamed') == [sr]
    x.SR.add_to_other_config(sr, 'k', 'v')
    with pytest.raises(XenAPI.Failure) as exc:
        x.SR.add_to_other_config(sr, 'k', 'w')
    assert details(exc)[0] == 'MAP_DUPLICATE_KEY'
    x.SR.add_to_sm_config(sr, 'a', 'b')
    x.SR.add_tags(sr, 'cinder')
    x.SR.add_tags(sr, 'cinder')
    rec = x.SR.get_record(sr)
    assert rec['other_config'] == {'k': 'v'}
    assert rec['sm_config'] == {'a': 'b'}
    assert rec['tags'] == ['cinder']
    x.SR.remove_from_other_config(sr, 'k')
    x.SR.remove_from_other_config(sr, 'absent')
    x.SR.remove_tags(sr, 'cinder')
    assert x.SR.get_other_config(sr) == {}
    assert x.SR.get_tags(sr) == []
    with pytest.raises(XenAPI.Failure) as exc:
        x.SR.set_other_config(sr, {'k': 1})
    assert details(exc) == ['FIELD_TYPE_ERROR', 'other_config']
    with pytest.raises(XenAPI.Failure) as exc:
        x.SR.set_type(sr, 'lvm')
    assert details(exc)[0] == 'MESSAGE_METHOD_UNKNOWN'
    records = x.SR.get_all_records()
    assert list(records) == [sr] == x.SR.get_all()


# -- tasks and Async ---------------------------------------------------------

def test_async_success_and_failure(session, sr):
    x = session.xenapi
    task = x.Async.VDI.create({
        'SR': sr, 'virtual_size': str(4 << 20), 'type': 'user',
        'sharable': False, 'read_only': False, 'other_config': {}})
    rec = xapi_fixture.wait_task(session, task)
    assert rec['status'] == 'success' and rec['progress'] == 1.0
    vdi = rec['result'][len('<value>'):-len('</value>')]
    assert rec['result'] == '<value>%s</value>' % vdi
    assert x.VDI.get_virtual_size(vdi) == str(4 << 20)
    x.task.destroy(task)
    with pytest.raises(XenAPI.Failure):
        x.task.get_record(task)
    task = x.Async.VDI.destroy('OpaqueRef:gone')
    rec = xapi_fixture.wait_task(session, task)
    assert rec['status'] == 'failure'
    assert rec['error_info'] == ['HANDLE_INVALID', 'VDI', 'OpaqueRef:gone']
    assert x.task.get_error_info(task) == rec['error_info']
    # Getters have no Async form: XAPI answers a Fault, after the session
    # check.
    with pytest.raises(XenAPI.Failure) as exc:
        x.Async.SR.get_all_records()
    assert details(exc) == ['Fault', 'No async mode for this operation '
                            '(rpc: SR.get_all_records)']
    assert api.wrap_result({'a': ['b']}).startswith('<value><struct>')
    with pytest.raises(XenAPI.Failure) as exc:
        x.Async.session.login_with_password('root', 'x')
    assert details(exc) == ['Fault', 'No async mode for this operation '
                            '(rpc: session.login_with_password)']


def test_task_create_and_cancel(session, control, sr):
    x = session.xenapi
    task = x.task.create('import', 'a task of the client\'s')
    assert x.task.get_status(task) == 'pending'
    assert x.task.get_name_label(task) == 'import'
    x.task.cancel(task)
    assert x.task.get_status(task) == 'cancelling'
    x.task.destroy(task)
    control.add_fault('Async.VDI.create', 'delay', seconds='0.5')
    task = x.Async.VDI.create({
        'SR': sr, 'virtual_size': str(2 << 20), 'type': 'user',
        'sharable': False, 'read_only': False, 'other_config': {}})
    x.task.cancel(task)
    rec = xapi_fixture.wait_task(session, task)
    assert rec['status'] == 'cancelled'
    assert rec['error_info'] == ['TASK_CANCELLED', task]
    assert x.SR.get_VDIs(sr) == []


# -- pool mode and TLS -------------------------------------------------------

def test_host_is_slave():
    with xapi_fixture.running_server(
            slave_listen=('127.0.0.2', 0)) as server:
        master = urllib.parse.urlsplit(server.url)
        member = urllib.parse.urlsplit(server.slave_url)
        assert master.port == member.port
        assert member.hostname == '127.0.0.2'
        s = XenAPI.Session(server.slave_url)
        with pytest.raises(XenAPI.Failure) as exc:
            s.xenapi.login_with_password('root', WRONG)
        assert details(exc) == ['HOST_IS_SLAVE', '127.0.0.1']
        # Same scheme and port on the master's address, as clients do.
        again = '%s://%s:%d' % (member.scheme, details(exc)[1], member.port)
        assert again == server.url
        good = xapi_fixture.login(again)
        x = good.xenapi
        hosts = x.host.get_all_records()
        assert sorted(h['address'] for h in hosts.values()) == [
            '127.0.0.1', '127.0.0.2']
        assert x.pool.get_master(x.pool.get_all()[0]) == server.host_ref
        sr = xapi_fixture.create_sr(good, shared=True)
        assert len(x.SR.get_PBDs(sr)) == 2
        # Sessions are pool-wide: the member's listener serves the rest.
        raw = xmlrpc.client.ServerProxy(server.slave_url)
        assert raw.SR.get_uuid(good.handle, sr)['Status'] == 'Success'


def _self_signed(tmp_path):
    openssl = shutil.which('openssl')
    if openssl is None:
        pytest.skip('openssl is not installed')
    cert, key = tmp_path / 'cert.pem', tmp_path / 'key.pem'
    subprocess.run([openssl, 'req', '-x509', '-newkey', 'ec', '-pkeyopt',
                    'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
                    '-subj', '/CN=127.0.0.1', '-addext',
                    'subjectAltName=IP:127.0.0.1', '-keyout', str(key),
                    '-out', str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


def test_tls(tmp_path):
    cert, key = _self_signed(tmp_path)
    with xapi_fixture.running_server(tls_cert=cert,
                                     tls_key=key) as server:
        assert server.url.startswith('https://127.0.0.1:')
        ctx = ssl.create_default_context(cafile=cert)
        s = XenAPI.Session(server.url, transport=xmlrpc.client.SafeTransport(
            context=ctx))
        s.xenapi.login_with_password('root', xapi_fixture.PASSWORD)
        assert s.xenapi.pool.get_all()
        strict = XenAPI.Session(server.url, transport=(
            xmlrpc.client.SafeTransport(
                context=ssl.create_default_context())))
        with pytest.raises(ssl.SSLCertVerificationError):
            strict.xenapi.login_with_password('root', xapi_fixture.PASSWORD)
        loose = XenAPI.Session(server.url, ignore_ssl=True)
        loose.xenapi.login_with_password('root', xapi_fixture.PASSWORD)
        sr = xapi_fixture.create_sr(loose)
        vdi = xapi_fixture.create_vdi(loose, sr, 2 << 20)
        conn = http.client.HTTPSConnection('127.0.0.1', server.url.rsplit(
            ':', 1)[1], context=ctx)
        conn.request('GET', '/export_raw_vdi?' + httputil.query(s, vdi))
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == bytes(2 << 20)
        conn.close()
        # Data goes back over TLS too (no sendfile there).
        data = httputil.pattern(2 << 20, seed=3, holes=False)
        conn = http.client.HTTPSConnection('127.0.0.1', server.url.rsplit(
            ':', 1)[1], context=ctx)
        conn.request('PUT', '/import_raw_vdi?' + httputil.query(s, vdi),
                     data)
        assert conn.getresponse().status == 200
        conn.close()
        conn = http.client.HTTPSConnection('127.0.0.1', server.url.rsplit(
            ':', 1)[1], context=ctx)
        conn.request('GET', '/export_raw_vdi?' + httputil.query(s, vdi))
        assert conn.getresponse().read() == data
        conn.close()
        # A plain-HTTP client gets nowhere, and the server stays up.
        with pytest.raises((ConnectionError, http.client.HTTPException,
                            xmlrpc.client.ProtocolError, OSError)):
            XenAPI.Session(server.url.replace('https', 'http')
                           ).xenapi.login_with_password('root', 'x')
        assert s.xenapi.pool.get_all()
    assert not os.path.exists(os.path.join(server.root))
