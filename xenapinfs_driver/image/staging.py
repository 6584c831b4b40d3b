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
"""Names of the stream path's files in ``image_conversion_dir``.

A transfer stages an image there and removes it when done; a volume
service that is killed meanwhile leaves it. cinder's own start-up cleanup
removes only files ending with the backend's name, and in a cluster that
name is the cluster's, shared by live services whose transfers it would
cut. So each service names its files with a prefix of its own, from its
``host`` (``xenapinfs_<hash>_``), and removes files of that prefix when it
starts, before it takes any work: what is there then is its own leftover.
"""

import hashlib
import os

from cinder.image import image_utils
from oslo_log import log as logging

LOG = logging.getLogger(__name__)

BASE = 'xenapinfs_'


def prefix(host):
    """The temporary-file prefix of the volume service ``host``."""
    if not host:
        return BASE
    return '%s%s_' % (BASE, hashlib.sha256(host.encode('utf-8')
                                           ).hexdigest()[:12])


def remove_leftovers(tmp_prefix, directory=None):
    """Remove the files named ``tmp_prefix*`` that a killed run left."""
    if tmp_prefix == BASE:
        return      # no host: these could be anyone's
    directory = directory or image_utils.CONF.image_conversion_dir
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(tmp_prefix):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError as exc:
                LOG.warning('Could not remove %(name)s from %(dir)s: '
                            '%(err)s', {'name': name, 'dir': directory,
                                        'err': exc})
            else:
                LOG.info('Removed %(name)s, left in %(dir)s by an '
                         'unfinished image transfer.',
                         {'name': name, 'dir': directory})
