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
"""Trim an extract of XAPI's data model into the two copies we keep.

``python tools/trim_datamodel.py FULL.json`` reads the extract (classes,
fields, messages, as dumped from xen-api's ``ocaml/idl``) and writes:

* ``xenapinfs_driver/testing/xapi/datamodel.json``: what the test server
  builds its records and implicit messages from (fields, enums, class
  flags, which messages have an Async form, which are removed);
* ``tests/data/xapi-datamodel.json``: what the conformance test holds the
  server against, with every message's parameters as well. It is kept
  apart so that a change to the server's copy cannot hide a gap.

Both hold facts only; the extract's notes and descriptions are dropped.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER_COPY = os.path.join(ROOT, 'xenapinfs_driver', 'testing', 'xapi',
                           'datamodel.json')
TEST_COPY = os.path.join(ROOT, 'tests', 'data', 'xapi-datamodel.json')
_FIELD_KEYS = ('name', 'type', 'qualifier', 'default')
_PARAM_KEYS = ('name', 'type', 'default')


def _field(f: dict) -> dict:
    out = {k: f[k] for k in _FIELD_KEYS if k in f}
    out['state'] = f['lifecycle']['state']
    return out


def _message(m: dict) -> dict:
    out = {'wire_name': m['wire_name'],
           'params': [{k: p[k] for k in _PARAM_KEYS if k in p}
                      for p in m['params']],
           'async': m['async'],
           'state': m['lifecycle']['state']}
    if 'implicit' in m:
        out['implicit'] = m['implicit']
    for p in m.get('wire_params', ()):
        if 'struct_members' in p:
            out['struct'] = {s['name']: s['optional']
                             for s in p['struct_members']}
    return out


def _server_class(c: dict) -> dict:
    return {
        'flags': c['flags'],
        'enums': c['enums'],
        'fields': [_field(f) for f in c['fields']],
        # A removed field's key stays in the record (the generator filters
        # records on internal_only, not on lifecycle); its getter is gone.
        'removed_fields': [_field(f) for f in c['removed_fields']],
        'async': sorted(m['wire_name'] for m in
                        c['messages'] + c['implicit_messages']
                        if m['async']),
        'removed_messages': [m['name'] for m in c['removed_messages']],
    }


def _test_class(c: dict) -> dict:
    out = _server_class(c)
    del out['async']
    out['internal_only_fields'] = [
        f['name'] for f in c['internal_only_fields_not_on_wire']]
    out['messages'] = [_message(m) for m in
                       c['messages'] + c['implicit_messages']]
    return out


def _write(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write('\n')


def main(argv: list) -> int:
    if len(argv) != 2:
        sys.stderr.write('usage: %s FULL-DATAMODEL.json\n' % argv[0])
        return 2
    with open(argv[1]) as f:
        full = json.load(f)
    src = full['source']
    source = {k: src[k] for k in ('repo', 'commit', 'api_version')}
    classes = full['classes']
    _write(SERVER_COPY, {'source': source, 'classes': {
        n: _server_class(c) for n, c in classes.items()}})
    _write(TEST_COPY, {'source': source, 'classes': {
        n: _test_class(c) for n, c in classes.items()}})
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
