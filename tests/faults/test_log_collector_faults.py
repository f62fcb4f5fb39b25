"""The collector's cells of the fault matrix, across real processes (nats-server, the Ops
services, edges joined through the token service; a real agent for the kill between append
and ack). Each ends with the pipeline log counted per partition: every row once, no seq
twice, seq strictly increasing per partition. Retention against watermarks:
test_log_collector_retention.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgepub import Client
from edgepub.services.log_collector import fault
from edgepub.shared import log_lines, subjects
from support import log_pages
from support.fleet import Fleet
from support.log_pages import join, owner
from support.ops_log import ops_log
from support.servers import NatsServer
from support.services import OpsServices, ServiceProcess
from support.waiting import async_wait_for, wait_for

pytestmark = [pytest.mark.timeout(240)]

WINDOW_S = 1.0  # the pages stream's duplicate window in these tests


@pytest.fixture
def publish_id(client: Client, model_file: Path) -> int:
    model = client.upload_model("rf", model_file)
    return client.build_pipeline("logs").add_model_step(model).publish(progress=False).id


@pytest.fixture
def short_window(ops: OpsServices) -> None:
    """The publish service again, with a duplicate window of a second on the pages stream."""
    ops.start("publish", env={"EDGEPUB_PAGES_DUPLICATE_WINDOW_S": str(WINDOW_S)})


def collector_env(**extra: str) -> dict[str, str]:
    return {"EDGEPUB_ACK_WAIT_S": "1", "EDGEPUB_COLLECTOR_WAIT_HOLD_S": "0.5", **extra}


def refusals(of: OpsServices | ServiceProcess) -> int:
    """Pages the collectors (or one) found already in Ops (from the watermark, or refused
    by the server's check of it)."""
    procs = [of] if isinstance(of, ServiceProcess) else list(of.procs.values())
    return sum(
        p.count_events("page_covered") + p.count_events("append_refused")
        for p in procs
        if p.name.startswith("log_collector")
    )


def test_collector_killed_between_append_and_ack_duplicates_nothing(
    fleet: Fleet, ops: OpsServices
) -> None:
    """A real agent ships; the collector exits (as a SIGKILL: code 137, no cleanup) right
    after its 2nd append returned and before that batch's pages were acked
    (EDGEPUB_FAULT_EXIT_AFTER_APPENDS, test only). A second collector gets those pages again
    and finds them in Ops; every row is there once."""
    first = ops.start("log_collector", env=collector_env(EDGEPUB_FAULT_EXIT_AFTER_APPENDS="2"))
    agent = fleet.agent("kill-a", fleet.bundle("kill-a"))
    agent.wait_event("Node attestation was successful.", timeout=30)
    sent = 0
    while first.running():  # a round of inferences at a time, each at least one append
        assert sent < 1000, "the collector never reached its 2nd append"
        sent += fleet.send(agent, 20)
        wait_for(
            lambda n=sent: not first.running() or ops_log(fleet.nats).total("kill-a") >= n,
            30,
            "the collector to append the round or exit",
        )
    assert first.child.returncode() == fault.EXIT_CODE
    assert first.count_events("fault_exit") == 1
    second = ops.start("log_collector", env=collector_env(), replica=2)
    sent += fleet.send(agent, 20)
    held = fleet.at_ops({"kill-a": sent})
    assert held.lost["kill-a"] == 0
    # the batch appended but not acked came back and was found in Ops, every time
    assert refusals(second) >= 1, "the pages of the interrupted batch were not redelivered"


def test_outage_longer_than_the_duplicate_window_while_pages_keep_coming(
    nats_server: NatsServer, ops: OpsServices, publish_id: int, short_window: None
) -> None:
    col = ops["log_collector"]

    async def main() -> None:
        edge = await join(nats_server, publish_id, "shop-o")
        nc = await owner(nats_server)
        try:
            await log_pages.ship(edge, "shop-o", 1, 500, size=50)
            await log_pages.wait_rows(nc, 500)
            col.terminate()
            # the edge restarted and ships again from before what Ops holds, and more
            await log_pages.ship(edge, "shop-o", 1, 800, size=50)
            await asyncio.sleep(WINDOW_S * 1.5)  # past the window: the same ids are stored
            await log_pages.ship(edge, "shop-o", 301, 1200, size=50)
            col.start()
            got = await log_pages.wait_rows(nc, 1200)
            await asyncio.sleep(0.5)  # anything extra would show now
            got = await log_pages.read_log(nc)
            got.assert_exactly_once({"shop-o": 1200})
            assert await log_pages.pages_pending(nc) == 0
            assert refusals(ops) >= 10 + 10  # 1..500 twice over, 301..800
        finally:
            await edge.close()
            await nc.close()

    asyncio.run(main())


def test_a_replay_past_the_window_is_refused_and_counted(
    nats_server: NatsServer, ops: OpsServices, publish_id: int, short_window: None
) -> None:
    async def main() -> None:
        edge = await join(nats_server, publish_id, "shop-r")
        nc = await owner(nats_server)
        try:
            await log_pages.ship(edge, "shop-r", 1, 500, size=50)
            await log_pages.wait_rows(nc, 500)
            await asyncio.sleep(WINDOW_S * 1.5)
            before = refusals(ops)
            await log_pages.ship(edge, "shop-r", 1, 500, size=50)  # same ids, window gone
            await async_wait_for(lambda: refusals(ops) - before >= 10, 20, "10 refusals")
            await asyncio.sleep(0.5)  # a refusal more would show now
            assert refusals(ops) - before == 10
            (await log_pages.read_log(nc)).assert_exactly_once({"shop-r": 500})
            assert await log_pages.pages_pending(nc) == 0
        finally:
            await edge.close()
            await nc.close()

    asyncio.run(main())


def test_a_page_stored_behind_its_successors_is_read_ahead_not_waited_for(
    nats_server: NatsServer, ops: OpsServices, publish_id: int
) -> None:
    """An edge's first pages reach the stream only after 40 of its later ones (their first
    try got no ack; the edge sent them again). The consumer lets 8 pages be unacked, the
    collector holds 8: the later pages fill every slot waiting for the first, which is
    never delivered. The collector reads the edge's subject ahead of a waiting page and
    appends the first pages from there; their own deliveries later find them covered."""
    col = ops["log_collector"]
    col.terminate()

    async def main() -> None:
        edge = await join(nats_server, publish_id, "shop-b")
        nc = await owner(nats_server)
        try:
            await log_pages.ship(edge, "shop-b", 101, 2100, size=50)  # 40 pages
            await log_pages.ship(edge, "shop-b", 1, 100, size=50)  # the 2 they wait for
            ops.start(
                "log_collector",
                env=collector_env(
                    EDGEPUB_COLLECTOR_CONCURRENCY="8", EDGEPUB_COLLECTOR_MAX_ACK_PENDING="8"
                ),
            )
            got = await log_pages.wait_rows(nc, 2100, within_s=60)
            got.assert_exactly_once({"shop-b": 2100})
            assert got.watermarks == {"shop-b": 2100}

            async def drained() -> bool:
                return await log_pages.pages_pending(nc) == 0

            await async_wait_for(drained, 30, "every page acked")
            assert ops["log_collector"].count_events("pages_read_ahead") >= 1
        finally:
            await edge.close()
            await nc.close()

    asyncio.run(main())


def test_two_collectors_three_edges_at_once(
    nats_server: NatsServer, ops: OpsServices, publish_id: int
) -> None:
    env = collector_env(EDGEPUB_LOG_LEVEL="debug", EDGEPUB_COLLECTOR_CONCURRENCY="8")
    ops.start("log_collector", env=env)
    ops.start("log_collector", env=env, replica=2)
    names = ("shop-1", "shop-2", "shop-3")

    async def main() -> None:
        edges = [await join(nats_server, publish_id, n) for n in names]
        nc = await owner(nats_server)
        try:
            await asyncio.gather(
                *(log_pages.ship(e, n, 1, 3000, size=25) for e, n in zip(edges, names, strict=True))
            )
            got = await log_pages.wait_rows(nc, 9000, within_s=60)
            got.assert_exactly_once(dict.fromkeys(names, 3000))
            for n in names:
                assert got.subjects_of[n] == {subjects.pipeline_log(1, "p", n)}
            both = [
                ops[p].count_events("page_appended") for p in ("log_collector", "log_collector-2")
            ]
            assert all(both), f"pages appended per collector: {both}"
        finally:
            for c in (*edges, nc):
                await c.close()

    asyncio.run(main())


def test_a_corrupt_page_is_dropped_with_its_reason_and_nothing_else_is_lost(
    nats_server: NatsServer, ops: OpsServices, publish_id: int
) -> None:
    async def main() -> None:
        edge = await join(nats_server, publish_id, "shop-x")
        nc = await owner(nats_server)
        subject = subjects.edge_subject("shop-x", subjects.EDGE_LOGS)
        try:
            await log_pages.ship(edge, "shop-x", 1, 100, size=50)
            body, headers = log_pages.page("shop-x", 101, 150)
            corrupt = [
                (
                    body,
                    {**headers, subjects.HEADER_LAST_SEQ: "160", "Nats-Msg-Id": "x1"},
                ),  # headers disagree
                (b"\xff\xfe" + body, {**headers, "Nats-Msg-Id": "x2"}),  # not UTF-8
                (b"not ndjson\n", {**headers, "Nats-Msg-Id": "x3"}),
                (body, {"Nats-Msg-Id": "x4"}),  # no headers
                (
                    log_lines.join_lines([log_pages.row(2), log_pages.row(1)]),
                    {**log_pages.page("shop-x", 1, 2)[1], "Nats-Msg-Id": "x5"},
                ),
            ]
            for b, h in corrupt:
                await log_pages.send(edge, subject, b, h)
            await log_pages.ship(edge, "shop-x", 101, 300, size=50)
            got = await log_pages.wait_rows(nc, 300)
            (await log_pages.read_log(nc)).assert_exactly_once({"shop-x": 300})
            assert got.total() == 300
            rejected = [
                e for e in ops["log_collector"].events() if e.get("event") == "message_rejected"
            ]
            assert len(rejected) == len(corrupt)
            assert all("corrupt page on edgepub.edge.shop-x.logs" in e["reason"] for e in rejected)
            assert await log_pages.pages_pending(nc) == 0
        finally:
            await edge.close()
            await nc.close()

    asyncio.run(main())
