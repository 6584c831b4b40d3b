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
"""The short fuzz run CI does, and the tests of the fuzzer itself.

Hypothesis mutates the corpus (see mutate for the operations) and feeds
raw bytes; every example goes through harness.run_one under a time limit
and a bound on the Python heap. The run is derandomized, so CI runs the
same examples every time; XENAPINFS_FUZZ_EXAMPLES sets how many (300 by
default, a few seconds). The long run is ``python -m tests.fuzz.run``.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import pathlib
import subprocess
import sys
import time
import tracemalloc

from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest

from tests.fuzz import corpus
from tests.fuzz import harness
from tests.fuzz import mutate
from tests.fuzz import run as runner
from xenapinfs_driver.vhd import compose
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import stream
from xenapinfs_driver.vhd import tgz

EXAMPLES = int(os.environ.get('XENAPINFS_FUZZ_EXAMPLES', '300'))
# An input takes milliseconds: seconds mean a hang (or a machine so busy
# that the run should be repeated).
DEADLINE = datetime.timedelta(seconds=2)
HANG = 10.0
# The Python heap one input may use: the inflater's queue (8 MiB), a BAT of
# a seed (KiB) and a block; anything near this is an amplification.
HEAP_BOUND = 64 << 20
ROOT = pathlib.Path(__file__).resolve().parents[2]
SEEDS = corpus.seeds()

FUZZ = settings(max_examples=EXAMPLES, deadline=DEADLINE, derandomize=True,
                database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def _run_bounded(data: bytes) -> str:
    """run_one, failing on a hang or on a heap peak over HEAP_BOUND."""
    tracemalloc.start()
    try:
        with harness.time_limit(HANG):
            outcome = harness.run_one(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < HEAP_BOUND, 'heap peak %d bytes' % peak
    return outcome


# -- the corpus ---------------------------------------------------------------

@pytest.mark.parametrize('seed', SEEDS, ids=[s.name for s in SEEDS])
def test_seed_is_what_it_claims(seed, tmp_path):
    # A corpus that the library refuses outright would only fuzz the first
    # checks: each valid seed must convert to the disk it was built from.
    data = corpus.wrap(seed.raw, seed.wrap)
    src = tmp_path / 'seed'
    src.write_bytes(data)
    if not seed.valid:
        with pytest.raises(errors.VhdError):
            tgz.convert(str(src), str(tmp_path / 'disk'))
        return
    tgz.convert(str(src), str(tmp_path / 'disk'))
    assert (tmp_path / 'disk').read_bytes() == seed.disk
    assert harness.run_one(data).startswith('ok ')
    assert len(data) <= 256 << 10          # small, for a fast run


def test_corpus_is_deterministic():
    # Inputs are reproduced from (seed, index): the corpus must not depend
    # on the clock or on a random source.
    corpus.seeds.cache_clear()
    again = corpus.seeds()
    assert [s.raw for s in again] == [s.raw for s in SEEDS]
    assert mutate.case_bytes(mutate.case_for(5, 77)) == \
        mutate.case_bytes(mutate.case_for(5, 77))


# -- the short run -----------------------------------------------------------

_pos = st.integers(min_value=0, max_value=1 << 20)
_index = st.integers(min_value=0, max_value=1 << 16)
_byte = st.integers(min_value=0, max_value=255)
_OP = st.one_of(
    st.tuples(st.just('field'), _index, _index),
    st.tuples(st.just('fieldflip'), _index, _index),
    st.tuples(st.just('near'), _index, st.integers(-32, 32), _byte),
    st.tuples(st.just('flip'), _pos, st.integers(0, 7)),
    st.tuples(st.just('set'), _pos, _byte),
    st.tuples(st.just('trunc'), _pos),
    st.tuples(st.just('insert'), _pos, st.binary(min_size=1, max_size=600)),
    st.tuples(st.just('delete'), _pos, st.integers(1, 2048)),
    st.tuples(st.just('copy'), _pos, _pos, st.integers(1, 2048)),
    st.tuples(st.just('splice'), _index, _pos, _pos),
    st.just(('seal',)))
_ZOP = st.one_of(
    st.tuples(st.just('flip'), _pos, st.integers(0, 7)),
    st.tuples(st.just('trunc'), _pos),
    st.tuples(st.just('insert'), _pos, st.binary(min_size=1, max_size=64)))
CASES = st.builds(
    mutate.Case,
    seed=st.integers(0, len(SEEDS) - 1),
    ops=st.lists(_OP, max_size=6).map(tuple),
    wrap=st.none() | st.sampled_from(corpus.WRAPS),
    zops=st.lists(_ZOP, max_size=2).map(tuple))


@FUZZ
@given(case=CASES)
def test_mutated_corpus(case):
    _run_bounded(mutate.case_bytes(case))


@FUZZ
@given(prefix=st.sampled_from((b'', b'\x1f\x8b', b'\x1f\x8b\x08\x00',
                               b'conectix', b'ustar')),
       body=st.binary(max_size=4096), gz=st.booleans())
def test_raw_bytes(prefix, body, gz):
    data = prefix + body
    _run_bounded(corpus.gzip_member(data) if gz else data)


# -- what the fuzzer found ---------------------------------------------------

def _case(seed_name, *writes) -> bytes:
    """The seed with (field label, value) written and resealed."""
    index = [s.name for s in SEEDS].index(seed_name)
    fields = SEEDS[index].fields
    ops = []
    for label, value in writes:
        f = next(i for i, f in enumerate(fields) if f.label == label)
        ops.append(('field', f, fields[f].values.index(value)))
    return mutate.case_bytes(mutate.Case(index, tuple(ops) + (('seal',),)))


REGRESSIONS = {
    # ops.parent_path read a parent locator wherever its offset said:
    # os.pread raised OverflowError (>= 2**63) or OSError (EINVAL).
    'locator offset 2**64-2': _case(
        'vhd-differencing', ('locator 0 data offset', b'\xff' * 7 + b'\xfe')),
    'locator offset 2**63-1': _case(
        'vhd-differencing', ('locator 1 data offset', b'\x7f' + b'\xff' * 7),
        ('locator 0 data offset', b'\x7f' + b'\xff' * 7),
        ('locator 2 data offset', b'\x7f' + b'\xff' * 7)),
}


@pytest.mark.parametrize('data', REGRESSIONS.values(), ids=REGRESSIONS)
def test_found_by_fuzzing(data):
    _run_bounded(data)


@pytest.mark.parametrize('zlib_name', harness.inflaters())
@pytest.mark.parametrize('how', ['pipe', 'second member across a read'])
def test_gzip_header_crc_split(how, zlib_name, tmp_path, monkeypatch):
    # Found as "file and pipe disagree": isal 1.9 refuses a gzip member
    # whose FHCRC-protected header is split between two decompress()
    # calls ("Incorrect checksum"), which is what a pipe gives (the first
    # piece is the 2 bytes peeked at) and what a concatenated member
    # straddling a read gives. Valid input must not depend on that.
    seed = next(s for s in SEEDS if s.name == 'tgz-2-random-order')
    first = corpus.gzip_member(seed.raw[:4096], 6, flags=2 | 8)
    data = first + corpus.gzip_member(seed.raw[4096:], 6, flags=2 | 8)
    src = tmp_path / 'img.tgz'
    src.write_bytes(data)
    if how == 'pipe':
        with open(src, 'rb') as f:
            monkeypatch.setattr(sys, 'stdin', io.TextIOWrapper(f))
            result = tgz.inspect('-', zlib_name=zlib_name)
            sys.stdin.detach()
    else:
        # Reads end 5 bytes into the second member's 12-byte header.
        monkeypatch.setattr(stream, 'READ_SIZE', len(first) + 5)
        result = tgz.inspect(str(src), zlib_name=zlib_name)
    assert result.virtual_size == 48 << 10


# -- the harness and the runner can fail -------------------------------------

def _valid_input(name='tgz-2-random-order'):
    seed = next(s for s in SEEDS if s.name == name)
    return corpus.wrap(seed.raw, seed.wrap)


@pytest.mark.parametrize('damage, raises', [
    ('crash', ValueError), ('no source', harness.Bug),
    ('two lines', harness.Bug), ('leftover', harness.Bug),
    ('modifies input', harness.Bug), ('disagree', harness.Bug),
    ('hang', harness.Hang), ('no zero fill', harness.Bug),
    ('pipe differs', harness.Bug), ('random access differs', harness.Bug)])
def test_harness_flags(damage, raises, monkeypatch):
    # Each property the harness checks, broken on purpose in a wrapper
    # around the library: the harness must report it.
    real_inspect, real_convert = tgz.inspect, tgz.convert

    def inspect(path, **kw):
        if damage == 'crash':
            raise ValueError('a bug')
        if damage == 'no source':
            raise errors.InvalidFooter('bad')
        if damage == 'two lines':
            raise errors.InvalidFooter('bad\nline', source=path)
        if damage == 'disagree' or damage == 'pipe differs' and path == '-':
            raise errors.InvalidFooter('bad', source=path)
        if damage == 'hang':
            time.sleep(30)
        return real_inspect(path, **kw)

    def convert(path, dest, **kw):
        result = real_convert(path, dest, **kw)
        if damage == 'leftover':
            open(dest + '.part', 'w').close()
        if damage == 'modifies input':
            with open(path, 'ab') as f:
                f.write(b'x')
        return result

    monkeypatch.setattr(tgz, 'inspect', inspect)
    monkeypatch.setattr(tgz, 'convert', convert)
    if damage == 'no zero fill':
        monkeypatch.setattr(compose.Composer, 'zero_fill', lambda *a: None)
    if damage == 'random access differs':
        monkeypatch.setattr(image.VhdFile, 'read_block',
                            lambda self, idx: bytes(self.block_size))
    data = _valid_input('vhd-dynamic' if damage == 'random access differs'
                        else 'tgz-2-random-order')
    with pytest.raises(raises):
        with harness.time_limit(1.0):
            harness.run_one(data)


def _long_run(tmp_path, *args, env=None):
    out = tmp_path / 'summary.json'
    proc = subprocess.run(
        [sys.executable, '-m', 'tests.fuzz.run', '--failures',
         str(tmp_path / 'failures'), '--json', str(out), *args],
        cwd=ROOT, env=dict(os.environ, **(env or {})), capture_output=True,
        text=True, timeout=120)
    return proc, json.loads(out.read_text())


def test_long_runner_clean(tmp_path):
    proc, summary = _long_run(tmp_path, '--inputs', '40', '--seed', '1')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert summary['inputs'] == 40 and summary['bugs'] == []
    assert 0 < summary['peak_rss_mib'] < summary['rss_bound_mib']


def test_long_runner_reports_bugs(tmp_path):
    # A hang, a memory hog, a crash and an exception on purpose: each must
    # be caught, saved for replay, and make the run fail; the other
    # inputs still run.
    proc, summary = _long_run(
        tmp_path, '--inputs', '12', '--timeout', '2', '--rss-mb', '200',
        env={runner.INJECT_ENV: 'hang@2,memory@4,crash@6,error@8'})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert summary['inputs'] == 12
    found = {(b['kind'], b['index']) for b in summary['bugs']}
    assert found == {('hang', 2), ('memory', 4), ('crash', 6),
                     ('exception', 8)}
    saved = sorted(p.name for p in (tmp_path / 'failures').iterdir())
    assert 'exception-0-8.bin' in saved and 'exception-0-8.txt' in saved
    replay = subprocess.run(
        [sys.executable, '-m', 'tests.fuzz.run', '--replay',
         str(tmp_path / 'failures' / 'hang-0-2.bin')], cwd=ROOT,
        capture_output=True, text=True, timeout=60)
    # The input itself is fine: the hang was injected.
    assert replay.returncode == 0, replay.stdout + replay.stderr
