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
"""Hand dom0 a VDI's VHD chain while the host's GC may change it.

The chain is read from ``sm_config['vhd-parent']`` and dom0's plugin then
reads the files it names. In between, the storage manager's garbage
collector may coalesce a hidden parent into its own parent and delete its
file (reference: xenserver-lifecycle.md, section 1): the plugin then fails
to find it. The chain read again names only files that exist, with the
same data, so one more attempt with it is safe.
"""

from typing import Callable

from cinder.i18n import _
from oslo_log import log as logging

from xenapinfs_driver import exception
from xenapinfs_driver.xenapi import storage

LOG = logging.getLogger(__name__)


def read_chain(session, ref: str, max_depth: int) -> list[str]:
    """The uuids of ``ref``'s chain, leaf first; refused past max_depth."""
    chain = storage.vdi_chain(session, ref, max_depth + 1)
    if len(chain) > max_depth:
        raise exception.ImageTransferError(
            reason=_('VDI chain of %(n)d layers exceeds %(max)d')
            % {'n': len(chain), 'max': max_depth})
    return chain


def send_chain(session, ref: str, max_depth: int,
               send: Callable[[list[str]], object]) -> None:
    """Call ``send(chain)``; once more if it failed and the chain changed.

    A failure with the chain unchanged is not the GC's doing: it is
    raised as it came.
    """
    chain = read_chain(session, ref, max_depth)
    try:
        send(chain)
        return
    except exception.XenAPINFSException as exc:
        again = read_chain(session, ref, max_depth)
        if again == chain:
            raise
        LOG.info('The VHD chain of VDI %(vdi)s changed while dom0 read it '
                 '(%(err)s), the host\'s garbage collector at work: '
                 'sending it again as %(chain)s.',
                 {'vdi': chain[0], 'err': exc, 'chain': again})
    send(again)
