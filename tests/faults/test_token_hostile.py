"""The token service against clients that do not play by the rules, across real processes
(nats-server with the auth callout and its WebSocket listener, the token service, the
publish services): hostile bodies on every verb the SDK user may send, hostile bodies from a
joined edge on its own subjects, a flood of connects nobody may make. Each test checks both
ends: what the caller was told, and that the service is still up, answers a good request,
and wrote no traceback for what a client sent."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from edgepub import Client
from edgepub.shared import rpc, subjects
from edgepub.shared.edge_messages import (
    EdgeAdded,
    EdgeList,
    EdgeListRequest,
    EdgeMoved,
    EdgeRemoved,
    Heartbeat,
    HeartbeatReply,
    RenewReply,
    RenewRequest,
)
from edgepub.shared.schemas import ErrorReply, decode, encode
from support.edge_bus import add_edge, admin, connect_edge, join_token, new_seed
from support.servers import NatsServer
from support.services import OpsServices

pytestmark = pytest.mark.timeout(300)

SEED = int(os.environ.get("EDGEPUB_FUZZ_SEED", random.randrange(2**32)))
REFUSALS = {"invalid_request", "not_found"}
DEEP = b"\x91" * 100_000 + b"\xc0"  # an array in an array ... 100,000 deep


@pytest.fixture
def rng() -> Iterator[random.Random]:
    print(f"fuzz seed {SEED} (EDGEPUB_FUZZ_SEED={SEED} repeats it)")
    yield random.Random(SEED)


@pytest.fixture
def publish_id(client: Client, model_file: Path) -> int:
    model = client.upload_model("rf", model_file)
    return client.build_pipeline("hostile").add_model_step(model).publish(progress=False).id


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def mp(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)


def hostile_bodies(rng: random.Random, publish_id: int) -> list[bytes]:
    """Bodies no SDK sends: not msgpack, the wrong types, values past every bound."""
    names = [
        "",
        "a.b",
        "*",
        ">",
        "shop-*",
        "shop.>",
        "Shop",
        "-a",
        "a-",
        "a" * 64,
        "日本",
        "shöp",
        "a b",
        "a\nb",
        "$SYS",
        "_INBOX",
        "a\x00b",
        "a" * 100_000,
    ]
    ids = [0, -1, 2**63, 2**64 - 1, -(2**63), 2.0**70, 1.5, "1", None, True, [1]]
    bodies = [
        b"",
        b"\xc1",
        b"\xff" * 64,
        b"{}",
        b'{"name":"x"}',
        mp(None),
        mp(1),
        mp([]),
        mp("x"),
        mp({}),
        mp({1: 2}),
        mp({"name": ["x"]}),
        mp({"tags": "eu"}),
    ]
    bodies += [mp({"publish_id": publish_id, "name": n}) for n in names]
    bodies += [mp({"name": n}) for n in names]
    bodies += [mp({"publish_id": i, "name": "ok-name"}) for i in ids]
    bodies += [mp({"publish_id": i}) for i in ids]
    bodies += [mp({"pipeline_name": n}) for n in names if n != ""]
    bodies += [
        mp({"publish_id": publish_id, "name": "tagged", "tags": tags})
        for tags in (
            ["t"] * 65,
            ["x" * 129],
            [""],
            ["a\x00"],
            ["a\nb"],
            [1],
            "eu",
            {"a": 1},
            ["x" * 1_000_000],
        )
    ]
    bodies += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300))) for _ in range(40)]
    return bodies


def error_code(reply: Any) -> str | None:
    if reply.headers and subjects.HEADER_ERROR_CODE in reply.headers:
        err = decode(ErrorReply, reply.data)
        assert err.code == reply.headers[subjects.HEADER_ERROR_CODE]
        return err.code
    return None


async def refused(nc: NATS, subject: str, body: bytes, answer: type[Any] | None = None) -> str:
    """Send ``body`` raw; the answer is a refusal naming its code or, where the body is a
    request after all (a list takes ``{}``), a well-formed ``answer``."""
    reply = await nc.request(subject, body, timeout=10)
    code = error_code(reply)
    if code is None and answer is not None:
        decode(answer, reply.data)
        return "answered"
    assert code in REFUSALS, (subject, body[:80], code, reply.data[:200])
    return code


def assert_service_unhurt(ops: OpsServices) -> None:
    token = ops["token"]
    assert token.running(), token.log_text()[-3000:]
    text = token.log_text()
    assert "Traceback" not in text, text[text.index("Traceback") - 2000 :][:5000]
    assert token.count_events("request_failed") == 0


async def still_answers(nc: NATS) -> EdgeList:
    return await rpc.call(
        nc, subjects.request("admin", subjects.VERB_EDGE_LIST), EdgeListRequest(), EdgeList
    )


VERBS = {
    subjects.VERB_EDGE_ADD: EdgeAdded,
    subjects.VERB_EDGE_REMOVE: EdgeRemoved,
    subjects.VERB_EDGE_LIST: EdgeList,
    subjects.VERB_EDGE_MOVE: EdgeMoved,
}


def test_hostile_bodies_on_every_verb_are_refused_and_the_service_carries_on(
    nats_server: NatsServer, ops: OpsServices, publish_id: int, rng: random.Random
) -> None:
    bodies = hostile_bodies(rng, publish_id)

    async def main() -> None:
        nc = await admin(nats_server)
        await add_edge(nc, publish_id, "keeper", ("eu",))
        for verb, answer in VERBS.items():
            subject = subjects.request("admin", verb)
            codes = [await refused(nc, subject, body, answer) for body in bodies]
            assert codes.count("invalid_request") > len(codes) // 2, (verb, codes)
        # verbs the service does not have, on its own subjects
        for verb in ("token.edge.bogus", "token.edge", "token.edge.add.more", "token.x"):
            await refused(nc, subjects.request("admin", verb), encode(EdgeListRequest()))
        listed = await still_answers(nc)
        assert [e.name for e in listed.edges] == ["keeper"]  # nothing added, nothing removed
        assert listed.edges[0].tags == ("eu",)
        await add_edge(nc, publish_id, "after-the-storm")
        await nc.close()

    run(main())
    assert_service_unhurt(ops)


def test_deeply_nested_bodies_are_an_invalid_request(
    nats_server: NatsServer, ops: OpsServices, publish_id: int
) -> None:
    """100,000 levels, in an unknown field and in a known one. msgspec refuses past its
    depth with RecursionError, which the shared request loop does not translate."""

    async def main() -> dict[tuple[str, str], str | None]:
        nc = await admin(nats_server)
        deep_known = b"\x81\xa4name" + DEEP
        deep_unknown = b"\x82\xa4name\xa2ok\xa4junk" + DEEP
        codes: dict[tuple[str, str], str | None] = {}
        for verb in VERBS:
            for label, body in (("known", deep_known), ("unknown", deep_unknown)):
                reply = await nc.request(subjects.request("admin", verb), body, timeout=10)
                codes[(verb, label)] = error_code(reply)
        await still_answers(nc)
        await nc.close()
        return codes

    codes = run(main())
    assert ops["token"].running()
    bad = {k: v for k, v in codes.items() if v not in REFUSALS}
    assert not bad, f"deep nesting must be invalid_request, never internal: {bad}"
    assert_service_unhurt(ops)


def test_hostile_bodies_from_a_joined_edge_on_its_own_subjects(
    nats_server: NatsServer, ops: OpsServices, publish_id: int, rng: random.Random
) -> None:
    bodies = [
        b"",
        b"\xc1",
        b"\xff" * 32,
        mp(None),
        mp([]),
        mp("serving"),
        mp({"status": 1}),
        mp({"status": "x" * 257}),
        mp({"status": "x" * 1_000_000}),
        mp({"running_publish_id": "7"}),
        mp({"running_publish_id": 2.0**70}),
        mp({"running_version": ["v"]}),
        mp({"backlog": "many"}),
        mp({"agent_version": {"a": 1}}),
        mp({"v": "one"}),
        *(bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200))) for _ in range(30)),
    ]

    async def main() -> None:
        nc = await admin(nats_server)
        seed = new_seed()
        token = join_token((await add_edge(nc, publish_id, "rowdy")).bundle)
        edge = await connect_edge(nats_server, "rowdy", seed, token)
        beat, renew = (subjects.edge_subject("rowdy", k) for k in ("heartbeat", "renew"))
        for subject, answer in ((beat, HeartbeatReply), (renew, RenewReply)):
            codes = [await refused(edge, subject, body, answer) for body in bodies]
            assert "invalid_request" in codes  # a renewal takes any map: its fields are new
        # an edge's own subjects the token service does not answer: nobody replies
        with pytest.raises(Exception, match=r"(?i)no responders|timeout"):
            await edge.request(subjects.edge_subject("rowdy", "bogus"), b"x", timeout=1)
        # the edge is still well and may go on as before
        reply = await rpc.call(edge, beat, Heartbeat(agent_version="t"), HeartbeatReply)
        assert reply.assignment.publish_id == publish_id
        assert (await rpc.call(edge, renew, RenewRequest(), RenewReply)).credential_expires_at
        listed = await still_answers(nc)
        (info,) = listed.edges
        assert info.agent_version == "t" and info.credential_state == "joined"
        await edge.close()
        await nc.close()

    run(main())
    assert_service_unhurt(ops)


async def connect_as(server: NatsServer, name: str, token: str | None) -> NATS:
    """connect_edge for any name, even one no subject could hold (its inbox is fixed)."""
    return await connect_edge(server, name, new_seed(), token, inbox_prefix="_INBOX.flood")


def test_a_flood_of_connects_nobody_may_make_is_refused_and_the_service_carries_on(
    nats_server: NatsServer, ops: OpsServices, publish_id: int, rng: random.Random
) -> None:
    """200 connects at once: wrong tokens for a pending edge, a joined edge's name with other
    keys, names never added, names no edge may have."""

    attempts: list[tuple[str, str | None]] = []

    async def main() -> None:
        nc = await admin(nats_server)
        pending_token = join_token((await add_edge(nc, publish_id, "waiting")).bundle)
        seed = new_seed()
        token = join_token((await add_edge(nc, publish_id, "joined")).bundle)
        first = await connect_edge(nats_server, "joined", seed, token)
        odd = ["a.b", "日本", "y" * 3000, "x" * 5000, ">", "shop *"]
        for i in range(200):
            kind = i % 5
            if kind == 0:
                attempts.append(("waiting", f"{pending_token[:-1]}{rng.randrange(10)}x"))
            elif kind == 1:
                attempts.append(("joined", token))  # the used token, another key
            elif kind == 2:
                attempts.append(("joined", None))
            elif kind == 3:
                attempts.append((f"ghost-{i}", pending_token))
            else:
                attempts.append((odd[(i // 5) % len(odd)], pending_token))
        results = await asyncio.gather(
            *(connect_as(nats_server, name, tok) for name, tok in attempts),
            return_exceptions=True,
        )
        let_in = [r for r in results if not isinstance(r, BaseException)]
        for conn in let_in:
            await conn.close()
        assert let_in == [], f"{len(let_in)} connects got in"
        assert not [r for r in results if isinstance(r, ValueError | TypeError)], results
        # the edge that joined is unaffected, the pending one can still join
        await first.request(subjects.edge_subject("joined", "heartbeat"), encode(Heartbeat()))
        late = await connect_edge(nats_server, "waiting", new_seed(), pending_token)
        await late.close()
        again = await connect_edge(nats_server, "joined", seed)
        await again.close()
        await first.close()
        states = {e.name: e.credential_state for e in (await still_answers(nc)).edges}
        assert states == {"waiting": "joined", "joined": "joined"}
        await nc.close()

    run(main())
    assert_service_unhurt(ops)
    text = ops["token"].log_text()
    assert "auth_failed" not in text  # every refusal was a decision, not a failure
    # every connect but the 5000-character names (nats-server refuses a CONNECT past its
    # 4 KiB control line itself) was refused by a decision on its record
    decided = sum(1 for name, _ in attempts if len(name) < 4000)
    assert ops["token"].count_events("edge_refused") == decided
