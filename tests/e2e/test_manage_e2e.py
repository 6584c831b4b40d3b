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
"""cinder's own layers judge what the driver answers.

The unit tiers call the driver's methods and look at their results; here
cinder-volume turns them into its objects, sends them over RabbitMQ, and
cinder-api shows them, as an operator sees them with the ``cinder``
client: the manageable listings (``manageable-list``,
``snapshot-manageable-list``), ``manage`` and ``unmanage`` (their model
updates, used by what follows), the pools and their stats (``get-pools
--detail``), and the connection info of an attachment
(``attachment-create --connect``). What the host holds is read through
our own XenAPI session.
"""

import re

import pytest

from tests import stack_fixture
from xenapinfs_driver.testing.stack import process
from xenapinfs_driver.xenapi import storage

MiB = 1 << 20
GiB = 1 << 30
BACKEND = 'xs'
UUID = r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'


@pytest.fixture(scope='module')
def stack(tmp_path_factory, xapi):
    backends = {BACKEND: stack_fixture.xenapinfs_backend(xapi.url, 'stream')}
    with stack_fixture.running_stack(tmp_path_factory, backends) as s:
        yield s


def cinder(stack, *args, check=True):
    return stack.run_cli(stack.cinder_cli_args() + list(args), check=check)


def field(output, name):
    return dict(stack_fixture.cli_table(output))[name]


def rows(output):
    """The rows of a client's list table, as dicts by column."""
    lines = [line for line in output.splitlines() if line.startswith('|')]
    table = [[c.strip() for c in line.strip('|').split('|')]
             for line in lines]
    return [dict(zip(table[0], row)) for row in table[1:]]


def by_vdi(output):
    """A listing's rows by the VDI uuid of their reference."""
    found = {}
    for row in rows(output):
        match = re.search(UUID, row['reference'])
        assert match, row
        found[match.group(0)] = row
    return found


@pytest.fixture(scope='module')
def sr(stack, xs):
    """The backend's SR, found by the tag the driver gave it."""
    cinder(stack, 'get-pools')      # the volume service is up
    found = [ref for ref, rec in xs.call(
        'SR.get_all_records_where', 'field "type"="nfs"').items()
        if rec['other_config'].get(storage.TAG_KEY, '').startswith(
            BACKEND + '@')]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope='module')
def volume(stack):
    """A cinder volume (and its host, ``host@backend#pool``)."""
    vid = field(cinder(stack, 'create', '--name', 'made-by-cinder',
                       '1').stdout, 'id')
    stack.wait_volume(vid)
    host = field(cinder(stack, 'show', vid).stdout, 'os-vol-host-attr:host')
    return vid, host


def vdi_of(xs, name_label):
    refs = xs.call('VDI.get_by_name_label', name_label)
    assert len(refs) == 1, refs
    return refs[0], xs.call('VDI.get_uuid', refs[0])


def service(host):
    """The volume service part of ``host@backend#pool``."""
    return host.split('#', 1)[0]


def test_manageable_lists_show_the_srs_vdis(stack, xs, sr, volume):
    vid, host = volume
    _ref, mine = vdi_of(xs, 'volume-%s' % vid)
    named, named_uuid = storage.create_vdi(xs, sr, 3 * GiB - MiB,
                                           'operator disk', 'made by hand')
    unnamed, unnamed_uuid = storage.create_vdi(xs, sr, GiB, '')
    # A snapshot cinder made, and one made on the host.
    sid = field(cinder(stack, 'snapshot-create', '--name', 'cinder-snap',
                       vid).stdout, 'id')
    process.wait_until(lambda: field(
        cinder(stack, 'snapshot-show', sid).stdout, 'status') == 'available',
        60, 'snapshot %s available' % sid, stack.cinder.procs)
    _snap_ref, cinder_snap = vdi_of(xs, 'snapshot-%s' % sid)
    host_snap = xs.call('VDI.get_uuid', xs.call('VDI.snapshot', named, {}))

    listing = by_vdi(cinder(stack, 'manageable-list', '--detailed', 'True',
                            service(host)).stdout)
    assert set(listing) == {mine, named_uuid, unnamed_uuid}
    assert listing[named_uuid]['size'] == '3'
    assert listing[named_uuid]['safe_to_manage'] == 'True'
    assert listing[named_uuid]['cinder_id'] == '-'      # None, as shown
    assert "'name_label': 'operator disk'" in \
        listing[named_uuid]['extra_info']
    assert "'name_description': 'made by hand'" in \
        listing[named_uuid]['extra_info']
    assert listing[unnamed_uuid]['size'] == '1'
    assert listing[unnamed_uuid]['safe_to_manage'] == 'True'
    assert "'name_label': None" in listing[unnamed_uuid]['extra_info']
    assert listing[mine]['safe_to_manage'] == 'False'
    assert listing[mine]['reason_not_safe'] == 'already managed'
    assert listing[mine]['cinder_id'] == vid

    snaps = by_vdi(cinder(stack, 'snapshot-manageable-list', '--detailed',
                          'True', service(host)).stdout)
    assert set(snaps) == {cinder_snap, host_snap}
    assert snaps[cinder_snap]['cinder_id'] == sid
    assert snaps[cinder_snap]['reason_not_safe'] == 'already managed'
    assert mine in snaps[cinder_snap]['source_reference']
    assert snaps[host_snap]['size'] == '3'
    assert snaps[host_snap]['safe_to_manage'] == 'False'
    assert 'not supported' in snaps[host_snap]['reason_not_safe']
    assert named_uuid in snaps[host_snap]['source_reference']

    for ref in (xs.call('VDI.get_by_uuid', host_snap), named, unnamed):
        xs.call('VDI.destroy', ref)
    cinder(stack, 'snapshot-delete', sid)
    process.wait_until(lambda: cinder_snap not in by_vdi(cinder(
        stack, 'snapshot-manageable-list', service(host)).stdout), 60,
        'snapshot %s deleted' % sid, stack.cinder.procs)


def test_manage_then_unmanage(stack, xs, sr, volume):
    _vid, host = volume
    ref, vdi_uuid = storage.create_vdi(xs, sr, 2 * GiB - 3 * MiB, 'old')
    out = cinder(stack, 'manage', '--id-type', 'source-id', '--name',
                 'adopted', host, vdi_uuid).stdout
    vid = field(out, 'id')
    stack.wait_volume(vid)
    assert field(cinder(stack, 'show', vid).stdout, 'size') == '2'
    listing = by_vdi(cinder(stack, 'manageable-list', service(host)).stdout)
    assert listing[vdi_uuid]['safe_to_manage'] == 'False'
    # The model update names the VDI: extending it through cinder grows
    # the adopted VDI.
    cinder(stack, 'extend', vid, '3')
    stack.wait_volume(vid)
    assert xs.call('VDI.get_virtual_size', ref) == str(3 * GiB)

    cinder(stack, 'unmanage', vid)
    stack.wait_volume(vid, 'deleted')
    listing = by_vdi(cinder(stack, 'manageable-list', '--detailed', 'True',
                            service(host)).stdout)
    assert listing[vdi_uuid]['safe_to_manage'] == 'True'
    assert listing[vdi_uuid]['size'] == '3'
    xs.call('VDI.destroy', ref)


def test_pools_show_the_srs_capacity(stack, xs, sr, volume):
    _vid, host = volume
    out = cinder(stack, 'get-pools', '--detail').stdout
    pool = dict(stack_fixture.cli_table(out))
    assert pool['name'] == host
    assert pool['volume_backend_name'] == BACKEND
    assert pool['backend_state'] == 'up'
    assert pool['storage_protocol'] == 'xensm'
    assert pool['thin_provisioning_support'] == 'True'
    total = int(xs.call('SR.get_physical_size', sr))
    assert float(pool['total_capacity_gb']) == round(total / GiB, 2)
    assert 0 <= float(pool['free_capacity_gb']) <= \
        float(pool['total_capacity_gb'])


def test_attachment_carries_the_connection_info(stack, xs, sr, volume):
    vid, _host = volume
    _ref, vdi_uuid = vdi_of(xs, 'volume-%s' % vid)
    out = cinder(stack, 'attachment-create', '--connect', 'True', '--host',
                 'compute-1', '--ip', '127.0.0.1', '--mode', 'rw',
                 vid).stdout
    # The client prints the attachment, then its connection info as a
    # table of its own: what cinder stored from initialize_connection.
    pairs = stack_fixture.cli_table(out)
    attachment_id = next(v for k, v in pairs if k == 'id')
    info = dict(pairs[[k for k, _v in pairs].index('driver_volume_type'):])
    assert info['driver_volume_type'] == 'xensm', out
    assert vdi_uuid in out and xs.call('SR.get_uuid', sr) in out, out
    assert field(cinder(stack, 'show', vid).stdout, 'status') in (
        'attaching', 'reserved', 'in-use')
    cinder(stack, 'attachment-delete', attachment_id)
    stack.wait_volume(vid)
