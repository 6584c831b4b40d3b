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
"""What an image is, and how dom0 reaches glance on the caller's behalf."""

from cinder.image import glance
from cinder.image import image_utils

XENSERVER = 'xenserver'     # container ovf, disk vhd: a tgz of a VHD chain
BARE_VHD = 'vhd'            # any other container, disk vhd: one VHD file
RAW = 'raw'                 # bare raw: the disk itself, fetched sparse
OTHER = 'other'             # what cinder's image_utils converts


def kind(image_meta):
    """``XENSERVER``, ``BARE_VHD``, ``RAW`` or ``OTHER`` for glance
    metadata."""
    image_meta = image_meta or {}
    if image_meta.get('disk_format') == 'raw' and \
            image_meta.get('container_format') in ('bare', None):
        return RAW
    if image_meta.get('disk_format') != 'vhd':
        return OTHER
    if image_meta.get('container_format') == 'ovf':
        return XENSERVER
    return BARE_VHD


def packs_qcow2(image_meta):
    """Whether the stream path packs an upload as qcow2 itself: in any
    container but ``compressed`` (which cinder's ``upload_volume``
    compresses after converting, with its accelerator, on a file). One
    local copy, no second file, with cinder's ``image_compress_on_upload``
    on or off (see :func:`compresses_qcow2`)."""
    image_meta = image_meta or {}
    return (image_meta.get('disk_format') == 'qcow2' and
            image_meta.get('container_format') != 'compressed')


def compresses_qcow2():
    """Whether the driver's qcow2 has compressed clusters, as qemu-img's
    would: cinder's ``image_compress_on_upload`` (on by default). They
    cost a second pass over the disk (CPU, not space)."""
    return bool(image_utils.CONF.image_compress_on_upload)


def endpoint(context):
    """The first glance API URL, full, as dom0's plugin wants it."""
    netloc, use_ssl = next(iter(glance.get_api_servers(context)))
    return '%s://%s' % ('https' if use_ssl else 'http', netloc.rstrip('/'))


def identity_headers(context):
    """The headers that let glance act as the caller (no None values)."""
    headers = {
        'X-Auth-Token': context.auth_token or '',
        'X-User-Id': context.user_id or '',
        'X-Tenant-Id': context.project_id or '',
        'X-Roles': ','.join(context.roles or []),
        'X-Identity-Status': 'Confirmed',
    }
    return headers
