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
"""The database file: what a host keeps across a restart.

XAPI keeps its database in ``/var/lib/xcp/state.db``; so does the server,
under its root. The file holds every record of the classes that persist
(all but sessions and tasks, which XAPI does not keep either), under
their refs, as JSON of their wire values (``DateTime`` fields as their
ISO 8601 text). It is replaced whole on each commit: written to a
temporary file, flushed to disk, renamed over the old one, and the
directory flushed too, so that a crash at any moment leaves either the
old file or the new one, never a mix. A file that cannot be read back is
an error naming it (``CorruptDatabase``): a host never starts empty when
it had a database.
"""

from __future__ import annotations

import json
import logging
import os
import xmlrpc.client

from xenapinfs_driver.testing.xapi import schema

LOG = logging.getLogger(__name__)
PATH = os.path.join('var', 'lib', 'xcp', 'state.db')
FORMAT = 'xenapinfs-xapi-db'
VERSION = 1
_KINDS = (str, bool, float, dict, list, xmlrpc.client.DateTime)


class CorruptDatabase(ValueError):
    """The database file exists but does not hold a database."""

    def __init__(self, path: str, reason: str):
        super().__init__('database %s is corrupt: %s' % (path, reason))
        self.path = path


def _kind(cls: str, field: str) -> type:
    """The Python type a field's wire value has (its default's)."""
    value = schema.SCHEMAS[cls].default(field)
    return next(k for k in _KINDS if isinstance(value, k))


def _encode(value):
    if isinstance(value, xmlrpc.client.DateTime):
        return value.value
    raise TypeError('%r cannot be stored' % (value,))


class Store:
    """The database file of a server root."""

    def __init__(self, root: str):
        self.path = os.path.join(root, PATH)
        self._saved = None          # the bytes the file holds now

    def exists(self) -> bool:
        return os.path.exists(self.path)

    # -- writing -------------------------------------------------------------

    def dumps(self, db) -> bytes:
        with db.lock:
            return json.dumps(
                {'format': FORMAT, 'version': VERSION,
                 'tables': db.tables()},
                default=_encode, separators=(',', ':')).encode('utf-8')

    def save(self, db) -> None:
        """Make the database durable; nothing is written if unchanged."""
        data = self.dumps(db)
        if data == self._saved:
            return
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        tmp = self.path + '.tmp'
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            # The rename itself is on disk only once the directory is.
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self._saved = data

    # -- reading -------------------------------------------------------------

    def load(self, db) -> bool:
        """Fill an empty db from the file; False if there is none."""
        try:
            with open(self.path, 'rb') as f:
                data = f.read()
        except FileNotFoundError:
            return False
        try:
            doc = json.loads(data.decode('utf-8'))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptDatabase(self.path, 'not JSON: %s' % exc) from None
        if not isinstance(doc, dict) or doc.get('format') != FORMAT:
            raise CorruptDatabase(self.path, 'not a %s file' % FORMAT)
        if doc.get('version') != VERSION:
            raise CorruptDatabase(self.path, 'version %r, not %d'
                                  % (doc.get('version'), VERSION))
        tables = doc.get('tables')
        if not isinstance(tables, dict):
            raise CorruptDatabase(self.path, 'no tables')
        for cls, table in tables.items():
            sch = schema.SCHEMAS.get(cls)
            if sch is None or not sch.persist or not isinstance(table, dict):
                raise CorruptDatabase(self.path, 'bad table %r' % (cls,))
            for ref, stored in table.items():
                rec = self._record(cls, ref, stored)
                try:
                    db.insert(cls, ref, rec)
                except ValueError as exc:
                    raise CorruptDatabase(self.path, str(exc)) from None
        self._saved = data
        LOG.info('database %s: %s', self.path, ', '.join(
            '%d %s' % (len(t), c) for c, t in sorted(tables.items()) if t))
        return True

    def _record(self, cls: str, ref, stored) -> dict:
        """A stored record checked against the schema, DateTimes restored.

        A field the file lacks takes its default (a file written before
        the field existed); one the schema lacks is dropped, with a
        warning; a value of the wrong type makes the file corrupt.
        """
        if not isinstance(ref, str) or not ref.startswith('OpaqueRef:') or \
                not isinstance(stored, dict):
            raise CorruptDatabase(self.path, 'bad %s record %r' % (cls, ref))
        sch = schema.SCHEMAS[cls]
        unknown = sorted(set(stored) - set(sch.fields))
        if unknown:
            LOG.warning('database %s: %s %s: fields %s dropped', self.path,
                        cls, ref, ', '.join(unknown))
        rec = {}
        for field in sch.fields:
            if field not in stored:
                rec[field] = sch.default(field)
                continue
            value, kind = stored[field], _kind(cls, field)
            if kind is xmlrpc.client.DateTime and isinstance(value, str):
                value = xmlrpc.client.DateTime(value)
            elif kind is float and isinstance(value, int) and \
                    not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (
                    kind is dict and not all(isinstance(v, str)
                                             for v in value.values())) or (
                    kind is list and not all(isinstance(v, str)
                                             for v in value)):
                raise CorruptDatabase(self.path, '%s %s: bad %s %r'
                                      % (cls, ref, field, value))
            rec[field] = value
        if not rec['uuid']:
            raise CorruptDatabase(self.path, '%s %s has no uuid' % (cls, ref))
        return rec
