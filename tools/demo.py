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
"""``make demo``: the operator's walk with cinder, glance and a XenServer.

Starts everything on loopback in one temporary directory (the XenAPI test
server standing in for a XenServer pool master with an NFS export,
RabbitMQ, glance-api, cinder-api, -scheduler and -volume with a xenapinfs
backend, sqlite databases), then walks an operator's steps with the real
``cinder`` and ``glance`` clients, printing each command and its output:
a XenServer image made on the spot (an MBR disk with ext4 holding a file
and its md5sum, as a base VHD and a differencing VHD) goes into glance,
becomes a volume, gets a file written into it through the host, goes back
to glance with ``cinder upload-to-image``, and becomes a second volume,
whose file system must hold the new file and the intact original.

Exit status 0 when every check passed, 1 when one failed, 130/143 when
interrupted; everything started is stopped and removed in every case.
``--keep`` leaves the services running after the walk, says how to reach
them, and cleans up on Ctrl-C.
"""

import argparse
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
import warnings

import demo_disk as disk
import demo_shell as sh

from xenapinfs_driver import vhd
from xenapinfs_driver.testing.stack import process as stackprocess
from xenapinfs_driver.testing.stack import Stack

# The XenAPI session's errors are cinder exceptions, and importing cinder
# warns that eventlet is deprecated: cinder's business, not the operator's.
with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')
    from xenapinfs_driver.xenapi import session as xsession
    from xenapinfs_driver.xenapi import transfer

MiB = 1 << 20
GiB = 1 << 30
DISK_SIZE = '64M'                # the image's disk; volumes are 1 GiB
PAYLOAD_SIZE = 3 * MiB
BACKEND = 'xenapinfs'
XAPI_USER = 'root'
NFS_SERVER, NFS_PATH = 'nfs.example', '/srv/cinder'
MARKER = '/marker.txt'
STACK_DIR = 'stack'
LOG_DIR = os.path.join(STACK_DIR, 'logs')    # Stack's own choice
TITLES = [
    'Start a XenServer stand-in: the XenAPI test server',
    'Start RabbitMQ, glance and cinder with a xenapinfs backend',
    'Make a XenServer image: MBR + ext4, a file and its md5sum, 2 layers',
    'Upload the image to glance (container ovf, disk vhd)',
    'Create volume 1 from the image',
    'Stand in for "boot an instance and touch a file" on volume 1',
    'Upload volume 1 to a new image (cinder upload-to-image, ovf/vhd)',
    'Create volume 2 from the new image',
    'Check volume 2: the marker file and the md5sum',
]
VOLUME_FIELDS = ('id', 'name', 'status', 'size', 'volume_type')
IMAGE_FIELDS = ('id', 'name', 'status', 'disk_format', 'container_format',
                'size', 'checksum')


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM: stop the walk, clean up, exit 128+signal.

    A BaseException, like KeyboardInterrupt, so that no ``except
    Exception`` on the way takes it for a failure and carries on.
    """

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Signals:
    """SIGINT and SIGTERM end the walk by an exception, so that the
    cleanup in ``finally`` runs; once cleaning up, they are only noted:
    a second Ctrl-C must not leave services or files behind."""

    def __init__(self):
        self.cleaning = False
        self.received = None

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.received = self.received or signum
        if not self.cleaning:
            raise Interrupted(signum)


class XapiServer:
    """``xenapinfs-xapi-server`` as its own process, as a host would be.

    It gets a session of its own, so that a terminal's Ctrl-C reaches the
    demo only, which then stops everything in order.
    """

    def __init__(self, root, log_path, password):
        self.root = root
        self.log_path = log_path
        self.password = password
        self.proc = None
        self.url = None

    def start(self):
        os.makedirs(self.root)
        pwfile = os.path.join(self.root, 'password')
        dom0 = os.path.join(self.root, 'dom0')
        # The password travels in a file, not on a command line (ps).
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, 'w') as f:
            f.write(self.password + '\n')
        argv = ['xenapinfs-xapi-server', '--listen', '127.0.0.1:0',
                '--root', dom0,
                '--username', XAPI_USER, '--password-file', pwfile,
                '--export', '%s:%s' % (NFS_SERVER, NFS_PATH)]
        print('$ %s 2>%s &' % (' '.join(argv), self.log_path))
        with open(self.log_path, 'w') as log:
            self.proc = subprocess.Popen(
                [sh.program(argv[0])] + argv[1:], stdout=subprocess.PIPE,
                stderr=log, stdin=subprocess.DEVNULL, text=True,
                start_new_session=True)
        line = self.proc.stdout.readline()
        print(line.rstrip())
        match = re.search(r'listening on (\S+)', line)
        if not match:
            raise sh.DemoError('the XenAPI server did not start:\n%s'
                               % stackprocess.log_tail(self.log_path))
        self.url = match.group(1)

    def stop(self):
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()


class Demo:

    def __init__(self, args, walk, cleanup):
        self.args = args
        self.walk = walk
        self.cleanup = cleanup
        self.work = None
        self.xapi = None
        self.stack = None
        self.xs = None
        self.env = {}
        # Throwaway, for this run only; shown only by --keep, which needs it.
        self.password = secrets.token_urlsafe(12)
        # Seeded: the same md5sum in every run's output.
        self.payload = random.Random(2013).randbytes(PAYLOAD_SIZE)
        self.offset = None          # of the file system in the disks
        self.marker = None          # what step 6 writes
        self.ids = {}               # of the images and volumes made

    # -- the walk -------------------------------------------------------

    def run(self):
        self.work = tempfile.mkdtemp(prefix='xenapinfs-demo-')
        self.cleanup.callback(self._remove_work)
        os.chdir(self.work)
        sh.note('work directory: %s (removed at the end)' % self.work)
        # One log directory for all: the stack's, made early for the
        # XenAPI server, which starts first.
        os.makedirs(LOG_DIR)
        self.start_xapi()
        self.start_stack()
        self.make_image()
        self.upload_image()
        self.create_volume_1()
        self.touch_volume_1()
        self.upload_volume_1()
        self.create_volume_2()
        self.check_volume_2()

    def start_xapi(self):
        self.walk.step('A pool master with one NFS export; SRs are '
                       'directories, VDIs VHD files, as on an NFS SR.')
        # Paths relative to the work directory, the current one.
        self.xapi = XapiServer('xapi',
                               os.path.join(LOG_DIR, 'xapi-server.log'),
                               self.password)
        self.cleanup.callback(self._stop_xapi)
        self.xapi.start()
        sh.note('process %d (its own process group)' % self.xapi.proc.pid)
        self.xs = xsession.XenAPISession(self.xapi.url, XAPI_USER,
                                         self.password).connect()
        self.cleanup.callback(self.xs.close)

    def start_stack(self):
        self.walk.step('cinder-api, -scheduler and -volume as separate '
                       'processes over RabbitMQ, glance-api under gunicorn; '
                       'sqlite, no keystone.')
        backend = {'volume_driver': 'xenapinfs_driver.driver.XenAPINFSDriver',
                   'xenapi_connection_url': self.xapi.url,
                   'xenapi_connection_username': XAPI_USER,
                   'xenapi_connection_password': self.password,
                   'xenapi_nfs_server': NFS_SERVER,
                   'xenapi_nfs_serverpath': NFS_PATH}
        started = time.monotonic()
        # Registered first, so that it is said once the services are gone.
        self.cleanup.callback(print, 'stopped cinder, glance and rabbitmq')
        self.stack = self.cleanup.enter_context(
            Stack(os.path.join(self.work, STACK_DIR), {BACKEND: backend}))
        stack = self.stack
        print('started in %.1f s (ready after: %s)' % (
            time.monotonic() - started, ', '.join(
                '%s %.1f s' % kv for kv in stack.startup_seconds.items())))
        groups = [('rabbitmq', stack.rabbit.proc),
                  ('glance-api', stack.glance.proc)] + [
                      (p.name, p) for p in stack.cinder.procs]
        sh.note('process groups: %s' % ' '.join(
            '%s=%d' % (name, p.pid) for name, p in groups))
        sh.note('the backend section of %s (password hidden):'
                % os.path.relpath(stack.cinder.conf_path))
        print(self._backend_section())
        self.env = stack.openstack_env()
        sh.note('the clients below find the services through:')
        for key, value in self.env.items():
            print('export %s=%s' % (key, value))
        self.cinder('service-list')

    def make_image(self):
        self.walk.step('What XenServer exports: a tgz of 0.vhd (newest, '
                       'differencing) on top of 1.vhd (base).')
        sh.run(['truncate', '-s', DISK_SIZE, 'disk.raw'])
        disk.make_partition_table('disk.raw')
        self.offset, size = disk.partition('disk.raw')
        sh.note('partition 1 starts at byte %d: e2fsprogs reaches its file '
                'system as disk.raw?offset=%d, nothing mounted'
                % (self.offset, self.offset))
        sh.run(['mkfs.ext4', '-q', '-F', '-L', 'demo-root', '-E',
                'offset=%d' % self.offset, 'disk.raw',
                '%dk' % (size // 1024)])
        with open('payload.bin', 'wb') as f:
            f.write(self.payload)
        self.debugfs('disk.raw', 'write payload.bin payload.bin', write=True)
        with open('disk.raw', 'rb') as f:
            base = f.read()
        sh.note('the base layer, as it is now, then a differencing child:')
        sh.run(['xenapinfs-vhd', 'pack', '--vhd', '--no-progress',
                'disk.raw', '1.vhd'])
        sh.run(['vhd-util', 'snapshot', '-n', '0.vhd', '-p', '1.vhd'])
        sh.run('md5sum payload.bin | tee payload.md5')
        self.debugfs('disk.raw', 'write payload.md5 payload.md5', write=True)
        with open('disk.raw', 'rb') as f:
            newest = f.read()
        runs = disk.changed_runs(base, newest)
        disk.write_layer('0.vhd', runs)
        sh.note('wrote the %d sectors the md5sum file changed (%d runs: '
                'its data, inode, directory entry, bitmaps, counters) into '
                '0.vhd with xenapinfs_driver.vhd.image.VhdFile.write'
                % (sum(len(d) for _, d in runs) // disk.SECTOR, len(runs)))
        sh.run(['tar', '-czf', 'xenserver-image.tgz', '0.vhd', '1.vhd'])
        sh.run(['xenapinfs-vhd', 'info', 'xenserver-image.tgz'])
        vhd.convert('xenserver-image.tgz', 'image-check.raw')
        with open('image-check.raw', 'rb') as f:
            same = f.read() == newest
        os.unlink('image-check.raw')
        self.walk.check('the image reads back as the disk built', same,
                        '0.vhd over 1.vhd')

    def upload_image(self):
        self.walk.step('The way an operator publishes a XenServer export.')
        out = self.glance('image-create', '--name', 'demo-xenserver-image',
                          '--disk-format', 'vhd', '--container-format',
                          'ovf', '--file', 'xenserver-image.tgz',
                          fields=IMAGE_FIELDS)
        self.ids['image'] = sh.table_field(out, 'id')
        self.walk.check('glance took the image',
                        sh.table_field(out, 'status') == 'active',
                        'status active')

    def create_volume_1(self):
        self.walk.step('cinder-volume asks the driver to clone the image: '
                       'the chain lands in a VDI of the NFS SR.')
        self.ids['vol1'] = self.create_volume(self.ids['image'], 'demo-vol1')

    def touch_volume_1(self):
        self.walk.step('Through the host as a guest would: out by '
                       '/export_raw_vdi, debugfs, back by /import_raw_vdi.')
        self.export_volume(self.ids['vol1'], 'vol1.vhd')
        sh.run(['xenapinfs-vhd', 'convert', '--no-progress', 'vol1.vhd',
                'vol1.raw'])
        out = self.debugfs('vol1.raw', 'ls -l /')
        self.walk.check('volume 1 holds the image\'s files',
                        'payload.bin' in out and 'payload.md5' in out,
                        'payload.bin, payload.md5')
        self.marker = 'touched by the demo instance at %s\n' % time.strftime(
            '%Y-%m-%d %H:%M:%S')
        with open('marker.txt', 'w') as f:
            f.write(self.marker)
        self.debugfs('vol1.raw', 'write marker.txt %s' % MARKER[1:],
                     write=True)
        sh.run(['xenapinfs-vhd', 'pack', '--vhd', '--no-progress',
                'vol1.raw', 'vol1-touched.vhd'])
        self.import_volume(self.ids['vol1'], 'vol1-touched.vhd')

    def upload_volume_1(self):
        self.walk.step('The driver writes a XenServer tgz (0.vhd .. n.vhd) '
                       'and glance keeps it as ovf/vhd.')
        out = self.cinder('upload-to-image', '--container-format', 'ovf',
                          '--disk-format', 'vhd', 'demo-vol1',
                          'demo-vol1-image',
                          fields=('id', 'image_id', 'image_name', 'status',
                                  'container_format', 'disk_format'))
        self.ids['image2'] = sh.table_field(out, 'image_id')
        waited = self.wait_image(self.ids['image2'])
        self.stack.wait_volume(self.ids['vol1'], 'available', timeout=120)
        sh.note('active after %.1f s' % waited)
        self.glance('image-show', self.ids['image2'], fields=IMAGE_FIELDS)
        self.glance('image-download', '--file', 'vol1-image.tgz',
                    self.ids['image2'])
        sh.run(['xenapinfs-vhd', 'info', 'vol1-image.tgz'])
        info = vhd.inspect('vol1-image.tgz')
        self.walk.check('the new image is a XenServer tgz',
                        info.container == 'tgz' and info.virtual_size == GiB,
                        '%d layer(s), 1 GiB' % len(info.layers))

    def create_volume_2(self):
        self.walk.step('What a XenServer import of that image would give: '
                       'another VDI, built from the new chain.')
        self.ids['vol2'] = self.create_volume(self.ids['image2'],
                                              'demo-vol2')
        self.cinder('list')

    def check_volume_2(self):
        self.walk.step('Read back through the host: the file written in '
                       'step 6, and the original data intact.')
        self.export_volume(self.ids['vol2'], 'vol2.vhd')
        sh.run(['xenapinfs-vhd', 'convert', '--no-progress', 'vol2.vhd',
                'vol2.raw'])
        out = self.debugfs('vol2.raw', 'cat %s' % MARKER, check=False)
        self.walk.check('marker file found on volume 2',
                        self.marker.strip() in out, MARKER)
        os.makedirs('vol2-files')
        for name in ('payload.bin', 'payload.md5'):
            self.debugfs('vol2.raw', 'dump /%s vol2-files/%s' % (name, name))
        proc = sh.run('cd vol2-files && md5sum -c payload.md5', check=False)
        self.walk.check('md5sum OK', proc.returncode == 0 and
                        'payload.bin: OK' in proc.stdout,
                        'payload.bin matches payload.md5')

    # -- helpers ----------------------------------------------------------

    def cinder(self, *args, fields=None):
        return sh.run(['cinder'] + list(args), env=self.env,
                      fields=fields).stdout

    def glance(self, *args, fields=None):
        return sh.run(['glance'] + list(args), env=self.env,
                      fields=fields).stdout

    def debugfs(self, image, request, write=False, check=True):
        argv = ['debugfs'] + (['-w'] if write else []) + [
            '-R', request, disk.fs(image, self.offset)]
        proc = sh.run(argv, check=check)
        # debugfs exits 0 even when a request fails; it says so on stderr.
        if check and re.search(r'not found|No such file|[Ee]rror|Could not',
                               proc.stderr):
            raise sh.DemoError('debugfs %s: %s' % (request,
                                                   proc.stderr.strip()))
        return proc.stdout + proc.stderr

    def create_volume(self, image_id, name):
        out = self.cinder('create', '--image-id', image_id, '--name', name,
                          '1', fields=VOLUME_FIELDS)
        volume_id = sh.table_field(out, 'id')
        started = time.monotonic()
        try:
            self.stack.wait_volume(volume_id, 'available', timeout=180)
        except stackprocess.ServiceError as exc:
            raise sh.DemoError(str(exc)) from None
        sh.note('available after %.1f s' % (time.monotonic() - started))
        self.cinder('show', name, fields=VOLUME_FIELDS + (
            'bootable', 'os-vol-host-attr:host', 'volume_image_metadata'))
        self.walk.check('%s is available' % name, True)
        return volume_id

    def wait_image(self, image_id, timeout=180):
        """Seconds until glance says active (asked directly, quietly)."""
        started = time.monotonic()
        url = '%s/v2/images/%s' % (self.stack.glance.url, image_id)
        while True:
            with urllib.request.urlopen(url, timeout=10) as resp:
                status = json.load(resp)['status']
            if status == 'active':
                return time.monotonic() - started
            if status not in ('queued', 'saving', 'importing'):
                raise sh.DemoError('image %s is %s' % (image_id, status))
            if time.monotonic() - started > timeout:
                raise sh.DemoError('image %s still %s after %d s'
                                   % (image_id, status, timeout))
            time.sleep(0.5)

    def _vdi(self, volume_id):
        label = 'volume-%s' % volume_id
        refs = self.xs.call('VDI.get_by_name_label', label)
        if len(refs) != 1:
            raise sh.DemoError('%d VDIs named %s' % (len(refs), label))
        print('xapi> VDI.get_by_name_label(%r) -> %s' % (label, refs[0]))
        return refs[0]

    def export_volume(self, volume_id, dest):
        ref = self._vdi(volume_id)
        with open(dest, 'wb') as f:
            size = transfer.export_to_file(self.xs, ref, f, 'vhd')
        print('xapi> GET /export_raw_vdi?vdi=%s&format=vhd > %s (%.1f MiB: '
              'only the allocated blocks travel)' % (ref, dest, size / MiB))

    def import_volume(self, volume_id, src):
        ref = self._vdi(volume_id)
        size = os.path.getsize(src)
        with open(src, 'rb') as f:
            transfer.import_vdi(self.xs, ref, f, size, 'vhd')
        print('xapi> PUT /import_raw_vdi?vdi=%s&format=vhd < %s (%.1f MiB)'
              % (ref, src, size / MiB))

    def _backend_section(self):
        with open(self.stack.cinder.conf_path) as f:
            text = f.read()
        section = re.search(r'^\[%s\]\n.*?(?=\n\n|\Z)' % BACKEND, text,
                            re.S | re.M).group(0)
        return re.sub(r'^(xenapi_connection_password = ).*$', r'\1********',
                      section, flags=re.M)

    # -- --keep -----------------------------------------------------------

    def keep_running(self):
        stack = self.stack
        print('\n== The services keep running (--keep): Ctrl-C stops them '
              'and removes %s\n' % self.work)
        print('In another shell:\n')
        print('export PATH=%s:$PATH' % sh.BIN_DIR)
        for key, value in self.env.items():
            print('export %s=%s' % (key, value))
        print('cinder list; glance image-list\n')
        print('or with arguments only:')
        print('  %s list' % ' '.join(stack.cinder_cli_args()))
        print('  %s image-list\n' % ' '.join(stack.glance_cli_args()))
        print('XenAPI: %s  user %s  password %s  (throwaway, this run only)'
              % (self.xapi.url, XAPI_USER, self.password))
        print('cinder.conf: %s' % stack.cinder.conf_path)
        print('logs:')
        paths = dict(stack.log_paths())
        paths['xapi-server'] = os.path.join(self.work, self.xapi.log_path)
        for name, path in paths.items():
            print('  %-16s %s' % (name, path))
        print('\nWaiting for Ctrl-C (or SIGTERM) ...')
        while True:
            signal.pause()

    # -- cleanup ----------------------------------------------------------

    def _stop_xapi(self):
        if self.xapi.proc is not None:
            pid = self.xapi.proc.pid
            self.xapi.stop()
            print('stopped xenapinfs-xapi-server (pid %d)' % pid)

    def _remove_work(self):
        os.chdir('/')
        shutil.rmtree(self.work, ignore_errors=True)
        print('removed %s' % self.work)

    def show_logs(self):
        """The end of the logs that explain most failures, before they
        are removed."""
        if not self.work:
            return
        paths = [os.path.join(self.work, LOG_DIR, 'xapi-server.log')]
        if self.stack is not None:
            paths.insert(0, self.stack.log_paths()['cinder-volume'])
        for path in paths:
            tail = stackprocess.log_tail(path, 15)
            if tail:
                print('\n-- the end of %s:\n%s' % (os.path.basename(path),
                                                   tail))


def _signal_of(exc):
    """The signal behind an interruption: ours, Ctrl-C, or the SIGTERM
    that Stack turns into SystemExit(128 + signal) while it runs."""
    if isinstance(exc, Interrupted):
        return exc.signum
    if isinstance(exc, SystemExit) and isinstance(exc.code, int) and \
            exc.code > 128:
        return exc.code - 128
    return signal.SIGINT


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--keep', action='store_true',
                   help='leave the services running after the walk, '
                   'until Ctrl-C')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # The output is the walkthrough: line by line, also into a pipe.
    sys.stdout.reconfigure(line_buffering=True)
    signals = _Signals()
    signals.install()
    walk = sh.Walk(TITLES)
    cleanup = contextlib.ExitStack()
    demo = Demo(args, walk, cleanup)
    status = 1
    try:
        try:
            demo.run()
            error = None
        except (sh.DemoError, stackprocess.ServiceError) as exc:
            error = exc
        except Exception as exc:   # a bug, or a service's odd answer
            traceback.print_exc(file=sys.stdout)
            error = exc
        passed = walk.summary(error)
        status = 0 if passed else 1
        if not passed:
            demo.show_logs()
        elif args.keep:
            try:
                demo.keep_running()
            except (Interrupted, KeyboardInterrupt, SystemExit):
                print('')      # the normal end of --keep: still a PASS
    except (Interrupted, KeyboardInterrupt, SystemExit) as exc:
        signals.cleaning = True        # a second Ctrl-C must not cut this
        signum = _signal_of(exc)
        print('\n-- interrupted (%s): stopping and removing everything'
              % signal.Signals(signum).name)
        walk.summary(Interrupted(signum))
        status = 128 + signum
    finally:
        signals.cleaning = True
        print('\n== Cleaning up')
        try:
            cleanup.close()
        except Exception as exc:
            print('cleanup: %s' % exc)
            status = status or 1
    print('\ndemo: %s' % ('PASS' if status == 0 else 'FAIL'))
    return status


if __name__ == '__main__':
    sys.exit(main())
