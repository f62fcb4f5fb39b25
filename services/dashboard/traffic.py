"""A pipeline's traffic from its log at Ops: inference rows per minute and latency per edge
over a time range, and the latest rows, read from the pipeline log stream.

Pages are read with an ordered consumer from the range's start (the server's timestamp of
the append); each row's own ``time`` places it in a minute. The read is bounded
(``MAX_ROWS`` rows, ``MAX_READ_S`` seconds): a range wider than that says so
(``truncated``) rather than holding the dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from edgepub.shared import subjects

MAX_ROWS = 2_000_000
MAX_READ_S = 10.0
LATEST = 20  # rows in the latest-rows table
SAMPLES = 256  # latencies kept per (edge, minute) for its median
LATE_S = 15 * 60  # pages appended this long after the range's end end the read
IDLE_S = 0.5  # no page for this long: the read is at the end of the stream


class _Line(msgspec.Struct):
    seq: int = 0
    time: int = 0  # epoch ms
    elapsed_ns: tuple[int, ...] = ()
    gap: dict[str, Any] | None = None


_line = msgspec.json.Decoder(_Line)
_any = msgspec.json.Decoder()


class Minute(msgspec.Struct, frozen=True, kw_only=True):
    edge: str
    minute: datetime  # its start, UTC
    rows: int
    p50_ms: float | None
    p95_ms: float | None


class LatestRow(msgspec.Struct, frozen=True, kw_only=True):
    edge: str
    time: datetime
    seq: int
    pipeline_version: str
    latency_ms: float | None
    inputs: str  # the row's in/out, as JSON, cut to a few hundred characters
    outputs: str


class Traffic(msgspec.Struct, frozen=True, kw_only=True):
    pipeline: str
    start: datetime
    end: datetime
    edges: tuple[str, ...]  # every edge seen in the range (before the edge filter)
    minutes: tuple[Minute, ...]
    latest: tuple[LatestRow, ...]
    rows: int
    truncated: bool


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _cut(value: Any) -> str:
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= 300 else text[:297] + "..."


class _Acc:
    def __init__(self, start_ms: int, end_ms: int, edge: str | None) -> None:
        self.start_ms, self.end_ms, self.edge = start_ms, end_ms, edge
        self.counts: dict[tuple[str, int], int] = {}
        self.samples: dict[tuple[str, int], list[float]] = {}
        self.latest: deque[tuple[str, bytes]] = deque(maxlen=LATEST)
        self.edges: set[str] = set()
        self.rows = 0
        self.pages = 0

    def page(self, partition: str, body: bytes) -> None:
        self.pages += 1
        self.edges.add(partition)
        if self.edge is not None and partition != self.edge:
            return
        for raw in body.split(b"\n"):
            if not raw:
                continue
            try:
                line = _line.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if line.gap is not None or not self.start_ms <= line.time < self.end_ms:
                continue
            self.rows += 1
            key = (partition, line.time // 60_000)
            self.counts[key] = self.counts.get(key, 0) + 1
            if line.elapsed_ns:
                got = self.samples.setdefault(key, [])
                if len(got) < SAMPLES:
                    got.append(sum(line.elapsed_ns) / 1e6)
            self.latest.append((partition, raw))

    def result(self, pipeline: str, start: datetime, end: datetime, truncated: bool) -> Traffic:
        minutes = []
        for (edge, minute), rows in sorted(
            self.counts.items(), key=lambda kv: (kv[0][1], kv[0][0])
        ):
            lat = self.samples.get((edge, minute), [])
            minutes.append(
                Minute(
                    edge=edge,
                    minute=datetime.fromtimestamp(minute * 60, UTC),
                    rows=rows,
                    p50_ms=_percentile(lat, 0.5),
                    p95_ms=_percentile(lat, 0.95),
                )
            )
        latest = []
        for edge, raw in reversed(self.latest):
            row = _any.decode(raw)
            elapsed = row.get("elapsed_ns") or ()
            latest.append(
                LatestRow(
                    edge=edge,
                    time=datetime.fromtimestamp(int(row.get("time", 0)) / 1000, UTC),
                    seq=int(row.get("seq", 0)),
                    pipeline_version=str(row.get("pipeline_version", "")),
                    latency_ms=sum(elapsed) / 1e6 if elapsed else None,
                    inputs=_cut(row.get("in", {})),
                    outputs=_cut(row.get("out", {})),
                )
            )
        return Traffic(
            pipeline=pipeline,
            start=start,
            end=end,
            edges=tuple(sorted(self.edges)),
            minutes=tuple(minutes),
            latest=tuple(latest),
            rows=self.rows,
            truncated=truncated,
        )


async def read_traffic(
    js: JetStreamContext,
    pipeline: str,
    *,
    start: datetime,
    end: datetime,
    edge: str | None = None,
    workspace_id: int = 1,
) -> Traffic:
    """Rows per minute and latency per edge of ``pipeline`` in ``[start, end)``."""
    acc = _Acc(int(start.timestamp() * 1000), int(end.timestamp() * 1000), edge)
    done = asyncio.Event()
    late = end + timedelta(seconds=LATE_S)
    truncated = False

    async def on_page(msg: Any) -> None:
        nonlocal truncated
        if done.is_set():
            return
        headers = msg.headers or {}
        partition = headers.get(subjects.HEADER_PARTITION) or msg.subject.rsplit(".", 1)[-1]
        acc.page(partition, msg.data or b"")
        meta = msg.metadata
        if acc.rows >= MAX_ROWS:
            truncated = True
            done.set()
        elif meta.num_pending == 0 or (meta.timestamp is not None and meta.timestamp > late):
            done.set()

    subject = subjects.pipeline_logs(workspace_id, pipeline, None)
    try:
        sub = await js.subscribe(
            subject,
            stream=subjects.LOGS_STREAM,  # no stream lookup by subject: not permitted
            cb=on_page,
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=start.astimezone(UTC),
            ),
        )
    except nats.errors.Error:
        return acc.result(pipeline, start, end, truncated=False)
    try:
        waited = 0.0
        while not done.is_set() and waited < MAX_READ_S:
            seen = acc.pages
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), IDLE_S)
            waited += IDLE_S
            if acc.pages == seen:  # nothing more came: nothing more there
                break
        truncated = truncated or (not done.is_set() and waited >= MAX_READ_S)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return acc.result(pipeline, start, end, truncated)
