"""Replay speed: a backlog already in the edge's local log until it is all in the pipeline log
at Ops, against a raw nats-py JetStream publish of the same pages, same run.

    .venv/bin/python bench/replay.py [--quick] [--rows N] [--page-size 500]

Set-up (not timed): the embedded stack (``edgepub up``: nats-server, token services,
publish service, log collector) on free ports in a temporary directory, a small pipeline
published with the SDK and one edge added (``publish.add_edge``). Before the agent starts,
its local log (``<persist>/logs/inference.db``, what ``Agent.open_log`` opens) is filled
with 1 M rows (quick: 100 k) through ``SqliteLog.write``, 500 at a time: one event per
request as the agent logs them (18 float32 features in, 1 out, the publish's pipeline name,
version and model sha). The log's pages are read back with ``SqliteLog.read_page`` (the
shipper's own cut) for the raw baseline; the watermark is untouched.

- raw (``raw_rows_per_s``): the same page bodies to a plain stream on a nats-server of its
  own (same binary, JetStream on file storage, no auth, free loopback port), once with each
  ``js.publish`` awaited, then with ``publish_async`` windows of 32 and 64 in flight;
  the fastest counts. It runs before the agent starts and its server is stopped after.
- replay (``replay_rows_per_s``): the agent (``python -m edgepub.edge_agent`` with the Docker
  Run variables, ``PLATEAU_PAGE_SIZE``, a large ``LOCAL_INFERENCE_STORAGE``) from spawn
  until the edge's watermark message at Ops (``edgepub.wm.<edge>`` in EDGEPUB_LOGS, read as
  the SDK user with ``get_last_msg`` every 20 ms) says ``last_seq`` = the local log's last
  seq. Timed from spawn and from the agent's ``ops_connected`` log event (its timestamp);
  the rate is from ``ops_connected`` (what the shipper and collector do, not Python start).
- ``reconnect_to_first_page_s``: the agent connected and idle, the stack's nats-server
  (``nats-server -c <home>/nats.conf``) is SIGTERMed and the supervisor restarts it
  (``term``), then in a second round SIGSTOPped for 3 s and SIGCONTed (``stop``);
  meanwhile inferences go to the agent over HTTP every 50 ms. Measured from the server
  answering again (a fresh SDK-user connect succeeds, polled every 10 ms; for ``stop``,
  SIGCONT) until the watermark at Ops moves. The headline is the ``term`` round.

Progress goes to stderr; the last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import deque
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import numpy as np
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig

from edgepub import Client
from edgepub.demo import start_stack
from edgepub.edge_agent.inference_log import InferenceEvent, ModelUsed
from edgepub.edge_agent.local_log import SqliteLog
from edgepub.edge_agent.shipper import HEADROOM
from edgepub.samples import N_FEATURES, house_price_model
from edgepub.services.stack.binaries import find_nats_server
from edgepub.services.stack.config import MAX_PAYLOAD
from edgepub.shared import subjects
from edgepub.shared.artifact import parse_reference
from edgepub.shared.stack_file import StackInfo, load_stack_info

WRITE_ROWS = 500  # rows per SqliteLog.write while pre-filling
POLL_S = 0.02
RAW_WINDOWS = (32, 64)
WAIT_S = 10.0  # every raw ack is awaited at most this long (nats.py#985)
MOVE_TIMEOUT_S = 60.0
EDGE = "bench-replay-edge"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- set-up ----------------------------------------------------------------------------------


class Published:
    def __init__(self, client: Client, home: Path) -> None:
        model = client.upload_model(
            "bench-house", house_price_model(home / "m.onnx", n_estimators=3)
        )
        self.pipeline = f"bench-replay-{uuid.uuid4().hex[:6]}"
        publish = client.build_pipeline(self.pipeline).add_model_step(model).publish(progress=False)
        assert publish.status == "Published", publish.status
        self.variables = publish.add_edge(EDGE).docker_run_variables
        self.variables.setdefault("PIPELINE_URL", publish.pipeline_url or "")
        ref = parse_reference(self.variables["PIPELINE_URL"])
        self.version = ref.tag or publish.pipeline_version_name
        self.input = model.inputs[0].name
        self.output = model.outputs[0].name if model.outputs else "variable"
        self.models = (ModelUsed(model.name, model.version, model.sha),)


async def prefill(
    path: Path, rows: int, page_rows: int, pub: Published
) -> tuple[int, list[bytes], float]:
    """``rows`` rows into the log at ``path``; its last seq, its pages' bodies, write time."""
    log = await SqliteLog.open(path, bound_bytes=1 << 40)
    rng = np.random.default_rng(7)
    written = 0
    started = time.perf_counter()
    while written < rows:
        n = min(WRITE_ROWS, rows - written)
        x = (rng.random((n, N_FEATURES)) * 100).astype(np.float32)
        y = (rng.random((n, 1)) * 1e6).astype(np.float32)
        now = time.time_ns() // 1_000_000
        events = [
            InferenceEvent(
                time=now,
                pipeline=pub.pipeline,
                pipeline_version=pub.version,
                records=1,
                inputs={pub.input: x[i : i + 1]},
                outputs={pub.output: y[i : i + 1]},
                elapsed_ns=[int(40_000 + i)],
                model_versions=pub.models,
                partition=EDGE,
            )
            for i in range(n)
        ]
        await log.write(events)
        written += n
        if written % 200_000 == 0:
            say(f"  pre-filled {written}/{rows} rows")
    took = time.perf_counter() - started
    assert log.write_failures == 0 and log.rows_written == rows, log.view()
    last_seq = log.last_seq
    bodies: list[bytes] = []
    after = log.watermark
    while (page := await log.read_page(after, page_rows, MAX_PAYLOAD - HEADROOM)) is not None:
        bodies.append(page.body)
        after = page.last_seq
    assert after == last_seq, (after, last_seq)
    await log.close()
    return last_seq, bodies, took


# --- the raw baseline ------------------------------------------------------------------------


async def raw_publish(url: str, bodies: list[bytes]) -> dict[str, float]:
    """Seconds to publish ``bodies``: awaited one at a time, and in publish_async windows."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(f"{type(exc).__name__}: {exc}")

    nc = await nats.connect(url, error_cb=on_error)
    js = nc.jetstream(timeout=WAIT_S, publish_async_max_pending=max(RAW_WINDOWS) * 2)
    await js.add_stream(StreamConfig(name="RAW", subjects=["raw.>"]))
    out: dict[str, float] = {}
    try:
        start = time.perf_counter()
        for body in bodies:
            await js.publish("raw.page", body)
        out["awaited"] = time.perf_counter() - start
        for window in RAW_WINDOWS:
            await js.purge_stream("RAW")
            pending: deque[asyncio.Future[Any]] = deque()
            start = time.perf_counter()
            for body in bodies:
                if len(pending) >= window:
                    await asyncio.wait_for(pending.popleft(), WAIT_S)
                pending.append(await js.publish_async("raw.page", body))
            for fut in pending:
                await asyncio.wait_for(fut, WAIT_S)
            out[f"async{window}"] = time.perf_counter() - start
        info = await js.stream_info("RAW")
        assert info.state.messages == len(bodies), info.state
    finally:
        await nc.close()
    if errors:
        say(f"  raw connection errors: {errors[:3]}")
    return out


def raw_baseline(bodies: list[bytes], work: Path) -> dict[str, float]:
    port = free_port()
    store = work / "raw-nats"
    server = subprocess.Popen(
        [find_nats_server(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"nats://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                asyncio.run(_ping(url))
                break
            except (OSError, nats.errors.Error):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        return asyncio.run(raw_publish(url, bodies))
    finally:
        server.terminate()
        server.wait(10)


async def _ping(url: str) -> None:
    async def quiet(exc: Exception) -> None:
        pass

    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=1, error_cb=quiet)
    await nc.close()


# --- the agent -------------------------------------------------------------------------------


def agent_env(
    pub: Published, info: StackInfo, persist: Path, port: int, page_rows: int
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEPUB_", "OCI_"))}
    env.pop("EDGE_BUNDLE", None)
    env.update(
        PIPELINE_URL=pub.variables["PIPELINE_URL"],
        EDGE_BUNDLE=pub.variables["EDGE_BUNDLE"],
        OCI_USERNAME=info.registry_username or "",
        OCI_PASSWORD=info.registry_password or "",
        CONFIG_CPUS="1",
        EDGEPUB_PERSIST_DIR=str(persist),
        EDGEPUB_HOST="127.0.0.1",
        EDGEPUB_PORT=str(port),
        LOCAL_INFERENCE_STORAGE="8Gi",
        PLATEAU_PAGE_SIZE=str(page_rows),
        EDGEPUB_LOG_FORMAT="json",
    )
    return env


def log_event_time(path: Path, event: str) -> float | None:
    """The wall-clock time (epoch s) of the agent's first ``event`` log line, if any."""
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if item.get("event") == event and "timestamp" in item:
                    return datetime.fromisoformat(item["timestamp"]).timestamp()
    return None


class Watermark:
    """The edge's watermark at Ops, read as the SDK user."""

    def __init__(self, info: StackInfo) -> None:
        self.info = info
        self.nc: NATS | None = None

    async def __aenter__(self) -> Watermark:
        user = self.info.sdk_user or ""
        self.nc = await nats.connect(
            self.info.nats_url,
            user=user,
            password=self.info.sdk_password or "",
            inbox_prefix=subjects.inbox_prefix(user),
            reconnect_time_wait=0.05,
            max_reconnect_attempts=-1,
        )
        self.js = self.nc.jetstream(timeout=1.0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.nc is not None:
            await self.nc.close()

    async def last_seq(self) -> int:
        try:
            msg = await self.js.get_last_msg(subjects.LOGS_STREAM, subjects.watermark(EDGE))
        except (nats.js.errors.NotFoundError, TimeoutError, nats.errors.Error):
            return 0
        return int(json.loads(msg.data or b"{}").get("last_seq", 0))


async def wait_all(info: StackInfo, target: int, proc: subprocess.Popen[bytes]) -> float:
    """Until Ops's watermark for the edge is ``target``; the wall-clock time then."""
    async with Watermark(info) as wm:
        next_say = time.monotonic() + 2
        while (seq := await wm.last_seq()) < target:
            if proc.poll() is not None:
                raise SystemExit(f"the agent exited with {proc.returncode}")
            if time.monotonic() >= next_say:
                say(f"  watermark at Ops {seq}/{target}")
                next_say += 2
            await asyncio.sleep(POLL_S)
        return time.time()


class EdgeWatch(threading.Thread):
    """Polls the agent's ``GET /status`` every 50 ms: when its own log's watermark (what the
    pages stream acked) reached ``target``, and the largest gap to the watermark at Ops."""

    def __init__(self, base: str, target: int, on_acked: Any = None) -> None:
        super().__init__(daemon=True)
        self.base, self.target, self.on_acked = base, target, on_acked
        self.stop = threading.Event()
        self.acked_all_at: float | None = None
        self.samples: list[tuple[float, int]] = []

    def run(self) -> None:
        while not self.stop.is_set() and self.acked_all_at is None:
            try:
                with _OPENER.open(f"{self.base}/status", timeout=1) as resp:
                    log = json.loads(resp.read()).get("log") or {}
                wm = int(log.get("watermark") or 0)
                self.samples.append((time.time(), wm))
                if wm >= self.target:
                    self.acked_all_at = time.time()
                    if self.on_acked is not None:
                        self.on_acked()
            except (OSError, ValueError):
                pass
            self.stop.wait(0.05)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the agent exited with {proc.returncode}")
        with contextlib.suppress(OSError), _OPENER.open(url, timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.05)
    raise SystemExit(f"{url} not ready after {timeout}s")


# --- reconnect -------------------------------------------------------------------------------


def stack_nats_pid(home: Path) -> int:
    conf = str(home / "nats.conf")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"nats-server") and conf.encode() in argv:
                return int(entry.name)
    raise SystemExit(f"no nats-server -c {conf} running")


def stack_child_pid(home: Path, module: str) -> int:
    """The pid of the stack's child running ``python -m <module>`` (this run's stack only:
    its parent is the ``edgepub up --data-dir <home>`` supervisor)."""
    procs: dict[int, tuple[int, list[bytes]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                procs[int(entry.name)] = (ppid, argv)
    ups = {pid for pid, (_, argv) in procs.items()
           if b"edgepub.services.stack" in argv and str(home).encode() in argv}  # fmt: skip
    for pid, (ppid, argv) in procs.items():
        if ppid in ups and module.encode() in argv:
            return pid
    raise SystemExit(f"no {module} under the stack in {home}")


class Sender(threading.Thread):
    """One inference every ``every_s`` to the agent while it runs; counts answers."""

    def __init__(self, url: str, input_name: str, every_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.url, self.every_s = url, every_s
        self.body = json.dumps([{input_name: [0.5] * N_FEATURES}]).encode()
        self.stop = threading.Event()
        self.ok = self.failed = 0

    def run(self) -> None:
        headers = {"Content-Type": "application/json; format=pandas-records"}
        while not self.stop.is_set():
            request = urllib.request.Request(self.url, data=self.body, headers=headers)
            try:
                with _OPENER.open(request, timeout=2) as resp:
                    resp.read()
                    self.ok += 1
            except OSError:
                self.failed += 1
            self.stop.wait(self.every_s)


def server_answers(url: str) -> float:
    """Poll the server's client port until it sends its INFO line again (every 5 ms); the
    wall-clock time then."""
    host, _, port = url.removeprefix("nats://").rpartition(":")
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=0.2) as sock:
                if sock.recv(5) == b"INFO ":
                    return time.time()
        except OSError:
            pass
        time.sleep(0.005)


async def moved_after(info: StackInfo, before: int) -> tuple[float, int]:
    """Until the watermark at Ops passes ``before``: the wall-clock time and the new value
    (polled every 10 ms; the first reads may wait for this client's reconnect)."""
    async with Watermark(info) as wm:
        deadline = time.monotonic() + MOVE_TIMEOUT_S
        while (seq := await wm.last_seq()) <= before:
            if time.monotonic() > deadline:
                raise SystemExit(f"the watermark did not move past {before} in time")
            await asyncio.sleep(0.01)
        return time.time(), seq


def edge_last_seq(base: str) -> int:
    with _OPENER.open(f"{base}/status", timeout=2) as resp:
        return int(json.loads(resp.read())["log"]["last_seq"])


def reconnect_round(mode: str, home: Path, info: StackInfo, base: str) -> dict[str, float]:
    """One outage of the stack's nats-server while inferences keep coming: from the server
    answering again until Ops holds a row the edge logged after the server went away."""
    pid = stack_nats_pid(home)
    stopped = time.time()
    if mode == "term":
        os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(OSError):
            while True:  # until the old process is gone
                os.kill(pid, 0)
                time.sleep(0.005)
        gone = time.time()
        logged = edge_last_seq(base)  # every seq above was logged with the server gone
        up = server_answers(info.nats_url)
    else:
        os.kill(pid, signal.SIGSTOP)
        gone = time.time()
        logged = edge_last_seq(base)
        time.sleep(3.0)
        os.kill(pid, signal.SIGCONT)
        up = time.time()
    page_at, seq = asyncio.run(moved_after(info, logged))
    result = {
        "stop_to_up_s": round(up - stopped, 3),
        "to_first_page_s": round(page_at - up, 3),
        "stop_to_first_page_s": round(page_at - stopped, 3),
        "first_move_rows": seq - logged,
    }
    if mode == "term":
        result["exit_s"] = round(gone - stopped, 3)
    say(f"  reconnect ({mode}): {result}")
    return result


# --- the run ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k rows instead of 1M")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument(
        "--collector-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an EDGEPUB_COLLECTOR_* setting for the stack's collector",
    )
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="diagnosis: freeze the collector (SIGSTOP) until the edge shipped every page, "
        "then time each side alone (the replay figures are then not end to end)",
    )
    args = parser.parse_args()
    for item in args.collector_env:
        name, _, value = item.partition("=")
        if not name.startswith("EDGEPUB_COLLECTOR_"):
            parser.error(f"--collector-env {item}: expected EDGEPUB_COLLECTOR_<NAME>=<value>")
        os.environ[name] = value  # edgepub up passes its environment to its services
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    page_rows = args.page_size
    started = time.perf_counter()
    result: dict[str, Any] = {"rows": rows, "page_size": page_rows}
    if args.collector_env:
        result["collector_env"] = args.collector_env
    if args.isolate:
        result["isolate"] = True
    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgepub-bench-")))
        say(f"starting the embedded stack in {home}")
        start_stack(home, stack)
        info = load_stack_info(home)
        client = stack.enter_context(Client(data_dir=home))
        pub = Published(client, home)
        persist = home / "edge" / "persist"
        db = persist / "logs" / "inference.db"
        db.parent.mkdir(parents=True)
        say(f"pre-filling {db} with {rows} rows")
        last_seq, bodies, fill_s = asyncio.run(prefill(db, rows, page_rows, pub))
        page_bytes = sum(map(len, bodies)) / len(bodies)
        result.update(
            pages=len(bodies),
            page_bytes=round(page_bytes),
            row_bytes=round(page_bytes / page_rows),
            prefill_rows_per_s=round(rows / fill_s),
            log_file_mb=round(sum(p.stat().st_size for p in db.parent.iterdir()) / 2**20, 1),
        )
        say(f"  {len(bodies)} pages of ~{page_bytes / 1024:.0f} KiB, last seq {last_seq}")

        say("raw baseline: the same pages to a plain nats-server")
        raw = raw_baseline(bodies, home)
        del bodies
        raw_s = min(raw.values())
        for name, seconds in raw.items():
            result[f"raw_{name}_rows_per_s"] = round(rows / seconds)
        result["raw_rows_per_s"] = round(rows / raw_s)
        say(f"  raw: { {k: round(rows / v) for k, v in raw.items()} } rows/s")

        port = free_port()
        log_path = home / "edge-agent.log"
        env = agent_env(pub, info, persist, port, page_rows)
        say("replay: starting the agent")
        spawned = time.time()
        with log_path.open("ab") as out:
            agent = subprocess.Popen(
                [sys.executable, "-m", "edgepub.edge_agent"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        stack.callback(_stop, agent)
        base = f"http://127.0.0.1:{port}"
        resumed: list[float] = []
        on_acked = None
        if args.isolate:  # the collector frozen until the edge has shipped everything
            collector = stack_child_pid(home, "edgepub.services.log_collector")
            os.kill(collector, signal.SIGSTOP)
            stack.callback(os.kill, collector, signal.SIGCONT)

            def on_acked() -> None:
                os.kill(collector, signal.SIGCONT)
                resumed.append(time.time())

        watch = EdgeWatch(base, last_seq, on_acked)
        watch.start()
        done = asyncio.run(wait_all(info, last_seq, agent))
        watch.stop.set()
        watch.join(5)
        paused = _events(log_path, "shipping_paused")
        connected = log_event_time(log_path, "ops_connected")
        assert connected is not None, "the agent never logged ops_connected"
        replay_s = done - connected
        result.update(
            replay_rows_per_s=round(rows / replay_s),
            replay_s=round(replay_s, 3),
            replay_from_spawn_s=round(done - spawned, 3),
            replay_from_spawn_rows_per_s=round(rows / (done - spawned)),
            spawn_to_ops_connected_s=round(connected - spawned, 3),
            replay_pages_per_s=round(result["pages"] / replay_s, 1),
            shipping_paused_during_replay=len(paused),
            shipping_pause_errors=sorted({str(e.get("error"))[:80] for e in paused}),
        )
        if watch.acked_all_at is not None:  # the edge's side done: the pages stream holds all
            edge_s = watch.acked_all_at - connected
            result.update(
                edge_acked_all_s=round(edge_s, 3),
                edge_ship_rows_per_s=round(rows / edge_s),
                collector_tail_s=round(done - watch.acked_all_at, 3),
            )
        if resumed:
            result["isolated"] = {
                "edge_ship_rows_per_s": result["edge_ship_rows_per_s"],
                "collector_drain_s": round(done - resumed[0], 3),
                "collector_drain_rows_per_s": round(rows / (done - resumed[0])),
                "collector_drain_pages_per_s": round(result["pages"] / (done - resumed[0]), 1),
            }
        result["ratio"] = round(result["replay_rows_per_s"] / result["raw_rows_per_s"], 3)
        say(f"  replay: {rows} rows in {replay_s:.2f}s from ops_connected "
            f"({done - spawned:.2f}s from spawn)")  # fmt: skip

        wait_ready(f"{base}/v2/health/ready", agent)
        sender = Sender(f"{base}/pipelines/{pub.pipeline}", pub.input)
        sender.start()
        time.sleep(1.0)  # the link idle but for the sender's rows
        rounds = {}
        try:
            for mode in ("term", "stop"):
                how = "SIGTERM, restarted" if mode == "term" else "SIGSTOP 3 s"
                say(f"reconnect: nats-server {how}")
                rounds[mode] = reconnect_round(mode, home, info, base)
                time.sleep(1.0)
        finally:
            sender.stop.set()
            sender.join(5)
        result["reconnect_to_first_page_s"] = rounds["term"]["to_first_page_s"]
        result["reconnect_mode"] = "SIGTERM, the supervisor restarts it"
        result["reconnect"] = rounds
        result["reconnect_inferences"] = {"ok": sender.ok, "failed": sender.failed}
        status = json.loads(_OPENER.open(f"{base}/status", timeout=5).read())
        result["agent_shipping"] = status.get("shipping")
    result["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))
    return 0


def _events(path: Path, event: str) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if item.get("event") == event:
                    out.append(item)
    return out


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    sys.exit(main())
