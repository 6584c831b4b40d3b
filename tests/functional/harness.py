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
"""Cinder's own in-process functional fixture, with our driver as backend.

``_FunctionalTestBase`` gives a real osapi_volume WSGI server on
127.0.0.1, the scheduler and the volume manager in this process, sqlite in
memory and ``fake:/`` messaging. Out of cinder's tree it needs two
overrides (the wheel installs ``api-paste.ini`` and
``resource_filters.json`` under ``<venv>/etc/cinder``, not beside the
package), and pytest needs the shim in ``tests/conftest.py``.

What this adds:

* the XenAPI test server, started before the services (the driver logs in
  in ``do_setup``) and stopped after them;
* an image service: cinder's in-memory fake, made to keep the data of an
  ``update`` and to leave ``temp_images`` to cinder, as glance's does;
* polling at 50 ms instead of cinder's 1 s sleeps;
* privileged calls (cinder's image format inspection) run in process;
* no rescheduling, so that a failed create ends in ``error``;
* the root logger's level restored afterwards (cinder leaves it at INFO);
* a XenAPI session of the test's own, to look at the SR and move data in
  and out of VDIs independently of the driver.
"""

import contextlib
import errno
import io
import logging
import os
import sys
import sysconfig
import tempfile
import time
import warnings

import fixtures
from oslo_config import cfg

# cinder's test package first: it monkey-patches eventlet and registers
# cinder's objects, which cinder.image.glance needs when it is imported.
from cinder.tests.functional import functional_helpers  # noqa: I100

import cinder  # noqa: I100
from cinder.image import glance
from cinder.scheduler import driver as scheduler_driver  # noqa: F401
from cinder import service
from cinder.tests.functional.api import client
from cinder.volume import configuration

from tests import fake_images
from tests import xapi_fixture
from xenapinfs_driver import opts  # noqa: F401  (registers the options)
from xenapinfs_driver import vhd
from xenapinfs_driver.vhd import pack
from xenapinfs_driver.xenapi import session as xsession
from xenapinfs_driver.xenapi import transfer

CONF = cfg.CONF


def _cinder_etc():
    """Where cinder's wheel put its data files (or a checkout has them)."""
    here = [os.path.join(sysconfig.get_paths()['data'], 'etc', 'cinder'),
            os.path.join(sys.prefix, 'etc', 'cinder'),
            os.path.join(os.path.dirname(os.path.dirname(cinder.__file__)),
                         'etc', 'cinder')]
    for path in here:
        if os.path.isfile(os.path.join(path, 'api-paste.ini')):
            return path
    raise RuntimeError('cinder\'s api-paste.ini is in none of %s' % here)


ETC = _cinder_etc()
PASTE = os.path.join(ETC, 'api-paste.ini')
FILTERS = os.path.join(ETC, 'resource_filters.json')
DRIVER = 'xenapinfs_driver.driver.XenAPINFSDriver'
SERVER, SERVERPATH = xapi_fixture.EXPORT
MiB = 1 << 20
GiB = 1 << 30
POLL = 0.05


class ImageService(fake_images.ImageService):
    """The fake image service, with images added by the test."""

    def add(self, data, container_format, disk_format, **extra):
        """Register an active image holding ``data``; return its id."""
        meta = {'name': 'functional-%s-%s' % (container_format, disk_format),
                'status': 'active', 'visibility': 'public',
                'protected': False, 'deleted': False, 'deleted_at': None,
                'container_format': container_format,
                'disk_format': disk_format, 'size': len(data),
                'min_disk': 0, 'min_ram': 0, 'properties': {}}
        meta.update(extra)
        return self.create(None, meta, io.BytesIO(data))['id']


class DriverFunctionalTest(functional_helpers._FunctionalTestBase):
    """One backend with our driver, on a fresh XenAPI test server."""

    RESOURCE_FILTER_PATH = FILTERS
    # Real coordination locks (tooz file backend in a temporary
    # directory): the driver's synchronized sections run for real.
    MOCK_TOOZ = False
    VOLUME_TYPE = 'xenapinfs'

    def setUp(self):
        # cinder's StandardLogging sets the root logger to INFO and never
        # sets it back: restore it, so later tests in this process log as
        # they would have.
        root = logging.getLogger()
        self.addCleanup(root.setLevel, root.level)
        # Before cinder's setUp, so that its cleanups (which stop the
        # services) run before these ones.
        stack = contextlib.ExitStack()
        self.addCleanup(stack.close)
        self.xapi = stack.enter_context(xapi_fixture.running_server())
        self.control = xapi_fixture.Control(self.xapi)
        self.images = ImageService()
        self.mock_object(glance, 'get_default_image_service',
                         lambda: self.images)
        self.mock_object(glance, 'get_remote_image_service',
                         lambda context, href: (self.images, href))
        super().setUp()
        # cinder's image paths inspect formats through a privsep
        # entrypoint, and cinder's fixture forbids starting the helper:
        # run privileged calls in this process instead.
        self.useFixture(fixtures.MonkeyPatch(
            'cinder.privsep.sys_admin_pctxt.client_mode', False))
        self.driver = self.volume.manager.driver
        self.assertTrue(self.driver.initialized,
                        'the driver did not set up: see the log')
        self.api.create_type(self.VOLUME_TYPE)
        self.session = xsession.XenAPISession(
            self.xapi.url, xapi_fixture.USERNAME, xapi_fixture.PASSWORD,
            originator='functional tests', timeout=30.0).connect()
        self.addCleanup(self.session.close)
        srs = self.session.call('SR.get_all_records_where',
                                'field "type"="nfs"')
        self.assertEqual(1, len(srs), srs)
        (self.sr, rec), = srs.items()
        self.sr_uuid = rec['uuid']

    def _start_api_service(self):
        CONF.api_paste_config = PASTE
        self.osapi = service.WSGIService('osapi_volume')
        self.osapi.start()
        self.auth_url = 'http://%s:%s/v%s' % (
            self.osapi.host, self.osapi.port, self.osapi_version_major)

    def _get_flags(self):
        # Called after cinder's WarningsFixture, which turns cinder's own
        # deprecations back on (hundreds a test, none about this driver),
        # and before the services start; it restores the filters after.
        warnings.filterwarnings('ignore', category=DeprecationWarning,
                                module=r'(cinder|oslo_service)\.')
        f = super()._get_flags()
        shared = configuration.SHARED_CONF_GROUP
        for name, value in (
                ('volume_driver', DRIVER),
                ('xenapi_connection_url', self.xapi.url),
                ('xenapi_connection_username', xapi_fixture.USERNAME),
                ('xenapi_connection_password', xapi_fixture.PASSWORD),
                ('xenapi_nfs_server', SERVER),
                ('xenapi_nfs_serverpath', SERVERPATH),
                # dom0 cannot reach cinder's in-memory image service.
                ('xenapi_image_transfer', 'stream'),
                ('xenapi_connection_timeout', 30)):
            f[name] = {'v': value, 'g': shared}
        f['default_volume_type'] = {'v': self.VOLUME_TYPE}
        # One backend: a failed create would be rescheduled to the same
        # one, and a fault that fires once would go unseen.
        f['scheduler_max_attempts'] = {'v': 1}
        # Not $state_path/conversion, which is inside site-packages here.
        f['image_conversion_dir'] = {
            'v': self.useFixture(fixtures.TempDir()).path}
        return f

    # -- the REST API --------------------------------------------------------

    def wait(self, get, res_id, busy, timeout=60.0):
        """The resource once its status is not in ``busy``; None if gone."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                res = get(res_id)
            except client.OpenStackApiException404:
                return None
            if res['status'] not in busy:
                return res
            if time.monotonic() > deadline:
                self.fail('%s still %s after %.0f s'
                          % (res_id, res['status'], timeout))
            time.sleep(POLL)

    def create_volume(self, expect='available', **fields):
        fields.setdefault('size', 1)
        vol = self.api.post_volume({'volume': fields})
        vol = self.wait(self.api.get_volume, vol['id'],
                        ('creating', 'downloading'))
        self.assertEqual(expect, vol['status'], vol)
        return vol

    def create_snapshot(self, volume_id, expect='available'):
        snap = self.api.post_snapshot({'snapshot': {'volume_id': volume_id}})
        snap = self.wait(self.api.get_snapshot, snap['id'], ('creating',))
        self.assertEqual(expect, snap['status'], snap)
        return snap

    def volume_action(self, volume_id, action, body):
        return self.api.api_post('/volumes/%s/action' % volume_id,
                                 {action: body})

    def delete_volume(self, volume_id):
        self.api.delete_volume(volume_id)
        self.assertIsNone(self.wait(self.api.get_volume, volume_id,
                                    ('deleting', 'available', 'error')))

    def delete_snapshot(self, snapshot_id):
        self.api.delete_snapshot(snapshot_id)
        self.assertIsNone(self.wait(self.api.get_snapshot, snapshot_id,
                                    ('deleting', 'available', 'error')))

    # -- the SR, seen through XenAPI and on disk -----------------------------

    def vdis(self):
        """{name_label: record} of the SR's visible VDIs."""
        found = self.session.call(
            'VDI.get_all_records_where', 'field "SR"="%s"' % self.sr)
        return {rec['name_label']: rec for rec in found.values()
                if rec['managed']}

    def vdi(self, name):
        """The ref and record of the one VDI named ``name``."""
        found = self.session.call(
            'VDI.get_all_records_where', 'field "name_label"="%s"' % name)
        self.assertEqual(1, len(found), 'VDIs named %s: %s' % (name, found))
        (ref, rec), = found.items()
        self.assertEqual(self.sr, rec['SR'])
        return ref, rec

    def sr_dir(self):
        return os.path.join(self.xapi.root, 'exports', SERVER,
                            SERVERPATH.lstrip('/'), self.sr_uuid)

    def vhd_path(self, vdi_uuid):
        return os.path.join(self.sr_dir(), '%s.vhd' % vdi_uuid)

    def assert_no_orphans(self):
        """Each file is a VDI's, each hidden base copy has a child."""
        records = self.session.call(
            'VDI.get_all_records_where', 'field "SR"="%s"' % self.sr)
        on_disk = sorted(os.listdir(self.sr_dir()))
        self.assertEqual(sorted('%s.vhd' % r['uuid']
                                for r in records.values()), on_disk)
        parents = {r['sm_config'].get('vhd-parent')
                   for r in records.values()}
        orphans = [r['uuid'] for r in records.values()
                   if not r['managed'] and r['uuid'] not in parents]
        self.assertEqual([], orphans, 'base copies nothing uses')

    def assert_sr_empty(self):
        """No VDI, no file left; the SR itself (and its directory) stays."""
        state = self.control.state()
        self.assertEqual('1', state['SR'], state)
        self.assertEqual('0', state['VDI'], state)
        self.assertEqual([], state['files'])
        self.assertTrue(os.path.isdir(self.sr_dir()))
        self.assertEqual([], os.listdir(self.sr_dir()))

    # -- disk data -----------------------------------------------------------

    def write_disk(self, vdi_ref, extents, size):
        """Make the VDI's disk ``size`` bytes of zeros but ``extents``.

        ``extents`` maps offsets to bytes. The disk goes as one sparse VHD
        through ``/import_raw_vdi``, so a GiB volume costs its data only.
        """
        with tempfile.TemporaryDirectory() as tmp:
            raw = os.path.join(tmp, 'disk.raw')
            out = os.path.join(tmp, 'disk.vhd')
            write_sparse(raw, extents, size)
            pack.pack(raw, out, vhd_only=True)
            with open(out, 'rb') as src:
                transfer.import_vdi(self.session, vdi_ref, src,
                                    os.path.getsize(out), 'vhd')

    def read_disk(self, vdi_ref, dest):
        """Save the VDI's disk to ``dest`` as a sparse raw file."""
        vhd_file = dest + '.vhd'
        with open(vhd_file, 'wb') as out:
            transfer.export_to_file(self.session, vdi_ref, out, 'vhd')
        vhd.convert(vhd_file, dest)
        os.unlink(vhd_file)
        return dest

    def assert_disk(self, path, extents, size):
        """``path`` is ``size`` bytes: ``extents`` and zeros elsewhere."""
        self.assertEqual(size, os.path.getsize(path))
        with open(path, 'rb') as f:
            for off, data in extents.items():
                f.seek(off)
                got = f.read(len(data))
                self.assertTrue(got == data, 'bytes at %d differ' % off)
        covered = sorted((off, off + len(data))
                         for off, data in extents.items())
        stray = nonzero_outside(path, covered)
        self.assertIsNone(stray, 'non-zero data outside the extents')


def write_sparse(path, extents, size):
    with open(path, 'wb') as f:
        f.truncate(size)
        for off, data in extents.items():
            f.seek(off)
            f.write(data)


def nonzero_outside(path, covered):
    """The first offset outside ``covered`` holding a non-zero byte."""
    with open(path, 'rb') as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    return None
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            off = start
            while off < end:
                chunk = bytearray(os.pread(fd, min(MiB, end - off), off))
                for a, b in covered:  # blank what is expected there
                    lo, hi = max(a, off), min(b, off + len(chunk))
                    if lo < hi:
                        chunk[lo - off:hi - off] = bytes(hi - lo)
                rest = chunk.lstrip(b'\0')
                if rest:
                    return off + len(chunk) - len(rest)
                off += len(chunk)
            pos = end
    return None
