"""The token service: edges, join tokens and edge credentials; the NATS auth callout.

Run: ``python -m edgepub.services.token`` (env: EDGEPUB_NATS_URL/USER/PASSWORD, the two
nkey seeds EDGEPUB_AUTH_ISSUER_SEED and EDGEPUB_SYSTEM_USER_SEED, EDGEPUB_OPSCENTER_HOST;
periods: services/token/settings.py). Run two or more: they share every queue group.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from edgepub.shared import bus, rpc, service, subjects
from edgepub.shared.edge_messages import (
    EdgeAddRequest,
    EdgeListRequest,
    EdgeMoveRequest,
    EdgeRemoveRequest,
    Heartbeat,
    RenewRequest,
)
from edgepub.shared.errors import InvalidRequestError
from edgepub.shared.runner import Consumer, ConsumerSpec, Delivery
from edgepub.shared.schemas import PublishRecord, decoder
from edgepub.shared.server_clock import REFRESH_S, ServerClock
from edgepub.shared.settings import Env, NatsSettings
from edgepub.shared.transient import retry_transient

from .callout import Callout, serve_callout
from .handlers import TokenService
from .settings import TokenSettings
from .state import EdgeState

log = structlog.get_logger("edgepub.token")


def routes(svc: TokenService) -> dict[str, rpc.Route]:
    return {
        subjects.VERB_EDGE_ADD: rpc.Route(EdgeAddRequest, svc.add_edge),
        subjects.VERB_EDGE_REMOVE: rpc.Route(EdgeRemoveRequest, svc.remove_edge),
        subjects.VERB_EDGE_LIST: rpc.Route(EdgeListRequest, svc.list_edges),
        subjects.VERB_EDGE_MOVE: rpc.Route(EdgeMoveRequest, svc.move_edges),
    }


def edge_routes(svc: TokenService) -> dict[str, rpc.Route]:
    return {
        subjects.EDGE_HEARTBEAT: rpc.Route(Heartbeat, svc.heartbeat),
        subjects.EDGE_RENEW: rpc.Route(RenewRequest, svc.renew),
    }


async def serve_edges(nc: NATS, svc: TokenService, stop: asyncio.Event) -> None:
    """Requests edges send about themselves; the subject names the edge (the broker lets
    only that edge publish it)."""
    table = edge_routes(svc)

    def resolve(subject: str) -> tuple[str, str, rpc.Route]:
        kind = subject.rsplit(".", 1)[-1]
        route = table.get(kind)
        if route is None:
            raise InvalidRequestError(f"unknown edge request {kind!r}")
        return subjects.edge_of(subject), kind, route

    wildcards = tuple(subjects.edge_wildcard(kind) for kind in table)
    await rpc.serve_subjects(nc, wildcards, subjects.request_queue("edge"), resolve, stop)


def replaces_spec(env: Env) -> ConsumerSpec:
    """Publish records as they change; a Published one that replaces others moves edges."""
    return ConsumerSpec(
        stream=subjects.EVENTS_STREAM,
        durable=subjects.CONSUMER_TOKEN_REPLACES,
        filter_subjects=(subjects.PUBLISH_EVENTS_ALL,),
        ack_wait_s=env.number("EDGEPUB_ACK_WAIT_S", 30.0),
        concurrency=1,
        batch=16,
        max_deliver=20,
    )


async def body(nc: NATS, js: JetStreamContext, stop: asyncio.Event) -> None:
    settings = TokenSettings.from_env()
    if not await bus.wait_for_stream(js, f"KV_{subjects.KV_EDGES}", stop):
        return
    if not await bus.wait_for_stream(js, subjects.EVENTS_STREAM, stop):
        return
    state = await retry_transient(lambda: EdgeState.open(js), what="the edges bucket")
    sys_nc = await bus.connect(
        NatsSettings(url=NatsSettings.from_env().url),
        name="token-sys",
        nkey_seed=settings.system_seed,
        inbox_user="token-sys",
        jetstream=False,
        wait_s=30.0,
    )
    # expiry by the broker's clock (it checks each JWT's exp with it), whatever this node's
    server_clock = ServerClock(nc, f"KV_{subjects.KV_EDGES}")
    await server_clock.refresh(force=True)

    def now() -> datetime:
        return datetime.fromtimestamp(server_clock.now(), UTC)

    svc = TokenService(nc=nc, sys_nc=sys_nc, state=state, settings=settings, clock=now)

    async def on_publish(record: PublishRecord, delivery: Delivery) -> None:
        if record.status == "Published" and record.replaces:
            await svc.move_to(record)

    replaces = Consumer(js, replaces_spec(Env()), decoder(PublishRecord).decode, on_publish)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(rpc.serve(nc, subjects.SERVICE_TOKEN, routes(svc), stop))
            tg.create_task(serve_edges(nc, svc, stop))
            tg.create_task(replaces.run(stop))
            tg.create_task(_keep_measuring(server_clock, stop))
            # last: tests and `edgepub up` take "auth_callout_serving" as ready
            callout = Callout(nc=nc, state=state, settings=settings, clock=now)
            tg.create_task(serve_callout(nc, callout, stop))
    finally:
        with contextlib.suppress(Exception):
            await sys_nc.close()


async def _keep_measuring(clock: ServerClock, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await clock.refresh()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REFRESH_S):
                await stop.wait()


def main() -> None:
    service.run("token", body)


if __name__ == "__main__":
    main()
