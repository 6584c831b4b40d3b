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
"""os-xenapi's real dom0 plugins behind host.call_plugin.

Over the wire, as the driver calls them: the pickle contract, a chain
downloaded into the SR and uploaded back, the errors as XAPI words them,
and the plugin's global changes kept out of this process.
"""

import hashlib
import io
import logging
import os
import socket
import sys
import tarfile
import textwrap
import uuid

import pytest
import XenAPI

from tests import vhd_factory as vf
from tests import xapi_fixture
from tests.unit.testing import glancefake
from tests.unit.testing import test_plugins
from xenapinfs_driver.testing.xapi import errors
from xenapinfs_driver.testing.xapi import osxenapi
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import ops

fake_glance = glancefake.fake_glance
call = test_plugins.call


@pytest.fixture
def server():
    with xapi_fixture.running_server(dom0_plugins='os-xenapi') as s:
        yield s


@pytest.fixture
def session(server):
    s = xapi_fixture.login(server)
    yield s
    s.xenapi.session.logout()


@pytest.fixture
def sr_path(session):
    sr = xapi_fixture.create_sr(session)
    return '/var/run/sr-mount/%s' % session.xenapi.SR.get_uuid(sr)


@pytest.fixture(scope='module')
def chain():
    files, disk, _ = vf.standard_chain(
        seed=3, sizes=(3 * vf.MiB + 5 * vf.SECTOR, 2 * vf.MiB, 2 * vf.MiB))
    return files, disk


def sr_dir(server, sr_path):
    return os.path.join(server.root, sr_path.lstrip('/'))


def details(exc_info):
    return exc_info.value.details


def serve(glance, data, header='Content-MD5', md5=None):
    glance.script.download = (200, {
        header: md5 or hashlib.md5(data).hexdigest()}, data)


def download(session, glance, sr_path, stack, image='img'):
    return call(session, 'glance.py', 'download_vhd2', image_id=image,
                endpoint=glance.url, uuid_stack=stack, sr_path=sr_path,
                extra_headers={'X-Auth-Token': 'tok'}, api_version=2)


def chain_disk(paths):
    """The disk a chain of VHD files holds, read as tapdisk reads it."""
    files = [image.VhdFile(p) for p in paths]
    try:
        out = bytearray()
        for idx in range(files[0].nblocks):
            out += ops.read_chain_block(files, idx)[1]
        return bytes(out[:files[0].size])
    finally:
        for f in files:
            f.close()


def test_version_and_isolation(session):
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    assert call(session, 'dom0_plugin_version.py', 'get_version') == '2.1'
    # The plugins set these in their own process, never in the server's.
    assert socket.getdefaulttimeout() is None
    assert (root.level, root.handlers) == (level, handlers)
    assert not {'utils', 'glance', 'dom0_pluginlib', 'XenAPIPlugin',
                'md5', 'cPickle'} & set(sys.modules)


def test_download_then_upload(server, session, sr_path, fake_glance, chain):
    files, disk = chain
    serve(fake_glance, glancefake.tgz_bytes(
        [('./%d.vhd' % i, f) for i, f in enumerate(files)]))
    stack = [str(uuid.uuid4()) for _ in range(5)]
    assert download(session, fake_glance, sr_path, list(stack)) == \
        {'root': {'uuid': stack[-1]}}
    method, path, headers, _ = fake_glance.script.requests[0]
    assert (method, path) == ('GET', '/image-api/v2/images/img/file')
    assert headers['X-Auth-Token'] == 'tok'
    chain_uuids = stack[:1:-1]          # leaf first, as they were popped
    sr = sr_dir(server, sr_path)
    assert sorted(os.listdir(sr)) == sorted(u + '.vhd' for u in chain_uuids)

    # After a scan the chain is VDIs, and reads back as the image's disk.
    x = session.xenapi
    x.SR.scan(x.SR.get_by_uuid(os.path.basename(sr_path)))
    leaf = x.VDI.get_by_uuid(stack[-1])
    assert x.VDI.get_sm_config(leaf)['vhd-parent'] == chain_uuids[1]
    paths = ops.chain_of(os.path.join(sr, chain_uuids[0] + '.vhd'))
    assert [os.path.basename(p)[:-4] for p in paths] == chain_uuids
    assert chain_disk(paths) == disk

    call(session, 'glance.py', 'upload_vhd2', vdi_uuids=chain_uuids,
         image_id='img', endpoint=fake_glance.url, sr_path=sr_path,
         extra_headers={'X-Auth-Token': 'tok'},
         properties={'os_type': 'linux'}, api_version=2)
    (_, _, _, put_body), = [r for r in fake_glance.script.requests
                            if r[0] == 'PUT']
    with tarfile.open(fileobj=io.BytesIO(put_body), mode='r:gz') as tf:
        sent = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}
    assert sent == {'./%d.vhd' % i: open(os.path.join(sr, u + '.vhd'),
                                         'rb').read()
                    for i, u in enumerate(chain_uuids)}
    assert sorted(os.listdir(sr)) == sorted(u + '.vhd' for u in chain_uuids)


def test_checksum_mismatch_is_retryable_and_leaves_nothing(
        server, session, sr_path, fake_glance, chain):
    serve(fake_glance, glancefake.tgz_bytes([('./0.vhd', chain[0][2])]),
          md5='0' * 32)
    with pytest.raises(XenAPI.Failure) as exc:
        download(session, fake_glance, sr_path, [str(uuid.uuid4())])
    assert details(exc)[:3] == ['XENAPI_PLUGIN_FAILURE', 'download_vhd2',
                                'RetryableError']
    assert 'does not match' in details(exc)[3]
    assert os.listdir(sr_dir(server, sr_path)) == []


@pytest.mark.parametrize('status, error, text', [
    (404, 'Failure', 'ImageNotFound'),
    (409, 'PluginError', 'Got Permanent Error response [409]'),
    (503, 'RetryableError', 'Got Ephemeral Error response [503]'),
    # The real plugin takes only 204 for success: 200 is "unexpected".
    (200, 'RetryableError', 'Got Unexpected Error response [200]'),
])
def test_upload_answers(server, session, sr_path, fake_glance, chain,
                        status, error, text):
    leaf = str(uuid.uuid4())
    with open(os.path.join(sr_dir(server, sr_path), leaf + '.vhd'),
              'wb') as f:
        f.write(chain[0][2])
    fake_glance.script.put_status = status
    with pytest.raises(XenAPI.Failure) as exc:
        call(session, 'glance.py', 'upload_vhd2', [leaf], 'img',
             fake_glance.url, sr_path, {}, {}, 2)
    assert details(exc)[:3] == ['XENAPI_PLUGIN_FAILURE', 'upload_vhd2',
                                error]
    assert details(exc)[3].startswith(text)


def test_messages_name_dom0_paths(server, session, sr_path):
    missing = str(uuid.uuid4())
    with pytest.raises(XenAPI.Failure) as exc:
        call(session, 'glance.py', 'upload_vhd2', [missing], 'img',
             'http://127.0.0.1:9', sr_path, {}, {}, 2)
    assert details(exc)[2] == 'FileNotFoundError'
    assert '%s/%s.vhd' % (sr_path, missing) in details(exc)[3]
    assert server.root not in details(exc)[3]


def test_paths_outside_the_root_are_refused(session):
    with pytest.raises(XenAPI.Failure) as exc:
        call(session, 'glance.py', 'upload_vhd2', ['u'], 'img', 'http://g',
             '/../../etc', {}, {}, 2)
    assert details(exc)[:3] == ['XENAPI_PLUGIN_FAILURE', 'upload_vhd2',
                                'FileNotFoundError']


def test_download_over_quota_is_undone(fake_glance, chain):
    files, _ = chain
    serve(fake_glance, glancefake.tgz_bytes(
        [('./%d.vhd' % i, f) for i, f in enumerate(files)]))
    limit = sum(len(f) for f in files) - vf.MiB
    with xapi_fixture.running_server(sr_size=limit,
                                     dom0_plugins='os-xenapi') as server:
        session = xapi_fixture.login(server)
        sr = xapi_fixture.create_sr(session)
        path = '/var/run/sr-mount/%s' % session.xenapi.SR.get_uuid(sr)
        with pytest.raises(XenAPI.Failure) as exc:
            download(session, fake_glance, path, [str(uuid.uuid4())
                                                  for _ in range(3)])
        assert details(exc)[2] == 'OSError'
        assert os.listdir(sr_dir(server, path)) == []


# -- how XAPI reads a plugin's end --------------------------------------------

def plugin_file(tmp_path, body):
    (tmp_path / 'glance.py').write_text(textwrap.dedent(body))
    return osxenapi.Runner(str(tmp_path), directory=str(tmp_path))


@pytest.mark.parametrize('body, expected', [
    ('import sys; sys.stdout.write("half"); sys.exit(3)',
     ['XENAPI_PLUGIN_FAILURE', 'non-zero exit', 'half']),
    ('import os; os.kill(os.getpid(), 9)',
     ['XENAPI_PLUGIN_FAILURE', 'signal: SIGKILL', '']),
    ('print("not xml")',
     ['XENAPI_PLUGIN_FAILURE', 'failed to parse plugin output',
      'not xml\n']),
    ("""
     import XenAPIPlugin
     def bad(session, args):
         raise XenAPIPlugin.Failure('SR_BACKEND_FAILURE_44', ['', 'full'])
     XenAPIPlugin.dispatch({'bad': bad})
     """, ['SR_BACKEND_FAILURE_44', '', 'full']),
    ("""
     import XenAPIPlugin
     XenAPIPlugin.dispatch({'other': None})
     """, ['UNKNOWN_XENAPI_PLUGIN_FUNCTION', 'bad']),
])
def test_what_xapi_makes_of_a_plugin(tmp_path, body, expected):
    runner = plugin_file(tmp_path, body)
    with pytest.raises(errors.XapiError) as exc:
        runner.call('OpaqueRef:s', 'glance.py', 'bad', {})
    assert exc.value.details[:len(expected)] == expected


def test_success_must_be_a_string(tmp_path):
    runner = plugin_file(tmp_path, """
        import XenAPIPlugin
        XenAPIPlugin.dispatch({'ok': lambda s, a: a['x'] + '!',
                               'num': lambda s, a: 7})
        """)
    assert runner.call('', 'glance.py', 'ok', {'x': 'yes'}) == 'yes!'
    with pytest.raises(errors.XapiError) as exc:
        runner.call('', 'glance.py', 'num', {})
    assert exc.value.details[:2] == ['XENAPI_PLUGIN_FAILURE',
                                     'unexpected XMLRPC result']
    with pytest.raises(errors.XapiError) as exc:
        runner.call('', 'xenhost.py', 'ok', {})
    assert exc.value.details == ['XENAPI_MISSING_PLUGIN', 'xenhost.py']


def test_unavailable_without_os_xenapi(monkeypatch):
    monkeypatch.setattr(osxenapi.importlib.util, 'find_spec',
                        lambda name: None)
    with pytest.raises(osxenapi.Unavailable, match='not installed'):
        osxenapi.plugin_dir()
