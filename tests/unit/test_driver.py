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
"""XenAPINFSDriver against the XenAPI test server, through real sockets.

Each test class shares one test server (started once, a few ms); each test
gets a driver of its own backend section, so its own SR, and cinder's real
coordination locks (``MOCK_TOOZ = False``). ``DriverTestBase`` is shared
with the manage and image test modules.
"""

import contextlib
import io
import logging
import os
import random
import shutil
import tempfile
from unittest import mock
import uuid

from cinder import context
from cinder import exception as cinder_exception
from cinder import objects
from cinder.tests.unit import fake_snapshot
from cinder.tests.unit import fake_volume
from cinder.tests.unit import test
from cinder.tests.unit import utils as tests_utils
from cinder.volume import configuration
from cinder.volume import driver as cinder_driver
from oslo_config import cfg
from oslo_utils import units

from tests.vhd_factory import mismatch
from tests import xapi_fixture
from xenapinfs_driver import backend
from xenapinfs_driver import driver
from xenapinfs_driver import exception
from xenapinfs_driver import opts
from xenapinfs_driver import vhd
from xenapinfs_driver.xenapi import storage
from xenapinfs_driver.xenapi import transfer

SERVER, PATH = xapi_fixture.EXPORT
MiB = units.Mi
GiB = units.Gi
REQUIRED = ('xenapi_connection_url', 'xenapi_connection_password',
            'xenapi_nfs_server', 'xenapi_nfs_serverpath')


def pattern(size, seed):
    """``size`` random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(size)


def keep_root_log_level(testcase):
    """Undo, after the test, what cinder's logging fixture does to root.

    NOTE: cinder's StandardLogging fixture sets the root logger to INFO
    and never sets it back, so every later test of the process would
    capture the test server's INFO records too. Call before
    ``super().setUp()``: cleanups run last in, first out.
    """
    root = logging.getLogger()
    testcase.addCleanup(root.setLevel, root.level)


class DriverTestBase(test.TestCase):
    """A test server per class; a driver (and an SR) per test."""

    MOCK_TOOZ = False
    server_kwargs = {}
    # Options of the driver every test of the class gets.
    driver_overrides = {}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls._class_stack = contextlib.ExitStack()
        cls.server = cls._class_stack.enter_context(
            xapi_fixture.running_server(**cls.server_kwargs))
        cls.control = xapi_fixture.Control(cls.server)

    @classmethod
    def tearDownClass(cls):
        cls._class_stack.close()
        super().tearDownClass()

    def setUp(self):
        keep_root_log_level(self)
        super().setUp()
        self.control.clear_faults()
        self.addCleanup(self.control.clear_faults)
        tmp = tempfile.mkdtemp(prefix='xenapinfs-conv-')
        self.addCleanup(shutil.rmtree, tmp, True)
        # cinder's default lies inside its installed package.
        self.override_config('image_conversion_dir', tmp)
        self.context = context.get_admin_context()
        self.driver = self.make_driver(**self.driver_overrides)
        self.driver.do_setup(self.context)
        self.driver.check_for_setup_error()

    # -- drivers --------------------------------------------------------------

    def make_driver(self, group=None, server=None, **overrides):
        """A driver of backend section ``group`` (new if None), not set up."""
        group = group or 'xenapinfs-%s' % uuid.uuid4().hex[:8]
        conf = configuration.Configuration(cinder_driver.volume_opts,
                                           config_group=group)
        # What the driver's __init__ appends, so that any can be set first.
        conf.append_config_values(cinder_driver.image_opts)
        conf.append_config_values(opts.xenapi_opts)
        values = {
            'xenapi_connection_url': (server or self.server).url,
            'xenapi_connection_password': xapi_fixture.PASSWORD,
            'xenapi_nfs_server': SERVER,
            'xenapi_nfs_serverpath': PATH,
            # A test never waits for backoff; the host is on loopback.
            'xenapi_connection_retries': 0,
            'xenapi_connection_timeout': 30,
            'xenapi_image_transfer': 'stream',
        }
        values.update(overrides)
        for name, value in values.items():
            self.override_config(name, value, group)
        drv = driver.XenAPINFSDriver(configuration=conf)
        self.addCleanup(self._close, drv)
        return drv

    @staticmethod
    def _close(drv):
        if drv.backend is not None:
            drv.backend.session.close()

    # -- cinder objects -------------------------------------------------------

    def volume(self, size=1, **kwargs):
        kwargs.setdefault('id', str(uuid.uuid4()))
        kwargs.setdefault('display_description', 'a test volume')
        return fake_volume.fake_volume_obj(self.context, size=size, **kwargs)

    def new_volume(self, size=1, data=None, **kwargs):
        """A volume created by the driver, with ``data`` at offset 0."""
        vol = self.volume(size, **kwargs)
        vol.provider_location = \
            self.driver.create_volume(vol)['provider_location']
        if data:
            self.write(vol, data)
        return vol

    def snapshot(self, vol, **kwargs):
        kwargs.setdefault('id', str(uuid.uuid4()))
        snap = fake_snapshot.fake_snapshot_obj(
            self.context, volume_id=vol.id, volume=vol,
            volume_size=vol.size, **kwargs)
        model = self.driver.create_snapshot(snap)
        snap.provider_location = model['provider_location']
        return snap

    # -- the host's view ------------------------------------------------------

    @property
    def session(self):
        return self.driver.backend.session

    def vdi_uuid(self, obj):
        return backend.Backend.parse_location(obj.provider_location)[1]

    def ref(self, obj_or_uuid):
        vdi_uuid = obj_or_uuid if isinstance(obj_or_uuid, str) \
            else self.vdi_uuid(obj_or_uuid)
        return self.session.call('VDI.get_by_uuid', vdi_uuid)

    def record(self, obj_or_uuid):
        return self.session.call('VDI.get_record', self.ref(obj_or_uuid))

    def exists(self, vdi_uuid):
        return storage.vdi_by_uuid(self.session, vdi_uuid) is not None

    def sr_dir(self, sr_uuid=None, server=None):
        return os.path.join((server or self.server).root, 'exports', SERVER,
                            PATH.lstrip('/'),
                            sr_uuid or self.driver.backend.sr_uuid)

    def files(self, sr_uuid=None):
        """Every entry of the SR's directory: a file that is no VHD is a
        leak too."""
        return sorted(os.listdir(self.sr_dir(sr_uuid)))

    def write(self, obj, data, session=None):
        """Make ``data`` the VDI's disk: ``/import_raw_vdi`` replaces the
        whole content, what ``data`` does not cover reads as zeros."""
        session = session or self.session
        ref = session.call('VDI.get_by_uuid', self.vdi_uuid(obj)) \
            if not isinstance(obj, str) else obj
        transfer.import_vdi(session, ref, io.BytesIO(data), len(data), 'raw')

    @contextlib.contextmanager
    def exported(self, obj_or_ref):
        """The VDI's disk as a sparse raw file, as a guest sees the disk.

        Exported as a VHD and composed by our library: a raw export would
        send every zero of a 1 GiB volume.
        """
        ref = obj_or_ref if isinstance(obj_or_ref, str) and \
            obj_or_ref.startswith('OpaqueRef:') else self.ref(obj_or_ref)
        with tempfile.TemporaryDirectory() as tmp:
            exported = os.path.join(tmp, 'disk.vhd')
            with open(exported, 'wb') as dest:
                transfer.export_to_file(self.session, ref, dest, 'vhd')
            vhd.convert(exported, os.path.join(tmp, 'disk.raw'))
            yield os.path.join(tmp, 'disk.raw')

    def read(self, obj_or_ref, length):
        """The first ``length`` bytes of the VDI's disk."""
        with self.exported(obj_or_ref) as raw, open(raw, 'rb') as f:
            return f.read(length)

    def assert_disk(self, obj, disk, size=None):
        """The VDI holds ``disk``, then zeros up to ``size`` (its own)."""
        with self.exported(obj) as raw:
            self.assert_raw(raw, disk, size or obj.size * GiB)

    def assert_raw(self, path, disk, size):
        """The raw file ``path`` of ``size`` bytes is ``disk`` + zeros."""
        self.assertEqual(size, os.path.getsize(path))
        with open(path, 'rb') as f:
            self.assertIsNone(mismatch(f.read(len(disk)), disk))
            # Only the file's data extents can hold anything but zeros.
            offset = len(disk)
            while True:
                try:
                    start = os.lseek(f.fileno(), offset, os.SEEK_DATA)
                except OSError:     # ENXIO: no data after offset
                    break
                end = os.lseek(f.fileno(), start, os.SEEK_HOLE)
                f.seek(start)
                while start < end:
                    piece = f.read(min(end - start, 4 * MiB))
                    self.assertEqual(len(piece), piece.count(0),
                                     'data at %d, past the disk' % start)
                    start += len(piece)
                offset = end

    def visible_vdis(self, sr=None):
        """uuid -> record of the SR's managed VDIs (not base copies)."""
        recs = self.session.call(
            'VDI.get_all_records_where',
            'field "SR"="%s"' % (sr or self.driver.backend.sr))
        return {r['uuid']: r for r in recs.values() if r['managed']}

    @contextlib.contextmanager
    def nothing_leaked(self):
        """The block may fail; afterwards the host holds what it held.

        Same managed VDIs, no task, SR, PBD, VBD, login or mount more
        (as the server counts them), no file in the SR without a record
        and none more elsewhere in the exports, nothing left in
        ``image_conversion_dir``. A snapshot or clone that is undone can
        leave its source one layer deeper (a hidden base copy with the
        source as child): that is how a file SR works, and XenServer's GC
        coalesces it.
        """
        before = self.visible_vdis()
        sr_files = os.path.relpath(self.sr_dir(), self.server.root) + '/'
        state = self.control.state()
        yield
        self.assertEqual(sorted(before), sorted(self.visible_vdis()))
        after = self.control.state()
        for key in ('SR', 'PBD', 'task', 'VBD', 'session', 'mounts'):
            self.assertEqual(state[key], after[key], key)
        self.assertEqual(
            [f for f in state['files'] if not f.startswith(sr_files)],
            [f for f in after['files'] if not f.startswith(sr_files)],
            'files in the exports')
        known = {r['location'] for r in self.session.call(
            'VDI.get_all_records_where',
            'field "SR"="%s"' % self.driver.backend.sr).values()}
        self.assertEqual(sorted('%s.vhd' % k for k in known), self.files())
        self.assertEqual([], os.listdir(cfg.CONF.image_conversion_dir),
                         'left in image_conversion_dir')


class SetupTestCase(DriverTestBase):

    def _tagged(self, tag):
        return [rec['uuid'] for rec in self.session.call(
            'SR.get_all_records_where', 'field "type"="nfs"').values()
            if rec['other_config'].get(storage.TAG_KEY) == tag]

    def test_creates_tags_and_finds_the_sr_again(self):
        drv = self.driver
        group = drv.configuration.config_group
        rec = self.session.call('SR.get_record', drv.backend.sr)
        tag = '%s@%s:%s' % (group, SERVER, PATH)
        self.assertEqual(tag, rec['other_config'][storage.TAG_KEY])
        self.assertEqual('nfs', rec['type'])
        self.assertTrue(os.path.isdir(self.sr_dir()))
        self.assertEqual([drv.backend.sr_uuid], self._tagged(tag))
        # A second volume service of the same backend (active-active),
        # or this one restarted: the same SR, no second one.
        again = self.make_driver(group=group)
        again.do_setup(self.context)
        self.assertEqual(drv.backend.sr_uuid, again.backend.sr_uuid)
        self.assertEqual([drv.backend.sr_uuid], self._tagged(tag))
        # Another backend section gets its own.
        other = self.make_driver()
        other.do_setup(self.context)
        self.assertNotEqual(drv.backend.sr_uuid, other.backend.sr_uuid)

    def test_volume_backend_name_names_the_sr(self):
        drv = self.make_driver(volume_backend_name='gold')
        drv.do_setup(self.context)
        rec = self.session.call('SR.get_record', drv.backend.sr)
        self.assertEqual('gold@%s:%s' % (SERVER, PATH),
                         rec['other_config'][storage.TAG_KEY])
        self.assertEqual('Cinder gold', rec['name_label'])

    def test_sr_uuid_adopts_a_forgotten_sr(self):
        vol = self.new_volume(data=b'kept' * 1024)
        sr_uuid = self.driver.backend.sr_uuid
        storage.forget_sr(self.session, self.driver.backend.sr)
        self.assertIsNone(storage.sr_by_uuid(self.session, sr_uuid))
        drv = self.make_driver(xenapi_sr_uuid=sr_uuid)
        drv.do_setup(self.context)
        self.assertEqual(sr_uuid, drv.backend.sr_uuid)
        rec = self.session.call('SR.get_record', drv.backend.sr)
        self.assertEqual('%s@%s:%s' % (drv.configuration.config_group,
                                       SERVER, PATH),
                         rec['other_config'][storage.TAG_KEY])
        self.assertEqual(b'kept' * 1024, self.read(vol, 4096))
        # An SR the host knows is adopted as it is, and re-tagged.
        third = self.make_driver(xenapi_sr_uuid=sr_uuid)
        third.do_setup(self.context)
        self.assertEqual((drv.backend.sr, sr_uuid),
                         (third.backend.sr, third.backend.sr_uuid))
        self.assertEqual([sr_uuid], self._tagged('%s@%s:%s' % (
            third.configuration.config_group, SERVER, PATH)))

    def test_missing_options_are_named_never_the_password(self):
        for name in REQUIRED:
            drv = self.make_driver(**{name: ''})
            with self.assertRaises(
                    cinder_exception.InvalidConfigurationValue) as err:
                drv.do_setup(self.context)
            self.assertIn(name, str(err.exception))
            self.assertNotIn(xapi_fixture.PASSWORD, str(err.exception))
            self.assertIsNone(drv.backend)

    def test_wrong_password_is_a_clear_error_without_it(self):
        sessions = int(self.control.state()['session'])
        wrong = 'not-the-password-%s' % uuid.uuid4().hex
        drv = self.make_driver(xenapi_connection_password=wrong)
        with self.assertRaises(exception.XenAPIAuthenticationError) as err:
            drv.do_setup(self.context)
        text = str(err.exception)
        self.assertIn('refused the login of user root', text)
        self.assertIn(self.server.url, text)
        self.assertNotIn(wrong, text)
        self.assertIsNone(drv.backend)
        self.assertEqual(sessions, int(self.control.state()['session']))

    def test_unreachable_host(self):
        with xapi_fixture.running_server() as gone:
            url = gone.url
        drv = self.make_driver(xenapi_connection_url=url)
        with self.assertRaises(exception.XenAPIConnectionError) as err:
            drv.do_setup(self.context)
        self.assertIn(url, str(err.exception))

    def test_plugin_mode_needs_the_plugin(self):
        sessions = int(self.control.state()['session'])
        self.control.add_fault('plugin:dom0_plugin_version.py/get_version',
                               error=['XENAPI_MISSING_PLUGIN',
                                      'dom0_plugin_version.py'])
        drv = self.make_driver(xenapi_image_transfer='plugin')
        with self.assertRaises(exception.PluginVersionError) as err:
            drv.do_setup(self.context)
        self.assertIn('not installed', str(err.exception))
        self.assertIn('xenapi_image_transfer = stream', str(err.exception))
        # The failed setup logged out what it logged in.
        self.assertEqual(sessions, int(self.control.state()['session']))
        self.assertRaises(exception.XenAPINFSException,
                          drv.check_for_setup_error)

    def test_auto_falls_back_to_stream_and_plugin_uses_it(self):
        self.control.add_fault('plugin:dom0_plugin_version.py/get_version',
                               error=['XENAPI_MISSING_PLUGIN',
                                      'dom0_plugin_version.py'])
        auto = self.make_driver(xenapi_image_transfer='auto')
        auto.do_setup(self.context)
        self.assertIsNone(auto.downloader.glance_plugin)
        self.assertIsNone(auto.uploader.glance_plugin)
        # With the plugin there, auto and plugin use it; stream never asks.
        for mode in ('auto', 'plugin'):
            drv = self.make_driver(xenapi_image_transfer=mode)
            drv.do_setup(self.context)
            self.assertIsNotNone(drv.downloader.glance_plugin, mode)
        self.control.clear_calls()
        drv = self.make_driver(xenapi_image_transfer='stream')
        drv.do_setup(self.context)
        self.assertIsNone(drv.downloader.glance_plugin)
        self.assertNotIn('plugin:dom0_plugin_version.py/get_version',
                         self.control.calls())

    def test_failed_tagging_leaves_no_sr(self):
        srs = int(self.control.state()['SR'])
        self.control.add_fault('SR.add_to_other_config',
                               error=['INTERNAL_ERROR', 'boom'])
        drv = self.make_driver()
        self.assertRaises(exception.XenAPIError, drv.do_setup, self.context)
        self.assertEqual(srs, int(self.control.state()['SR']))

    def test_check_for_setup_error_before_setup(self):
        drv = self.make_driver()
        self.assertRaises(exception.XenAPINFSException,
                          drv.check_for_setup_error)


class VolumeTestCase(DriverTestBase):

    def test_create_and_delete(self):
        vol = self.volume(display_name='db', display_description='data')
        model = self.driver.create_volume(vol)
        sr_uuid, vdi_uuid = model['provider_location'].split('/')
        self.assertEqual(self.driver.backend.sr_uuid, sr_uuid)
        vol.provider_location = model['provider_location']
        rec = self.record(vol)
        self.assertEqual(str(GiB), rec['virtual_size'])
        self.assertEqual(vol.name, rec['name_label'])
        self.assertEqual('data', rec['name_description'])
        self.assertEqual(vol.id, rec['other_config'][driver.VOLUME_KEY])
        self.assertEqual(['%s.vhd' % vdi_uuid], self.files())
        self.driver.delete_volume(vol)
        self.assertFalse(self.exists(vdi_uuid))
        self.assertEqual([], self.files())
        # Gone is gone: a second delete succeeds.
        self.driver.delete_volume(vol)

    def test_nothing_leaked_sees_every_file(self):
        """The leak check itself: a stray file of any name, in the SR or
        in image_conversion_dir, fails it."""
        for where in (self.sr_dir(), cfg.CONF.image_conversion_dir):
            stray = os.path.join(where, 'stray.part')
            with self.assertRaises(AssertionError):
                with self.nothing_leaked():
                    open(stray, 'w').close()
            os.remove(stray)

    def test_delete_without_provider_location(self):
        with self.nothing_leaked():
            self.driver.delete_volume(self.volume(provider_location=None))

    def test_delete_when_the_vdi_vanished(self):
        vol = self.new_volume()
        self.session.call('VDI.destroy', self.ref(vol))
        self.driver.delete_volume(vol)
        self.assertFalse(self.exists(self.vdi_uuid(vol)))

    def test_delete_failure_is_reported(self):
        vol = self.new_volume()
        self.control.add_fault('VDI.destroy',
                               error=['VDI_IN_USE', 'x', 'destroy'])
        self.assertRaises(exception.XenAPIError, self.driver.delete_volume,
                          vol)
        self.assertTrue(self.exists(self.vdi_uuid(vol)))

    def test_failed_create_leaves_nothing(self):
        self.control.add_fault('VDI.create', 'disk_full')
        with self.nothing_leaked():
            self.assertRaises(exception.XenAPIError,
                              self.driver.create_volume, self.volume())

    def test_extend_keeps_the_data(self):
        data = pattern(3 * MiB, 1)
        vol = self.new_volume(data=data)
        self.driver.extend_volume(vol, 3)
        self.assertEqual(str(3 * GiB), self.record(vol)['virtual_size'])
        self.assertEqual(data, self.read(vol, len(data)))

    def test_failed_extend_keeps_the_size(self):
        vol = self.new_volume()
        self.control.add_fault('VDI.resize', error=[
            'SR_BACKEND_FAILURE_44', '', 'no space', ''])
        with self.nothing_leaked():
            self.assertRaises(exception.XenAPIError,
                              self.driver.extend_volume, vol, 2)
        self.assertEqual(str(GiB), self.record(vol)['virtual_size'])

    def test_clone_is_copy_on_write_and_resized(self):
        data = pattern(4 * MiB, 2)
        src = self.new_volume(data=data)
        clone = self.volume(size=2)
        clone.provider_location = self.driver.create_cloned_volume(
            clone, src)['provider_location']
        rec = self.record(clone)
        self.assertEqual(str(2 * GiB), rec['virtual_size'])
        self.assertEqual(clone.id, rec['other_config'][driver.VOLUME_KEY])
        self.assertEqual(clone.name, rec['name_label'])
        self.assertFalse(rec['is_a_snapshot'])
        # Copy-on-write: the clone is a child of a base copy it shares
        # with the source, and holds no data of its own.
        chain = storage.vdi_chain(self.session, self.ref(clone))
        self.assertEqual(2, len(chain))
        self.assertEqual(chain[1],
                         storage.vdi_chain(self.session, self.ref(src))[1])
        self.assertLess(int(rec['physical_utilisation']), MiB)
        self.assertEqual(data, self.read(clone, len(data)))
        # Independent from here on.
        self.write(src, pattern(MiB, 3))
        self.assertEqual(data, self.read(clone, len(data)))
        self.write(clone, pattern(MiB, 4))
        self.assertEqual(pattern(MiB, 3), self.read(src, MiB))

    def test_clone_of_the_same_size_is_not_resized(self):
        src = self.new_volume()
        self.control.clear_calls()
        self.driver.create_cloned_volume(self.volume(), src)
        self.assertNotIn('VDI.resize', self.control.calls())

    def test_failed_clone_leaves_nothing(self):
        src = self.new_volume(data=pattern(MiB, 5))
        for fault in ('VDI.resize', 'VDI.add_to_other_config'):
            self.control.add_fault(fault, error=['SR_BACKEND_FAILURE_44',
                                                 '', 'no space', ''])
            with self.nothing_leaked():
                self.assertRaises(exception.XenAPIError,
                                  self.driver.create_cloned_volume,
                                  self.volume(size=2), src)
        self.assertEqual(pattern(MiB, 5), self.read(src, MiB))

    def test_initialize_connection_is_the_xensm_contract(self):
        vol = self.new_volume(display_name='boot', display_description='d')
        sr_uuid, vdi_uuid = vol.provider_location.split('/')
        info = self.driver.initialize_connection(vol, {'host': 'h'})
        self.assertEqual({
            'driver_volume_type': 'xensm',
            'data': {'name_label': 'boot', 'name_description': 'd',
                     'sr_uuid': sr_uuid, 'vdi_uuid': vdi_uuid,
                     'sr_type': 'nfs', 'server': SERVER,
                     'serverpath': PATH,
                     'introduce_sr_keys': ['sr_type', 'server',
                                           'serverpath']}}, info)
        # Nothing to undo, and a force-detach (connector None) is fine.
        self.driver.terminate_connection(vol, None, force=True)

    def test_operations_on_a_volume_without_vdi_fail_clearly(self):
        vol = self.volume(provider_location='%s/%s' % (
            self.driver.backend.sr_uuid, uuid.uuid4()))
        with self.assertRaises(exception.XenAPINFSException) as err:
            self.driver.extend_volume(vol, 2)
        self.assertIn('missing', str(err.exception))
        vol.provider_location = 'garbage'
        with self.assertRaises(exception.XenAPINFSException) as err:
            self.driver.create_cloned_volume(self.volume(), vol)
        self.assertIn('provider_location', str(err.exception))


class SnapshotTestCase(DriverTestBase):

    def test_snapshot_then_volume_from_it(self):
        before = pattern(2 * MiB, 10)
        vol = self.new_volume(data=before)
        snap = self.snapshot(vol, display_description='nightly')
        rec = self.record(snap)
        self.assertTrue(rec['is_a_snapshot'])
        self.assertEqual(snap.name, rec['name_label'])
        self.assertEqual('nightly', rec['name_description'])
        # The snapshot says it is one, never that it is the volume.
        self.assertEqual(snap.id, rec['other_config'][driver.SNAPSHOT_KEY])
        self.assertNotIn(driver.VOLUME_KEY, rec['other_config'])
        self.assertEqual(self.ref(vol), rec['snapshot_of'])
        self.assertEqual({driver.VOLUME_KEY: vol.id},
                         self.record(vol)['other_config'])
        self.write(vol, pattern(MiB, 11))
        new = self.volume(size=2)
        new.provider_location = self.driver.create_volume_from_snapshot(
            new, snap)['provider_location']
        rec = self.record(new)
        self.assertEqual(str(2 * GiB), rec['virtual_size'])
        self.assertFalse(rec['is_a_snapshot'] or rec['read_only'])
        self.assertEqual(new.id, rec['other_config'][driver.VOLUME_KEY])
        self.assertNotIn(driver.SNAPSHOT_KEY, rec['other_config'])
        self.assertEqual(before, self.read(new, len(before)))
        # Copy-on-write over the snapshot's layers.
        self.assertEqual(storage.vdi_chain(self.session, self.ref(snap))[1:],
                         storage.vdi_chain(self.session, self.ref(new))[1:])
        self.assertLess(int(rec['physical_utilisation']), MiB)
        # Deleting the snapshot leaves both volumes whole; twice is fine.
        self.driver.delete_snapshot(snap)
        self.assertFalse(self.exists(self.vdi_uuid(snap)))
        self.driver.delete_snapshot(snap)
        self.assertEqual(before, self.read(new, len(before)))
        self.assertEqual(pattern(MiB, 11), self.read(vol, MiB))

    def test_failed_snapshot_leaves_nothing(self):
        vol = self.new_volume(data=pattern(MiB, 12))
        for fault in ('VDI.snapshot', 'VDI.set_name_label',
                      'VDI.add_to_other_config'):
            self.control.add_fault(fault, error=['INTERNAL_ERROR', fault])
            with self.nothing_leaked():
                self.assertRaises(exception.XenAPIError,
                                  self.driver.create_snapshot,
                                  fake_snapshot.fake_snapshot_obj(
                                      self.context, volume=vol,
                                      volume_id=vol.id,
                                      id=str(uuid.uuid4())))
        self.assertEqual(pattern(MiB, 12), self.read(vol, MiB))

    def test_failed_volume_from_snapshot_leaves_nothing(self):
        snap = self.snapshot(self.new_volume(data=pattern(MiB, 13)))
        self.control.add_fault('VDI.resize', error=[
            'SR_BACKEND_FAILURE_44', '', 'no space', ''])
        with self.nothing_leaked():
            self.assertRaises(exception.XenAPIError,
                              self.driver.create_volume_from_snapshot,
                              self.volume(size=2), snap)

    def test_revert_to_snapshot(self):
        vol = tests_utils.create_volume(self.context, size=1)
        vol.provider_location = self.driver.create_volume(vol)[
            'provider_location']
        vol.save()
        old_uuid = self.vdi_uuid(vol)
        data = pattern(2 * MiB, 20)
        self.write(vol, data)
        snap = self.snapshot(vol)
        self.write(vol, pattern(2 * MiB, 21))
        self.driver.revert_to_snapshot(self.context, vol, snap)
        self.assertEqual(data, self.read(vol, len(data)))
        self.assertFalse(self.exists(old_uuid))
        stored = objects.Volume.get_by_id(self.context, vol.id)
        self.assertEqual(vol.provider_location, stored.provider_location)
        self.assertNotEqual(old_uuid, self.vdi_uuid(stored))
        rec = self.record(stored)
        self.assertEqual(vol.id, rec['other_config'][driver.VOLUME_KEY])
        self.assertEqual(vol.name, rec['name_label'])
        # The snapshot still serves, and a second revert works too.
        self.write(vol, pattern(MiB, 22))
        self.driver.revert_to_snapshot(self.context, vol, snap)
        self.assertEqual(data, self.read(vol, len(data)))

    def test_revert_after_extend_keeps_the_size(self):
        vol = tests_utils.create_volume(self.context, size=1)
        vol.provider_location = self.driver.create_volume(vol)[
            'provider_location']
        vol.save()
        snap = self.snapshot(vol)
        self.driver.extend_volume(vol, 2)
        vol.size = 2
        vol.save()
        self.driver.revert_to_snapshot(self.context, vol, snap)
        self.assertEqual(str(2 * GiB), self.record(vol)['virtual_size'])

    def test_failed_revert_changes_nothing(self):
        vol = tests_utils.create_volume(self.context, size=1)
        vol.provider_location = self.driver.create_volume(vol)[
            'provider_location']
        vol.save()
        location = vol.provider_location
        data = pattern(MiB, 23)
        snap = self.snapshot(vol)
        self.write(vol, data)
        self.control.add_fault('VDI.clone', error=['INTERNAL_ERROR', 'x'])
        with self.nothing_leaked():
            self.assertRaises(exception.XenAPIError,
                              self.driver.revert_to_snapshot, self.context,
                              vol, snap)
        # When the database refuses the new location, the new VDI goes.
        with self.nothing_leaked(), mock.patch.object(
                objects.Volume, 'save',
                side_effect=cinder_exception.VolumeNotFound(
                    volume_id=vol.id)):
            self.assertRaises(cinder_exception.VolumeNotFound,
                              self.driver.revert_to_snapshot, self.context,
                              vol, snap)
        self.assertEqual(location, vol.provider_location)
        self.assertEqual(location, objects.Volume.get_by_id(
            self.context, vol.id).provider_location)
        self.assertEqual(data, self.read(vol, MiB))

    def test_failure_to_remove_the_old_vdi_does_not_fail_the_revert(self):
        vol = tests_utils.create_volume(self.context, size=1)
        vol.provider_location = self.driver.create_volume(vol)[
            'provider_location']
        vol.save()
        old_uuid = self.vdi_uuid(vol)
        snap = self.snapshot(vol)
        # Cleanup is tried twice: fail both.
        self.control.add_fault('VDI.destroy', error=['INTERNAL_ERROR', 'x'],
                               times=2)
        self.driver.revert_to_snapshot(self.context, vol, snap)
        self.assertNotEqual(old_uuid, self.vdi_uuid(vol))
        self.assertTrue(self.exists(old_uuid))   # an orphan, reported


class LegacyTestCase(DriverTestBase):
    """Volumes of the historical driver: one SR per volume, forgotten."""

    def _legacy_volume(self):
        sr = storage.create_nfs_sr(self.session, SERVER, PATH, 'old', 'old')
        sr_uuid = self.session.call('SR.get_uuid', sr)
        ref, vdi_uuid = storage.create_vdi(self.session, sr, 4 * MiB, '')
        storage.forget_sr(self.session, sr)
        return sr_uuid, vdi_uuid

    def test_delete_introduces_and_forgets_the_sr(self):
        sr_uuid, vdi_uuid = self._legacy_volume()
        vol = self.volume(provider_location='%s/%s' % (sr_uuid, vdi_uuid))
        srs = int(self.control.state()['SR'])
        self.driver.delete_volume(vol)
        self.assertEqual([], self.files(sr_uuid))
        self.assertIsNone(storage.sr_by_uuid(self.session, sr_uuid))
        self.assertEqual(srs, int(self.control.state()['SR']))
        self.assertTrue(os.path.isdir(self.sr_dir(sr_uuid)))
        # Again: the VDI is gone, which is success.
        self.driver.delete_volume(vol)
        self.assertIsNone(storage.sr_by_uuid(self.session, sr_uuid))

    def test_delete_of_a_snapshot_whose_sr_is_gone(self):
        sr_uuid, vdi_uuid = self._legacy_volume()
        shutil.rmtree(self.sr_dir(sr_uuid))
        snap = fake_snapshot.fake_snapshot_obj(
            self.context, provider_location='%s/%s' % (sr_uuid, vdi_uuid))
        self.driver.delete_snapshot(snap)
        self.assertIsNone(storage.sr_by_uuid(self.session, sr_uuid))

    def test_failed_delete_still_forgets_the_sr(self):
        sr_uuid, vdi_uuid = self._legacy_volume()
        vol = self.volume(provider_location='%s/%s' % (sr_uuid, vdi_uuid))
        self.control.add_fault('VDI.destroy', error=['INTERNAL_ERROR', 'x'])
        self.assertRaises(exception.XenAPIError, self.driver.delete_volume,
                          vol)
        self.assertIsNone(storage.sr_by_uuid(self.session, sr_uuid))
        self.assertEqual(['%s.vhd' % vdi_uuid], self.files(sr_uuid))

    def test_other_operations_point_at_manage(self):
        sr_uuid, vdi_uuid = self._legacy_volume()
        vol = self.volume(provider_location='%s/%s' % (sr_uuid, vdi_uuid))
        with self.assertRaises(exception.XenAPINFSException) as err:
            self.driver.create_cloned_volume(self.volume(), vol)
        self.assertIn('%s/%s' % (sr_uuid, vdi_uuid), str(err.exception))
        self.assertIsNone(storage.sr_by_uuid(self.session, sr_uuid))


class StatsTestCase(DriverTestBase):

    def test_real_capacity(self):
        vols = [self.new_volume(size=s) for s in (1, 3)]
        stats = self.driver.get_volume_stats(refresh=True)
        self.assertEqual('up', stats['backend_state'])
        self.assertEqual(self.driver.configuration.config_group,
                         stats['volume_backend_name'])
        self.assertEqual('xensm', stats['storage_protocol'])
        self.assertEqual(driver.XenAPINFSDriver.VERSION,
                         stats['driver_version'])
        st = os.statvfs(self.sr_dir())
        total = st.f_blocks * st.f_frsize / GiB
        self.assertAlmostEqual(total, stats['total_capacity_gb'], delta=1)
        self.assertLessEqual(stats['free_capacity_gb'],
                             stats['total_capacity_gb'])
        self.assertGreater(stats['free_capacity_gb'], 0)
        # Both SRs of this server report the whole export: at least ours.
        self.assertGreaterEqual(stats['provisioned_capacity_gb'], 4)
        self.assertTrue(stats['thin_provisioning_support'])
        # Cached until refreshed.
        self.driver.delete_volume(vols[1])
        self.assertIs(stats, self.driver.get_volume_stats())
        self.assertLess(self.driver.get_volume_stats(refresh=True)[
            'provisioned_capacity_gb'], stats['provisioned_capacity_gb'])

    def test_a_stopped_host_reports_down_without_raising(self):
        with xapi_fixture.running_server() as private:
            drv = self.make_driver(server=private)
            drv.do_setup(self.context)
            self.assertEqual('up',
                             drv.get_volume_stats(True)['backend_state'])
        stats = drv.get_volume_stats(refresh=True)
        self.assertEqual('down', stats['backend_state'])
        self.assertEqual('unknown', stats['total_capacity_gb'])
        self.assertEqual('unknown', stats['free_capacity_gb'])
        self.assertEqual(drv.configuration.config_group,
                         stats['volume_backend_name'])
