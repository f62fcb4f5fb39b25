"""Cutting an edge off everywhere: ask every server for its connections (CONNZ), then tell
each server holding one of the edge's to close it (KICK).

``$SYS.REQ.SERVER.<id>.KICK`` acts on one server, so the connections are found on all of
them first. Without operator mode there are no revocation lists: the callout refusing the
edge, this kick, and the short ``exp`` of its JWT are the revocation.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from edgepub.shared import subjects

log = structlog.get_logger("edgepub.token.kick")
MAX_CONNZ = 64 << 20  # a CONNZ answer for thousands of connections
FIRST_ANSWER_S = 2.0  # the first server's answer; then a quiet gap ends the gathering


class _Conn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    cid: int
    name: str = ""
    authorized_user: str = ""
    account: str = ""


class _Connz(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    server_id: str = ""
    connections: Annotated[list[_Conn], msgspec.Meta(max_length=1_000_000)] = []


class _Server(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    id: str


class _ConnzReply(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    server: _Server
    data: _Connz | None = None


_connz_reply = msgspec.json.Decoder(_ConnzReply)


def edge_connections(reply: bytes, edge: str) -> tuple[str, list[int]]:
    """(server id, the edge's connection ids) from one server's CONNZ answer."""
    if len(reply) > MAX_CONNZ:
        return "", []
    try:
        parsed = _connz_reply.decode(reply)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return "", []  # RecursionError: msgspec's guard against nesting past the C stack
    conns = parsed.data.connections if parsed.data else []
    mine = [
        c.cid
        for c in conns
        if c.account == subjects.EDGE_ACCOUNT and edge in (c.name, c.authorized_user)
    ]
    return parsed.server.id, mine


async def kick_edge(sys_nc: NATS, edge: str, quiet_s: float) -> int:
    """Close every connection of ``edge`` on every server; returns how many were closed."""
    inbox = sys_nc.new_inbox()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_reply(msg: Msg) -> None:
        replies.put_nowait(msg.data)

    sub = await sys_nc.subscribe(inbox, cb=on_reply)
    answers: list[bytes] = []
    try:
        query = {"account": subjects.EDGE_ACCOUNT, "auth": True, "limit": 1_000_000}
        await sys_nc.publish(subjects.SYS_CONNZ, msgspec.json.encode(query), reply=inbox)
        # every server answers; once none has for ``quiet_s`` after the last, all have
        wait = FIRST_ANSWER_S
        while True:
            try:
                async with asyncio.timeout(wait):
                    answers.append(await replies.get())
            except TimeoutError:
                break
            wait = quiet_s
    finally:
        await sub.unsubscribe()
    kicked = 0
    for reply in answers:
        server_id, cids = edge_connections(reply, edge)
        for cid in cids:
            try:
                await sys_nc.request(
                    subjects.sys_kick(server_id), msgspec.json.encode({"cid": cid}), timeout=2.0
                )
                kicked += 1
            except TimeoutError:
                log.warning("kick_unanswered", edge=edge, server_id=server_id, cid=cid)
    return kicked
