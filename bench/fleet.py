"""Fleet simulator: many edges logging at once into a three-node JetStream cluster.

    .venv/bin/python bench/fleet.py [--quick] [--edges N] [--rate ROWS_PER_S] [--seconds S]

Set-up (not timed): three nats-server nodes on loopback configured as ``edgepub up
--cluster 3`` configures them, the registry, the four services (publish with
``EDGEPUB_REPLICAS=3``, registry-push, two token-service replicas, and two log
collectors sharing the consumer), a pipeline published with the SDK. Then N edges (quick:
100, full: 1,000) each added with ``add_edge`` and joined for real: its own nkey, its
one-time join token through the auth callout, a WebSocket connection to one of the nodes.

Each simulated edge runs the edge agent's own ``Shipper`` over an in-memory page source
that produces rows at ``--rate`` per edge (real row lines, each stamped with the time it
was logged), so pages, headers, windows and acks are the agent's; the HTTP and SQLite
parts are not simulated. After ``--seconds`` of load the producers stop and the bench
waits until Ops holds everything, then reads the whole pipeline log back.

The last line is one JSON object: ``edges``, ``rows_sent``, ``rows_at_ops``,
``duplicates``, ``order_violations``, ``rows_per_s`` (rows at Ops over the load window plus
the drain), ``offered_rows_per_s``, ``p99_lag_s`` / ``p50_lag_s`` (a row logged -> its page
stored in the pipeline log, by the server's timestamp), ``server_rss_mb`` (the three nodes,
summed), ``join_s``, ``atomic_batches`` / ``pages_per_batch`` (the collectors' appends), and
``cpu_cores`` per process kind during the load and ``cpu_cores_drain`` after it (what
saturates).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy

from edgepub import Client
from edgepub.edge_agent.pages import Page
from edgepub.edge_agent.shipper import Shipper, ShipSettings
from edgepub.samples import house_price_model
from edgepub.shared import log_lines, subjects

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.edge_bus import admin
from support.log_pages import join
from support.servers import NatsCluster, RegistryServer
from support.services import OpsServices

OPS = ("publish", "registry_push", "token", "log_collector")
PIPELINE = "fleet"
JOINS_AT_ONCE = 20


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Rows:
    """One edge's log in memory: rows appear at ``rate`` per second while producing."""

    def __init__(self, edge: str, rate: float, version: str) -> None:
        self.edge = edge
        self.rate = rate
        self.produced = 0
        self.watermark = 0
        self._head = (
            b',"pipeline":"%s","pipeline_version":"%s","in":{"tensor":[1.5,2.25,3.0,4.75,'
            b"5.5,6.25,7.0,8.75,9.5,10.25,11.0,12.75,13.5,14.25,15.0,16.75,17.5,18.25]},"
            b'"out":{"variable":[123456.5]},"anomaly":{"count":0},"elapsed_ns":[41000]}'
            % (PIPELINE.encode(), version.encode())
        )
        self._times: list[int] = []

    async def produce(self, stop: asyncio.Event, tick_s: float = 0.05) -> None:
        started = time.monotonic()
        while not stop.is_set():
            due = int((time.monotonic() - started) * self.rate)
            now = time.time_ns() // 1_000_000
            self._times.extend([now] * (due - self.produced))
            self.produced = due
            await asyncio.sleep(tick_s)

    async def read_page(self, after_seq: int, max_rows: int, max_bytes: int) -> Page | None:
        last = min(self.produced, after_seq + max_rows)
        if last <= after_seq:
            return None
        times = self._times
        lines = [
            b'{"seq":%d,"time":%d%s' % (seq, times[seq - 1], self._head)
            for seq in range(after_seq + 1, last + 1)
        ]
        body = log_lines.join_lines(lines)
        while len(body) > max_bytes and len(lines) > 1:
            lines = lines[: len(lines) // 2]
            body = log_lines.join_lines(lines)
            last = after_seq + len(lines)
        return Page(
            first_seq=after_seq + 1,
            last_seq=last,
            body=body,
            line_count=len(lines),
            rows=len(lines),
            gaps=0,
            pipeline=PIPELINE,
        )

    async def ack(self, up_to_seq: int) -> None:
        self.watermark = max(self.watermark, up_to_seq)


class _Head(msgspec.Struct):
    seq: int
    time: int


_head = msgspec.json.Decoder(_Head)


async def read_back(nc: NATS) -> dict[str, Any]:
    """Every page in the pipeline log: rows per edge, duplicates, order, lag per row."""
    js = nc.jetstream(timeout=30)
    info = await js.stream_info(subjects.LOGS_STREAM)
    seqs: dict[str, list[int]] = defaultdict(list)
    lags: list[tuple[float, int]] = []
    sub = await js.subscribe(
        f"{subjects.LOGS_ROOT}.>",
        stream=subjects.LOGS_STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    pages = 0
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=5.0)
            except TimeoutError:
                break
            pages += 1
            edge = (msg.headers or {})[subjects.HEADER_PARTITION]
            lines = log_lines.split_lines(msg.data)
            stored = msg.metadata.timestamp.timestamp() if msg.metadata.timestamp else 0.0
            for line in lines:
                head = _head.decode(line[: line.index(b',"pipeline"')] + b"}")
                seqs[edge].append(head.seq)
            first = _head.decode(lines[0][: lines[0].index(b',"pipeline"')] + b"}")
            lags.append((stored - first.time / 1000, len(lines)))
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    duplicates = sum(len(s) - len(set(s)) for s in seqs.values())
    disorder = sum(1 for s in seqs.values() for a, b in itertools.pairwise(s) if b <= a)
    return {
        "rows": {e: len(s) for e, s in seqs.items()},
        "duplicates": duplicates,
        "order_violations": disorder,
        "lags": lags,
        "pages": pages,
        "log_messages": info.state.messages,
        # each atomic batch is its pages and one watermark commit; watermarks roll up (gone)
        # but keep their sequence numbers: the stream's last seq counts every one
        "batches": info.state.last_seq - pages,
    }


def percentile(weighted: list[tuple[float, int]], q: float) -> float:
    if not weighted:
        return 0.0
    ordered = sorted(weighted)
    total = sum(n for _, n in ordered)
    seen = 0
    for value, n in ordered:
        seen += n
        if seen >= q * total:
            return value
    return ordered[-1][0]


def rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def processes(cluster: NatsCluster, ops: OpsServices) -> dict[str, list[int | None]]:
    kinds: dict[str, list[int | None]] = {"nats-server": [n.child.pid for n in cluster.nodes]}
    for name, proc in ops.procs.items():
        kinds.setdefault(name.split("-")[0], []).append(proc.pid)
    kinds["simulator"] = [os.getpid()]
    return kinds


async def simulate(
    cluster: NatsCluster, ops: OpsServices, publish_id: int, version: str, args: Any
) -> dict[str, Any]:
    names = [f"store-{i:04d}" for i in range(args.edges)]
    gate = asyncio.Semaphore(JOINS_AT_ONCE)

    async def joined(name: str) -> NATS:
        async with gate:
            return await join(cluster, publish_id, name)

    started = time.monotonic()
    conns = await asyncio.gather(*(joined(n) for n in names))
    join_s = time.monotonic() - started
    say(f"  {len(conns)} edges joined in {join_s:.1f}s")
    logs = [Rows(n, args.rate, version) for n in names]
    settings = ShipSettings(page_rows=args.page_rows, window=4, ack_timeout_s=5.0)
    shippers = [Shipper(log, log.edge, lambda page: (PIPELINE, 1), settings) for log in logs]
    stop = asyncio.Event()
    kinds = processes(cluster, ops)
    before = {k: sum(map(cpu_s, pids)) for k, pids in kinds.items()}
    load_started = time.monotonic()
    producing = [asyncio.create_task(log.produce(stop)) for log in logs]
    shipping = [asyncio.create_task(s.run(nc)) for s, nc in zip(shippers, conns, strict=True)]
    await asyncio.sleep(args.seconds)
    stop.set()
    load_s = time.monotonic() - load_started
    after = {k: sum(map(cpu_s, pids)) for k, pids in kinds.items()}
    await asyncio.gather(*producing)
    sent = sum(log.produced for log in logs)
    say(f"  {sent} rows logged in {load_s:.1f}s; waiting for Ops to hold them")
    deadline = time.monotonic() + args.drain_s
    while time.monotonic() < deadline:
        if all(log.watermark >= log.produced for log in logs):
            break
        await asyncio.sleep(0.2)
    shipped_s = time.monotonic() - load_started
    for task in shipping:
        task.cancel()
    await asyncio.gather(*shipping, return_exceptions=True)
    reader = await admin(cluster)  # the SDK user: readers of the pipeline log
    try:
        await wait_collected(reader, {log.edge: log.produced for log in logs}, args.drain_s)
        collected_s = time.monotonic() - load_started
        drained = {k: sum(map(cpu_s, pids)) for k, pids in kinds.items()}
        held = await read_back(reader)
    finally:
        await reader.close()
    for nc in conns:
        await nc.close()
    at_ops = sum(held["rows"].values())
    return {
        "edges": args.edges,
        "rate_per_edge": args.rate,
        "rows_sent": sent,
        "rows_at_ops": at_ops,
        "lost": sum(max(0, log.produced - held["rows"].get(log.edge, 0)) for log in logs),
        "duplicates": held["duplicates"],
        "order_violations": held["order_violations"],
        "rows_per_s": round(at_ops / collected_s),
        "offered_rows_per_s": round(sent / load_s),
        "edge_shipped_s": round(shipped_s, 2),
        "collected_s": round(collected_s, 2),
        "p50_lag_s": round(percentile(held["lags"], 0.5), 3),
        "p99_lag_s": round(percentile(held["lags"], 0.99), 3),
        "pages": held["pages"],
        "atomic_batches": held["batches"],
        "pages_per_batch": round(held["pages"] / max(1, held["batches"]), 2),
        "join_s": round(join_s, 2),
        "server_rss_mb": round(sum(rss_mb(n.child.pid) for n in cluster.nodes), 1),
        "cpu_cores": {k: round((after[k] - before[k]) / load_s, 2) for k in kinds},
        # after the load, while the collectors drain the pages stream into the log
        "cpu_cores_drain": {
            k: round((drained[k] - after[k]) / max(0.1, collected_s - load_s), 2) for k in kinds
        },
    }


async def wait_collected(nc: NATS, expected: dict[str, int], within_s: float) -> None:
    """Until every edge's watermark at Ops reaches what it produced."""
    js = nc.jetstream(timeout=10)
    deadline = time.monotonic() + within_s
    pending = dict(expected)
    while pending and time.monotonic() < deadline:
        for edge, last in list(pending.items()):
            try:
                msg = await js.get_last_msg(
                    subjects.LOGS_STREAM, subjects.watermark(edge), direct=True
                )
            except Exception:
                continue
            if json.loads(msg.data or b"{}").get("last_seq", 0) >= last:
                del pending[edge]
        if pending:
            await asyncio.sleep(0.5)


def _servers(work: Path, stack: ExitStack) -> Iterator[Any]:
    cluster = NatsCluster(work / "cluster", 3).start()
    stack.callback(lambda: [n.kill() for n in cluster.nodes])
    registry = RegistryServer(work / "registry").start()
    stack.callback(registry.kill)
    ops = OpsServices(cluster, registry, work / "logs")
    stack.callback(lambda: [p.kill() for p in ops.procs.values()])
    yield cluster, registry, ops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 edges, 15 s of load")
    parser.add_argument("--edges", type=int)
    parser.add_argument("--rate", type=float, help="rows per second per edge")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--page-rows", type=int, default=500)
    parser.add_argument("--drain-s", type=float, default=120.0)
    args = parser.parse_args()
    args.edges = args.edges or (100 if args.quick else 1000)
    args.rate = args.rate or (100_000 / args.edges)  # the 100 k rows/s in all
    args.seconds = args.seconds or (15.0 if args.quick else 60.0)
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="edgepub-fleet-") as tmp:
        work = Path(tmp)
        cluster, _registry, ops = next(_servers(work, stack))
        say("starting the services on a three-node cluster")
        ops.start_available(OPS, env={"EDGEPUB_REPLICAS": "3"}, timeout=120.0)
        ops.start("log_collector", replica=2, env={"EDGEPUB_REPLICAS": "3"})
        ops.start("token", replica=2)
        s = cluster.settings()
        with Client(s.url, s.user, s.password) as client:
            model = client.upload_model("house", house_price_model(work / "m.onnx"))
            publish = client.build_pipeline(PIPELINE).add_model_step(model).publish(progress=False)
            assert publish.status == "Published", publish.status
            version = publish.pipeline_version_name or "v"
        say(f"simulating {args.edges} edges at {args.rate:g} rows/s each for {args.seconds:g}s")
        result = asyncio.run(simulate(cluster, ops, publish.id, version, args))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
