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
"""Undoing what failed or whose answer was lost.

The rules, once:

* ``UUID_INVALID``, ``HANDLE_INVALID`` and ``VDI_MISSING`` mean "gone":
  removing something already gone is success, so that a second attempt
  after a lost answer succeeds (:func:`is_gone`, :func:`unless_gone`).
* Cleanup (destroying what a failed operation made, forgetting an SR
  attached for one operation) is idempotent and tried twice, so that one
  dropped connection or passing error does not leave it behind for good;
  it never raises, so it cannot hide the error being handled
  (:func:`cleanup`).
* A call whose answer is lost (the connection broke after the request
  went out, or timed out) may still have been done. A call that makes a
  VDI or an SR is followed by a search for what it would have made, which
  is undone (:func:`reclaim_lost`). The caller knows what to look for
  (:mod:`.storage`'s finders); a timed-out call may still be running, so
  it is looked for during one more session timeout.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator
from typing import TYPE_CHECKING

from oslo_log import log as logging

from xenapinfs_driver import exception
from xenapinfs_driver.xenapi import tasks

if TYPE_CHECKING:   # for annotations only
    from xenapinfs_driver.xenapi.session import XenAPISession

LOG = logging.getLogger(__name__)

GONE_ERRORS = ('UUID_INVALID', 'HANDLE_INVALID', 'VDI_MISSING')
CLEANUP_ATTEMPTS = 2
# What unless_gone returns for an object already gone: None and {} are
# answers a call can give.
GONE = object()


def is_gone(exc: BaseException) -> bool:
    """Whether ``exc`` says that the object it was about is gone."""
    return isinstance(exc, exception.XenAPIError) and exc.error in GONE_ERRORS


def unless_gone(session: XenAPISession, method: str, ref: str) -> Any:
    """``method`` of ``ref``, or :data:`GONE` if ``ref`` was already gone."""
    try:
        return session.call(method, ref)
    except exception.XenAPIError as exc:
        if is_gone(exc):
            return GONE
        raise


def cleanup(what: str, func: Callable[..., Any], *args: Any) -> bool:
    """Run cleanup ``func(*args)``, twice if need be; never raise.

    For cleanup that must not hide the error being handled, or fail an
    operation that is done. It is idempotent (what is gone counts as
    done): a second attempt gets past one dropped connection or passing
    error that would otherwise leave a VDI or SR behind for good.
    Returns whether it succeeded.
    """
    for attempt in range(CLEANUP_ATTEMPTS):
        try:
            func(*args)
            return True
        except Exception as exc:
            err = exc
    LOG.warning('Cleaning up %(what)s failed: %(err)s',
                {'what': what, 'err': err})
    return False


def _destroy_vdi(session: XenAPISession, ref: str) -> None:
    unless_gone(session, 'VDI.destroy', ref)


@contextlib.contextmanager
def undo_on_error(session: XenAPISession, ref: str) -> Iterator[None]:
    """Destroy the VDI ``ref`` if the block fails, then re-raise."""
    try:
        yield
    except Exception:
        cleanup('VDI %s' % ref, _destroy_vdi, session, ref)
        raise


Finder = Callable[[], list]
Undo = Callable[['XenAPISession', str], Any]


@contextlib.contextmanager
def reclaim_lost(session: XenAPISession, what: str, find: Finder,
                 undo: Undo | None = None,
                 lost_task: bool = False) -> Iterator[None]:
    """Undo what call ``what`` made in the block when its answer was lost.

    ``find()`` returns refs of what the call would have made that were not
    there before; ``undo(session, ref)`` removes one (``VDI.destroy`` by
    default). ``lost_task``: ``what`` ran as ``Async.`` (the session
    waited for its task to end): its task goes too.
    """
    try:
        yield
    except exception.XenAPIConnectionError as exc:
        if getattr(exc, 'sent', False):
            wait = session.timeout if getattr(exc, 'timed_out', False) \
                else 0
            found = _reclaim(session, what, find, undo or _destroy_vdi,
                             wait)
            if lost_task and found:
                tasks.forget_lost(session, what, found)
        raise


def _reclaim(session, what, find, undo, wait):
    deadline = time.monotonic() + wait
    delay = 0.1
    while True:
        try:
            found = find()
        except Exception as exc:  # must not hide the first error
            LOG.warning('Cannot tell whether %(what)s was done: %(err)s',
                        {'what': what, 'err': exc})
            return []
        for ref in found:
            LOG.warning('%(what)s was done, but its answer was lost: '
                        'undoing it (%(ref)s).', {'what': what, 'ref': ref})
            cleanup('%s of %s' % (ref, what), undo, session, ref)
        if found or time.monotonic() >= deadline:
            return found
        session.sleep(delay)
        delay = min(delay * 2, 2.0)
