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
"""A server SIGKILLed in the middle of a coalesce: every VDI still reads
its data from the files, and a server started over the same root
finishes or rolls back the step when the SR is plugged again."""

import os
import select
import subprocess
import sys

import pytest

from tests import xapi_fixture
from tests.unit.testing import gcutil

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def _start(root, pwfile):
    proc = subprocess.Popen(
        [sys.executable, '-m', 'xenapinfs_driver.cmd.xapi_server',
         '--root', str(root), '--password-file', str(pwfile),
         '--export', '%s:%s' % xapi_fixture.EXPORT, '--gc', 'off'],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO)
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    assert ready, 'the server did not start'
    return proc, proc.stdout.readline().decode().split()[-1]


def _build(vols, leaf: bool):
    """A chain with one step to do: a leaf or a non-leaf coalesce."""
    vol = vols.create()
    vols.write(vol)
    first = vols.snapshot(vol)
    vols.write(vol)
    if leaf:
        vols.destroy(first)
        return
    vols.snapshot(vol)
    vols.write(vol)
    vols.destroy(first)


@pytest.mark.parametrize('forget', [False, True],
                         ids=['restarted', 'forgotten'])
@pytest.mark.parametrize('step,leaf', [
    ('copied', False), ('installed', False), ('relinked', False),
    ('leaf-copied', True), ('leaf-installed', True)])
def test_sigkill_mid_coalesce(tmp_path, step, leaf, forget):
    pwfile = tmp_path / 'pw'
    pwfile.write_text(xapi_fixture.PASSWORD + '\n')
    root = tmp_path / 'root'
    proc, url = _start(root, pwfile)
    try:
        session = xapi_fixture.login(url)
        sr = xapi_fixture.create_sr(session)
        sr_uuid = session.xenapi.SR.get_uuid(sr)
        vols = gcutil.Volumes(str(root), session, sr, seed=7)
        _build(vols, leaf)
        depths = vols.check()
        control = xapi_fixture.Control(url)
        control.gc_pause_at(step)
        assert not control.gc_run(sr, 0.1)
        assert control.gc_wait_paused(20) == step
    finally:
        proc.kill()
        proc.wait(20)
    # Only the files are left: each VDI reads its data from them.
    vols.dir = os.path.join(root, 'exports', xapi_fixture.EXPORT[0],
                            *xapi_fixture.EXPORT[1].strip('/').split('/'),
                            sr_uuid)
    for uuid, depth in vols.check().items():
        assert depth in (depths[uuid], depths[uuid] - 1), (uuid, depth)

    # A new server over the root puts the step right before it serves:
    # a restarted host at start (its SR comes back plugged from the
    # database), a host that forgot the SR at the first plug.
    with xapi_fixture.running_server(str(root), gc='off',
                                     forget_srs=forget) as server:
        session = xapi_fixture.login(server)
        x = session.xenapi
        if forget:
            sr = x.SR.introduce(sr_uuid, '', '', 'nfs', '', False, {})
            pbd = x.PBD.create({
                'host': x.session.get_this_host(session.handle), 'SR': sr,
                'device_config': xapi_fixture.DEVICE_CONFIG})
            x.PBD.plug(pbd)
        else:
            sr = x.SR.get_by_uuid(sr_uuid)
        assert sorted(n for n in os.listdir(vols.dir)
                      if n.startswith('.')) == [], 'leftovers'
        for uuid in vols.model:
            x.VDI.get_by_uuid(uuid)
        assert xapi_fixture.Control(server).gc_run(sr)
        after = vols.check()
        assert all(d == depths[u] - 1 for u, d in after.items()), after
        assert len(vols.files()) == len(vols.model) + (0 if leaf else 1)
        for uuid, depth in after.items():
            rec = x.VDI.get_record(x.VDI.get_by_uuid(uuid))
            assert ('vhd-parent' in rec['sm_config']) == (depth > 1)
