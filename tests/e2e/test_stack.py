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
"""The service harness itself: RabbitMQ, glance and cinder, for real.

The cinder backend is cinder's own ``FakeLoggingVolumeDriver`` (shipped in
the cinder wheel; it needs the ``fixtures`` package), so that this proves
the harness and nothing of our driver. The services are driven with the
``cinder`` and ``glance`` command-line clients, as a user would. One stack
serves the module; when it is stopped, no process of it may be left and
its ports must be free (tests/stack_fixture.py, ``running_stack``).

The glance facts the stack's docstring states for VHD images are checked
here too: what glance 33 accepts as ovf/vhd and bare/vhd, with and
without ``require_image_format_match``.
"""

import hashlib
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tarfile

import pytest

from tests import stack_fixture
from tests import vhd_factory as vf
from xenapinfs_driver.testing.stack import sqlite_lock
from xenapinfs_driver.testing.stack import Stack
from xenapinfs_driver.vhd import writer

BACKENDS = {'fake': {
    'volume_driver': 'cinder.tests.fake_driver.FakeLoggingVolumeDriver',
    # The fake driver reports this name whatever its section is called.
    'volume_backend_name': 'fake'}}


@pytest.fixture(scope='module')
def stack(tmp_path_factory):
    stack_fixture.require('fixtures')
    with stack_fixture.running_stack(tmp_path_factory, BACKENDS) as s:
        yield s


def field(output: str, name: str) -> str:
    """A value of the CLI's ``| Property | Value |`` table."""
    match = re.search(r'^\|\s*%s\s*\|\s*(.*?)\s*\|$' % re.escape(name),
                      output, re.M)
    assert match, 'no %s in:\n%s' % (name, output)
    return match.group(1)


def vhd_images():
    """(tgz of a chain, dynamic VHD, fixed VHD), all small."""
    rnd = random.Random(21)
    specs = [vf.random_layer(rnd, 2 * vf.MiB) for _ in range(2)]
    files = vf.build_chain(specs, rnd=rnd)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w:gz') as tf:
        for i, data in enumerate(files):
            info = tarfile.TarInfo('./%d.vhd' % i)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    dynamic = vf.build_chain(specs[1:], rnd=rnd)[0]
    fixed = io.BytesIO()
    writer.write_fixed(fixed, vf.expected_disk(specs[1:]))
    return buf.getvalue(), dynamic, fixed.getvalue()


def glance_create(stack, path, disk_format, container_format, check=True):
    result = stack.run_cli(stack.glance_cli_args() + [
        'image-create', '--name', os.path.basename(path), '--disk-format',
        disk_format, '--container-format', container_format, '--file',
        path], check=check)
    return result


def test_services_are_up(stack):
    out = stack.run_cli(stack.cinder_cli_args() + ['service-list']).stdout
    for binary, host in (('cinder-scheduler', 'xenapinfs-stack'),
                         ('cinder-volume', 'xenapinfs-stack@fake')):
        assert re.search(r'\| %s\s*\| %s\s*\| nova\s*\| enabled\s*\| up '
                         % (binary, re.escape(host)), out), out
    for path in stack.log_paths().values():
        assert os.path.getsize(path) > 0
    # Everything listens on loopback only.
    listening = subprocess.run(['ss', '-ltnH'], capture_output=True,
                               text=True).stdout
    for port in stack.ports():
        addrs = re.findall(r'(\S+):%d\s' % port, listening)
        assert addrs and set(addrs) <= {'127.0.0.1', '[::1]'}, (port, addrs)


def test_volume_with_the_cinder_cli(stack):
    cli = stack.cinder_cli_args()
    out = stack.run_cli(cli + ['create', '--name', 'harness', '1']).stdout
    volume_id = field(out, 'id')
    assert field(out, 'volume_type') == 'fake'
    stack.wait_volume(volume_id, 'available')
    out = stack.run_cli(cli + ['show', volume_id]).stdout
    assert field(out, 'os-vol-host-attr:host') == 'xenapinfs-stack@fake#fake'
    stack.run_cli(cli + ['delete', volume_id])
    stack.wait_volume(volume_id, 'deleted')


def test_image_round_trip_with_the_glance_cli(stack, tmp_path):
    data = random.Random(22).randbytes(3 * vf.MiB + 17)
    src = tmp_path / 'disk.raw'
    src.write_bytes(data)
    out = glance_create(stack, str(src), 'raw', 'bare').stdout
    image_id = field(out, 'id')
    assert field(out, 'status') == 'active'
    assert field(out, 'checksum') == hashlib.md5(data).hexdigest()
    back = tmp_path / 'back.raw'
    stack.run_cli(stack.glance_cli_args() + [
        'image-download', '--file', str(back), image_id])
    assert back.read_bytes() == data
    stack.run_cli(stack.glance_cli_args() + ['image-delete', image_id])


def test_glance_takes_xenserver_images_by_default(stack, tmp_path):
    chain_tgz, dynamic, fixed = vhd_images()
    for name, data in (('chain.tgz', chain_tgz), ('dynamic.vhd', dynamic),
                       ('fixed.vhd', fixed)):
        (tmp_path / name).write_bytes(data)
    # ovf/vhd: not inspected at all; no virtual size.
    out = glance_create(stack, str(tmp_path / 'chain.tgz'), 'vhd',
                        'ovf').stdout
    assert field(out, 'status') == 'active'
    assert field(out, 'virtual_size') == 'Not available'
    # bare/vhd: a dynamic VHD is recognised by its footer copy.
    out = glance_create(stack, str(tmp_path / 'dynamic.vhd'), 'vhd',
                        'bare').stdout
    assert field(out, 'status') == 'active'
    assert field(out, 'virtual_size') == str(2 * vf.MiB)
    # A fixed VHD has its footer at the end only: taken for raw, refused;
    # so is a XenServer tar.gz declared bare.
    for name in ('fixed.vhd', 'chain.tgz'):
        result = glance_create(stack, str(tmp_path / name), 'vhd', 'bare',
                               check=False)
        assert result.returncode
        assert '415' in result.stdout + result.stderr
        assert 'does not match stream data raw' in \
            result.stdout + result.stderr


def test_glance_format_match_off_and_cleanup_on_error(tmp_path):
    """``require_image_format_match=false`` lets the fixed VHD in; an
    exception inside the ``with`` still stops everything."""
    stack_fixture.require('glance', 'glanceclient', 'gunicorn')
    _, _, fixed = vhd_images()
    (tmp_path / 'fixed.vhd').write_bytes(fixed)
    workdir = str(tmp_path / 'stack')
    glance_only = Stack(workdir, rabbit=False, cinder=False, glance_options={
        'require_image_format_match': False})
    with pytest.raises(RuntimeError, match='on purpose'):
        with glance_only:
            pids, ports = glance_only.pids(), glance_only.ports()
            out = glance_create(glance_only, str(tmp_path / 'fixed.vhd'),
                                'vhd', 'bare').stdout
            assert field(out, 'status') == 'active'
            raise RuntimeError('on purpose')
    stack_fixture.assert_stopped(workdir, pids, ports)


CHILD = """
import json, sys, time
from xenapinfs_driver.testing.stack import Stack
with Stack(sys.argv[1], rabbit=True, glance=True, cinder=False) as s:
    print(json.dumps({'pids': s.pids(), 'ports': s.ports()}), flush=True)
    time.sleep(600)
"""


def test_sigterm_stops_everything(tmp_path):
    stack_fixture.require('glance', 'gunicorn', rabbit=True)
    workdir = str(tmp_path / 'stack')
    child = subprocess.Popen([sys.executable, '-c', CHILD, workdir],
                             stdout=subprocess.PIPE, text=True)
    try:
        started = json.loads(child.stdout.readline())
        assert len(started['pids']) == 2 and len(started['ports']) == 4
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    stack_fixture.assert_stopped(workdir, started['pids'], started['ports'])


def test_stack_needs_rabbit_for_cinder(tmp_path):
    with pytest.raises(ValueError):
        Stack(str(tmp_path), BACKENDS, rabbit=False)


SQLITE_CHILD = """
import sqlite3, sys
import sqlalchemy
from oslo_db.sqlalchemy import engines
path = sys.argv[1]
engine = engines.create_engine('sqlite:///' + path)
with engine.connect() as conn, conn.begin():
    conn.execute(sqlalchemy.text('select 1'))
    other = sqlite3.connect(path, timeout=0)
    try:
        other.execute('BEGIN IMMEDIATE')
    except sqlite3.OperationalError as exc:
        print('locked: %s' % exc)
    else:
        print('free')
"""


@pytest.mark.parametrize('shim', [True, False])
def test_sqlite_transactions_take_the_write_lock_first(tmp_path, shim):
    """The stack's cinder processes start every transaction with BEGIN
    IMMEDIATE (sqlite_lock.py), so that a second process waits for the
    write lock instead of failing "database is locked" half way."""
    stack_fixture.require('oslo_db')
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)
    if shim:
        site = tmp_path / 'site'
        sqlite_lock.write_sitecustomize(str(site))
        env['PYTHONPATH'] = str(site)
    out = subprocess.run([sys.executable, '-c', SQLITE_CHILD,
                          str(tmp_path / 'db.sqlite')], env=env,
                         capture_output=True, text=True, timeout=60,
                         check=True).stdout
    expected = 'locked: database is locked' if shim else 'free'
    assert out.strip() == expected
