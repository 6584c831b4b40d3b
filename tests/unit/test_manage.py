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
"""manage_existing, unmanage and the manageable listings, for real."""

import json
import os

from cinder.api.views import manageable_snapshots
from cinder.api.views import manageable_volumes
from cinder import exception as cinder_exception
from cinder import objects
from cinder.objects import base as objects_base
from oslo_utils import units

from tests.unit import test_driver
from xenapinfs_driver import driver
from xenapinfs_driver import exception
from xenapinfs_driver.xenapi import storage

MiB = units.Mi
GiB = units.Gi
SERVER, PATH = test_driver.SERVER, test_driver.PATH
pattern = test_driver.pattern


class ManageTestCase(test_driver.DriverTestBase):

    def foreign(self, size=5 * MiB, name='', data=None, sr=None):
        """A VDI someone made in the SR without cinder: (ref, uuid)."""
        ref, vdi_uuid = storage.create_vdi(
            self.session, sr or self.driver.backend.sr, size, name)
        if data:
            self.write(ref, data)
        return ref, vdi_uuid

    def manage(self, ref, size=None):
        """manage_existing as cinder calls it: size first, then adopt."""
        vol = self.volume(size=None)
        vol.size = size or self.driver.manage_existing_get_size(vol, ref)
        vol.provider_location = self.driver.manage_existing(
            vol, ref)['provider_location']
        return vol

    def assert_invalid(self, ref, text):
        for call in (self.driver.manage_existing_get_size,
                     self.driver.manage_existing):
            with self.assertRaises(
                    cinder_exception.ManageExistingInvalidReference) as err:
                call(self.volume(), ref)
            self.assertIn(text, str(err.exception))

    def test_manage_by_uuid(self):
        data = pattern(3 * MiB, 30)
        ref, vdi_uuid = self.foreign(data=data, name='from-xencenter')
        vol = self.manage({'source-id': vdi_uuid})
        self.assertEqual(1, vol.size)
        self.assertEqual('%s/%s' % (self.driver.backend.sr_uuid, vdi_uuid),
                         vol.provider_location)
        rec = self.record(vol)
        # As large as cinder believes, named and marked as the volume.
        self.assertEqual(str(GiB), rec['virtual_size'])
        self.assertEqual(vol.name, rec['name_label'])
        self.assertEqual(vol.id, rec['other_config'][driver.VOLUME_KEY])
        self.assertEqual(data, self.read(vol, len(data)))
        # From now on it is an ordinary volume.
        self.driver.extend_volume(vol, 2)
        self.driver.delete_volume(vol)
        self.assertFalse(self.exists(vdi_uuid))

    def test_size_rounds_up_to_whole_gib(self):
        _ref, vdi_uuid = self.foreign(size=GiB + 2 * MiB)
        self.assertEqual(2, self.driver.manage_existing_get_size(
            self.volume(), {'source-id': vdi_uuid}))

    def test_manage_by_name(self):
        _ref, vdi_uuid = self.foreign(name='web "data"')
        vol = self.manage({'source-name': 'web "data"'})
        self.assertEqual(vdi_uuid, self.vdi_uuid(vol))
        # source-name also takes a uuid
        _ref, other = self.foreign(name='x')
        self.assertEqual(other, self.vdi_uuid(
            self.manage({'source-name': other})))

    def test_names_must_be_unique_and_known(self):
        self.foreign(name='twin')
        self.foreign(name='twin')
        self.assert_invalid({'source-name': 'twin'}, '2 VDIs')
        self.assert_invalid({'source-name': 'nobody'}, '0 VDIs')
        self.assert_invalid({}, 'source-id')
        self.assert_invalid({'source-id': 42}, 'source-id')

    def test_refusals(self):
        vol = self.new_volume()
        snap = self.snapshot(vol)
        base = storage.vdi_chain(self.session, self.ref(vol))[1]
        self.assert_invalid({'source-id': self.vdi_uuid(snap)}, 'snapshot')
        self.assert_invalid({'source-id': base}, 'base copy')
        self.assert_invalid({'source-id': self.vdi_uuid(vol)},
                            'already a cinder volume')
        ro, ro_uuid = self.foreign()
        self.session.call('VDI.set_read_only', ro, True)
        self.assert_invalid({'source-id': ro_uuid}, 'read-only')
        used, used_uuid = self.foreign()
        dom0 = next(iter(self.session.call(
            'VM.get_all_records_where',
            'field "is_control_domain"="true"')))
        self.session.call('VBD.create', {
            'VM': dom0, 'VDI': used, 'userdevice': 'autodetect',
            'bootable': False, 'mode': 'RW', 'type': 'Disk', 'empty': False,
            'other_config': {}, 'qos_algorithm_type': '',
            'qos_algorithm_params': {}})
        self.assert_invalid({'source-id': used_uuid}, 'attached to a VM')
        # A VDI of another backend's SR is not ours to take.
        other = self.make_driver()
        other.do_setup(self.context)
        _ref, theirs = self.foreign(sr=other.backend.sr)
        self.assert_invalid({'source-id': theirs}, 'not in this backend')
        # Nothing was changed by the refusals.
        self.assertEqual('', self.record(used_uuid)['name_label'])

    def test_failed_manage_leaves_the_vdi_manageable(self):
        _ref, vdi_uuid = self.foreign()
        self.control.add_fault('VDI.add_to_other_config',
                               error=['INTERNAL_ERROR', 'x'])
        vol = self.volume()
        self.assertRaises(exception.XenAPIError, self.driver.manage_existing,
                          vol, {'source-id': vdi_uuid})
        self.assertNotIn(driver.VOLUME_KEY,
                         self.record(vdi_uuid)['other_config'])
        self.manage({'source-id': vdi_uuid})

    def test_unmanage_then_manage_again(self):
        data = pattern(MiB, 31)
        vol = self.new_volume(data=data)
        self.driver.unmanage(vol)
        rec = self.record(vol)
        self.assertNotIn(driver.VOLUME_KEY, rec['other_config'])
        self.assertEqual(data, self.read(vol, MiB))
        again = self.manage({'source-id': self.vdi_uuid(vol)})
        self.assertEqual(vol.provider_location, again.provider_location)
        # A volume without a VDI unmanages to nothing.
        self.driver.unmanage(self.volume(provider_location=None))
        self.driver.unmanage(self.volume(provider_location='junk'))

    def test_a_malformed_location_names_no_vdi(self):
        # The driver writes only '<sr>/<vdi>'. A value with a part missing
        # or extra parts is no location of ours, the same to every reader:
        # unmanage leaves the VDI it seems to name alone, and the listing
        # does not count that VDI as the malformed volume's.
        vol = self.new_volume()
        vdi_uuid = self.vdi_uuid(vol)
        sr_uuid = self.driver.backend.sr_uuid
        for location in ('/' + vdi_uuid, vdi_uuid, sr_uuid + '/',
                         '%s/%s/x' % (sr_uuid, vdi_uuid)):
            odd = self.volume(provider_location=location)
            self.driver.unmanage(odd)
            self.assertEqual(vol.id, self.record(vol)['other_config'][
                driver.VOLUME_KEY], location)
            entries = self.driver.get_manageable_volumes(
                [odd], None, 100, None, ['size'], ['asc'])
            entry, = [e for e in entries
                      if e['reference'] == {'source-id': vdi_uuid}]
            self.assertIsNone(entry['cinder_id'], location)
            self.assertEqual('already a cinder volume',
                             entry['reason_not_safe'])


class LegacyManageTestCase(test_driver.DriverTestBase):
    """``sr/vdi`` references: volumes of the one-SR-per-volume driver."""

    def legacy(self, data):
        sr = storage.create_nfs_sr(self.session, SERVER, PATH, 'old', 'old')
        sr_uuid = self.session.call('SR.get_uuid', sr)
        ref, vdi_uuid = storage.create_vdi(self.session, sr, 6 * MiB, '')
        self.write(ref, data)
        storage.forget_sr(self.session, sr)
        return sr_uuid, vdi_uuid

    def test_copied_in_and_the_old_sr_forgotten(self):
        data = pattern(5 * MiB, 40)
        sr_uuid, vdi_uuid = self.legacy(data)
        ref = {'source-name': '%s/%s' % (sr_uuid, vdi_uuid)}
        self.assertEqual(1, self.driver.manage_existing_get_size(
            self.volume(), ref))
        self.assertIsNone(storage.sr_by_uuid(self.session, sr_uuid))
        vol = self.volume()
        model = self.driver.manage_existing(vol, ref)
        vol.provider_location = model['provider_location']
        new_sr, new_vdi = vol.provider_location.split('/')
        self.assertEqual(self.driver.backend.sr_uuid, new_sr)
        self.assertNotEqual(vdi_uuid, new_vdi)
        self.assertEqual(data, self.read(vol, len(data)))
        rec = self.record(vol)
        self.assertEqual(vol.id, rec['other_config'][driver.VOLUME_KEY])
        self.assertEqual(str(GiB), rec['virtual_size'])
        # A full copy, standing alone in our SR.
        self.assertEqual([new_vdi], storage.vdi_chain(self.session,
                                                      self.ref(vol)))
        # The old SR is forgotten again; its files are kept.
        self.assertIsNone(storage.sr_by_uuid(self.session, sr_uuid))
        self.assertTrue(os.path.exists(os.path.join(
            self.sr_dir(sr_uuid), '%s.vhd' % vdi_uuid)))

    def test_failure_leaves_no_copy(self):
        sr_uuid, vdi_uuid = self.legacy(pattern(MiB, 41))
        self.control.add_fault('VDI.add_to_other_config',
                               error=['INTERNAL_ERROR', 'x'])
        with self.nothing_leaked():
            self.assertRaises(exception.XenAPIError,
                              self.driver.manage_existing, self.volume(),
                              {'source-id': '%s/%s' % (sr_uuid, vdi_uuid)})
        self.assertIsNone(storage.sr_by_uuid(self.session, sr_uuid))

    def test_unknown_legacy_sr(self):
        gone = '0d3a8f3e-5c1b-4c55-9d7e-000000000000'
        with self.nothing_leaked():
            for call in (self.driver.manage_existing_get_size,
                         self.driver.manage_existing):
                with self.assertRaises(
                        cinder_exception.ManageExistingInvalidReference) \
                        as err:
                    call(self.volume(), {'source-id': '%s/%s' % (
                        gone, self.driver.backend.sr_uuid)})
                self.assertIn('no SR %s' % gone, str(err.exception))

    def test_a_slash_in_a_name_is_a_name(self):
        _ref, vdi_uuid = storage.create_vdi(
            self.session, self.driver.backend.sr, MiB, 'web/data')
        self.assertEqual(1, self.driver.manage_existing_get_size(
            self.volume(), {'source-name': 'web/data'}))

    def test_unknown_vdi_of_a_legacy_sr(self):
        sr_uuid, _vdi = self.legacy(pattern(MiB, 42))
        with self.assertRaises(
                cinder_exception.ManageExistingInvalidReference) as err:
            self.driver.manage_existing(self.volume(), {
                'source-id': '%s/%s' % (sr_uuid, self.driver.backend.sr_uuid)})
        self.assertIn('no VDI', str(err.exception))
        self.assertIsNone(storage.sr_by_uuid(self.session, sr_uuid))


class ManageableListTestCase(test_driver.DriverTestBase):

    def setUp(self):
        super().setUp()
        self.vols = [self.new_volume(size=s) for s in (2, 1)]
        self.snap = self.snapshot(self.vols[0])
        self.foreign = {}
        for size, name in ((3, 'c'), (1, 'a'), (5, 'b')):
            _ref, vdi_uuid = storage.create_vdi(
                self.session, self.driver.backend.sr, size * GiB - MiB, name)
            self.foreign[vdi_uuid] = (size, name)

    def listing(self, marker=None, limit=100, offset=None,
                keys=('size', 'reference'), dirs=('asc', 'asc')):
        return self.driver.get_manageable_volumes(
            self.vols, marker, limit, offset, list(keys), list(dirs))

    def test_volumes(self):
        entries = self.listing()
        by_uuid = {e['reference']['source-id']: e for e in entries}
        # Volumes and foreign VDIs; never snapshots or base copies.
        self.assertEqual(sorted(list(self.foreign) +
                                [self.vdi_uuid(v) for v in self.vols]),
                         sorted(by_uuid))
        for vdi_uuid, (size, name) in self.foreign.items():
            self.assertEqual({'reference': {'source-id': vdi_uuid},
                              'size': size, 'safe_to_manage': True,
                              'reason_not_safe': None, 'cinder_id': None,
                              'extra_info': {'name_label': name,
                                             'name_description': None}},
                             by_uuid[vdi_uuid])
        for vol in self.vols:
            entry = by_uuid[self.vdi_uuid(vol)]
            self.assertEqual(vol.id, entry['cinder_id'])
            self.assertFalse(entry['safe_to_manage'])
            self.assertEqual('already managed', entry['reason_not_safe'])
            self.assertEqual(vol.size, entry['size'])
        self.assertEqual([1, 1, 2, 3, 5], [e['size'] for e in entries])

    def test_volume_paging(self):
        everything = self.listing()
        first = self.listing(limit=2)
        self.assertEqual(everything[:2], first)
        rest = self.listing(marker=first[-1]['reference'], limit=10)
        self.assertEqual(everything[2:], rest)
        self.assertEqual(everything[3:4], self.listing(limit=1, offset=3))
        down = self.listing(keys=['size'], dirs=['desc'])
        self.assertEqual([5, 3, 2, 1, 1], [e['size'] for e in down])

    def test_snapshots(self):
        entries = self.driver.get_manageable_snapshots(
            [self.snap], None, 100, None, ['size'], ['asc'])
        self.assertEqual(1, len(entries))
        entry = entries[0]
        self.assertEqual({'source-id': self.vdi_uuid(self.snap)},
                         entry['reference'])
        self.assertEqual({'source-id': self.vdi_uuid(self.vols[0])},
                         entry['source_reference'])
        self.assertEqual(self.snap.id, entry['cinder_id'])
        self.assertEqual(2, entry['size'])
        self.assertFalse(entry['safe_to_manage'])
        # A snapshot cinder does not know: listed, but never safe.
        other = self.snapshot(self.vols[1])
        entries = self.driver.get_manageable_snapshots(
            [self.snap], None, 1, None, ['size'], ['asc'])
        self.assertEqual([{'source-id': self.vdi_uuid(other)}],
                         [e['reference'] for e in entries])
        self.assertIsNone(entries[0]['cinder_id'])
        self.assertFalse(entries[0]['safe_to_manage'])
        self.assertIn('not supported', entries[0]['reason_not_safe'])

    def test_cinder_takes_the_listings(self):
        """What cinder does with them: cinder-volume makes its objects,
        which cross RPC, and cinder-api shows them in its detailed view;
        each step checks the field types (a string for a dict fails)."""
        _ref, unnamed = storage.create_vdi(self.session,
                                           self.driver.backend.sr, GiB, '')
        self.snapshot(self.vols[1])
        serializer = objects_base.CinderObjectSerializer()
        shown = {}
        for what, entries, cls, view in (
                ('manageable-volumes', self.listing(),
                 objects.ManageableVolumeList,
                 manageable_volumes.ViewBuilder()),
                ('manageable-snapshots', self.driver.get_manageable_snapshots(
                    [self.snap], None, 100, None, ['size'], ['asc']),
                 objects.ManageableSnapshotList,
                 manageable_snapshots.ViewBuilder())):
            made = cls.from_primitives(self.context, entries)
            back = serializer.deserialize_entity(
                self.context, serializer.serialize_entity(self.context, made))
            body = json.loads(json.dumps(view.detail_list(None, back,
                                                          len(back))))
            shown[what] = {e['reference']['source-id']: e
                           for e in body[what]}
        volumes = shown['manageable-volumes']
        for vdi_uuid, (size, name) in self.foreign.items():
            self.assertEqual((size, True, {'name_label': name,
                                           'name_description': None}),
                             (volumes[vdi_uuid]['size'],
                              volumes[vdi_uuid]['safe_to_manage'],
                              volumes[vdi_uuid]['extra_info']))
        self.assertEqual({'name_label': None, 'name_description': None},
                         volumes[unnamed]['extra_info'])
        self.assertEqual('already managed',
                         volumes[self.vdi_uuid(self.vols[0])][
                             'reason_not_safe'])
        snapshots = shown['manageable-snapshots']
        self.assertEqual(2, len(snapshots))
        self.assertEqual(self.snap.id, snapshots[self.vdi_uuid(self.snap)][
            'cinder_id'])
        self.assertEqual({'source-id': self.vdi_uuid(self.vols[0])},
                         snapshots[self.vdi_uuid(self.snap)][
                             'source_reference'])
