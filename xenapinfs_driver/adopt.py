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
"""Find the backend's SR again when the host no longer carries its tag.

The tag lives in the host's database; a host re-installed, or one that
forgot its SRs, has none, while the SR's directory is still on the export
and cinder's ``provider_location`` still names its uuid. So when no SR
carries the tag, the export is probed before anything is created:

* SR directories there that this backend's volumes or snapshots live in
  are candidates (an SR the host knows under another backend's tag is
  not);
* one candidate, or one among several that holds more than one of them,
  is adopted: introduced if need be, plugged, scanned and tagged again;
* candidates that each hold a single volume are the historical layout's
  one-SR-per-volume: a backend SR is created beside them, as before;
* otherwise the service refuses to start, naming the uuids found and the
  option that settles it (``xenapi_sr_uuid``).
"""

import collections

from cinder import context
from cinder.i18n import _
from cinder import objects
from oslo_log import log as logging

from xenapinfs_driver import exception
from xenapinfs_driver.xenapi import storage

LOG = logging.getLogger(__name__)


def _locations(volumes, snapshots):
    for obj in list(volumes) + list(snapshots):
        loc = obj.provider_location or ''
        if loc.count('/') == 1 and all(loc.split('/')):
            yield tuple(loc.split('/'))


def cinder_locations(host: str | None = None) -> list[tuple[str, str]]:
    """``(sr_uuid, vdi_uuid)`` of every volume and snapshot cinder has
    (of ``host``, ``host@backend``, when given; any pool of it)."""
    ctx = context.get_admin_context()
    if host:
        return list(_locations(
            objects.VolumeList.get_all_by_host(ctx, host),
            objects.SnapshotList.get_by_host(ctx, host)))
    return list(_locations(objects.VolumeList.get_all(ctx),
                           objects.SnapshotList.get_all(ctx, {})))


def cinder_vdis() -> set[str]:
    """The uuids of the VDIs cinder knows, whatever their backend."""
    return {vdi for _sr, vdi in cinder_locations()}


def find_sr(session, server: str, serverpath: str, tag: str, name: str,
            sr_uuid: str | None = None,
            host: str | None = None) -> tuple[str, str]:
    """The backend's SR, as :func:`.storage.find_or_create_nfs_sr`, but
    adopted from the export rather than created when the volumes of
    ``host`` (cinder's ``host@backend``) say it is there.

    :returns: ``(ref, uuid)``, plugged and tagged.
    """
    if sr_uuid or storage.find_sr(session, tag) is not None:
        return storage.find_or_create_nfs_sr(session, server, serverpath,
                                             tag, name, sr_uuid)
    on_export = storage.probe_nfs_srs(session, server, serverpath)
    chosen = None
    if on_export:
        pairs = cinder_locations(host) if host else []
        chosen = choose(session, on_export, pairs, server, serverpath)
    if chosen:
        LOG.warning('No SR carries tag %(tag)s: adopting SR %(sr)s of '
                    '%(server)s:%(path)s, which holds this backend\'s '
                    'volumes.', {'tag': tag, 'sr': chosen,
                                 'server': server, 'path': serverpath})
    return storage.find_or_create_nfs_sr(session, server, serverpath, tag,
                                         name, chosen)


def choose(session, on_export, pairs, server, serverpath) -> str | None:
    """The uuid of the SR to adopt; ``None`` to create one; or raise."""
    held = collections.Counter(sr for sr, _vdi in pairs if sr in on_export)
    for sr_uuid in list(held):
        ref = storage.sr_by_uuid(session, sr_uuid)
        if ref is not None and session.call(
                'SR.get_other_config', ref).get(storage.TAG_KEY):
            del held[sr_uuid]   # another backend's
    if len(held) == 1:
        return next(iter(held))
    several = [sr for sr, count in held.items() if count > 1]
    if len(several) == 1:
        return several[0]
    if held and not several:
        LOG.info('SRs %s on %s:%s each hold one volume (the historical '
                 'layout); creating this backend\'s SR beside them.',
                 ', '.join(sorted(held)), server, serverpath)
        return None
    if not held:
        return None
    raise exception.XenAPINFSException(
        reason=_('no SR carries this backend\'s tag, and its volumes are in '
                 'several SRs of %(server)s:%(path)s: %(srs)s. Set '
                 'xenapi_sr_uuid to the one to use.')
        % {'server': server, 'path': serverpath,
           'srs': ', '.join(sorted(held))})
