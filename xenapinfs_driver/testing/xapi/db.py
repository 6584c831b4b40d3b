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
"""The server's database: one table of records per class, in memory.

Refs are ``OpaqueRef:<uuid4>``, unrelated to the object's uuid, as in
XAPI. Stored records hold wire values (ints as decimal strings); reverse
references and values a class computes (an SR's sizes) are added to the
copy handed out, on every read. ``lock`` is the server's one lock: every
change of state, here or on disk, happens while holding it.

A change is committed when the lock's outermost holder lets it go:
``on_commit`` (the database file, see ``persist``) is called then, before
any other thread can see the change, when a record of a class that
persists may have changed: one created, updated, destroyed or handed out
by ``get`` (the way handlers change a record in place).
"""

from __future__ import annotations

import copy
import logging
import threading
import uuid as uuidlib

from xenapinfs_driver.testing.xapi import errors
from xenapinfs_driver.testing.xapi import query
from xenapinfs_driver.testing.xapi import schema

LOG = logging.getLogger(__name__)


def new_ref() -> str:
    return 'OpaqueRef:%s' % uuidlib.uuid4()


class CommitLock:
    """A re-entrant lock that commits as its outermost holder leaves."""

    def __init__(self, commit):
        self._lock = threading.RLock()
        self._commit = commit
        # Only the holder touches it, so the lock itself guards it.
        self._depth = 0

    def __enter__(self) -> CommitLock:
        self._lock.acquire()
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._depth == 1:
                self._commit()
        finally:
            self._depth -= 1
            self._lock.release()


class Database:
    """Tables of records keyed by ref, with a uuid index per class."""

    def __init__(self):
        self.lock = CommitLock(self._commit)
        self._tables = {cls: {} for cls in schema.SCHEMAS}
        self._uuids = {cls: {} for cls in schema.SCHEMAS}
        # cls -> fn(ref, record): fills in values computed on each read.
        self.computed = {}
        # fn(db): makes the persistent tables durable; None: memory only.
        self.on_commit = None
        self._touched = False

    def _touch(self, cls: str) -> None:
        if schema.SCHEMAS[cls].persist:
            self._touched = True

    def _commit(self) -> None:
        if not self._touched or self.on_commit is None:
            return
        self._touched = False
        try:
            self.on_commit(self)
        except BaseException:
            self._touched = True    # the next commit tries again
            raise

    def create(self, cls: str, fields: dict | None = None) -> str:
        """A new record of cls; unset fields take their defaults."""
        sch = schema.SCHEMAS[cls]
        # A deep copy: a record built from another one (snapshot, clone,
        # copy) must not share its maps, as on a real host.
        fields = copy.deepcopy(dict(fields or {}))
        unknown = set(fields) - set(sch.fields)
        if unknown:
            raise AssertionError('%s has no field %s' % (cls, sorted(unknown)))
        with self.lock:
            rec = {f: fields[f] if f in fields else sch.default(f)
                   for f in sch.fields}
            rec['uuid'] = rec['uuid'] or str(uuidlib.uuid4())
            if rec['uuid'] in self._uuids[cls]:
                raise AssertionError('%s %s exists' % (cls, rec['uuid']))
            ref = new_ref()
            self._tables[cls][ref] = rec
            self._uuids[cls][rec['uuid']] = ref
            self._touch(cls)
            return ref

    def exists(self, cls: str, ref) -> bool:
        return isinstance(ref, str) and ref in self._tables[cls]

    def _stored(self, cls: str, ref) -> dict:
        try:
            return self._tables[cls][ref]
        except (KeyError, TypeError):
            raise errors.handle_invalid(cls, ref) from None

    def get(self, cls: str, ref) -> dict:
        """The stored record itself (change it only holding the lock)."""
        rec = self._stored(cls, ref)
        self._touch(cls)
        return rec

    def record(self, cls: str, ref) -> dict:
        """A copy of the record as the API shows it."""
        with self.lock:
            rec = copy.deepcopy(self._stored(cls, ref))
            for field, (other, key) in schema.BACKREFS.get(cls, {}).items():
                rec[field] = [r for r, o in self._tables[other].items()
                              if o[key] == ref]
            hook = self.computed.get(cls)
            if hook is not None:
                hook(ref, rec)
            return rec

    def update(self, cls: str, ref, **fields) -> None:
        with self.lock:
            rec = self.get(cls, ref)
            for field, value in fields.items():
                if field not in rec or field == 'uuid':
                    raise AssertionError('%s.%s cannot be set' % (cls, field))
                rec[field] = value

    def destroy(self, cls: str, ref) -> None:
        with self.lock:
            rec = self.get(cls, ref)
            del self._tables[cls][ref]
            del self._uuids[cls][rec['uuid']]

    def refs(self, cls: str) -> list:
        with self.lock:
            return list(self._tables[cls])

    def find(self, cls: str, **equal) -> list:
        """Refs of the records whose stored fields have these values."""
        with self.lock:
            return [ref for ref, rec in self._tables[cls].items()
                    if all(rec[k] == v for k, v in equal.items())]

    def by_uuid(self, cls: str, uuid) -> str:
        with self.lock:
            try:
                return self._uuids[cls][uuid]
            except (KeyError, TypeError):
                raise errors.uuid_invalid(cls, uuid) from None

    def where(self, cls: str, expr: str) -> dict:
        """``get_all_records_where``: {ref: record} matching expr."""
        try:
            tree = query.parse(expr)
        except query.QueryError as exc:
            # XAPI answers a parse error with an INTERNAL_ERROR too.
            raise errors.XapiError('INTERNAL_ERROR', 'query "%s" does not '
                                   'parse: %s' % (expr, exc)) from None
        unknown = query.fields_of(tree) - set(schema.all_fields(cls))
        if unknown:
            LOG.warning('query on %s names unknown fields %s: they match '
                        'nothing', cls, ', '.join(sorted(unknown)))
        with self.lock:
            out = {}
            for ref in self._tables[cls]:
                rec = self.record(cls, ref)
                if query.evaluate(tree, rec):
                    out[ref] = rec
            return out

    def count(self, cls: str) -> int:
        return len(self._tables[cls])

    # -- the database file's side (see ``persist``) --------------------------

    def tables(self) -> dict:
        """{class: {ref: stored record}} of the classes that persist.

        The records themselves: read them holding the lock, change none.
        """
        return {cls: self._tables[cls] for cls, sch in schema.SCHEMAS.items()
                if sch.persist}

    def insert(self, cls: str, ref: str, rec: dict) -> None:
        """A record as a database file holds it, under its own ref."""
        with self.lock:
            if ref in self._tables[cls] or rec['uuid'] in self._uuids[cls]:
                raise ValueError('%s %s is there twice' % (cls, ref))
            self._tables[cls][ref] = rec
            self._uuids[cls][rec['uuid']] = ref
