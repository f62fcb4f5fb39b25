"""Least privilege on the bus, asserted on a real nats-server configured as ``edgepub up``
configures it: as the SDK user and as each service, what it does not own is refused by the
server (the -ERR names the subject, the call gets no answer) and nothing changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from edgepub.shared import bus, objects, subjects
from support.servers import NatsServer

pytestmark = [pytest.mark.timeout(120), pytest.mark.no_blocking]

REFUSAL_WAIT_S = 1.5


class Probe:
    """One user's connection that records the server's permission refusals."""

    def __init__(self, nc: NATS, errors: list[str]) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=REFUSAL_WAIT_S)
        self.errors = errors

    def refusals(self, subject: str) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e and subject.lower() in e]

    async def refused(self, subject: str, action: Callable[[], Awaitable[Any]]) -> None:
        """``action`` fails (no answer: the server dropped it) and the server said why."""
        with pytest.raises((nats.errors.Error, TimeoutError)):
            await action()
        await self.nc.flush()
        assert self.refusals(subject), f"no permissions violation for {subject}: {self.errors}"

    async def publish_refused(self, subject: str, data: bytes = b"x") -> None:
        await self.nc.publish(subject, data)
        await self.nc.flush()
        await self.nc.flush()  # the -ERR arrives before the PONG of the next PING
        assert self.refusals(subject), f"publish to {subject} was not refused: {self.errors}"

    async def subscribe_refused(self, subject: str) -> list[bytes]:
        got: list[bytes] = []

        async def on_msg(msg: Any) -> None:
            got.append(msg.data)

        await self.nc.subscribe(subject, cb=on_msg)
        await self.nc.flush()
        await self.nc.flush()
        assert self.refusals(subject), f"subscribe to {subject} was not refused: {self.errors}"
        return got


async def _probe(server: NatsServer, user: str) -> Probe:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    settings = server.settings(user)
    nc = await nats.connect(
        settings.url,
        user=settings.user,
        password=settings.password,
        error_cb=on_error,
        inbox_prefix=subjects.inbox_prefix(user),
        allow_reconnect=False,
    )
    return Probe(nc, errors)


async def _owner(server: NatsServer) -> NATS:
    """The publish service's user: creates what it owns, and holds one publish record and
    one verified model entry for the tests to try to damage."""
    nc = await bus.connect(server.settings("publish"), name="owner")
    js = nc.jetstream()
    await bus.ensure_all(js)
    kv = await js.key_value(subjects.KV_PUBLISHES)
    await kv.put("1", b"record")
    await objects.write(
        js, subjects.OBJECT_STORE_MODELS, "m1", objects.new_nuid(), _one(b"model-bytes")
    )
    return nc


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _with_owner(server: NatsServer, scenario: Callable[[NATS], Awaitable[None]]) -> None:
    """Run ``scenario`` against a provisioned bus, then check nothing was damaged."""

    async def main() -> None:
        owner = await _owner(server)
        try:
            await scenario(owner)
            await _intact(owner)
        finally:
            await owner.close()

    asyncio.run(main())


async def _intact(owner: NATS) -> None:
    """What the tests tried to damage is all still there."""
    js = owner.jetstream()
    for stream in ("KV_edgepub_publishes", subjects.WORK_STREAM, subjects.EVENTS_STREAM):
        await js.stream_info(stream)
    assert (await (await js.key_value(subjects.KV_PUBLISHES)).get("1")).value == b"record"
    assert await _read(owner, subjects.OBJECT_STORE_MODELS, "m1") == b"model-bytes"


async def _read(nc: NATS, bucket: str, name: str) -> bytes:
    js = nc.jetstream()
    info = await (await js.object_store(bucket)).get_info(name)
    return b"".join([chunk async for chunk in objects.read(js, info)])


def test_sdk_user_cannot_delete_purge_overwrite_or_eavesdrop(nats_server: NatsServer) -> None:
    async def scenario(owner: NATS) -> None:
        sdk = await _probe(nats_server, "admin")
        try:
            await sdk.refused(
                "$JS.API.STREAM.DELETE.KV_edgepub_publishes",
                lambda: sdk.js.delete_stream("KV_edgepub_publishes"),
            )
            await sdk.refused(
                "$JS.API.STREAM.PURGE.KV_edgepub_publishes",
                lambda: sdk.js.purge_stream("KV_edgepub_publishes"),
            )
            await sdk.refused(
                "$JS.API.STREAM.DELETE.OBJ_edgepub_model_files",
                lambda: sdk.js.delete_stream("OBJ_edgepub_model_files"),
            )
            # a stream capturing requests or inboxes would swallow everyone's replies
            for capture in ("edgepub.req.>", "_INBOX.>"):
                await sdk.refused(
                    "$JS.API.STREAM.CREATE.MINE",
                    lambda c=capture: sdk.js.add_stream(StreamConfig(name="MINE", subjects=[c])),
                )
            await sdk.publish_refused(objects.meta_subject(subjects.OBJECT_STORE_MODELS, "m1"))
            await sdk.publish_refused(objects.chunk_subject(subjects.OBJECT_STORE_MODELS, "n1"))
            await sdk.publish_refused(f"$KV.{subjects.KV_PUBLISHES}.1", b"forged")
            await sdk.publish_refused(subjects.PUBLISH_PUSHED)
            await sdk.refused(
                "$JS.API.STREAM.MSG.GET.KV_edgepub_publishes",
                lambda: sdk.js.get_last_msg("KV_edgepub_publishes", "$KV.edgepub_publishes.1"),
            )
            # another user's requests and replies, and the whole bus
            assert await sdk.subscribe_refused("_INBOX.publish.>") == []
            assert await sdk.subscribe_refused(">") == []
            await sdk.publish_refused(subjects.request("mallory", subjects.VERB_PUBLISH_LIST))
        finally:
            await sdk.nc.close()

    _with_owner(nats_server, scenario)


def test_sdk_user_keeps_what_it_needs(nats_server: NatsServer) -> None:
    async def scenario(owner: NATS) -> None:
        """Uploading into the upload area and following publish events still work."""
        sdk = await _probe(nats_server, "admin")
        try:

            async def one() -> AsyncIterator[bytes]:
                yield b"abc"

            name = objects.upload_name("a" * 64)
            await objects.write(
                sdk.js, subjects.OBJECT_STORE_UPLOADS, name, objects.new_nuid(), one()
            )
            await owner.jetstream().publish(subjects.publish_events(7), b"event")
            sub = await sdk.js.subscribe(
                subjects.publish_events(7), stream=subjects.EVENTS_STREAM, ordered_consumer=True
            )
            assert (await sub.next_msg(timeout=5)).data == b"event"
            await sub.unsubscribe()
            assert sdk.errors == []
        finally:
            await sdk.nc.close()
        assert await _read(owner, subjects.OBJECT_STORE_UPLOADS, name) == b"abc"

    _with_owner(nats_server, scenario)


def test_registry_push_reads_models_but_owns_nothing_else(nats_server: NatsServer) -> None:
    async def scenario(owner: NATS) -> None:
        push = await _probe(nats_server, "registry-push")
        try:
            store = await push.js.object_store(subjects.OBJECT_STORE_MODELS)
            assert (await store.get_info("m1")).size == len(b"model-bytes")
            await push.refused(
                "$JS.API.STREAM.DELETE.EDGEPUB_WORK", lambda: push.js.delete_stream("EDGEPUB_WORK")
            )
            await push.refused(
                "$JS.API.STREAM.INFO.KV_edgepub_publishes",
                lambda: push.js.key_value(subjects.KV_PUBLISHES),
            )
            await push.publish_refused(subjects.PUBLISH_REQUESTED)
            await push.publish_refused(subjects.publish_events(1))
            await push.publish_refused(objects.meta_subject(subjects.OBJECT_STORE_MODELS, "m1"))
            await push.refused(
                "$JS.API.CONSUMER.DURABLE.CREATE.EDGEPUB_WORK.publish-outcomes",
                lambda: push.js._jsm._api_request(
                    "$JS.API.CONSUMER.DURABLE.CREATE.EDGEPUB_WORK.publish-outcomes",
                    b"{}",
                    timeout=REFUSAL_WAIT_S,
                ),
            )
            assert await push.subscribe_refused("edgepub.req.*.publish.>") == []
            assert await push.subscribe_refused("_INBOX.admin.>") == []
        finally:
            await push.nc.close()

    _with_owner(nats_server, scenario)


def test_publish_service_cannot_delete_or_forge_push_outcomes(nats_server: NatsServer) -> None:
    async def scenario(owner: NATS) -> None:
        pub = await _probe(nats_server, "publish")
        try:
            await pub.refused(
                "$JS.API.STREAM.DELETE.KV_edgepub_publishes",
                lambda: pub.js.delete_stream("KV_edgepub_publishes"),
            )
            await pub.refused(
                "$JS.API.STREAM.PURGE.KV_edgepub_publishes",
                lambda: pub.js.purge_stream("KV_edgepub_publishes"),
            )
            await pub.refused(
                "$JS.API.STREAM.CREATE.MINE",
                lambda: pub.js.add_stream(StreamConfig(name="MINE", subjects=["_INBOX.>"])),
            )
            await pub.publish_refused(subjects.PUBLISH_PUSHED)
            assert await pub.subscribe_refused(">") == []
            assert await pub.subscribe_refused("_INBOX.admin.>") == []
        finally:
            await pub.nc.close()

    _with_owner(nats_server, scenario)


@pytest.mark.parametrize("user", ["token"])
def test_users_of_services_still_to_come_can_do_nothing(nats_server: NatsServer, user: str) -> None:
    async def scenario(owner: NATS) -> None:
        probe = await _probe(nats_server, user)
        try:
            await probe.refused(
                "$JS.API.STREAM.INFO.EDGEPUB_WORK", lambda: probe.js.stream_info("EDGEPUB_WORK")
            )
            await probe.publish_refused(subjects.PUBLISH_REQUESTED)
            assert await probe.subscribe_refused("edgepub.>") == []
        finally:
            await probe.nc.close()

    _with_owner(nats_server, scenario)


def test_dashboard_reads_what_it_shows_and_writes_nothing(nats_server: NatsServer) -> None:
    async def scenario(owner: NATS) -> None:
        dash = await _probe(nats_server, "dashboard")
        try:
            # what it uses: get and watch the edges and publishes buckets, read the log
            publishes = await dash.js.key_value(subjects.KV_PUBLISHES)
            assert (await publishes.get("1")).value == b"record"
            watcher = await publishes.watch(">")
            assert (await watcher.updates(timeout=5)).key == "1"
            await watcher.stop()
            edges = await dash.js.key_value(subjects.KV_EDGES)
            with pytest.raises(nats.js.errors.KeyNotFoundError):
                await edges.get("edge.nobody")
            await dash.js.stream_info(subjects.LOGS_STREAM)
            sub = await dash.js.subscribe(
                f"{subjects.LOGS_ROOT}.>", stream=subjects.LOGS_STREAM, ordered_consumer=True
            )
            await sub.unsubscribe()
            assert dash.errors == []
            # and nothing more: no write anywhere, no request to a service, no other data
            await dash.publish_refused(f"$KV.{subjects.KV_EDGES}.edge.forged", b"forged")
            await dash.publish_refused(f"$KV.{subjects.KV_PUBLISHES}.1", b"forged")
            await dash.publish_refused(subjects.pipeline_log(1, "p", "e1"), b"{}")
            await dash.publish_refused(subjects.edge_subject("e1", subjects.EDGE_LOGS))
            await dash.publish_refused(f"{subjects.REQUEST_ROOT}.dashboard.publish.x")
            await dash.refused(
                "$JS.API.STREAM.INFO.EDGEPUB_WORK", lambda: dash.js.stream_info("EDGEPUB_WORK")
            )
            await dash.refused(
                f"$JS.API.STREAM.DELETE.{subjects.LOGS_STREAM}",
                lambda: dash.js.delete_stream(subjects.LOGS_STREAM),
            )
            await dash.refused(
                f"$JS.API.STREAM.INFO.OBJ_{subjects.OBJECT_STORE_MODELS}",
                lambda: dash.js.object_store(subjects.OBJECT_STORE_MODELS),
            )
            assert await dash.subscribe_refused(">") == []
        finally:
            await dash.nc.close()

    _with_owner(nats_server, scenario)


def test_log_collector_appends_logs_but_writes_no_page_and_reads_no_bucket(
    nats_server: NatsServer,
) -> None:
    async def scenario(owner: NATS) -> None:
        col = await _probe(nats_server, "log-collector")
        try:
            # what it uses: its durable on the pages, appends, watermark reads (direct get)
            await col.js.add_consumer(
                subjects.PAGES_STREAM,
                durable_name=subjects.CONSUMER_LOG_COLLECTOR,
                filter_subject=subjects.PAGES_SUBJECTS,
            )
            await col.js.pull_subscribe_bind(
                subjects.CONSUMER_LOG_COLLECTOR, stream=subjects.PAGES_STREAM
            )
            ack = await col.js.publish(subjects.pipeline_log(1, "p", "e1"), b"{}")
            assert ack.stream == subjects.LOGS_STREAM
            await col.js.publish(subjects.watermark("e1"), b'{"edge":"e1","last_seq":1}')
            got = await col.js.get_last_msg(
                subjects.LOGS_STREAM, subjects.watermark("e1"), direct=True
            )
            assert got.data == b'{"edge":"e1","last_seq":1}'
            # ... and pages read ahead on an edge's subject (a direct get consumes nothing;
            # the server answers "none there", not a permissions violation)
            with pytest.raises(NotFoundError):
                await col.js.get_msg(
                    subjects.PAGES_STREAM,
                    seq=1,
                    subject=subjects.edge_subject("e1", subjects.EDGE_LOGS),
                    next=True,
                    direct=True,
                )
            assert col.errors == []
            # and nothing more
            await col.refused(
                "$JS.API.DIRECT.GET.KV_edgepub_edges",
                lambda: col.js.get_msg("KV_edgepub_edges", seq=1, direct=True),
            )
            await col.publish_refused(subjects.edge_subject("e1", subjects.EDGE_LOGS))
            await col.publish_refused(subjects.PUBLISH_REQUESTED)
            await col.publish_refused(f"$KV.{subjects.KV_EDGES}.e1", b"forged")
            for stream in (subjects.LOGS_STREAM, subjects.PAGES_STREAM):
                await col.refused(
                    f"$JS.API.STREAM.DELETE.{stream}", lambda s=stream: col.js.delete_stream(s)
                )
                await col.refused(
                    f"$JS.API.STREAM.PURGE.{stream}", lambda s=stream: col.js.purge_stream(s)
                )
            await col.refused(
                f"$JS.API.STREAM.UPDATE.{subjects.LOGS_STREAM}",
                lambda: col.js.update_stream(
                    StreamConfig(name=subjects.LOGS_STREAM, subjects=["edgepub.logs.>"])
                ),
            )
            await col.refused(
                "$JS.API.STREAM.INFO.KV_edgepub_edges", lambda: col.js.key_value("edgepub_edges")
            )
            await col.refused(
                "$JS.API.STREAM.MSG.GET.KV_edgepub_publishes",
                lambda: col.js.get_last_msg("KV_edgepub_publishes", "$KV.edgepub_publishes.1"),
            )
            await col.refused(
                "$JS.API.CONSUMER.DURABLE.CREATE.EDGEPUB_EDGE_PAGES.mine",
                lambda: col.js._jsm._api_request(
                    "$JS.API.CONSUMER.DURABLE.CREATE.EDGEPUB_EDGE_PAGES.mine",
                    b"{}",
                    timeout=REFUSAL_WAIT_S,
                ),
            )
            assert await col.subscribe_refused("edgepub.edge.>") == []
            assert await col.subscribe_refused("_INBOX.admin.>") == []
        finally:
            await col.nc.close()

    _with_owner(nats_server, scenario)


def test_a_reply_to_one_user_never_reaches_another(nats_server: NatsServer) -> None:
    async def scenario(owner: NATS) -> None:
        """Replies travel to private inboxes: even a user that subscribes to everything it may
        sees none of another user's replies."""
        js = owner.jetstream()
        answered = asyncio.Event()

        async def answer(msg: Any) -> None:
            await msg.respond(b"secret-reply")
            answered.set()

        responder = await owner.subscribe(
            subjects.request_wildcard(subjects.SERVICE_PUBLISH), cb=answer
        )
        await js.stream_info(subjects.WORK_STREAM)
        sdk = await _probe(nats_server, "admin")
        spy = await _probe(nats_server, "publish")
        seen: list[bytes] = []

        async def on_msg(msg: Any) -> None:
            seen.append(msg.data)

        try:
            await spy.nc.subscribe(f"{subjects.inbox_prefix('publish')}.>", cb=on_msg)
            reply = await sdk.nc.request(
                subjects.request("admin", subjects.VERB_PUBLISH_LIST), b"", timeout=5
            )
            assert reply.data == b"secret-reply"
            await spy.nc.flush()
            assert seen == []
        finally:
            await responder.unsubscribe()
            await sdk.nc.close()
            await spy.nc.close()

    _with_owner(nats_server, scenario)
