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
"""Sessions (login, logout, validity) and tasks.

The password is compared and forgotten: it is never logged, stored in a
record or echoed in a failure. A login on a pool member's listener answers
``HOST_IS_SLAVE [master address]`` before looking at the credentials, as
a slave's XAPI does. Sessions are pool-wide: a session made on the master
is valid on every listener.
"""

from __future__ import annotations

import hmac
import logging

from xenapinfs_driver.testing.xapi import errors
from xenapinfs_driver.testing.xapi import schema
from xenapinfs_driver.testing.xapi import wire

LOG = logging.getLogger(__name__)


class Sessions:
    """Credentials and the session table's life cycle."""

    def __init__(self, db, username: str, password: str):
        self.db = db
        self._username = username.encode('utf-8')
        self._password = password.encode('utf-8')

    def check(self, username: str, password: str) -> bool:
        # Both compared, always: the time taken says nothing.
        user_ok = hmac.compare_digest(username.encode('utf-8'),
                                      self._username)
        pw_ok = hmac.compare_digest(password.encode('utf-8'),
                                    self._password)
        return user_ok and pw_ok

    def touch(self, ref) -> str:
        """The live session ref, its last use now; else SESSION_INVALID."""
        with self.db.lock:
            if not self.db.exists('session', ref):
                raise errors.XapiError('SESSION_INVALID', ref)
            self.db.update('session', ref, last_active=schema.now())
            return ref

    def invalidate(self, ref=None) -> int:
        """End one session, or all; return how many ended."""
        with self.db.lock:
            refs = self.db.refs('session') if ref is None else \
                [r for r in self.db.refs('session') if r == ref]
            for r in refs:
                self.db.destroy('session', r)
            return len(refs)


# -- session.* ---------------------------------------------------------------

def login_with_password(call, uname: wire.String, pwd: wire.String,
                        version: wire.String = '',
                        originator: wire.String = ''):
    if call.master_address is not None:
        raise errors.XapiError('HOST_IS_SLAVE', call.master_address)
    if not call.server.sessions.check(uname, pwd):
        LOG.warning('login refused for user %r', uname)
        raise errors.XapiError('SESSION_AUTHENTICATION_FAILED', uname,
                               'Authentication failure')
    ref = call.db.create('session', {
        'this_host': call.host, 'last_active': schema.now(),
        'validation_time': schema.now(), 'auth_user_name': uname,
        'originator': originator})
    LOG.info('session %s opened (originator %r)',
             call.db.get('session', ref)['uuid'], originator)
    return ref


def logout(call):
    call.server.sessions.invalidate(call.session)
    return ''


# -- task.* ------------------------------------------------------------------

def task_create(call, label: wire.String, description: wire.String):
    return call.db.create('task', {'name_label': label,
                                   'name_description': description,
                                   'resident_on': call.host})


def task_destroy(call, task: wire.TaskRef):
    with call.db.lock:
        call.db.get('task', task)
        call.db.destroy('task', task)
    return ''


def task_cancel(call, task: wire.TaskRef):
    """A pending task becomes ``cancelling``; its worker notices."""
    with call.db.lock:
        rec = call.db.get('task', task)
        if rec['status'] == 'pending':
            rec['status'] = 'cancelling'
            rec['allowed_operations'] = []
        elif rec['status'] != 'cancelling':
            raise errors.XapiError('OPERATION_NOT_ALLOWED',
                                   'task is %s' % rec['status'])
    return ''


def is_cancelling(db, task) -> bool:
    with db.lock:
        return task is not None and db.exists('task', task) and \
            db.get('task', task)['status'] == 'cancelling'


def finish_task(db, task, error=None, result='') -> None:
    """End a task made with task.create (HTTP handlers use this)."""
    with db.lock:
        if task is None or not db.exists('task', task):
            return
        rec = db.get('task', task)
        if error is None:
            status = 'success'
        elif error and error[0] == 'TASK_CANCELLED':
            status = 'cancelled'
        else:
            status = 'failure'
        rec.update(status=status, result=result if error is None else '',
                   error_info=list(error or ()), progress=1.0,
                   finished=schema.now(), allowed_operations=[])


def set_progress(db, task, value: float) -> None:
    with db.lock:
        if task is not None and db.exists('task', task):
            db.get('task', task)['progress'] = round(value, 3)


METHODS = {
    'session.login_with_password': login_with_password,
    'session.logout': logout,
    'task.create': task_create,
    'task.destroy': task_destroy,
    'task.cancel': task_cancel,
}
UNAUTHENTICATED = ('session.login_with_password',)
