"""Test-wide setup.

cinder's ``test.TestCase`` deletes every attribute of a test case in its
cleanup, including pytest's own ``test*`` ones, which pytest 8 still
reads after the test: keep those (a documented pytest-with-cinder shim).
"""

try:
    from cinder.tests.unit import test as _cinder_test
except ImportError:  # cinder absent: only the vhd tests can run
    _cinder_test = None

if _cinder_test is not None and \
        not getattr(_cinder_test.TestCase, '_xenapinfs_shim', False):
    _original_cleanup = _cinder_test.TestCase._common_cleanup

    def _common_cleanup(self):
        keep = {k: v for k, v in self.__dict__.items()
                if k.startswith('test')}
        _original_cleanup(self)
        self.__dict__.update(keep)

    _cinder_test.TestCase._common_cleanup = _common_cleanup
    _cinder_test.TestCase._xenapinfs_shim = True
