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
"""image.pipe: the byte streams between glance and the VHD library."""

import threading

import pytest

from xenapinfs_driver.image import pipe


def test_chunk_reader_reads_any_sizes():
    reader = pipe.ChunkReader([b'abc', b'', b'defgh', b'i'])
    assert reader.read(2) == b'ab'
    assert reader.read(5) == b'cdefg'      # across chunks
    assert reader.read() == b'hi'
    assert reader.read(4) == b''
    assert reader.consumed == 9


def test_chunk_reader_keeps_the_sources_error():
    def chunks():
        yield b'x' * 10
        raise IOError('glance went away')
    reader = pipe.ChunkReader(chunks())
    # What came before the failure first, then the failure.
    assert reader.read(64) == b'x' * 10
    for _ in range(2):
        with pytest.raises(pipe.FetchError, match='glance went away'):
            reader.read(10)
    assert isinstance(reader.error, IOError)


def test_pipe_passes_everything_in_order():
    parts = [bytes([i]) * (1000 + i) for i in range(50)]

    def produce(write):
        for p in parts:
            write(p)
    data = pipe.Pipe(produce)
    got = []
    while True:
        chunk = data.read(777)
        if not chunk:
            break
        got.append(chunk)
    data.close()
    assert b''.join(got) == b''.join(parts)
    assert data.error is None


def test_pipe_raises_the_writers_error_at_the_end():
    def produce(write):
        write(b'head')
        raise ValueError('packing failed')
    data = pipe.Pipe(produce)
    assert data.read(4) == b'head'
    with pytest.raises(ValueError, match='packing failed'):
        data.read(4)
    data.close()


def test_closing_stops_a_writer_whose_reader_gave_up():
    stopped = threading.Event()

    def produce(write):
        try:
            while True:
                write(b'z' * 1024)
        finally:
            stopped.set()
    data = pipe.Pipe(produce, depth=2)
    assert data.read(10) == b'z' * 10
    data.close()
    assert stopped.is_set()
    assert data.error is None
