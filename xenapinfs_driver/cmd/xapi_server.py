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
"""``xenapinfs-xapi-server``: the XenAPI test server as a process.

Prints ``listening on URL`` on stdout once it serves, logs each call's
method name to stderr (never a parameter: no password, no session), and
ends cleanly on SIGTERM or SIGINT. Its records survive it in the root's
database file. Exit status: 0 after a signal, 1 when it cannot start (a
corrupt database file among the reasons, named), 2 bad usage.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from xenapinfs_driver.testing.xapi import collector
from xenapinfs_driver.testing.xapi import server as servermod

PROG = 'xenapinfs-xapi-server'
EPILOG = """\
example:
  %(prog)s --root /tmp/xapi --password-file pw --export nfs.example:/srv/c
The ``testing.*`` XML-RPC methods (fault injection, call log, state) are
for tests only; no XenServer has them.
"""


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(':')
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError('%r is not HOST:PORT' % text)
    return host.strip('[]'), int(port)


def _export(text: str) -> tuple[str, str]:
    server, sep, path = text.partition(':')
    if not sep or not server or not path.startswith('/'):
        raise argparse.ArgumentTypeError('%r is not SERVER:/PATH' % text)
    return server, path


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError('%r is not a number of bytes'
                                         % text) from None
    if value <= 0:
        raise argparse.ArgumentTypeError('the size must be positive')
    return value


def _delay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError('not a number of seconds: %r'
                                         % text) from None
    if not 0 <= value < 86400:
        raise argparse.ArgumentTypeError('the delay must be between 0 '
                                         'and 86400 seconds')
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description='A XenAPI server on loopback that keeps SRs as '
        'directories and VDIs as VHD files, for tests.')
    p.add_argument('--listen', type=_hostport, default=('127.0.0.1', 0),
                   metavar='HOST:PORT',
                   help='the pool master\'s address (default 127.0.0.1:0, '
                   'any free port)')
    p.add_argument('--root', required=True, metavar='DIR',
                   help='the fake dom0\'s files: exports, SR mounts')
    p.add_argument('--username', default='root')
    pw = p.add_mutually_exclusive_group(required=True)
    pw.add_argument('--password', help='visible to other users in ps: '
                    'prefer --password-file')
    pw.add_argument('--password-file', metavar='FILE',
                    help='a file whose first line is the password')
    p.add_argument('--slave-listen', type=_hostport, metavar='HOST:PORT',
                   help='also serve a pool member there (a login answers '
                   'HOST_IS_SLAVE); port 0 takes the master\'s port')
    p.add_argument('--export', type=_export, action='append', default=[],
                   metavar='SERVER:PATH', help='an NFS export that exists '
                   '(repeatable)')
    p.add_argument('--sr-size', type=_size, metavar='BYTES',
                   help='a quota per export: writes beyond it fail as on a '
                   'full disk')
    p.add_argument('--forget-srs', action='store_true',
                   help='start as a host that forgot its SRs, or a rebuilt '
                   'pool: the SR, PBD and VDI records in the root\'s '
                   'database are dropped, the files on the exports stay')
    p.add_argument('--tls-cert', metavar='FILE', help='PEM certificate')
    p.add_argument('--tls-key', metavar='FILE', help='PEM private key')
    p.add_argument('--gc', choices=collector.MODES, default='auto',
                   help='auto (default): garbage-collect and coalesce VHD '
                   'chains in the background, as XenServer\'s storage '
                   'manager does; off: only when a test asks '
                   '(testing.gc_run)')
    p.add_argument('--gc-delay', type=_delay, metavar='SECONDS',
                   default=collector.DEFAULT_DELAY,
                   help='how long after a VDI destroy, snapshot, clone or '
                   'SR scan a pass starts (default %(default)s)')
    p.add_argument('--dom0-plugins', choices=('builtin', 'os-xenapi'),
                   default='builtin',
                   help="who answers host.call_plugin: our stand-in "
                   "(builtin, the default) or os-xenapi's own dom0 plugins, "
                   'run on Python 3 through a shim (os-xenapi must be '
                   'installed)')
    p.add_argument('-v', '--verbose', action='store_true',
                   help='log HTTP requests too')
    return p


def _password(args) -> str:
    if args.password is not None:
        return args.password
    with open(args.password_file, encoding='utf-8') as f:
        return f.readline().rstrip('\r\n')


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser().error('--tls-cert and --tls-key go together')
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    try:
        server = servermod.XapiServer(
            args.root, username=args.username, password=_password(args),
            listen=args.listen, slave_listen=args.slave_listen,
            exports=args.export, sr_size=args.sr_size,
            tls_cert=args.tls_cert, tls_key=args.tls_key,
            forget_srs=args.forget_srs, gc=args.gc,
            gc_delay=args.gc_delay, dom0_plugins=args.dom0_plugins).start()
    except (OSError, ValueError, RuntimeError) as exc:
        print('%s: cannot start: %s' % (PROG, exc), file=sys.stderr)
        return 1
    old = {sig: signal.signal(sig, on_signal)
           for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        print('listening on %s' % server.url, flush=True)
        if server.slave_url:
            logging.getLogger(PROG).info('pool member listening on %s',
                                         server.slave_url)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 0


if __name__ == '__main__':
    sys.exit(main())
