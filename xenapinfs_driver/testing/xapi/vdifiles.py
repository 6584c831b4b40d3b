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
"""An SR's VHD files as VDI records: survey, scan, garbage collection.

A file SR names each VDI's file ``<uuid>.vhd``; a hidden file is a parent
kept for its children (a "base copy", ``managed`` False). ``scan`` makes a
record for each file it does not know, drops those whose file is gone,
refreshes sizes and parents (``sm_config['vhd-parent']``), and skips,
logging, what is not a valid VHD. ``collect_garbage`` removes, like
XenServer's garbage collector, each hidden ancestor no file uses any more.
All of it runs with the server lock held.
"""

from __future__ import annotations

import logging
import os

from xenapinfs_driver.testing.xapi import storage as storagemod
from xenapinfs_driver.vhd import errors as vhderrors
from xenapinfs_driver.vhd import format as fmt
from xenapinfs_driver.vhd import image

LOG = logging.getLogger(__name__)


def vhd_path(sr_dir: str, vdi_uuid: str) -> str:
    return os.path.join(sr_dir, '%s.vhd' % vdi_uuid)


def file_info(path: str) -> dict:
    """What a scan learns from a VHD file; raises VhdError."""
    with image.VhdFile(path) as vhd:
        parent = None
        if vhd.footer.disk_type == fmt.DISK_DIFFERENCING:
            name = vhd.header.parent_name.replace('\\', '/')
            parent = os.path.basename(name)
            if parent.endswith('.vhd'):
                parent = parent[:-len('.vhd')]
        return {'size': vhd.size, 'hidden': bool(vhd.footer.hidden),
                'parent': parent, 'file_size': vhd.file_size}


def survey(sr_dir: str) -> dict:
    """{uuid: file_info} of the valid ``<uuid>.vhd`` files in an SR."""
    out = {}
    for name in sorted(os.listdir(sr_dir)):
        stem = name[:-len('.vhd')]
        if not name.endswith('.vhd') or not storagemod.UUID_RE.match(stem):
            continue
        try:
            out[stem] = file_info(os.path.join(sr_dir, name))
        except vhderrors.VhdError as exc:
            LOG.warning('%s skipped: not a valid VHD: %s', name, exc)
    return out


def drop_record(db, vdi) -> None:
    for vbd in db.find('VBD', VDI=vdi):
        db.destroy('VBD', vbd)
    db.destroy('VDI', vdi)


def scan(call, sr: str, sr_dir: str) -> None:
    """Bring the SR's VDI records in line with its files (lock held)."""
    db = call.db
    files = survey(sr_dir)
    known = {db.get('VDI', v)['location']: v for v in db.find('VDI', SR=sr)}
    for location, vdi in known.items():
        if location not in files:
            LOG.info('VDI %s: its file is gone, record dropped', location)
            drop_record(db, vdi)
    for location, info in files.items():
        vdi = known.get(location)
        if vdi is None:
            db.create('VDI', dict(
                fields(info), uuid=location, location=location, SR=sr,
                name_label='base copy' if info['hidden'] else ''))
        else:
            rec = db.get('VDI', vdi)
            sm_config = dict(rec['sm_config'], **fields(info)['sm_config'])
            if not info['parent']:
                sm_config.pop('vhd-parent', None)
            rec.update(fields(info), sm_config=sm_config)


def fields(info: dict) -> dict:
    out = {'virtual_size': str(info['size']),
           'physical_utilisation': str(info['file_size']),
           'sm_config': {'vhd-parent': info['parent']}
           if info['parent'] else {}}
    if info['hidden']:
        out.update(managed=False, read_only=True)
    return out


def refresh(db, vdi, path) -> None:
    info = file_info(path)
    rec = db.get('VDI', vdi)
    rec['virtual_size'] = str(info['size'])
    rec['physical_utilisation'] = str(info['file_size'])
    if info['parent']:
        rec['sm_config']['vhd-parent'] = info['parent']
    else:
        rec['sm_config'].pop('vhd-parent', None)


def children(sr_dir: str, parent_uuid: str) -> list:
    return [u for u, info in survey(sr_dir).items()
            if info['parent'] == parent_uuid]


def collect_garbage(db, sr: str, sr_dir: str, parent) -> None:
    """Remove hidden ancestors no file uses, from parent upwards."""
    while parent:
        path = vhd_path(sr_dir, parent)
        try:
            info = file_info(path)
        except vhderrors.VhdError as exc:
            LOG.warning('garbage collection stops at %s: %s', path, exc)
            return
        if not info['hidden'] or children(sr_dir, parent):
            return
        os.unlink(path)
        for vdi in db.find('VDI', SR=sr, location=parent):
            drop_record(db, vdi)
        LOG.info('base copy %s removed: no child left', parent)
        parent = info['parent']
