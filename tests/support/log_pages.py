"""Inference log pages as an edge ships them, and the pipeline log as Ops holds them."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field

import nats
import nats.errors
from nats.aio.client import Client as NATS

from edgepub.shared import log_lines, subjects

from .edge_bus import add_edge, admin, connect_edge, join_token, new_seed
from .servers import NatsCluster, NatsServer

ROW_PAD = "x" * 120  # about 200 bytes a row


def row(seq: int, pipeline: str = "p") -> bytes:
    return log_lines.encode_line(
        log_lines.RowLine(
            seq=seq,
            time=1_700_000_000_000 + seq,
            pipeline=pipeline,
            pipeline_version="v1",
            in_={"x": [float(seq)], "pad": ROW_PAD},
            out={"y": [seq * 2.0]},
        )
    )


def page(
    edge: str, first: int, last: int, *, pipeline: str = "p", workspace: int = 1
) -> tuple[bytes, dict[str, str]]:
    """Rows ``first..last`` as the shipper sends them: NDJSON body, headers, message id."""
    body = log_lines.join_lines([row(s, pipeline) for s in range(first, last + 1)])
    return body, {
        subjects.HEADER_FIRST_SEQ: str(first),
        subjects.HEADER_LAST_SEQ: str(last),
        subjects.HEADER_ROWS: str(last - first + 1),
        subjects.HEADER_PIPELINE: pipeline,
        subjects.HEADER_WORKSPACE: str(workspace),
        subjects.HEADER_MSG_ID: f"{edge}.{first}.{last}",
    }


async def ship(
    edge_nc: NATS, edge: str, first: int, last: int, *, size: int = 50, **kw: object
) -> int:
    """Pages of ``size`` rows for ``first..last``, each acked by the pages stream (retried
    like the shipper until it is); returns how many pages."""
    n = 0
    for a in range(first, last + 1, size):
        body, headers = page(edge, a, min(last, a + size - 1), **kw)  # type: ignore[arg-type]
        await send(edge_nc, subjects.edge_subject(edge, subjects.EDGE_LOGS), body, headers)
        n += 1
    return n


async def send(edge_nc: NATS, subject: str, body: bytes, headers: dict[str, str]) -> dict:  # type: ignore[type-arg]
    for _ in range(50):
        try:
            reply = await edge_nc.request(subject, body, headers=headers, timeout=2)
        except (nats.errors.Error, TimeoutError):
            await asyncio.sleep(0.1)
            continue
        ack = json.loads(reply.data)
        assert "error" not in ack, ack
        return ack  # type: ignore[no-any-return]
    raise AssertionError(f"the pages stream never acked {headers}")


@dataclass
class OpsLog:
    """What the pipeline log holds, read in stream order."""

    seqs: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    subjects_of: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    watermarks: dict[str, int] = field(default_factory=dict)

    def total(self) -> int:
        return sum(self.rows.values())

    def assert_exactly_once(self, expected: dict[str, int]) -> None:
        for part, seqs in self.seqs.items():
            assert len(seqs) == len(set(seqs)), f"{part}: a seq twice"
            assert all(a < b for a, b in itertools.pairwise(seqs)), f"{part}: order"
        assert dict(self.rows) == expected
        for part, n in expected.items():
            assert self.seqs[part] == list(range(1, n + 1)), part


async def read_log(nc: NATS) -> OpsLog:
    js = nc.jetstream()
    info = await js.stream_info(subjects.LOGS_STREAM)
    out = OpsLog()
    for seq in range(info.state.first_seq or 1, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(subjects.LOGS_STREAM, seq)
        except nats.js.errors.NotFoundError:
            continue  # rolled up (an older watermark)
        subject = msg.subject or ""
        if subject.startswith(subjects.WATERMARK_ROOT + "."):
            out.watermarks[subject.rsplit(".", 1)[1]] = json.loads(msg.data or b"{}")["last_seq"]
            continue
        part = (msg.headers or {})[subjects.HEADER_PARTITION]
        out.subjects_of[part].add(subject)
        for line in log_lines.split_lines(msg.data or b""):
            out.seqs[part].append(log_lines.seq_of(line))
            if not log_lines.is_gap(line):
                out.rows[part] += 1
    return out


async def wait_rows(nc: NATS, total: int, within_s: float = 30.0) -> OpsLog:
    """Until the pipeline log holds ``total`` rows (or more: then the test sees the extra)."""
    deadline = time.monotonic() + within_s
    while True:
        got = await read_log(nc)
        if got.total() >= total or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.1)


async def pages_pending(nc: NATS) -> int:
    return (await nc.jetstream().stream_info(subjects.PAGES_STREAM)).state.messages


async def join(server: NatsServer | NatsCluster, publish_id: int, name: str) -> NATS:
    """Add edge ``name`` to the publish and connect as it (its join token, its own key)."""
    nc = await admin(server)
    try:
        token = join_token((await add_edge(nc, publish_id, name)).bundle)
    finally:
        await nc.close()
    return await connect_edge(server, name, new_seed(), token)


async def owner(server: NatsServer | NatsCluster) -> NATS:
    """The publish service's user: reads both streams (what the tests count with)."""
    s = server.settings("publish")
    return await nats.connect(
        servers=s.servers,
        user=s.user,
        password=s.password,
        inbox_prefix=subjects.inbox_prefix("publish"),
    )
