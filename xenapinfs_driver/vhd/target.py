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
"""Where a converted disk goes: a new file, or a block device in place.

A file target is written under a temporary name in the target directory
and renamed over the path only once the whole input has been read and
checked, so a failure leaves nothing behind and an existing file is only
replaced by a complete disk. A new file starts as zeros, so unallocated
ranges stay holes. A block device is written in place; what it held before
is not zero, so every range no layer provides is zero-filled.
"""

from __future__ import annotations

import os
import stat
import tempfile

from xenapinfs_driver.vhd import errors


class FileTarget:
    """The output of a conversion.

    :param in_place: write into an existing regular file instead of
        replacing it (its inode, owner and links stay; on failure it is
        left partly written, as with dd). Its old contents are zero-filled
        over, and it is cut to the disk's size.
    """

    def __init__(self, path: str, zero_fill: bool | None = None,
                 fsync: bool = False, in_place: bool = False):
        self.path = path
        self.fsync = fsync
        self.tmp = None
        self.mode = None
        self.device_size = None
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise errors.TargetError(exc.strerror, source=path) from None
        if st is not None and stat.S_ISBLK(st.st_mode):
            self.fd = self._open(path, os.O_WRONLY)
            self.device_size = os.lseek(self.fd, 0, os.SEEK_END)
            self.fresh = False
        elif st is not None and not stat.S_ISREG(st.st_mode):
            raise errors.TargetError('not a regular file or a block device',
                                     source=path)
        elif st is not None and in_place:
            self.fd = self._open(path, os.O_WRONLY)
            self.fresh = st.st_size == 0
        else:
            if st is not None:
                self.mode = stat.S_IMODE(st.st_mode)
            directory = os.path.dirname(os.path.abspath(path))
            try:
                self.fd, self.tmp = tempfile.mkstemp(
                    dir=directory, prefix='.%s.' % os.path.basename(path),
                    suffix='.part')
            except OSError as exc:
                raise errors.TargetError(
                    'cannot create a file in %s: %s'
                    % (directory, exc.strerror), source=path) from None
            self.fresh = True
        # Writing zeros over holes is needed wherever old data may remain;
        # asked for on a new file, it gives a fully allocated one.
        self.zero_fill = (not self.fresh) if zero_fill is None else zero_fill

    @staticmethod
    def _open(path, flags):
        try:
            return os.open(path, flags)
        except OSError as exc:
            raise errors.TargetError(exc.strerror, source=path) from None

    def pwrite(self, view, offset: int) -> None:
        if self.device_size is not None and \
                offset + len(view) > self.device_size:
            raise errors.TargetError(
                'the device holds %d bytes, the disk needs more'
                % self.device_size, source=self.path)
        try:
            while len(view):
                n = os.pwrite(self.fd, view, offset)
                view = view[n:]
                offset += n
        except OSError as exc:
            raise errors.TargetError('cannot write at offset %d: %s'
                                     % (offset, exc.strerror),
                                     source=self.path) from None

    def check_size(self, size: int) -> None:
        if self.device_size is not None and size > self.device_size:
            raise errors.TargetError(
                'the device holds %d bytes, the disk needs %d'
                % (self.device_size, size), source=self.path)

    def commit(self, size: int) -> None:
        try:
            self._commit(size)
        except OSError as exc:
            raise errors.TargetError(exc.strerror, source=self.path) from None

    def _commit(self, size: int) -> None:
        if self.device_size is None:
            os.ftruncate(self.fd, size)
        if self.tmp is not None:
            if self.mode is None:
                umask = os.umask(0)
                os.umask(umask)
                self.mode = 0o666 & ~umask
            os.fchmod(self.fd, self.mode)
        if self.fsync or self.device_size is not None:
            os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None
        if self.tmp is not None:
            os.replace(self.tmp, self.path)
            self.tmp = None

    def abort(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass
            self.tmp = None
