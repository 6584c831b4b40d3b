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
"""XenServer's dom0 ``glance.py`` plugin, as functions on an SR directory.

The test XenAPI server answers ``host.call_plugin('glance.py',
'download_vhd2' | 'upload_vhd2', ...)`` with these functions; they do what
the plugin does on a real dom0 (os-xenapi's ``glance.py`` and ``utils.py``,
plugin version 2.x), with our VHD library in place of ``tar`` and
``vhd-util``:

* ``download_vhd2`` GETs ``{endpoint}/v2/images/{id}/file``, unpacks the
  gzip'd tar into a staging directory inside the SR while computing its
  md5, checks it against ``ETag``, else ``Content-MD5`` (what glance 33
  sends, as hex), else ``x-image-meta-checksum``, names the VHDs with uuids
  popped from the end of ``uuid_stack`` (``0.vhd``, the leaf, first),
  points each child at its parent and moves them into the SR.
* ``upload_vhd2`` hard-links the chain (leaf first) into a staging
  directory as ``0.vhd`` .. ``n.vhd``, PATCHes the image to ovf/vhd,
  checks that it is ``queued`` and PUTs ``tar -zc .`` of it, chunked.

Errors keep the plugin's classes, because the caller only sees the class
name: ``RetryableError`` (the client retries exactly this name),
``PluginError`` (permanent) and ``Failure`` with ``'ImageNotFound'`` (the
plugin raises ``XenAPI.Failure('ImageNotFound')`` for a 404 on upload). As
in the plugin, ``RetryableError`` is not a ``PluginError``. Where the real
plugin fails with a bare ``Exception`` or ``OSError`` (a gap in the
sequence, a hidden leaf, a missing VHD) these raise ``PluginError``.

Beyond the plugin, and only where it is safe to be stricter: the archive is
never trusted (no links, devices, absolute paths, ``..`` or
subdirectories; duplicates refused), uuids must be uuids, only the leaf
may replace an existing SR file (what callers that reuse a VDI rely on),
and the socket timeout is per connection rather
than the process-wide default. Glance v1 (``api_version=1``, the plugin's
default) no longer exists: it is refused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.parse

from xenapinfs_driver.testing.xapi import dom0_download
from xenapinfs_driver.testing.xapi import dom0_plugin
from xenapinfs_driver.testing.xapi import dom0_upload

# The errors, where callers and tests have always found them.
PluginError = dom0_plugin.PluginError
RetryableError = dom0_plugin.RetryableError
Failure = dom0_plugin.Failure
ERRORS = dom0_plugin.ERRORS


def download_vhd2(sr_dir, *, image_id, endpoint, uuid_stack, extra_headers,
                  api_version=1):
    """Download an image into sr_dir; return ``{'root': {'uuid': leaf}}``.

    :param endpoint: glance's full URL, with any path prefix.
    :param uuid_stack: uuids for the VHDs, popped from the end (the leaf
        takes the last one); it is consumed as on dom0.
    """
    dom0_plugin.check_api_version(api_version)
    dom0_plugin.check_endpoint(endpoint)
    url = '%s/v2/images/%s/file' % (endpoint.rstrip('/'),
                                    urllib.parse.quote(str(image_id), safe=''))
    staging = tempfile.mkdtemp(dir=sr_dir)
    try:
        dom0_download.fetch(url, extra_headers or {}, staging)
        return dom0_download.import_vhds(sr_dir, staging, uuid_stack)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def upload_vhd2(sr_dir, *, vdi_uuids, image_id, endpoint, extra_headers,
                properties, api_version=1):
    """Upload the chain vdi_uuids (leaf first) into a queued image."""
    dom0_plugin.check_api_version(api_version)
    staging = tempfile.mkdtemp(dir=sr_dir)
    try:
        # Hard links: the SR's files are read, never renamed or changed.
        for seq, vdi_uuid in enumerate(vdi_uuids):
            name = '%s.vhd' % dom0_plugin.checked_uuid(vdi_uuid)
            source = os.path.join(sr_dir, name)
            try:
                os.link(source, os.path.join(staging, '%d.vhd' % seq))
            except OSError as exc:
                raise PluginError('cannot stage %s: %s'
                                  % (source, exc.strerror)) from None
        dom0_upload.Uploader(endpoint, image_id, extra_headers or {},
                             properties or {}).run(staging, len(vdi_uuids))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
