"""Edges on the bus for tests: add one through the token service as the SDK user, and
connect as it over the WebSocket listener, exactly as the agent does (client name = edge
name, the join token as auth token until joined, the nonce signed with its own nkey)."""

from __future__ import annotations

import contextlib
from typing import Any

import nats
from nats.aio.client import Client as NATS

from edgepub.shared import keys, rpc, subjects
from edgepub.shared.bundle import decode_bundle
from edgepub.shared.edge_messages import EdgeAdded, EdgeAddRequest, EdgeRemoved, EdgeRemoveRequest
from edgepub.shared.settings import servers_of

from .servers import NatsCluster, NatsServer


def join_token(bundle: str) -> str:
    token = decode_bundle(bundle).join_token
    assert token is not None, "bundle has no JOIN_TOKEN"
    return token


async def admin(server: NatsServer | NatsCluster) -> NATS:
    s = server.settings()
    return await nats.connect(
        servers=s.servers,
        user=s.user,
        password=s.password,
        inbox_prefix=subjects.inbox_prefix(s.user or ""),
        connect_timeout=2,
    )


async def add_edge(nc: NATS, publish_id: int, name: str, tags: tuple[str, ...] = ()) -> EdgeAdded:
    req = EdgeAddRequest(publish_id=publish_id, name=name, tags=tags)
    return await rpc.call(nc, subjects.request("admin", subjects.VERB_EDGE_ADD), req, EdgeAdded)


async def remove_edge(nc: NATS, name: str) -> EdgeRemoved:
    req = EdgeRemoveRequest(name=name)
    return await rpc.call(
        nc, subjects.request("admin", subjects.VERB_EDGE_REMOVE), req, EdgeRemoved
    )


async def connect_edge(
    server: NatsServer | NatsCluster, name: str, seed: str, token: str | None = None, **kw: Any
) -> NATS:
    """Connect as edge ``name`` over WebSocket; raises what nats-py raises when refused."""
    opts: dict[str, Any] = {
        "servers": servers_of(server.ws_url),  # one node, or a cluster's
        "name": name,
        "nkeys_seed_str": seed,
        "connect_timeout": 3,
        "allow_reconnect": False,
        "max_reconnect_attempts": 0,
    }
    if token is not None:
        opts["token"] = token
    opts.update(kw)
    if "inbox_prefix" not in opts:
        opts["inbox_prefix"] = subjects.inbox_prefix(name)
    nc = NATS()
    try:
        await nc.connect(**opts)
    except BaseException:
        # a refused WebSocket connect leaves nats-py's aiohttp session open: close it here,
        # or its finalizer runs (and logs) inside some later test's event loop
        with contextlib.suppress(Exception):
            await nc.close()
        raise
    return nc


def new_seed() -> str:
    return keys.new_seed("user")
