"""Large bodies a piece at a time: a JSON list decoded in pieces is the whole list, with the
whole list's errors; a large pandas-records body feeds and answers as a small one would;
an Arrow answer of many records holds the same values."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepub.edge_agent.errors import BadRequest, PayloadTooLarge
from edgepub.edge_agent.protocols import arrow, oip, pieces, records
from edgepub.shared.schemas import TensorSpec

ANY = msgspec.json.Decoder(list[Any]).decode
TENSOR = TensorSpec(name="tensor", dtype="float32", shape=(None, 3))

# values whose text holds what looks like a boundary between two objects
TRICKY = st.sampled_from(["},{", "} , {", '"},{"', "}]", "[{", "\\", '"', "},\n{"])
LEAF = st.one_of(
    st.integers(), st.floats(allow_nan=False, allow_infinity=False), TRICKY, st.text(max_size=5)
)
VALUE = st.recursive(
    LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY, inner, max_size=2),
    max_leaves=6,
)
ELEMENT = st.dictionaries(st.one_of(TRICKY, st.text(max_size=3)), VALUE, max_size=3)


def in_pieces(body: bytes, size: int) -> tuple[list[Any], list[int]]:
    got: list[Any] = []
    firsts: list[int] = []

    def each(elements: list[Any], first: int) -> None:
        firsts.append(first)
        got.extend(elements)

    count = pieces.decode_list(body, ANY, each, size=size)
    assert count == len(got)
    return got, firsts


@settings(max_examples=300, deadline=None)
@given(
    st.lists(ELEMENT | VALUE, max_size=12),
    st.integers(min_value=1, max_value=64),
    st.sampled_from(["compact", "spaced", "indented"]),
)
def test_pieces_make_the_whole_list(items: list[Any], size: int, layout: str) -> None:
    if layout == "compact":
        body = msgspec.json.encode(items)
    else:
        body = json.dumps(items, indent=2 if layout == "indented" else None).encode()
    got, firsts = in_pieces(body, size)
    assert got == ANY(body)
    assert firsts == sorted(firsts) and (not firsts or firsts[0] == 0)


def whole_error(body: bytes, decode: Any = ANY) -> str:
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)) as info:
        decode(body)
    return str(info.value)


def piece_error(body: bytes, decode: Any = ANY, size: int = 16) -> str:
    with pytest.raises(pieces.PieceError) as info:
        pieces.decode_list(body, decode, lambda elements, first: None, size=size)
    return str(info.value.error)


@pytest.mark.parametrize("at", [0, 7, 39])
def test_a_bad_element_is_named_as_in_the_whole_body(at: int) -> None:
    items: list[Any] = [{"x": [1.0, 2.0]} for _ in range(40)]
    items[at] = {"x": "oops"}
    body = msgspec.json.encode(items)
    typed = msgspec.json.Decoder(list[dict[str, list[float]]]).decode
    assert piece_error(body, typed) == whole_error(body, typed)
    assert f"$[{at}]" in piece_error(body, typed)


@pytest.mark.parametrize("cut", [5, 200, 431])
def test_malformed_json_is_placed_as_in_the_whole_body(cut: int) -> None:
    body = bytearray(msgspec.json.encode([{"x": [1, 2, 3]} for _ in range(40)]))
    body[cut] = ord("?")
    assert piece_error(bytes(body)) == whole_error(bytes(body))


def test_not_a_list_is_decoded_in_one_call() -> None:
    assert piece_error(b'{"a": 1}' + b" " * 100) == whole_error(b'{"a": 1}' + b" " * 100)


def test_encode_list_pieces_make_the_whole() -> None:
    chunks = [[{"a": i}, {"a": [i, "},{"]}] for i in range(5)] + [[]]
    joined = b"".join(pieces.encode_list(iter(chunks), msgspec.json.encode))
    assert joined == msgspec.json.encode([x for chunk in chunks for x in chunk])
    assert b"".join(pieces.encode_list(iter([]), msgspec.json.encode)) == b"[]"


# --- pandas-records, large ----------------------------------------------------------------


def records_body(rows: np.ndarray[Any, Any]) -> bytes:
    return json.dumps([{"tensor": row} for row in rows.tolist()]).encode()


def test_a_large_body_feeds_and_answers_as_a_small_one() -> None:
    codec = records.RecordsCodec([TENSOR])
    rows = np.random.default_rng(5).normal(size=(9000, 3)).round(5)
    rows[17, 1] = 3  # an integer: decoded as the float it is, as a small body would
    body = records_body(rows)
    feed, echoed, count = codec.feed_of_large(body, None)
    small_feed, small_echoed = codec.to_feed(codec.decode(body))
    assert count == 9000 and feed["tensor"].dtype == np.float32
    assert np.array_equal(feed["tensor"], small_feed["tensor"])
    assert echoed["tensor"].tolist() == small_echoed["tensor"]
    outputs = {"variable": np.arange(9000, dtype=np.float32).reshape(-1, 1)}
    meta = records.Metadata("{}", "v", [1], [], "p")
    large = b"".join(records.encode_large(echoed, outputs, count, 7, meta))
    assert large == records.encode(small_echoed, outputs, count, 7, meta)


def test_a_large_body_refuses_as_a_small_one() -> None:
    codec = records.RecordsCodec([TENSOR])
    rows: list[Any] = [{"tensor": [1.0, 2.0, 3.0]} for _ in range(9000)]
    rows[5000] = {"tensr": [1.0, 2.0, 3.0]}
    message = bad(codec.feed_of_large, json.dumps(rows).encode(), None)
    assert "record 5000" in message and "'tensr'" in message
    rows[5000] = {"tensor": [1.0, 2.0]}
    message = bad(codec.feed_of_large, json.dumps(rows).encode(), None)
    assert "record 5000" in message and "[2]" in message
    with pytest.raises(PayloadTooLarge) as info:
        codec.feed_of_large(records_body(np.ones((9000, 3))), 1000)
    assert info.value.field == "records" and "EDGEPUB_MAX_RECORDS" in info.value.message
    assert "empty" in bad(codec.feed_of_large, b"[" + b" " * 300_000 + b"]", None)


def bad(fn: Any, *args: Any) -> str:
    with pytest.raises(BadRequest) as info:
        fn(*args)
    return info.value.message


# --- Arrow, many records ----------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_an_arrow_answer_repeats_its_metadata_per_record(stream: bool) -> None:
    count = 50_000
    echoed = {"tensor": pa.chunked_array([pa.array(np.arange(count, dtype=np.float64))])}
    outputs = {"variable": np.ones((count, 1), dtype=np.float32)}
    meta = {"last_model": "{}", "pipeline_version": "v", "elapsed": [5, 6], "dropped": [],
            "partition": "p"}  # fmt: skip
    buffer = arrow.encode(echoed, outputs, count, 1700000000000, meta, stream)
    reader = pa.ipc.open_stream if stream else pa.ipc.open_file
    table = reader(pa.py_buffer(buffer)).read_all()
    assert table.num_rows == count
    last = table.slice(count - 1).to_pylist()[0]
    assert last["metadata"] == meta and last["check_failures"] == []
    assert last["in"] == {"tensor": float(count - 1)}
    assert table.column("time").type == pa.timestamp("ms")


# --- OIP, a large JSON body -----------------------------------------------------------------


def oip_body(count: int, **extra: Any) -> bytes:
    values = np.random.default_rng(9).normal(size=count * 3).round(6).tolist()
    tensor = {"name": "tensor", "shape": [count, 3], "datatype": "FP32", "data": values}
    return msgspec.json.encode({"id": "r", "inputs": [tensor], **extra})


@pytest.mark.parametrize(
    "body",
    [
        oip_body(40_000),
        oip_body(40_000, parameters={"data": [1.0] * 40_000}),  # a "data" key elsewhere
        oip_body(40_000).replace(b'"FP32"', b'"BYTES"'),  # not numbers by its datatype
        oip_body(40_000).replace(b"]}]", b',"x"]}]'),  # a list that is not flat numbers
        oip_body(10),  # small: no piece set aside
    ],
    ids=["plain", "data-elsewhere", "bytes", "not-numbers", "small"],
)
def test_a_large_oip_body_decodes_as_a_whole_one(body: bytes) -> None:
    def feed(decoded: Any) -> Any:
        request, binary = decoded
        try:
            return oip.to_feed(request, binary, [TENSOR])[0]["tensor"].tolist(), request.id
        except BadRequest as exc:
            return exc.message

    assert feed(oip.decode_large(body, None)) == feed(oip.decode(body, None))


def test_a_large_oip_list_is_an_array_of_the_same_numbers() -> None:
    body = oip_body(40_000)
    request, _ = oip.decode_large(body, None)
    data = request.inputs[0].data
    assert isinstance(data, np.ndarray) and data.dtype == np.float64
    assert data.tolist() == msgspec.json.decode(body)["inputs"][0]["data"]
    broken = body.replace(b",", b",,", 1)  # malformed: refused as the whole body is
    assert bad(oip.decode_large, broken, None) == bad(oip.decode, broken, None)
