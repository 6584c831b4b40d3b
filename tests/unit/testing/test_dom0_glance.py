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
"""The dom0 glance plugin's functions against a real glance-api 33.

glance runs under gunicorn and trusts identity headers (see
tests/stack_fixture.py), so an image belongs to the project whose headers
created it: a call with another project's headers failing shows that
``extra_headers`` reach glance. The behaviours glance cannot be made to
show (a wrong checksum, an ETag, 503, a refusal mid-upload) are tried
against a small HTTP server in the test.
"""

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
import uuid

import pytest

from tests import stack_fixture
from tests import vhd_factory as vf
from tests.unit.testing import glancefake
from xenapinfs_driver.testing.stack import glance as glancemod
from xenapinfs_driver.testing.xapi import dom0_glance as dg
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import ops
from xenapinfs_driver.vhd import tgz

glance_service = stack_fixture.glance_service
fake_glance = glancefake.fake_glance

P1 = glancemod.identity_headers('project-one', 'user-one')
P2 = glancemod.identity_headers('project-two', 'user-two')


# -- helpers ------------------------------------------------------------------

tgz_bytes = glancefake.tgz_bytes


def uuids(n=16) -> list:
    return [str(uuid.uuid4()) for _ in range(n)]


def sr_files(sr) -> list:
    return sorted(os.listdir(sr))


def disk_of(leaf_path) -> bytes:
    """The disk a chain in an SR holds, read block by block through the
    parent locators (what tapdisk does)."""
    files = [image.VhdFile(p) for p in ops.chain_of(leaf_path)]
    try:
        top = files[0]
        out = bytearray()
        for idx in range(top.nblocks):
            out += ops.read_chain_block(files, idx)[1]
        return bytes(out[:top.size])
    finally:
        for f in files:
            f.close()


@pytest.fixture
def sr(tmp_path):
    path = tmp_path / 'sr'
    path.mkdir()
    yield str(path)
    # Whatever the test did: no staging directory is ever left.
    assert not [n for n in os.listdir(path) if not n.endswith('.vhd')]


@pytest.fixture(scope='module')
def chain():
    """Three layers, the leaf's size not a multiple of the block size."""
    files, disk, _ = vf.standard_chain(
        seed=7, sizes=(5 * vf.MiB + 3 * vf.SECTOR, 4 * vf.MiB, 3 * vf.MiB))
    return files, disk


def new_image(glance, data=None, headers=P1, **fields):
    fields.setdefault('name', 'test')
    fields.setdefault('container_format', 'ovf')
    fields.setdefault('disk_format', 'vhd')
    img = glance.create_image(headers=headers, **fields)
    if data is not None:
        assert glance.upload(img['id'], data, headers) == 204
    return img['id']


def download(sr, glance, image_id, stack=None, headers=P1):
    return dg.download_vhd2(sr, image_id=image_id, endpoint=glance.url,
                            uuid_stack=uuids() if stack is None else stack,
                            extra_headers=headers, api_version=2)


# -- download from glance -----------------------------------------------------

def test_download_chain(glance_service, sr, chain):
    files, disk = chain
    image_id = new_image(glance_service, tgz_bytes(
        [('./%d.vhd' % i, d) for i, d in enumerate(files)]))
    stack = uuids(5)
    expected = stack[:]
    result = download(sr, glance_service, image_id, stack)

    # Popped from the end, leaf first; only as many as there are VHDs.
    assert result == {'root': {'uuid': expected[-1]}}
    assert stack == expected[:2]
    names = ['%s.vhd' % u for u in reversed(expected[2:])]
    assert sr_files(sr) == sorted(names)
    leaf = os.path.join(sr, names[0])
    # Relinked by the new names, in the SR now.
    assert ops.chain_of(leaf) == [os.path.join(sr, n) for n in names]
    with image.VhdFile(leaf) as vhd:
        assert not vhd.footer.hidden
        assert vhd.header.parent_name == names[1]
    assert vf.mismatch(disk_of(leaf), disk) is None


def test_download_in_any_member_order(glance_service, sr, chain):
    files, disk = chain
    image_id = new_image(glance_service, tgz_bytes(
        [('%d.vhd' % i, files[i]) for i in (2, 0, 1)]))
    leaf = download(sr, glance_service, image_id)['root']['uuid']
    assert vf.mismatch(disk_of(os.path.join(sr, leaf + '.vhd')),
                       disk) is None


@pytest.mark.parametrize('names', [
    ('snap.vhd', 'image.vhd', 'base.vhd'),
    # The plugin numbers the legacy names it finds, in that order.
    ('image.vhd', 'base.vhd', None),
])
def test_download_legacy_names(glance_service, sr, names):
    rnd = random.Random(3)
    n = len([x for x in names if x])
    specs = [vf.random_layer(rnd, 4 * vf.MiB) for _ in range(n)]
    files = vf.build_chain(specs, rnd=rnd)
    members = [(name, data) for name, data in zip(names, files)]
    members.append(('swap.vhd', vf.build_chain(specs[-1:], rnd=rnd)[0]))
    image_id = new_image(glance_service, tgz_bytes(members))
    leaf = download(sr, glance_service, image_id)['root']['uuid']
    assert len(sr_files(sr)) == n            # swap.vhd is not imported
    assert vf.mismatch(disk_of(os.path.join(sr, leaf + '.vhd')),
                       vf.expected_disk(specs)) is None


def test_download_single_vhd_of_any_name(glance_service, sr):
    specs = [vf.random_layer(random.Random(4), 3 * vf.MiB)]
    files = vf.build_chain(specs)
    image_id = new_image(glance_service, tgz_bytes([('disk.vhd', files[0])],
                                                   directories=()))
    leaf = download(sr, glance_service, image_id)['root']['uuid']
    assert sr_files(sr) == [leaf + '.vhd']
    assert disk_of(os.path.join(sr, leaf + '.vhd')) == \
        vf.expected_disk(specs)


def test_download_gap_in_sequence(glance_service, sr, chain):
    files, _ = chain
    image_id = new_image(glance_service, tgz_bytes(
        [('./0.vhd', files[0]), ('./2.vhd', files[2])]))
    with pytest.raises(dg.PluginError,
                       match='Corrupt image. Expected seq number: 1'):
        download(sr, glance_service, image_id)
    assert sr_files(sr) == []


def test_download_too_few_uuids(glance_service, sr, chain):
    files, _ = chain
    image_id = new_image(glance_service, tgz_bytes(
        [('./%d.vhd' % i, d) for i, d in enumerate(files)]))
    with pytest.raises(dg.PluginError, match='uuid_stack'):
        download(sr, glance_service, image_id, uuids(2))
    assert sr_files(sr) == []


def test_download_hidden_leaf(glance_service, sr):
    specs = [vf.random_layer(random.Random(5), 2 * vf.MiB)]
    data = vf.build_chain(specs)[0]
    # The writer sets hidden on parents only; hide this lone leaf.
    path = os.path.join(sr, '..', 'leaf.vhd')
    with open(path, 'wb') as f:
        f.write(data)
    ops.set_hidden(path, True)
    with open(path, 'rb') as f:
        data = f.read()
    image_id = new_image(glance_service, tgz_bytes([('0.vhd', data)]))
    with pytest.raises(dg.PluginError, match='hidden'):
        download(sr, glance_service, image_id)
    assert sr_files(sr) == []


def test_download_chain_that_does_not_link(glance_service, sr):
    # Two dynamic disks: the "child" is not a differencing disk.
    rnd = random.Random(6)
    a, b = (vf.build_chain([vf.random_layer(rnd, vf.MiB)], rnd=rnd)[0]
            for _ in range(2))
    image_id = new_image(glance_service, tgz_bytes([('0.vhd', a),
                                                    ('1.vhd', b)]))
    with pytest.raises(dg.PluginError, match='not a differencing disk'):
        download(sr, glance_service, image_id)
    assert sr_files(sr) == []


def test_download_corrupt_vhd(glance_service, sr, chain):
    files, _ = chain
    bad = bytearray(files[0])
    bad[-fmt.FOOTER_SIZE + 70] ^= 0xFF           # the footer's checksum
    image_id = new_image(glance_service, tgz_bytes(
        [('./0.vhd', bytes(bad)), ('./1.vhd', files[1]),
         ('./2.vhd', files[2])]))
    with pytest.raises(dg.PluginError, match='invalid VHD chain'):
        download(sr, glance_service, image_id)
    assert sr_files(sr) == []


@pytest.mark.parametrize('case', ['not gzip', 'truncated gzip',
                                  'gzip of no tar', 'empty'])
def test_download_bad_archive(glance_service, sr, chain, case):
    files, _ = chain
    good = tgz_bytes([('./0.vhd', files[2])])
    data = {'not gzip': b'plain text, not an image' * 100,
            'truncated gzip': good[:len(good) // 2],
            'gzip of no tar': gzip.compress(b'x' * 5000),
            'empty': b''}[case]
    image_id = new_image(glance_service, data)
    with pytest.raises(dg.RetryableError):
        download(sr, glance_service, image_id)
    assert sr_files(sr) == []


def tar_with(kind, name, data=b'x' * 1024):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w:gz', format=tarfile.GNU_FORMAT) \
            as tf:
        info = tarfile.TarInfo(name)
        if kind == 'symlink':
            info.type = tarfile.SYMTYPE
            info.linkname = '/etc/passwd'
            tf.addfile(info)
        elif kind == 'hardlink':
            info.type = tarfile.LNKTYPE
            info.linkname = '0.vhd'
            tf.addfile(info)
        elif kind == 'fifo':
            info.type = tarfile.FIFOTYPE
            tf.addfile(info)
        else:
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize('kind,name', [
    ('symlink', '0.vhd'), ('hardlink', '1.vhd'), ('fifo', '0.vhd'),
    ('file', '../escape.vhd'), ('file', '/abs.vhd'),
    ('file', 'sub/0.vhd')])
def test_download_unsafe_member(glance_service, sr, kind, name):
    image_id = new_image(glance_service, tar_with(kind, name))
    with pytest.raises(dg.RetryableError, match='not allowed|unsafe'):
        download(sr, glance_service, image_id)
    assert sr_files(sr) == []
    assert not os.path.exists(os.path.join(sr, '..', 'escape.vhd'))


def test_download_needs_the_owners_headers(glance_service, sr, small_tgz):
    image_id = new_image(glance_service, small_tgz[0])
    # Another project's identity: glance hides a private image (404).
    with pytest.raises(dg.RetryableError, match='HTTP 404'):
        download(sr, glance_service, image_id, headers=P2)
    assert sr_files(sr) == []
    download(sr, glance_service, image_id, headers=P1)
    assert len(sr_files(sr)) == 1


def test_download_missing_image(glance_service, sr):
    with pytest.raises(dg.RetryableError, match='HTTP 404'):
        download(sr, glance_service, str(uuid.uuid4()))


def test_glance_v1_is_refused(sr):
    with pytest.raises(dg.PluginError, match='v1'):
        dg.download_vhd2(sr, image_id='x', endpoint='http://127.0.0.1:9',
                         uuid_stack=uuids(), extra_headers={})
    with pytest.raises(dg.PluginError, match='v1'):
        dg.upload_vhd2(sr, vdi_uuids=[], image_id='x',
                       endpoint='http://127.0.0.1:9', extra_headers={},
                       properties={}, api_version=1)


def test_only_http_endpoints(sr):
    with pytest.raises(dg.PluginError, match='not an http'):
        dg.download_vhd2(sr, image_id='x', endpoint='file:///etc',
                         uuid_stack=uuids(), extra_headers={},
                         api_version=2)


def test_unreachable_glance_is_retryable(sr):
    with pytest.raises(dg.RetryableError):
        dg.download_vhd2(sr, image_id='x', endpoint='http://127.0.0.1:9',
                         uuid_stack=uuids(), extra_headers={},
                         api_version=2)


# -- upload to glance ---------------------------------------------------------

def sr_with_chain(sr, files) -> list:
    """The chain in the SR under fresh uuids, relinked; uuids leaf first."""
    ids = uuids(len(files))
    paths = [os.path.join(sr, '%s.vhd' % u) for u in ids]
    for path, data in zip(paths, files):
        with open(path, 'wb') as f:
            f.write(data)
    ops.fix_chain(paths)
    return ids


def snapshot(sr):
    return {n: (os.stat(os.path.join(sr, n)).st_nlink,
                hashlib.sha1(open(os.path.join(sr, n), 'rb').read())
                .hexdigest()) for n in sr_files(sr)}


def upload(sr, glance, ids, image_id, headers=P1, properties=None):
    dg.upload_vhd2(sr, vdi_uuids=ids, image_id=image_id,
                   endpoint=glance.url, extra_headers=headers,
                   properties=properties or {}, api_version=2)


def test_upload_then_download(glance_service, sr, chain, tmp_path):
    files, disk = chain
    ids = sr_with_chain(sr, files)
    before = snapshot(sr)
    # Cinder creates the image as the user asked; the plugin PATCHes it.
    image_id = new_image(glance_service, container_format='bare',
                         disk_format='raw')
    upload(sr, glance_service, ids, image_id, properties={
        'auto_disk_config': True, 'os_type': 'linux',
        'xenapi_image_compression_level': 1})
    # The SR's files: not renamed, not changed, no link left behind.
    assert snapshot(sr) == before

    info = glance_service.show(image_id, P1)
    assert info['status'] == 'active'
    assert (info['container_format'], info['disk_format'],
            info['visibility']) == ('ovf', 'vhd', 'private')
    assert info['owner'] == 'project-one'
    assert info['auto-disk-config'] == 'True'
    assert info['os-type'] == 'linux'
    assert info['xenapi-image-compression-level'] == '1'

    # What tar -zc --directory=staging . sends: ./ then ./0.vhd .. ./2.vhd.
    status, headers, body = glance_service.request(
        'GET', '/v2/images/%s/file' % image_id, headers=P1)
    assert status == 200
    # Glance 33's checksum header: hex md5 in Content-MD5, and no ETag.
    assert headers['Content-MD5'] == hashlib.md5(body).hexdigest()
    assert 'ETag' not in headers
    with tarfile.open(fileobj=io.BytesIO(body), mode='r:gz') as tf:
        assert tf.getnames() == ['.', './0.vhd', './1.vhd', './2.vhd']
        for i, member in enumerate(tf.getmembers()[1:]):
            assert tf.extractfile(member).read() == \
                open(os.path.join(sr, ids[i] + '.vhd'), 'rb').read()
    (tmp_path / 'up.tgz').write_bytes(body)
    tgz.convert(str(tmp_path / 'up.tgz'), str(tmp_path / 'up.raw'))
    assert vf.mismatch((tmp_path / 'up.raw').read_bytes(), disk) is None

    # And back through the plugin, into another SR.
    other = tmp_path / 'sr2'
    other.mkdir()
    leaf = download(str(other), glance_service, image_id)['root']['uuid']
    assert vf.mismatch(disk_of(str(other / (leaf + '.vhd'))), disk) is None


def test_upload_needs_the_owners_headers(glance_service, sr, chain):
    files, _ = chain
    ids = sr_with_chain(sr, files[2:])
    image_id = new_image(glance_service)
    with pytest.raises(dg.Failure, match='^ImageNotFound$'):
        upload(sr, glance_service, ids, image_id, headers=P2)
    assert glance_service.show(image_id, P1)['status'] == 'queued'
    upload(sr, glance_service, ids, image_id, headers=P1)
    assert glance_service.show(image_id, P1)['status'] == 'active'


def test_upload_to_missing_image(glance_service, sr, chain):
    ids = sr_with_chain(sr, chain[0][2:])
    with pytest.raises(dg.Failure) as err:
        upload(sr, glance_service, ids, str(uuid.uuid4()))
    # What the caller sees is the class name and the text.
    assert type(err.value).__name__ == 'Failure'
    assert str(err.value) == 'ImageNotFound'


def test_upload_to_active_image(glance_service, sr, chain):
    files, _ = chain
    ids = sr_with_chain(sr, files[2:])
    image_id = new_image(glance_service, tgz_bytes([('0.vhd', files[2])]))
    with pytest.raises(dg.PluginError, match='image status is active'):
        upload(sr, glance_service, ids, image_id)


def test_upload_missing_vdi(glance_service, sr):
    image_id = new_image(glance_service)
    with pytest.raises(dg.PluginError, match='cannot stage'):
        upload(sr, glance_service, uuids(1), image_id)
    assert glance_service.show(image_id, P1)['status'] == 'queued'


def test_upload_refuses_a_path_for_a_uuid(glance_service, sr):
    with pytest.raises(dg.PluginError, match='not a uuid'):
        upload(sr, glance_service, ['../../etc/passwd'], 'x')


# -- against a scripted HTTP server -------------------------------------------

@pytest.fixture(scope='module')
def small_tgz():
    specs = [vf.random_layer(random.Random(9), 2 * vf.MiB)]
    return tgz_bytes([('./0.vhd', vf.build_chain(specs)[0])]), \
        vf.expected_disk(specs)


@pytest.mark.parametrize('header', ['ETag', 'Content-MD5',
                                    'x-image-meta-checksum'])
def test_checksum_header_is_checked(fake_glance, sr, small_tgz, header):
    data, disk = small_tgz
    md5 = hashlib.md5(data).hexdigest()
    fake_glance.script.download = (200, {header: md5}, data)
    stack = uuids(1)
    leaf = stack[0]
    assert dg.download_vhd2(sr, image_id='img', endpoint=fake_glance.url,
                            uuid_stack=stack, extra_headers={'X-A': 'b'},
                            api_version=2) == {'root': {'uuid': leaf}}
    method, path, headers, _ = fake_glance.script.requests[0]
    # The endpoint's path prefix is kept; extra headers are sent.
    assert (method, path) == ('GET', '/image-api/v2/images/img/file')
    assert headers['X-A'] == 'b'
    assert disk_of(os.path.join(sr, leaf + '.vhd')) == disk

    for f in sr_files(sr):
        os.unlink(os.path.join(sr, f))
    fake_glance.script.download = (200, {header: '0' * 32}, data)
    with pytest.raises(dg.RetryableError, match='does not match'):
        dg.download_vhd2(sr, image_id='img', endpoint=fake_glance.url,
                         uuid_stack=uuids(), extra_headers={},
                         api_version=2)
    assert sr_files(sr) == []


def test_etag_wins_over_content_md5(fake_glance, sr, small_tgz):
    data, _ = small_tgz
    fake_glance.script.download = (200, {
        'ETag': '1' * 32, 'Content-MD5': hashlib.md5(data).hexdigest()},
        data)
    with pytest.raises(dg.RetryableError, match='checksum 1{32} from'):
        dg.download_vhd2(sr, image_id='i', endpoint=fake_glance.url,
                         uuid_stack=uuids(), extra_headers={},
                         api_version=2)


def test_no_checksum_header_is_accepted(fake_glance, sr, small_tgz):
    fake_glance.script.download = (200, {}, small_tgz[0])
    dg.download_vhd2(sr, image_id='i', endpoint=fake_glance.url,
                     uuid_stack=uuids(), extra_headers={}, api_version=2)
    assert len(sr_files(sr)) == 1


def test_download_503_is_retryable(fake_glance, sr):
    fake_glance.script.download = (503, {}, b'busy')
    with pytest.raises(dg.RetryableError, match='HTTP 503'):
        dg.download_vhd2(sr, image_id='i', endpoint=fake_glance.url,
                         uuid_stack=uuids(), extra_headers={},
                         api_version=2)
    assert sr_files(sr) == []


def test_upload_requests(fake_glance, sr):
    specs = [vf.random_layer(random.Random(10), vf.MiB)]
    ids = sr_with_chain(sr, vf.build_chain(specs))
    dg.upload_vhd2(sr, vdi_uuids=ids, image_id='img',
                   endpoint=fake_glance.url + '/',
                   extra_headers={'X-Auth-Token': 't'},
                   properties={'os_type': 'linux'}, api_version=2)
    (m1, p1, h1, b1), (m2, p2, h2, _), (m3, p3, h3, b3) = \
        fake_glance.script.requests
    assert (m1, p1) == ('PATCH', '/image-api/v2/images/img')
    assert h1['Content-Type'] == \
        'application/openstack-images-v2.1-json-patch'
    assert json.loads(b1) == [
        {'op': 'add', 'path': '/container_format', 'value': 'ovf'},
        {'op': 'add', 'path': '/disk_format', 'value': 'vhd'},
        {'op': 'add', 'path': '/visibility', 'value': 'private'},
        {'op': 'add', 'path': '/os-type', 'value': 'linux'}]
    assert (m2, p2, h2['X-Auth-Token']) == ('GET', '/image-api/v2/images/img',
                                            't')
    assert (m3, p3) == ('PUT', '/image-api/v2/images/img/file')
    assert h3['Transfer-Encoding'] == 'chunked'
    assert h3['Content-Type'] == 'application/octet-stream'
    assert h3['X-Auth-Token'] == 't'
    with tarfile.open(fileobj=io.BytesIO(b3), mode='r:gz') as tf:
        assert tf.getnames() == ['.', './0.vhd']


@pytest.mark.parametrize('status,error', [
    (503, dg.RetryableError), (500, dg.RetryableError),
    (418, dg.RetryableError),               # unexpected: retried
    (413, dg.PluginError), (409, dg.PluginError), (401, dg.PluginError),
    (404, dg.Failure)])
def test_upload_status_mapping(fake_glance, sr, status, error):
    specs = [vf.random_layer(random.Random(11), vf.MiB)]
    ids = sr_with_chain(sr, vf.build_chain(specs))
    fake_glance.script.put_status = status
    with pytest.raises(error) as err:
        dg.upload_vhd2(sr, vdi_uuids=ids, image_id='img',
                       endpoint=fake_glance.url, extra_headers={},
                       properties={}, api_version=2)
    assert type(err.value).__name__ == error.__name__
    if status != 404:
        assert '[%d]' % status in str(err.value)


def test_upload_unreachable_is_retryable(sr):
    specs = [vf.random_layer(random.Random(12), vf.MiB)]
    ids = sr_with_chain(sr, vf.build_chain(specs))
    with pytest.raises(dg.RetryableError):
        dg.upload_vhd2(sr, vdi_uuids=ids, image_id='img',
                       endpoint='http://127.0.0.1:9', extra_headers={},
                       properties={}, api_version=2)


def test_retryable_is_not_a_plugin_error():
    # As in the plugin: a caller catching PluginError does not swallow
    # the error it should retry.
    assert not issubclass(dg.RetryableError, dg.PluginError)


def test_leaf_replaces_an_existing_vdi_file_parents_never(
        glance_service, sr, chain):
    """cinder's driver puts its target VDI's uuid last in the stack: the
    leaf must land in that file (os.rename replaces it, as in dom0)."""
    files, disk = chain
    img = new_image(glance_service, tgz_bytes(
        [('./%d.vhd' % i, f) for i, f in enumerate(files)]),
        container_format='ovf', disk_format='vhd')
    target = str(uuid.uuid4())
    with open(os.path.join(sr, target + '.vhd'), 'wb') as f:
        f.write(b'old empty volume')
    stack = uuids(len(files) - 1) + [target]
    got = dg.download_vhd2(sr, image_id=img,
                           endpoint=glance_service.url,
                           uuid_stack=list(stack), extra_headers=P1,
                           api_version=2)
    assert got == {'root': {'uuid': target}}
    assert disk_of(os.path.join(sr, target + '.vhd')) == disk
    # a parent whose file exists is refused, and nothing changes
    before = sr_files(sr)
    with pytest.raises(dg.PluginError):
        dg.download_vhd2(sr, image_id=img,
                         endpoint=glance_service.url,
                         uuid_stack=uuids(1) + [stack[-2]] + uuids(1),
                         extra_headers=P1, api_version=2)
    assert sr_files(sr) == before
