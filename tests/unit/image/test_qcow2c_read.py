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
"""The driver's compressed qcow2 images read by its own download path
(the mapped disk, compressed clusters inflated in place) and accepted by
cinder's format inspector, as glance's would read them."""

import os
import subprocess

from cinder.image import format_inspector
import pytest

from tests.unit.vhd import test_qcow2c
from xenapinfs_driver.image import qcow2_clusters
from xenapinfs_driver.image import qemu_map

MiB, GiB = 1 << 20, 1 << 30
CLUSTER = test_qcow2c.CLUSTER


def _mapped(image, size):
    out = subprocess.run(['qemu-img', 'map', '--output=json', '-f', 'qcow2',
                          image], check=True, capture_output=True,
                         timeout=120).stdout
    extents = qemu_map.parse(out, size, os.path.getsize(image),
                             compressed=True)
    return qemu_map.MappedDisk(image, size, extents, name='img',
                               inflater=qcow2_clusters.Clusters)


@pytest.mark.parametrize('case', sorted(test_qcow2c.CASES))
def test_our_reader_reads_the_disk(tmp_path, case):
    size, pieces, counts = test_qcow2c.CASES[case]
    raw = test_qcow2c.make_disk(tmp_path / 'disk.raw', size, pieces)
    image, _counts = test_qcow2c.pack(tmp_path, raw)
    mapped = _mapped(image, size)
    try:
        assert (mapped.clusters is not None) == bool(counts[2])
        with open(raw, 'rb') as f:
            # Where there is data, and a piece of hole either side.
            for offset, _kind, n in pieces + [(0, None, min(size, MiB))]:
                lo = max(0, offset - 3000)
                hi = min(size, offset + n + 3000)
                f.seek(lo)
                assert mapped.pread(hi - lo, lo) == f.read(hi - lo)
    finally:
        mapped.close()


@pytest.mark.parametrize('case', sorted(test_qcow2c.CASES))
def test_cinders_format_inspector_accepts_it(tmp_path, case):
    size, pieces, _counts = test_qcow2c.CASES[case]
    raw = test_qcow2c.make_disk(tmp_path / 'disk.raw', size, pieces)
    image, _counts = test_qcow2c.pack(tmp_path, raw)
    found = format_inspector.detect_file_format(image)
    assert str(found) == 'qcow2'
    assert found.safety_check()
    assert found.virtual_size == size
