"""The edge under large and many requests, across a real ``edgepub-edge`` process.

- while a large body (pandas-records, Arrow, OIP JSON) is decoded, run and encoded, the
  event loop goes on answering (health checks answered meanwhile, and no stall in the
  agent's own loop-lag count);
- work off the loop is bounded: past EDGEPUB_MAX_INFLIGHT a large request gets a 503 with
  Retry-After, before its body is read, while health and small requests are served;
- the inference-log hand-off is bounded in bytes: an event past it is dropped and counted,
  and its inference answered all the same;
- small requests take the quick path (no ASGI task) with their validation, metrics and log
  hand-off intact, pipelined ones answered in order.

No timing assertions: the bench (``bench/health_under_load.py``, ``bench/inference.py``)
measures speed; these count answers and read ``/metrics``.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pytest
import requests

from support.edge import EdgeAgent, http, make_model, model_version, serving
from support.servers import HOST
from support.waiting import wait_for

PIPELINE = "fraud"
JSON = "application/json; format=pandas-records"
LOG_QUEUE_BYTES = 64 << 10


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeAgent]:
    work = tmp_path_factory.mktemp("edge-load")
    model = make_model(work / "m.onnx")
    env = {
        "EDGEPUB_MAX_INFLIGHT": "1",
        "EDGEPUB_LOG_QUEUE_BYTES": "64Ki",
        "EDGEPUB_MAX_RECORDS": "1000000",
    }
    with serving(work, PIPELINE, [(model_version("m", model), model)], env) as agent:
        yield agent


def samples(agent: EdgeAgent) -> dict[str, float]:
    text = http().get(agent.url + "/metrics", timeout=60).text
    return {
        key: float(value)
        for key, value in (line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    }


def records_body(count: int, seed: int = 0) -> bytes:
    rows = np.random.default_rng(seed).normal(size=(count, 18))
    return msgspec.json.encode([{"tensor": row} for row in rows.tolist()])


def arrow_body(count: int) -> bytes:
    values = np.random.default_rng(2).normal(size=count * 18).astype(np.float32)
    table = pa.table({"tensor": pa.FixedSizeListArray.from_arrays(pa.array(values), 18)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=50_000)
    return bytes(sink.getvalue().to_pybytes())


def oip_body(count: int) -> bytes:
    values = np.random.default_rng(3).normal(size=count * 18).astype(np.float32).tolist()
    tensor = {"name": "tensor", "shape": [count, 18], "datatype": "FP32", "data": values}
    return msgspec.json.encode({"inputs": [tensor]})


OIP = "application/json"


def post(agent: EdgeAgent, body: bytes, kind: str = JSON) -> requests.Response:
    where = f"v2/models/{PIPELINE}/infer" if kind == OIP else f"pipelines/{PIPELINE}"
    return http().post(
        f"{agent.url}/{where}", data=body, headers={"Content-Type": kind}, timeout=300
    )


OFFLOADED = "edgepub_edge_offloaded_requests"
STALLS = "edgepub_edge_event_loop_stalls_total"


@pytest.mark.parametrize(
    "kind,body,count",
    [
        (JSON, lambda: records_body(160_000), 160_000),  # ~60 MB, near EDGEPUB_MAX_BODY
        ("application/vnd.apache.arrow.stream", lambda: arrow_body(600_000), 600_000),
        (OIP, lambda: oip_body(150_000), 150_000),  # ~50 MB of JSON numbers
    ],
    ids=["records", "arrow", "oip"],
)
def test_health_is_answered_while_a_large_body_is_worked_on(
    edge: EdgeAgent, kind: str, body: Any, count: int
) -> None:
    payload = body()
    stalls = samples(edge)[STALLS]
    outcome: list[Any] = []
    sender = threading.Thread(target=lambda: outcome.append(post(edge, payload, kind)))
    sender.start()
    during = 0  # answers given while the large request was being worked on
    try:
        while sender.is_alive():
            assert http().get(edge.url + "/v2/health/ready", timeout=60).status_code == 200
            if samples(edge)[OFFLOADED] >= 1 and sender.is_alive():
                during += 1
    finally:
        sender.join(timeout=300)
    (resp,) = outcome
    assert resp.status_code == 200, resp.text[:300]
    assert during >= 3, "health and /metrics waited for the large request"
    assert samples(edge)[STALLS] == stalls  # the loop was never held 0.25 s or more
    if kind == JSON:
        answer = resp.json()
        assert len(answer) == count and len(answer[-1]["in"]["tensor"]) == 18
    elif kind == OIP:
        assert resp.json()["outputs"][0]["shape"] == [count, 1]
    else:
        table = pa.ipc.open_stream(pa.py_buffer(resp.content)).read_all()
        assert table.num_rows == count


def send_head(sock: socket.socket, length: int) -> None:
    sock.sendall(
        f"POST /pipelines/{PIPELINE} HTTP/1.1\r\nHost: edge\r\nContent-Type: {JSON}\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
    )


def test_past_its_inflight_limit_the_edge_says_503_and_when_to_retry(edge: EdgeAgent) -> None:
    held = records_body(3000, seed=1)  # past INLINE_BYTES: worked on off the loop
    before = samples(edge)
    with socket.create_connection((HOST, edge.port), timeout=60) as slow:
        send_head(slow, len(held))
        slow.sendall(held[:1000])  # the one place (EDGEPUB_MAX_INFLIGHT=1) is held...
        wait_for(lambda: samples(edge)[OFFLOADED] == 1, timeout=30, what="a request in flight")
        refused = post(edge, records_body(3000, seed=2))  # ...so the next large one waits not
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert refused.headers["Connection"] == "close"  # its body was never read
        error = refused.json()
        assert error["code"] == "overloaded" and "EDGEPUB_MAX_INFLIGHT" in error["error"]
        # health, metrics and small requests are never held back by the limit
        assert http().get(edge.url + "/v2/health/ready", timeout=30).status_code == 200
        assert post(edge, records_body(2)).status_code == 200
        slow.sendall(held[1000:])
        head, _, _ = read_until_length(slow).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
    after = samples(edge)
    key = 'edgepub_edge_request_errors_total{protocol="records",code="overloaded"}'
    assert after[key] - before.get(key, 0.0) == 1
    assert after[OFFLOADED] == 0


def read_answers(sock: socket.socket, count: int = 1) -> list[bytes]:
    """``count`` responses on a keep-alive connection: headers, then Content-Length bytes.
    Bytes past one answer belong to the next (pipelined answers may share one recv)."""
    data = b""
    answers: list[bytes] = []
    while len(answers) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, "the agent closed the connection before an answer's headers"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(
            b"content-length:")).split(b":")[1])  # fmt: skip
        while len(rest) < length:
            chunk = sock.recv(1 << 20)
            assert chunk, "the agent closed the connection mid-answer"
            rest += chunk
        answers.append(head + b"\r\n\r\n" + rest[:length])
        data = rest[length:]
    return answers


def read_until_length(sock: socket.socket) -> bytes:
    """One response on a keep-alive connection."""
    return read_answers(sock)[0]


def test_the_log_hand_off_drops_and_counts_past_its_bytes(edge: EdgeAgent) -> None:
    dropped = "edgepub_edge_log_handoff_dropped"
    before = samples(edge)[dropped]
    assert post(edge, records_body(2)).status_code == 200  # a few hundred bytes: queued
    assert samples(edge)[dropped] == before
    big = records_body(400)  # its body alone is past EDGEPUB_LOG_QUEUE_BYTES
    assert len(big) > LOG_QUEUE_BYTES
    resp = post(edge, big)
    assert resp.status_code == 200 and len(resp.json()) == 400  # answered all the same
    assert samples(edge)[dropped] == before + 1
    assert "edgepub_edge_log_handoff_queued_bytes" in samples(edge)


def test_small_requests_are_answered_at_once_validated_counted_and_logged(
    edge: EdgeAgent,
) -> None:
    assert post(edge, records_body(1)).status_code == 200  # the pipeline's cost is known
    quick = "edgepub_edge_quick_requests_total"
    served = 'edgepub_edge_requests_total{protocol="records",status="200"}'
    refused = 'edgepub_edge_request_errors_total{protocol="records",code="invalid_request"}'
    latency = 'edgepub_edge_request_duration_seconds_count{protocol="records"}'
    before = samples(edge)
    session = http()
    url = f"{edge.url}/pipelines/{PIPELINE}"
    for seed in range(40):
        resp = session.post(url, data=records_body(2, seed), headers={"Content-Type": JSON})
        assert resp.status_code == 200 and len(resp.json()) == 2
    bad = session.post(url, data=json.dumps([{"tensor": [1.0] * 17}]), timeout=30)
    assert bad.status_code == 400 and bad.json()["field"] == "tensor"  # still validated
    after = samples(edge)
    assert after[quick] - before[quick] >= 41  # every one without an ASGI task
    assert after[served] - before[served] == 40
    assert after[refused] - before.get(refused, 0.0) == 1
    assert after[latency] - before[latency] == 41
    assert after["edgepub_edge_inference_records_total"] - before[
        "edgepub_edge_inference_records_total"] == 80  # fmt: skip  # handed to the log

    # two requests in one write on one connection: two answers, in order
    first, second = records_body(1, seed=7), records_body(3, seed=8)
    with socket.create_connection((HOST, edge.port), timeout=30) as sock:
        send_head(sock, len(first))
        sock.sendall(first)
        send_head(sock, len(second))
        sock.sendall(second)
        answers = read_answers(sock, 2)
    counts = [len(json.loads(a.partition(b"\r\n\r\n")[2])) for a in answers]
    assert counts == [1, 3]
    assert all(b"\r\ndate: " in a.partition(b"\r\n\r\n")[0] for a in answers)
