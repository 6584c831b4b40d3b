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
"""The method table and the dispatch of one XML-RPC call.

Checks come in the order of XAPI's generated server: the method must
exist (``MESSAGE_METHOD_UNKNOWN``, also for ``Class_message``, which
names the sync form too), the parameter count must fit
(``MESSAGE_PARAMETER_COUNT_MISMATCH [method, expected, received]``: the
parameters without a default, and what came, the session not counted; a
message with defaulted parameters takes any count above that and ignores
what it has no parameter for), every argument must have its parameter's
wire type (``FIELD_TYPE_ERROR [parameter name]``, see ``wire``), then the
session must be live (``SESSION_INVALID [ref]``). Only then does a
removed message answer ``MESSAGE_REMOVED`` and an ``Async.`` call of a
message without an async form answer a ``Fault``.

A handler is ``func(call, *args)``; its signature gives the parameter
names, counts and wire types (an annotation on every parameter).
``Async.<Class>.<m>`` runs the handler in a thread of its own and answers
a task ref at once.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import threading
import time
import xmlrpc.client
from xml.sax import saxutils

from xenapinfs_driver.testing.xapi import errors
from xenapinfs_driver.testing.xapi import schema
from xenapinfs_driver.testing.xapi import wire

LOG = logging.getLogger(__name__)
ASYNC = 'Async.'
# The calls that write to an export: a disk_full fault fails them at
# their first write (and they undo it); any other call fails at once.
SESSION = wire.SessionRef
WRITES = frozenset(('SR.create', 'VDI.create', 'VDI.snapshot', 'VDI.clone',
                    'VDI.copy', 'VDI.resize', 'VDI.resize_online',
                    'host.call_plugin'))


@dataclasses.dataclass
class Call:
    """One call being served, handed to every handler."""

    server: object
    name: str                       # as called, e.g. 'Async.VDI.copy'
    host: str                       # the host whose listener took it
    master_address: str | None = None   # set on a pool member's listener
    session: str | None = None
    task: str | None = None
    disk_full: bool = False         # a disk_full fault applies to it

    @property
    def db(self):
        return self.server.db


@dataclasses.dataclass
class Method:
    """A handler and what its signature says about its parameters."""

    name: str
    func: object
    params: tuple
    required: int
    types: tuple                    # a wire.WireType per parameter
    session: bool = True
    asynchronous: bool = False      # has an Async form
    removed: bool = False           # answers MESSAGE_REMOVED
    # testing.*: no session needed, but one sent first is tolerated, so
    # that a logged-in XenAPI.Session can call them too.
    testing: bool = False


def method(name, func, session=True, testing=False,
           asynchronous=False) -> Method:
    """The Method of a handler, whose parameters all carry wire types."""
    sig = list(inspect.signature(func, eval_str=True).parameters.values())
    sig = sig[1:]                   # the Call
    untyped = [p.name for p in sig if not isinstance(p.annotation,
                                                     wire.WireType)]
    if untyped:
        raise TypeError('%s: no wire type for %s' % (name,
                                                     ', '.join(untyped)))
    required = sum(1 for p in sig if p.default is inspect.Parameter.empty)
    return Method(name, func, tuple(p.name for p in sig), required,
                  tuple(p.annotation for p in sig), session, asynchronous,
                  testing=testing)


def removed(name: str) -> Method:
    """A message XAPI has removed. The model keeps no parameters for it:
    any count is taken, the first being the session."""
    def answer(call):
        raise errors.XapiError('MESSAGE_REMOVED')
    return Method(name, answer, (), 0, (), removed=True)


def no_async(name: str) -> errors.XapiError:
    """What XAPI answers an ``Async.`` call of a sync-only message."""
    return errors.XapiError('Fault', 'No async mode for this operation '
                            '(rpc: %s)' % name)


def lookup(methods: dict, name: str):
    """The Method called name, or None; then whether it is Async."""
    if name.startswith(ASYNC):
        # XAPI names the sync form in its answers (unknown method, count
        # mismatch, no async mode); Class_message has no Async form.
        return methods.get(name[len(ASYNC):]), True, name[len(ASYNC):]
    m = methods.get(name)
    if m is None and '_' in name and '.' not in name:
        m = methods.get(name.replace('_', '.', 1))
    return m, False, name


def dispatch(call: Call, params: tuple, fault=None):
    """Serve one call; return its value or raise XapiError.

    :param fault: the fault rule that fired for this call, if any; the
        caller has already dealt with ``drop`` and ``drop_after``.
    """
    server = call.server
    m, is_async, inner = lookup(server.methods, call.name)
    if m is None or (is_async and m.testing):
        raise errors.XapiError('MESSAGE_METHOD_UNKNOWN', inner)
    args = list(params)
    if m.testing and len(args) == len(m.params) + 1 and \
            isinstance(args[0], str) and args[0].startswith('OpaqueRef:'):
        args.pop(0)
    received = len(args) - 1 if m.session else len(args)
    defaults = m.required < len(m.params) or m.removed
    if received < m.required or (received > len(m.params) and
                                 not defaults):
        raise errors.XapiError('MESSAGE_PARAMETER_COUNT_MISMATCH', inner,
                               m.required, received)
    del args[len(m.params) + (1 if m.session else 0):]
    names = (('session_id',) if m.session else ()) + m.params
    types = ((SESSION,) if m.session else ()) + m.types
    args = [wire.decode(pname, kind, value)
            for pname, kind, value in zip(names, types, args)]
    if m.session:
        call.session = server.sessions.touch(args.pop(0))
    if m.removed:
        m.func(call)
    if is_async and not m.asynchronous:
        raise no_async(inner)
    if fault is not None and fault.action == 'error':
        raise errors.XapiError(*fault.error)
    if fault is not None and fault.action == 'disk_full':
        if inner not in WRITES:
            raise errors.DiskFull()
        call.disk_full = True
    if is_async:
        return _spawn(call, m, args, fault)
    if fault is not None and fault.action == 'delay':
        time.sleep(fault.seconds)
    return m.func(call, *args)


def wrap_result(value) -> str:
    """A task's result: the value as XAPI writes it, ``<value>..</value>``."""
    if value == '':
        return ''
    if isinstance(value, str):
        return '<value>%s</value>' % saxutils.escape(value)
    text = xmlrpc.client.Marshaller(allow_none=False).dumps([value])
    start = text.index('<value>')
    return text[start:text.rindex('</value>') + len('</value>')]


def _spawn(call: Call, m: Method, args: list, fault) -> str:
    """Run the call in a thread; return its task at once."""
    db = call.db
    task = db.create('task', {'name_label': call.name,
                              'resident_on': call.host})
    call.task = task

    def run():
        if fault is not None and fault.action == 'delay':
            time.sleep(fault.seconds)
        with db.lock:
            if db.exists('task', task) and \
                    db.get('task', task)['status'] == 'cancelling':
                _finish(db, task, 'cancelled',
                        error=['TASK_CANCELLED', task])
                return
        try:
            value = m.func(call, *args)
        except errors.XapiError as exc:
            _finish(db, task, 'failure', error=exc.details)
        except Exception as exc:    # reported in the task, as XAPI does
            LOG.exception('%s failed', call.name)
            _finish(db, task, 'failure', error=['INTERNAL_ERROR', str(exc)])
        else:
            try:
                result = wrap_result(value)
            except TypeError as exc:
                LOG.error('%s returned what XML-RPC cannot carry: %s',
                          call.name, exc)
                _finish(db, task, 'failure',
                        error=['INTERNAL_ERROR', str(exc)])
            else:
                _finish(db, task, 'success', result=result)

    thread = threading.Thread(target=run, name='xapi-task', daemon=True)
    call.server.track(thread)
    thread.start()
    return task


def _finish(db, task, status, result='', error=()) -> None:
    with db.lock:
        if not db.exists('task', task):
            LOG.warning('task %s was destroyed before it finished (%s)',
                        task, status)
            return
        db.update('task', task, status=status, result=result,
                  error_info=list(error), progress=1.0,
                  finished=schema.now(), allowed_operations=[])
