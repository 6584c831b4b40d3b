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
"""VDIs whose expected content the test keeps, and the referees that
judge their files after a garbage collection: qemu-img for a single
file, libvhdi for a chain, and our own reader."""

import os
import random

from tests import xapi_fixture
from tests.unit.vhd import vhdcheck
from xenapinfs_driver.testing.xapi import vhdio
from xenapinfs_driver.vhd import ops

MiB = 1 << 20
SIZE = 6 * MiB      # three 2 MiB blocks: runs straddle block edges


def sr_dir(root, session, sr) -> str:
    return os.path.join(root, 'var', 'run', 'sr-mount',
                        session.xenapi.SR.get_uuid(sr))


def vhd_names(directory) -> list:
    return sorted(n for n in os.listdir(directory) if n.endswith('.vhd'))


def read_chain(path, size) -> bytes:
    """Our reader's view of a VHD and its ancestors."""
    out = bytearray(size)
    with vhdio.Chain(path) as chain:
        for idx in chain.keys():
            _, data = chain.compose(idx)
            base = idx * chain.block_size
            out[base:base + chain.block_size] = data[:size - base]
    return bytes(out)


def judge(path, expected) -> int:
    """Three readers agree that path's chain holds expected; its depth."""
    chain = ops.chain_of(path, 64)
    if len(chain) == 1:
        vhdcheck.qemu_converted(path, expected)
    else:
        got = vhdcheck.libvhdi_read(chain, len(expected))
        assert got == bytes(expected), 'libvhdi reads other data'
    assert read_chain(path, len(expected)) == bytes(expected), \
        'our reader reads other data'
    return len(chain)


class Volumes:
    """VDIs of one SR and the content each must keep."""

    def __init__(self, root, session, sr, seed=0):
        self.root = root
        self.session = session
        self.x = session.xenapi
        self.sr = sr
        self.dir = sr_dir(root, session, sr)
        self.rnd = random.Random(seed)
        self.model = {}         # VDI uuid -> bytearray

    def path(self, uuid) -> str:
        return os.path.join(self.dir, '%s.vhd' % uuid)

    def create(self) -> str:
        ref = xapi_fixture.create_vdi(self.session, self.sr, SIZE)
        self.model[self.x.VDI.get_uuid(ref)] = bytearray(SIZE)
        return ref

    def write(self, ref, count=6) -> None:
        """Random runs into the VDI's file (the server idle meanwhile)."""
        uuid = self.x.VDI.get_uuid(ref)
        # 4 KiB-aligned runs keep libvhdi within its known bugs.
        runs = vhdcheck.random_runs(self.rnd, SIZE, count, align=4096)
        vhdcheck.write_runs(self.path(uuid), runs, self.model[uuid])

    def snapshot(self, ref, clone=False) -> str:
        new = (self.x.VDI.clone if clone else self.x.VDI.snapshot)(ref, {})
        self.model[self.x.VDI.get_uuid(new)] = bytearray(
            self.model[self.x.VDI.get_uuid(ref)])
        return new

    def destroy(self, ref) -> None:
        uuid = self.x.VDI.get_uuid(ref)
        self.x.VDI.destroy(ref)
        del self.model[uuid]

    def check(self) -> dict:
        """Every VDI judged; {uuid: chain depth}."""
        return {uuid: judge(self.path(uuid), data)
                for uuid, data in self.model.items()}

    def files(self) -> list:
        return vhd_names(self.dir)

    def base_copies(self) -> int:
        return sum(1 for rec in self.x.VDI.get_all_records().values()
                   if not rec['managed'])
