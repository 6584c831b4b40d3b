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
"""What the ``vhd-util`` subcommands share: errors, output, arguments."""

from __future__ import annotations

import errno
import os
import sys

from xenapinfs_driver.vhd import validate

PROG = 'vhd-util'
MiB = 1 << 20


class Usage(Exception):
    """The command line is wrong (exit EINVAL)."""


class Failure(Exception):
    """The operation failed: one line on stderr and an errno exit."""

    def __init__(self, message: str, code: int = errno.EINVAL):
        super().__init__(message)
        self.code = code


def out(text: str = '') -> None:
    sys.stdout.write(text + '\n')


def need(path: str) -> None:
    """Fail with the file's own errno (ENOENT, EACCES...) if it is not
    there; the library would only say that it is not a valid VHD."""
    os.stat(path)


def absent(path: str, what: str = '') -> None:
    if os.path.lexists(path):
        raise Failure('%s%s: already exists' % (what, path), errno.EEXIST)


def int_arg(text: str, what: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise Usage('invalid %s %r' % (what, text)) from None
    if value < 0:
        raise Usage('invalid %s %r' % (what, text))
    return value


def round_up(n: int, to: int) -> int:
    return n + (-n % to)


def max_size(size: int) -> None:
    limit = validate.MAX_SIZE
    if size > limit:
        raise Failure('%d MB is more than the largest VHD the library opens '
                      '(%d MB)' % (-(-size // MiB), limit // MiB))


def not_implemented(opts: dict, letters: dict) -> None:
    for letter, what in letters.items():
        if letter in opts:
            raise Failure('option -%s (%s) is not implemented by this '
                          'vhd-util' % (letter, what), errno.ENOSYS)


def err(command: str, what) -> None:
    sys.stderr.write('%s: %s: %s\n' % (PROG, command, what))
