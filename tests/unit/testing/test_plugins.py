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
"""host.call_plugin: the pickle contract, the dispatch onto dom0_glance's
signatures (with a stand-in registered here), errors and faults."""

import os
import pickle
import uuid

import pytest
import XenAPI

from tests import xapi_fixture
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import ops

MiB = 1 << 20


def details(exc_info):
    return exc_info.value.details


def call(session, plugin, fn, *args, **kwargs):
    """What a Python 3 client must send: pickle protocol 0, as a str."""
    x = session.xenapi
    host = x.session.get_this_host(session.handle)
    params = pickle.dumps({'args': list(args), 'kwargs': kwargs},
                          protocol=0).decode('latin-1')
    result = x.host.call_plugin(host, plugin, fn, {'params': params})
    assert isinstance(result, str)
    return pickle.loads(result.encode('latin-1'), encoding='latin1')


class RetryableError(Exception):
    pass


class FakeGlance:
    """Stands for dom0_glance: records its calls, writes VHDs."""

    def __init__(self, size=4 * MiB, fail=None, data=b''):
        self.calls = []
        self.size = size
        self.fail = fail
        self.data = data

    def download_vhd2(self, sr_dir, *, image_id, endpoint, uuid_stack,
                      extra_headers, api_version=1):
        self.calls.append(('download', sr_dir, image_id, endpoint,
                           list(uuid_stack), extra_headers, api_version))
        if self.fail:
            raise self.fail
        leaf = uuid_stack.pop()
        path = os.path.join(sr_dir, '%s.vhd' % leaf)
        ops.create(path, self.size)
        with image.VhdFile(path, writable=True) as vhd:
            vhd.write(0, self.data)
        return {'root': {'uuid': leaf}}

    def upload_vhd2(self, sr_dir, *, vdi_uuids, image_id, endpoint,
                    extra_headers, properties, api_version=1):
        self.calls.append(('upload', sr_dir, vdi_uuids, image_id, endpoint,
                           extra_headers, properties, api_version))


def test_version(session, control):
    assert call(session, 'dom0_plugin_version.py', 'get_version') == '2.1'
    assert 'plugin:dom0_plugin_version.py/get_version' in control.calls()


@pytest.mark.parametrize('plugin, fn, expected', [
    ('glance', 'download_vhd2', ['XENAPI_MISSING_PLUGIN', 'glance']),
    ('glance.py', 'download_vhd', ['UNKNOWN_XENAPI_PLUGIN_FUNCTION',
                                   'download_vhd']),
])
def test_unknown(session, plugin, fn, expected):
    with pytest.raises(XenAPI.Failure) as exc:
        call(session, plugin, fn)
    assert details(exc) == expected


def test_bad_arguments(xapi_server, session):
    fake = FakeGlance()
    xapi_server.plugins.set_glance(fake)
    x = session.xenapi
    host = x.session.get_this_host(session.handle)
    with pytest.raises(XenAPI.Failure) as exc:
        x.host.call_plugin(host, 'glance.py', 'download_vhd2', {'params': 1})
    assert details(exc) == ['FIELD_TYPE_ERROR', 'args']
    with pytest.raises(XenAPI.Failure) as exc:
        x.host.call_plugin('OpaqueRef:x', 'glance.py', 'upload_vhd2', {})
    assert details(exc) == ['HANDLE_INVALID', 'host', 'OpaqueRef:x']
    with pytest.raises(XenAPI.Failure) as exc:
        x.host.call_plugin(host, 'glance.py', 'download_vhd2', {})
    assert details(exc) == ['XENAPI_PLUGIN_FAILURE', 'download_vhd2',
                            'KeyError', "'params'"]
    # No globals: a pickle that names one is refused before anything.
    evil = pickle.dumps({'args': [os.system], 'kwargs': {}},
                        protocol=0).decode('latin-1')
    with pytest.raises(XenAPI.Failure) as exc:
        x.host.call_plugin(host, 'glance.py', 'download_vhd2',
                           {'params': evil})
    assert details(exc)[:3] == ['XENAPI_PLUGIN_FAILURE', 'download_vhd2',
                                'UnpicklingError']
    with pytest.raises(XenAPI.Failure) as exc:
        call(session, 'glance.py', 'download_vhd2', 'img')
    assert details(exc)[:3] == ['XENAPI_PLUGIN_FAILURE', 'download_vhd2',
                                'TypeError']
    with pytest.raises(XenAPI.Failure) as exc:
        call(session, 'glance.py', 'upload_vhd2', ['u'], 'img', 'http://g',
             '/../../etc', {}, {})
    assert details(exc)[:3] == ['XENAPI_PLUGIN_FAILURE', 'upload_vhd2',
                                'FileNotFoundError']
    assert fake.calls == []


def test_download_then_scan(xapi_server, session, sr, control):
    fake = FakeGlance()
    xapi_server.plugins.set_glance(fake)
    x = session.xenapi
    sr_uuid = x.SR.get_uuid(sr)
    leaf = str(uuid.uuid4())
    sr_path = '/var/run/sr-mount/%s' % sr_uuid
    result = call(session, 'glance.py', 'download_vhd2', 'img-1',
                  'http://glance:9292', [leaf], sr_path,
                  {'X-Auth-Token': 't'}, api_version=2)
    assert result == {'root': {'uuid': leaf}}
    (_, sr_dir, image_id, endpoint, stack, headers, version), = fake.calls
    assert os.path.samefile(sr_dir, os.path.join(
        xapi_server.root, 'exports/nfs.example/srv/cinder', sr_uuid))
    assert (image_id, endpoint, stack, headers, version) == (
        'img-1', 'http://glance:9292', [leaf], {'X-Auth-Token': 't'}, 2)
    with pytest.raises(XenAPI.Failure):
        x.VDI.get_by_uuid(leaf)         # not before a scan
    x.SR.scan(sr)
    vdi = x.VDI.get_by_uuid(leaf)
    assert x.VDI.get_virtual_size(vdi) == str(4 * MiB)
    call(session, 'glance.py', 'upload_vhd2', vdi_uuids=[leaf],
         image_id='img-2', endpoint='http://glance:9292', sr_path=sr_path,
         extra_headers={}, properties={'auto_disk_config': True},
         api_version=2)
    assert fake.calls[-1][2:] == ([leaf], 'img-2', 'http://glance:9292', {},
                                  {'auto_disk_config': True}, 2)


def test_plugin_failures_and_faults(xapi_server, session, sr, control):
    fake = FakeGlance(fail=RetryableError('checksum mismatch'))
    xapi_server.plugins.set_glance(fake)
    sr_path = '/var/run/sr-mount/%s' % session.xenapi.SR.get_uuid(sr)
    args = ('img', 'http://g', [str(uuid.uuid4())], sr_path, {})
    with pytest.raises(XenAPI.Failure) as exc:
        call(session, 'glance.py', 'download_vhd2', *args, api_version=2)
    assert details(exc) == ['XENAPI_PLUGIN_FAILURE', 'download_vhd2',
                            'RetryableError', 'checksum mismatch']
    control.add_fault('plugin:glance.py/download_vhd2', 'error',
                      error=['XENAPI_PLUGIN_FAILURE', 'download_vhd2',
                             'RetryableError', 'injected'])
    with pytest.raises(XenAPI.Failure) as exc:
        call(session, 'glance.py', 'download_vhd2', *args, api_version=2)
    assert details(exc)[3] == 'injected'
    assert len(fake.calls) == 1
    control.add_fault('plugin:glance.py/upload_vhd2', 'disk_full')
    with pytest.raises(XenAPI.Failure) as exc:
        call(session, 'glance.py', 'upload_vhd2', [], 'i', 'http://g',
             sr_path, {}, {}, 2)
    assert details(exc)[2:] == ['OSError', '[Errno 28] No space left on '
                                'device']


def test_download_over_quota_is_undone():
    with xapi_fixture.running_server(sr_size=8 * MiB) as server:
        session = xapi_fixture.login(server)
        sr = xapi_fixture.create_sr(session)
        sr_path = '/var/run/sr-mount/%s' % session.xenapi.SR.get_uuid(sr)
        server.plugins.set_glance(FakeGlance(size=16 * MiB,
                                             data=b'x' * 9 * MiB))
        before = xapi_fixture.Control(server).state()
        with pytest.raises(XenAPI.Failure) as exc:
            call(session, 'glance.py', 'download_vhd2', 'i', 'http://g',
                 [str(uuid.uuid4())], sr_path, {}, 2)
        assert details(exc)[2] == 'OSError'
        assert xapi_fixture.Control(server).state() == before


def test_real_module_is_loaded_lazily(xapi_server, session, sr):
    sr_path = '/var/run/sr-mount/%s' % session.xenapi.SR.get_uuid(sr)
    with pytest.raises(XenAPI.Failure) as exc:
        call(session, 'glance.py', 'download_vhd2', 'i', 'http://g',
             [str(uuid.uuid4())], sr_path, {})      # api_version 1
    assert details(exc)[:3] == ['XENAPI_PLUGIN_FAILURE', 'download_vhd2',
                                'PluginError']
    assert type(xapi_server.plugins.glance()).__name__ == 'module'
