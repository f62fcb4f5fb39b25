"""Pure pieces of the edge's request path: tensor validation, chaining, the three wire
formats (pandas-records, Arrow, Open Inference Protocol with binary tensors), routes and
the Prometheus text."""

from __future__ import annotations

import json
import struct
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepub.edge_agent.errors import BadRequest, RequestError
from edgepub.edge_agent.metrics import EdgeMetrics, Histogram
from edgepub.edge_agent.protocols import arrow, oip, records
from edgepub.edge_agent.runtime import PipelineLoadError, plan_chain
from edgepub.edge_agent.tensors import check_shape, column, shape_text
from edgepub.edge_agent.web.routes import Route, route
from edgepub.shared.dtypes import dtype_of_ort
from edgepub.shared.schemas import TensorSpec

SPEC = TensorSpec(name="tensor", dtype="float32", shape=(None, 3))
TEXT = TensorSpec(name="words", dtype="string", shape=(None,))


def bad(fn: Any, *args: Any) -> str:
    with pytest.raises(BadRequest) as info:
        fn(*args)
    return info.value.message


# --- tensors ----------------------------------------------------------------------------------


def test_column_stacks_records() -> None:
    arr = column(SPEC, [[1, 2, 3], [4.5, 5, 6]])
    assert arr.dtype == np.float32 and arr.shape == (2, 3)
    assert column(TEXT, ["a", "b"]).dtype == object


@pytest.mark.parametrize(
    "values,words",
    [
        ([[1, 2]], ["'tensor'", "[2]", "[3]"]),
        ([[1, 2, 3], [1, 2]], ["record 0", "record 1"]),
        ([["a", "b", "c"]], ["float32", "record 0"]),
        ([[True, False, True]], ["float32"]),
        ([[1, None, 3]], ["float32", "record 0"]),
        ([{"x": 1}], ["float32"]),
        ([1.0], ["[]", "[3]"]),
    ],
)
def test_column_names_what_is_wrong(values: list[Any], words: list[str]) -> None:
    message = bad(column, SPEC, values)
    for word in words:
        assert word in message, message


@given(st.lists(st.integers(min_value=0, max_value=5), min_size=0, max_size=4))
def test_check_shape_accepts_free_dims(dims: list[int]) -> None:
    spec = TensorSpec(name="t", dtype="float32", shape=tuple([None] * len(dims)))
    check_shape(spec, dims, per_record=False)
    fixed = TensorSpec(name="t", dtype="float32", shape=tuple(dims))
    check_shape(fixed, dims, per_record=False)
    if dims:
        other = [*dims[:-1], dims[-1] + 1]
        with pytest.raises(BadRequest):
            check_shape(fixed, other, per_record=False)


def test_type_names() -> None:
    assert dtype_of_ort("tensor(float)") == "float32"
    assert dtype_of_ort("tensor(string)") == "string"
    assert shape_text((None, "batch", 18)) == "[?, ?, 18]"


def test_plan_chain() -> None:
    assert plan_chain(["a", "b"], ["b"]) == {"b": "b"}
    assert plan_chain(["scaled"], ["tensor"]) == {"tensor": "scaled"}
    with pytest.raises(PipelineLoadError):
        plan_chain(["label", "probabilities"], ["x"])


# --- pandas-records -----------------------------------------------------------------------


CODEC = records.RecordsCodec((SPEC,))


def rec(body: Any) -> bytes:
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    "body,words",
    [
        (b"[{", ["not valid JSON"]),
        (b"{}", ["list of records", "object"]),
        (b"[]", ["empty"]),
        (b"null", ["list of records", "null"]),
        (rec([[1, 2, 3]]), ["record 0", "not a JSON object"]),
        (rec([{"tensor": [1, 2, 3]}, {}]), ["record 1", "no input 'tensor'"]),
        (rec([{"tensor": [1, 2, 3]}, {"x": 1}]), ["record 1", "'x'", "inputs are 'tensor'"]),
        (rec([{"tensor": [1, "a", 3]}]), ["'tensor'", "record 0", "str", "float32", "[3]"]),
        (rec([{"tensor": [1, True, 3]}]), ["'tensor'", "bool"]),
        (rec([{"tensor": 1.0}]), ["'tensor'", "record 0", "[3]"]),
        (rec([{"tensor": [1, None, 3]}]), ["'tensor'", "null"]),
    ],
)
def test_records_decode_errors(body: bytes, words: list[str]) -> None:
    message = bad(CODEC.decode, body)
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    "body,words",
    [
        (rec([{"tensor": [1, 2]}]), ["'tensor'", "[2]", "[3]"]),
        (rec([{"tensor": [1, 2, 3]}, {"tensor": [1, 2]}]), ["record 0", "record 1"]),
    ],
)
def test_records_shape_errors(body: bytes, words: list[str]) -> None:
    message = bad(CODEC.to_feed, CODEC.decode(body))
    for word in words:
        assert word in message, message


def test_records_answer_shape() -> None:
    feed, raw = CODEC.to_feed(CODEC.decode(rec([{"tensor": [1, 2, 3]}, {"tensor": [4, 5, 6]}])))
    assert feed["tensor"].dtype == np.float32 and feed["tensor"].shape == (2, 3)
    outputs = {"variable": np.array([[0.5], [1.5]], dtype=np.float32)}
    meta = records.Metadata("{}", "v", [1], [], "edge-1")
    out = json.loads(records.encode(raw, outputs, 2, 1700000000000, meta))
    assert out[1] == {
        "time": 1700000000000,
        "in": {"tensor": [4.0, 5.0, 6.0]},
        "out": {"variable": [1.5]},
        "anomaly": {"count": 0},
        "check_failures": [],
        "metadata": {
            "last_model": "{}",
            "pipeline_version": "v",
            "elapsed": [1],
            "dropped": [],
            "partition": "edge-1",
        },
    }


def test_records_with_two_inputs_and_odd_names() -> None:
    specs = (TensorSpec(name="input:0", dtype="int64", shape=(None,)), TEXT)
    codec = records.RecordsCodec(specs)
    feed, _ = codec.to_feed(codec.decode(rec([{"input:0": 3, "words": "a"}])))
    assert feed["input:0"].dtype == np.int64 and feed["words"].tolist() == ["a"]
    assert "'input:0'" in bad(codec.decode, rec([{"input:0": 1.5, "words": "a"}]))


def test_records_refuse_what_the_model_does_not_take() -> None:
    """An extra column is refused by name rather than dropped: a misspelt or misplaced
    field is a client mistake, and what was inferred must be what was sent."""
    codec = records.RecordsCodec((TensorSpec(name="n", dtype="int8", shape=(None,)),))
    message = bad(codec.decode, rec([{"n": 3}, {"n": 1, "extra": 1}]))
    assert "record 1" in message and "'extra'" in message and "'n'" in message
    assert "<= 127" in bad(codec.decode, rec([{"n": 300}]))  # would overflow int8 in numpy
    assert bad_status(413, codec.decode, rec([{"n": 1}] * 3), 2) == "records"


def test_records_deep_nesting_is_a_400() -> None:
    untyped = records.RecordsCodec((TensorSpec(name="t", dtype="float32", shape=()),))
    deep = b'[{"t": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]"
    assert "too deeply" in bad(untyped.decode, deep)
    assert "not a JSON object" in bad(CODEC.decode, b"[" * 100_000 + b"]" * 100_000)
    assert "'t'" in bad(untyped.to_feed, untyped.decode(rec([{"t": [{"a": 1}]}])))
    wide = records.RecordsCodec((TensorSpec(name="i", dtype="int64", shape=()),))
    assert "'i'" in bad(wide.to_feed, wide.decode(rec([{"i": 10**30}])))


def bad_status(status: int, fn: Any, *args: Any) -> str:
    with pytest.raises(RequestError) as info:
        fn(*args)
    assert info.value.status == status
    return info.value.field or ""


# --- Arrow ----------------------------------------------------------------------------------


def ipc(table: Any, stream: bool, compression: str | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with (pa.ipc.new_stream if stream else pa.ipc.new_file)(
        sink, table.schema, options=options
    ) as w:
        w.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def dec(body: bytes, stream: bool, max_decoded: int = 1 << 20, max_records: int = 1000) -> Any:
    return arrow.decode(body, stream, max_decoded, max_records)


def fixed(rows: int, width: int = 3, zeros: bool = False) -> Any:
    values = np.zeros if zeros else np.arange
    flat = pa.array(values(rows * width, dtype=np.float32))
    return pa.table({"tensor": pa.FixedSizeListArray.from_arrays(flat, width)})


def bad_offsets(middle: int) -> Any:
    """A list<float> column whose offsets (0, middle, 6) point outside its 6 values."""
    offsets = pa.py_buffer(np.array([0, middle, 6], dtype=np.int32).tobytes())
    values = pa.array(np.arange(6, dtype=np.float32))
    column = pa.ListArray.from_buffers(
        pa.list_(pa.float32()), 2, [None, offsets], children=[values]
    )
    return pa.table({"tensor": column})


@pytest.mark.parametrize("stream", [False, True])
def test_arrow_round_trip(stream: bool) -> None:
    data = np.arange(12, dtype=np.float64).reshape(4, 3)
    table = pa.table({"tensor": pa.FixedSizeListArray.from_arrays(pa.array(data.ravel()), 3)})
    feed, echoed = arrow.to_feed(dec(ipc(table, stream), stream), [SPEC])
    assert feed["tensor"].dtype == np.float32 and feed["tensor"].tolist() == data.tolist()
    outputs = {"variable": np.ones((4, 1), dtype=np.float32)}
    meta = {
        "last_model": "{}",
        "pipeline_version": "v",
        "elapsed": [5],
        "dropped": [],
        "partition": "p",
    }
    body = arrow.encode(echoed, outputs, 4, 1, meta, stream)
    buf = pa.py_buffer(body)
    out = (pa.ipc.open_stream(buf) if stream else pa.ipc.open_file(buf)).read_all()
    assert out.column("out").to_pylist()[0] == {"variable": [1.0]}
    assert out.column("metadata").to_pylist()[0]["elapsed"] == [5]


def test_arrow_variable_lists_and_errors() -> None:
    table = pa.table({"tensor": pa.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])})  # list<double>
    feed, _ = arrow.to_feed(dec(ipc(table, False), False), [SPEC])
    assert feed["tensor"].shape == (2, 3)
    short = pa.table({"tensor": pa.array([[1.0, 2.0]])})
    assert "[2]" in bad(arrow.to_feed, dec(ipc(short, False), False), [SPEC])
    other = pa.table({"tensor": pa.array([[1.0, 2.0, 3.0]]), "x": pa.array([1.0])})
    assert "column 'x' the model does not take" in bad(
        arrow.to_feed, dec(ipc(other, False), False), [SPEC]
    )
    assert "no column 'tensor'" in bad(
        arrow.to_feed, dec(ipc(pa.table({"x": pa.array([1.0])}), False), False), [SPEC]
    )
    assert "Arrow IPC stream" in bad(arrow.decode, b"nope", True, 1 << 20, 10)
    assert "ARROW1" in bad(arrow.decode, b"nope", False, 1 << 20, 10)


@pytest.mark.parametrize(
    "column,words",
    [
        (pa.array([[1.0, 2.0, 3.0], [1.0]]), ["record 1", "1 values", "holds 3"]),
        (pa.array([[1.0, 2.0, 3.0], None]), ["null"]),
        (pa.array([[1.0, None, 3.0]]), ["null values"]),
        (pa.array([["a", "b", "c"]]), ["list<item: string>", "float32"]),
        (pa.nulls(2), ["null"]),
        (pa.array([[True, False, True]]), ["float32", "bool"]),
        (pa.array(["x", "y"]).dictionary_encode(), ["dictionary", "float32"]),
        (pa.RunEndEncodedArray.from_arrays([2], [1.0]), ["run_end"]),
    ],
)
def test_arrow_columns_that_cannot_feed_the_model(column: Any, words: list[str]) -> None:
    table = pa.table({"tensor": column})
    message = bad(arrow.to_feed, dec(ipc(table, True), True), [SPEC])
    for word in words:
        assert word in message, message


def test_arrow_table_shape_rules() -> None:
    indexed = pa.table({"tensor": pa.array([[1.0, 2.0, 3.0]]), "__index_level_0__": [7]})
    feed, echoed = arrow.to_feed(dec(ipc(indexed, True), True), [SPEC])
    assert list(echoed) == ["tensor"] and feed["tensor"].shape == (1, 3)  # pandas' index: fine
    twice = pa.Table.from_arrays([pa.array([[1.0, 2.0, 3.0]])] * 2, names=["tensor", "tensor"])
    assert "two columns named 'tensor'" in bad(arrow.to_feed, dec(ipc(twice, True), True), [SPEC])
    nested = pa.table({"tensor": pa.array([[[1.0], [2.0], [3.0]]])})
    three = TensorSpec(name="tensor", dtype="float32", shape=(None, 3, 1))
    assert arrow.to_feed(dec(ipc(nested, True), True), [three])[0]["tensor"].shape == (1, 3, 1)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("middle", [-1_000_000_000, -100_000, 40])
def test_arrow_offsets_outside_the_buffer_are_a_400(stream: bool, middle: int) -> None:
    with pytest.raises(BadRequest) as info:
        dec(ipc(bad_offsets(middle), stream), stream)
    assert info.value.field == "tensor" and "Offset invariant" in info.value.message


@pytest.mark.parametrize("stream", [False, True])
def test_arrow_bounds_what_a_body_decodes_to(stream: bool) -> None:
    bomb = ipc(fixed(100_000, 18, zeros=True), stream, compression="zstd")  # 7.2 MB of zeros
    assert len(bomb) < 1 << 20
    message = bad_status(413, dec, bomb, stream, 1 << 20, 10**6)
    assert message == "body"
    assert bad_status(413, dec, ipc(fixed(20), stream), stream, 1 << 20, 10) == "records"
    small = dec(ipc(fixed(20), stream, compression="lz4"), stream, 1 << 20, 20)
    assert small.num_rows == 20


def test_arrow_column_names_that_are_not_utf8() -> None:
    body = bytearray(ipc(fixed(2), True))
    at = body.find(b"tensor")
    body[at] = 0xFF
    assert "UTF-8" in bad(dec, bytes(body), True)


def test_arrow_refuses_a_body_of_countless_batches() -> None:
    table = fixed(arrow.MAX_MESSAGES + 1, 1)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=1):
            writer.write_batch(batch)
    body = sink.getvalue().to_pybytes()
    assert bad_status(413, dec, body, True, 1 << 30, 10**9) == "body"


# --- Open Inference Protocol ------------------------------------------------------------------


class FakeTarget:
    name = "p"
    pipeline_name = "p"
    version = "v1"
    inputs = (SPEC,)
    outputs = ()


def binary_request(arrays: dict[str, np.ndarray[Any, Any]], **params: Any) -> tuple[bytes, int]:
    inputs, blobs = [], []
    for name, arr in arrays.items():
        raw = arr.tobytes()
        inputs.append(
            {
                "name": name,
                "shape": list(arr.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        blobs.append(raw)
    head = json.dumps({"inputs": inputs, "parameters": params}).encode()
    return head + b"".join(blobs), len(head)


def test_oip_binary_in_and_out() -> None:
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, split = binary_request({"tensor": data}, binary_data_output=True)
    request, binary = oip.decode(body, split)
    feed, count = oip.to_feed(request, binary, [SPEC])
    assert count == 2 and feed["tensor"].tolist() == data.tolist()
    out, header_length = oip.encode(FakeTarget(), request, {"y": data * 2})  # type: ignore[arg-type]
    assert header_length is not None
    head = json.loads(out[:header_length])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 24
    got = np.frombuffer(out[header_length:], dtype=np.float32).reshape(2, 3)
    assert got.tolist() == (data * 2).tolist()


def test_oip_json_in_and_out() -> None:
    body = json.dumps(
        {
            "id": "x",
            "inputs": [
                {"name": "tensor", "shape": [1, 3], "datatype": "FP32", "data": [[1, 2, 3]]}
            ],
        }
    )
    request, binary = oip.decode(body.encode(), None)
    _, count = oip.to_feed(request, binary, [SPEC])
    assert count == 1
    out, header_length = oip.encode(FakeTarget(), request, {"y": np.array([[7.0]])})  # type: ignore[arg-type]
    assert header_length is None
    assert json.loads(out) == {
        "model_name": "p",
        "model_version": "v1",
        "id": "x",
        "outputs": [{"name": "y", "datatype": "FP64", "shape": [1, 1], "data": [7.0]}],
    }


def test_oip_bytes_tensors() -> None:
    words = [b"hello", b"edge"]
    raw = b"".join(struct.pack("<I", len(w)) + w for w in words)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "words",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    request, binary = oip.decode(head + raw, len(head))
    feed, _ = oip.to_feed(request, binary, [TEXT])
    assert feed["words"].tolist() == ["hello", "edge"]
    wanted = msgspec.convert(
        {"name": "w", "parameters": {"binary_data": True}}, oip.RequestedOutput
    )
    req = msgspec.structs.replace(request, outputs=[wanted])
    out, length = oip.encode(FakeTarget(), req, {"w": feed["words"]})  # type: ignore[arg-type]
    assert length is not None and out[length:] == raw


@pytest.mark.parametrize(
    "body,split,words",
    [
        (b'{"inputs": []}', None, ["no inputs"]),
        (b'{"inputs": [{"name": "tensor"}]}', None, ["inputs", "shape"]),
        (b"{}", 10, ["Inference-Header-Content-Length=10"]),
    ],
)
def test_oip_decode_errors(body: bytes, split: int | None, words: list[str]) -> None:
    message = bad(oip.decode, body, split)
    for word in words:
        assert word in message, message


def test_oip_binary_size_errors() -> None:
    data = np.zeros((2, 3), dtype=np.float32)
    body, split = binary_request({"tensor": data})
    request, binary = oip.decode(body + b"xx", split)
    assert "belong to no input" in bad(oip.to_feed, request, binary, [SPEC])
    request, binary = oip.decode(body[:-4], split)
    assert "overruns" in bad(oip.to_feed, request, binary, [SPEC])


def oip_json(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


ONE = {"name": "tensor", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}


def test_oip_refuses_an_input_named_twice() -> None:
    """Last-one-wins would infer on data the client may not have meant: refuse, by name."""
    twice = oip_json(ONE, {**ONE, "data": [4, 5, 6]})
    with pytest.raises(BadRequest) as info:
        oip.decode(twice, None)
    assert info.value.field == "tensor" and "named twice" in info.value.message


@pytest.mark.parametrize(
    "body",
    [
        oip_json({**ONE, "data": json.loads("[" * 500 + "]" * 500)}),
        b'{"inputs": [], "parameters": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}]}",
    ],
)
def test_oip_deep_nesting_is_a_400(body: bytes) -> None:
    try:
        request, binary = oip.decode(body, None)
    except BadRequest:
        return
    bad(oip.to_feed, request, binary, [SPEC])


@pytest.mark.parametrize(
    "data",
    [[10**30, 1, 2], [{"a": 1}, 2, 3], ["a", "b", "c"], [1e308, 1, 2], [None, 1, 2]],
)
def test_oip_json_values_that_are_not_numbers(data: list[Any]) -> None:
    request, binary = oip.decode(oip_json({**ONE, "data": data}), None)
    wide = TensorSpec(name="tensor", dtype="int64", shape=(None, 3))
    try:
        oip.to_feed(request, binary, [wide])
    except BadRequest as exc:
        assert exc.field == "tensor"


def test_oip_bounds_records() -> None:
    request, binary = oip.decode(oip_json({**ONE, "shape": [2, 3], "data": [0] * 6}), None)
    assert bad_status(413, oip.to_feed, request, binary, [SPEC], 1) == "records"
    assert oip.to_feed(request, binary, [SPEC], 2)[1] == 2


@pytest.mark.parametrize(
    "media_type,split,status",
    [
        ("", None, None),
        ("application/json", None, None),
        ("application/vnd.kserve+json", None, None),
        ("", 10, None),  # tritonclient: no Content-Type, the header says where JSON ends
        ("application/octet-stream", 10, None),
        ("application/octet-stream", None, 415),
        ("text/csv", None, 415),
        ("application/x-www-form-urlencoded", None, 415),
        ("application/vnd.apache.arrow.stream", 10, 415),
    ],
)
def test_oip_media_types(media_type: str, split: int | None, status: int | None) -> None:
    if status is None:
        oip.check_media_type(media_type, split)
        return
    assert bad_status(status, oip.check_media_type, media_type, split) == "Content-Type"


def test_oip_reports_a_steps_own_version() -> None:
    step = FakeTarget()
    step.name = "scaler"
    step.models = [type("M", (), {"version": "model-v7"})()]  # type: ignore[attr-defined]
    assert oip.version_of(step) == "model-v7"  # type: ignore[arg-type]
    assert oip.model_metadata(step)["versions"] == ["model-v7"]  # type: ignore[arg-type]
    assert oip.version_of(FakeTarget()) == "v1"  # type: ignore[arg-type]


# --- routes and metrics ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,expected",
    [
        ("/infer", Route("infer", "POST")),
        ("/pipelines/p1", Route("pipeline_infer", "POST", "p1")),
        ("/pipelines", Route("list_pipelines", "GET")),
        ("/v2/health/ready", Route("ready", "GET")),
        ("/v2/models/m", Route("model_metadata", "GET", "m")),
        ("/v2/models/m/ready", Route("model_ready", "GET", "m")),
        ("/v2/models/m/versions/3/infer", Route("model_infer", "POST", "m", "3")),
        ("/v2/models/m/other", None),
        ("/pipelines/a/b", None),
        ("/nothing", None),
    ],
)
def test_routes(path: str, expected: Route | None) -> None:
    assert route(path) == expected


def test_histogram_is_cumulative() -> None:
    h = Histogram("x_seconds", "help", ("p",), buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        h.observe(value, ("a",))
    lines = h.render()
    assert 'x_seconds_bucket{p="a",le="0.1"} 2' in lines
    assert 'x_seconds_bucket{p="a",le="1"} 3' in lines
    assert 'x_seconds_bucket{p="a",le="+Inf"} 4' in lines
    assert 'x_seconds_count{p="a"} 4' in lines


def test_metrics_text() -> None:
    m = EdgeMetrics()
    m.requests.inc(("records", "200"))
    m.gauge("g", "a gauge", lambda: {("x",): 2.0}, ("k",))
    text = m.render()
    assert 'edgepub_edge_requests_total{protocol="records",status="200"} 1' in text
    assert 'g{k="x"} 2' in text and text.endswith("\n")
