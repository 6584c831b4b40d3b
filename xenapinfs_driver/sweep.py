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
"""The orphan sweep: what a dead or failed operation left in the SR.

It runs when the volume service starts and then from each stats poll,
destroying at most ``budget`` VDIs a pass, so that a poll stays short.
A marker (:mod:`.markers`) is *stale* when its operation is not running
any more (this service's registry says so, or the service was restarted
since) and it is older than the grace period. Then:

* a VDI whose markers are all stale and that is not their source is a
  copy nobody took (an upload's snapshot, a snapshot or clone killed
  before its tagging): it is destroyed;
* the source of a stale marker loses the marker, and the VDIs the
  operation asked dom0 to write (``fresh``) are destroyed.

Never destroyed, whatever its markers say: a VDI whose uuid is in a
volume's or snapshot's ``provider_location`` in cinder's database (read
for each pass; a pass that cannot read it destroys nothing), a VDI that
carries a cinder tag the driver set for it (one its markers did not
inherit), a base copy (``managed`` false: the host's GC owns those), and
anything marked by another volume service, which sweeps its own.
"""

from oslo_log import log as logging

from xenapinfs_driver import adopt
from xenapinfs_driver import markers
from xenapinfs_driver.xenapi import storage

LOG = logging.getLogger(__name__)


class Sweeper:
    """Sweeps the backend's SR.

    :param backend: the :class:`~.backend.Backend` (session and SR).
    :param known: returns the uuids of the VDIs cinder knows.
    :param grace: seconds a stale marker must be old before the sweep
        acts on it.
    :param budget: the most VDIs destroyed in one pass.
    """

    def __init__(self, backend, known, grace: float, budget: int) -> None:
        self.backend = backend
        self.registry = backend.ops
        self.known = known
        self.grace = grace
        self.budget = budget

    def run(self) -> list[str]:
        """One pass; the uuids destroyed. Never raises (it is called from
        the stats poll): a failed pass is logged and tried next time."""
        if self.budget <= 0:
            return []
        try:
            return self._pass()
        except Exception as exc:
            LOG.warning('Orphan sweep of SR %(sr)s failed: %(err)s',
                        {'sr': self.backend.sr_uuid, 'err': exc})
            return []

    def _stale(self, mark, now):
        return (not self.registry.alive(mark) and
                now - mark.time >= self.grace)

    def _records(self):
        be = self.backend
        return be.session.call('VDI.get_all_records_where',
                               'field "SR"="%s"' % be.sr)

    def _pass(self):
        now = self.registry.clock()
        records = self._records()
        if not any(self._stale(m, now) for rec in records.values()
                   for m in markers.marks(rec.get('other_config'))):
            return []   # the usual pass: cinder's database is not read
        known = set(self.known())
        removed = []
        sources = []
        for ref, rec in records.items():
            found = markers.marks(rec.get('other_config'))
            stale = [m for m in found if self._stale(m, now)]
            own = [m for m in stale if m.source == rec['uuid']]
            sources.extend((ref, m) for m in own)
            if stale and not own and len(stale) == len(found) and \
                    len(removed) < self.budget and \
                    self._orphan(rec, stale, known):
                self._destroy(rec, stale[0], removed)
        left = self._sweep_fresh(sources, known, now, removed)
        for ref, mark in sources:
            # A source keeps the marker while what dom0 wrote for the
            # operation is still there, for the next pass to find.
            if not set(mark.fresh) & left:
                markers.remove(self.backend.session, ref, mark.key)
        return removed

    @staticmethod
    def _orphan(rec, stale, known):
        if rec['uuid'] in known or not rec.get('managed', True):
            return False
        # Tagging removes the inherited tags, then adds the copy's own: a
        # copy holding only inherited ones (or none) was never cinder's.
        other = rec.get('other_config', {})
        return all(other[k] == m.tags.get(k) for m in stale
                   for k in markers.CINDER_KEYS if k in other)

    def _destroy(self, rec, mark, removed):
        if storage.destroy_vdi(self.backend.session, rec['uuid']):
            LOG.info('Orphan sweep: destroyed VDI %(vdi)s (%(name)s), left '
                     'by %(what)s of %(host)s at %(time)d.',
                     {'vdi': rec['uuid'], 'name': rec.get('name_label'),
                      'what': mark.purpose, 'host': mark.host,
                      'time': mark.time})
            removed.append(rec['uuid'])

    def _sweep_fresh(self, sources, known, now, removed):
        """Destroy what dom0 wrote for dead operations; returns the fresh
        uuids still there. They may be files the host has no record of
        until a scan."""
        fresh = {u: mark for _ref, mark in sources for u in mark.fresh}
        if not fresh:
            return set()
        be = self.backend
        be.session.call('SR.scan', be.sr)
        left = set()
        for rec in self._records().values():
            mark = fresh.get(rec['uuid'])
            if mark is None or not rec.get('managed', True):
                continue
            found = markers.marks(rec.get('other_config'))
            if len(removed) < self.budget and rec['uuid'] not in known \
                    and all(self._stale(m, now) for m in found):
                self._destroy(rec, mark, removed)
                if rec['uuid'] in removed:
                    continue
            left.add(rec['uuid'])
        return left


def start(driver) -> Sweeper:
    """The sweeper of a driver just set up, after a first pass.

    The driver's transfers mark their VDIs in the service's registry.
    """
    conf = driver.configuration.safe_get
    be = driver.backend
    driver.downloader.ops = driver.uploader.ops = be.ops
    sweeper = Sweeper(be, adopt.cinder_vdis,
                      conf('xenapi_orphan_grace_period'),
                      conf('xenapi_orphan_sweep_budget'))
    sweeper.run()
    return sweeper
