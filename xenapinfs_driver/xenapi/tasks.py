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
"""XAPI tasks: long work started, polled, and always destroyed.

XenAPI idioms used here, once:

* ``Async.<Class.method>`` answers at once with a task; the work runs on
  and the task's record says how it ended. Long work (copies, plugin
  transfers) is polled with short calls rather than waited for on one
  socket read, cancelled on timeout.
* Whoever starts a task destroys it: XAPI reclaims finished tasks only
  after an hour, pending ones after a day. Destroying is tried twice, as
  any cleanup, and a task already gone counts as destroyed.
* A failed poll changes nothing, while giving up on a task that runs on
  leaves its work (a new VDI, files in the SR) with nobody to clean it
  up: a poll is asked again, unless the task is gone.
* When the answer to a call that makes a task is lost, the task is
  nobody's: an ``Async.`` task is found by its name (``Async.<method>``)
  and let end, so that the caller can undo its work and then destroy it
  by what its result names; a task of our own (``task.create``) carries a
  description of its own to be found by.

Every function takes the session first; ``call``, where offered, is the
session's or a held connection's (:meth:`.XenAPISession.borrow`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Collection, Iterable, Iterator
from typing import TYPE_CHECKING
import uuid
import xmlrpc.client

from cinder.i18n import _
from oslo_log import log as logging

from xenapinfs_driver import exception

if TYPE_CHECKING:   # for annotations only: session imports this module
    from xenapinfs_driver.xenapi.session import XenAPISession

LOG = logging.getLogger(__name__)

POLL_ATTEMPTS = 3
DESTROY_ATTEMPTS = 2

Call = Callable[..., Any]


def call_async(session: XenAPISession, method: str, *args: Any,
               timeout: float = 3600.0, poll: float = 0.5,
               secrets: Iterable[str] = ()) -> Any:
    """Run ``Async.<method>``, wait for its task, and destroy it.

    :returns: the task's result, decoded (:func:`parse_result`).
    :raises XenAPIError: the work failed or was cancelled.
    :raises XenAPIConnectionError: the host could not be reached, or the
        task did not end within ``timeout`` seconds (it is cancelled).
    """
    try:
        task = session.call('Async.' + method, *args, secrets=secrets)
    except exception.XenAPIConnectionError as exc:
        if exc.sent:
            # Its answer lost, the task may run on: let it end, so that
            # the caller can undo what it made (and forget_lost tell it
            # by its result).
            wait_lost(session, method)
        raise
    try:
        return wait(session, task, method, timeout, poll, secrets)
    finally:
        destroy(session, task, method)


def _of_method(session: XenAPISession, method: str) -> dict:
    return session.call('task.get_all_records_where',
                        'field "name__label"="Async.%s"' % method)


def wait_lost(session: XenAPISession, method: str) -> None:
    """Wait (one session timeout at most) until no ``Async.<method>`` task
    is pending; the one whose answer was lost is among them, if any."""
    deadline = time.monotonic() + session.timeout
    delay = 0.05
    try:
        while any(rec.get('status') == 'pending'
                  for rec in _of_method(session, method).values()):
            if time.monotonic() > deadline:
                return
            session.sleep(delay)
            delay = min(delay * 2, 2.0)
    except exception.XenAPINFSException as exc:
        LOG.warning('Cannot list the tasks of %(m)s: %(err)s',
                    {'m': method, 'err': exc})


def forget_lost(session: XenAPISession, method: str,
                tokens: Collection[str]) -> None:
    """Destroy ended ``Async.<method>`` tasks whose result names one of
    ``tokens`` (what the caller found its lost call made): the task of a
    call whose answer was lost has nobody else to."""
    try:
        found = _of_method(session, method)
    except exception.XenAPINFSException as exc:
        LOG.warning('Cannot list the tasks of %(m)s: %(err)s',
                    {'m': method, 'err': exc})
        return
    for task, rec in found.items():
        if rec.get('status') != 'pending' and any(
                t in (rec.get('result') or '') for t in tokens):
            destroy(session, task, method)


def destroy(session: XenAPISession, task: str, what: str,
            call: Call | None = None) -> None:
    """Destroy ``task`` (of ``what``); never raise."""
    call = call or session.call
    for attempt in range(DESTROY_ATTEMPTS):
        try:
            call('task.destroy', task)
            return
        except exception.XenAPIError as exc:
            if exc.error == 'HANDLE_INVALID':
                return      # an earlier attempt did it
            err = exc
        except exception.XenAPINFSException as exc:
            err = exc
    LOG.warning('task.destroy after %(what)s failed: %(err)s',
                {'what': what, 'err': err})


def record(session: XenAPISession, task: str, what: str,
           call: Call | None = None) -> dict:
    """``task``'s record, asked up to ``POLL_ATTEMPTS`` times.

    :raises XenAPIError: ``HANDLE_INVALID`` at once if the task is gone.
    """
    call = call or session.call
    for attempt in range(POLL_ATTEMPTS):
        try:
            return call('task.get_record', task)
        except exception.XenAPINFSException as exc:
            gone = isinstance(exc, exception.XenAPIError) and \
                exc.error == 'HANDLE_INVALID'
            if gone or attempt == POLL_ATTEMPTS - 1:
                raise
            LOG.warning('Polling the task of %(what)s failed (%(err)s); '
                        'polling again.', {'what': what, 'err': exc})
            session.sleep(0.05 * 2 ** attempt)


def wait(session: XenAPISession, task: str, method: str,
         timeout: float = 3600.0, poll: float = 0.5,
         secrets: Iterable[str] = ()) -> Any:
    """Poll ``task`` until it ends; return its result or raise."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        rec = record(session, task, method)
        status = rec.get('status')
        if status == 'success':
            return parse_result(rec.get('result', ''))
        if status in ('failure', 'cancelled'):
            raise session.failure(method, rec.get('error_info') or
                                  ['TASK_' + status.upper()], secrets)
        if time.monotonic() > deadline:
            try:
                session.call('task.cancel', task)
            except exception.XenAPINFSException:
                pass
            raise exception.XenAPIConnectionError(
                url=session.url, method=method,
                reason=_('no answer after %d s') % timeout)
        session.sleep(delay)
        delay = min(delay * 2, poll)


def settled(session: XenAPISession, task: str, what: str,
            call: Call | None = None) -> dict:
    """The task's record once it has left ``pending``; after one session
    timeout, whatever it is (for tasks that work we do not wait on)."""
    delay, waited = 0.02, 0.0
    while True:
        rec = record(session, task, what, call)
        if rec.get('status') != 'pending' or waited > session.timeout:
            return rec
        session.sleep(delay)
        waited += delay
        delay = min(delay * 2, 1.0)


@contextlib.contextmanager
def created(session: XenAPISession, label: str,
            call: Call | None = None) -> Iterator[str]:
    """Yield a new task named ``label``, destroyed when the block ends.

    For work that XAPI reports through a task we pass it (its HTTP
    handlers). Should the answer to ``task.create`` be lost, the task is
    found by a description of its own and destroyed.
    """
    call = call or session.call
    mark = 'xenapinfs-driver transfer %s' % uuid.uuid4()
    try:
        task = call('task.create', label, mark)
    except exception.XenAPIConnectionError as exc:
        if exc.sent:
            try:
                lost = call('task.get_all_records_where',
                            'field "name__description"="%s"' % mark)
            except exception.XenAPINFSException as err:
                LOG.warning('Cannot look for the task of %(label)s: '
                            '%(err)s', {'label': label, 'err': err})
                lost = {}
            for task in lost:
                destroy(session, task, label, call)
        raise
    try:
        yield task
    finally:
        destroy(session, task, label, call)


def parse_result(text: str) -> Any:
    """Decode a task's ``result``: an XML-RPC ``<value>`` as a string."""
    if not text:
        return ''
    body = ('<?xml version="1.0"?><methodResponse><params><param>%s'
            '</param></params></methodResponse>' % text)
    try:
        return xmlrpc.client.loads(body)[0][0]
    except Exception:
        # Some XAPI versions return a bare value, not wrapped in <value>.
        return text
