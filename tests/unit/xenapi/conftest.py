"""The XenAPI layer's fixtures: a test server and a session on it."""

import pytest

from tests import xapi_fixture
from tests.xapi_fixture import xapi_server  # noqa: F401
from xenapinfs_driver.xenapi import session as xsession


class Sleeps(list):
    """Records the backoff delays instead of sleeping them."""

    def __call__(self, seconds):
        self.append(seconds)


def make_session(server_or_url, **kwargs):
    url = getattr(server_or_url, 'url', server_or_url)
    kwargs.setdefault('sleep', Sleeps())
    kwargs.setdefault('timeout', 10.0)
    return xsession.XenAPISession(url, xapi_fixture.USERNAME,
                                  xapi_fixture.PASSWORD, **kwargs)


@pytest.fixture
def session(xapi_server):  # noqa: F811
    s = make_session(xapi_server).connect()
    yield s
    s.close()


@pytest.fixture
def control(xapi_server):  # noqa: F811
    return xapi_fixture.Control(xapi_server)
