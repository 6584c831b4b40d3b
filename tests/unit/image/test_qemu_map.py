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
"""qemu_map: the checks of qemu-img's map, and bounded qemu-img runs."""

import json

from oslo_utils import units
import pytest

from xenapinfs_driver.image import qemu_map

MiB = units.Mi


def test_odd_maps_are_not_mapped():
    def extent(begin, length, **kw):
        item = {'start': begin, 'length': length, 'depth': 0,
                'zero': False, 'data': True, 'offset': 65536 + begin}
        item.update(kw)
        return item
    good = [extent(0, MiB), extent(MiB, MiB, zero=True, data=False)]
    assert qemu_map.parse(json.dumps(good), 2 * MiB, 2 * MiB) == \
        [(0, MiB, 65536)]
    for odd, words in (
            ('[{', 'not JSON'),
            ('{}', 'not a list'),
            ([extent(0, MiB), extent(2 * MiB, MiB)], 'not the bytes'),
            ([extent(0, MiB)], 'covers 1048576 bytes of a 2097152'),
            ([extent(0, MiB), extent(MiB, MiB, offset=65536)], 'share'),
            ([extent(0, 2 * MiB, depth=1)], 'backing layer'),
            ([extent(0, 2 * MiB, data=False)], 'neither data nor'),
            ([{k: v for k, v in extent(0, 2 * MiB).items()
               if k != 'offset'}], 'compressed'),
            ([extent(0, 2 * MiB, start=-1)], 'start -1'),
            ([extent(0, 2 * MiB, zero=None)], 'zero/data')):
        text = odd if isinstance(odd, str) else json.dumps(odd)
        with pytest.raises(qemu_map.NotMappable, match=words):
            qemu_map.parse(text, 2 * MiB, 8 * MiB)
    # A zero extent's host range may pass the end (the unwritten tail of
    # a cluster); a data extent's may not.
    tail = [extent(0, MiB), extent(MiB, MiB, zero=True)]
    assert qemu_map.parse(json.dumps(tail), 2 * MiB, 2 * MiB)
    with pytest.raises(qemu_map.Damaged, match='past the end'):
        qemu_map.parse(json.dumps(good), 2 * MiB, MiB)


def test_qemu_img_output_is_bounded():
    with pytest.raises(qemu_map.NotMappable, match='more than 10 bytes'):
        qemu_map.qemu_img(['--help'], 10)
    code, out, _err = qemu_map.qemu_img(['--version'], 1 << 16)
    assert code == 0 and out.startswith(b'qemu-img')
    # No time at all: stopped before its first output, and killed.
    with pytest.raises(qemu_map.NotMappable, match='ran more than 0 s'):
        qemu_map.qemu_img(['--version'], 1 << 16, timeout=0)
