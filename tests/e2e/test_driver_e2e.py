"""The driver end to end: the operator's walk, with every part real.

cinder-api, cinder-scheduler and cinder-volume as separate processes over
RabbitMQ, glance 33 under gunicorn, and the XenAPI test server in its own
process, driven with the ``cinder`` and ``glance`` command-line clients.
Two backends share one NFS export: ``xs_plugin`` moves images through the
dom0 glance plugin, ``xs_stream`` through XAPI's HTTP handlers. cinder's
image-volume cache is on, so a second volume from one image is a clone.

Disk contents are checked through the XenAPI server (our own session,
``/export_raw_vdi``) against what was put in, byte for byte.
"""

import io
import json
import os
import random
import subprocess
import time

import pytest

from tests import stack_fixture
from tests import vhd_factory as vf
from tests import xapi_fixture
from xenapinfs_driver import vhd
from xenapinfs_driver.xenapi import transfer

MiB = 1 << 20
GiB = 1 << 30
SERVER, PATH = xapi_fixture.EXPORT


def _backend(mode, url):
    return stack_fixture.xenapinfs_backend(url, mode)


@pytest.fixture(scope='module')
def stack(tmp_path_factory, xapi):
    backends = {'xs_plugin': _backend('plugin', xapi.url),
                'xs_stream': _backend('stream', xapi.url)}
    # Uploads not compressed, so that test_upload_to_qcow2 runs the
    # driver's uncompressed packing; the image unit tests run the
    # compressed one (image_compress_on_upload on, cinder's default).
    with stack_fixture.running_stack(
            tmp_path_factory, backends,
            cinder_options={'image_volume_cache': True, 'extra': {
                'DEFAULT': {'image_compress_on_upload': False}}}) as s:
        yield s


_field = stack_fixture.cli_field


_cinder = stack_fixture.cinder_cli


def _glance(stack, *args):
    return stack.run_cli(stack.glance_cli_args() + list(args)).stdout


def _create(stack, vtype, image=None, size=1, timeout=120):
    args = ['create', '--volume-type', vtype]
    if image:
        args += ['--image-id', image]
    out = _cinder(stack, *(args + [str(size)]))
    vid = _field(out, 'id')
    stack.wait_volume(vid, 'available', timeout=timeout)
    return vid


def _image(stack, path, disk_format, container_format):
    out = _glance(stack, 'image-create', '--name', os.path.basename(path),
                  '--disk-format', disk_format, '--container-format',
                  container_format, '--file', str(path))
    assert _field(out, 'status') == 'active'
    return _field(out, 'id')


def _wait_image(stack, image_id, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        out = _glance(stack, 'image-show', image_id)
        status = _field(out, 'status')
        if status == 'active':
            return out
        assert status in ('queued', 'saving', 'importing'), out
        assert time.monotonic() < deadline, out
        time.sleep(1)


_vdi = stack_fixture.volume_vdi


def _disk(xs, volume_id, tmp):
    """The volume's disk as bytes, read back through XAPI as a VHD."""
    exported = os.path.join(tmp, 'export.vhd')
    raw = os.path.join(tmp, 'export.raw')
    with open(exported, 'wb') as f:
        transfer.export_to_file(xs, _vdi(xs, volume_id), f, 'vhd')
    vhd.convert(exported, raw)
    with open(raw, 'rb') as f:
        return f.read()


def _assert_disk(actual, expected, size):
    assert len(actual) == size
    assert actual[:len(expected)] == expected, vf.mismatch(
        actual[:len(expected)], expected)
    assert actual.count(0, len(expected)) == size - len(expected)


@pytest.fixture(scope='module')
def xenserver_image(stack, tmp_path_factory):
    """A XenServer image whose chain has differencing layers."""
    files, disk, _specs = vf.standard_chain(seed=11)
    path = tmp_path_factory.mktemp('img') / 'xenserver.tgz'
    vf.xenserver_tgz(str(path), files)
    return _image(stack, path, 'vhd', 'ovf'), disk


@pytest.mark.parametrize('vtype', ['xs_plugin', 'xs_stream'])
def test_xenserver_image_snapshot_upload_and_back(stack, xs, xenserver_image,
                                                  vtype, tmp_path):
    image_id, disk = xenserver_image
    vid = _create(stack, vtype, image_id)
    _assert_disk(_disk(xs, vid, tmp_path), disk, GiB)

    # "Boot it and write a file": new data written through the host.
    written = random.Random(vtype).randbytes(3 * MiB) + disk[3 * MiB:]
    transfer.import_vdi(xs, _vdi(xs, vid), io.BytesIO(written),
                        len(written), 'raw')
    out = _cinder(stack, 'snapshot-create', vid)
    snap = _field(out, 'id')
    _wait_snapshot(stack, snap)

    out = _cinder(stack, 'upload-to-image', '--container-format', 'ovf',
                  '--disk-format', 'vhd', vid, 'up-%s' % vtype)
    new_image = _field(out, 'image_id')
    _wait_image(stack, new_image)
    stack.wait_volume(vid, 'available')
    tgz = tmp_path / 'up.tgz'
    _glance(stack, 'image-download', '--file', str(tgz), new_image)
    info = vhd.inspect(str(tgz))
    assert info.container == 'tgz' and info.virtual_size == GiB
    if vtype == 'xs_plugin':
        # dom0 uploads the whole chain, as XenServer itself does
        assert len(info.layers) >= 2
    # and the other backend takes it back
    other = 'xs_stream' if vtype == 'xs_plugin' else 'xs_plugin'
    vid2 = _create(stack, other, new_image)
    _assert_disk(_disk(xs, vid2, tmp_path), written, GiB)
    for v in (vid2,):
        _cinder(stack, 'delete', v)
    _cinder(stack, 'snapshot-delete', snap)


def _wait_snapshot(stack, snap, status='available', timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        out = _cinder(stack, 'snapshot-show', snap)
        got = _field(out, 'status')
        if got == status:
            return
        assert got in ('creating', 'deleting'), out
        assert time.monotonic() < deadline, out
        time.sleep(0.5)


@pytest.mark.parametrize('fmt', ['qcow2', 'qcow2-compressed', 'raw'])
def test_other_formats(stack, xs, tmp_path, fmt):
    data = random.Random(fmt).randbytes(5 * MiB) + bytes(3 * MiB) + \
        (b'compressible text ' * MiB)[:2 * MiB]
    raw = tmp_path / 'disk.raw'
    raw.write_bytes(data)
    path = raw
    if fmt.startswith('qcow2'):
        path = tmp_path / 'disk.qcow2'
        subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2'] +
                       (['-c'] if fmt == 'qcow2-compressed' else []) +
                       [str(raw), str(path)], check=True)
    if fmt == 'qcow2-compressed':
        extents = json.loads(subprocess.run(
            ['qemu-img', 'map', '--output=json', str(path)], check=True,
            capture_output=True).stdout)
        assert any(e['data'] and 'offset' not in e for e in extents)
    image_id = _image(stack, path, fmt.split('-')[0], 'bare')
    vid = _create(stack, 'xs_stream', image_id)
    _assert_disk(_disk(xs, vid, tmp_path), data, GiB)
    if fmt.startswith('qcow2'):
        # Read from the qcow2 file, compressed clusters too: no raw copy.
        log = stack.log_paths()['cinder-volume']
        with open(log, errors='replace') as f:
            lines = [line for line in f if image_id in line]
        assert any(' written to ' in line for line in lines), lines
        assert not [line for line in lines if 'converting it' in line], \
            lines


def test_upload_to_qcow2(stack, xs, tmp_path):
    """Packed by the driver into glance's upload: glance's inspector and
    qemu-img take it, and it holds the volume's disk."""
    vid = _create(stack, 'xs_stream')
    data = random.Random('up-qcow2').randbytes(3 * MiB) + bytes(MiB) + \
        random.Random('tail').randbytes(MiB + 512)
    transfer.import_vdi(xs, _vdi(xs, vid), io.BytesIO(data), len(data),
                        'raw')
    out = _cinder(stack, 'upload-to-image', '--container-format', 'bare',
                  '--disk-format', 'qcow2', vid, 'up-qcow2')
    image_id = _field(out, 'image_id')
    shown = _wait_image(stack, image_id)
    stack.wait_volume(vid, 'available')
    assert _field(shown, 'disk_format') == 'qcow2'
    assert int(_field(shown, 'virtual_size')) == GiB
    path = tmp_path / 'up.qcow2'
    _glance(stack, 'image-download', '--file', str(path), image_id)
    # Only the clusters holding data travelled.
    assert os.path.getsize(path) < len(data)
    subprocess.run(['qemu-img', 'check', '-q', '-f', 'qcow2', str(path)],
                   check=True)
    raw = tmp_path / 'want.raw'
    with open(raw, 'wb') as f:
        f.write(data)
        f.truncate(GiB)
    subprocess.run(['qemu-img', 'compare', '-q', '-f', 'raw', '-F',
                    'qcow2', str(raw), str(path)], check=True)
    conversion = os.path.join(stack.cinder.workdir, 'conversion')
    assert os.listdir(conversion) == []
    _cinder(stack, 'delete', vid)


def test_second_create_from_image_is_a_cached_clone(stack, xs,
                                                    xenserver_image,
                                                    xapi, tmp_path):
    image_id, disk = xenserver_image
    _create(stack, 'xs_plugin', image_id)  # makes sure the cache has it
    control = xapi_fixture.Control(xapi.url)
    control.clear_calls()
    start = time.monotonic()
    vid = _create(stack, 'xs_plugin', image_id)
    seconds = time.monotonic() - start
    calls = control.calls()
    assert 'VDI.clone' in calls
    assert not [c for c in calls if 'download_vhd2' in c], calls
    _assert_disk(_disk(xs, vid, tmp_path), disk, GiB)
    print('second create from the same image (cached clone): %.1f s'
          % seconds)


def test_no_secret_in_any_log(stack, xapi):
    """Neither the XenAPI password nor the clients' token nor an identity
    header's value, in any log of the stack or of the XenAPI server."""
    read = stack_fixture.assert_no_secret_logged(
        stack, [xapi.log], [xapi_fixture.PASSWORD])
    assert xapi.log in read and len(read) >= 6
