"""dom0 plugin calls through the test server, against a real glance."""

import io
import os

import pytest

from cinder import exception as cinder_exception
from tests import stack_fixture
from tests import vhd_factory
from tests import xapi_fixture
from xenapinfs_driver import exception
from xenapinfs_driver import vhd
from xenapinfs_driver.testing.stack import glance as glancemod
from xenapinfs_driver.xenapi import plugin
from xenapinfs_driver.xenapi import storage
from xenapinfs_driver.xenapi import transfer

glance_service = stack_fixture.glance_service
PROJECT = 'project-a'
HEADERS = glancemod.identity_headers(PROJECT)
RETRYABLE = ['XENAPI_PLUGIN_FAILURE', 'download_vhd2', 'RetryableError',
             'glance answered 503']


@pytest.fixture
def sr(session):
    return storage.find_or_create_nfs_sr(session, *xapi_fixture.EXPORT,
                                         'plugin', 'plugin')


def _sr_path(sr_uuid):
    return '/var/run/sr-mount/%s' % sr_uuid


@pytest.fixture
def image(glance_service, tmp_path):
    files, disk, _specs = vhd_factory.standard_chain(seed=7)
    tgz = tmp_path / 'image.tgz'
    vhd_factory.xenserver_tgz(str(tgz), files)
    img = glance_service.create_image(HEADERS, name='xs',
                                      container_format='ovf',
                                      disk_format='vhd')
    assert glance_service.upload(img['id'], tgz.read_bytes(),
                                 HEADERS) == 204
    return img['id'], disk, len(files)


def _raw(session, ref):
    buf = io.BytesIO()
    transfer.export_to_file(session, ref, buf, 'raw')
    return buf.getvalue()


def test_version(session):
    assert plugin.check_version(session) == '2.1'


@pytest.mark.parametrize('error', [
    ['XENAPI_MISSING_PLUGIN', 'dom0_plugin_version.py'],
    ['UNKNOWN_XENAPI_PLUGIN_FUNCTION', 'get_version']])
def test_missing_plugin(session, control, error):
    control.add_fault('plugin:dom0_plugin_version.py/get_version', 'error',
                      error=error)
    with pytest.raises(exception.PluginVersionError) as err:
        plugin.check_version(session)
    assert 'not installed' in str(err.value)


def test_old_plugin(session, control, monkeypatch):
    monkeypatch.setattr(plugin, 'get_version', lambda s: '1.4')
    with pytest.raises(exception.PluginVersionError) as err:
        plugin.check_version(session)
    assert '1.4' in str(err.value)


def _download(session, sr, image_id, glance_service, **kw):
    ref, vdi_uuid = storage.create_vdi(session, sr[0], 10 << 20, 'target')
    stack = [storage.new_uuid() for _ in range(5)] + [vdi_uuid]
    g = plugin.GlancePlugin(session, **kw)
    leaf = g.download_vhd(image_id, glance_service.url, _sr_path(sr[1]),
                          stack, HEADERS)
    return ref, vdi_uuid, leaf, g


def test_download_chain_replaces_the_target_in_place(
        session, sr, image, glance_service, control):
    image_id, disk, layers = image
    ref, vdi_uuid, leaf, _g = _download(session, sr, image_id,
                                        glance_service)
    assert leaf == vdi_uuid
    session.call('SR.scan', sr[0])
    assert len(storage.vdi_chain(session, ref)) == layers
    assert int(session.call('VDI.get_virtual_size', ref)) == len(disk)
    assert _raw(session, ref) == disk


def test_download_retries_retryable_errors(session, sr, image,
                                           glance_service, control):
    image_id, disk, _layers = image
    control.add_fault('plugin:glance.py/download_vhd2', 'error',
                      error=RETRYABLE, times=2)
    sleeps = []
    ref, vdi_uuid, leaf, _g = _download(session, sr, image_id,
                                        glance_service, sleep=sleeps.append,
                                        interval=0.5)
    assert sleeps == [0.5, 1.0]
    session.call('SR.scan', sr[0])
    assert _raw(session, ref) == disk


def test_download_gives_up_after_retries(session, sr, image, glance_service,
                                         control):
    control.add_fault('plugin:glance.py/download_vhd2', 'error',
                      error=RETRYABLE, times=5)
    with pytest.raises(exception.PluginRetriesExceeded) as err:
        _download(session, sr, image[0], glance_service, retries=2,
                  sleep=lambda s: None)
    assert '3 times' in str(err.value)


def test_tokens_never_in_errors(session, sr, glance_service, control):
    secret = 'tok-very-secret-1234'
    control.add_fault('plugin:glance.py/download_vhd2', 'error', error=[
        'XENAPI_PLUGIN_FAILURE', 'download_vhd2', 'PluginError',
        'GET failed with headers X-Auth-Token: %s' % secret])
    g = plugin.GlancePlugin(session, retries=0)
    with pytest.raises(exception.XenAPIError) as err:
        g.download_vhd('x', glance_service.url, _sr_path(sr[1]), ['u'],
                       dict(HEADERS, **{'X-Auth-Token': secret}))
    assert secret not in str(err.value)
    assert secret not in repr(err.value.details)


def test_upload_then_download_round_trip(session, sr, image, glance_service,
                                         tmp_path):
    image_id, disk, _layers = image
    ref, vdi_uuid, _leaf, g = _download(session, sr, image_id,
                                        glance_service)
    session.call('SR.scan', sr[0])
    snap, _snap_uuid = storage.snapshot_vdi(session, ref, 'up')
    chain = storage.vdi_chain(session, snap)
    new = glance_service.create_image(HEADERS, name='up',
                                      container_format='ovf',
                                      disk_format='vhd')
    g.upload_vhd(new['id'], glance_service.url, _sr_path(sr[1]), chain,
                 HEADERS, {'os_type': 'linux'})
    shown = glance_service.show(new['id'], HEADERS)
    assert shown['status'] == 'active'
    assert shown['os-type'] == 'linux'
    status, _h, body = glance_service.request(
        'GET', '/v2/images/%s/file' % new['id'], headers=HEADERS)
    assert status == 200
    (tmp_path / 'up.tgz').write_bytes(body)
    result = vhd.convert(str(tmp_path / 'up.tgz'), str(tmp_path / 'up.raw'))
    assert len(result.layers) == len(chain)
    assert (tmp_path / 'up.raw').read_bytes() == disk


def test_upload_to_missing_image_is_image_not_found(session, sr,
                                                    glance_service):
    ref, vdi_uuid = storage.create_vdi(session, sr[0], 4 << 20, 'x')
    g = plugin.GlancePlugin(session, retries=0)
    missing = '3f1c2d5e-0000-4000-8000-000000000000'
    with pytest.raises(cinder_exception.ImageNotFound) as err:
        g.upload_vhd(missing, glance_service.url, _sr_path(sr[1]),
                     [vdi_uuid], HEADERS)
    assert missing in str(err.value)
    assert os.listdir(os.path.join(
        os.path.dirname(os.path.dirname(_sr_path(sr[1]))))) is not None
