"""A missing referee fails the run under CI=true and only skips elsewhere."""

import os
import subprocess
import sys

import pytest

from tests import referees

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

SAMPLE = '''
import pytest

pytestmark = []


@pytest.mark.skipif(True, reason='qemu-img not found (qemu-utils)')
def test_mark():
    pass


def test_call():
    pytest.skip('shellcheck not installed')


def test_import():
    pytest.importorskip('pyvhdi_that_is_not_there')


def test_other():
    pytest.skip('the file system does not keep holes')
'''

COLLECT = '''
import pytest

pytest.importorskip('pyvhdi_that_is_not_there')


def test_never():
    pass
'''


def _run(tmp_path, ci, source):
    test = tmp_path / 'test_sample.py'
    test.write_text(source)
    env = dict(os.environ)
    env.pop('CI', None)
    if ci is not None:
        env['CI'] = ci
    return subprocess.run(
        [sys.executable, '-m', 'pytest', '-p', 'tests.referees', '-q',
         '-rA', '-p', 'no:cacheprovider', '--rootdir', str(tmp_path),
         str(test)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_skips_pass_outside_ci(tmp_path):
    proc = _run(tmp_path, None, SAMPLE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '4 skipped' in proc.stdout


def test_referee_skips_fail_under_ci(tmp_path):
    proc = _run(tmp_path, 'true', SAMPLE)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # The three that name a referee fail (a skip mark fails at set-up, so
    # pytest counts it an error); a skip for another reason stays a skip.
    assert '2 failed, 1 skipped, 1 error' in proc.stdout
    assert 'does not keep holes' in proc.stdout
    assert 'referee qemu-img is missing under CI=true' in proc.stdout
    assert 'referee shellcheck is missing' in proc.stdout
    assert 'referee libvhdi is missing' in proc.stdout


def test_collection_skip_fails_under_ci(tmp_path):
    proc = _run(tmp_path, 'true', COLLECT)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert 'referee libvhdi is missing' in proc.stdout


@pytest.mark.parametrize('reason,name', [
    ('qemu-img is not installed', 'qemu-img'),
    ("could not import 'pyvhdi': No module named 'pyvhdi'", 'libvhdi'),
    ('mkfs.ext4 not installed (apt e2fsprogs)', 'e2fsprogs'),
    ('losetup not found', None),
])
def test_named_in(reason, name):
    assert referees.named_in(reason) == name
