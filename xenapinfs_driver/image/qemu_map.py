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
"""A qcow2 file read as its guest disk, where qemu-img says the data lies.

``qemu-img map --output=json`` lists the guest disk as extents: zeros
(``zero``), or data stored plainly in the file (``data`` with ``offset``,
the host offset). When every data extent has an offset the guest's bytes
can be read straight from the file, so the qcow2 file is the only local
copy of the image: no raw file. :class:`MappedDisk` is such a disk, with
the interface ``vhdstream.PackedVhd`` packs (``pack.Disk``'s).

Data without an offset is compressed clusters (the caller has refused
encrypted images): :func:`parse` gives them offset None, and the disk
inflates them where they lie (:mod:`.qcow2_clusters`), once to check them
all before anything is written, and again as they are sent.

A map that cannot be read that way (gaps, overlapping host ranges, a
backing layer, more output than :data:`MAX_MAP_BYTES`, compressed clusters
of a kind not read here) raises :class:`NotMappable`, and the caller
converts the image with qemu-img instead. Data that the map
puts past the end of the file raises :class:`Damaged`: the file is cut
short, and the image is refused.
"""

import bisect
import json
import os
import selectors
import subprocess
import sys
import time

from oslo_concurrency import processutils

from xenapinfs_driver.vhd import errors as vhd_errors
from xenapinfs_driver.vhd import pack

BLOCK = pack.BLOCK
SECTOR = 512
# The JSON qemu-img may print. An extent takes about 110 bytes: 8 MiB is
# some 75000 extents, far more than an image written by qemu-img holds
# (it merges neighbours); parsed, it stays within tens of MiB.
MAX_MAP_BYTES = 8 << 20
MAX_CHECK_BYTES = 64 << 10
MAX_STDERR = 4 << 10
_ZERO_PIECE = bytes(pack.SCAN_PIECE)
# Seconds qemu-img may run: it reads only the file's metadata.
TIMEOUT = 300


class NotMappable(Exception):
    """The guest's data cannot be read straight from the file."""


class Damaged(Exception):
    """The file is damaged: qemu-img would read zeros in place of data."""


def qemu_img(args, limit, timeout=TIMEOUT, limits=None):
    """Run ``qemu-img ARGS``: ``(returncode, stdout, stderr)``.

    At most ``limit`` bytes of output are kept (more raises
    :class:`NotMappable`) and it runs at most ``timeout`` seconds;
    ``limits``: an oslo ``ProcessLimits`` applied through prlimit.
    """
    cmd = ['qemu-img'] + list(args)
    if limits is not None:
        cmd = [sys.executable, '-m', 'oslo_concurrency.prlimit'] + \
            limits.prlimit_args() + ['--'] + cmd
    env = dict(os.environ, LC_ALL='C')
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, close_fds=True)
    out, err = bytearray(), bytearray()
    # A selector, not select(): a service's descriptors may pass 1024.
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout.fileno(), selectors.EVENT_READ, out)
    sel.register(proc.stderr.fileno(), selectors.EVENT_READ, err)
    deadline = time.monotonic() + timeout
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise NotMappable('qemu-img %s ran more than %d s'
                                  % (args[0], timeout))
            for key, _ in sel.select(left):
                try:
                    data = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(key.fd)
                elif key.data is out:
                    out += data
                    if len(out) > limit:
                        raise NotMappable(
                            'qemu-img %s printed more than %d bytes'
                            % (args[0], limit))
                elif len(err) < MAX_STDERR:
                    err += data[:MAX_STDERR - len(err)]
        code = proc.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise NotMappable('qemu-img %s ran more than %d s'
                          % (args[0], timeout)) from None
    finally:
        sel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return code, bytes(out), err.decode('utf-8', 'replace').strip()


def _int(item, key, index):
    value = item.get(key)
    if type(value) is not int or value < 0:
        raise NotMappable('extent %d of its map has %s %r'
                          % (index, key, value))
    return value


def parse(text, virtual_size, file_size, compressed=False):
    """The data extents of a JSON map: ``[(start, end, offset)]``.

    Guest bytes ``start..end`` are the file's bytes from ``offset``; the
    rest of the disk reads as zeros. Sorted, merged where contiguous.
    ``compressed``: data without an offset is taken (offset None), not
    refused.
    """
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise NotMappable('its map is not JSON: %s' % exc) from None
    if not isinstance(items, list):
        raise NotMappable('its map is not a list of extents')
    found, pos = [], 0
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise NotMappable('extent %d of its map is not an object'
                              % index)
        start = _int(item, 'start', index)
        length = _int(item, 'length', index)
        if start != pos or length == 0:
            raise NotMappable('extent %d of its map covers %d+%d, not the '
                              'bytes from %d' % (index, start, length, pos))
        if item.get('depth', 0) != 0:
            raise NotMappable('guest bytes %d+%d come from a backing layer'
                              % (start, length))
        zero, data = item.get('zero'), item.get('data')
        if type(zero) is not bool or type(data) is not bool:
            raise NotMappable('extent %d of its map has no zero/data flags'
                              % index)
        pos = start + length
        if zero:
            # Reads as zeros: a hole. Its host range, if any, is not read
            # (it may even lie past the end of the file, as the unwritten
            # tail of a cluster with subclusters does).
            continue
        if not data:
            raise NotMappable('guest bytes %d+%d are neither data nor '
                              'zeros' % (start, length))
        if 'offset' not in item:
            if not compressed:
                raise NotMappable('guest bytes %d+%d are not stored '
                                  'plainly in the file (compressed or '
                                  'encrypted clusters)' % (start, length))
            if found and found[-1][1] == start and found[-1][2] is None:
                found[-1] = (found[-1][0], pos, None)
            else:
                found.append((start, pos, None))
            continue
        offset = _int(item, 'offset', index)
        if offset + length > file_size:
            raise Damaged('its map puts guest bytes %d+%d at file offset '
                          '%d, past the end of the file (%d bytes): the '
                          'file is cut short'
                          % (start, length, offset, file_size))
        if found and found[-1][1] == start and found[-1][2] is not None \
                and found[-1][2] + start - found[-1][0] == offset:
            found[-1] = (found[-1][0], pos, found[-1][2])
        else:
            found.append((start, pos, offset))
    if pos != virtual_size:
        raise NotMappable('its map covers %d bytes of a %d-byte disk'
                          % (pos, virtual_size))
    hosts = sorted((o, o + e - s) for s, e, o in found if o is not None)
    for (_, end), (start, _) in zip(hosts, hosts[1:]):
        if start < end:
            raise NotMappable('two extents of its map share the file bytes '
                              'at offset %d' % start)
    return found


class MappedDisk:
    """The guest disk of the qcow2 file at ``path``, read through its
    data ``extents`` (from :func:`parse`); ``name`` appears in errors.

    ``inflater(fd, file_size, name)`` reads the extents without an offset
    (a ``qcow2_clusters.Clusters``); it checks them all here.

    :raises Damaged: a compressed cluster is damaged.
    :raises NotMappable: compressed clusters of a kind not read here.
    """

    def __init__(self, path, virtual_size, extents, name=None,
                 inflater=None):
        self.name = name or path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.size = virtual_size
        # A VHD counts sectors; qemu-img creates whole sectors anyway.
        self.virtual_size = -(-virtual_size // SECTOR) * SECTOR
        self.nblocks = -(-virtual_size // BLOCK)
        self.extents = extents
        self._starts = [s for s, _, _ in extents]
        self.clusters = None
        # Which blocks compressed clusters put data in (one byte each).
        self._inflated_data = None
        try:
            self._check_compressed(inflater)
        except BaseException:
            self.close()
            raise

    def _check_compressed(self, inflater):
        packed = [(s, e) for s, e, o in self.extents if o is None]
        if not packed:
            return
        if inflater is None:
            raise NotMappable('compressed clusters, and nothing to inflate '
                              'them')
        self.clusters = inflater(self.fd, os.fstat(self.fd).st_size,
                                 self.name)
        self._inflated_data = bytearray(self.nblocks)
        for start, stop in packed:
            self.clusters.verify(start, stop, BLOCK, self._inflated_data)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def block_length(self, idx):
        return min(BLOCK, self.size - idx * BLOCK)

    def _host(self, n, offset):
        try:
            data = os.pread(self.fd, n, offset)
        except OSError as exc:
            raise vhd_errors.VhdError('cannot read at offset %d: %s'
                                      % (offset, exc.strerror),
                                      source=self.name) from None
        if len(data) < n:
            # parse() checked the offsets: the file shrank since.
            raise vhd_errors.Truncated('ends at offset %d: changed while '
                                       'being read' % (offset + len(data)),
                                       source=self.name)
        return data

    def pread(self, n, offset):
        """``n`` guest bytes from guest ``offset``: zeros but for data."""
        out = bytearray(n)
        end = offset + n
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        for start, stop, host in self.extents[i:]:
            if start >= end:
                break
            lo, hi = max(start, offset), min(stop, end)
            if lo < hi:
                out[lo - offset:hi - offset] = self._host(
                    hi - lo, host + lo - start) if host is not None else \
                    self._inflated(lo, hi - lo)
        return bytes(out)

    def _inflated(self, offset, n):
        try:
            return self.clusters.read(offset, n)
        except (Damaged, NotMappable) as exc:
            # Checked when opened: the file changed since.
            raise vhd_errors.VhdError('%s: changed while being read'
                                      % exc, source=self.name) from None

    def nonzero_blocks(self, read):
        """The blocks holding a non-zero byte, ascending: only data
        extents are read, and a block only up to its first non-zero
        piece."""
        found = []
        for start, stop, host in self.extents:
            for idx in range(start // BLOCK, (stop - 1) // BLOCK + 1):
                if found and found[-1] == idx:
                    continue
                lo = max(start, idx * BLOCK)
                hi = min(stop, (idx + 1) * BLOCK)
                if host is None:
                    if self._inflated_data[idx]:
                        found.append(idx)
                elif self._has_data(host + lo - start, hi - lo, read):
                    found.append(idx)
        return found

    def _has_data(self, pos, n, read):
        while n > 0:
            k = min(pack.SCAN_PIECE, n)
            piece = self._host(k, pos)
            read(k)
            if piece != (_ZERO_PIECE if k == pack.SCAN_PIECE else bytes(k)):
                return True
            pos, n = pos + k, n - k
        return False


def process_limits(cpu_seconds, address_space):
    """prlimit's bounds for qemu-img (cinder's introspection limits)."""
    return processutils.ProcessLimits(cpu_time=cpu_seconds,
                                      address_space=address_space)
