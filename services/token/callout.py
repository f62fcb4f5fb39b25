"""The NATS auth callout: the server asks on ``$SYS.REQ.USER.AUTH`` who a connecting client
is; the token service answers with a user JWT carrying that edge's allow lists, or a refusal.

Replicas share a queue group, so connects go on with one of them down. The answer must come
within the server's authorization timeout (2 s), so each request does one read and at most
a few compare-and-set writes, and nothing else.

The callout is encrypted (the stack's ``auth_callout`` has an ``xkey``): the server seals
each request to the token service's curve key and names its own in ``Nats-Server-Xkey``;
the answer is sealed back to that key. A request that is not sealed, or does not open, is
logged and not answered (the server times the connect out and refuses it).
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

from edgepub.shared import subjects, xkeys
from edgepub.shared.schemas import utcnow

from . import jwt
from .decisions import Deny, Grant, authorize, edge_name
from .settings import TokenSettings
from .state import Conflict, EdgeState, record_key

log = structlog.get_logger("edgepub.token.callout")
MAX_RACES = 20  # compare-and-set retries before giving up on one connect
MAX_IN_FLIGHT = 256  # connects answered at once; more wait (the server times them out)
XKEY_HEADER = "Nats-Server-Xkey"  # the requesting server's curve public key


class SealError(ValueError):
    """An authorization request that is not sealed to the token service's xkey."""


def server_xkey(msg: Msg) -> str:
    """The ``Nats-Server-Xkey`` header of a request (any case), or SealError."""
    for name, value in (msg.headers or {}).items():
        if name.lower() == XKEY_HEADER.lower() and value:
            return value
    raise SealError(
        "authorization request is not encrypted (no Nats-Server-Xkey header): the server's "
        "auth_callout block has no xkey; regenerate its config from the stack's credentials"
    )


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

    def open_request(self, msg: Msg) -> tuple[jwt.AuthRequest, str]:
        """The request inside ``msg`` and the server's xkey to seal the answer to."""
        sender = server_xkey(msg)
        try:
            plain = xkeys.open_sealed(msg.data, self.settings.xkey_seed, sender)
        except xkeys.XKeyError as exc:
            raise SealError(f"authorization request does not open: {exc}") from None
        req = jwt.decode_request(plain)
        if req.server_id.xkey != sender:  # the signed claims name the key that sealed it
            raise SealError("the request's signed server xkey is not the one that sealed it")
        return req, sender

    async def on_request(self, msg: Msg) -> None:
        try:
            req, sender = self.open_request(msg)
        except (SealError, jwt.JwtError) as exc:
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
            answer = self.answer(req, decision)
            await self.nc.publish(msg.reply, xkeys.seal(answer, self.settings.xkey_seed, sender))


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
