"""Edge joins and revocation through the NATS auth callout, against plain user/password connects.

    .venv/bin/python bench/join.py [--quick]

Starts the embedded stack (``edgepub up``: nats-server with the auth callout and the edge
WebSocket listener, two token-service replicas answering it) on free ports of 127.0.0.1 in a
temporary directory, publishes a small pipeline and adds 200 edges (quick: 50) plus a sample of
20 (quick: 10) for sequential joins with ``publish.add_edge`` (setup, timed apart as
``add_edge_per_s``). Every edge connects as the agent does (tests/support/edge_bus.py): over the
WebSocket listener, client name = edge name, its own nkey signing the nonce, the bundle's join
token on the first connect only, ``inbox_prefix="_INBOX.<edge>"``, no reconnects. Then:

- joins: the 200 edges' first connects (token + key), 10 at a time; ``joins_per_s`` = edges
  joined / wall time of that phase, ``join_p50_ms``/``join_p99_ms`` per connect under it;
  the sample's first connects one at a time: ``seq_join_*``;
- connects: every edge again with its key alone, one at a time (``connect_*``, the callout's
  latency without contention) and 10 at a time (``concurrent_connect_*``, ``connects_per_s``);
- the plain baseline, in the same run with the same counts: the SDK's static user/password
  (static users skip the callout) on the same WebSocket listener, one at a time
  (``plain_connect_*``) and 10 at a time (``plain_concurrent_connect_*``,
  ``plain_connects_per_s``), and one at a time over the TCP listener (``plain_tcp_connect_*``);
- revoke: all 200 edges connected (and idle) at once, then one at a time ``client.remove_edge``
  from the call until that edge's connection is closed by the server (its ``closed_cb``):
  ``revoke_p50_s``/``revoke_p99_s`` (target <= 2 s), ``remove_call_*`` the SDK call alone; then
  each removed edge tries its key again and must be refused (``refused_after_remove``).

A connect's latency is ``nats.connect()`` returning (TCP/WebSocket handshake, INFO, CONNECT,
the callout's answer, PONG); the connection is closed, untimed, before the next. A few
untimed connects first warm this process's WebSocket client and both token-service replicas.
Percentiles are nearest-rank (with 60 samples, p99 is the maximum).

Progress goes to stderr; the last line on stdout is one JSON object: the figures above, a
count per phase (``joins``, ``connects``, ``plain_connects``...), ``ratio`` =
connect_p99_ms / plain_connect_p99_ms, ``connect_failures``, ``revoke_ok`` (p99 within the
target, every removed edge cut off and refused again) and ``server_log``: the warnings and
errors the token services and nats-server logged (the refusals are expected: the warm-up's
and the reconnects after remove).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from edgepub import Client
from edgepub.demo import start_stack
from edgepub.samples import house_price_model
from edgepub.shared import keys, subjects
from edgepub.shared.bundle import decode_bundle, opscenter_url
from edgepub.shared.stack_file import StackInfo, load_stack_info

CONCURRENCY = 10
CONNECT_TIMEOUT_S = 5.0
CLOSE_WAIT_S = 10.0  # a removed edge not cut off by then counts as not revoked
REVOKE_TARGET_S = 2.0

Connect = Callable[[], Awaitable[NATS]]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def pct(samples: Sequence[float], q: float, scale: float = 1.0, digits: int = 3) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) times ``scale``, rounded; None for none."""
    if not samples:
        return None
    ordered = sorted(samples)
    return round(ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] * scale, digits)


@dataclass
class BenchEdge:
    name: str
    token: str
    seed: str = field(default_factory=lambda: keys.new_seed("user"))
    closed_at: float | None = None
    closed: asyncio.Event | None = None  # set by closed_cb while watched
    watched: NATS | None = None  # the connection revoke watches


@dataclass
class Phase:
    """One batch of connects: each one's latency (s), the batch's wall time, what failed."""

    label: str
    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)

    def ms(self, q: float) -> float | None:
        return pct(self.latencies, q, 1000, 2)

    def per_s(self) -> float:
        return round(len(self.latencies) / self.wall_s, 1) if self.wall_s else 0.0

    def line(self) -> str:
        fails = f", {sum(self.errors.values())} failed {dict(self.errors)}" if self.errors else ""
        return (
            f"{self.label}: {len(self.latencies)} in {self.wall_s:.2f}s ({self.per_s()}/s), "
            f"p50 {self.ms(50)} ms, p99 {self.ms(99)} ms, max {self.ms(100)} ms{fails}"
        )


# --- setup (not timed with the connects) ------------------------------------------------------


def add_edges(home: Path, client: Client, names: Sequence[str]) -> tuple[list[BenchEdge], float]:
    """Publish a small pipeline and add ``names`` to it; the edges and add_edge calls/s."""
    model = client.upload_model("bench-house", house_price_model(home / "m.onnx", n_estimators=3))
    pipeline = client.build_pipeline(f"bench-join-{uuid.uuid4().hex[:6]}")
    pipeline.add_model_step(model)
    publish = pipeline.publish(progress=False)
    assert publish.status == "Published", publish.status
    edges = []
    start = time.perf_counter()
    for i, name in enumerate(names, 1):
        bundle = publish.add_edge(name).docker_run_variables["EDGE_BUNDLE"]
        token = decode_bundle(bundle).join_token
        assert token is not None, f"{name}: the bundle carries no join token"
        edges.append(BenchEdge(name=name, token=token))
        if i % 50 == 0 or i == len(names):
            say(f"  added {i}/{len(names)} edges")
    return edges, len(names) / (time.perf_counter() - start)


# --- connects -----------------------------------------------------------------------------


async def _ignore_error(exc: Exception) -> None:
    """nats-py prints async errors without an error_cb; a refused or kicked edge is expected."""


async def connect_closing(opts: dict[str, Any]) -> NATS:
    """``nats.connect(**opts)``, closing the client when the connect fails: without
    reconnects nats-py raises with its WebSocket transport's aiohttp session still open."""
    nc = NATS()
    try:
        await nc.connect(**opts)
    except BaseException:
        await nc.close()
        raise
    return nc


def edge_connect(ws_url: str, edge: BenchEdge, *, join: bool, watch: bool = False) -> Connect:
    """A connect as ``edge``, the agent's way; ``watch`` records when the server closes it."""

    async def on_closed() -> None:
        edge.closed_at = time.perf_counter()
        if edge.closed is not None:
            edge.closed.set()

    opts: dict[str, Any] = {
        "servers": [ws_url],
        "name": edge.name,
        "nkeys_seed_str": edge.seed,
        "inbox_prefix": subjects.inbox_prefix(edge.name),
        "connect_timeout": CONNECT_TIMEOUT_S,
        "allow_reconnect": False,
        "max_reconnect_attempts": 0,
        "error_cb": _ignore_error,
    }
    if join:
        opts["token"] = edge.token
    if watch:
        edge.closed, edge.closed_at = asyncio.Event(), None
        opts["closed_cb"] = on_closed

    async def connect() -> NATS:
        nc = await connect_closing(opts)
        if watch:
            edge.watched = nc
        return nc

    return connect


def plain_connect(url: str, user: str, password: str) -> Connect:
    opts: dict[str, Any] = {
        "servers": [url],
        "user": user,
        "password": password,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "allow_reconnect": False,
        "max_reconnect_attempts": 0,
        "error_cb": _ignore_error,
    }

    async def connect() -> NATS:
        return await connect_closing(opts)

    return connect


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:80]


async def run_phase(
    label: str, connects: Sequence[Connect], concurrency: int, *, keep: bool = False
) -> tuple[Phase, list[NATS]]:
    """Time each connect, ``concurrency`` at a time; close each unless ``keep``."""
    phase, kept, done = Phase(label), [], 0
    slots = asyncio.Semaphore(concurrency)
    step = max(1, len(connects) // 4)

    async def one(connect: Connect) -> None:
        nonlocal done
        async with slots:
            start = time.perf_counter()
            try:
                nc = await connect()
            except (OSError, TimeoutError, NatsError) as exc:
                phase.errors[_reason(exc)] += 1
            else:
                phase.latencies.append(time.perf_counter() - start)
                if keep:
                    kept.append(nc)
                else:
                    await nc.close()
            done += 1
            if done % step == 0 and done < len(connects):
                say(f"  {label}: {done}/{len(connects)}")

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for connect in connects:
            tg.create_task(one(connect))
    phase.wall_s = time.perf_counter() - start
    say(phase.line())
    return phase, kept


# --- revoke ---------------------------------------------------------------------------------


@dataclass
class Revokes:
    seconds: list[float] = field(default_factory=list)  # remove_edge call -> closed_cb
    call_s: list[float] = field(default_factory=list)  # the remove_edge call alone
    not_closed: int = 0
    refused_after: int = 0
    accepted_after: int = 0


async def revoke_all(client: Client, ws_url: str, edges: Sequence[BenchEdge]) -> Revokes:
    """Connect ``edges`` at once, then remove them one at a time, timing each cut-off."""
    watched = [edge_connect(ws_url, e, join=False, watch=True) for e in edges]
    _, kept = await run_phase("revoke: connecting", watched, CONCURRENCY, keep=True)
    out = Revokes()
    step = max(1, len(edges) // 5)
    for i, edge in enumerate(edges, 1):
        start = time.perf_counter()
        await asyncio.to_thread(client.remove_edge, edge.name)
        out.call_s.append(time.perf_counter() - start)
        if edge.watched is not None and edge.closed is not None:
            try:
                async with asyncio.timeout(CLOSE_WAIT_S):
                    await edge.closed.wait()
            except TimeoutError:
                out.not_closed += 1
            else:
                assert edge.closed_at is not None
                out.seconds.append(edge.closed_at - start)
        if i % step == 0 or i == len(edges):
            say(f"  removed {i}/{len(edges)}, p99 so far {pct(out.seconds, 99)} s")
    for nc in kept:
        if not nc.is_closed:
            await nc.close()
    again = [edge_connect(ws_url, e, join=False) for e in edges]
    after, late = await run_phase("reconnect after remove", again, CONCURRENCY, keep=True)
    for nc in late:
        await nc.close()
    out.refused_after, out.accepted_after = sum(after.errors.values()), len(after.latencies)
    return out


# --- what the servers said -------------------------------------------------------------------

_NATS_LINE = re.compile(r"^\[\d+\] \S+ \S+ \[(?P<level>ERR|WRN)\] (?P<text>.*)$")
_NATS_PEER = re.compile(r"^\S+:\d+ - \w+:\d+ - ")  # "127.0.0.1:5123 - wid:8 - "
_NATS_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")  # keys, edge names


def server_complaints(home: Path) -> dict[str, dict[str, int]]:
    """Warnings and errors in the token services' logs (by event) and nats-server's (by
    message, addresses, ids and quoted keys elided): refusals are expected, the rest not."""
    token: Counter[str] = Counter()
    for path in sorted((home / "logs").glob("token*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("level") in ("warning", "error"):
                token[f"{event['level']} {event.get('event')}"] += 1
    server: Counter[str] = Counter()
    nats_log = home / "logs" / "nats-server.log"
    for line in nats_log.read_text(errors="replace").splitlines() if nats_log.exists() else []:
        if match := _NATS_LINE.match(line):
            text = _NATS_QUOTED.sub("…", _NATS_PEER.sub("", match["text"]))
            server[f"{match['level']} {text[:70]}"] += 1
    return {"token_service": dict(token), "nats_server": dict(server)}


# --- the run -------------------------------------------------------------------------------


async def measure(
    client: Client, info: StackInfo, joiners: list[BenchEdge], sample: list[BenchEdge]
) -> dict[str, Any]:
    assert info.opscenter_host and info.sdk_user and info.sdk_password
    ws_url = opscenter_url(info.opscenter_host)
    everyone = joiners + sample
    plain_ws = [plain_connect(ws_url, info.sdk_user, info.sdk_password)] * len(everyone)
    plain_tcp = [plain_connect(info.nats_url, info.sdk_user, info.sdk_password)] * len(everyone)
    # warm up, untimed: this process's WebSocket client and both token-service replicas
    # (an edge that was never added is refused after the callout read its record)
    stranger = BenchEdge(name="bench-never-added", token=str(uuid.uuid4()))
    await run_phase("warm-up: plain", plain_ws[:5] + plain_tcp[:5], 1)
    await run_phase("warm-up: callout", [edge_connect(ws_url, stranger, join=True)] * 6, 2)
    say(f"{len(joiners)} edges join, {CONCURRENCY} at a time, over {ws_url}")
    keyed = [edge_connect(ws_url, e, join=False) for e in everyone]
    joining = [edge_connect(ws_url, e, join=True) for e in joiners]
    seq_joining = [edge_connect(ws_url, e, join=True) for e in sample]
    # (JSON prefix, label, connects, how many at once)
    plan: list[tuple[str, str, Sequence[Connect], int]] = [
        ("join", "join (token)", joining, CONCURRENCY),
        ("seq_join", "join (token), 1 at a time", seq_joining, 1),
        # callout and plain phases alternate so that neither gets a warmer machine
        ("connect", "connect (key), 1 at a time", keyed, 1),
        ("plain_connect", "plain ws, 1 at a time", plain_ws, 1),
        ("concurrent_connect", f"connect (key), {CONCURRENCY} at a time", keyed, CONCURRENCY),
        ("plain_concurrent_connect", f"plain ws, {CONCURRENCY} at a time", plain_ws, CONCURRENCY),
        ("plain_tcp_connect", "plain tcp, 1 at a time", plain_tcp, 1),
    ]
    phases = {key: (await run_phase(label, c, n))[0] for key, label, c, n in plan}
    say(f"revoke: remove_edge of {len(joiners)} connected edges, one at a time")
    revokes = await revoke_all(client, ws_url, joiners)
    return report(phases, revokes, len(everyone))


def report(phases: dict[str, Phase], revokes: Revokes, edges: int) -> dict[str, Any]:
    out: dict[str, Any] = {"edges": edges, "concurrency": CONCURRENCY}
    for key, phase in phases.items():
        out[f"{key}s"] = len(phase.latencies)
        out[f"{key}_p50_ms"], out[f"{key}_p99_ms"] = phase.ms(50), phase.ms(99)
    connect_p99, plain_p99 = out["connect_p99_ms"], out["plain_connect_p99_ms"]
    revoke_p99 = pct(revokes.seconds, 99)
    out |= {
        "joins_per_s": phases["join"].per_s(),
        "connects_per_s": phases["concurrent_connect"].per_s(),
        "plain_connects_per_s": phases["plain_concurrent_connect"].per_s(),
        "ratio": round(connect_p99 / plain_p99, 2) if connect_p99 and plain_p99 else None,
        "connect_failures": sum(sum(p.errors.values()) for p in phases.values()),
        "revokes": len(revokes.seconds),
        "revoke_p50_s": pct(revokes.seconds, 50),
        "revoke_p99_s": revoke_p99,
        "revoke_max_s": pct(revokes.seconds, 100),
        "remove_call_p50_s": pct(revokes.call_s, 50),
        "remove_call_p99_s": pct(revokes.call_s, 99),
        "not_closed_after_remove": revokes.not_closed,
        "refused_after_remove": revokes.refused_after,
        "accepted_after_remove": revokes.accepted_after,
        "target_revoke_p99_s": REVOKE_TARGET_S,
    }
    out["revoke_ok"] = (
        revoke_p99 is not None
        and revoke_p99 <= REVOKE_TARGET_S
        and not revokes.not_closed
        and not revokes.accepted_after
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 edges instead of 200")
    args = parser.parse_args()
    n, s = (50, 10) if args.quick else (200, 20)
    started = time.perf_counter()
    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgepub-bench-")))
        say(f"starting the embedded stack in {home}")
        start_stack(home, stack)
        info = load_stack_info(home)
        client = stack.enter_context(Client(data_dir=home))
        say(f"adding {n} + {s} edges (setup)")
        names = [f"bench-{i:03d}" for i in range(n)] + [f"bench-seq-{i:03d}" for i in range(s)]
        edges, add_per_s = add_edges(home, client, names)
        result = asyncio.run(measure(client, info, edges[:n], edges[n:]))
        complaints = server_complaints(home)
    say(f"server warnings/errors: {json.dumps(complaints)}")
    result["server_log"] = complaints
    result["add_edge_per_s"] = round(add_per_s, 1)
    result["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
