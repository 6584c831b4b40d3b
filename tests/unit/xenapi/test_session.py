"""XenAPISession against the test server, over real sockets."""

import logging
import socket
import subprocess
import threading

import pytest

from tests import xapi_fixture
from tests.unit.xenapi.conftest import make_session
from xenapinfs_driver import exception
from xenapinfs_driver.xenapi import session as xsession


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_connect_finds_this_host_and_close_logs_out(xapi_server, control):
    control.clear_calls()
    s = make_session(xapi_server, originator='unit-test').connect()
    assert s.host_ref.startswith('OpaqueRef:')
    assert s.call('host.get_uuid', s.host_ref) == xapi_server.host_uuid
    s.close()
    calls = control.calls()
    assert calls.count('session.login_with_password') == 1
    assert calls.count('session.logout') == 1
    with pytest.raises(exception.XenAPINFSException):
        s.call('pool.get_all')


def test_bad_password_is_named_but_never_shown(xapi_server, caplog):
    caplog.set_level(logging.DEBUG)
    s = xsession.XenAPISession(xapi_server.url, 'root', 'wrong-secret-pw')
    with pytest.raises(exception.XenAPIAuthenticationError) as err:
        s.connect()
    assert 'root' in str(err.value)
    assert 'wrong-secret-pw' not in str(err.value)
    assert 'wrong-secret-pw' not in caplog.text


def test_failures_keep_code_and_params(session):
    with pytest.raises(exception.XenAPIError) as err:
        session.call('VDI.get_record', 'OpaqueRef:nope')
    assert err.value.error == 'HANDLE_INVALID'
    assert err.value.params == ['VDI', 'OpaqueRef:nope']
    assert err.value.method == 'VDI.get_record'
    with pytest.raises(exception.XenAPIError) as err:
        session.call('VDI.no_such_call')
    assert err.value.error == 'MESSAGE_METHOD_UNKNOWN'


def test_none_never_leaves(session, control):
    control.clear_calls()
    with pytest.raises(TypeError):
        session.call('SR.get_all_records_where', None)
    assert 'SR.get_all_records_where' not in control.calls()


def test_host_is_slave_follows_master_keeping_port(tmp_path):
    port = _free_port()
    with xapi_fixture.running_server(
            listen=('127.0.0.1', port),
            slave_listen=('127.0.0.2', port)) as srv:
        assert srv.slave_url == 'http://127.0.0.2:%d' % port
        s = make_session(srv.slave_url).connect()
        try:
            assert s.url == 'http://127.0.0.1:%d' % port
            master = s.call('pool.get_master', s.call('pool.get_all')[0])
            assert s.host_ref == master
        finally:
            s.close()


def test_expired_session_logs_in_again(session, control):
    session.call('pool.get_all')
    assert control.invalidate_sessions() >= 1
    control.clear_calls()
    assert session.call('pool.get_all')
    assert 'session.login_with_password' in control.calls()


def test_refused_connection_retries_with_backoff_then_fails():
    s = make_session('http://127.0.0.1:%d' % _free_port(), retries=3,
                     retry_interval=0.5)
    with pytest.raises(exception.XenAPIConnectionError) as err:
        s.connect()
    assert s.sleep == [0.5, 1.0, 2.0]
    assert 'session.login_with_password' in str(err.value)


def test_dropped_read_is_retried(session, control):
    control.add_fault('pool.get_all', 'drop', times=2)
    assert session.call('pool.get_all')
    assert len(session.sleep) == 2


@pytest.mark.parametrize('action', ['drop', 'drop_after'])
def test_dropped_write_is_not_sent_twice(session, control, action):
    sr, _ = _sr(session)
    control.add_fault('VDI.create', action)
    control.clear_calls()
    with pytest.raises(exception.XenAPIConnectionError) as err:
        session.call('VDI.create', _vdi_record(sr))
    assert 'VDI.create' in str(err.value)
    assert control.calls().count('VDI.create') == 1
    assert session.sleep == []
    # the session still works afterwards
    assert session.call('pool.get_all')


def test_timeout_on_a_write_is_an_error_not_a_hang(xapi_server, control):
    s = make_session(xapi_server, timeout=0.5).connect()
    try:
        sr, _ = _sr(s)
        control.add_fault('VDI.create', 'delay', seconds=2)
        with pytest.raises(exception.XenAPIConnectionError):
            s.call('VDI.create', _vdi_record(sr))
        assert s.sleep == []
    finally:
        s.close()


def test_concurrent_calls_share_a_bounded_pool(xapi_server, control):
    s = make_session(xapi_server, max_connections=3).connect()
    control.clear_calls()
    errors = []

    def work():
        try:
            for _ in range(10):
                s.call('host.get_record', s.host_ref)
        except Exception as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s.close()
    assert errors == []
    calls = control.calls()
    assert calls.count('host.get_record') == 120
    # connect() logged in once before the call log was cleared
    logins = calls.count('session.login_with_password') + 1
    assert 1 <= logins <= 3
    assert calls.count('session.logout') == logins


def test_async_call_returns_the_task_result(session, control):
    sr, _ = _sr(session)
    vdi = session.call('VDI.create', _vdi_record(sr))
    control.clear_calls()
    copy = session.call_async('VDI.copy', vdi, sr, timeout=30)
    assert copy.startswith('OpaqueRef:') and copy != vdi
    calls = control.calls()
    assert 'Async.VDI.copy' in calls and 'task.destroy' in calls


def test_async_failure_raises_with_task_error(session, control):
    sr, _ = _sr(session)
    vdi = session.call('VDI.create', _vdi_record(sr))
    with pytest.raises(exception.XenAPIError) as err:
        session.call_async('VDI.resize', vdi, '1024', timeout=30)
    assert err.value.error.startswith('SR_BACKEND_FAILURE')
    assert 'task.destroy' in control.calls()


def _sr(s):
    return s.call('SR.create', s.host_ref, dict(xapi_fixture.DEVICE_CONFIG),
                  '0', 'sr', '', 'nfs', '', False, {}), None


def _vdi_record(sr, size=4 << 20):
    return {'SR': sr, 'virtual_size': size, 'type': 'user',
            'sharable': False, 'read_only': False, 'other_config': {},
            'name_label': 'v', 'name_description': '', 'sm_config': {},
            'xenstore_data': {}, 'tags': []}


@pytest.fixture(scope='module')
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp('tls')
    for name, cn in (('good', '127.0.0.1'), ('other', '127.0.0.1')):
        subprocess.run(
            ['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
             '-days', '2', '-subj', '/CN=%s' % cn,
             '-addext', 'subjectAltName=IP:127.0.0.1',
             '-keyout', str(d / (name + '.key')),
             '-out', str(d / (name + '.pem'))],
            check=True, capture_output=True)
    return d


def test_tls_verified_by_default_and_wrong_cert_refused(certs):
    with xapi_fixture.running_server(
            tls_cert=str(certs / 'good.pem'),
            tls_key=str(certs / 'good.key')) as srv:
        assert srv.url.startswith('https://')
        with pytest.raises(exception.XenAPIConnectionError) as err:
            make_session(srv).connect()
        assert 'CERTIFICATE_VERIFY_FAILED' in str(err.value) or \
            'certificate verify failed' in str(err.value)
        with pytest.raises(exception.XenAPIConnectionError):
            make_session(srv, ca_bundle=str(certs / 'other.pem')).connect()
        s = make_session(srv, ca_bundle=str(certs / 'good.pem')).connect()
        assert s.call('pool.get_all')
        s.close()
        s = make_session(srv, verify=False).connect()
        assert s.call('pool.get_all')
        s.close()


def test_url_must_be_http():
    with pytest.raises(exception.XenAPINFSException):
        xsession.XenAPISession('xenserver.example', 'root', 'pw')
