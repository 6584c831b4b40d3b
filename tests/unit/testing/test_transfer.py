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
"""/import_raw_vdi and /export_raw_vdi: the bytes a VDI holds afterwards,
through snapshots, in both formats, and what a failed import leaves."""

import io
import os
import random
import subprocess
import time
import urllib.parse

import pytest
import XenAPI

from tests import vhd_factory as vf
from tests import xapi_fixture
from tests.unit.testing import httputil as hu
from tests.unit.vhd import vhdcheck
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import ops
from xenapinfs_driver.vhd import writer

MiB = 1 << 20


def sr_files(server, session, vdi):
    return sorted(os.listdir(os.path.dirname(hu.vdi_file(server, session,
                                                         vdi))))


def qemu_raw(tmp_path, vhd_bytes) -> bytes:
    if vhdcheck.QEMU_IMG is None:
        pytest.skip('qemu-img is not installed')
    src, dst = tmp_path / 'in.vhd', tmp_path / 'out.raw'
    src.write_bytes(vhd_bytes)
    subprocess.run([vhdcheck.QEMU_IMG, 'convert', '-f', 'vpc', '-O', 'raw',
                    str(src), str(dst)], check=True, capture_output=True)
    return dst.read_bytes()


def test_raw_round_trip_sparse(xapi_server, session, sr):
    size = 8 * MiB
    vdi = xapi_fixture.create_vdi(session, sr, size)
    disk = bytearray(hu.pattern(size, seed=4))
    disk[2 * MiB:4 * MiB] = bytes(2 * MiB)      # one block of zeros
    short = bytes(disk[:7 * MiB + 1000])        # not a sector multiple
    hu.import_data(xapi_server, session, vdi, short)
    status, headers, body = hu.get(xapi_server.url,
                                   hu.query(session, vdi, 'raw'))
    assert status == 200
    assert headers['Content-Length'] == str(size)
    assert body == short + bytes(size - len(short))
    with image.VhdFile(hu.vdi_file(xapi_server, session, vdi)) as vhd:
        assert vhd.bat[1] == fmt.BAT_UNUSED     # zeros are not written
        assert vhd.bat[0] != fmt.BAT_UNUSED
    assert session.xenapi.VDI.get_physical_utilisation(vdi) == str(
        os.path.getsize(hu.vdi_file(xapi_server, session, vdi)))


def test_snapshot_keeps_its_bytes(xapi_server, session, sr, tmp_path):
    x = session.xenapi
    size = 10 * MiB
    vdi = xapi_fixture.create_vdi(session, sr, size)
    first = hu.pattern(size, seed=5, holes=False)
    hu.import_data(xapi_server, session, vdi, first)
    snap = x.VDI.snapshot(vdi, {})
    second = bytearray(hu.pattern(size, seed=6))
    second[3 * MiB:5 * MiB] = bytes(2 * MiB)    # zeros over parent data
    second[8 * MiB:] = first[8 * MiB:]
    hu.import_data(xapi_server, session, vdi, bytes(second), chunked=True)
    assert hu.export_data(xapi_server, session, snap) == first
    assert hu.export_data(xapi_server, session, vdi) == second
    clone = x.VDI.clone(snap, {})
    assert hu.export_data(xapi_server, session, clone) == first
    # The chain as one VHD, read by qemu-img, is the raw export.
    exported = hu.export_data(xapi_server, session, vdi, 'vhd')
    assert qemu_raw(tmp_path, exported) == bytes(second)
    vhdcheck.assert_tap(hu.vdi_file(xapi_server, session, vdi), size,
                        fmt.DISK_DIFFERENCING)
    chain = ops.chain_of(hu.vdi_file(xapi_server, session, vdi))
    vhdcheck.chain_converted(chain, bytes(second))


@pytest.mark.parametrize('block_size', [writer.DEFAULT_BLOCK, 512 * 1024])
def test_vhd_import_with_partial_bitmaps(xapi_server, session, sr,
                                         tmp_path, block_size):
    rnd = random.Random(block_size)
    size = 6 * MiB + 5 * 512
    spec = vf.random_layer(rnd, size, block_size=block_size, fill=0.7)
    (body,) = vf.build_chain([spec], order='random', rnd=rnd)
    expected = vf.expected_disk([spec])
    vdi = xapi_fixture.create_vdi(session, sr, 8 * MiB)
    hu.import_data(xapi_server, session, vdi, hu.pattern(8 * MiB, 1))
    task = session.xenapi.task.create('import', '')
    status, text = hu.put(xapi_server.url, hu.query(session, vdi, 'vhd',
                                                    task), body)
    assert status == 200, text
    rec = session.xenapi.task.get_record(task)
    assert (rec['status'], rec['error_info'], rec['progress']) == (
        'success', [], 1.0)
    out = hu.export_data(xapi_server, session, vdi)
    assert out == expected + bytes(8 * MiB - len(expected))
    exported = hu.export_data(xapi_server, session, vdi, 'vhd')
    assert qemu_raw(tmp_path, exported) == out


@pytest.mark.parametrize('blocks, batmap, pad, ok', [
    ({}, False, 0, True),       # the footer right after the BAT
    ({}, True, 0, False),       # a batmap where a forward reader wants it
    ({1: (None, b'\3' * (2 * MiB))}, True, 0, True),   # batmap, then data
    ({1: (None, b'\3' * (2 * MiB))}, False, 512, False),   # a gap at the end
])
def test_vhd_footer_where_xapi_reads_it(xapi_server, session, sr, blocks,
                                        batmap, pad, ok):
    out = io.BytesIO()
    writer.write_dynamic(out, 4 * MiB, blocks, batmap=batmap)
    body = out.getvalue()
    body = body[:-512] + bytes(pad) + body[-512:]
    vdi = xapi_fixture.create_vdi(session, sr, 4 * MiB)
    status, text = hu.put(xapi_server.url, hu.query(session, vdi, 'vhd'),
                          body)
    if ok:
        assert status == 200, text
        disk = bytearray(4 * MiB)
        for idx, (_bitmap, data) in blocks.items():
            disk[idx * 2 * MiB:(idx + 1) * 2 * MiB] = data
        assert hu.export_data(xapi_server, session, vdi) == disk
    else:
        assert status == 500 and text.startswith(
            'VDI_IO_ERROR the VHD footer is at offset'), (status, text)


def test_fixed_vhd_import(xapi_server, session, sr):
    vdi = xapi_fixture.create_vdi(session, sr, 4 * MiB)
    disk = hu.pattern(3 * MiB, seed=8)
    out = io.BytesIO()
    writer.write_fixed(out, disk)
    hu.import_data(xapi_server, session, vdi, out.getvalue(), fmt='vhd',
                   chunked=True, chunk=100_000)
    assert hu.export_data(xapi_server, session, vdi) == disk + bytes(MiB)


def test_vhd_export_is_sparse(xapi_server, session, sr, tmp_path):
    vdi = xapi_fixture.create_vdi(session, sr, 20 * MiB)
    disk = bytearray(20 * MiB)
    disk[11 * MiB:11 * MiB + 4096] = b'x' * 4096
    hu.import_data(xapi_server, session, vdi, bytes(disk))
    status, headers, body = hu.get(xapi_server.url,
                                   hu.query(session, vdi, 'vhd'))
    assert status == 200 and int(headers['Content-Length']) == len(body)
    assert len(body) < 3 * MiB
    (tmp_path / 'e.vhd').write_bytes(body)
    vhdcheck.assert_tap(tmp_path / 'e.vhd', 20 * MiB)
    vhdcheck.converted(tmp_path / 'e.vhd', bytes(disk))


@pytest.mark.parametrize('fmt_name, body, code', [
    ('raw', b'\1' * (4 * MiB + 512), 'VDI_IO_ERROR'),
    ('vhd', b'\1' * (3 * MiB), 'VDI_IO_ERROR'),
    ('vhd', hu.dynamic_vhd(b'\2' * (6 * MiB)), 'VDI_IO_ERROR'),
])
def test_failed_import_leaves_the_vdi(xapi_server, session, sr, fmt_name,
                                      body, code):
    vdi = xapi_fixture.create_vdi(session, sr, 4 * MiB)
    disk = hu.pattern(4 * MiB, seed=7)
    hu.import_data(xapi_server, session, vdi, disk)
    files = sr_files(xapi_server, session, vdi)
    task = session.xenapi.task.create('import', '')
    status, text = hu.put(xapi_server.url,
                          hu.query(session, vdi, fmt_name, task), body)
    assert status == 500 and text.startswith(code)
    rec = session.xenapi.task.get_record(task)
    assert rec['status'] == 'failure' and rec['error_info'][0] == code
    assert hu.export_data(xapi_server, session, vdi) == disk
    assert sr_files(xapi_server, session, vdi) == files


def test_truncated_body(xapi_server, session, sr):
    vdi = xapi_fixture.create_vdi(session, sr, 4 * MiB)
    conn = hu._conn(xapi_server.url)
    conn.putrequest('PUT', '/import_raw_vdi?' + hu.query(session, vdi))
    conn.putheader('Content-Length', str(4 * MiB))
    conn.endheaders()
    conn.send(b'\3' * MiB)
    conn.sock.shutdown(1)       # no more to come
    resp = conn.getresponse()
    assert resp.status == 500
    assert b'ends' in resp.read()
    conn.close()
    assert hu.export_data(xapi_server, session, vdi) == bytes(4 * MiB)


def test_refusals(xapi_server, session, sr):
    vdi = xapi_fixture.create_vdi(session, sr, 2 * MiB)
    url = xapi_server.url
    bad = urllib.parse.urlencode({'session_id': 'OpaqueRef:no',
                                  'vdi': vdi})
    assert hu.put(url, bad, b'')[0] == 401
    assert hu.get(url, bad)[0] == 401
    assert hu.put(url, hu.query(session, 'OpaqueRef:no'), b'')[0] == 404
    assert hu.get(url, hu.query(session, vdi, 'qcow2'))[0] == 400
    uuid = session.xenapi.VDI.get_uuid(vdi)
    assert hu.get(url, hu.query(session, uuid))[0] == 200
    # The body is complete before the host lets go of the VDI (a client
    # with no task cannot wait for it): wait as one would for the task.
    deadline = time.monotonic() + 10
    while session.xenapi.VDI.get_current_operations(vdi):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    snap = session.xenapi.VDI.snapshot(vdi, {})
    status, text = hu.put(url, hu.query(session, snap), b'')
    assert (status, text) == (500, 'VDI_READONLY %s' % snap)
    conn = hu._conn(url)
    conn.request('GET', '/elsewhere')
    assert conn.getresponse().status == 404
    conn.close()


def test_busy_vdi_refuses_other_operations(xapi_server, session, sr):
    x = session.xenapi
    vdi = xapi_fixture.create_vdi(session, sr, 4 * MiB)
    conn = hu._conn(xapi_server.url)
    conn.putrequest('PUT', '/import_raw_vdi?' + hu.query(session, vdi))
    conn.putheader('Transfer-Encoding', 'chunked')
    conn.endheaders()
    piece = b'\4' * MiB
    conn.send(b'%x\r\n%s\r\n' % (len(piece), piece))
    deadline = time.monotonic() + 10
    while not x.VDI.get_current_operations(vdi):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert list(x.VDI.get_current_operations(vdi).values()) == ['import']
    for call in (lambda: x.VDI.snapshot(vdi, {}),
                 lambda: x.VDI.destroy(vdi),
                 lambda: x.VDI.copy(vdi, sr)):
        with pytest.raises(XenAPI.Failure) as exc:
            call()
        assert exc.value.details == ['OTHER_OPERATION_IN_PROGRESS', 'VDI',
                                     vdi]
    status, _, body = hu.get(xapi_server.url, hu.query(session, vdi))
    assert (status, body) == (500, b'OTHER_OPERATION_IN_PROGRESS VDI %s'
                              % vdi.encode())
    conn.send(b'0\r\n\r\n')
    resp = conn.getresponse()
    assert resp.status == 200
    conn.close()
    assert x.VDI.get_current_operations(vdi) == {}
    assert hu.export_data(xapi_server, session, vdi) == piece + bytes(
        3 * MiB)


def test_cancel_an_import(xapi_server, session, sr):
    x = session.xenapi
    vdi = xapi_fixture.create_vdi(session, sr, 4 * MiB)
    task = x.task.create('import', '')
    conn = hu._conn(xapi_server.url)
    conn.putrequest('PUT', '/import_raw_vdi?' + hu.query(session, vdi,
                                                         task=task))
    conn.putheader('Transfer-Encoding', 'chunked')
    conn.endheaders()
    piece = b'\5' * (2 * MiB)
    conn.send(b'%x\r\n%s\r\n' % (len(piece), piece))
    deadline = time.monotonic() + 10
    while x.task.get_progress(task) == 0.0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    x.task.cancel(task)
    conn.send(b'%x\r\n%s\r\n0\r\n\r\n' % (len(piece), piece))
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (500, b'TASK_CANCELLED ' +
                                          task.encode())
    conn.close()
    rec = x.task.get_record(task)
    assert (rec['status'], rec['error_info']) == ('cancelled',
                                                  ['TASK_CANCELLED', task])
    assert hu.export_data(xapi_server, session, vdi) == bytes(4 * MiB)
