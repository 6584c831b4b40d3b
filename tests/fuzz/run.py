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
"""The long fuzz run, in child processes with a memory and a time bound.

    nice .venv/bin/python -m tests.fuzz.run --inputs 100000

Input i of a run is mutate.case_for(seed, i): a run is reproduced from its
seed. Each worker process sets RLIMIT_AS, takes one input at a time and
reports its outcome and its peak RSS. An input is a bug when it raises
anything but a VhdError or breaks a harness check (harness.Bug), when the
worker's peak RSS passes --rss-mb, when the worker does not answer within
--timeout seconds (a hang: it is killed, which also stops a loop in C
code) or when the worker dies (a crash). Each bug is saved to --failures
as <kind>-<seed>-<index>.bin (the input) and .txt (what happened); replay
one with ``--replay FILE``. The exit status is 1 if there was any bug.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import multiprocessing.connection
import os
import resource
import sys
import time
import traceback

INJECT_ENV = 'XENAPINFS_FUZZ_INJECT'


def _peak_rss_kib() -> int:
    """This process's peak RSS in KiB.

    VmHWM where there is /proc: ru_maxrss is carried over from the parent
    through fork and exec on Linux, so it would report the parent's.
    """
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _injected(index: int, rss_mb: int) -> None:
    """Bugs on purpose, for the runner's own test: 'kind@index,...'."""
    for item in filter(None, os.environ.get(INJECT_ENV, '').split(',')):
        kind, _, at = item.partition('@')
        if int(at) != index:
            continue
        if kind == 'hang':
            time.sleep(3600)
        elif kind == 'memory':
            hog = bytearray((rss_mb + 64) << 20)
            hog[::4096] = b'x' * len(hog[::4096])   # make it resident
        elif kind == 'crash':
            os.abort()
        elif kind == 'error':
            raise ValueError('injected')


def _worker(conn, seed: int, as_mb: int, rss_mb: int) -> None:
    """Run inputs as the parent hands them out, until told to stop."""
    if as_mb:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (as_mb << 20, hard))
    from tests.fuzz import harness
    from tests.fuzz import mutate
    while True:
        index = conn.recv()
        if index is None:
            return
        try:
            _injected(index, rss_mb)
            data = mutate.case_bytes(mutate.case_for(seed, index))
            outcome = harness.run_one(data)
        except BaseException as exc:
            kind = 'harness' if isinstance(exc, harness.Bug) else 'exception'
            conn.send(('bug', index, kind, traceback.format_exc(),
                       _peak_rss_kib()))
            return      # a fresh process for what follows
        rss = _peak_rss_kib()
        if rss > rss_mb << 10:
            conn.send(('bug', index, 'memory', 'peak RSS %d MiB is over the '
                       'bound of %d MiB' % (rss >> 10, rss_mb), rss))
            return
        conn.send(('done', index, outcome, rss))


class _Slot:
    """One worker process and the input it is on."""

    def __init__(self, ctx, args):
        self.parent_end, child_end = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, daemon=True, args=(
            child_end, args.seed, args.as_mb, args.rss_mb))
        self.proc.start()
        child_end.close()
        self.index = None
        self.deadline = None

    def give(self, index: int, timeout: float) -> None:
        self.index = index
        self.deadline = time.monotonic() + timeout
        self.parent_end.send(index)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.parent_end.send(None)
            except OSError:
                pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.parent_end.close()


def _save(args, kind: str, index: int, text: str) -> str:
    from tests.fuzz import mutate
    os.makedirs(args.failures, exist_ok=True)
    stem = os.path.join(args.failures, '%s-%d-%d' % (kind, args.seed, index))
    case = mutate.case_for(args.seed, index)
    with open(stem + '.bin', 'wb') as f:
        f.write(mutate.case_bytes(case))
    with open(stem + '.txt', 'w') as f:
        f.write('%s on input %d of seed %d\n%s\n\n%s\n' % (
            kind, index, args.seed, case.describe(), text))
    return stem + '.bin'


def run(args) -> dict:
    # Fewer malloc arenas: each reserves 64 MiB of address space, which
    # RLIMIT_AS counts although it is never touched.
    os.environ.setdefault('MALLOC_ARENA_MAX', '2')
    ctx = multiprocessing.get_context('spawn')
    start = time.monotonic()
    stop_at = start + args.seconds if args.seconds else None
    total = args.inputs
    outcomes = collections.Counter()
    bugs = []
    peak_kib = 0
    next_index = 0
    done = 0
    restarts = 0
    last_report = start
    slots = [_Slot(ctx, args) for _ in range(args.jobs)]

    def more() -> bool:
        return next_index < total and (
            stop_at is None or time.monotonic() < stop_at)

    def bug(kind, index, text):
        path = _save(args, kind, index, text)
        bugs.append({'kind': kind, 'index': index, 'file': path})
        print('BUG %s on input %d: saved %s' % (kind, index, path),
              file=sys.stderr, flush=True)

    try:
        for slot in slots:
            if more():
                slot.give(next_index, args.timeout)
                next_index += 1
        while any(s.index is not None for s in slots):
            busy = [s for s in slots if s.index is not None]
            wait = max(0.0, min(s.deadline for s in busy) - time.monotonic())
            ready = multiprocessing.connection.wait(
                [s.parent_end for s in busy], timeout=wait)
            now = time.monotonic()
            for i, slot in enumerate(slots):
                if slot.index is None:
                    continue
                fresh = False
                if slot.parent_end in ready:
                    try:
                        msg = slot.parent_end.recv()
                    except (EOFError, OSError):
                        slot.proc.join(5)
                        bug('crash', slot.index, 'the worker died (exit '
                            'status %s)' % slot.proc.exitcode)
                        fresh = True
                    else:
                        peak_kib = max(peak_kib, msg[-1])
                        if msg[0] == 'done':
                            outcomes[msg[2]] += 1
                        else:
                            bug(msg[2], msg[1], msg[3])
                            fresh = True
                elif now >= slot.deadline:
                    bug('hang', slot.index, 'no answer within %.1f s'
                        % args.timeout)
                    slot.stop(kill=True)
                    fresh = True
                else:
                    continue
                done += 1
                slot.index = None
                if fresh:
                    slot.stop(kill=True)
                    restarts += 1
                    slot = slots[i] = _Slot(ctx, args)
                if more():
                    slot.give(next_index, args.timeout)
                    next_index += 1
            if now - last_report >= args.report_every:
                last_report = now
                print('%d/%d inputs, %.1f s, %.0f inputs/s, %d bugs, peak '
                      'RSS %d MiB' % (done, total, now - start,
                                      done / (now - start), len(bugs),
                                      peak_kib >> 10), flush=True)
    finally:
        for slot in slots:
            slot.stop(kill=slot.index is not None)
    elapsed = time.monotonic() - start
    return {
        'seed': args.seed, 'inputs': done, 'seconds': round(elapsed, 1),
        'inputs_per_second': round(done / elapsed, 1) if elapsed else 0,
        'peak_rss_mib': round(peak_kib / 1024, 1),
        'rss_bound_mib': args.rss_mb, 'address_space_mib': args.as_mb,
        'timeout_s': args.timeout, 'jobs': args.jobs,
        'worker_restarts': restarts, 'bugs': bugs,
        'outcomes': dict(outcomes.most_common())}


def replay(paths) -> int:
    from tests.fuzz import harness
    status = 0
    for path in paths:
        with open(path, 'rb') as f:
            data = f.read()
        try:
            print('%s: %s' % (path, harness.run_one(data)))
        except BaseException:
            status = 1
            print('%s: BUG' % path)
            traceback.print_exc()
    return status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m tests.fuzz.run', description=__doc__.split('\n')[0])
    parser.add_argument('--inputs', type=int, default=100000,
                        help='inputs to run (default 100000)')
    parser.add_argument('--seconds', type=float, default=0,
                        help='stop after this long, even if fewer inputs')
    parser.add_argument('--seed', type=int, default=0,
                        help='the run: input i is case_for(seed, i)')
    parser.add_argument('--rss-mb', type=int, default=256,
                        help='peak RSS bound of a worker (default 256)')
    parser.add_argument('--as-mb', type=int, default=1024,
                        help='RLIMIT_AS of a worker, 0 for none '
                        '(default 1024)')
    parser.add_argument('--timeout', type=float, default=10.0,
                        help='seconds an input may take (default 10)')
    parser.add_argument('--jobs', type=int, default=1,
                        help='worker processes (default 1)')
    parser.add_argument('--failures', default='fuzz-failures',
                        help='where bugs are saved (default '
                        './fuzz-failures)')
    parser.add_argument('--report-every', type=float, default=30.0,
                        help='seconds between progress lines')
    parser.add_argument('--json', help='also write the summary here')
    parser.add_argument('--replay', nargs='+', metavar='FILE',
                        help='run saved inputs in this process and stop')
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    summary = run(args)
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        with open(args.json, 'w') as f:
            f.write(text + '\n')
    print('%d inputs in %.1f s (%.1f/s), peak RSS %.1f MiB, %d bugs' % (
        summary['inputs'], summary['seconds'],
        summary['inputs_per_second'], summary['peak_rss_mib'],
        len(summary['bugs'])))
    return 1 if summary['bugs'] else 0


if __name__ == '__main__':
    sys.exit(main())
