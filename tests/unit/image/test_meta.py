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
"""What an image is, and what dom0 is told about glance and the caller."""

from cinder import context
from cinder.image import image_utils
from cinder.tests.unit import test
import pytest

from tests.unit import test_driver
from xenapinfs_driver.image import meta


@pytest.mark.parametrize('container,disk,want', [
    ('ovf', 'vhd', meta.XENSERVER),
    ('bare', 'vhd', meta.BARE_VHD),
    (None, 'vhd', meta.BARE_VHD),
    ('ami', 'vhd', meta.BARE_VHD),
    ('ovf', 'vmdk', meta.OTHER),
    ('bare', 'qcow2', meta.OTHER),
    ('bare', 'raw', meta.RAW),
    (None, 'raw', meta.RAW),
    ('ovf', 'raw', meta.OTHER),
    ('bare', 'vhdx', meta.OTHER),
    ('ovf', None, meta.OTHER),
])
def test_kind(container, disk, want):
    assert meta.kind({'container_format': container,
                      'disk_format': disk}) == want


def test_kind_of_nothing():
    assert meta.kind(None) == meta.OTHER
    assert meta.kind({}) == meta.OTHER


@pytest.mark.parametrize('container,disk,want', [
    ('bare', 'qcow2', True),
    (None, 'qcow2', True),
    ('ovf', 'qcow2', True),
    # cinder compresses these after converting, on a file.
    ('compressed', 'qcow2', False),
    ('bare', 'vmdk', False),
    ('bare', 'raw', False),
])
def test_packs_qcow2(container, disk, want):
    # Compressed on upload or not: the driver packs either.
    for compress in (False, True):
        image_utils.CONF.set_override('image_compress_on_upload', compress)
        try:
            assert meta.packs_qcow2({'container_format': container,
                                     'disk_format': disk}) is want
            assert meta.packs_qcow2(None) is False
            assert meta.compresses_qcow2() is compress
        finally:
            image_utils.CONF.clear_override('image_compress_on_upload')
    # cinder's default: compressed clusters, as operators expect.
    assert meta.compresses_qcow2() is True


class GlanceFromDom0TestCase(test.TestCase):
    """Needs cinder's configuration: its TestCase sets it up."""

    def setUp(self):
        test_driver.keep_root_log_level(self)
        super().setUp()

    def test_endpoint_from_glance_api_servers(self):
        for server, want in (
                ('glance.example:9292', 'http://glance.example:9292'),
                ('http://10.0.0.5:9292/', 'http://10.0.0.5:9292'),
                ('https://cloud.example/image',
                 'https://cloud.example/image'),
                ('https://cloud.example/image/',
                 'https://cloud.example/image')):
            self.override_config('glance_api_servers', [server])
            self.assertEqual(want,
                             meta.endpoint(context.get_admin_context()))

    def test_endpoint_from_the_service_catalog(self):
        self.override_config('glance_api_servers', None)
        ctx = context.RequestContext('u', 'p', service_catalog=[
            {'type': 'volumev3',
             'endpoints': [{'publicURL': 'http://c:8776'}]},
            {'type': 'image', 'name': 'glance',
             'endpoints': [{'publicURL': 'https://img.example:9292'}]}])
        self.assertEqual('https://img.example:9292', meta.endpoint(ctx))

    def test_endpoint_is_one_of_several(self):
        servers = ['http://g1:9292', 'http://g2:9292']
        self.override_config('glance_api_servers', servers)
        seen = {meta.endpoint(context.get_admin_context())
                for _ in range(40)}
        self.assertTrue(seen and seen <= set(servers))

    def test_identity_headers(self):
        ctx = context.RequestContext(user_id='u1', project_id='p1',
                                     roles=['member', 'reader'],
                                     auth_token='tok')
        self.assertEqual({'X-Auth-Token': 'tok', 'X-User-Id': 'u1',
                          'X-Tenant-Id': 'p1', 'X-Roles': 'member,reader',
                          'X-Identity-Status': 'Confirmed'},
                         meta.identity_headers(ctx))

    def test_identity_headers_never_carry_none(self):
        # None cannot travel over XML-RPC, inside the pickle or not.
        headers = meta.identity_headers(context.RequestContext(
            user_id=None, project_id=None, roles=[], auth_token=None))
        self.assertNotIn(None, headers.values())
        self.assertEqual(('', ''), (headers['X-Auth-Token'],
                                    headers['X-Roles']))
