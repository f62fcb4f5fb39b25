"""Edge identity across real processes: nats-server with the auth callout and its WebSocket
listener, the token service, the publish services and an SDK client. Edges connect exactly
as the agent does (tests/support/edge_bus.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from edgepub import Client
from edgepub.shared import rpc, subjects
from edgepub.shared.edge_messages import (
    EdgeInfo,
    EdgeList,
    EdgeListRequest,
    Heartbeat,
    HeartbeatReply,
    RenewReply,
    RenewRequest,
)
from edgepub.shared.errors import EdgeNameTakenError, NotFoundError
from edgepub.shared.schemas import encode
from support.edge_bus import add_edge, admin, connect_edge, join_token, new_seed, remove_edge
from support.servers import NatsServer
from support.services import OpsServices


@pytest.fixture
def publish_id(client: Client, model_file: Path) -> int:
    model = client.upload_model("rf", model_file)
    return client.build_pipeline("edge-id").add_model_step(model).publish(progress=False).id


def _refused(exc: BaseException) -> bool:
    """The server's own refusal of a connect (the callout said no), not any failure: a
    timeout or a dropped socket is not a refusal."""
    return isinstance(exc, nats.errors.Error) and "authorization violation" in str(exc).lower()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_join_then_reconnect_with_the_key_alone(nats_server: NatsServer, publish_id: int) -> None:
    async def main() -> None:
        nc = await admin(nats_server)
        added = await add_edge(nc, publish_id, "shop-1", ("eu",))
        token = join_token(added.bundle)
        seed = new_seed()
        edge = await connect_edge(nats_server, "shop-1", seed, token)
        reply = await rpc.call(
            edge, subjects.edge_subject("shop-1", "heartbeat"), Heartbeat(), HeartbeatReply
        )
        assert reply.assignment.publish_id == publish_id
        renewed = await rpc.call(
            edge, subjects.edge_subject("shop-1", "renew"), RenewRequest(), RenewReply
        )
        assert renewed.credential_expires_at is not None
        await edge.close()
        again = await connect_edge(nats_server, "shop-1", seed)  # no token: the key is enough
        await again.close()
        listed = await rpc.call(
            nc, subjects.request("admin", subjects.VERB_EDGE_LIST), EdgeListRequest(), EdgeList
        )
        (info,) = listed.edges
        assert info.name == "shop-1" and info.credential_state == "joined"
        assert info.connection == "online" and info.tags == ("eu",)
        assert info.spiffe_id.endswith(f"/ns/deployments/edge/{info.id}")
        await nc.close()

    run(main())


def test_a_used_token_is_refused_and_the_first_edge_is_unaffected(
    nats_server: NatsServer, publish_id: int
) -> None:
    async def main() -> None:
        nc = await admin(nats_server)
        token = join_token((await add_edge(nc, publish_id, "shop-2")).bundle)
        first = await connect_edge(nats_server, "shop-2", new_seed(), token)
        with pytest.raises(Exception) as refused:
            await connect_edge(nats_server, "shop-2", new_seed(), token)
        assert _refused(refused.value)
        await first.request(
            subjects.edge_subject("shop-2", "heartbeat"), encode(Heartbeat()), timeout=2
        )
        await first.close()
        await nc.close()

    run(main())


def test_ten_concurrent_joins_with_one_token_exactly_one_wins(
    nats_server: NatsServer, publish_id: int
) -> None:
    async def main() -> None:
        nc = await admin(nats_server)
        token = join_token((await add_edge(nc, publish_id, "shop-3")).bundle)
        results = await asyncio.gather(
            *(connect_edge(nats_server, "shop-3", new_seed(), token) for _ in range(10)),
            return_exceptions=True,
        )
        winners = [r for r in results if not isinstance(r, BaseException)]
        assert len(winners) == 1, results
        losers = [r for r in results if isinstance(r, BaseException)]
        assert len(losers) == 9 and all(_refused(r) for r in losers), losers
        for w in winners:
            await w.close()
        await nc.close()

    run(main())


def test_an_edge_may_not_touch_another_edges_subjects(
    nats_server: NatsServer, publish_id: int
) -> None:
    async def main() -> None:
        nc = await admin(nats_server)
        a = await connect_edge(
            nats_server,
            "edge-a",
            new_seed(),
            join_token((await add_edge(nc, publish_id, "edge-a")).bundle),
        )
        b = await connect_edge(
            nats_server,
            "edge-b",
            new_seed(),
            join_token((await add_edge(nc, publish_id, "edge-b")).bundle),
        )
        got: list[bytes] = []

        async def on_b(msg: nats.aio.msg.Msg) -> None:
            got.append(msg.data)

        await b.subscribe(subjects.control("edge-b"), cb=on_b)
        await b.flush()
        errors: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            errors.append(exc)

        a._error_cb = on_error  # collect the server's permission violations
        await a.subscribe(subjects.control("edge-b"))
        await a.publish(subjects.control("edge-b"), b"forged")
        await a.publish(subjects.edge_subject("edge-b", "heartbeat"), b"forged")
        await a.flush()
        await asyncio.sleep(0.3)
        text = " ".join(str(e) for e in errors)
        assert "permissions violation for subscription" in text.lower()
        assert "permissions violation for publish" in text.lower()
        assert got == []
        for c in (a, b, nc):
            await c.close()

    run(main())


def test_duplicate_name_and_unknown_remove_say_what_to_do(
    nats_server: NatsServer, publish_id: int
) -> None:
    async def main() -> None:
        nc = await admin(nats_server)
        await add_edge(nc, publish_id, "dup")
        with pytest.raises(EdgeNameTakenError, match=r"remove_edge\('dup'\)"):
            await add_edge(nc, publish_id, "dup")
        with pytest.raises(NotFoundError, match="no edge named 'ghost'"):
            await remove_edge(nc, "ghost")
        await remove_edge(nc, "dup")
        await add_edge(nc, publish_id, "dup")  # the name is free again
        await nc.close()

    run(main())


def test_removed_edge_is_cut_off_within_two_seconds_and_refused_after(
    nats_server: NatsServer, publish_id: int
) -> None:
    async def main() -> None:
        nc = await admin(nats_server)
        token = join_token((await add_edge(nc, publish_id, "gone")).bundle)
        seed = new_seed()
        closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()

        edge = await connect_edge(nats_server, "gone", seed, token, closed_cb=on_closed)
        loop = asyncio.get_running_loop()
        started = loop.time()
        removed = await remove_edge(nc, "gone")
        async with asyncio.timeout(2.0):
            await closed.wait()
        assert loop.time() - started < 2.0
        assert removed.disconnected == 1
        with pytest.raises(Exception) as refused:
            await connect_edge(nats_server, "gone", seed)
        assert _refused(refused.value)
        assert edge.is_closed
        await nc.close()

    run(main())


def test_one_token_replica_down_connects_keep_working(
    nats_server: NatsServer, ops: OpsServices, publish_id: int
) -> None:
    ops.start("token", replica=2)

    async def main(name: str) -> None:
        nc = await admin(nats_server)
        token = join_token((await add_edge(nc, publish_id, name)).bundle)
        edge = await connect_edge(nats_server, name, new_seed(), token)
        await edge.close()
        await nc.close()

    ops["token"].kill()
    for i in range(5):  # the queue group has one member left: every connect lands on it
        run(main(f"after-kill-{i}"))


def test_token_service_restart_keeps_edges_and_state(
    nats_server: NatsServer, ops: OpsServices, publish_id: int
) -> None:
    seed = new_seed()

    async def list_edges(nc: NATS) -> dict[str, EdgeInfo]:
        subject = subjects.request("admin", subjects.VERB_EDGE_LIST)
        listed = await rpc.call(nc, subject, EdgeListRequest(), EdgeList)
        return {e.name: e for e in listed.edges}

    async def main() -> None:
        nc = await admin(nats_server)
        token = join_token((await add_edge(nc, publish_id, "steady", ("eu",))).bundle)
        await add_edge(nc, publish_id, "waiting")  # never joined: pending across the restart
        edge = await connect_edge(nats_server, "steady", seed, token)  # no reconnects
        beat = subjects.edge_subject("steady", "heartbeat")
        await rpc.call(edge, beat, Heartbeat(), HeartbeatReply)
        before = await list_edges(nc)
        joins = ops["token"].count_events("edge_joined")  # its log spans both processes

        await asyncio.to_thread(ops["token"].restart, ready_event="auth_callout_serving")
        restarted = datetime.now(UTC)

        # the same connection, answered by the new process
        reply = await rpc.call(edge, beat, Heartbeat(), HeartbeatReply)
        assert edge.is_connected and reply.assignment.publish_id == publish_id
        after = await list_edges(nc)
        assert set(after) == {"steady", "waiting"}
        steady, waiting = after["steady"], after["waiting"]
        assert (steady.id, steady.tags, steady.spiffe_id) == (
            before["steady"].id,
            ("eu",),
            before["steady"].spiffe_id,
        )
        assert steady.credential_state == "joined" and steady.connection == "online"
        assert steady.last_seen is not None and steady.last_seen >= restarted - timedelta(seconds=1)
        assert steady.publish_id == publish_id
        assert (waiting.credential_state, waiting.connection) == ("pending", "never")
        assert waiting.id == before["waiting"].id
        await edge.close()
        again = await connect_edge(nats_server, "steady", seed)  # the key alone, still
        await again.close()
        assert ops["token"].count_events("edge_joined") == joins  # no join after the restart
        await nc.close()

    run(main())


def test_expired_token_and_idle_credential_are_refused(
    nats_server: NatsServer, ops: OpsServices, publish_id: int
) -> None:
    ops.start("token", env={"EDGEPUB_JOIN_TOKEN_TTL_S": "1", "EDGEPUB_CREDENTIAL_IDLE_S": "2"})

    async def main() -> None:
        nc = await admin(nats_server)
        late = join_token((await add_edge(nc, publish_id, "late")).bundle)
        idle = join_token((await add_edge(nc, publish_id, "idle")).bundle)
        seed = new_seed()
        edge = await connect_edge(nats_server, "idle", seed, idle)
        await edge.close()
        await asyncio.sleep(2.2)  # the periods under test: past both limits
        for name, s, token in (("late", new_seed(), late), ("idle", seed, None)):
            with pytest.raises(Exception) as refused:
                await connect_edge(nats_server, name, s, token)
            assert _refused(refused.value)
        await nc.close()

    run(main())
    logs = ops["token"].log_text()
    assert "join token expired" in logs and "credential expired" in logs
