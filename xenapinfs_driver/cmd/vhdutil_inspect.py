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
"""``vhd-util query``, ``check`` and ``read``: what a VHD is, and whether
it is valid, in blktap's words."""

from __future__ import annotations

import errno
import os
import time
import uuid as uuidlib

from xenapinfs_driver.cmd import vhdutil_common as common
from xenapinfs_driver.cmd import vhdutil_read as dumping
from xenapinfs_driver.vhd import chain
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import image
from xenapinfs_driver.vhd import validate

# blktap refuses timestamps further in the future than this (NFS skew).
TIMESTAMP_SLACK = 1800


# -- query -------------------------------------------------------------------

def cmd_query(o: dict) -> int:
    name = o['n']
    common.need(name)
    rc = 0
    with image.VhdFile(name) as vhd:
        if 'v' in o:
            common.out('%d' % (vhd.size >> 20))
        if 's' in o:
            common.out('%d' % (vhd.footer_offset + fmt.FOOTER_SIZE))
        if 'p' in o:
            if vhd.footer.disk_type != fmt.DISK_DIFFERENCING:
                common.out('%s has no parent' % name)
            else:
                try:
                    common.out(os.path.realpath(chain.parent_path(name)))
                except errors.VhdError as exc:
                    # The glance plugin looks for these words on stdout.
                    common.out('query failed')
                    common.err('query', exc)
                    rc = errno.EINVAL
        if 'f' in o:
            common.out('hidden: %d' % vhd.footer.hidden)
        if 'd' in o:
            try:
                common.out('chain depth: %d' % len(chain.chain_of(name)))
            except errors.VhdError as exc:
                common.err('query', 'error checking chain depth: %s' % exc)
                rc = rc or errno.EINVAL
        if 'S' in o:
            entries = vhd.header.max_table_entries if vhd.header else 0
            block = vhd.block_size if vhd.header else 0
            common.out('%d' % (entries * block >> 20))
    return rc


# -- check -------------------------------------------------------------------

_PARTS = [(errors.InvalidFooter, 'footer'), (errors.InvalidHeader, 'header'),
          (errors.InvalidTable, 'BAT'), (errors.ChainError, 'parent'),
          (errors.VhdError, 'file')]


def _problem(exc: errors.VhdError) -> str:
    part = next(p for cls, p in _PARTS if isinstance(exc, cls))
    what = '%s: %s' % (exc.field, exc.reason) if exc.field else exc.reason
    return '%s invalid: %s' % (part, errors.printable(what))


def _vhd_now() -> int:
    return int(time.time()) - fmt.VHD_EPOCH


def _check_vhd(path: str, o: dict) -> str | None:
    """What is wrong with the VHD at path, in one line, or None."""
    try:
        vhd = image.VhdFile(path, check_layout='B' not in o)
    except errors.VhdError as exc:
        return _problem(exc)
    with vhd:
        now = None if 't' in o else _vhd_now() + TIMESTAMP_SLACK
        msg = validate.audit(vhd, now=now, bitmaps='b' in o)
        if msg or vhd.footer.disk_type != fmt.DISK_DIFFERENCING:
            return msg
        try:
            parent = chain.parent_path(path)
        except errors.VhdError as exc:
            return 'parent locator invalid: %s' % errors.printable(exc.reason)
        if 'I' not in o:
            try:
                with image.VhdFile(parent) as par:
                    pid = par.footer.unique_id
            except errors.VhdError as exc:
                return 'invalid parent %s: %s' % (
                    errors.printable(parent), exc)
            if pid != vhd.header.parent_unique_id:
                return ('invalid parent %s: invalid parent uuid %s '
                        '(the parent is %s)' % (
                            errors.printable(parent), vhd.header.parent_uuid,
                            uuidlib.UUID(bytes=pid)))
    return None


def cmd_check(o: dict) -> int:
    common.not_implemented(o, {'i': 'ignore a missing primary footer',
                               's': 'statistics'})
    if 'B' in o and 'b' in o:
        raise common.Usage('-B precludes -b')
    name = o['n']
    common.need(name)
    path = name
    seen = set()
    while True:
        msg = _check_vhd(path, o)
        if msg:
            common.out(msg)
            common.out('%s appears invalid; dumping metadata' % path)
            _dump(path, False)
            return errno.EINVAL
        common.out('%s is valid' % path)
        if 'p' not in o:
            return 0
        with image.VhdFile(path) as vhd:
            if vhd.footer.disk_type != fmt.DISK_DIFFERENCING:
                return 0
        seen.add(os.path.realpath(path))
        path = os.path.realpath(chain.parent_path(path))
        if path in seen:
            common.out('parent invalid: the chain loops back to %s'
                       % errors.printable(path))
            return errno.EINVAL


# -- read --------------------------------------------------------------------

def _dump(path: str, hexa: bool) -> None:
    try:
        with image.VhdFile(path) as vhd:
            lines = dumping.headers_lines(vhd, hexa)
    except errors.VhdError:
        lines = dumping.raw_dump_lines(path, hexa)
    for line in lines:
        common.out(line)


def cmd_read(o: dict) -> int:
    common.not_implemented(o, {k: 'read -%s' % k for k in 'tbBmiejadcrR'})
    name = o['n']
    common.need(name)
    hexa = 'x' in o
    try:
        vhd = image.VhdFile(name)
    except errors.VhdError as exc:
        common.err('read', 'Failed to open %s' % exc)
        common.out('')
        common.out('%s appears invalid; dumping headers' % name)
        common.out('')
        for line in dumping.raw_dump_lines(name, hexa):
            common.out(line)
        return errno.EINVAL
    with vhd:
        if 'p' in o:
            for line in dumping.headers_lines(vhd, hexa):
                common.out(line)
    return 0
