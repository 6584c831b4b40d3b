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
"""Mutations of the seed inputs, as plain data.

A case is a seed, a list of operations on its uncompressed bytes, how the
result is stored (plain or one of the gzip wrappers) and operations on the
stored bytes; or raw bytes. Operations are tuples of ints and bytes, so
that hypothesis draws them (and shrinks them) in the CI run while the long
run draws them from random.Random(seed, index): both go through apply().

Operations (positions are taken modulo the length, so any int is valid):

    ('flip', pos, bit)            xor one bit
    ('set', pos, byte)            set one byte
    ('field', f, v)               write the v-th boundary value of field f
    ('fieldflip', f, bit)         xor one bit inside field f
    ('near', f, delta, byte)      set the byte delta away from field f
    ('trunc', pos)                cut the input at pos
    ('insert', pos, data)         insert bytes
    ('delete', pos, n)            delete n bytes
    ('copy', src, dst, n)         overwrite n bytes at dst with those at src
    ('splice', seed, pos, opos)   raw[:pos] + another seed's raw[opos:]
    ('seal',)                     recompute every checksum of the seed
"""

from __future__ import annotations

import dataclasses
import random
import struct

from tests.fuzz import corpus
from tests.unit.vhd import badinput as bi
from xenapinfs_driver.vhd import format as fmt

MAX_INPUT = 1 << 20         # inputs stay small: the run is about many


@dataclasses.dataclass(frozen=True)
class Case:
    seed: int | None                  # index into corpus.seeds(), or None
    ops: tuple = ()
    wrap: str | None = None           # None: the seed's own
    zops: tuple = ()                  # on the stored (compressed) bytes
    raw: bytes = b''                  # the input itself when seed is None

    def describe(self) -> str:
        if self.seed is None:
            return 'raw %d bytes' % len(self.raw)
        seed = corpus.seeds()[self.seed]
        return 'seed %s wrap %s ops %r zops %r' % (
            seed.name, self.wrap or seed.wrap, _short(self.ops),
            _short(self.zops))


def _short(ops):
    return tuple(tuple(x if not isinstance(x, bytes) or len(x) <= 16
                       else x[:16] + b'...' for x in op) for op in ops)


def reseal(buf: bytearray, seals) -> None:
    """Recompute the seed's checksums where they were, when they fit.

    Batmaps first (the footer does not cover them), tar headers last (they
    do not cover their member's data).
    """
    order = {'batmap': 0, 'header': 1, 'footer': 2, 'tar': 3}
    for seal in sorted(seals, key=lambda s: order[s.kind]):
        at = seal.offset
        if seal.kind == 'batmap' and at + 28 <= len(buf):
            map_at, sectors = struct.unpack_from('>QI', buf, at + 8)
            start, size = seal.base + map_at, sectors * fmt.SECTOR
            if size <= MAX_INPUT and start + size <= len(buf):
                struct.pack_into('>I', buf, at + 24, fmt.checksum(
                    bytes(buf[start:start + size]) + bytes(4), size))
        elif seal.kind == 'header' and at + fmt.HEADER_SIZE <= len(buf):
            struct.pack_into('>I', buf, at + fmt.HEADER_CHECKSUM_AT,
                             fmt.checksum(buf[at:at + fmt.HEADER_SIZE],
                                          fmt.HEADER_CHECKSUM_AT))
        elif seal.kind == 'footer' and at + fmt.FOOTER_SIZE <= len(buf):
            struct.pack_into('>I', buf, at + fmt.FOOTER_CHECKSUM_AT,
                             fmt.checksum(buf[at:at + fmt.FOOTER_SIZE],
                                          fmt.FOOTER_CHECKSUM_AT))
        elif seal.kind == 'tar' and at + 512 <= len(buf):
            buf[at:at + 512] = bi.seal_tar(bytearray(buf[at:at + 512]))


def apply(data: bytes, ops, fields=(), seals=(), seeds=()) -> bytes:
    """data after ops; fields and seals are the seed's (see corpus)."""
    buf = bytearray(data)
    for op in ops:
        kind = op[0]
        n = len(buf)
        if kind in ('field', 'fieldflip', 'near'):
            if not fields:
                continue
            f = fields[op[1] % len(fields)]
            if kind == 'field':
                value = f.values[op[2] % len(f.values)]
                buf[f.offset:f.offset + f.width] = value
                del buf[n:]             # a field at the end may not grow it
            elif kind == 'fieldflip' and f.offset < n:
                at = f.offset + (op[2] // 8) % f.width
                if at < n:
                    buf[at] ^= 1 << op[2] % 8
            elif kind == 'near':
                at = f.offset + op[2]
                if 0 <= at < n:
                    buf[at] = op[3] & 0xFF
        elif kind == 'flip' and n:
            buf[op[1] % n] ^= 1 << op[2] % 8
        elif kind == 'set' and n:
            buf[op[1] % n] = op[2] & 0xFF
        elif kind == 'trunc':
            del buf[op[1] % (n + 1):]
        elif kind == 'insert':
            at = op[1] % (n + 1)
            buf[at:at] = op[2]
        elif kind == 'delete' and n:
            at = op[1] % n
            del buf[at:at + op[2]]
        elif kind == 'copy' and n:
            src, dst, count = op[1] % n, op[2] % n, op[3]
            piece = buf[src:src + count]
            buf[dst:dst + len(piece)] = piece
            del buf[n:]
        elif kind == 'splice' and seeds:
            other = seeds[op[1] % len(seeds)].raw
            buf = buf[:op[2] % (n + 1)] + other[op[3] % (len(other) + 1):]
        elif kind == 'seal':
            reseal(buf, seals)
        if len(buf) > MAX_INPUT:
            del buf[MAX_INPUT:]
    return bytes(buf)


def case_bytes(case: Case) -> bytes:
    """The input file a case stands for."""
    if case.seed is None:
        return case.raw
    seeds = corpus.seeds()
    seed = seeds[case.seed % len(seeds)]
    raw = apply(seed.raw, case.ops, seed.fields, seed.seals, seeds)
    stored = corpus.wrap(raw, case.wrap or seed.wrap)
    return apply(stored, case.zops)


# -- random cases, for the long run -------------------------------------------

_WEIGHTS = (('field', 30), ('fieldflip', 8), ('near', 8), ('flip', 12),
            ('set', 5), ('trunc', 6), ('insert', 6), ('delete', 6),
            ('copy', 5), ('splice', 3), ('seal', 11))
_KINDS = [k for k, _ in _WEIGHTS]
_CUM = [w for _, w in _WEIGHTS]


def _position(rnd, seed, n):
    """Anywhere, or (more often) close to a structure of the seed."""
    if seed.fields and rnd.random() < 0.6:
        f = rnd.choice(seed.fields)
        return max(0, f.offset + rnd.randint(-64, 64))
    return rnd.randrange(n + 1)


def _length(rnd):
    return rnd.choice((1, 2, 3, 4, 7, 8, 16, 511, 512, 513, 1024,
                       rnd.randint(1, 4096)))


def random_op(rnd: random.Random, seed) -> tuple:
    kind = rnd.choices(_KINDS, _CUM)[0]
    n = len(seed.raw)
    nf = max(1, len(seed.fields))
    if kind == 'field':
        return (kind, rnd.randrange(nf), rnd.randrange(1 << 16))
    if kind == 'fieldflip':
        return (kind, rnd.randrange(nf), rnd.randrange(1 << 16))
    if kind == 'near':
        return (kind, rnd.randrange(nf), rnd.randint(-32, 32),
                rnd.randrange(256))
    if kind == 'flip':
        return (kind, _position(rnd, seed, n), rnd.randrange(8))
    if kind == 'set':
        return (kind, _position(rnd, seed, n),
                rnd.choice((0, 0xFF, 0x80, 0x7F, rnd.randrange(256))))
    if kind == 'trunc':
        return (kind, _position(rnd, seed, n))
    if kind == 'insert':
        count = _length(rnd)
        data = rnd.choice((bytes(count), b'\xff' * count,
                           rnd.randbytes(count)))
        return (kind, _position(rnd, seed, n), data)
    if kind == 'delete':
        return (kind, _position(rnd, seed, n), _length(rnd))
    if kind == 'copy':
        return (kind, _position(rnd, seed, n), _position(rnd, seed, n),
                _length(rnd))
    if kind == 'splice':
        return (kind, rnd.randrange(1 << 16), _position(rnd, seed, n),
                rnd.randrange(1 << 20))
    return ('seal',)


_PREFIXES = (b'', b'\x1f\x8b', b'\x1f\x8b\x08\x00', b'conectix',
             b'ustar', b'\0' * 512)


def random_case(rnd: random.Random) -> Case:
    seeds = corpus.seeds()
    if rnd.random() < 0.06:
        # Raw bytes: no structure at all, or only a magic number.
        prefix = rnd.choice(_PREFIXES)
        body = rnd.randbytes(rnd.choice((0, 1, 10, 511, 512, 513,
                                         rnd.randint(0, 8192))))
        raw = prefix + body
        if rnd.random() < 0.3:
            raw = corpus.gzip_member(raw)
        return Case(None, raw=raw)
    index = rnd.randrange(len(seeds))
    seed = seeds[index]
    ops = tuple(random_op(rnd, seed)
                for _ in range(rnd.choice((1, 1, 1, 2, 2, 3, 4, 6))))
    if rnd.random() < 0.5 and not any(op[0] == 'seal' for op in ops):
        ops += (('seal',),)       # get past the checksums most of the time
    wrap = rnd.choice(corpus.WRAPS) if rnd.random() < 0.2 else None
    zops = ()
    if rnd.random() < 0.1:
        zops = tuple(rnd.choice((
            ('flip', rnd.randrange(1 << 20), rnd.randrange(8)),
            ('trunc', rnd.randrange(1 << 20)),
            ('insert', rnd.randrange(1 << 20), rnd.randbytes(
                rnd.randint(1, 64))),
            ('set', rnd.randrange(1 << 20), rnd.randrange(256))))
            for _ in range(rnd.randint(1, 3)))
    return Case(index, ops, wrap, zops)


def case_for(seed: int, index: int) -> Case:
    """The index-th case of the run seeded with seed: reproducible."""
    return random_case(random.Random('%d:%d' % (seed, index)))
