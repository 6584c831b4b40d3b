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
"""SQLite shared by several cinder processes: write transactions that wait.

oslo.db starts every SQLite transaction with a plain (deferred) ``BEGIN``.
A transaction that has read and then writes needs its shared lock raised
to a write lock; when another process holds that, SQLite does not wait
(both could wait forever) and fails at once with "database is locked".
One cinder-api and a scheduler get away with it; two volume services under
load do not (cinder-api answers HTTP 500 to a plain create). A deployment
runs MySQL; this stack starts each transaction with ``BEGIN IMMEDIATE``,
which takes the write lock first and waits for it (``busy_timeout``), so
that transactions queue instead of failing.

It is installed in the cinder processes by a ``sitecustomize`` module the
stack puts on their ``PYTHONPATH`` (:func:`write_sitecustomize`), and it
waits for oslo.db's engine module to be imported: importing SQLAlchemy
before cinder's eventlet monkey-patching would leave it real locks.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

TARGET = 'oslo_db.sqlalchemy.engines'
BUSY_TIMEOUT_MS = 60000

SITECUSTOMIZE = """\
# Written by xenapinfs_driver.testing.stack (see sqlite_lock.py).
from xenapinfs_driver.testing.stack import sqlite_lock
sqlite_lock.install()
"""


def _begin_immediate(conn) -> None:
    # oslo.db's own "begin" listener skips when in_transaction is set, and
    # its commit and rollback listeners clear it.
    if conn.dialect.name == 'sqlite' and 'in_transaction' not in conn.info:
        conn.exec_driver_sql('BEGIN IMMEDIATE')
        conn.info['in_transaction'] = True


def _busy_timeout(dbapi_con, _record) -> None:
    if type(dbapi_con).__module__.startswith('sqlite3'):
        dbapi_con.execute('PRAGMA busy_timeout = %d' % BUSY_TIMEOUT_MS)


def _patch() -> None:
    import sqlalchemy
    from sqlalchemy import engine

    # Engine-class listeners run before the engine's own (oslo.db's).
    sqlalchemy.event.listen(engine.Engine, 'begin', _begin_immediate)
    sqlalchemy.event.listen(engine.Engine, 'connect', _busy_timeout)


class _Finder(importlib.abc.MetaPathFinder):
    """Patches once ``TARGET`` has been imported (by cinder's db layer)."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch()
        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if TARGET in sys.modules:
        _patch()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def write_sitecustomize(directory: str) -> str:
    """Write the ``sitecustomize`` that installs this into a process
    whose ``PYTHONPATH`` starts with ``directory``; returns the path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, 'sitecustomize.py')
    with open(path, 'w') as f:
        f.write(SITECUSTOMIZE)
    return path
