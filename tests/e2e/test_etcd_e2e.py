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
"""Active-active on a real lock service: etcd, through tooz's etcd3gw.

The reliability module's stack (two cinder-volume services, different
``host``, one ``cluster``), with ``[coordination] backend_url =
etcd3+http://...`` and etcd-server started on loopback by the stack: the
fifty-operation burst passes with the same end-state checks. While etcd
is stopped, operations that need a lock fail cleanly (the volume in
``error``, nothing left on the host); once it is back, they work again.

That the locks go through etcd is shown by etcd's store revision, which
each lock taken and released moves on. NOTE: run with each volume service
holding locks of its own instead, the burst passes too: the test server
does each snapshot, clone and resize at once under its own lock, so none
of the burst's operations can interleave with another at the driver
level; it cannot tell shared locks from private ones.
"""

import base64
import json
import os
import shutil
import urllib.request

import pytest

from tests.e2e import test_reliability_e2e as rel
from tests import stack_fixture
from xenapinfs_driver.testing.stack import process

xapi = rel.xapi
control = rel.control
images = rel.images


def _stack(tmp_path_factory, xapi, **kw):
    if not shutil.which('etcd') and not os.access('/usr/bin/etcd', os.X_OK):
        stack_fixture.require('apt package etcd-server')
    stack_fixture.require('etcd3gw')
    backends = {rel.BACKEND: stack_fixture.xenapinfs_backend(xapi.url,
                                                             'auto')}
    cinder = {'volume_services': 2, 'debug': True,
              'extra': {'DEFAULT': rel.UNLIMITED}}
    cinder.update(kw.pop('cinder', {}))
    return stack_fixture.running_stack(
        tmp_path_factory, backends, glance_options={'debug': True},
        cinder_options=cinder, **kw)


@pytest.fixture(scope='module')
def stack(tmp_path_factory, xapi):
    with _stack(tmp_path_factory, xapi, etcd=True) as s:
        yield s


def test_services_lock_through_etcd(stack):
    conf = open(stack.cinder.conf_path).read()
    assert 'backend_url = %s' % stack.etcd.backend_url in conf
    assert stack.etcd.backend_url.startswith('etcd3+http://127.0.0.1:')
    rel.test_services_form_one_cluster(stack)


def _revision(stack):
    """etcd's store revision: every lock taken and released adds."""
    req = urllib.request.Request(
        stack.etcd.url + '/v3/kv/range', method='POST',
        data=json.dumps({'key': base64.b64encode(b'/').decode()}).encode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(json.loads(resp.read())['header']['revision'])


def test_fifty_operations_at_once_on_etcd(stack, xs, control, xapi, images,
                                          tmp_path):
    before = _revision(stack)
    rel.run_burst(stack, xs, control, xapi, images, tmp_path)
    # The driver's locks went through etcd: each is a put and a delete.
    writes = _revision(stack) - before
    assert writes >= 2 * 20, writes
    print('etcd: %d writes during the burst' % writes)


def test_operations_fail_cleanly_while_etcd_is_down(stack, xs, control,
                                                    xapi):
    vid = rel._new_volume(stack)
    stack.wait_volume(vid)
    stack.etcd.pause()
    try:
        # A snapshot takes the volume's lock: it cannot, and says so.
        sid = rel._api(stack, 'POST', '/snapshots', {'snapshot': {
            'volume_id': vid, 'force': False}})['snapshot']['id']
        snap = process.wait_until(
            lambda: _snapshot_done(stack, sid), 120,
            'snapshot %s to end' % sid, interval=0.5)
        assert snap['status'] == 'error', snap
    finally:
        stack.etcd.resume()
    rel._api(stack, 'DELETE', '/snapshots/%s' % sid)
    process.wait_until(lambda: rel._snapshots(stack).get(sid) is None, 60,
                       'snapshot %s deleted' % sid, interval=0.5)
    # Back: the same operation works, and the host holds what cinder does.
    sid = rel._api(stack, 'POST', '/snapshots', {'snapshot': {
        'volume_id': vid, 'force': False}})['snapshot']['id']
    snap = process.wait_until(lambda: _snapshot_done(stack, sid), 120,
                              'snapshot %s' % sid, interval=0.5)
    assert snap['status'] == 'available', snap
    rel.assert_sr_matches_cinder(stack, xs, control, xapi, tasks=False)


def _snapshot_done(stack, sid):
    snap = rel._snapshots(stack)[sid]
    return snap if snap['status'] in ('available', 'error') else None
