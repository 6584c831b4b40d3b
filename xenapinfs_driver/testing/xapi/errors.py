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
"""XenAPI failures, with XAPI's codes and parameter lists.

The parameter lists follow ``ocaml/idl/datamodel_errors.ml``; the storage
backend's ``SR_BACKEND_FAILURE_<n>`` codes and messages follow sm's
``XE_SR_ERRORCODES.xml``, sent as ``['', message, '']`` the way XAPI
forwards them.
"""

from __future__ import annotations


class XapiError(Exception):
    """A XenAPI failure: ``details`` is ``[code, param, ...]``, all str."""

    def __init__(self, code: str, *params):
        self.details = [code] + [str(p) for p in params]
        super().__init__(' '.join(self.details))

    @property
    def code(self) -> str:
        return self.details[0]


class DiskFull(XapiError):
    """The export has no room left (sm's ``SRNoSpace``)."""

    def __init__(self):
        super().__init__('SR_BACKEND_FAILURE_44', '',
                         'There is insufficient space', '')


# sm's error numbers and texts for the failures an NFS SR can give here.
NFS_MOUNT = 73                      # NFSMount: NFS mount error
VDI_SIZE = 79                       # VDISize: VDI Invalid size
SERVER_PATH_MISSING = 101           # ConfigServerPathMissing
SERVER_MISSING = 102                # ConfigServerMissing
SERVER_PATH_BAD = 103               # ConfigServerPathBad
NFS_TARGET = 108                    # NFSTarget: nothing serves NFS there
CHAIN_TOO_LONG = 109                # SnapshotChainTooLong
_BACKEND_TEXT = {
    NFS_MOUNT: 'NFS mount error',
    VDI_SIZE: 'VDI Invalid size',
    SERVER_PATH_MISSING: 'The request is missing the serverpath parameter',
    SERVER_MISSING: 'The request is missing the server parameter',
    SERVER_PATH_BAD: 'The serverpath argument is not valid',
    NFS_TARGET: 'Unable to detect an NFS service on this target.',
    CHAIN_TOO_LONG: 'The snapshot chain is too long',
}


def backend(number: int, opterr: str | None = None,
            stderr: str = '') -> XapiError:
    """``SR_BACKEND_FAILURE_<number>`` as sm's ``XenError`` words it.

    stderr: what the storage manager printed there, which XAPI forwards
    as the last parameter (an NFS probe's list of exports).
    """
    text = _BACKEND_TEXT[number]
    if opterr:
        text = '%s [opterr=%s]' % (text, opterr)
    return XapiError('SR_BACKEND_FAILURE_%d' % number, '', text, stderr)


def handle_invalid(cls: str, ref) -> XapiError:
    return XapiError('HANDLE_INVALID', cls, ref)


def uuid_invalid(cls: str, uuid) -> XapiError:
    return XapiError('UUID_INVALID', cls, uuid)


def field_type(name: str) -> XapiError:
    return XapiError('FIELD_TYPE_ERROR', name)


def not_allowed(reason: str) -> XapiError:
    return XapiError('OPERATION_NOT_ALLOWED', reason)
