"""``ipc.measure``: what an Arrow IPC stream claims, read without decompressing it; pure, so
property-tested against pyarrow's own writer and against mutated bytes."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepub.edge_agent.protocols import ipc

COMPRESSIONS = [None, "zstd", "lz4"]


def stream_of(table: Any, compression: str | None, chunk: int | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        for batch in table.to_batches(max_chunksize=chunk):
            writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


def buffer_bytes(table: Any) -> int:
    total = 0
    for column in table.columns:
        for chunk in column.chunks:
            total += sum(b.size for b in chunk.buffers() if b is not None)
            if pa.types.is_dictionary(chunk.type):
                total += sum(b.size for b in chunk.dictionary.buffers() if b is not None)
    return total


@st.composite
def tables(draw: Any) -> Any:
    rows = draw(st.integers(min_value=0, max_value=300))
    width = draw(st.integers(min_value=1, max_value=8))
    rng = np.random.default_rng(draw(st.integers(min_value=0, max_value=2**32 - 1)))
    columns: dict[str, Any] = {
        "tensor": pa.FixedSizeListArray.from_arrays(
            pa.array(rng.normal(size=rows * width).astype(np.float32)), width
        )
    }
    if draw(st.booleans()):
        columns["words"] = pa.array([f"w{i % 7}" for i in range(rows)])
    if draw(st.booleans()):
        columns["kind"] = pa.array([f"k{i % 3}" for i in range(rows)]).dictionary_encode()
    if draw(st.booleans()):
        columns["ragged"] = pa.array([[1.0] * (i % 4) for i in range(rows)])
    return pa.table(columns)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables(), st.sampled_from(COMPRESSIONS), st.sampled_from([None, 7, 64]))
def test_measure_counts_what_pyarrow_wrote(
    table: Any, compression: str | None, chunk: int | None
) -> None:
    body = stream_of(table, compression, chunk)
    extent = ipc.measure(body, stop_after=10_000)
    assert extent.records == table.num_rows
    decoded = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
    actual = buffer_bytes(decoded)
    # what the headers claim covers what pyarrow allocates, give or take 8-byte padding
    assert actual - 64 * extent.messages <= extent.decoded
    assert extent.decoded <= actual + 64 * extent.messages * max(1, table.num_columns)


def test_a_compression_bomb_is_measured_at_its_inflated_size() -> None:
    zeros = pa.array(np.zeros(4_000_000 * 18, dtype=np.float32))
    table = pa.table({"tensor": pa.FixedSizeListArray.from_arrays(zeros, 18)})
    body = stream_of(table, "zstd")
    assert len(body) < 20_000
    extent = ipc.measure(body, stop_after=100)
    assert extent.records == 4_000_000 and extent.decoded >= 288_000_000


def test_measure_stops_after_enough_messages() -> None:
    table = pa.table({"x": pa.array(np.arange(500, dtype=np.int64))})
    body = stream_of(table, None, chunk=1)
    assert ipc.measure(body, stop_after=10).messages == 11
    assert ipc.measure(body, stop_after=10_000).messages == 501  # schema + 500 batches


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xff\xff\xff\x10\x00\x00\x00",  # a header that is not there
        b"\xff\xff\xff\xff\x08\x00\x00\x00" + b"\xff" * 8,  # offsets far outside
        b"\x04\x00\x00\x00\x00\x00\x00\x00",  # a root table at the end of its header
        b"\xff\xff\xff",  # a length cut short
    ],
)
def test_broken_framing_is_an_ipc_error(body: bytes) -> None:
    with pytest.raises(ipc.IpcError):
        ipc.measure(body, stop_after=100)


def test_an_empty_body_or_an_end_marker_measures_nothing() -> None:
    assert ipc.measure(b"", stop_after=1) == ipc.Extent(0, 0, 0)
    assert ipc.measure(b"\xff\xff\xff\xff\x00\x00\x00\x00", stop_after=1) == ipc.Extent(0, 0, 0)


VALID = stream_of(
    pa.table(
        {
            "tensor": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(36, np.float32)), 18),
            "words": pa.array(["a", "b"]).dictionary_encode(),
        }
    ),
    "zstd",
)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_streams_measure_or_raise_ipc_error(data: Any) -> None:
    body = bytearray(VALID)
    for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
        at = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
        body[at] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(body)))
    try:
        extent = ipc.measure(bytes(body[:cut]), stop_after=100)
    except ipc.IpcError:
        return
    assert extent.records >= 0 and extent.decoded >= 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_measure_or_raise_ipc_error(body: bytes) -> None:
    with contextlib.suppress(ipc.IpcError):
        ipc.measure(body, stop_after=100)
