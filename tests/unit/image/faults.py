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
"""Faults the image tests share: glance stopping mid-stream, and the
scratch directory filling up."""

import contextlib
import errno
import os
from unittest import mock

RESET = 'connection reset by glance'


@contextlib.contextmanager
def glance_stops(images, after=1):
    """``images.download`` gives ``after`` chunks of the image, then
    fails as a dropped connection does (with :data:`RESET`)."""
    real = images.download

    def cut(context, image_id, data=None):
        chunks = real(context, image_id)
        for _ in range(after):
            yield next(chunks)
        raise IOError(RESET)
    with mock.patch.object(images, 'download', cut):
        yield


@contextlib.contextmanager
def directory_full(directory):
    """Writes into files under ``directory`` fail with ENOSPC; the host's
    SR, elsewhere, keeps its room."""
    directory = os.path.realpath(directory)
    real = os.pwrite

    def full(fd, buf, offset):
        if os.readlink('/proc/self/fd/%d' % fd).startswith(directory):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, buf, offset)
    with mock.patch.object(os, 'pwrite', full):
        yield
