"""Small NATS checks for tests."""

from __future__ import annotations

import asyncio
import json

import nats
from nats.aio.msg import Msg

from edgepub.services.stack.permissions import SYSTEM_USER
from edgepub.shared import bus, subjects
from edgepub.shared.settings import NatsSettings

from .servers import NatsCluster, NatsServer


async def publish_allowed(url: str, user: str, password: str, subject: str) -> bool:
    """Publish then round-trip twice; False if the server reported a permissions violation."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await nats.connect(url, user=user, password=password, error_cb=on_error)
    try:
        await nc.publish(subject, b"x")
        await nc.flush()
        # The -ERR for a violation arrives before the PONG of the next PING: flush again.
        await nc.flush()
    finally:
        await nc.close()
    return not any("permissions violation" in str(e).lower() for e in errors)


async def connections_named(server: NatsServer | NatsCluster, name: str) -> dict[str, int]:
    """Server name -> open connections whose client name is ``name``, from every server's
    own CONNZ (asked as the stack's system user, as the token service asks before a kick):
    what the broker holds, not what a client believes."""
    nc = await bus.connect(
        NatsSettings(url=server.url),
        name="test-connz",
        nkey_seed=server.credentials.system_user_seed,
        inbox_user=SYSTEM_USER,
        jetstream=False,
    )
    try:
        inbox = nc.new_inbox()
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_reply(msg: Msg) -> None:
            replies.put_nowait(msg.data)

        sub = await nc.subscribe(inbox, cb=on_reply)
        await nc.publish(subjects.SYS_CONNZ, json.dumps({"limit": 100_000}).encode(), inbox)
        nodes = len(getattr(server, "nodes", [server]))
        out: dict[str, int] = {}
        async with asyncio.timeout(5.0):  # every server answers within milliseconds
            while len(out) < nodes:
                answer = json.loads(await replies.get())
                conns = (answer.get("data") or {}).get("connections") or []
                out[answer["server"]["name"]] = sum(1 for c in conns if c.get("name") == name)
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()
