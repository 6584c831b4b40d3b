"""Fixtures the end-to-end modules share."""

import pytest

from tests import stack_fixture
from tests import xapi_fixture
from xenapinfs_driver.xenapi import session as xsession


@pytest.fixture(scope='module')
def xapi(tmp_path_factory):
    """The XenAPI test server as its own process, as a host would be; a
    module that needs it otherwise (more exports, a restartable host)
    defines its own."""
    with stack_fixture.running_xapi(tmp_path_factory.mktemp('xapi')) as proc:
        yield proc


@pytest.fixture(scope='module')
def xs(xapi):
    """A XenAPI session on the module's test server (its ``xapi``)."""
    s = xsession.XenAPISession(xapi.url, xapi_fixture.USERNAME,
                               xapi_fixture.PASSWORD).connect()
    yield s
    s.close()
