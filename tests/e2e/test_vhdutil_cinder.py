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
"""Cinder's own vhd-util pipeline, run on our ``vhd-util``.

``cinder.image.image_utils.replace_xenserver_image_with_coalesced_vhd``
(cinder 29.0.0, from test-requirements.txt) extracts a XenServer image
with tar and runs ``vhd-util modify``, ``query -v``, ``resize -j`` and
``coalesce`` through oslo.concurrency's processutils, as the volume
service does. Nothing is installed for it: a ``vhd-util`` shell wrapper
that runs ``python -m xenapinfs_driver.cmd.vhdutil`` is put first in PATH.
Cinder runs in a child process, so that its eventlet and oslo.config stay
out of the test process.

The images are the cases where blktap's pipeline pads, loses data or
crashes (reference vhd-format.md, section 2): sizes that are not MiB
multiples and a preallocated (LVM-SR style) BAT. The layers are written
as tapdisk writes them, with no sector present past a layer's end; the
library's handling of such stale sectors is tested apart
(tests/unit/cmd/test_vhdutil.py, test_resize_grown_area_reads_as_zeros).
"""

import importlib.util
import os
import pathlib
import random
import shlex
import subprocess
import sys

import pytest

from tests import vhd_factory as vf
from xenapinfs_driver.vhd import tgz

MiB = vf.MiB
SECTOR = vf.SECTOR
REPO = pathlib.Path(__file__).resolve().parents[2]
HAVE_CINDER = importlib.util.find_spec('cinder') is not None

DRIVER = """\
import sys
from cinder.image import image_utils
image_utils.CONF.set_override('image_conversion_dir', sys.argv[2])
image_utils.replace_xenserver_image_with_coalesced_vhd(sys.argv[1])
"""


@pytest.fixture
def cinder():
    if not HAVE_CINDER:
        if os.environ.get('CI'):
            pytest.fail('cinder is not installed, but test-requirements.txt '
                        'has it: the vhd-util pipeline test must run in CI')
        pytest.skip('cinder not installed: pip install -r '
                    'test-requirements.txt')


def image(path, sizes, preallocated, seed):
    """A XenServer tgz of a chain; one layer has a 1 Mi-entry BAT."""
    rnd = random.Random(seed)
    specs = [vf.trimmed(vf.random_layer(rnd, s, fill=0.6 if i else 0.8))
             for i, s in enumerate(sizes)]
    ids = [rnd.randbytes(16) for _ in specs]
    files = vf.build_chain(specs, rnd=rnd, unique_ids=ids)
    files[preallocated] = vf.build_chain(
        specs, rnd=rnd, unique_ids=ids, max_table_entries=1 << 20)[
            preallocated]
    vf.xenserver_tgz(str(path), files)
    return vf.expected_disk(specs)


def run_cinder(tmp_path, image_file):
    """Cinder's call in a child process; our vhd-util first in PATH."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    log = tmp_path / 'vhd-util.log'
    wrapper = bin_dir / 'vhd-util'
    wrapper.write_text('#!/bin/sh\nprintf "%%s\\n" "$*" >> %s\n'
                       'exec %s -m xenapinfs_driver.cmd.vhdutil "$@"\n'
                       % (shlex.quote(str(log)), shlex.quote(sys.executable)))
    wrapper.chmod(0o755)
    conversion = tmp_path / 'conversion'
    conversion.mkdir()
    env = dict(os.environ)
    env['PATH'] = str(bin_dir) + os.pathsep + env.get('PATH', '')
    env['PYTHONPATH'] = os.pathsep.join(
        [str(REPO)] + [p for p in [env.get('PYTHONPATH')] if p])
    env['PYTHONWARNINGS'] = 'ignore'
    proc = subprocess.run(
        [sys.executable, '-c', DRIVER, str(image_file), str(conversion)],
        env=env, capture_output=True, text=True, timeout=600)
    calls = log.read_text().splitlines() if log.exists() else []
    # Cinder's temporary directories are gone, whatever happened.
    assert os.listdir(conversion) == []
    return proc, [c.split()[0] for c in calls]


def raw_of(path, tmp_path):
    dest = tmp_path / 'result.raw'
    tgz.convert(str(path), str(dest))
    return dest.read_bytes()


@pytest.mark.parametrize('sizes,preallocated,result_size', [
    # query -v says 9 for the top: the parent is resized to 10 MiB, which
    # holds it (blktap: resized short, the tail lost, ERANGE).
    ((9 * MiB + 7 * SECTOR, 8 * MiB + 3 * SECTOR, 6 * MiB + 5 * SECTOR),
     1, 10 * MiB),
    # query -v says 8, a whole block: resize leaves 8 MiB + 7 sectors
    # alone, and coalesce grows the 8 MiB base to the child's size.
    ((8 * MiB + 7 * SECTOR, 8 * MiB + 7 * SECTOR, 6 * MiB + 5 * SECTOR),
     2, 8 * MiB + 7 * SECTOR),
], ids=['top-9MiB+7sectors', 'top-8MiB+7sectors'])
def test_replace_xenserver_image_with_coalesced_vhd(
        cinder, tmp_path, sizes, preallocated, result_size):
    image_file = tmp_path / 'image'
    expected = image(image_file, sizes, preallocated, seed=11)
    proc, calls = run_cinder(tmp_path, image_file)
    assert proc.returncode == 0, proc.stderr
    assert calls == ['modify', 'modify', 'query', 'resize', 'coalesce',
                     'query', 'resize', 'coalesce']
    # The image file is now the coalesced base: one dynamic VHD.
    raw = raw_of(image_file, tmp_path)
    assert len(raw) == result_size
    assert raw[:len(expected)] == expected
    assert raw[len(expected):].count(0) == result_size - len(expected)


def test_a_vhd_util_failure_reaches_cinder(cinder, tmp_path):
    # A damaged layer: vhd-util exits 22 with one line on stderr, which
    # processutils puts in the ProcessExecutionError cinder raises.
    sizes = (4 * MiB, 4 * MiB)
    rnd = random.Random(3)
    specs = [vf.random_layer(rnd, s) for s in sizes]
    files = vf.build_chain(specs, rnd=rnd)
    broken = bytearray(files[1])
    broken[-SECTOR:-SECTOR + 8] = b'xonectix'
    files[1] = bytes(broken)
    image_file = tmp_path / 'image'
    vf.xenserver_tgz(str(image_file), files)
    proc, calls = run_cinder(tmp_path, image_file)
    assert proc.returncode != 0
    assert calls == ['modify']
    assert 'ProcessExecutionError' in proc.stderr
    assert 'Exit code: 22' in proc.stderr
    assert 'vhd-util: modify: ' in proc.stderr
    assert 'cookie' in proc.stderr
