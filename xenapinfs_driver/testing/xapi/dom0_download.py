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
"""The download half of the dom0 ``glance.py`` stand-in.

``fetch`` GETs the image and unpacks its gzip'd tar into a staging
directory without trusting it, checking the md5; ``import_vhds`` names
the VHDs with the uuids of ``uuid_stack``, links the chain and moves it
into the SR (see ``dom0_glance`` for the contract).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
import zlib

from xenapinfs_driver.testing.xapi import dom0_plugin
from xenapinfs_driver.vhd import errors as vhd_errors
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import ops
from xenapinfs_driver.vhd import stream
from xenapinfs_driver.vhd import tar

LOG = logging.getLogger(__name__)
# The plugin's errors, shared with the other half.
PluginError = dom0_plugin.PluginError
RetryableError = dom0_plugin.RetryableError
LEGACY_NAMES = ('snap.vhd', 'image.vhd', 'base.vhd')
SWAP = 'swap.vhd'


class _HashingReader:
    """The response body, read in bounded pieces and hashed on the way."""

    def __init__(self, resp):
        self.resp = resp
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.count = 0

    def read(self, n: int) -> bytes:
        data = self.resp.read(n)
        self.md5.update(data)
        self.count += len(data)
        return data


def _inflated(read):
    """The inflated pieces of a gzip stream, at most CHUNK bytes each.

    Concatenated members are one stream, as gzip(1) reads them; zeros after
    the last member (tape padding) are accepted, anything else is not.
    """
    dec = zlib.decompressobj(31)
    started = False
    buf = b''
    while True:
        if not buf:
            buf = read(dom0_plugin.CHUNK)
            if not buf:
                break
        if dec.eof:
            if not buf.strip(b'\0'):
                buf = b''
                continue
            dec = zlib.decompressobj(31)
        started = True
        while True:
            out = dec.decompress(buf, dom0_plugin.CHUNK)
            if out:
                yield out
            if dec.eof:
                buf = dec.unused_data
                break
            buf = dec.unconsumed_tail
            # A full piece may leave output pending inside zlib.
            if not buf and len(out) < dom0_plugin.CHUNK:
                break
    if not started:
        raise vhd_errors.ArchiveError('the image is empty')
    if not dec.eof:
        raise vhd_errors.Truncated('the gzip stream ends early')


def _member_name(member) -> str | None:
    """The file name a member is unpacked as; None to skip it."""
    name = member.name
    parts = [p for p in name.split('/') if p not in ('', '.')]
    if name.startswith('/') or '..' in parts:
        raise vhd_errors.ArchiveError('unsafe member name', member=name)
    if member.kind == tar.DIRECTORY and not parts:
        return None                       # "./", what tar -c . writes first
    if member.kind != tar.REGULAR:
        raise vhd_errors.ArchiveError('a %s member is not allowed'
                                      % member.kind, member=name)
    if len(parts) != 1:
        raise vhd_errors.ArchiveError('a member in a subdirectory is not '
                                      'allowed', member=name)
    return parts[0]


def _extract(reader, staging):
    """``tar -zx`` of the body into staging, without trusting it."""
    src = stream.Source(_inflated(reader.read), 'image')
    seen = set()
    for member in tar.iter_members(src):
        name = _member_name(member)
        if name is None:
            continue
        if name in seen:
            raise vhd_errors.ArchiveError('duplicate member', member=name)
        seen.add(name)
        with open(os.path.join(staging, name), 'xb') as out:
            for piece in src.slices(member.size, member.name):
                out.write(piece)
    # The rest of the body: the gzip trailer is checked and the md5 covers
    # every byte, as when tar reads its input to the end.
    while src.read_upto(dom0_plugin.CHUNK):
        pass


def fetch(url, headers, staging):
    """GET url, unpack it into staging, check its md5."""
    request = urllib.request.Request(url, headers=headers)
    # No proxy from the environment: the upload side (http.client) uses
    # none either, and a dom0 talks to glance directly.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        resp = opener.open(request, timeout=dom0_plugin.SOCKET_TIMEOUT)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise RetryableError('HTTP %d from %s: %s'
                             % (exc.code, url, exc.reason)) from None
    except urllib.error.URLError as exc:
        raise RetryableError('cannot reach %s: %s'
                             % (url, exc.reason)) from None
    except (http.client.HTTPException, OSError) as exc:
        raise RetryableError('%s from %s: %s'
                             % (type(exc).__name__, url, exc)) from None
    reader = _HashingReader(resp)
    with resp:
        try:
            _extract(reader, staging)
        except (vhd_errors.VhdError, zlib.error, OSError,
                http.client.HTTPException) as exc:
            raise RetryableError('cannot unpack %s after %d bytes: %s'
                                 % (url, reader.count, exc)) from None
        expected = (resp.headers.get('etag')
                    or resp.headers.get('content-md5')
                    or resp.headers.get('x-image-meta-checksum'))
    checksum = reader.md5.hexdigest()
    LOG.info('read %d bytes from %s', reader.count, url)
    if expected is None:
        LOG.info('no checksum header to compare md5 %s with', checksum)
    elif expected != checksum:
        raise RetryableError('checksum %s from glance does not match the '
                             'md5 %s of the %d bytes read from %s'
                             % (expected, checksum, reader.count, url))


def _handle_old_style_images(staging):
    """snap, image, base -> 0, 1, 2 (numbered in that order, as found);
    a lone VHD of any name becomes 0.vhd."""
    seq = 0
    for name in LEGACY_NAMES:
        path = os.path.join(staging, name)
        if os.path.exists(path):
            target = os.path.join(staging, '%d.vhd' % seq)
            if os.path.exists(target):
                # The plugin would silently replace it: a layer lost.
                raise PluginError('Corrupt image. It has both %s and '
                                  '%d.vhd' % (name, seq))
            os.rename(path, target)
            seq += 1
    names = os.listdir(staging)
    if len(names) == 1 and names[0] != '0.vhd' and names[0].endswith('.vhd'):
        os.rename(os.path.join(staging, names[0]),
                  os.path.join(staging, '0.vhd'))


def _sequenced_vhds(staging) -> list:
    """0.vhd .. n-1.vhd, checked to have no gaps; swap.vhd is ignored."""
    names = sorted(os.listdir(staging))
    count = sum(1 for n in names if n.endswith('.vhd') and n != SWAP)
    for seq in range(count):
        if not os.path.exists(os.path.join(staging, '%d.vhd' % seq)):
            raise PluginError('Corrupt image. Expected seq number: %d. '
                              'Files: %s' % (seq, names))
    if not count:
        raise PluginError('Corrupt image. No VHD in it. Files: %s' % names)
    return [os.path.join(staging, '%d.vhd' % seq) for seq in range(count)]


def import_vhds(sr_dir, staging, uuid_stack):
    _handle_old_style_images(staging)
    numbered = _sequenced_vhds(staging)
    if len(uuid_stack) < len(numbered):
        raise PluginError('the image holds %d VHDs but uuid_stack only %d '
                          'uuids' % (len(numbered), len(uuid_stack)))
    files = []
    for seq, path in enumerate(numbered):
        vdi_uuid = dom0_plugin.checked_uuid(uuid_stack.pop())
        target = os.path.join(staging, '%s.vhd' % vdi_uuid)
        # The real plugin's os.rename replaces any file. Callers rely on
        # that for the leaf only: cinder's driver puts an existing VDI's
        # uuid last in the stack, so that the image lands in that VDI. A
        # parent replacing a file would corrupt other VDIs: refused here.
        if os.path.lexists(target) or (seq and os.path.lexists(
                os.path.join(sr_dir, '%s.vhd' % vdi_uuid))):
            raise PluginError('%s.vhd already exists' % vdi_uuid)
        os.rename(path, target)
        files.append(target)
    try:
        # From the base up, as the plugin runs vhd-util modify -p: each
        # child records its parent's time stamp, which relinking changes.
        for child, parent in reversed(list(zip(files, files[1:]))):
            ops.set_parent(child, parent)
        with image.VhdFile(files[0]) as leaf:
            if leaf.footer.hidden:
                raise PluginError('VHD %s is marked as hidden without child'
                                  % os.path.basename(files[0]))
        chain = ops.chain_of(files[0])
    except vhd_errors.VhdError as exc:
        raise PluginError('invalid VHD chain: %s' % exc) from None
    if chain != [os.path.abspath(f) for f in files]:
        raise PluginError('the chain of %s is %s, not the %d VHDs of the '
                          'image' % (os.path.basename(files[0]),
                                     [os.path.basename(c) for c in chain],
                                     len(files)))
    moved = []
    try:
        # Parents first: the leaf, which may replace a live VDI's file,
        # goes last, when its whole chain is in place.
        for path in reversed(files):
            dest = os.path.join(sr_dir, os.path.basename(path))
            os.rename(path, dest)
            moved.append(dest)
    except BaseException:
        for dest in moved:
            os.unlink(dest)
        raise
    leaf_uuid = os.path.basename(files[0])[:-len('.vhd')]
    return {'root': {'uuid': leaf_uuid}}
