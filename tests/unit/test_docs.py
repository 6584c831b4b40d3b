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
"""The operator documentation: it parses, and what it shows runs as shown.

1. Every ``.rst`` under ``doc/`` parses with docutils without a warning.
   Sphinx's ``toctree`` directive and ``doc`` role get stand-ins here that
   check their targets exist, so the pages stay Sphinx pages.
2. Every console command (``$ ...``) in ``doc/`` runs, block by block, in a
   fresh temporary directory holding the files the block names (built in
   code from ``tests/vhd_factory.py``), with this interpreter's ``bin``
   first in ``PATH``. It must exit 0; the output the page shows under it,
   if any, must be what it prints (stdout and stderr as a terminal shows
   them; a ``...`` line stands for any lines, ``...`` inside a line for
   any text). A page shows a failure as ``cmd; echo "exit status $?"``.
   ``README.rst``'s literal blocks are run the same way for their
   ``xenapinfs-vhd``, ``vhd-util`` and ``qemu-img`` lines (output not
   compared: they have no prompt to tell it apart).
   ``xenapinfs-xapi-server`` runs until its block ends.
   What cannot run here is in ``SKIP``, each rule with its reason; a rule
   no page uses any more fails the test, and so does a page line that no
   rule covers and that this test does not run.
3. ``>>>`` examples are run as doctests in the same kind of directory.
4. ``.. code-block:: ini`` examples use only options that exist, with
   values their types accept (cinder's and ours for cinder.conf, glance's
   for a block with an ``[image_format]`` section).

``python -m tests.unit.test_docs DIR`` lays the files out in DIR, to try a
new example by hand.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import doctest
import functools
import inspect
import json
import os
import pathlib
import random
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading

import docutils.core
import docutils.nodes
import docutils.parsers.rst
from docutils.parsers.rst import directives
from docutils.parsers.rst import roles
import pytest

from tests import vhd_factory as vf
from xenapinfs_driver import vhd
from xenapinfs_driver.vhd import writer

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / 'doc'
SOURCE = DOC / 'source'
README = ROOT / 'README.rst'
BIN = os.path.dirname(sys.executable)
MiB = vf.MiB

# The programs whose lines this test runs. The first three are the point;
# the rest are the shell steps around them that the pages show.
RUN = {'xenapinfs-vhd', 'vhd-util', 'qemu-img', 'xenapinfs-xapi-server',
       'oslo-config-generator', 'cd', 'mkdir', 'tar', 'cmp', 'echo',
       'openssl', 'rm'}
EXTERNAL = ('qemu-img', 'openssl')      # not from pip: skip when missing
README_PROGRAMS = ('xenapinfs-vhd', 'vhd-util', 'qemu-img')

# The pages' cinder and glance lines are the ones the e2e tier runs: the
# check below wants each of their subcommands, options and format values
# quoted in one of these files.
E2E = (
    # test_xenserver_image_snapshot_upload_and_back: glance image-create
    # ovf/vhd, cinder create --image-id, upload-to-image ovf/vhd, glance
    # image-download; test_other_formats: glance image-create qcow2/bare.
    'tests/e2e/test_driver_e2e.py',
    # test_glance_takes_xenserver_images_by_default: image-create ovf/vhd
    # and bare/vhd, and the 415 of a fixed VHD as bare/vhd.
    'tests/e2e/test_stack.py',
    # make demo, run by tests/e2e/test_demo.py: cinder create --image-id
    # --name, upload-to-image, glance image-create, image-download --file.
    'tools/demo.py')

# Lines that cannot run here: (pattern, reason). Keep it short.
SKIP = [
    (r'^(glance|cinder) ',
     'needs running glance and cinder services; run by the e2e tier: '
     + ', '.join(E2E)),
    (r'/dev/(?!null\b)', 'writes a block device'),
    (r'^make ', 'the test tiers and the demo themselves'),
    (r'^(pip|unzip) ', 'needs PyPI (the network)'),
    (r'^(ssh|scp) ', 'runs on a XenServer host'),
    (r'^openssl s_client ', 'needs a XenServer host'),
]

TIMEOUT = 60


# -- the files the pages name ------------------------------------------------

def _pattern(text: str, n: int = vf.BS) -> bytes:
    t = text.encode()
    return (t * (n // len(t) + 1))[:n]


def _chain() -> list:
    """A XenServer chain, newest first: 64 MiB over 64 MiB over 32 MiB.

    The data is text, so that the tar.gz stays small; unique ids come
    from a fixed seed, so that the pages can show them.
    """
    specs = [
        vf.LayerSpec(64 * MiB, {
            0: (set(range(8, 16)), _pattern('leaf: written last ')),
            31: (set(range(4000, 4096)), _pattern('leaf tail '))}),
        vf.LayerSpec(64 * MiB, {
            1: (set(range(128)), _pattern('snapshot layer ')),
            20: (None, _pattern('snapshot block 20 '))}),
        vf.LayerSpec(32 * MiB, {
            i: (None, _pattern('base layer block %d ' % i))
            for i in range(4)}),
    ]
    return vf.build_chain(specs, rnd=random.Random(2013))


def _export_tgz(path):
    vf.xenserver_tgz(path, _chain())


def _image_tgz(path):
    # As glance keeps one: members without "./".
    vf.xenserver_tgz(path, _chain(), prefix='', directories=())


def _disk_raw(path):
    with open(path, 'wb') as f:
        f.truncate(32 * MiB)
        for off, text in ((0, 'boot sector '), (5 * MiB, 'file system '),
                          (31 * MiB, 'last blocks ')):
            f.seek(off)
            f.write(_pattern(text, 64 << 10))


def _disk_qcow2(path):
    raw = path + '.raw'
    _disk_raw(raw)
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw,
                    path], check=True, capture_output=True)
    os.unlink(raw)


def _base_vhd(path):
    spec = vf.LayerSpec(16 * MiB, {0: (None, _pattern('a single VHD ')),
                                   5: (set(range(64)), _pattern('more '))})
    with open(path, 'wb') as f:
        f.write(vf.build_chain([spec], rnd=random.Random(6))[0])


def _fixed_vhd(path):
    data = bytearray(8 * MiB)
    data[:64 << 10] = _pattern('a fixed VHD ', 64 << 10)
    with open(path, 'wb') as f:
        writer.write_fixed(f, bytes(data))


def _mismatched_tgz(path):
    # The leaf of another disk over this chain's parents.
    other = vf.build_chain(
        [vf.LayerSpec(64 * MiB, {0: (None, _pattern('another disk '))}),
         vf.LayerSpec(64 * MiB, {})], rnd=random.Random(99))
    vf.xenserver_tgz(path, [other[0]] + _chain()[1:])


def _gap_tgz(path):
    files = _chain()
    vf.make_tar(path, [('./0.vhd', files[0]), ('./2.vhd', files[2])])


def _broken_tgz(path):
    # 1.vhd's BAT entry 3 points into the BAT itself.
    files = _chain()
    layer = bytearray(files[1])
    table = struct.unpack_from('>Q', layer, 512 + 16)[0]
    struct.pack_into('>I', layer, table + 4 * 3, table // 512)
    vf.xenserver_tgz(path, [files[0], bytes(layer), files[2]])


def _truncated_tgz(path):
    _export_tgz(path)
    with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)


FIXTURES = {
    'export.tgz': _export_tgz,
    'image.tgz': _image_tgz,
    'disk.raw': _disk_raw,
    'disk.qcow2': _disk_qcow2,
    'base.vhd': _base_vhd,
    'fixed.vhd': _fixed_vhd,
    'mismatched.tgz': _mismatched_tgz,
    'gap.tgz': _gap_tgz,
    'broken.tgz': _broken_tgz,
    'truncated.tgz': _truncated_tgz,
}


_MADE = {}
_MADE_LOCK = threading.Lock()
_STORE = []


def _made(name):
    """The path of a fixture built once for the whole run."""
    with _MADE_LOCK:
        if name not in _MADE:
            if not _STORE:
                _STORE.append(tempfile.TemporaryDirectory(
                    prefix='docs-fixtures-'))
                atexit.register(_STORE[0].cleanup)
            _MADE[name] = os.path.join(_STORE[0].name, name)
            FIXTURES[name](_MADE[name])
        return _MADE[name]


def prepare(directory, text: str) -> None:
    """Write into directory the fixtures that text names."""
    for name, make in FIXTURES.items():
        if not re.search(r'(?<![\w.-])%s(?![\w-])' % re.escape(name),
                         text):
            continue
        target = os.path.join(directory, name)
        if name == 'disk.raw':
            make(target)        # cheap, and sparse
        else:
            shutil.copyfile(_made(name), target)


# -- reading the pages -------------------------------------------------------

class _TocTree(docutils.parsers.rst.Directive):
    """Sphinx's ``toctree``, for docutils: its entries must be pages."""

    has_content = True
    option_spec = {'maxdepth': directives.nonnegative_int,
                   'caption': directives.unchanged}

    def run(self):
        source = pathlib.Path(self.state.document.current_source).parent
        out = []
        for entry in self.content:
            entry = entry.strip()
            if entry and not (source / (entry + '.rst')).is_file():
                out.append(self.state.document.reporter.warning(
                    'toctree entry %r is not a page' % entry,
                    line=self.lineno))
        return out


def _doc_role(name, rawtext, text, lineno, inliner, options=None,
              content=None):
    """Sphinx's ``:doc:`` role, for docutils: the target must be a page."""
    match = re.match(r'^(?:.*<)?([^<>]+?)>?$', text)
    target = match.group(1)
    source = pathlib.Path(inliner.document.current_source).parent
    messages = []
    if not (source / (target + '.rst')).is_file():
        messages.append(inliner.reporter.warning(
            ':doc: target %r is not a page' % target, line=lineno))
    return [docutils.nodes.inline(rawtext, text)], messages


directives.register_directive('toctree', _TocTree)
roles.register_local_role('doc', _doc_role)


@functools.lru_cache(maxsize=None)
def parse(path: pathlib.Path, report_level: int = 2):
    """``(doctree, warnings)``: warnings as text, level 2 and above."""
    stream = _Collect()
    doctree = docutils.core.publish_doctree(
        path.read_text(encoding='utf-8'), source_path=str(path),
        settings_overrides={'report_level': report_level,
                            'halt_level': 5, 'warning_stream': stream,
                            'syntax_highlight': 'none',
                            'file_insertion_enabled': False,
                            'raw_enabled': False})
    return doctree, stream.text


class _Collect:
    def __init__(self):
        self.parts = []

    def write(self, text):
        self.parts.append(text)

    @property
    def text(self):
        return ''.join(self.parts)


def pages():
    return sorted(DOC.rglob('*.rst'))


def literal_blocks(path, language=None):
    """The literal blocks of a page, ``(first line, text)``, optionally of
    one ``code-block`` language only."""
    doctree, _ = parse(path, report_level=5)
    lines = _Lines(path)
    for node in doctree.findall(docutils.nodes.literal_block):
        classes = node.get('classes', [])
        if language is not None and language not in classes:
            continue
        yield lines.find(node.astext()), node.astext()


def doctest_blocks(path):
    doctree, _ = parse(path, report_level=5)
    lines = _Lines(path)
    for node in doctree.findall(docutils.nodes.doctest_block):
        yield lines.find(node.astext()), node.astext()


class _Lines:
    """Line numbers of blocks, for test ids (docutils has none for a
    ``code-block``): where the block's first line next appears."""

    def __init__(self, path):
        self.lines = path.read_text(encoding='utf-8').splitlines()
        self.at = 0

    def find(self, text):
        first = text.splitlines()[0].strip() if text.strip() else ''
        for i in range(self.at, len(self.lines)):
            if self.lines[i].strip() == first:
                self.at = i + 1
                return i + 1
        return 0


class Command:
    def __init__(self, line, expected):
        self.line = line
        self.expected = expected

    @property
    def program(self):
        try:
            return shlex.split(self.line)[0]
        except (ValueError, IndexError):
            return self.line.split()[0]


def console_commands(text: str) -> list:
    """``$`` lines (joined across trailing backslashes) and what follows
    each up to the next prompt: the output the page shows."""
    commands = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith('$ '):
            if commands:
                commands[-1].expected.append(line.rstrip())
            i += 1
            continue
        cmd = line[2:]
        while cmd.endswith('\\') and i + 1 < len(lines):
            i += 1
            cmd = cmd[:-1] + ' ' + lines[i].strip()
        commands.append(Command(cmd.strip(), []))
        i += 1
    for c in commands:
        while c.expected and not c.expected[-1]:
            c.expected.pop()
    return commands


def readme_commands(text: str) -> list:
    return [Command(line.split('  #')[0].strip(), [])
            for line in text.splitlines()
            if line.startswith(tuple(p + ' ' for p in README_PROGRAMS))]


def _blocks():
    """Every block with a command: ``(id, text, [Command])``."""
    out = []
    for path in pages():
        for line, text in literal_blocks(path, 'console'):
            cmds = console_commands(text)
            if cmds:
                out.append(('%s:%d' % (path.relative_to(ROOT), line), text,
                            cmds))
    for line, text in literal_blocks(README):
        cmds = readme_commands(text)
        if cmds:
            out.append(('README.rst:%d' % line, text, cmds))
    return out


BLOCKS = _blocks()


def skip_reason(command: Command):
    for pattern, reason in SKIP:
        if re.search(pattern, command.line):
            return reason
    return None


# -- running -----------------------------------------------------------------

def _env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('OS_', 'XENAPINFS_'))}
    env['PATH'] = BIN + os.pathsep + env.get('PATH', '')
    env['PYTHONUNBUFFERED'] = '1'   # what a terminal shows, in its order
    env['PYTHONWARNINGS'] = 'ignore'
    env['LC_ALL'] = 'C'
    return env


def matches(expected: list, actual: list) -> bool:
    """expected (with ``...`` wildcards) against actual output lines."""
    def line_ok(want, got):
        if '...' not in want:
            return want == got
        pattern = '.*'.join(re.escape(p) for p in want.split('...'))
        return re.fullmatch(pattern, got) is not None

    memo = {}

    def walk(i, j):
        key = (i, j)
        if key not in memo:
            if i == len(expected):
                memo[key] = j == len(actual)
            elif expected[i] == '...':
                memo[key] = any(walk(i + 1, k)
                                for k in range(j, len(actual) + 1))
            else:
                memo[key] = (j < len(actual) and
                             line_ok(expected[i], actual[j]) and
                             walk(i + 1, j + 1))
        return memo[key]
    return walk(0, 0)


class _PortInUse(Exception):
    pass


def _exited(proc):
    """Whether a server that printed nothing has ended (its stdout closes
    a moment before the kernel reports the exit)."""
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        return False
    return True


class _Server:
    """A long-running command, running until its block ends."""

    def __init__(self, command, cwd, env):
        self.command = command
        self.proc = subprocess.Popen(
            ['bash', '-c', 'exec ' + command.line], cwd=cwd, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.first = []
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()
        reader.join(TIMEOUT)

    def _read(self):
        line = self.proc.stdout.readline()
        if line:
            self.first.append(line.rstrip('\n'))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode, err


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _own_ports(commands):
    """The block's commands with each address a server listens on moved
    to a free port, wherever the block names it: blocks run side by side
    and pages show the same well-known port, which the machine may use."""
    moved = {}
    for c in commands:
        if c.program == 'xenapinfs-xapi-server':
            m = re.search(r'--listen[ =](127\.0\.0\.1):(\d+)', c.line)
            address = m and '%s:%s' % m.groups()
            if address and address not in moved:
                moved[address] = '127.0.0.1:%d' % _free_port()

    def move(line):
        for old, new in moved.items():
            line = re.sub(re.escape(old) + r'(?!\d)', new, line)
        return line
    return [Command(move(c.line), [move(e) for e in c.expected])
            for c in commands]


def run_block(text, commands, workdir, compare=True):
    """Run a block's commands in order; return a list of failures."""
    commands = _own_ports(commands)
    failures = []
    cwd = workdir
    env = _env()
    servers = []
    try:
        for c in commands:
            if skip_reason(c):
                continue
            if c.program == 'cd':
                cwd = os.path.normpath(os.path.join(cwd, c.line[3:].strip()))
                continue
            if c.program == 'xenapinfs-xapi-server' and \
                    '--help' not in c.line:
                server = _Server(c, cwd, env)
                servers.append(server)
                if not server.first and _exited(server.proc) and \
                        'Address already in use' in server.proc.stderr.read():
                    raise _PortInUse(c.line)
                if compare and c.expected and \
                        not matches(c.expected, server.first):
                    failures.append('%s\n  printed %r\n  the page shows %r'
                                    % (c.line, server.first, c.expected))
                continue
            proc = subprocess.run(
                ['bash', '-c', c.line], cwd=cwd, env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT)
            out = proc.stdout.splitlines()
            if proc.returncode:
                failures.append('%s\n  exit status %d\n%s' % (
                    c.line, proc.returncode, proc.stdout))
            elif compare and c.expected and not matches(c.expected, out):
                failures.append('%s\n  printed:\n%s\n  the page shows:\n%s'
                                % (c.line, '\n'.join(out),
                                   '\n'.join(c.expected)))
    finally:
        for server in servers:
            code, err = server.stop()
            if code != 0:
                failures.append('%s\n  ended with %d after SIGTERM:\n%s'
                                % (server.command.line, code, err))
    return failures


# -- the tests ---------------------------------------------------------------

def test_the_pages_exist():
    names = {p.name for p in SOURCE.glob('*.rst')}
    assert {'index.rst', 'install.rst', 'configuration.rst', 'images.rst',
            'commands.rst', 'limits.rst', 'troubleshooting.rst',
            'testing.rst'} <= names


@pytest.mark.parametrize('path', pages(), ids=lambda p: p.name)
def test_page_parses_without_warnings(path):
    _, warnings = parse(path)
    assert warnings == ''


def test_every_page_is_in_the_toctree():
    index = (SOURCE / 'index.rst').read_text(encoding='utf-8')
    toc = re.search(r'^\.\. toctree::\n((?:\n|   .*\n)+)', index, re.M)
    assert toc, 'index.rst has no toctree'
    entries = {e.strip() for e in toc.group(1).splitlines() if e.strip()
               and not e.strip().startswith(':')}
    assert entries == {p.stem for p in SOURCE.glob('*.rst')} - {'index'}


def test_every_console_line_runs_or_is_skipped_for_a_reason():
    unknown, used = [], set()
    for block_id, _text, commands in BLOCKS:
        for c in commands:
            reason = skip_reason(c)
            if reason:
                used.add(reason)
            elif c.program not in RUN:
                unknown.append('%s: %s' % (block_id, c.line))
    assert unknown == [], 'neither run nor in SKIP'
    stale = [reason for _p, reason in SKIP if reason not in used]
    assert stale == [], 'SKIP rules no page needs'


def test_the_skipped_cinder_and_glance_lines_are_the_e2e_tiers():
    """Each subcommand, option and format value is quoted in an e2e file."""
    corpus = ''.join((ROOT / f).read_text(encoding='utf-8') for f in E2E)
    missing = []
    for block_id, _text, commands in BLOCKS:
        for c in commands:
            if not re.match(r'^(glance|cinder) ', c.line):
                continue
            words = shlex.split(c.line)[1:]
            wanted = [words[0]] + [w for w in words if w.startswith('--')]
            for opt in ('--disk-format', '--container-format'):
                if opt in words:
                    wanted.append(words[words.index(opt) + 1])
            missing += ['%s: %s' % (c.line, w) for w in wanted
                        if "'%s'" % w not in corpus]
    assert missing == []


def _run(block_id, text, commands, workdir):
    """What one block gives: ``('skip', reason)`` or ``('ran', failures)``."""
    runnable = [c for c in commands if not skip_reason(c)]
    if not runnable:
        return 'skip', 'nothing here can run outside a cloud'
    for program in EXTERNAL:
        if any(c.program == program for c in runnable) and \
                shutil.which(program) is None:
            return 'skip', '%s is not installed' % program
    prepare(str(workdir), text)
    try:
        return 'ran', run_block(text, commands, str(workdir),
                                compare=not block_id.startswith('README'))
    except _PortInUse as exc:
        return 'skip', 'port in use: %s' % exc


@pytest.fixture(scope='module')
def outcomes(tmp_path_factory):
    """Every block, run at once on a few threads (each one in its own
    directory; the commands are processes), keyed by block id."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        jobs = {'ini:%s' % kind: pool.submit(_check_conf, kind)
                for kind in ('glance', 'cinder')}
        jobs.update({block_id: pool.submit(_run, block_id, text, commands,
                                           tmp_path_factory.mktemp('doc'))
                     for block_id, text, commands in BLOCKS})
        return {block_id: job.result() for block_id, job in jobs.items()}


@pytest.mark.parametrize('block_id', [b[0] for b in BLOCKS])
def test_commands_run_as_shown(block_id, outcomes):
    kind, result = outcomes[block_id]
    if kind == 'skip':
        pytest.skip(result)
    assert result == [], '\n\n'.join(result)


DOCTESTS = [('%s:%d' % (p.relative_to(ROOT), line), text)
            for p in pages() for line, text in doctest_blocks(p)]


@pytest.mark.parametrize('block_id, text', DOCTESTS,
                         ids=[d[0] for d in DOCTESTS])
def test_python_examples(block_id, text, tmp_path, monkeypatch):
    prepare(str(tmp_path), text)
    monkeypatch.chdir(tmp_path)
    test = doctest.DocTestParser().get_doctest(text, {}, block_id,
                                               block_id, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    out = []
    runner.run(test, out=out.append)
    assert runner.failures == 0, ''.join(out)


# -- ini examples ------------------------------------------------------------

_CHECK = {
    'glance': r'''
import json, sys, warnings
warnings.simplefilter('ignore')
from oslo_config import cfg
import glance.common.config  # noqa
print(json.dumps(check(cfg.CONF, json.loads(sys.stdin.read()), None)))
''',
    'cinder': r'''
import json, sys, warnings
warnings.simplefilter('ignore')
from cinder import objects
objects.register_all()
import cinder.common.config  # noqa
import cinder.volume.manager  # noqa
# cinder-volume's own: cluster (active-active), backend_name.
import cinder.cmd.volume  # noqa
from oslo_config import cfg
from xenapinfs_driver import opts  # noqa
print(json.dumps(check(cfg.CONF, json.loads(sys.stdin.read()),
                       'backend_defaults')))
''',
}


def check_options(conf, sections, backend_group):
    """Problems of ``[(section, [(key, value)])]`` against ``conf``:
    ``[DEFAULT]`` keys are global options, a registered group's keys its
    own, any other section is a backend (``backend_group``)."""
    problems = []
    for section, items in sections:
        if section == 'DEFAULT':
            group = None
        elif section in conf and not isinstance(conf[section], str):
            group = section
        else:
            group = backend_group
        for key, value in items:
            try:
                opt = conf._get_opt_info(key, group)['opt']
            except Exception:
                problems.append('[%s] %s: no such option' % (section, key))
                continue
            if '<' in value or value.isupper():
                continue            # a placeholder for the reader's value
            try:
                opt.type(value)
            except ValueError as exc:
                problems.append('[%s] %s = %s: %s' % (section, key, value,
                                                      exc))
    return problems


def _ini_blocks():
    out = []
    for path in pages():
        for line, text in literal_blocks(path, 'ini'):
            out.append(('%s:%d' % (path.relative_to(ROOT), line), text))
    return out


INI = _ini_blocks()


def _sections(text):
    import configparser
    parser = configparser.ConfigParser(interpolation=None, strict=True,
                                       default_section='\0none')
    parser.optionxform = str
    parser.read_string(text)
    return [(s, list(parser.items(s))) for s in parser.sections()]


def _ini_sections(kind):
    sections = []
    for _block_id, text in INI:
        secs = _sections(text)
        is_glance = any(s == 'image_format' for s, _ in secs)
        if is_glance == (kind == 'glance'):
            sections += secs
    return sections


def _check_conf(kind):
    """``('skip', reason)`` or ``('ran', problems)`` for the
    ``glance-api.conf`` or ``cinder.conf`` examples, checked in a child
    process: glance and cinder register their options in one global
    object, and they must not meet; and cinder's modules, once imported,
    turn later thread tests of this process green (eventlet) and hang
    them."""
    sections = _ini_sections(kind)
    if not sections:
        return 'skip', 'no %s example' % kind
    source = inspect.getsource(check_options).replace(
        'def check_options', 'def check')
    proc = subprocess.run([sys.executable, '-c', source + _CHECK[kind]],
                          input=json.dumps(sections), capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=str(ROOT))
    if proc.returncode:
        return 'ran', [proc.stderr]
    return 'ran', json.loads(proc.stdout.splitlines()[-1])


def test_cinder_conf_examples_use_real_options(outcomes):
    what, problems = outcomes['ini:cinder']
    assert what == 'ran'
    assert problems == []


def test_glance_conf_examples_use_real_options(outcomes):
    what, problems = outcomes['ini:glance']
    if what == 'skip':
        pytest.skip(problems)
    assert problems == []


def test_the_fixtures_are_what_the_pages_say(tmp_path):
    """The damaged ones are damaged, the others valid."""
    bad = {'mismatched.tgz', 'gap.tgz', 'broken.tgz', 'truncated.tgz'}
    for name in FIXTURES:
        if not name.endswith(('.tgz', '.vhd')):
            continue
        prepare(str(tmp_path), name)
        try:
            vhd.inspect(str(tmp_path / name))
        except vhd.VhdError:
            assert name in bad
        else:
            assert name not in bad


if __name__ == '__main__':
    # Lay out the fixtures for writing a page: python -m tests.unit.test_docs
    target = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(
        prefix='docs-')
    os.makedirs(target, exist_ok=True)
    prepare(target, ' '.join(FIXTURES))
    print(target)
