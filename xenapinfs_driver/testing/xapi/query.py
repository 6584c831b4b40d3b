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
"""XAPI's ``get_all_records_where`` expressions: parse and evaluate.

The grammar is XAPI's ``Db_filter`` one::

    expr  := or
    or    := and ('or' and)*
    and   := not ('and' not)*
    not   := 'not' not | atom
    atom  := 'true' | 'false' | '(' expr ')' | value '=' value
    value := 'field' STRING | STRING

Strings are double-quoted, with backslash escaping the next character.
``and`` binds tighter than ``or``, as in XAPI. Values compare as strings:
booleans as ``true``/``false``. Field names may use the database's double
underscore (``name__label``) or the API's name (``name_label``).
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r'\s*(?:(?P<word>[A-Za-z_]+)|(?P<punct>[()=])|'
                    r'(?P<string>"(?:[^"\\]|\\.)*"))')
_KEYWORDS = ('field', 'and', 'or', 'not', 'true', 'false')


class QueryError(ValueError):
    """The expression is not in the grammar; says where and why."""


def _tokens(text: str) -> list:
    out = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            out.append(('end', None, pos))
            return out
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise QueryError('unexpected character %r at offset %d'
                             % (text[pos], pos))
        start = m.start(m.lastgroup)
        if m.lastgroup == 'word':
            word = m.group('word').lower()
            if word not in _KEYWORDS:
                raise QueryError('unknown word %r at offset %d'
                                 % (m.group('word'), start))
            out.append((word, None, start))
        elif m.lastgroup == 'punct':
            out.append((m.group('punct'), None, start))
        else:
            raw = m.group('string')[1:-1]
            out.append(('string', re.sub(r'\\(.)', r'\1', raw), start))
        pos = m.end()


class _Parser:
    def __init__(self, text: str):
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> str:
        return self.toks[self.i][0]

    def take(self, kind: str):
        tok = self.toks[self.i]
        if tok[0] != kind:
            what = 'the end' if tok[0] == 'end' else repr(tok[1] or tok[0])
            raise QueryError('expected %s at offset %d, found %s'
                             % ('a string' if kind == 'string' else
                                repr(kind), tok[2], what))
        self.i += 1
        return tok[1]

    def parse(self):
        node = self.or_()
        self.take('end')
        return node

    def or_(self):
        node = self.and_()
        while self.peek() == 'or':
            self.take('or')
            node = ('or', node, self.and_())
        return node

    def and_(self):
        node = self.not_()
        while self.peek() == 'and':
            self.take('and')
            node = ('and', node, self.not_())
        return node

    def not_(self):
        if self.peek() == 'not':
            self.take('not')
            return ('not', self.not_())
        return self.atom()

    def atom(self):
        kind = self.peek()
        if kind in ('true', 'false'):
            self.take(kind)
            return (kind,)
        if kind == '(':
            self.take('(')
            node = self.or_()
            self.take(')')
            return node
        left = self.value()
        self.take('=')
        return ('eq', left, self.value())

    def value(self):
        if self.peek() == 'field':
            self.take('field')
            return ('field', self.take('string').replace('__', '_'))
        return ('literal', self.take('string'))


def parse(text: str):
    """The expression's tree; raises QueryError."""
    return _Parser(text).parse()


def as_string(value) -> str:
    """How a field's value compares in a query."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    return str(value)


def fields_of(node) -> set:
    """The field names an expression reads."""
    if node[0] == 'field':
        return {node[1]}
    return set().union(*(fields_of(n) for n in node[1:]
                         if isinstance(n, tuple)))


def evaluate(node, record: dict) -> bool:
    """Whether record (a wire record) matches the parsed expression."""
    kind = node[0]
    if kind == 'true':
        return True
    if kind == 'false':
        return False
    if kind == 'not':
        return not evaluate(node[1], record)
    if kind == 'and':
        return evaluate(node[1], record) and evaluate(node[2], record)
    if kind == 'or':
        return evaluate(node[1], record) or evaluate(node[2], record)
    return _value(node[1], record) == _value(node[2], record)


def _value(node, record):
    if node[0] == 'literal':
        return node[1]
    if node[1] not in record:
        # A field the class does not have equals nothing, not even
        # another missing field (the caller reports it).
        return object()
    return as_string(record[node[1]])
