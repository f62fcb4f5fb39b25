"""The pipeline log's retention against the collector's watermarks, across real processes
(nats-server, the publish service with tiny EDGEPUB_LOGS_* limits, the collector, edges
joined through the token service shipping as the shipper does).

An idle edge's watermark must outlive the log's max_bytes (re-rolled by the collector's
sweep: nats-server evicts the oldest messages whatever their TTL) and its max_age
(``Nats-TTL: never``). When the edge ships again, a replay of what Ops held is found
covered and the new rows are appended once, in order. A watermark removed out of turn is
recovered from the edge's last page; with no page either, the edge resumes from its
lowest waiting page after the configured wait, said loudly."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from edgepub import Client
from edgepub.services.stack import config
from edgepub.shared import subjects
from support import log_pages
from support.log_pages import OpsLog, join, owner
from support.servers import NatsServer
from support.services import OpsServices, ServiceProcess
from support.waiting import async_wait_for

pytestmark = [pytest.mark.timeout(240)]

MAX_BYTES = 8 << 20  # the pipeline log's bound in the max_bytes test
MAX_AGE_S = 6.0  # ... and its age in the max_age test
WINDOW_S = 1.0  # the pages stream's duplicate window: replays past it reach the collector
ROW_BYTES = 200  # about, as support.log_pages writes them


OPERATOR = "operator"  # a user with every permission, which no edgepub piece has


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """The stack's broker and users, and an operator who may purge what no edgepub user
    may: a watermark or an edge's pages, removed out of turn."""
    creds = config.generate_credentials()
    users = {
        **config.nats_users(creds),
        OPERATOR: config.UserSpec(password=secrets.token_hex(16)),
    }
    server = NatsServer(tmp_path / "nats", users=users, credentials=creds)
    try:
        server.start()
        yield server
    finally:
        server.kill()


async def operator(server: NatsServer) -> NATS:
    return await nats.connect(server.url, user=OPERATOR, password=server.users[OPERATOR])


@pytest.fixture
def publish_id(client: Client, model_file: Path) -> int:
    model = client.upload_model("rf", model_file)
    return client.build_pipeline("logs").add_model_step(model).publish(progress=False).id


def limits(ops: OpsServices, **env: str) -> None:
    """The publish service again, bringing the streams to these limits."""
    ops.start("publish", env={"EDGEPUB_PAGES_DUPLICATE_WINDOW_S": str(WINDOW_S), **env})


def collector(ops: OpsServices, **env: str) -> ServiceProcess:
    return ops.start(
        "log_collector",
        env={
            "EDGEPUB_ACK_WAIT_S": "1",
            "EDGEPUB_COLLECTOR_WAIT_HOLD_S": "0.5",
            "EDGEPUB_COLLECTOR_WATERMARK_SWEEP_S": "0.1",
            **env,
        },
    )


async def mark_of(nc: NATS, edge: str) -> tuple[int, int] | None:
    """(stream seq, last_seq) of the edge's watermark message, or None."""
    try:
        msg = await nc.jetstream().get_last_msg(subjects.LOGS_STREAM, subjects.watermark(edge))
    except NotFoundError:
        return None
    return msg.seq or 0, json.loads(msg.data or b"{}")["last_seq"]


async def wait_mark(nc: NATS, edge: str, last_seq: int, within_s: float = 60.0) -> int:
    """Until the edge's watermark says ``last_seq``; its stream seq."""

    async def there() -> int | None:
        mark = await mark_of(nc, edge)
        return mark[0] if mark is not None and mark[1] == last_seq else None

    return await async_wait_for(there, within_s, f"the watermark of {edge} at {last_seq}")


def assert_tail(got: OpsLog, edge: str, first: int, last: int) -> None:
    """Ops holds exactly ``first..last`` of the edge: each once, in order (what retention
    removed is the part before)."""
    assert got.seqs[edge] == list(range(first, last + 1)), (edge, got.seqs[edge][:5])
    assert got.rows[edge] == last - first + 1
    assert got.watermarks[edge] == last


def assert_suffix(got: OpsLog, edge: str, last: int) -> None:
    """A busy edge: what is left of it (maybe nothing) ends at ``last``, once each and
    without a hole; its watermark says ``last``."""
    seqs = got.seqs[edge]
    if seqs:
        assert seqs == list(range(seqs[0], last + 1)), (edge, seqs[:3], seqs[-3:])
    assert got.watermarks[edge] == last


def test_an_idle_edges_watermark_outlives_max_bytes(
    nats_server: NatsServer, ops: OpsServices, publish_id: int
) -> None:
    limits(ops, EDGEPUB_LOGS_MAX_BYTES=str(MAX_BYTES))
    col = collector(ops)
    busy = ("shop-b1", "shop-b2")
    rows = MAX_BYTES // ROW_BYTES  # each busy edge fills the log's bound once over

    async def main() -> None:
        idle = await join(nats_server, publish_id, "shop-idle")
        edges = [await join(nats_server, publish_id, n) for n in busy]
        nc = await owner(nats_server)
        js = nc.jetstream()
        try:
            await log_pages.ship(idle, "shop-idle", 1, 500, size=50)
            first_mark = await wait_mark(nc, "shop-idle", 500)
            for e, n in zip(edges, busy, strict=True):  # one page in flight at a time
                await log_pages.ship(e, n, 1, rows, size=50)
            for n in busy:
                await wait_mark(nc, n, rows)
            state = (await js.stream_info(subjects.LOGS_STREAM)).state
            print(f"log: seq {state.first_seq}..{state.last_seq}, {state.bytes} bytes")
            assert state.bytes <= MAX_BYTES
            # where the idle edge's watermark was is long evicted; the watermark is not
            assert state.first_seq > first_mark
            assert (await mark_of(nc, "shop-idle") or (0, 0))[1] == 500
            got = await log_pages.read_log(nc)
            assert got.seqs["shop-idle"] == []  # its pages went with retention
            # back: a replay of what Ops held (past the window) and new rows
            await log_pages.ship(idle, "shop-idle", 1, 1000, size=50)
            await wait_mark(nc, "shop-idle", 1000)
            got = await log_pages.read_log(nc)
            assert_tail(got, "shop-idle", 501, 1000)
            for n in busy:
                assert_suffix(got, n, rows)
            assert col.count_events("page_covered") >= 10  # the replay, found in Ops
            assert col.count_events("watermarks_rerolled") >= 1
            print(f"sweeps behind: {col.count_events('watermark_sweep_behind')}")
        finally:
            for c in (idle, *edges, nc):
                await c.close()

    asyncio.run(main())


def test_more_idle_watermarks_than_the_server_lists_at_once_all_outlive_max_bytes(
    nats_server: NatsServer, ops: OpsServices, publish_id: int
) -> None:
    """1,100 idle edges (their watermarks written as the collector writes them): past the
    1,024 watermarks one multi-get returns, the sweep takes them a part at a time."""
    limits(ops, EDGEPUB_LOGS_MAX_BYTES=str(MAX_BYTES * 2))  # a sweep of them takes ~1 s
    col = collector(ops)
    idle = [f"idle-{i}" for i in range(1100)]
    rows = MAX_BYTES * 4 // ROW_BYTES  # the log's bound twice over

    async def main() -> None:
        busy = await join(nats_server, publish_id, "shop-busy")
        nc = await owner(nats_server)
        s = nats_server.settings("log-collector")
        writer = await nats.connect(
            s.url, user=s.user, password=s.password, inbox_prefix=subjects.inbox_prefix(s.user)
        )
        js = writer.jetstream()
        try:
            for i, edge in enumerate(idle):
                await js.publish(
                    subjects.watermark(edge),
                    json.dumps({"edge": edge, "last_seq": i + 1}).encode(),
                    headers={"Nats-Rollup": "sub", "Nats-TTL": "never"},
                )
            # a quarter of the log's bound at a time, each followed by time for a sweep of
            # all 1,100 (~1 s): the sweep's stated condition is that the log takes in less
            # than half its bound between two sweeps, which a loaded CI machine running a
            # sweep this size while the busy edge ships flat out did not always meet
            step = rows // 8
            for first in range(1, rows + 1, step):
                last = min(rows, first + step - 1)
                await log_pages.ship(busy, "shop-busy", first, last, size=50)
                await wait_mark(nc, "shop-busy", last)
                await asyncio.sleep(2.5)
            state = (await nc.jetstream().stream_info(subjects.LOGS_STREAM)).state
            assert state.first_seq > len(idle)  # where they were written is evicted
            for i, edge in enumerate(idle):
                assert (await mark_of(nc, edge) or (0, 0))[1] == i + 1, edge
            rerolled = [e for e in col.events() if e.get("event") == "watermarks_rerolled"]
            assert sum(e["count"] for e in rerolled) >= len(idle)
        finally:
            for c in (busy, nc, writer):
                await c.close()

    asyncio.run(main())


def test_an_idle_edges_watermark_outlives_max_age(
    nats_server: NatsServer, ops: OpsServices, publish_id: int
) -> None:
    limits(ops, EDGEPUB_LOGS_MAX_AGE_S=str(MAX_AGE_S))
    col = collector(ops)

    async def main() -> None:
        idle = await join(nats_server, publish_id, "shop-old")
        other = await join(nats_server, publish_id, "shop-new")
        nc = await owner(nats_server)
        try:
            await log_pages.ship(idle, "shop-old", 1, 300, size=50)
            await wait_mark(nc, "shop-old", 300)
            sent = 0
            loop = asyncio.get_running_loop()
            until = loop.time() + MAX_AGE_S * 1.5  # another edge ships past the log's age
            while loop.time() < until:
                await log_pages.ship(other, "shop-new", sent + 1, sent + 200, size=50)
                sent += 200
                await asyncio.sleep(0.5)

            async def aged_out() -> bool:
                return (await log_pages.read_log(nc)).seqs["shop-old"] == []

            await async_wait_for(aged_out, MAX_AGE_S * 2, "the idle edge's pages to age out")
            assert (await mark_of(nc, "shop-old") or (0, 0))[1] == 300
            await log_pages.ship(idle, "shop-old", 1, 600, size=50)  # a replay, then new
            await wait_mark(nc, "shop-old", 600)
            got = await log_pages.read_log(nc)
            assert_tail(got, "shop-old", 301, 600)
            assert_suffix(got, "shop-new", sent)
            assert col.count_events("page_covered") >= 6
        finally:
            for c in (idle, other, nc):
                await c.close()

    asyncio.run(main())


def test_a_watermark_removed_out_of_turn_is_recovered_from_the_edges_last_page(
    nats_server: NatsServer, ops: OpsServices, publish_id: int
) -> None:
    limits(ops)
    col = collector(ops)

    async def main() -> None:
        edge = await join(nats_server, publish_id, "shop-p")
        nc = await owner(nats_server)
        root = await operator(nats_server)
        try:
            await log_pages.ship(edge, "shop-p", 1, 500, size=50)
            await wait_mark(nc, "shop-p", 500)
            await root.jetstream().purge_stream(
                subjects.LOGS_STREAM, subject=subjects.watermark("shop-p")
            )
            # the edge re-pages from 251 (a replay of half of it) and goes on
            await log_pages.ship(edge, "shop-p", 251, 750, size=40)
            await wait_mark(nc, "shop-p", 750)
            got = await log_pages.read_log(nc)
            assert_tail(got, "shop-p", 1, 750)
            assert col.count_events("watermark_recovered") >= 1
            assert await log_pages.pages_pending(nc) == 0
        finally:
            for c in (edge, nc, root):
                await c.close()

    asyncio.run(main())


def test_with_neither_watermark_nor_page_the_edge_resumes_after_the_wait_said_loudly(
    nats_server: NatsServer, ops: OpsServices, publish_id: int
) -> None:
    limits(ops)
    col = collector(ops, EDGEPUB_COLLECTOR_ADOPT_AFTER_S="2")

    async def main() -> None:
        edge = await join(nats_server, publish_id, "shop-n")
        nc = await owner(nats_server)
        root = await operator(nats_server)
        try:
            await log_pages.ship(edge, "shop-n", 1, 500, size=50)
            await wait_mark(nc, "shop-n", 500)
            for subject in (subjects.watermark("shop-n"), subjects.pipeline_log(1, "p", "shop-n")):
                await root.jetstream().purge_stream(subjects.LOGS_STREAM, subject=subject)
            await log_pages.ship(edge, "shop-n", 501, 800, size=50)
            await wait_mark(nc, "shop-n", 800)
            got = await log_pages.read_log(nc)
            assert_tail(got, "shop-n", 501, 800)
            lost = [e for e in col.events() if e.get("event") == "watermark_lost"]
            assert len(lost) == 1 and lost[0]["resumed_after"] == 500
            assert lost[0]["level"] == "error"
            assert await log_pages.pages_pending(nc) == 0
        finally:
            for c in (edge, nc, root):
                await c.close()

    asyncio.run(main())
