"""Fuzzing each protocol of one real ``edgepub-edge`` process with mutated valid bodies.

Per protocol (pandas-records JSON, Arrow stream and file, OIP JSON, OIP binary) hypothesis
mutates a valid body: byte flips, truncation, splices, int32/int64 extremes written over
headers and offsets, list offsets pointing anywhere, JSON values swapped for extreme
numbers, other types and nesting up to 100,000 levels. Every answer must be below 500 and
JSON, the agent must still be the same live process afterwards, and its RSS must stay
under ``RSS_BOUND_MB``.

Bounded for CI: ``EXAMPLES`` per protocol, derandomized (the same bodies every run, so a
failure reproduces). ``EDGEPUB_FUZZ_EXAMPLES=3000 EDGEPUB_FUZZ_SEED=<n>`` explores further
(about 45 s per 3,000 examples per protocol; the seed reproduces what it finds).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import requests
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from support.edge import EdgeAgent, http, make_model, model_version, rss_mb, serving

PIPELINE = "fuzz"
EXAMPLES = int(os.environ.get("EDGEPUB_FUZZ_EXAMPLES", "120"))
SEED = os.environ.get("EDGEPUB_FUZZ_SEED")  # set: explore other bodies than CI's
RSS_BOUND_MB = 400.0
_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=SEED is None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fuzzed(test: Any) -> Any:
    """The bounded settings, and the seed when one is given."""
    return _SETTINGS(test) if SEED is None else seed(int(SEED))(_SETTINGS(test))


ROWS = np.random.default_rng(3).normal(size=(3, 18)).astype(np.float32)


class Target:
    def __init__(self, agent: EdgeAgent) -> None:
        self.agent = agent
        assert agent.child.pid is not None
        self.pid = agent.child.pid
        self.session = http()
        self.statuses: dict[int, int] = {}
        self.peak_rss = 0.0

    def send(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        try:
            resp = self.session.post(self.agent.url + path, data=body, headers=headers, timeout=30)
        except requests.ConnectionError:
            # a refusal may close the connection before the body is sent; the agent must live
            self.session = http()
            assert self.agent.child.running(), self.agent.child.log_tail()
            return
        self.statuses[resp.status_code] = self.statuses.get(resp.status_code, 0) + 1
        assert resp.status_code < 500, (resp.status_code, resp.text[:300], body[:200])
        if resp.status_code >= 400:
            assert "error" in resp.json(), resp.text[:300]
        self.peak_rss = max(self.peak_rss, rss_mb(self.pid))
        assert self.peak_rss < RSS_BOUND_MB, self.peak_rss


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    work = tmp_path_factory.mktemp("edge-fuzz")
    model = make_model(work / "m.onnx")
    with serving(work, PIPELINE, [(model_version("m", model), model)], {}) as agent:
        found = Target(agent)
        yield found
        # after every protocol's run: the same process, alive, no traceback in its log
        assert agent.child.running() and agent.child.pid == found.pid
        assert http().get(agent.url + "/v2/health/live", timeout=5).status_code == 200
        log = agent.child.log_text()
        assert "Traceback" not in log and "request_failed" not in log
        print(f"\nfuzz statuses {sorted(found.statuses.items())}, peak RSS {found.peak_rss:.0f} MB")


# --- byte mutations --------------------------------------------------------------------------

EXTREMES_32 = [0, 1, 7, 8, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFF8, 1_000_000_000]
EXTREMES_64 = [0, 1, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64 - 8, 10**12]


@st.composite
def mutated(draw: Any, valid: list[bytes]) -> bytes:
    """One of ``valid``, then 1-4 byte-level edits."""
    body = bytearray(draw(st.sampled_from(valid)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        if not body:
            break
        at = draw(st.integers(min_value=0, max_value=len(body) - 1))
        edit = draw(st.sampled_from(["flip", "byte", "int32", "int64", "cut", "splice", "insert"]))
        if edit == "flip":
            body[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif edit == "byte":
            body[at] = draw(st.integers(min_value=0, max_value=255))
        elif edit == "int32":
            at -= at % 4  # Arrow lengths and offsets sit on 4- and 8-byte boundaries
            body[at : at + 4] = struct.pack("<I", draw(st.sampled_from(EXTREMES_32)))
        elif edit == "int64":
            at -= at % 8
            body[at : at + 8] = struct.pack("<Q", draw(st.sampled_from(EXTREMES_64)))
        elif edit == "cut":
            del body[at:]
        elif edit == "splice":
            donor = draw(st.sampled_from(valid))
            start = draw(st.integers(min_value=0, max_value=len(donor)))
            body[at:at] = donor[start : start + draw(st.integers(min_value=1, max_value=256))]
        else:
            body[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(body)


# --- JSON mutations --------------------------------------------------------------------------

RAW_NUMBERS = ["1e400", "-1e400", "1e-400", "-0", "123456789012345678901234567890", "2e308"]
DEEP_LEVELS = [64, 1_000, 100_000]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:4]):
            out += _paths(item, (*prefix, index))
    return out


def _replacements() -> st.SearchStrategy[Any]:
    numbers = st.sampled_from(
        [0, -1, 2**31, 2**53 + 1, 2**63, -(2**63) - 1, 2**64, 1e308, -1e308, 5e-324, -0.0]
    )
    tokens = st.sampled_from(RAW_NUMBERS).map(lambda t: ("raw", t))
    deep = st.sampled_from(DEEP_LEVELS).map(lambda n: ("deep", n))
    return st.one_of(
        numbers,
        tokens,
        deep,
        st.none(),
        st.booleans(),
        st.text(max_size=6),
        st.just([]),
        st.just({}),
        st.lists(numbers, max_size=40),
        st.dictionaries(st.text(max_size=6), numbers, max_size=3),
    )


def _set(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _set(value[head], rest, new)}
    copy = list(value)
    copy[head] = _set(copy[head], rest, new)
    return copy


def _dumps(value: Any) -> bytes:
    """JSON with ("raw", token) and ("deep", n) markers spelt out (json cannot nest 100,000)."""
    markers: dict[str, bytes] = {}

    def mark(item: Any) -> Any:
        if isinstance(item, tuple) and len(item) == 2 and item[0] in ("raw", "deep"):
            key = f"@@{len(markers)}@@"
            kind, arg = item
            markers[key] = arg.encode() if kind == "raw" else b"[" * arg + b"]" * arg
            return key
        if isinstance(item, dict):
            return {k: mark(v) for k, v in item.items()}
        if isinstance(item, list):
            return [mark(v) for v in item]
        return item

    text = json.dumps(mark(value)).encode()
    for key, raw in markers.items():
        text = text.replace(f'"{key}"'.encode(), raw)
    return text


@st.composite
def json_mutant(draw: Any, valid: Any) -> bytes:
    """``valid`` with 1-3 values swapped, keys added or dropped; sometimes bytes edited too."""
    value = valid
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(_paths(value)))
        action = draw(st.sampled_from(["replace", "replace", "add_key", "drop"]))
        if action == "replace":
            value = _set(value, path, draw(_replacements()))
        elif action == "add_key" and isinstance(_get(value, path), dict):
            extra = {draw(st.text(max_size=8)): draw(_replacements())}
            value = _set(value, path, {**_get(value, path), **extra})
        elif action == "drop" and path:
            parent = _get(value, path[:-1])
            if isinstance(parent, dict):
                value = _set(value, path[:-1], {k: v for k, v in parent.items() if k != path[-1]})
            elif isinstance(parent, list):
                value = _set(value, path[:-1], parent[: path[-1]] + parent[path[-1] + 1 :])
    body = _dumps(value)
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        body = draw(mutated([body]))
    return body


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


# --- valid bodies ----------------------------------------------------------------------------

RECORDS = [{"tensor": row.tolist()} for row in ROWS]
OIP_REQUEST = {
    "id": "fuzz-1",
    "inputs": [{"name": "tensor", "shape": [3, 18], "datatype": "FP32", "data": ROWS.tolist()}],
    "outputs": [{"name": "variable", "parameters": {"binary_data": False}}],
    "parameters": {"binary_data_output": False},
}


def arrow_bodies(stream: bool) -> list[bytes]:
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(ROWS.ravel()), 18)
    lists = pa.array(ROWS.tolist(), type=pa.list_(pa.float32()))
    bodies = []
    for column, compression in ((fixed, None), (lists, None), (fixed, "zstd"), (lists, "lz4")):
        table = pa.table({"tensor": column})
        sink = pa.BufferOutputStream()
        options = pa.ipc.IpcWriteOptions(compression=compression)
        opener = pa.ipc.new_stream if stream else pa.ipc.new_file
        with opener(sink, table.schema, options=options) as writer:
            writer.write_table(table)
        bodies.append(bytes(sink.getvalue().to_pybytes()))
    return bodies


@st.composite
def hostile_offsets(draw: Any, stream: bool) -> bytes:
    """list<float> columns whose inner offsets are anything (first 0 and last the value count,
    so pyarrow's writer here stays inside its buffers; the agent's reader must not)."""
    rows = draw(st.integers(min_value=1, max_value=4))
    count = draw(st.integers(min_value=0, max_value=72))
    inner = st.one_of(
        st.integers(min_value=-(2**31), max_value=2**31 - 1),
        st.integers(min_value=-2, max_value=count + 2),
    )
    offsets = [0, *draw(st.lists(inner, min_size=rows - 1, max_size=rows - 1)), count]
    column = pa.ListArray.from_buffers(
        pa.list_(pa.float32()),
        rows,
        [None, pa.py_buffer(np.array(offsets, dtype=np.int32).tobytes())],
        children=[pa.array(np.zeros(count, dtype=np.float32))],
    )
    table = pa.table({"tensor": column})
    sink = pa.BufferOutputStream()
    with (pa.ipc.new_stream if stream else pa.ipc.new_file)(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def oip_binary() -> tuple[bytes, int]:
    raw = ROWS.tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "tensor",
                    "shape": [3, 18],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return head + raw, len(head)


def check_valid(target: Target, path: str, body: bytes, headers: dict[str, str]) -> None:
    """The unmutated body is answered: the fuzzing starts from what works."""
    resp = target.session.post(target.agent.url + path, data=body, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text


# --- the fuzz tests --------------------------------------------------------------------------

JSON_RECORDS = {"Content-Type": "application/json; format=pandas-records"}
OIP_PATH = f"/v2/models/{PIPELINE}/infer"


def test_fuzz_pandas_records(target: Target) -> None:
    check_valid(target, "/infer", json.dumps(RECORDS).encode(), JSON_RECORDS)

    @fuzzed
    @given(json_mutant(RECORDS))
    def run(body: bytes) -> None:
        target.send("/infer", body, JSON_RECORDS)

    run()


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "file"])
def test_fuzz_arrow(target: Target, stream: bool) -> None:
    bodies = arrow_bodies(stream)
    headers = {"Content-Type": f"application/vnd.apache.arrow.{'stream' if stream else 'file'}"}
    for body in bodies:
        check_valid(target, "/infer", body, headers)

    @fuzzed
    @given(st.one_of(mutated(bodies), hostile_offsets(stream)))
    def run(body: bytes) -> None:
        target.send("/infer", body, headers)

    run()


def test_fuzz_oip_json(target: Target) -> None:
    check_valid(target, OIP_PATH, json.dumps(OIP_REQUEST).encode(), {})

    @fuzzed
    @given(json_mutant(OIP_REQUEST))
    def run(body: bytes) -> None:
        target.send(OIP_PATH, body, {"Content-Type": "application/json"})

    run()


@st.composite
def binary_mutant(draw: Any, valid: bytes, split: int) -> tuple[bytes, Any]:
    """(body, Inference-Header-Content-Length): a mutated JSON header before the tensors, or
    bytes edited anywhere; the length right, off by a little, extreme or not a number."""
    if draw(st.booleans()):
        head = draw(json_mutant(json.loads(valid[:split])))
        body, right = head + valid[split:], len(head)
    else:
        body, right = draw(mutated([valid])), split
    length = draw(
        st.one_of(
            st.just(right),
            st.just(right),
            st.integers(min_value=-2, max_value=len(body) + 2),
            st.sampled_from([0, 2**31, 2**63, 10**30]),
            st.sampled_from(["", "abc", "1e3", "12x", "-0", "+5"]),
        )
    )
    return body, length


def test_fuzz_oip_binary(target: Target) -> None:
    valid, split = oip_binary()
    check_valid(target, OIP_PATH, valid, {"Inference-Header-Content-Length": str(split)})

    @fuzzed
    @given(binary_mutant(valid, split))
    def run(case: tuple[bytes, Any]) -> None:
        body, length = case
        target.send(OIP_PATH, body, {"Inference-Header-Content-Length": str(length)})

    run()
