"""Request/reply across a real nats-server: each service answers only its own verbs (two
services side by side never race for a request), a handler's bug is ``internal`` and not
the caller's fault, and a call that nobody answers names the service."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest

from edgepub.services.stack import config
from edgepub.shared import bus, rpc, subjects
from edgepub.shared.errors import (
    EdgepubError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)
from support.servers import NatsServer

pytestmark = [pytest.mark.timeout(60), pytest.mark.no_blocking]


class Ping(msgspec.Struct, frozen=True):
    text: str


class Pong(msgspec.Struct, frozen=True):
    by: str
    user: str
    text: str


@pytest.fixture
def server(tmp_path: Path) -> Any:
    users = {u: config.UserSpec(password=f"pw-{u}") for u in ("alice", "svc")}
    srv = NatsServer(tmp_path / "nats", users=users).start()
    try:
        yield srv
    finally:
        srv.kill()


def _route(service: str) -> rpc.Route:
    async def handle(user: str, req: Ping) -> Pong:
        if req.text == "bug":
            raise ValueError("secret internals")
        if req.text == "missing":
            raise NotFoundError("no such thing")
        return Pong(by=service, user=user, text=req.text)

    return rpc.Route(Ping, handle)


async def _scenario(server: NatsServer) -> None:
    svc = await bus.connect(server.settings("svc"), name="svc")
    caller = await bus.connect(server.settings("alice"), name="alice")
    stop = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tg:
            for service in ("alpha", "beta"):
                tg.create_task(rpc.serve(svc, service, {f"{service}.ping": _route(service)}, stop))
            await asyncio.sleep(0.2)
            await svc.flush()

            async def call(verb: str, text: str, **kw: Any) -> Pong:
                return await rpc.call(
                    caller, subjects.request("alice", verb), Ping(text=text), Pong, **kw
                )

            # both services answer their own verb, every time (no race, no "unknown request")
            for _ in range(20):
                assert await call("alpha.ping", "a") == Pong(by="alpha", user="alice", text="a")
                assert await call("beta.ping", "b") == Pong(by="beta", user="alice", text="b")
            with pytest.raises(EdgepubError) as bug:
                await call("alpha.ping", "bug")
            assert bug.value.code == "internal" and "secret internals" not in str(bug.value)
            assert "alpha.ping" in str(bug.value)
            with pytest.raises(NotFoundError, match="no such thing"):
                await call("beta.ping", "missing")
            with pytest.raises(InvalidRequestError, match="unknown request"):
                await call("alpha.pong", "x")
            with pytest.raises(ServiceUnavailableError, match="no gamma service answers"):
                await call("gamma.ping", "x", timeout=2)
            stop.set()
    finally:
        await caller.close()
        await svc.close()


def test_each_service_answers_its_own_verbs(server: NatsServer) -> None:
    asyncio.run(_scenario(server))


def test_a_route_outside_the_service_is_refused_at_start(server: NatsServer) -> None:
    async def main() -> None:
        nc = await bus.connect(server.settings("svc"), name="svc")
        try:
            with pytest.raises(ValueError, match="do not belong to the alpha service"):
                await rpc.serve(nc, "alpha", {"beta.ping": _route("beta")}, asyncio.Event())
        finally:
            await nc.close()

    asyncio.run(main())
