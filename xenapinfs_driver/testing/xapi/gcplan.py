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
"""What the garbage collector does next in an SR: a pure decision.

``Tree`` is an SR's VHD files as sm's cleanup sees them (a forest by
parent uuid). ``next_action`` picks, in sm's order: garbage first (a
hidden VHD with no children and no visible VDI record), then a non-leaf
coalesce (a hidden VHD with children, the only child of its parent;
tallest tree first), then a leaf coalesce (a visible leaf, the only
child of a hidden parent). Files a long operation uses are never picked;
``blocked`` then says a later pass has work to do.

Policy (sm's keys): SR ``other_config['coalesce'] = 'false'`` stops both
coalesces, SR or VDI ``other_config['leaf-coalesce'] = 'false'`` stops a
leaf coalesce, and a VDI with ``on_boot`` ``reset`` is never
leaf-coalesced. sm leaf-coalesces a leaf under 20 MiB at once and first
shrinks a larger one by snapshot-coalesce, with the same outcome once
it is done; this server is never live, so it coalesces any size at once.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Action:
    kind: str                   # 'garbage', 'coalesce' or 'leaf'
    # The VHD removed (garbage, coalesce) or the leaf coalesced.
    uuid: str
    parent: str | None = None
    children: tuple = ()        # re-linked by a coalesce


class Tree:
    """files: {uuid: vdifiles.file_info}; records: {location: record}."""

    def __init__(self, files: dict, records: dict):
        self.files = files
        self.records = records
        self.kids = {u: [] for u in files}
        for uuid, info in sorted(files.items()):
            if info['parent'] in self.kids:
                self.kids[info['parent']].append(uuid)

    def parent(self, uuid):
        par = self.files[uuid]['parent']
        return par if par in self.files else None

    def ancestry(self, uuid) -> list:
        out = []
        while uuid is not None and uuid not in out:
            out.append(uuid)
            uuid = self.parent(uuid)
        return out

    def height(self, uuid) -> int:
        return 1 + max((self.height(k) for k in self.kids[uuid]), default=0)

    def root(self, uuid):
        return self.ancestry(uuid)[-1]

    def in_use(self) -> set:
        """The files a running long operation (copy, transfer) reads."""
        used = set()
        for location, rec in self.records.items():
            if rec['current_operations'] and location in self.files:
                used.update(self.ancestry(location))
        return used

    def visible(self, uuid) -> bool:
        rec = self.records.get(uuid)
        return rec is not None and rec['managed']


def _leaf_allowed(rec: dict, sr_config: dict) -> bool:
    return sr_config.get('leaf-coalesce') != 'false' and \
        rec['other_config'].get('leaf-coalesce') != 'false' and \
        rec.get('on_boot') != 'reset'


def next_action(tree: Tree, sr_config: dict, skip=frozenset()):
    """(Action or None, blocked): the next step, and whether a step was
    left out only because its files are in use."""
    used = tree.in_use()
    blocked = False
    for uuid, info in sorted(tree.files.items()):
        if info['hidden'] and not tree.kids[uuid] and \
                not tree.visible(uuid):
            if uuid in used:
                blocked = True
                continue
            return Action('garbage', uuid), blocked
    if sr_config.get('coalesce') == 'false':
        return None, blocked
    found = []
    for uuid, info in tree.files.items():
        par = tree.parent(uuid)
        if par is None or tree.kids[par] != [uuid] or uuid in skip:
            continue
        if info['hidden'] and tree.kids[uuid]:
            found.append((0, -tree.height(tree.root(uuid)), uuid, par))
        elif not info['hidden'] and not tree.kids[uuid] and \
                tree.files[par]['hidden'] and tree.visible(uuid) and \
                _leaf_allowed(tree.records[uuid], sr_config):
            found.append((1, -tree.height(tree.root(uuid)), uuid, par))
    for leaf, _height, uuid, par in sorted(found):
        touched = {uuid, par} | set(tree.kids[uuid])
        if touched & used:
            blocked = True
            continue
        if leaf:
            return Action('leaf', uuid, par), blocked
        return Action('coalesce', uuid, par,
                      tuple(tree.kids[uuid])), blocked
    return None, blocked
