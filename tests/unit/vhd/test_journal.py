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
"""The undo journal: whatever was interrupted, revert puts every byte back.

The interruption of a resize at each of its writes is in test_ops; here
the journal itself is written, torn, damaged and replayed.
"""

import os
import random
import struct
import zlib

import pytest

from tests.unit.vhd import vhdcheck as vc
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import journal as journalmod
from xenapinfs_driver.vhd import ops
from xenapinfs_driver.vhd import resize as resizemod

MiB, KiB = vc.MiB, vc.KiB


class Interrupted(Exception):
    pass


@pytest.fixture
def target(tmp_path):
    """A 64 KiB file of random bytes, and its contents."""
    path = tmp_path / 'file'
    data = random.Random(1).randbytes(64 * KiB)
    path.write_bytes(data)
    return path, data


def _edit(path, jpath, edits, *, extend=0, finish=False):
    """Journal then apply edits [(offset, bytes)]; extend the file."""
    fd = os.open(path, os.O_RDWR)
    try:
        jrn = journalmod.Journal(str(jpath), fd)
        for off, data in edits:
            jrn.save(off, len(data))
        jrn.seal()
        for off, data in edits:
            os.pwrite(fd, data, off)
        if extend:
            os.pwrite(fd, b'\x01' * extend, os.fstat(fd).st_size)
        if finish:
            jrn.finish()
        else:
            jrn.close()
    finally:
        os.close(fd)


EDITS = [(0, b'\xaa' * 512), (4096, b'\xbb' * 1000), (60 * KiB, b'\xcc' * 10)]


def test_revert_puts_every_byte_back(tmp_path, target):
    path, data = target
    jpath = tmp_path / 'j'
    _edit(path, jpath, EDITS, extend=5 * KiB)
    assert path.read_bytes() != data
    assert journalmod.revert(str(path), str(jpath)) == len(EDITS)
    assert path.read_bytes() == data
    assert not jpath.exists()


def test_finish_keeps_the_edit_and_drops_the_journal(tmp_path, target):
    path, data = target
    jpath = tmp_path / 'j'
    _edit(path, jpath, EDITS, finish=True)
    assert vc.listing(tmp_path) == ['file']
    got = path.read_bytes()
    for off, new in EDITS:
        assert got[off:off + len(new)] == new


def test_abandon_drops_the_journal(tmp_path, target):
    path, data = target
    fd = os.open(path, os.O_RDWR)
    try:
        jrn = journalmod.Journal(str(tmp_path / 'j'), fd)
        jrn.save(0, 100)
        jrn.abandon()
    finally:
        os.close(fd)
    assert vc.listing(tmp_path) == ['file']
    assert path.read_bytes() == data


def test_journal_layout(tmp_path, target):
    path, data = target
    jpath = tmp_path / 'j'
    _edit(path, jpath, EDITS)
    raw = jpath.read_bytes()
    magic, size, csum = journalmod.HEAD.unpack_from(raw)
    assert magic == journalmod.MAGIC and size == len(data)
    assert csum == zlib.crc32(magic + size.to_bytes(8, 'big'))
    pos = journalmod.HEAD.size
    for off, new in EDITS:
        offset, length, crc = journalmod.RECORD.unpack_from(raw, pos)
        pos += journalmod.RECORD.size
        old = raw[pos:pos + length]
        assert (offset, length) == (off, len(new))
        assert old == data[off:off + len(new)] and crc == zlib.crc32(old)
        pos += length
    assert pos == len(raw)


def test_regions_past_the_old_end_are_left_to_the_truncation(tmp_path,
                                                             target):
    path, data = target
    jpath = tmp_path / 'j'
    # One region straddles the old end, one lies wholly past it.
    _edit(path, jpath, [(len(data) - 100, b'\x11' * 300),
                        (len(data) + 4096, b'\x22' * 10)])
    raw = jpath.read_bytes()
    offset, length, _ = journalmod.RECORD.unpack_from(
        raw, journalmod.HEAD.size)
    assert (offset, length) == (len(data) - 100, 100)
    assert len(raw) == journalmod.HEAD.size + journalmod.RECORD.size + 100
    assert journalmod.revert(str(path), str(jpath)) == 1
    assert path.read_bytes() == data


def test_a_region_already_saved_is_not_saved_again(tmp_path, target):
    path, data = target
    fd = os.open(path, os.O_RDWR)
    try:
        jrn = journalmod.Journal(str(tmp_path / 'j'), fd)
        jrn.save(1000, 5000)
        jrn.save(2000, 100)                 # inside: nothing new
        jrn.save(5000, 2000)                # overlaps: saved
        assert jrn.saved == [(1000, 6000), (5000, 7000)]
        jrn.seal()
        os.pwrite(fd, bytes(8000), 0)
        jrn.close()
    finally:
        os.close(fd)
    assert journalmod.revert(str(path), str(tmp_path / 'j')) == 2
    assert path.read_bytes()[1000:7000] == data[1000:7000]


def test_overlapping_saves_after_a_change_revert_to_the_oldest(tmp_path,
                                                               target):
    # Records are replayed newest first, so the first copy of a byte wins.
    path, data = target
    fd = os.open(path, os.O_RDWR)
    try:
        jrn = journalmod.Journal(str(tmp_path / 'j'), fd)
        jrn.save(0, 1024)
        jrn.seal()
        os.pwrite(fd, b'\x99' * 1024, 0)
        jrn.save(512, 1024)                 # holds some changed bytes
        jrn.seal()
        os.pwrite(fd, b'\x98' * 1024, 512)
        jrn.close()
    finally:
        os.close(fd)
    journalmod.revert(str(path), str(tmp_path / 'j'))
    assert path.read_bytes() == data


def test_a_second_journal_is_refused(tmp_path, target):
    path, data = target
    jpath = tmp_path / 'j'
    jpath.write_bytes(b'earlier')
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(errors.TargetError) as info:
            journalmod.Journal(str(jpath), fd)
    finally:
        os.close(fd)
    text = str(info.value)
    assert '\n' not in text and text.startswith(str(jpath) + ': ')
    assert jpath.read_bytes() == b'earlier'


@pytest.mark.parametrize('cut', [0, 1, 7, 8, 30, 500])
def test_a_torn_journal_replays_its_whole_records(tmp_path, target, cut):
    path, data = target
    jpath = tmp_path / 'j'
    _edit(path, jpath, EDITS)
    raw = jpath.read_bytes()
    # The last record loses its tail: as if the crash came while the
    # journal was written, before its record was applied to the file.
    last = len(raw) - journalmod.RECORD.size - len(EDITS[-1][1])
    jpath.write_bytes(raw[:last + min(cut, len(raw) - last - 1)])
    off, new = EDITS[-1]
    with open(path, 'r+b') as f:
        f.seek(off)
        f.write(data[off:off + len(new)])
    assert journalmod.revert(str(path), str(jpath)) == len(EDITS) - 1
    assert path.read_bytes() == data


def test_a_record_with_a_bad_crc_ends_the_replay(tmp_path, target):
    path, data = target
    jpath = tmp_path / 'j'
    _edit(path, jpath, EDITS[:1])
    raw = bytearray(jpath.read_bytes())
    raw[-1] ^= 0xFF
    jpath.write_bytes(bytes(raw))
    assert journalmod.revert(str(path), str(jpath)) == 0


def test_interrupted_journal_writing_leaves_the_file_revertable(
        tmp_path, monkeypatch):
    """A crash while the journal is written (before it is sealed) leaves
    the file untouched, and a way on: revert, or no journal at all."""
    path = tmp_path / 'd.vhd'
    ops.create(str(path), 4 * MiB)
    vc.write_runs(path, [(0, b'\x01' * (2 * MiB)), (2 * MiB, b'\x02' * 512)])
    digest = vc.sha(path)
    orig = path.read_bytes()
    jpath = tmp_path / 'j'
    real = os.write
    calls, fail_at = [0], [None]

    def write(fd, data):
        calls[0] += 1
        if calls[0] == fail_at[0]:
            raise Interrupted()
        return real(fd, data)
    monkeypatch.setattr(journalmod.os, 'write', write)
    resizemod.resize(str(path), 600 * MiB, str(jpath))
    total = calls[0]
    assert total >= 2
    for n in range(1, total + 1):
        path.write_bytes(orig)
        calls[0], fail_at[0] = 0, n
        with pytest.raises(Interrupted):
            resizemod.resize(str(path), 600 * MiB, str(jpath))
        assert vc.sha(path) == digest
        # Either no journal was left, or one that revert accepts: never
        # one that blocks every later resize and that revert refuses.
        if jpath.exists():
            journalmod.revert(str(path), str(jpath))
        assert vc.sha(path) == digest
        assert not jpath.exists()
    fail_at[0] = None
    resizemod.resize(str(path), 600 * MiB, str(jpath))
    assert vc.listing(tmp_path) == ['d.vhd']


def test_an_interrupted_revert_can_be_run_again(tmp_path, target,
                                                monkeypatch):
    path, data = target
    jpath = tmp_path / 'j'
    real = os.pwrite
    for n in range(1, len(EDITS) + 1):
        _edit(path, jpath, EDITS, extend=100)
        calls = [0]

        def pwrite(fd, buf, offset):
            calls[0] += 1
            if calls[0] == n:
                real(fd, bytes(buf)[:len(buf) // 2], offset)
                raise Interrupted()
            return real(fd, buf, offset)
        monkeypatch.setattr(journalmod.os, 'pwrite', pwrite)
        with pytest.raises(Interrupted):
            journalmod.revert(str(path), str(jpath))
        monkeypatch.undo()
        assert jpath.exists()
        journalmod.revert(str(path), str(jpath))
        assert path.read_bytes() == data
        assert not jpath.exists()


def _journal_bytes(size=64 * KiB):
    return journalmod.HEAD.pack(journalmod.MAGIC, size, zlib.crc32(
        journalmod.MAGIC + size.to_bytes(8, 'big')))


@pytest.mark.parametrize('content,field', [
    (b'', None),
    (b'short', None),
    (b'x' * 100, 'header'),
    (b'xnfsjrn2' + _journal_bytes()[8:], 'header'),
    (_journal_bytes()[:-8] + struct.pack('>I', 1) + bytes(4), 'header'),
])
def test_revert_refuses_what_is_not_a_journal(tmp_path, target, content,
                                              field):
    path, data = target
    jpath = tmp_path / 'j'
    jpath.write_bytes(content)
    with pytest.raises(errors.VhdError) as info:
        journalmod.revert(str(path), str(jpath))
    text = str(info.value)
    assert '\n' not in text and text.startswith(str(jpath) + ': ')
    if field:
        assert info.value.field == field
    assert path.read_bytes() == data
    assert jpath.read_bytes() == content


def test_revert_without_a_journal(tmp_path, target):
    path, data = target
    with pytest.raises(errors.VhdError) as info:
        journalmod.revert(str(path), str(tmp_path / 'missing.journal'))
    assert '\n' not in str(info.value)
    assert str(tmp_path / 'missing.journal') in str(info.value)
    assert path.read_bytes() == data


def test_revert_of_a_missing_file(tmp_path, target):
    path, data = target
    jpath = tmp_path / 'j'
    _edit(path, jpath, EDITS)
    before = jpath.read_bytes()
    with pytest.raises(errors.VhdError) as info:
        journalmod.revert(str(tmp_path / 'gone'), str(jpath))
    assert '\n' not in str(info.value)
    assert jpath.read_bytes() == before         # kept for a later try


def test_a_journal_with_no_records_restores_the_size(tmp_path, target):
    path, data = target
    jpath = tmp_path / 'j'
    jpath.write_bytes(_journal_bytes(len(data)))
    with open(path, 'ab') as f:
        f.write(b'grown')
    assert journalmod.revert(str(path), str(jpath)) == 0
    assert path.read_bytes() == data
