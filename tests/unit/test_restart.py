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
"""A volume service that outlives the host's memory, against the test
server: a restarted host, a host that forgot its SRs (with the service
running, and at the service's start), and the orphan sweep."""

import tempfile
import urllib.parse
import uuid

from cinder.tests.unit import utils as tests_utils

from tests.unit import test_driver
from tests import xapi_fixture
from xenapinfs_driver import driver
from xenapinfs_driver import exception
from xenapinfs_driver import markers
from xenapinfs_driver import sweep
from xenapinfs_driver.xenapi import storage

DATA = test_driver.pattern(1 << 20, 41)
SERVER, PATH = xapi_fixture.EXPORT


def probe(session):
    return storage.probe_nfs_srs(session, SERVER, PATH)


class StaleRefTestCase(test_driver.DriverTestBase):
    """The host forgot the SR while the service runs: no restart needed."""

    def test_an_operation_resolves_the_sr_again_and_runs_once_more(self):
        vol = self.new_volume(data=DATA)
        be = self.driver.backend
        old, sr_uuid = be.sr, be.sr_uuid
        on_export = probe(self.session)
        self.control.forget_srs()
        snap = self.snapshot(vol)
        self.assertNotEqual(old, be.sr)
        self.assertEqual(sr_uuid, self.session.call('SR.get_uuid', be.sr))
        self.assertEqual(be.sr, self.driver.downloader.sr)
        self.assertEqual(DATA, self.read(snap, len(DATA)))
        self.assertEqual(DATA, self.read(vol, len(DATA)))
        # Tagged again, and no SR more on the export.
        self.assertEqual(be.sr, storage.find_sr(self.session, be.tag))
        self.assertEqual(on_export, probe(self.session))
        clone = self.volume()
        clone.provider_location = self.driver.create_cloned_volume(
            clone, vol)['provider_location']
        self.assertEqual(DATA, self.read(clone, len(DATA)))

    def test_the_stats_poll_resolves_it_first(self):
        old = self.driver.backend.sr
        self.control.forget_srs()
        stats = self.driver.get_volume_stats(refresh=True)
        self.assertEqual('up', stats['backend_state'])
        self.assertNotEqual(old, self.driver.backend.sr)

    def test_a_failure_with_a_valid_ref_is_not_retried(self):
        vol = self.new_volume()
        self.control.add_fault('VDI.snapshot', 'error',
                               error=['SR_BACKEND_FAILURE_47', '', 'x', ''])
        self.control.clear_calls()
        self.assertRaises(exception.XenAPIError, self.snapshot, vol)
        self.assertEqual(1, self.control.calls().count('VDI.snapshot'))


class RestartTestCase(test_driver.DriverTestBase):
    """The host's toolstack restarts (its database kept) under the
    service: the next operations succeed without restarting it."""

    def test_operations_go_on_after_a_host_restart(self):
        with tempfile.TemporaryDirectory() as root:
            with xapi_fixture.running_server(root) as server:
                port = urllib.parse.urlsplit(server.url).port
                drv = self.make_driver(server=server)
                drv.do_setup(self.context)
                vol = self.volume()
                vol.provider_location = drv.create_volume(vol)[
                    'provider_location']
            with xapi_fixture.running_server(
                    root, listen=('127.0.0.1', port)):
                other = self.volume()
                other.provider_location = drv.create_volume(other)[
                    'provider_location']
                snap = self.snapshot_of(drv, vol)
                drv.delete_snapshot(snap)
                drv.delete_volume(other)
                self.assertEqual('up', drv.get_volume_stats(True)[
                    'backend_state'])

    def snapshot_of(self, drv, vol):
        from cinder.tests.unit import fake_snapshot
        snap = fake_snapshot.fake_snapshot_obj(
            self.context, id=str(uuid.uuid4()), volume_id=vol.id,
            volume=vol, volume_size=vol.size)
        snap.provider_location = drv.create_snapshot(snap)[
            'provider_location']
        return snap


class AdoptTestCase(test_driver.DriverTestBase):
    """do_setup when no SR carries the tag but the export holds SRs."""

    def backend_on(self, host, group=None, volumes=2):
        drv = self.make_driver(group=group)
        drv.host = host
        drv.do_setup(self.context)
        made = []
        for _ in range(volumes):
            vol = self.volume()
            loc = drv.create_volume(vol)['provider_location']
            self.write(loc.split('/')[1], DATA, session=drv.backend.session)
            tests_utils.create_volume(self.context, host=host + '#pool',
                                      provider_location=loc,
                                      testcase_instance=self)
            made.append(loc)
        return drv, made

    def write(self, vdi_uuid, data, session=None):
        ref = session.call('VDI.get_by_uuid', vdi_uuid)
        super().write(ref, data, session)

    def test_the_sr_of_the_backends_volumes_is_adopted(self):
        host = 'adopt-%s@be' % uuid.uuid4().hex[:6]
        drv, locs = self.backend_on(host)
        group = drv.configuration.config_group
        on_export = probe(self.session)
        self.control.forget_srs()
        again = self.make_driver(group=group)
        again.host = host
        again.do_setup(self.context)
        self.assertEqual(drv.backend.sr_uuid, again.backend.sr_uuid)
        self.assertEqual(on_export, probe(self.session))
        self.assertEqual(again.backend.sr,
                         storage.find_sr(self.session, again.backend.tag))
        for loc in locs:
            self.assertEqual(DATA, self.read(loc.split('/')[1], len(DATA)))

    def test_volumes_in_several_srs_refuse_to_start(self):
        host = 'adopt-%s@be' % uuid.uuid4().hex[:6]
        one, _locs = self.backend_on(host)
        two, _locs = self.backend_on(host)
        self.control.forget_srs()
        third = self.make_driver()
        third.host = host
        err = self.assertRaises(exception.XenAPINFSException,
                                third.do_setup, self.context)
        for be in (one.backend, two.backend):
            self.assertIn(be.sr_uuid, str(err))
        self.assertIn('xenapi_sr_uuid', str(err))
        self.assertIsNone(third.backend)

    def test_one_volume_per_sr_is_the_historical_layout(self):
        host = 'adopt-%s@be' % uuid.uuid4().hex[:6]
        one, _locs = self.backend_on(host, volumes=1)
        two, _locs = self.backend_on(host, volumes=1)
        self.control.forget_srs()
        third = self.make_driver()
        third.host = host
        third.do_setup(self.context)
        self.assertNotIn(third.backend.sr_uuid,
                         (one.backend.sr_uuid, two.backend.sr_uuid))


class SweepTestCase(test_driver.DriverTestBase):
    """Temporary VDIs carry markers; the sweep destroys orphans only."""

    def setUp(self):
        super().setUp()
        self.vol = self.new_volume(data=DATA)
        self.ops = self.driver.backend.ops
        self.now = self.ops.clock()
        self.ops.clock = lambda: self.now
        self.known = set()
        self.sweeper = sweep.Sweeper(self.driver.backend,
                                     lambda: self.known, 600, 10)

    def later(self, seconds=601):
        self.now += seconds

    def dead_copy(self, source, copier=storage.snapshot_vdi, fresh=()):
        """What a service killed before tagging its copy leaves."""
        dead = markers.Registry(self.ops.host)
        with dead.operation('killed') as op:
            with op.marking(self.session, self.ref(source), fresh):
                if copier is None:
                    return None
                return copier(self.session, self.ref(source), 'copy')[1]

    def marked(self, vdi_uuid):
        return bool(markers.marks(self.record(vdi_uuid)['other_config']))

    def test_a_copy_of_a_dead_operation_goes_after_the_grace(self):
        orphan = self.dead_copy(self.vol)
        self.assertTrue(self.marked(orphan))
        self.assertFalse(self.marked(self.vol))   # the source let go
        self.assertEqual([], self.sweeper.run())
        self.later()
        self.assertEqual([orphan], self.sweeper.run())
        self.assertFalse(self.exists(orphan))
        self.assertEqual(DATA, self.read(self.vol, len(DATA)))

    def test_a_copy_killed_mid_tagging_goes_unless_tagged(self):
        # Killed after the inherited tag went, before the copy's own came.
        untagged = self.dead_copy(self.vol)
        self.session.call('VDI.remove_from_other_config',
                          self.ref(untagged), driver.VOLUME_KEY)
        # Killed after the copy's own tag came, before its marker went.
        tagged = self.dead_copy(self.vol)
        self.session.call('VDI.add_to_other_config', self.ref(tagged),
                          driver.SNAPSHOT_KEY, str(uuid.uuid4()))
        self.later()
        self.assertEqual([untagged], self.sweeper.run())
        self.assertTrue(self.exists(tagged))

    def test_a_live_operation_is_never_swept(self):
        with self.ops.operation('upload') as op:
            with op.marking(self.session, self.ref(self.vol)):
                copy = storage.snapshot_vdi(self.session,
                                            self.ref(self.vol), 'c')[1]
            self.later(10 ** 6)
            self.assertEqual([], self.sweeper.run())
            self.assertTrue(self.exists(copy))
        self.assertEqual([copy], self.sweeper.run())

    def test_an_upload_whose_cleanup_failed_is_swept(self):
        from tests import fake_images
        from tests.unit.image import test_download
        test_download.run_privsep_in_process(self)
        images = fake_images.ImageService()
        meta = {'id': str(uuid.uuid4()), 'name': 'up', 'status': 'queued',
                'disk_format': 'vhd', 'container_format': 'bare',
                'properties': {}}
        images.create(self.context, dict(meta))
        before = set(self.visible_vdis())
        self.control.add_fault('VDI.destroy', 'drop', times=2)
        self.driver.copy_volume_to_image(self.context, self.vol, images,
                                         meta)
        self.control.clear_faults()
        left = set(self.visible_vdis()) - before
        self.assertEqual(1, len(left))
        self.assertEqual([], self.sweeper.run())
        self.later()
        self.assertEqual(sorted(left), self.sweeper.run())
        self.assertEqual(before, set(self.visible_vdis()))

    def test_what_dom0_wrote_for_a_dead_download_goes(self):
        # A VDI dom0 wrote (a fresh uuid the marker names), then the
        # service died before copying it into the volume.
        _ref, fresh = storage.create_vdi(self.session,
                                         self.driver.backend.sr, 1 << 20,
                                         'dom0')
        # Killed before it could take its marker off the volume.
        self.control.add_fault('VDI.remove_from_other_config', 'drop',
                               times=2)
        self.dead_copy(self.vol, None, fresh=[fresh, str(uuid.uuid4())])
        self.control.clear_faults()
        self.assertTrue(self.marked(self.vol))
        self.later()
        self.assertEqual([fresh], self.sweeper.run())
        self.assertFalse(self.marked(self.vol))
        self.assertEqual(DATA, self.read(self.vol, len(DATA)))

    def test_a_pass_with_nothing_stale_does_not_read_cinders_database(self):
        reads = []
        self.sweeper.known = lambda: reads.append(1) or set()
        self.dead_copy(self.vol)
        self.assertEqual([], self.sweeper.run())
        self.assertEqual([], reads)
        self.later()
        self.assertEqual(1, len(self.sweeper.run()))
        self.assertEqual([1], reads)

    def test_budget_bounds_a_pass(self):
        orphans = {self.dead_copy(self.vol) for _ in range(3)}
        self.later()
        self.sweeper.budget = 2
        first = self.sweeper.run()
        self.assertEqual(2, len(first))
        self.assertEqual(orphans - set(first), set(self.sweeper.run()))

    def test_what_cinder_knows_survives_many_sweeps(self):
        snap = self.snapshot(self.vol)
        clone = self.volume()
        clone.provider_location = self.driver.create_cloned_volume(
            clone, self.vol)['provider_location']
        keep = {self.vdi_uuid(o) for o in (self.vol, snap, clone)}
        # A copy cinder recorded while its marker stayed; one tagged for
        # cinder before its service died; one of another volume service.
        recorded = self.dead_copy(self.vol)
        self.known.add(recorded)
        tagged = self.dead_copy(self.vol)
        self.session.call('VDI.add_to_other_config', self.ref(tagged),
                          driver.SNAPSHOT_KEY, str(uuid.uuid4()))
        stranger = markers.Registry('other-host@be')
        with stranger.operation('theirs') as op:
            with op.marking(self.session, self.ref(self.vol)):
                theirs = storage.snapshot_vdi(self.session,
                                              self.ref(self.vol), 't')[1]
        keep |= {recorded, tagged, theirs}
        for _ in range(20):
            self.later(10 ** 4)
            self.assertEqual([], self.sweeper.run())
        self.assertLessEqual(keep, set(self.visible_vdis()))
        self.assertEqual(DATA, self.read(snap, len(DATA)))

    def test_start_sweeps_and_a_budget_of_zero_turns_it_off(self):
        orphan = self.dead_copy(self.vol)
        off = self.make_driver(group=self.driver.configuration.config_group,
                               xenapi_orphan_sweep_budget=0,
                               xenapi_orphan_grace_period=0)
        off.do_setup(self.context)
        self.assertTrue(self.exists(orphan))
        on = self.make_driver(group=self.driver.configuration.config_group,
                              xenapi_orphan_sweep_budget=10,
                              xenapi_orphan_grace_period=0)
        on.do_setup(self.context)
        self.assertFalse(self.exists(orphan))
