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
"""Migrate and retype between two backends, with the real ``cinder`` CLI.

Two XenAPINFS backends on two NFS exports of one host (one volume type
each), cinder-api, -scheduler and -volume, RabbitMQ and the XenAPI test
server as processes. ``cinder migrate`` and ``cinder retype
--migration-policy on-demand`` move a volume of known data; afterwards
its id is the same, its data too, the source SR holds nothing of it and
the destination SR exactly it. The time each move took, against the data
in the volume, is printed (run with ``-s``).
"""

import io
import os
import random
import time

import pytest

from tests import stack_fixture
from tests import xapi_fixture
from xenapinfs_driver.testing.stack import process
from xenapinfs_driver import vhd
from xenapinfs_driver.xenapi import transfer

MiB = 1 << 20
GiB = 1 << 30
SERVER = xapi_fixture.EXPORT[0]
EXPORTS = {'one': xapi_fixture.EXPORT, 'two': (SERVER, '/srv/cinder-two')}
VOLUME_KEY = 'cinder-volume-id'
ANY = 'either'


@pytest.fixture(scope='module')
def xapi(tmp_path_factory):
    with stack_fixture.running_xapi(tmp_path_factory.mktemp('xapi'),
                                    exports=[EXPORTS['two']]) as proc:
        yield proc


@pytest.fixture(scope='module')
def stack(tmp_path_factory, xapi):
    backends = {}
    for name, (server, path) in EXPORTS.items():
        backends[name] = dict(stack_fixture.xenapinfs_backend(xapi.url),
                              xenapi_nfs_server=server,
                              xenapi_nfs_serverpath=path)
    with stack_fixture.running_stack(tmp_path_factory, backends,
                                     glance=False) as s:
        # cinder migrate keeps the type, so the scheduler must find the
        # other backend fit for it: a type bound to neither.
        s.run_cli(s.cinder_cli_args() + ['type-create', ANY], quiet=True)
        yield s


def _show(stack, vid):
    code, body = stack.cinder.api('GET', '/volumes/%s' % vid)
    assert code == 200, body
    return body['volume']


def _sr_of(xs, name):
    """The uuid of backend ``name``'s SR: the one NFS SR on its export."""
    server, path = EXPORTS[name]
    found = {pbd['SR'] for pbd in xs.call('PBD.get_all_records').values()
             if pbd['device_config'].get('serverpath') == path}
    assert len(found) == 1, found
    return xs.call('SR.get_record', found.pop())


def _holdings(xs, xapi, name, vid):
    """(VDI uuids marked or named as volume ``vid``, files) of the SR."""
    sr = _sr_of(xs, name)
    records = xs.call('VDI.get_all_records_where', 'field "SR"="%s"'
                      % xs.call('SR.get_by_uuid', sr['uuid']))
    vdis = [rec['uuid'] for rec in records.values()
            if rec['name_label'] == 'volume-%s' % vid or
            rec['other_config'].get(VOLUME_KEY) == vid]
    if xapi is None:
        return vdis, None
    server, path = EXPORTS[name]
    directory = os.path.join(xapi.root, 'exports', server, path.lstrip('/'),
                             sr['uuid'])
    return vdis, sorted(os.listdir(directory))


_vdi = stack_fixture.volume_vdi


def _read(xs, vid, length, tmp):
    exported, raw = os.path.join(tmp, 'e.vhd'), os.path.join(tmp, 'e.raw')
    with open(exported, 'wb') as f:
        transfer.export_to_file(xs, _vdi(xs, vid), f, 'vhd')
    vhd.convert(exported, raw)
    with open(raw, 'rb') as f:
        data = f.read(length)
    os.unlink(exported)
    os.unlink(raw)
    return data


def _new_volume(stack, xs, backend, data):
    """A volume of type ANY on ``backend``, holding ``data``."""
    out = stack.run_cli(stack.cinder_cli_args() + [
        'create', '--volume-type', ANY, '--name', 'moving',
        '--availability-zone', 'nova', '1'], quiet=True).stdout
    vid = dict(stack_fixture.cli_table(out))['id']
    vol = stack.wait_volume(vid)
    if not vol['os-vol-host-attr:host'].endswith('@%s#%s' % (backend,
                                                             backend)):
        # The scheduler chose the other one: that is a migration too.
        other = 'one' if backend == 'two' else 'two'
        stack.run_cli(stack.cinder_cli_args() + [
            'migrate', vid, '%s@%s#%s' % (stack.cinder.host, backend,
                                          backend)], quiet=True)
        _wait_moved(stack, vid, backend)
        assert _holdings(xs, None, other, vid)[0] == []
    transfer.import_vdi(xs, _vdi(xs, vid), io.BytesIO(data), len(data),
                        'raw')
    return vid


def _wait_moved(stack, vid, backend, timeout=120):
    def done():
        vol = _show(stack, vid)
        assert vol['migration_status'] not in ('error',), vol
        if vol['migration_status'] == 'success' and \
                vol['status'] == 'available':
            return vol
        return None
    vol = process.wait_until(done, timeout, 'volume %s to move' % vid,
                             stack.cinder.procs, interval=0.2)
    assert vol['os-vol-host-attr:host'].split('@')[1] == '%s#%s' % (
        backend, backend), vol
    return vol


def _assert_moved(stack, xs, xapi, vid, data, src, dst, tmp):
    assert _show(stack, vid)['id'] == vid
    assert _holdings(xs, xapi, src, vid) == ([], [])
    vdis, files = _holdings(xs, xapi, dst, vid)
    assert len(vdis) == 1, vdis
    assert files == ['%s.vhd' % vdis[0]], files
    assert _read(xs, vid, len(data), tmp) == data


def _timed(stack, args):
    start = time.monotonic()
    stack.run_cli(stack.cinder_cli_args() + args)
    return start


def test_migrate_then_retype_back(stack, xs, xapi, tmp_path):
    data = random.Random(1).randbytes(8 * MiB)
    vid = _new_volume(stack, xs, 'one', data)
    start = _timed(stack, ['migrate', vid, '%s@two#two' % stack.cinder.host])
    _wait_moved(stack, vid, 'two')
    print('\ncinder migrate, 8 MiB of data: %.1f s'
          % (time.monotonic() - start))
    _assert_moved(stack, xs, xapi, vid, data, 'one', 'two', str(tmp_path))
    assert _show(stack, vid)['volume_type'] == ANY

    start = _timed(stack, ['retype', '--migration-policy', 'on-demand',
                           vid, 'one'])
    vol = _wait_moved(stack, vid, 'one')
    print('cinder retype on-demand, 8 MiB of data: %.1f s'
          % (time.monotonic() - start))
    assert vol['volume_type'] == 'one'
    _assert_moved(stack, xs, xapi, vid, data, 'two', 'one', str(tmp_path))
    stack.run_cli(stack.cinder_cli_args() + ['delete', vid])
    stack.wait_volume(vid, 'deleted')
    assert _holdings(xs, xapi, 'one', vid) == ([], [])


def test_migration_time_against_size(stack, xs, xapi, tmp_path):
    """The host copies the allocated data only: the time follows it."""
    lines = []
    for mib in (1, 32, 128):
        rnd = random.Random(mib)
        data = b''.join(rnd.randbytes(MiB) for _ in range(mib))
        vid = _new_volume(stack, xs, 'one', data)
        start = _timed(stack, ['migrate', vid,
                               '%s@two#two' % stack.cinder.host])
        _wait_moved(stack, vid, 'two', timeout=300)
        lines.append('%4d MiB of data in a 1 GiB volume: %.1f s'
                     % (mib, time.monotonic() - start))
        _assert_moved(stack, xs, xapi, vid, data, 'one', 'two',
                      str(tmp_path))
        stack.run_cli(stack.cinder_cli_args() + ['delete', vid], quiet=True)
        stack.wait_volume(vid, 'deleted')
    print('\ncinder migrate between two exports:\n  ' + '\n  '.join(lines))


def test_a_volume_with_a_snapshot_is_refused(stack, xs, xapi):
    vid = _new_volume(stack, xs, 'one', b'x' * MiB)
    out = stack.run_cli(stack.cinder_cli_args() + [
        'snapshot-create', '--name', 'keep', vid], quiet=True).stdout
    sid = dict(stack_fixture.cli_table(out))['id']
    process.wait_until(lambda: stack.cinder.api(
        'GET', '/snapshots/%s' % sid)[1]['snapshot']['status'] ==
        'available', 60, 'snapshot %s' % sid)
    result = stack.run_cli(stack.cinder_cli_args() + [
        'migrate', vid, '%s@two#two' % stack.cinder.host], check=False)
    # cinderclient prints the API's refusal and still exits 0.
    assert 'failed: Invalid volume' in result.stdout + result.stderr
    vol = _show(stack, vid)
    assert vol['status'] == 'available' and vol['os-vol-host-attr:host'] \
        .endswith('@one#one'), vol
    assert _holdings(xs, xapi, 'two', vid) == ([], [])
