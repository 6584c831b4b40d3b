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
"""How the demo talks: numbered steps, ``$ command`` and its output, checks.

Every command is shown as a user would type it in the demo's work
directory (a bare program name: the console scripts are looked up beside
this interpreter, as they would be on the PATH of an activated venv), then
its real output. Huge property tables may be trimmed to the rows that
matter; the rows shown are the command's own lines.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time

BIN_DIR = os.path.dirname(sys.executable)
# debugfs prints its version on stderr at every run: noise in a walkthrough.
_DEBUGFS_BANNER = re.compile(r'^debugfs \d[\d.]* \(.*\)$')


class DemoError(Exception):
    """A step could not be done; the walk stops and reports FAIL."""


def program(name: str) -> str:
    """The venv's console script of that name, else the PATH's."""
    path = os.path.join(BIN_DIR, name)
    return path if os.access(path, os.X_OK) else name


class Walk:
    """The numbered steps, their timings and the checks made on the way."""

    def __init__(self, titles: list):
        self.titles = titles
        self.current = 0
        self.started = time.monotonic()
        self._step_started = None
        self.timings: list = []          # (title, seconds)
        self.checks: list = []           # (what, ok, detail)

    def step(self, why: str) -> None:
        """Start the next step: its number, title and one-line reason."""
        self._end_step()
        self.current += 1
        title = self.titles[self.current - 1]
        print('\n== %d/%d  %s' % (self.current, len(self.titles), title))
        print('   %s\n' % why)
        self._step_started = time.monotonic()

    def _end_step(self) -> None:
        if self._step_started is not None:
            self.timings.append((self.titles[self.current - 1],
                                 time.monotonic() - self._step_started))
            self._step_started = None

    def check(self, what: str, ok: bool, detail: str = '') -> bool:
        """Record a check, and say at once how it went."""
        self.checks.append((what, bool(ok), detail))
        print('%s %s%s' % ('  [ok]  ' if ok else '  [FAIL]', what,
                           ': ' + detail if detail else ''))
        return bool(ok)

    def summary(self, error: BaseException | None = None) -> bool:
        """Print the verdict; True when every check passed and the walk
        ended."""
        self._end_step()
        passed = error is None and self.current == len(self.titles) and \
            all(ok for _, ok, _ in self.checks)
        print('\n== Summary: %s\n' % ('PASS' if passed else 'FAIL'))
        for what, ok, detail in self.checks:
            print('  %s %s%s' % ('[ok]  ' if ok else '[FAIL]', what,
                                 ' (%s)' % detail if detail else ''))
        if error is not None:
            print('  [FAIL] step %d (%s) did not finish: %s'
                  % (self.current, self.titles[self.current - 1]
                     if self.current else 'start', error))
        print('\n  time per step:')
        for title, seconds in self.timings:
            print('    %6.1f s  %s' % (seconds, title))
        print('    %6.1f s  in all' % (time.monotonic() - self.started))
        return passed


def note(text: str) -> None:
    """A line of explanation between commands."""
    print('# ' + text)


def _show(shown: str, out: str, fields) -> None:
    print('$ ' + shown)
    lines = [line for line in out.rstrip().splitlines()
             if not _DEBUGFS_BANNER.match(line)]
    if fields is not None:
        lines = trim_table(lines, fields)
    if lines:
        print('\n'.join(lines))


def run(argv, *, show: bool = True, check: bool = True,
        fields=None, env: dict | None = None, stdin: str | None = None,
        shown: str | None = None, cwd: str | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command, print it (``$ ...``) and its output, return it.

    :param argv: a list, or a string for ``sh -c`` (pipes, redirections).
    :param fields: show only these rows of a property table.
    :param env: variables to add (the caller's OS_* are dropped: the
        demo's own say everything).
    :param stdin: text fed to the command.
    :param shown: what to print instead of the command itself.
    """
    if isinstance(argv, str):
        real, text = ['sh', '-c', argv], argv
    else:
        argv = [str(a) for a in argv]
        real = [program(argv[0])] + argv[1:]
        text = shlex.join(argv)
    run_env = {k: v for k, v in os.environ.items()
               if not k.startswith(('OS_', 'CINDER_', 'GLANCE_'))}
    run_env['PATH'] = BIN_DIR + os.pathsep + run_env.get('PATH', '')
    run_env.update(env or {})
    proc = subprocess.run(real, capture_output=True, text=True, env=run_env,
                          input=stdin, cwd=cwd, timeout=timeout,
                          stdin=None if stdin is not None
                          else subprocess.DEVNULL)
    if show:
        _show(shown or text, proc.stdout + proc.stderr, fields)
    if check and proc.returncode:
        detail = '' if show else '\n' + (proc.stdout + proc.stderr).strip()
        raise DemoError('%s failed with exit status %d%s'
                        % (text.split()[0], proc.returncode, detail))
    return proc


def trim_table(lines: list, fields) -> list:
    """Keep the borders, the heading and the rows of fields of a
    ``| Property | Value |`` table (with their continuation lines)."""
    kept, keep_row, dropped, heading = [], True, 0, True
    for line in lines:
        if not line.startswith('|'):
            kept.append(line)
            continue
        name = line.split('|')[1].strip()
        if heading:                       # "| Property | Value |"
            keep_row, heading = True, False
        elif name:                        # a new row, else a continuation
            keep_row = name in fields
            dropped += not keep_row
        if keep_row:
            kept.append(line)
    if dropped:
        kept.append('(%d more rows not shown)' % dropped)
    return kept


def table_field(text: str, name: str) -> str:
    """A value of a ``| Property | Value |`` table."""
    match = re.search(r'^\|\s*%s\s*\|\s*(.*?)\s*\|$' % re.escape(name),
                      text, re.M)
    if not match:
        raise DemoError('no %s in:\n%s' % (name, text))
    return match.group(1)
