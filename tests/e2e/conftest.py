"""Fixtures the end-to-end modules share."""

import pytest

from tests import xapi_fixture
from xenapinfs_driver.xenapi import session as xsession


@pytest.fixture(scope='module')
def xs(xapi):
    """A XenAPI session on the module's test server (its ``xapi``)."""
    s = xsession.XenAPISession(xapi.url, xapi_fixture.USERNAME,
                               xapi_fixture.PASSWORD).connect()
    yield s
    s.close()
