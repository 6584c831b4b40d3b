"""Test-wide setup: keep cinder's eventlet away from the other tests.

Importing ``cinder.tests.unit`` monkey-patches the whole process with
eventlet, and even cinder's volume manager, imported and run in a test,
turns later thread waits green. Our subprocess, pty and thread tests hang
under either, so the tests that import cinder's code in-process (the
"green" ones, listed below) run in a pytest process of their own:
``make test`` runs ``--tier=plain`` and then ``--tier=green``. A plain
``pytest tests`` refuses to mix them rather than hang.

cinder's ``test.TestCase`` also deletes every attribute of a test case in
its cleanup, including pytest's own ``test*`` ones, which pytest still reads
after the test: keep those (the usual pytest-with-cinder shim).
"""

import os
import sys

import pytest

pytest_plugins = ['tests.referees']


def _requested_tier(argv):
    for i, arg in enumerate(argv):
        if arg == '--tier' and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith('--tier='):
            return arg.split('=', 1)[1]
    return 'all'


if _requested_tier(sys.argv) == 'green':
    # Patch before any other conftest loads: pytest loads the conftests of
    # an argument's test* folders at start-up (tests/unit/testing's brings
    # the test server), and whatever they import before the patch keeps
    # the real selectors and threads, which then block every green thread.
    # cinder's services patch first thing too.
    from cinder import monkey_patch
    monkey_patch.patch()

_HERE = os.path.dirname(os.path.abspath(__file__))
GREEN = tuple(os.path.join(_HERE, *p.split('/')) for p in (
    'unit/test_driver.py', 'unit/test_manage.py', 'unit/image',
    'unit/test_faults.py', 'unit/test_driver_crash.py',
    'unit/test_compliance.py', 'unit/test_migrate.py',
    'unit/test_restart.py', 'functional'))


def _is_green(path):
    path = str(path)
    return any(path == g or path.startswith(g + os.sep) for g in GREEN)


def pytest_addoption(parser):
    parser.addoption(
        '--tier', choices=('all', 'plain', 'green'), default='all',
        help='plain: only the tests that must not share a process with '
             "cinder's eventlet; green: only those that run cinder "
             'in-process; all (default): both, which works only when the '
             'selection holds one kind')
    parser.addoption(
        '--dom0-plugins', choices=('builtin', 'os-xenapi'), default=None,
        help="who answers host.call_plugin in the XenAPI test servers the "
             'tests start (in-process and end-to-end) unless a test says: '
             "our stand-in (builtin, the default) or os-xenapi's own")


def pytest_configure(config):
    choice = config.getoption('dom0_plugins')
    if choice:
        from tests import xapi_fixture
        xapi_fixture.DOM0_PLUGINS = choice


def pytest_ignore_collect(collection_path, config):
    tier = config.getoption('tier')
    if tier == 'all':
        return None
    if tier == 'plain' and _is_green(collection_path):
        return True
    if tier == 'green' and not _is_green(collection_path) and \
            collection_path.suffix == '.py' and \
            collection_path.name.startswith('test_'):
        return True
    return None


_PATCHED_SEEN = pytest.StashKey[bool]()


def _eventlet_patched():
    patcher = sys.modules.get('eventlet.patcher')
    return patcher is not None and patcher.is_monkey_patched('thread')


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    # A plain test that patches eventlet at run time would make a later
    # one hang, far from the cause: name the cause instead.
    if not _is_green(item.path) and _eventlet_patched() and \
            not item.config.stash.get(_PATCHED_SEEN, False):
        item.config.stash[_PATCHED_SEEN] = True
        raise RuntimeError(
            '%s monkey-patched the process with eventlet; it belongs in '
            'the green tier (tests/conftest.py)' % item.nodeid)


def pytest_collection_finish(session):
    patched = sys.modules.get('cinder.monkey_patch')
    if patched is not None and patched.is_patched():
        plain = sorted({str(i.path) for i in session.items
                        if not _is_green(i.path)})
        if plain:
            raise pytest.UsageError(
                "cinder's eventlet monkey-patching is active and would hang "
                'these tests: %s. Run them apart: pytest --tier=plain, then '
                'pytest --tier=green (make test does).'
                % ', '.join(os.path.relpath(p) for p in plain[:5]))
    test = sys.modules.get('cinder.tests.unit.test')
    if test is not None and not getattr(test.TestCase, '_xenapinfs_shim',
                                        False):
        original = test.TestCase._common_cleanup

        def _common_cleanup(self):
            keep = {k: v for k, v in self.__dict__.items()
                    if k.startswith('test')}
            original(self)
            self.__dict__.update(keep)

        test.TestCase._common_cleanup = _common_cleanup
        test.TestCase._xenapinfs_shim = True
