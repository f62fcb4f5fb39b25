"""The NATS auth callout: the server asks on ``$SYS.REQ.USER.AUTH`` who a connecting client
is; the token service answers with a user JWT carrying that edge's allow lists, or a refusal.

Replicas share a queue group, so connects go on with one of them down. The answer must come
within the server's authorization timeout (2 s), so each request does one read and at most
a few compare-and-set writes, and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from edgepub.shared import subjects
from edgepub.shared.schemas import utcnow

from . import jwt
from .decisions import Deny, Grant, authorize, edge_name
from .settings import TokenSettings
from .state import Conflict, EdgeState, record_key

log = structlog.get_logger("edgepub.token.callout")
MAX_RACES = 20  # compare-and-set retries before giving up on one connect
MAX_IN_FLIGHT = 256  # connects answered at once; more wait (the server times them out)


@dataclass
class Callout:
    nc: NATS
    state: EdgeState
    settings: TokenSettings
    clock: Callable[[], datetime] = utcnow  # the broker's, which checks the JWT's exp

    async def decide(self, req: jwt.AuthRequest) -> Grant | Deny:
        name = edge_name(req)
        for _ in range(MAX_RACES):
            got = await self.state.record(name) if name else None
            record, rev = got if got else (None, 0)
            decision = authorize(req, record, self.clock(), self.settings)
            if isinstance(decision, Deny) or not decision.write:
                return decision
            try:
                await self.state.records.update(
                    record_key(decision.edge), decision.record, revision=rev
                )
                return decision
            except Conflict:
                continue  # someone else wrote it: decide again on what they wrote
        return Deny(reason=f"edge {name!r}: too many concurrent connects")

    def answer(self, req: jwt.AuthRequest, decision: Grant | Deny) -> bytes:
        now = int(self.clock().timestamp())
        seed = self.settings.issuer_seed
        if isinstance(decision, Deny):
            claims = jwt.response_claims(
                user_nkey=req.user_nkey, server_id=req.server_id.id, error=decision.reason
            )
            return jwt.encode(claims, seed, issued_at=now).encode()
        user = jwt.user_claims(
            user_nkey=req.user_nkey,
            account=subjects.EDGE_ACCOUNT,
            name=decision.edge,
            publish=subjects.edge_publish_allow(decision.edge),
            subscribe=subjects.edge_subscribe_allow(decision.edge),
            expires=int(decision.session_expires_at.timestamp()),
        )
        user_jwt = jwt.encode(user, seed, issued_at=now)
        claims = jwt.response_claims(
            user_nkey=req.user_nkey, server_id=req.server_id.id, user_jwt=user_jwt
        )
        return jwt.encode(claims, seed, issued_at=now).encode()

    async def on_request(self, msg: Msg) -> None:
        try:
            req = jwt.decode_request(msg.data)
        except jwt.JwtError as exc:
            log.warning("auth_request_unreadable", error=str(exc))
            return  # the server times the connect out and refuses it
        edge = req.connect_opts.name
        blog = log.bind(edge=edge, client=req.client_info.id, server=req.server_id.name)
        try:
            decision = await self.decide(req)
        except Exception as exc:  # the bus failed under us: refuse, say why
            blog.error("auth_failed", error=repr(exc))
            decision = Deny(reason="the token service could not read the edge's record")
        if isinstance(decision, Deny):
            blog.warning("edge_refused", reason=decision.reason)
        elif decision.first_join:
            blog.info("edge_joined", expires_at=decision.record.credential_expires_at)
        else:
            blog.info("edge_authenticated", session_expires_at=decision.session_expires_at)
        if msg.reply:
            await self.nc.publish(msg.reply, self.answer(req, decision))


async def serve_callout(nc: NATS, callout: Callout, stop: asyncio.Event) -> None:
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def answer(msg: Msg) -> None:
        try:
            await callout.on_request(msg)
        finally:
            slots.release()

    async with asyncio.TaskGroup() as tg:

        async def on_msg(msg: Msg) -> None:
            await slots.acquire()
            tg.create_task(answer(msg))

        sub = await nc.subscribe(subjects.AUTH_CALLOUT, queue=subjects.AUTH_QUEUE, cb=on_msg)
        log.info("auth_callout_serving", subject=subjects.AUTH_CALLOUT)
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
