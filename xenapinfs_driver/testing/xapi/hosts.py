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
"""The pool: its hosts, their PIFs and control domains, and VBDs.

Host A (the master) and, in pool mode, host B; each has one PIF whose
``IP`` is its listener's address and a control domain (``dom0``,
``is_control_domain`` True) resident on it. Host uuids derive from the
server root, so a server restarted over the same root is the same host.
VBDs only record attachment (``currently_attached``): nothing is attached
for real, but a plugged VBD keeps its VDI from being destroyed and its SR
from being unplugged, as on XenServer.
"""

from __future__ import annotations

import uuid as uuidlib

from xenapinfs_driver.testing.xapi import errors
from xenapinfs_driver.testing.xapi import storage as storagemod
from xenapinfs_driver.testing.xapi import wire

SOFTWARE = {'product_brand': 'XCP-ng', 'product_version': '8.2.1',
            'product_version_text': '8.2', 'product_version_text_short':
            '8.2', 'platform_name': 'XCP', 'platform_version': '3.2.1',
            'build_number': 'release/yangtze/master/58', 'xapi': '1.20',
            'xen': '4.13.5', 'linux': '4.19.0+1', 'network_backend':
            'openvswitch'}


def host_uuid(root: str, name: str) -> str:
    """A host's uuid: stable for a given server root."""
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL,
                             'xapi-test:%s:%s' % (root, name)))


def add_host(db, root: str, name: str, address: str) -> str:
    uuid = host_uuid(root, name)
    host = db.create('host', {
        'uuid': uuid, 'name_label': name, 'hostname': name,
        'address': address,
        'software_version': dict(SOFTWARE, hostname=name)})
    mac = '02:00:00:00:00:%02x' % (len(db.refs('PIF')) + 1)
    db.create('PIF', {'host': host, 'IP': address, 'MAC': mac})
    db.create('VM', {'name_label': 'Control domain on host: %s' % name,
                     'resident_on': host, 'domid': '0',
                     'is_control_domain': True})
    return host


def seed(db, root: str, master_address: str,
         member_address: str | None = None) -> tuple[str, str | None]:
    """The pool, with its master and maybe a member; returns their refs."""
    master = add_host(db, root, 'host-a', master_address)
    db.create('pool', {'master': master})
    member = None
    if member_address is not None:
        member = add_host(db, root, 'host-b', member_address)
    return master, member


# -- VBD.* -------------------------------------------------------------------

_MODES = {'ro': 'RO', 'rw': 'RW'}
_TYPES = {'disk': 'Disk', 'cd': 'CD', 'floppy': 'Floppy'}
VBD_RECORD = wire.Record(
    {'VM': wire.VMRef, 'VDI': wire.VDIRef,
     'userdevice': wire.String, 'bootable': wire.Bool, 'mode': wire.String,
     'type': wire.String, 'empty': wire.Bool, 'other_config': wire.Map,
     'qos_algorithm_type': wire.String, 'qos_algorithm_params': wire.Map},
    # device and currently_attached are in the model's struct too, but
    # the host decides them (a real one names the device when it plugs
    # the VBD); they are type-checked and dropped, a new VBD is detached.
    {'unpluggable': (wire.Bool, True), 'device': (wire.String, ''),
     'currently_attached': (wire.Bool, False)})


def vbd_create(call, args: VBD_RECORD):
    db = call.db
    mode = _MODES.get(args['mode'].lower())
    vtype = _TYPES.get(args['type'].lower())
    if mode is None or vtype is None:
        bad = 'mode' if mode is None else 'type'
        raise errors.XapiError('INVALID_VALUE', bad, args[bad])
    with db.lock:
        db.get('VM', args['VM'])
        if not args['empty']:
            db.get('VDI', args['VDI'])
        used = {db.get('VBD', b)['userdevice']
                for b in db.find('VBD', VM=args['VM'])}
        device = args['userdevice']
        if device == 'autodetect':
            device = next(str(n) for n in range(len(used) + 1)
                          if str(n) not in used)
        elif device in used:
            raise errors.XapiError('DEVICE_ALREADY_EXISTS', device)
        fields = dict(args, userdevice=device, mode=mode, type=vtype)
        del fields['device'], fields['currently_attached']
        return db.create('VBD', fields)


def vbd_plug(call, vbd: wire.VBDRef):
    db = call.db
    with db.lock:
        rec = db.get('VBD', vbd)
        if rec['currently_attached']:
            raise errors.XapiError('DEVICE_ALREADY_ATTACHED', vbd)
        if not rec['empty']:
            storagemod.sr_dir(call, db.get('VDI', rec['VDI'])['SR'])
        n = int(rec['userdevice']) if rec['userdevice'].isdigit() else 0
        rec.update(currently_attached=True,
                   device='xvd%s' % chr(ord('a') + n % 26))
    return ''


def vbd_unplug(call, vbd: wire.VBDRef):
    with call.db.lock:
        rec = call.db.get('VBD', vbd)
        if not rec['currently_attached']:
            raise errors.XapiError('DEVICE_ALREADY_DETACHED', vbd)
        rec['currently_attached'] = False
    return ''


def vbd_destroy(call, vbd: wire.VBDRef):
    with call.db.lock:
        if call.db.get('VBD', vbd)['currently_attached']:
            raise errors.not_allowed('VBD is currently attached')
        call.db.destroy('VBD', vbd)
    return ''


METHODS = {
    'VBD.create': vbd_create,
    'VBD.plug': vbd_plug,
    'VBD.unplug': vbd_unplug,
    'VBD.unplug_force': vbd_unplug,
    'VBD.destroy': vbd_destroy,
}
