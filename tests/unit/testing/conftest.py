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
"""Fixtures of the test server's tests: a server, a session, an SR."""

import pytest

from tests import xapi_fixture
from tests.xapi_fixture import xapi_server  # noqa: F401


@pytest.fixture
def session(xapi_server):  # noqa: F811
    s = xapi_fixture.login(xapi_server)
    yield s
    try:
        s.xenapi.session.logout()
    except Exception:       # a test may have ended the session itself
        pass


@pytest.fixture
def control(xapi_server):  # noqa: F811
    return xapi_fixture.Control(xapi_server)


@pytest.fixture
def sr(session):
    return xapi_fixture.create_sr(session)
