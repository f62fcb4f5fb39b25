"""Health checks while clients keep sending the largest bodies the agent takes.

    python bench/health_under_load.py [--quick] [--duration S]

The agent (``python -m edgepub.edge_agent``, a cached pipeline, CONFIG_CPUS=1) gets, over
and over from separate client processes, pandas-records JSON and Arrow IPC bodies just
under the 64 MiB default of EDGEPUB_MAX_BODY (EDGEPUB_MAX_RECORDS raised so that they are
served, not refused: decoded, inferred, encoded and logged in full). Meanwhile this process
asks ``GET /v2/health/ready`` every 20 ms on a keep-alive connection and records how long
each answer takes. The same is then done against a bare server (uvicorn + httptools +
uvloop, a raw ASGI app that decodes the same bodies on its event loop and answers ``{}``,
``--serve-bare``), for comparison: that is what a loop that decodes inline looks like.

A 503 (the agent's admission limit, EDGEPUB_MAX_INFLIGHT) is counted and the client tries
again after its Retry-After; any other non-200 stops the bench.

The last line is one JSON object: health_p99_ms (target <= 50), health_p50_ms,
health_max_ms, probes, the same three for the bare server (bare_health_*), big bodies
answered per kind, 503s, and the agent's peak RSS.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import free_port, make_model, seed_cache, start, stop, wait_ready

FEATURES = 18
BODY_BYTES = 60 << 20  # under EDGEPUB_MAX_BODY's 64Mi default, on the wire
PROBE_EVERY_S = 0.02
JSON_TYPE = "application/json; format=pandas-records"
ARROW_TYPE = "application/vnd.apache.arrow.stream"


# --- bodies ---------------------------------------------------------------------------------


def json_body(target: int) -> bytes:
    import msgspec

    rows = np.random.default_rng(3).normal(size=(target // 200, FEATURES)).tolist()
    while True:
        body = msgspec.json.encode([{"tensor": r} for r in rows])
        if len(body) <= target:
            return body
        rows = rows[: int(len(rows) * target / len(body) * 0.99)]


def arrow_body(target: int) -> bytes:
    import pyarrow as pa

    rows = target // (FEATURES * 4)
    values = np.random.default_rng(4).normal(size=rows * FEATURES).astype(np.float32)
    table = pa.table({"tensor": pa.FixedSizeListArray.from_arrays(pa.array(values), FEATURES)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=64_000)
    return bytes(sink.getvalue().to_pybytes())


# --- a client sending big bodies (its own process: it must not steal this one's GIL) --------


def send_forever(kind: str, port: int, path: str, until: float, out: Path) -> None:
    body = json_body(BODY_BYTES) if kind == "json" else arrow_body(BODY_BYTES)
    headers = {"Content-Type": JSON_TYPE if kind == "json" else ARROW_TYPE}
    counts = {"answered": 0, "refused": 0, "bytes": len(body)}
    out.write_text(json.dumps(counts))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    while time.time() < until:
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            continue
        if resp.status == 200:
            counts["answered"] += 1
        elif resp.status == 503:
            counts["refused"] += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            time.sleep(float(resp.getheader("Retry-After") or 1))
        else:
            sys.exit(f"{kind}: HTTP {resp.status}")
        out.write_text(json.dumps(counts))


# --- the bare server -------------------------------------------------------------------------


def serve_bare(port: int) -> None:
    """uvicorn + httptools + uvloop: decode the body on the loop, as a bare server does."""
    import msgspec
    import pyarrow as pa
    import uvicorn

    decode = msgspec.json.Decoder().decode

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if scope["method"] == "POST":
            kind = dict(scope["headers"]).get(b"content-type", b"")
            if b"arrow" in kind:
                pa.ipc.open_stream(pa.py_buffer(body)).read_all()
            else:
                decode(body)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", loop="uvloop",
                log_level="warning", access_log=False, lifespan="off",
                proxy_headers=False)  # fmt: skip


# --- measuring -------------------------------------------------------------------------------


def probe(port: int, seconds: float) -> list[float]:
    """Health answer times (ms), one ask every PROBE_EVERY_S."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    samples: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        conn.request("GET", "/v2/health/ready")
        resp = conn.getresponse()
        resp.read()
        samples.append((time.perf_counter() - started) * 1000)
        if resp.status != 200:
            sys.exit(f"health answered {resp.status}")
        time.sleep(max(0.0, PROBE_EVERY_S - (time.perf_counter() - started)))
    conn.close()
    return samples


def loop_lag(port: int) -> dict[str, float | None]:
    """The agent's own view: its largest event loop lag and its stalls (>= 0.25 s)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    lag = values.get("edgepub_edge_event_loop_lag_max_seconds")  # (an agent older than it)
    stalls = values.get("edgepub_edge_event_loop_stalls_total")
    return {
        "agent_loop_lag_max_ms": None if lag is None else round(float(lag) * 1000, 1),
        "agent_loop_stalls": None if stalls is None else float(stalls),
    }


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def under_load(
    port: int, path: str, args: argparse.Namespace, work: Path, name: str
) -> dict[str, Any]:
    until = time.time() + args.warmup + args.duration + 2
    senders = []
    for kind in args.kinds:
        out = work / f"{name}-{kind}.json"
        cmd = [sys.executable, __file__, "--send", kind, str(port), path, str(until), str(out)]
        senders.append((kind, out, subprocess.Popen(cmd, stdin=subprocess.DEVNULL)))
    try:
        while not all(out.exists() for _, out, _ in senders):  # bodies built
            time.sleep(0.1)
        time.sleep(args.warmup)
        samples = probe(port, args.duration)
    finally:
        for _, _, proc in senders:
            proc.terminate()
            proc.wait(60)
    counts = {kind: json.loads(out.read_text()) for kind, out, _ in senders}
    pct = np.percentile(samples, [50, 99]) if samples else [0.0, 0.0]
    return {
        "p50_ms": round(float(pct[0]), 2),
        "p99_ms": round(float(pct[1]), 2),
        "max_ms": round(max(samples, default=0.0), 2),
        "probes": len(samples),
        "answered": {k: c["answered"] for k, c in counts.items()},
        "refused": sum(c["refused"] for c in counts.values()),
    }


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model = work / "gbr.onnx"
    make_model(model, 20)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEPUB_", "OCI_"))}
    env.pop("EDGE_BUNDLE", None)
    persist = work / "persist"
    pipeline_url = seed_cache(persist, model, free_port())
    port = free_port()
    agent_env = dict(env, PIPELINE_URL=pipeline_url, CONFIG_CPUS="1", EDGEPUB_PORT=str(port),
                     EDGEPUB_HOST="127.0.0.1", EDGEPUB_PERSIST_DIR=str(persist),
                     EDGEPUB_LOG_FORMAT="json", EDGEPUB_MAX_RECORDS="2000000")  # fmt: skip
    agent = start([sys.executable, "-m", "edgepub.edge_agent"], agent_env, work / "agent.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", agent)
        edge = under_load(port, "/pipelines/bench", args, work, "agent")
        edge["peak_rss_mb"] = round(peak_rss_mb(agent.pid), 1)
        edge.update(loop_lag(port))
    finally:
        edge_exit = stop(agent)
    bare_port = free_port()
    bare = start([sys.executable, __file__, "--serve-bare", str(bare_port)], env, work / "bare.log")
    try:
        wait_ready(f"http://127.0.0.1:{bare_port}/v2/health/ready", bare)
        base = under_load(bare_port, "/", args, work, "bare")
    finally:
        stop(bare)
    return {
        "health_p99_ms": edge["p99_ms"],
        "health_p50_ms": edge["p50_ms"],
        "health_max_ms": edge["max_ms"],
        "probes": edge["probes"],
        "bare_health_p99_ms": base["p99_ms"],
        "bare_health_p50_ms": base["p50_ms"],
        "bare_health_max_ms": base["max_ms"],
        "big_answered": edge["answered"],
        "big_refused_503": edge["refused"],
        "bare_big_answered": base["answered"],
        "agent_peak_rss_mb": edge["peak_rss_mb"],
        "agent_loop_lag_max_ms": edge["agent_loop_lag_max_ms"],
        "agent_loop_stalls": edge["agent_loop_stalls"],
        "agent_exit": edge_exit,
        "seconds": args.duration,
        "target_ms": 50,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (under a minute)")
    parser.add_argument("--duration", type=float, help="seconds of probing per server")
    parser.add_argument("--kinds", default="json,arrow", help="bodies sent, one client each")
    parser.add_argument("--send", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send:
        kind, port, path, until, out = args.send
        send_forever(kind, int(port), path, float(until), Path(out))
        return
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return
    args.kinds = args.kinds.split(",")
    args.duration = args.duration or (12.0 if args.quick else 45.0)
    args.warmup = 2.0 if args.quick else 5.0
    with tempfile.TemporaryDirectory(prefix="edgepub-health-") as tmp:
        results = measure(args, Path(tmp))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
