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
"""vhd.forward: which images pass through, and what reaches the writer."""

import gzip
import io
import os
import random

import pytest

from tests import vhd_encoder as enc
from tests import vhd_factory as vf
from xenapinfs_driver.vhd import errors
from xenapinfs_driver.vhd import forward
from xenapinfs_driver.vhd import tgz
from xenapinfs_driver.vhd import validate

MiB = 1 << 20
BS = 2 * MiB
LIMITS = validate.Limits(max_size=64 * MiB)


def layer(seed=1, size=12 * MiB, order='random'):
    """One dynamic VHD (bytes) with full, partial and absent blocks."""
    rnd = random.Random(seed)
    blocks = {0: (None, rnd.randbytes(BS)),
              2: ({0, 1, 7, 4095}, rnd.randbytes(BS)),
              5: (None, rnd.randbytes(BS))}
    spec = vf.LayerSpec(size, blocks)
    return vf.build_chain([spec], order=order, rnd=rnd)[0]


def tgz_bytes(tmp_path, members, **kw):
    path = os.path.join(tmp_path, 'image.tgz')
    vf.make_tar(path, members, **kw)
    with open(path, 'rb') as f:
        return f.read()


def plan_of(data, size=None):
    inp = tgz.Input(io.BytesIO(data), size=size)
    try:
        return forward.plan(inp, LIMITS), inp
    except BaseException:
        inp.close()
        raise


def forwarded(data, size=None):
    """(bytes written, result or error) of forwarding ``data``."""
    plan, inp = plan_of(data, size)
    assert plan is not None
    out = bytearray()
    try:
        return out, forward.forward(inp, plan, out.extend, LIMITS)
    except errors.VhdError as exc:
        return out, exc
    finally:
        inp.close()


@pytest.mark.parametrize('order', ['index', 'reverse', 'random'])
def test_one_layer_tgz_is_passed_on_byte_for_byte(tmp_path, order):
    vhd = layer(order=order)
    data = tgz_bytes(tmp_path, [('0.vhd', vhd)])
    plan, inp = plan_of(data)
    inp.close()
    assert plan.name == '0.vhd'
    assert (plan.length, plan.virtual_size) == (len(vhd), 12 * MiB)
    out, result = forwarded(data)
    assert bytes(out) == vhd
    assert [lay.name for lay in result.layers] == [plan.name]


def test_bare_vhd_is_passed_on_with_its_declared_length():
    vhd = layer(seed=2)
    out, result = forwarded(vhd, size=len(vhd))
    assert bytes(out) == vhd
    # Without a length, it cannot be announced: not passed through.
    assert plan_of(vhd)[0] is None


def test_empty_disk_footer_after_the_bat(tmp_path):
    vhd = vf.build_chain([vf.LayerSpec(8 * MiB, {})], batmap=False)[0]
    out, _ = forwarded(vhd, size=len(vhd))
    assert bytes(out) == vhd
    # blktap's batmap sits where a forward reader looks for the footer.
    tap = vf.build_chain([vf.LayerSpec(8 * MiB, {})])[0]
    assert plan_of(tap, size=len(tap))[0] is None


def padded(vhd):
    """The same VHD with a gap before its footer: valid, but a reader
    that takes the footer from right after the last block fails."""
    return vhd[:-512] + bytes(4096) + vhd[-512:]


@pytest.mark.parametrize('shape', ['chain', 'chain-reversed', 'fixed',
                                   'padded', 'block-1M', 'gzip-vhd',
                                   'legacy', 'past-the-disk', 'too-big'])
def test_other_shapes_are_left_to_the_other_path(tmp_path, shape):
    files, _disk, _specs = vf.standard_chain(seed=3)
    size = None
    if shape == 'chain':
        data = tgz_bytes(tmp_path, [('%d.vhd' % i, f)
                                    for i, f in enumerate(files)])
    elif shape == 'chain-reversed':
        data = tgz_bytes(tmp_path, [('1.vhd', files[1]), ('0.vhd', files[0])])
    elif shape == 'fixed':
        data = enc.encode_fixed(bytes(4 * MiB))
        size = len(data)
    elif shape == 'padded':
        data = padded(layer())
        size = len(data)
    elif shape == 'block-1M':
        spec = vf.LayerSpec(4 * MiB, {1: (None, bytes(MiB))}, block_size=MiB)
        data = vf.build_chain([spec])[0]
        size = len(data)
    elif shape == 'gzip-vhd':
        data = gzip.compress(layer(), compresslevel=1)
    elif shape == 'legacy':
        data = tgz_bytes(tmp_path, [('snap.vhd', layer())])
    elif shape == 'past-the-disk':
        # A used BAT entry past the disk's end: ours ignore it, a host
        # reading forward may not.
        spec = vf.LayerSpec(4 * MiB, {0: (None, bytes(BS)),
                                      3: (None, bytes(BS))})
        data = vf.build_chain([spec], max_table_entries=4)[0]
        size = len(data)
    else:
        data = layer(size=128 * MiB)
        size = len(data)
    plan, inp = plan_of(data, size)
    inp.close()
    assert plan is None


def test_bad_end_never_sends_the_footer():
    vhd = bytearray(layer(seed=4))
    vhd[-512 + 64] ^= 0xFF            # the trailing footer's checksum
    out, exc = forwarded(bytes(vhd), size=len(vhd))
    assert isinstance(exc, errors.InvalidFooter)
    assert 'footer checksum' in str(exc)
    assert bytes(out) == bytes(vhd[:-512])


def test_bad_gzip_trailer_never_sends_the_footer(tmp_path):
    vhd = layer(seed=5)
    data = bytearray(tgz_bytes(tmp_path, [('0.vhd', vhd)]))
    data[-8] ^= 0xFF                  # the gzip member's CRC-32
    out, exc = forwarded(bytes(data))
    assert 'gzip' in str(exc)
    assert len(out) <= len(vhd) - 512
    assert vhd.startswith(bytes(out))


def test_a_layer_after_a_dynamic_disk_is_refused(tmp_path):
    files, _disk, _specs = vf.standard_chain(seed=6)
    data = tgz_bytes(tmp_path, [('0.vhd', layer(seed=6)),
                                ('1.vhd', files[1])])
    out, exc = forwarded(data)
    assert isinstance(exc, errors.ChainError)
    assert 'disk type' in str(exc) and '1.vhd' in str(exc)
    assert len(out) == len(layer(seed=6)) - 512


def test_a_stream_that_ends_early():
    vhd = layer(seed=7)
    for cut, where in ((5 * MiB, 'of block 0 missing'),
                       (len(vhd) - 100, 'footer: ')):
        out, exc = forwarded(vhd[:cut], size=len(vhd))
        assert isinstance(exc, errors.Truncated)
        assert where in str(exc)
        assert bytes(out) == vhd[:min(cut, len(vhd) - 512)]
    # Not even the metadata: the other path reads it, and names it.
    assert plan_of(vhd[:600], size=len(vhd))[0] is None


def test_a_stream_longer_than_declared():
    vhd = layer(seed=8)
    out, exc = forwarded(vhd + bytes(512), size=len(vhd))
    assert isinstance(exc, errors.ArchiveError)
    assert 'data after the VHD' in str(exc)
    assert bytes(out) == vhd[:-512]


def test_errors_of_the_input_are_raised_by_plan():
    # What the inflater found wrong went with the bytes it read: the other
    # path could not read them again.
    inp = tgz.Input(io.BytesIO(b'\x1f\x8b' + bytes(600)))
    try:
        with pytest.raises(errors.ArchiveError, match='gzip'):
            forward.plan(inp, LIMITS)
    finally:
        inp.close()
