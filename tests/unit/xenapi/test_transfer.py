"""Disk data through /import_raw_vdi and /export_raw_vdi."""

import io
import os
import subprocess
import time

import pytest

from tests import xapi_fixture
from xenapinfs_driver import exception
from xenapinfs_driver.vhd import pack
from xenapinfs_driver.xenapi import storage
from xenapinfs_driver.xenapi import transfer

MiB = 1 << 20


@pytest.fixture
def vdi(session):
    sr, _ = storage.find_or_create_nfs_sr(
        session, *xapi_fixture.EXPORT, 'transfer', 'transfer')
    ref, _uuid = storage.create_vdi(session, sr, 8 * MiB, 'disk')
    return ref


def _disk():
    return (os.urandom(MiB) + bytes(3 * MiB) + os.urandom(MiB // 2) +
            bytes(3 * MiB + MiB // 2))


def _raw(session, ref):
    buf = io.BytesIO()
    assert transfer.export_to_file(session, ref, buf, 'raw') == 8 * MiB
    return buf.getvalue()


def test_raw_in_raw_out(session, vdi):
    disk = _disk()
    transfer.import_vdi(session, vdi, io.BytesIO(disk), len(disk), 'raw')
    assert _raw(session, vdi) == disk


def test_vhd_in_and_vhd_out_read_by_qemu(session, vdi, tmp_path):
    disk = _disk()
    raw = tmp_path / 'disk.raw'
    raw.write_bytes(disk)
    vhd = tmp_path / 'disk.vhd'
    pack.pack(str(raw), str(vhd), vhd_only=True)
    seen = []
    with open(vhd, 'rb') as src:
        transfer.import_vdi(session, vdi, src, vhd.stat().st_size, 'vhd',
                            progress=seen.append)
    assert sum(seen) == vhd.stat().st_size
    assert _raw(session, vdi) == disk
    out = tmp_path / 'out.vhd'
    with open(out, 'wb') as dest:
        transfer.export_to_file(session, vdi, dest, 'vhd')
    assert out.stat().st_size < len(disk)  # sparse: only data blocks
    back = tmp_path / 'back.raw'
    subprocess.run(['qemu-img', 'convert', '-f', 'vpc', '-O', 'raw',
                    str(out), str(back)], check=True)
    assert back.read_bytes()[:len(disk)] == disk


def test_short_source_fails_and_leaves_the_vdi(session, vdi):
    disk = _disk()
    transfer.import_vdi(session, vdi, io.BytesIO(disk), len(disk), 'raw')
    with pytest.raises(exception.XenAPINFSException):
        transfer.import_vdi(session, vdi, io.BytesIO(b'x' * 100), MiB, 'raw')
    # The session's recording sleep does not sleep, so the import's wait
    # for its task to settle gives up at once; a loaded host may not have
    # seen the hang-up yet. Wait as the real sleep would have.
    deadline = time.monotonic() + 10
    while session.call('VDI.get_current_operations', vdi) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert _raw(session, vdi) == disk


def test_failed_import_reports_the_task_error(session, vdi, control):
    control.add_fault('http:import_raw_vdi', 'disk_full')
    disk = _disk()
    with pytest.raises(exception.XenAPINFSException) as err:
        transfer.import_vdi(session, vdi, io.BytesIO(disk), len(disk), 'raw')
    assert 'SR_BACKEND_FAILURE_44' in str(err.value) or \
        'insufficient space' in str(err.value)
    assert _raw(session, vdi) == bytes(8 * MiB)
    tasks = session.call('task.get_all')
    assert tasks == []


def test_failed_export_raises(session, vdi, control):
    control.add_fault('http:export_raw_vdi', 'error',
                      error=['VDI_IO_ERROR', 'boom'])
    with pytest.raises(exception.XenAPINFSException):
        _raw(session, vdi)
    assert session.call('task.get_all') == []


def test_unknown_format_refused(session, vdi):
    with pytest.raises(exception.ImageTransferError):
        transfer.import_vdi(session, vdi, io.BytesIO(b''), 0, 'qcow2')
