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
"""Migrate, retype and update_migrated_volume against the test server.

Two drivers of different backend sections have two SRs of one pool (the
test server is a pool of one): the destination's stats are what cinder's
scheduler hands the source as ``host['capabilities']``.
"""

import time
import uuid

from cinder import exception as cinder_exception
from cinder import objects
from cinder.tests.unit import utils as tests_utils
import ddt
from oslo_utils import units

from tests.unit import test_driver
from tests import xapi_fixture
from xenapinfs_driver import exception
from xenapinfs_driver import migrate

MiB = units.Mi
GiB = units.Gi
pattern = test_driver.pattern


@ddt.ddt
class MigrateTestCase(test_driver.DriverTestBase):

    def setUp(self):
        super().setUp()
        self.dest = self.make_driver()
        self.dest.do_setup(self.context)

    def host(self, drv=None):
        drv = drv or self.dest
        name = drv.configuration.config_group
        return {'host': 'h@%s#%s' % (name, name),
                'capabilities': drv.get_volume_stats(refresh=True)}

    def db_volume(self, data, size=1):
        """A volume cinder's database knows (a migration saves it)."""
        vol = tests_utils.create_volume(self.context, size=size)
        vol.provider_location = self.driver.create_volume(vol)[
            'provider_location']
        vol.save()
        self.write(vol, data)
        return vol

    def dest_vdis(self):
        return self.visible_vdis(self.dest.backend.sr)

    def stored(self, vol):
        return objects.Volume.get_by_id(self.context, vol.id)

    def assert_untouched(self, vol, location, data):
        """The source as it was, nothing in the destination SR."""
        self.assertEqual(location, self.stored(vol).provider_location)
        self.assertEqual(location, vol.provider_location)
        self.assertEqual(data, self.read(vol, len(data)))
        self.assertEqual({}, self.dest_vdis())
        self.assertEqual([], self.files(self.dest.backend.sr_uuid))

    def test_stats_name_the_pool_and_the_sr(self):
        info = self.driver.get_volume_stats(refresh=True)['location_info']
        pool = self.session.call('pool.get_all')[0]
        self.assertEqual('XenAPINFSDriver:%s:%s' % (
            self.session.call('pool.get_uuid', pool),
            self.driver.backend.sr_uuid), info)
        self.assertEqual(migrate.parse_location_info(info)[1],
                         self.driver.backend.sr_uuid)

    def test_moves_the_volume_into_the_destination_sr(self):
        data = pattern(3 * MiB, 1)
        vol = self.db_volume(data, size=2)
        old = self.vdi_uuid(vol)
        moved, model = self.driver.migrate_volume(self.context, vol,
                                                  self.host())
        self.assertTrue(moved)
        sr_uuid, new = model['provider_location'].split('/')
        self.assertEqual(self.dest.backend.sr_uuid, sr_uuid)
        self.assertNotEqual(old, new)
        # Recorded before the source went, and returned to cinder.
        self.assertEqual(model['provider_location'],
                         self.stored(vol).provider_location)
        self.assertFalse(self.exists(old))
        self.assertNotIn(old, self.visible_vdis())
        self.assertEqual([new], list(self.dest_vdis()))
        rec = self.dest_vdis()[new]
        self.assertEqual(vol.name, rec['name_label'])
        self.assertEqual(vol.id, rec['other_config'][
            test_driver.driver.VOLUME_KEY])
        self.assertEqual(str(2 * GiB), rec['virtual_size'])
        self.assertNotIn('vhd-parent', rec['sm_config'])
        self.assert_disk(vol, data)
        # The destination's driver takes it from here.
        vol.provider_location = model['provider_location']
        self.dest.extend_volume(vol, 3)
        self.dest.delete_volume(vol)
        self.assertEqual({}, self.dest_vdis())

    def test_a_volume_with_a_chain_moves_as_one_disk(self):
        vol = self.db_volume(pattern(MiB, 2))
        snap = self.snapshot(vol)
        self.write(vol, pattern(MiB, 3))
        self.driver.delete_snapshot(snap)
        moved, model = self.driver.migrate_volume(self.context, vol,
                                                  self.host())
        self.assertTrue(moved)
        vol.provider_location = model['provider_location']
        self.assertEqual(pattern(MiB, 3), self.read(vol, MiB))

    @ddt.data(None, '', 'LVMVolumeDriver:host:vg:default:0',
              'XenAPINFSDriver:only-one-field',
              'XenAPINFSDriver:other-pool:%s')
    def test_other_destinations_are_left_to_cinder(self, info):
        data = pattern(MiB, 4)
        vol = self.db_volume(data)
        location = vol.provider_location
        host = self.host()
        if info is None:
            del host['capabilities']['location_info']
        else:
            host['capabilities']['location_info'] = \
                info.replace('%s', self.dest.backend.sr_uuid)
        self.control.clear_calls()
        self.assertEqual((False, None), self.driver.migrate_volume(
            self.context, vol, host))
        self.assertNotIn('Async.VDI.copy', self.control.calls())
        self.assert_untouched(vol, location, data)

    def test_a_backend_in_another_pool_is_left_to_cinder(self):
        with xapi_fixture.running_server() as other:
            far = self.make_driver(server=other)
            far.do_setup(self.context)
            vol = self.db_volume(pattern(MiB, 5))
            self.assertEqual((False, None), self.driver.migrate_volume(
                self.context, vol, self.host(far)))
            self.assertEqual({}, self.visible_vdis(far.backend.sr))

    def test_an_sr_the_pool_does_not_have_is_refused_before_copying(self):
        data = pattern(MiB, 6)
        vol = self.db_volume(data)
        location = vol.provider_location
        host = self.host()
        pool = migrate.parse_location_info(
            host['capabilities']['location_info'])[0]
        host['capabilities']['location_info'] = 'XenAPINFSDriver:%s:%s' % (
            pool, '00000000-0000-4000-8000-000000000000')
        self.control.clear_calls()
        err = self.assertRaises(exception.SRNotFound,
                                self.driver.migrate_volume, self.context,
                                vol, host)
        self.assertIn('00000000-0000-4000-8000-000000000000', str(err))
        self.assertNotIn('Async.VDI.copy', self.control.calls())
        self.assert_untouched(vol, location, data)

    def test_an_unplugged_destination_sr_is_refused(self):
        data = pattern(MiB, 7)
        vol = self.db_volume(data)
        location = vol.provider_location
        host = self.host()
        for pbd in self.session.call('SR.get_PBDs', self.dest.backend.sr):
            self.session.call('PBD.unplug', pbd)
        self.assertRaises(exception.SRNotFound, self.driver.migrate_volume,
                          self.context, vol, host)
        self.assertEqual(location, self.stored(vol).provider_location)
        self.assertEqual(data, self.read(vol, len(data)))

    def test_a_volume_with_snapshots_is_refused_as_cinder_does(self):
        vol = self.db_volume(pattern(MiB, 8))
        snap = tests_utils.create_snapshot(self.context, vol.id)
        self.assertEqual(1, len(objects.SnapshotList.get_all_for_volume(
            self.context, vol.id)))
        self.control.clear_calls()
        self.assertRaises(cinder_exception.InvalidVolume,
                          self.driver.migrate_volume, self.context, vol,
                          self.host())
        self.assertNotIn('Async.VDI.copy', self.control.calls())
        snap.destroy()

    def test_an_attached_volume_is_left_to_cinder(self):
        vol = self.db_volume(pattern(MiB, 9))
        tests_utils.attach_volume(self.context, vol.id, str(uuid.uuid4()),
                                  'host-1', '/dev/xvdb')
        vol = self.stored(vol)
        self.assertEqual((False, None), self.driver.migrate_volume(
            self.context, vol, self.host()))
        self.assertEqual({}, self.dest_vdis())

    def test_the_same_sr_is_no_move(self):
        vol = self.db_volume(pattern(MiB, 10))
        location = vol.provider_location
        self.assertEqual((True, None), self.driver.migrate_volume(
            self.context, vol, self.host(self.driver)))
        self.assertEqual(location, self.stored(vol).provider_location)

    @ddt.data(
        ('error', {'error': ['SR_BACKEND_FAILURE_47', '', 'gone', '']}),
        ('disk_full', {}),
        ('drop', {}),
        ('drop_after', {}))
    @ddt.unpack
    def test_a_failed_copy_leaves_the_source_and_no_copy(self, action,
                                                         rule):
        data = pattern(2 * MiB, 11)
        vol = self.db_volume(data)
        location = vol.provider_location
        self.control.add_fault('Async.VDI.copy', action, **rule)
        self.assertRaises(cinder_exception.CinderException,
                          self.driver.migrate_volume, self.context, vol,
                          self.host())
        self.control.clear_faults()
        self.assert_untouched(vol, location, data)

    def test_host_lost_mid_copy_leaves_no_copy(self):
        """Every poll of the copy's task fails (the host out of reach)
        while the host goes on copying: the driver waits until the source
        shows no copy any more, then destroys what it made; nothing turns
        up later either."""
        data = pattern(32 * MiB, 12)
        vol = self.db_volume(data)
        location = vol.provider_location
        self.control.add_fault('task.get_record', 'drop', times=1000)
        self.assertRaises(exception.XenAPIConnectionError,
                          self.driver.migrate_volume, self.context, vol,
                          self.host())
        self.control.clear_faults()
        self.assertIn('VDI.get_current_operations', self.control.calls())
        time.sleep(1)
        self.assert_untouched(vol, location, data)

    def test_a_leftover_copy_is_destroyed_by_the_next_attempt(self):
        vol = self.db_volume(pattern(MiB, 13))
        source = self.ref(vol)
        # What a copy finished after its host was lost leaves behind.
        left = self.session.call('VDI.copy', source, self.dest.backend.sr)
        left_uuid = self.session.call('VDI.get_uuid', left)
        moved, model = self.driver.migrate_volume(self.context, vol,
                                                  self.host())
        self.assertTrue(moved)
        self.assertEqual([model['provider_location'].split('/')[1]],
                         list(self.dest_vdis()))
        self.assertFalse(self.exists(left_uuid))

    def test_a_failed_save_destroys_the_copy(self):
        data = pattern(MiB, 14)
        vol = self.db_volume(data)
        location = vol.provider_location
        self.mock_object(vol, 'save', side_effect=RuntimeError('db gone'))
        self.assertRaises(RuntimeError, self.driver.migrate_volume,
                          self.context, vol, self.host())
        self.assert_untouched(vol, location, data)


@ddt.ddt
class RetypeTestCase(test_driver.DriverTestBase):

    @ddt.data(None, {},
              {'extra_specs': {'volume_backend_name': ('a', 'a'),
                               'note': ('x', 'y')}},
              {'qos_specs': {'consumer': ('front-end', 'front-end'),
                             'total_iops_sec': ('100', '200')}},
              {'encryption': {'cipher': (None, None)}})
    def test_types_that_need_nothing_of_the_backend(self, diff):
        vol = self.new_volume()
        self.assertEqual((True, None), self.driver.retype(
            self.context, vol, {'name': 't2'}, diff, {'host': 'h'}))

    @ddt.data({'encryption': {'cipher': (None, 'aes-xts-plain64')}},
              {'qos_specs': {'consumer': ('back-end', 'back-end'),
                             'total_iops_sec': ('100', '200')}},
              {'qos_specs': {'consumer': (None, 'both'),
                             'read_iops_sec': (None, '10')}})
    def test_types_that_would_need_the_backend(self, diff):
        vol = self.new_volume()
        self.assertEqual((False, None), self.driver.retype(
            self.context, vol, {'name': 't2'}, diff, {'host': 'h'}))


class UpdateMigratedTestCase(test_driver.DriverTestBase):

    def test_the_new_vdi_takes_the_volume_s_name(self):
        vol = self.volume()
        new = self.new_volume(data=pattern(MiB, 15))
        model = self.driver.update_migrated_volume(self.context, vol, new,
                                                   'available')
        self.assertEqual({'_name_id': None,
                          'provider_location': new.provider_location},
                         model)
        rec = self.record(new)
        self.assertEqual('volume-%s' % vol.id, rec['name_label'])
        self.assertEqual(vol.id, rec['other_config'][
            test_driver.driver.VOLUME_KEY])

    def test_a_vdi_that_cannot_be_renamed_keeps_its_name(self):
        vol = self.volume()
        new = self.new_volume()
        self.control.add_fault('VDI.set_name_label', 'error',
                               error=['SR_BACKEND_FAILURE_47', '', 'x', ''])
        model = self.driver.update_migrated_volume(self.context, vol, new,
                                                   'available')
        self.assertEqual({'_name_id': new.name_id,
                          'provider_location': new.provider_location},
                         model)
        self.assertEqual(new.name, self.record(new)['name_label'])
