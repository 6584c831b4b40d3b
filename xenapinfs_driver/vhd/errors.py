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
"""Errors of the VHD library.

Every error names where it happened (the input file, and the tar member
inside it when there is one) and which on-disk field was wrong, so that a
one-line message is enough to find the problem.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """Text from an image, made safe for one line of a terminal."""
    return ''.join(c if c.isprintable() else
                   c.encode('unicode_escape', 'backslashreplace').decode(
                       'ascii') for c in text)


class VhdError(Exception):
    """Base class: something in an image is not what it must be."""

    def __init__(self, reason: str, *, source: str | None = None,
                 member: str | None = None, field: str | None = None):
        self.reason = reason
        self.source = source
        self.member = member
        self.field = field
        super().__init__(reason)

    def located(self, source: str | None = None,
                member: str | None = None) -> VhdError:
        """Fill in the location if the raiser did not know it."""
        if self.source is None:
            self.source = source
        if self.member is None:
            self.member = member
        return self

    def __str__(self) -> str:
        where = ': '.join(p for p in (self.source, self.member) if p)
        what = self.reason
        if self.field:
            what = '%s: %s' % (self.field, what)
        # Names come from the archive: never let them add lines or
        # terminal escapes to the message.
        return printable('%s: %s' % (where, what) if where else what)


class InvalidFooter(VhdError):
    """The hard disk footer (or its copy) is damaged or unsupported."""


class InvalidHeader(VhdError):
    """The dynamic disk header is damaged or unsupported."""


class InvalidTable(VhdError):
    """The block allocation table or a block it points at is wrong."""


class ChainError(VhdError):
    """The layers of a chain do not fit together."""


class ArchiveError(VhdError):
    """The gzip or tar container is damaged, unsafe or unsupported."""


class Truncated(VhdError):
    """The input ends before what its own structures say is there."""


class LimitExceeded(VhdError):
    """The input asks for more than a configured limit allows."""


class TargetError(VhdError):
    """The output cannot be written."""
