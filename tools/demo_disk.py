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
"""The demo's disks: an MBR partition with ext4, read and written unmounted.

Nothing is mounted (no root, no loop devices): e2fsprogs opens a file
system inside a whole-disk image with the ``?offset=BYTES`` suffix
(``mkfs.ext4`` with ``-E offset=``), so the partition never has to be
copied out and back.
"""

from __future__ import annotations

import os
import shutil
import struct

import demo_shell as sh

from xenapinfs_driver.vhd import image as vhdimage

SECTOR = 512
FIRST_SECTOR = 2048               # where sfdisk starts partition 1 (1 MiB)
LINUX = 0x83
DISK_ID = 0x0de30de3              # fixed, so that every run is the same


def partition(disk: str) -> tuple[int, int]:
    """(offset, size) in bytes of partition 1 of an MBR disk."""
    with open(disk, 'rb') as f:
        mbr = f.read(SECTOR)
    if mbr[510:512] != b'\x55\xaa':
        raise sh.DemoError('%s has no MBR partition table' % disk)
    kind = mbr[446 + 4]
    start, count = struct.unpack_from('<II', mbr, 446 + 8)
    if kind == 0 or not count:
        raise sh.DemoError('%s has no partition 1' % disk)
    return start * SECTOR, count * SECTOR


def fs(disk: str, offset: int) -> str:
    """How e2fsprogs names the file system at offset inside disk."""
    return '%s?offset=%d' % (disk, offset)


def make_partition_table(disk: str) -> None:
    """One Linux partition from 1 MiB to the end, with sfdisk."""
    layout = 'label: dos\nlabel-id: 0x%08x\nstart=%d, type=%x\n' % (
        DISK_ID, FIRST_SECTOR, LINUX)
    if shutil.which('sfdisk'):
        sh.run(['sfdisk', '--quiet', disk], stdin=layout,
               shown="printf '%s' | sfdisk --quiet %s"
               % (layout.replace('\n', r'\n'), disk))
        return
    # Debian and Ubuntu ship sfdisk in the "fdisk" package, which a
    # minimal system may lack: the same table is 16 bytes and a signature.
    sh.note('sfdisk is not installed (Debian/Ubuntu package "fdisk"): '
            'writing the same table ourselves')
    sectors = os.path.getsize(disk) // SECTOR - FIRST_SECTOR
    write_mbr(disk, FIRST_SECTOR, sectors)


def _chs(lba: int) -> bytes:
    """A CHS address as sfdisk writes it (255 heads, 63 sectors/track)."""
    cyl, rest = divmod(lba, 255 * 63)
    if cyl > 1023:
        return b'\xfe\xff\xff'
    head, sector = divmod(rest, 63)
    return bytes([head, (sector + 1) | ((cyl >> 2) & 0xc0), cyl & 0xff])


def write_mbr(disk: str, start: int, count: int) -> None:
    mbr = bytearray(SECTOR)
    struct.pack_into('<I', mbr, 440, DISK_ID)
    mbr[446:462] = (b'\0' + _chs(start) + bytes([LINUX])
                    + _chs(start + count - 1)
                    + struct.pack('<II', start, count))
    mbr[510:512] = b'\x55\xaa'
    with open(disk, 'r+b') as f:
        f.write(mbr)


def changed_runs(old: bytes, new: bytes) -> list:
    """[(offset, data)] of the runs of 512-byte sectors that differ."""
    runs = []
    start = None
    for pos in range(0, len(new), SECTOR):
        differs = old[pos:pos + SECTOR] != new[pos:pos + SECTOR]
        if differs and start is None:
            start = pos
        elif not differs and start is not None:
            runs.append((start, new[start:pos]))
            start = None
    if start is not None:
        runs.append((start, new[start:]))
    return runs


def write_layer(vhd_path: str, runs: list) -> None:
    """Write the runs into a differencing VHD, as blktap would: only those
    sectors are marked present, the rest still read from the parent."""
    with vhdimage.VhdFile(vhd_path, writable=True) as vhd:
        for offset, data in runs:
            vhd.write(offset, data)
        vhd.flush()
