"""Hostile requests against a real ``edgepub-edge`` process: each attack measured from
outside (status, the agent still alive, its RSS, its log, ``/metrics``).

The agent serves a two-step pipeline (scaler -> gbr) with short HTTP deadlines and a small
connection cap, so the slow-client cases finish in seconds.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from support.edge import (
    EdgeAgent,
    exchange,
    http,
    make_model,
    make_scaler,
    model_version,
    read_until_closed,
    rss_mb,
    serving,
)
from support.servers import HOST
from support.waiting import wait_for

PIPELINE = "fraud"
HEADER_TIMEOUT_S = 2
BODY_TIMEOUT_S = 2
KEEP_ALIVE_S = 2
MAX_CONNECTIONS = 40
STREAM = "application/vnd.apache.arrow.stream"
FILE = "application/vnd.apache.arrow.file"
GOOD = [{"tensor": [0.5] * 18}]
ONE = {"name": "tensor", "shape": [1, 18], "datatype": "FP32", "data": [0.5] * 18}


class Live:
    def __init__(self, agent: EdgeAgent, versions: dict[str, str]) -> None:
        self.agent = agent
        self.versions = versions  # model name -> its version

    @property
    def pid(self) -> int:
        assert self.agent.child.pid is not None
        return self.agent.child.pid

    def post(self, path: str, body: bytes, content_type: str | None, **headers: str) -> Any:
        if content_type is not None:
            headers["Content-Type"] = content_type
        return http().post(self.agent.url + path, data=body, headers=headers, timeout=30)

    def healthy(self) -> bool:
        return http().get(self.agent.url + "/v2/health/live", timeout=5).status_code == 200

    def metric(self, name: str, **labels: str) -> float:
        wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
        for line in http().get(self.agent.url + "/metrics", timeout=5).text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def log_events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.agent.events() if e.get("event") == name]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    work = tmp_path_factory.mktemp("edge-hostile")
    scaler = make_scaler(work / "scaler.onnx")
    gbr = make_model(work / "gbr.onnx")
    steps = [(model_version("scaler", scaler), scaler), (model_version("gbr", gbr), gbr)]
    env = {
        "EDGEPUB_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "EDGEPUB_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "EDGEPUB_KEEP_ALIVE_S": str(KEEP_ALIVE_S),
        "EDGEPUB_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    with serving(work, PIPELINE, steps, env) as agent:
        yield Live(agent, {m.name: m.version for m, _ in steps})


@pytest.fixture(autouse=True)
def still_serving(live: Live) -> Iterator[None]:
    """After every attack the same process still answers an inference."""
    pid = live.pid
    yield
    assert live.agent.child.running(), live.agent.child.log_tail()
    assert live.pid == pid
    resp = live.post("/infer", json.dumps(GOOD).encode(), "application/json")
    assert resp.status_code == 200, resp.text


def no_tracebacks(live: Live) -> None:
    log = live.agent.child.log_text()
    assert "Traceback" not in log and "exc_info" not in log and "request_failed" not in log


# --- Arrow -------------------------------------------------------------------------------------


def ipc(table: Any, stream: bool, compression: str | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with (pa.ipc.new_stream if stream else pa.ipc.new_file)(
        sink, table.schema, options=options
    ) as w:
        w.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def bad_offsets(middle: int, stream: bool) -> bytes:
    """Two records of list<float> over 36 values, offsets (0, middle, 36): 528 bytes."""
    values = pa.array(np.arange(36, dtype=np.float32))
    offsets = pa.py_buffer(np.array([0, middle, 36], dtype=np.int32).tobytes())
    column = pa.ListArray.from_buffers(
        pa.list_(pa.float32()), 2, [None, offsets], children=[values]
    )
    return ipc(pa.table({"tensor": column}), stream)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "file"])
@pytest.mark.parametrize("middle", [-1_000_000_000, -100_000, 40], ids=["-1e9", "-1e5", "past"])
def test_arrow_offsets_outside_the_buffer_are_a_400_not_a_crash(
    live: Live, middle: int, stream: bool
) -> None:
    """Before: SIGSEGV (-1e9), 400 KB of heap read back as floats (-1e5), or a 500."""
    resp = live.post("/infer", bad_offsets(middle, stream), STREAM if stream else FILE)
    assert resp.status_code == 400, resp.text
    assert resp.json()["field"] == "tensor" and "Offset invariant" in resp.json()["error"]
    no_tracebacks(live)


def test_a_zstd_bomb_is_refused_before_it_inflates(live: Live) -> None:
    """9.2 KB of zstd that inflates to 288 MB. Before: 4.2 GB RSS, health checks blocked for
    seconds, a 1.0 GB answer."""
    zeros = pa.array(np.zeros(4_000_000 * 18, dtype=np.float32))
    bomb = ipc(pa.table({"tensor": pa.FixedSizeListArray.from_arrays(zeros, 18)}), True, "zstd")
    assert len(bomb) < 16_000
    before = rss_mb(live.pid)
    peak = [before]
    slowest = [0.0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(live.pid))
            started = time.perf_counter()
            live.healthy()
            slowest[0] = max(slowest[0], time.perf_counter() - started)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        resp = live.post("/infer", bomb, STREAM)
        time.sleep(0.2)
    finally:
        done.set()
        watcher.join()
    assert resp.status_code == 413 and resp.json()["field"] == "body", resp.text
    assert "288000000" in resp.json()["error"] and "EDGEPUB_MAX_BODY" in resp.json()["error"]
    assert len(resp.content) < 1000
    assert peak[0] - before < 32, (before, peak[0])
    assert slowest[0] < 1.0
    assert (
        live.metric("edgepub_edge_request_errors_total", protocol="arrow", code="payload_too_large")
        >= 1
    )


MAX_RECORDS = 100_000  # the default


@pytest.mark.parametrize("protocol", ["arrow", "records", "oip"])
def test_more_records_than_the_limit_are_refused(live: Live, protocol: str) -> None:
    """Each protocol's records bounded, not only the bytes: before, any count was inferred."""
    rows = MAX_RECORDS + 1
    if protocol == "arrow":
        flat = pa.array(np.zeros(rows * 18, dtype=np.float32))  # 7.2 MB, inside EDGEPUB_MAX_BODY
        table = pa.table({"tensor": pa.FixedSizeListArray.from_arrays(flat, 18)})
        resp = live.post("/infer", ipc(table, True, "zstd"), STREAM)
    elif protocol == "records":
        body = b"[" + b",".join([b'{"tensor":[' + b",".join([b"0"] * 18) + b"]}"] * rows) + b"]"
        resp = live.post("/infer", body, "application/json")
    else:
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "tensor",
                        "shape": [rows, 18],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": rows * 72},
                    }
                ]
            }
        ).encode()
        resp = live.post(
            f"/v2/models/{PIPELINE}/infer",
            head + bytes(rows * 72),
            None,
            **{"Inference-Header-Content-Length": str(len(head))},
        )
    assert resp.status_code == 413, resp.text
    assert resp.json()["field"] == "records" and "EDGEPUB_MAX_RECORDS" in resp.json()["error"]


def test_arrow_extra_columns_are_refused_by_name(live: Live) -> None:
    table = pa.table(
        {
            "tensor": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(18, np.float32)), 18),
            "id": pa.array([7]),
        }
    )
    resp = live.post("/infer", ipc(table, True), STREAM)
    assert resp.status_code == 400 and resp.json()["field"] == "id", resp.text


# --- JSON --------------------------------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    "path,body",
    [
        ("/infer", b'[{"tensor": ' + DEEP + b"}]"),
        ("/infer", DEEP),
        (
            f"/v2/models/{PIPELINE}/infer",
            b'{"inputs": [{"name": "tensor", "shape": [1, 18], "datatype": "FP32", "data": '
            + DEEP
            + b"}]}",
        ),
        (f"/v2/models/{PIPELINE}/infer", b'{"inputs": [], "parameters": {"p": ' + DEEP + b"}}"),
    ],
    ids=["records value", "records body", "oip data", "oip parameters"],
)
def test_json_nested_100000_levels_is_a_400(live: Live, path: str, body: bytes) -> None:
    """Before: 500 and a full traceback in the log for each one."""
    resp = live.post(path, body, "application/json")
    assert resp.status_code == 400, resp.text
    no_tracebacks(live)


def test_pandas_records_extra_columns_are_refused_by_name(live: Live) -> None:
    """Before: the extra column was silently dropped."""
    body = json.dumps([{"tensor": [0.5] * 18}, {"tensor": [0.5] * 18, "store_id": 12}]).encode()
    resp = live.post("/infer", body, "application/json; format=pandas-records")
    assert resp.status_code == 400, resp.text
    assert resp.json()["field"] == "store_id" and "record 1" in resp.json()["error"]


# --- Open Inference Protocol -----------------------------------------------------------------


def test_oip_an_input_named_twice_is_refused(live: Live) -> None:
    """Before: accepted, the last one won."""
    body = json.dumps({"inputs": [ONE, {**ONE, "data": [1.5] * 18}]}).encode()
    resp = live.post(f"/v2/models/{PIPELINE}/infer", body, "application/json")
    assert resp.status_code == 400 and resp.json()["field"] == "tensor", resp.text
    assert "named twice" in resp.json()["error"]


@pytest.mark.parametrize(
    "content_type,headers,status",
    [
        ("text/csv", {}, 415),
        ("application/x-www-form-urlencoded", {}, 415),
        ("application/octet-stream", {}, 415),
        (None, {}, 200),
        ("application/json", {}, 200),
    ],
)
def test_oip_content_type(
    live: Live, content_type: str | None, headers: dict[str, str], status: int
) -> None:
    """Before: any Content-Type was read as JSON."""
    body = json.dumps({"inputs": [ONE]}).encode()
    resp = live.post(f"/v2/models/{PIPELINE}/infer", body, content_type, **headers)
    assert resp.status_code == status, resp.text
    if status == 415:
        assert resp.json()["field"] == "Content-Type"


def test_oip_binary_with_octet_stream_is_accepted(live: Live) -> None:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "tensor",
                    "shape": [1, 18],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 72},
                }
            ]
        }
    ).encode()
    body = head + np.full(18, 0.5, dtype=np.float32).tobytes()
    resp = live.post(
        f"/v2/models/{PIPELINE}/infer",
        body,
        "application/octet-stream",
        **{"Inference-Header-Content-Length": str(len(head))},
    )
    assert resp.status_code == 200, resp.text


def test_oip_a_step_reports_its_own_version(live: Live) -> None:
    """Before: a step's metadata and answers carried the pipeline version."""
    s, url = http(), live.agent.url
    for step in ("scaler", "gbr"):
        version = live.versions[step]
        meta = s.get(f"{url}/v2/models/{step}", timeout=5).json()
        assert meta["versions"] == [version]
        assert s.get(f"{url}/v2/models/{step}/versions/{version}/ready", timeout=5).ok
        body = json.dumps({"inputs": [ONE]}).encode()
        answer = live.post(f"/v2/models/{step}/infer", body, "application/json").json()
        assert answer["model_version"] == version
    pipeline = s.get(f"{url}/v2/models/{PIPELINE}", timeout=5).json()
    assert pipeline["versions"][0] not in live.versions.values()


# --- HTTP bounds -------------------------------------------------------------------------------


def test_a_huge_header_gets_a_431(live: Live) -> None:
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: edge\r\nX-Big: " + b"a" * (40 << 10)
    reply = exchange(live.agent.port, head)
    assert reply.startswith(b"HTTP/1.1 431"), reply[:100]
    assert b"EDGEPUB_MAX_HEADER" in reply


def test_a_300_mb_header_costs_the_agent_nothing(live: Live) -> None:
    """Before: accepted, RSS +400 MB."""
    before = rss_mb(live.pid)
    sent = 0
    with socket.create_connection((HOST, live.agent.port), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: edge\r\nX-Big: ")
        chunk = b"a" * (1 << 20)
        try:
            while sent < 300:
                sock.sendall(chunk)
                sent += 1
        except OSError:
            pass  # the agent closed the connection: what we want
    assert sent < 300, "the agent read a 300 MB header"
    assert rss_mb(live.pid) - before < 16
    assert (
        live.metric("edgepub_edge_request_errors_total", protocol="http", code="header_too_large")
        >= 1
    )


def timed_close(live: Live, data: bytes) -> tuple[float, bytes]:
    with socket.create_connection((HOST, live.agent.port), timeout=30) as sock:
        started = time.monotonic()
        if data:
            sock.sendall(data)
        reply = read_until_closed(sock)
        return time.monotonic() - started, reply


@pytest.mark.parametrize(
    "data,timeout,answer",
    [
        (b"", HEADER_TIMEOUT_S, b""),
        (b"POST /infer HTTP/1.1\r\nHost: edge\r\nContent-Le", HEADER_TIMEOUT_S, b"HTTP/1.1 408"),
        (
            b"POST /infer HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n[{"tensor": [',
            BODY_TIMEOUT_S,
            b"HTTP/1.1 408",
        ),
    ],
    ids=["nothing", "half the headers", "half the body"],
)
def test_slow_clients_are_closed_within_the_timeout(
    live: Live, data: bytes, timeout: int, answer: bytes
) -> None:
    """Before: these connections stayed open forever."""
    elapsed, reply = timed_close(live, data)
    assert timeout - 0.5 <= elapsed <= timeout + 2, elapsed
    assert reply.startswith(answer), reply[:100]


def test_an_idle_keep_alive_connection_is_closed(live: Live) -> None:
    with socket.create_connection((HOST, live.agent.port), timeout=30) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: edge\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        assert time.monotonic() - started <= KEEP_ALIVE_S + 2


def test_connections_past_the_cap_are_refused_and_the_agent_recovers(live: Live) -> None:
    """Before: 21,000 idle connections took every descriptor; new requests got empty replies
    and nothing was logged."""
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS + 60):
            held.append(socket.create_connection((HOST, live.agent.port), timeout=5))
        time.sleep(0.5)  # well inside the header timeout: the admitted ones are still open
        answers = []
        for sock in held:
            try:
                answers.append(sock.recv(200, socket.MSG_DONTWAIT))
            except BlockingIOError:
                answers.append(None)  # admitted, waiting for a request
            except ConnectionResetError:
                answers.append(b"reset")
        refused = sum(1 for a in answers if a is not None and a.startswith(b"HTTP/1.1 503"))
        admitted = answers.count(None)
        assert refused >= 60 and admitted <= MAX_CONNECTIONS, (refused, admitted)
        refusal = next(a for a in answers if a and a.startswith(b"HTTP/1.1 503"))
        assert b"EDGEPUB_MAX_CONNECTIONS" in refusal
    finally:
        for sock in held:
            sock.close()
    wait_for(live.healthy, 10, "the agent to answer once the connections are gone")
    counted = live.metric(
        "edgepub_edge_request_errors_total", protocol="http", code="too_many_connections"
    )
    assert counted >= refused
    logged = live.log_events("connection_refused")
    assert 1 <= len([e for e in logged if e["code"] == "too_many_connections"]) <= 5
    assert live.metric("edgepub_edge_open_connections") <= 2
