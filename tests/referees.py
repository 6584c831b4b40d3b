"""The referees we did not write must not be skipped in CI.

qemu-img, libvhdi, shellcheck and e2fsprogs judge what our code writes.
A test that needs one of them skips when it is missing, so that a
developer without them still runs the rest; but under ``CI=true``
(``make test`` installs every one of them) such a skip turns into a
failure, because a referee that silently went missing would leave tests
that can no longer fail. This module is a pytest plugin, loaded by
tests/conftest.py: one rule, whatever way a test skips (a ``skipif``
mark, ``pytest.skip`` or ``pytest.importorskip``, in a test or at
collection).
"""

import os

import pytest

# name -> (how to install it, words that name it in a skip reason)
REFEREES = {
    'qemu-img': ('apt qemu-utils', ('qemu-img', 'qemu_img')),
    'libvhdi': ('pip libvhdi-python', ('pyvhdi', 'libvhdi')),
    'shellcheck': ('apt shellcheck', ('shellcheck',)),
    'e2fsprogs': ('apt e2fsprogs', ('e2fsprogs', 'mkfs.ext4', 'debugfs')),
}


def strict() -> bool:
    """Whether a missing referee fails the run (CI sets CI=true)."""
    return os.environ.get('CI', '').strip().lower() in ('true', '1', 'yes')


def named_in(reason: str) -> str | None:
    """The referee a skip reason names, if any."""
    low = reason.lower()
    for name, (_, words) in REFEREES.items():
        if any(word in low for word in words):
            return name
    return None


def _reason(longrepr) -> str:
    # A skip's longrepr is (path, line, reason); a collection skip's may
    # be the same tuple or a plain string.
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _harden(report) -> None:
    if not report.skipped or hasattr(report, 'wasxfail') or not strict():
        return
    reason = _reason(report.longrepr)
    name = named_in(reason)
    if name is None:
        return
    report.outcome = 'failed'
    report.longrepr = (
        'referee %s is missing under CI=true (%s); install it (%s, or '
        '`make system-deps venv`): its tests must not pass by skipping'
        % (name, reason, REFEREES[name][0]))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _harden(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _harden(outcome.get_result())
