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
"""Stale refs: the host changed under a running volume service.

A ref is valid while the host keeps the object's record. A toolstack or
host restart keeps them (only sessions go, and the client logs in again);
a host that forgot its SRs, or a pool rebuilt over the same export, gives
the same SR and VDIs new refs, or none until the SR is introduced again.
The driver keeps one ref for long, its SR's: it is checked against the
SR's uuid (:func:`vouch`) at each stats poll and whenever an operation
fails, and resolved again by uuid (introduced, plugged and re-tagged if
the host forgot it). An operation that failed on a stale ref is then run
once more (:func:`on_stale_refs`): VDI refs are looked up by uuid at the
start of every operation, and a failed operation has undone its work.
"""

import functools

from oslo_log import log as logging
from oslo_utils import excutils

from xenapinfs_driver import exception
from xenapinfs_driver.xenapi import recovery
from xenapinfs_driver.xenapi import storage

LOG = logging.getLogger(__name__)

# The driver's entry points that talk to the host.
OPERATIONS = (
    'create_volume', 'delete_volume', 'extend_volume',
    'create_cloned_volume', 'create_snapshot', 'delete_snapshot',
    'create_volume_from_snapshot', 'revert_to_snapshot', 'clone_image',
    'copy_image_to_volume', 'copy_volume_to_image', 'manage_existing',
    'manage_existing_get_size', 'unmanage', 'get_manageable_volumes',
    'get_manageable_snapshots')


def vouch(driver) -> bool:
    """Make sure ``driver``'s SR ref still names its SR.

    :returns: whether it had to be resolved again.
    """
    be = driver.backend
    try:
        if be.session.call('SR.get_uuid', be.sr) == be.sr_uuid:
            return False
    except exception.XenAPIError as exc:
        if not recovery.is_gone(exc):
            raise
    old = be.sr
    sr, _uuid = storage.find_or_create_nfs_sr(
        be.session, be.server, be.serverpath, be.tag, be.name, be.sr_uuid)
    be.sr = sr
    if driver.downloader is not None:
        driver.downloader.sr = sr
    LOG.warning('SR %(uuid)s had a stale ref (%(old)s), the host having '
                'forgotten or rebuilt it: resolved again by uuid as '
                '%(new)s.', {'uuid': be.sr_uuid, 'old': old, 'new': sr})
    return True


def upkeep(driver) -> None:
    """What the stats poll does besides reading capacity: check the SR's
    ref, and sweep orphans (bounded; it never raises)."""
    vouch(driver)
    if getattr(driver, 'sweeper', None) is not None:
        driver.sweeper.run()


def _refreshed(driver):
    if driver.backend is None:
        return False
    try:
        return vouch(driver)
    except Exception as exc:
        LOG.warning('Cannot check the ref of SR %(sr)s: %(err)s',
                    {'sr': driver.backend.sr_uuid, 'err': exc})
        return False


def _retried(func):
    @functools.wraps(func)
    def call(self, *args, **kwargs):
        try:
            return func(self, *args, **kwargs)
        except Exception:
            with excutils.save_and_reraise_exception() as ctx:
                ctx.reraise = not _refreshed(self)
        LOG.info('Running %s again with the SR resolved anew.',
                 func.__name__)
        return func(self, *args, **kwargs)
    return call


def on_stale_refs(cls):
    """Class decorator: an entry point in :data:`OPERATIONS` that fails
    while the SR's ref went stale runs once more on the new ref."""
    for name in OPERATIONS:
        if name in vars(cls):
            setattr(cls, name, _retried(vars(cls)[name]))
    return cls
