"""The agent's link to Ops: join once, then connect with its own key, heartbeat, renew, and
follow its control subject; reconnect forever.

Inference never waits on any of this: the link runs beside the HTTP server, and a refused,
expired or revoked credential only changes what the agent says (log, heartbeat, /metrics).

nats-py closes the connection for good on "User Authentication Expired" (the user JWT's
``exp``), and gives up reconnecting by default: so the link owns the loop. Each connection
lives until nats-py closes it; then a new one is built after a jittered backoff that starts
well under a second and is capped, and the loop never ends before the agent stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import msgspec
import nats
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from edgepub.shared import logs, rpc, subjects
from edgepub.shared.edge_messages import (
    Assignment,
    Control,
    Heartbeat,
    HeartbeatReply,
    RenewReply,
    RenewRequest,
    Revoked,
    RunPipeline,
)
from edgepub.shared.errors import EdgepubError
from edgepub.shared.schemas import utcnow
from edgepub.shared.settings import servers_of

from . import backoff
from .identity import ConnectPlan, Identity, joined, renewed, save_identity
from .metrics import EdgeMetrics

log = structlog.get_logger("edgepub.edge.link")

# What the edge knows of its credential (shown in /metrics and heartbeats).
CredentialView = Literal["joining", "joined", "expired", "revoked", "refused"]
CREDENTIAL_VIEWS: tuple[CredentialView, ...] = (
    "joining",
    "joined",
    "expired",
    "revoked",
    "refused",
)
RETRY_CAP_S = 30.0
REFUSALS_TO_CLOSE = 3  # refused reconnects in a row before the link builds a new connection
CLOSE_TIMEOUT_S = 5.0  # longest wait between connects (a fleet must not hammer a fresh Ops)
_control = msgspec.msgpack.Decoder(Control)


class LinkSettings(msgspec.Struct, frozen=True, kw_only=True):
    heartbeat_s: float = 10.0
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 5.0


class LinkStatus:
    """What the link knows now: read by /metrics and by the heartbeat."""

    def __init__(self) -> None:
        self.connected = False
        self.credential: CredentialView = "joining"
        self.credential_expires_at: datetime | None = None
        self.last_contact: datetime | None = None
        self.reason = ""

    def expired_by_clock(self, now: datetime) -> bool:
        expires = self.credential_expires_at
        return expires is not None and expires <= now

    def view(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t else None

        return {
            "connected": self.connected,
            "credential": self.credential,
            "credential_expires_at": iso(self.credential_expires_at),
            "last_contact": iso(self.last_contact),
            "reason": self.reason or None,
        }

    def register(self, metrics: EdgeMetrics) -> None:
        """The link's state in /metrics: inference goes on whatever these say."""
        metrics.gauge(
            "edgepub_edge_ops_connected",
            "1 while connected to Ops (heartbeats and control messages flow).",
            lambda: float(self.connected),
        )
        metrics.gauge(
            "edgepub_edge_credential",
            "1 for the edge's credential state now (joining, joined, expired, revoked, "
            "refused); inference goes on in every state.",
            lambda: {(v,): float(v == self.credential) for v in CREDENTIAL_VIEWS},
            labels=("state",),
        )
        metrics.gauge(
            "edgepub_edge_credential_expires_timestamp_seconds",
            "When the credential expires without contact (unix time; 0 before the join).",
            lambda: self.credential_expires_at.timestamp() if self.credential_expires_at else 0.0,
        )
        metrics.gauge(
            "edgepub_edge_ops_last_contact_timestamp_seconds",
            "The last answer from Ops (unix time; 0 before any).",
            lambda: self.last_contact.timestamp() if self.last_contact else 0.0,
        )


def _refused(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "authorization" in text or "authentication" in text


class Link:
    def __init__(
        self,
        plan: ConnectPlan,
        persist_dir: Path,
        on_assignment: Callable[[Assignment], Awaitable[None]],
        report: Callable[[], Heartbeat],
        settings: LinkSettings | None = None,
    ) -> None:
        assert plan.edge_name and plan.seed and plan.server_url and plan.identity
        self.plan = plan
        self.edge = plan.edge_name
        self.identity: Identity = plan.identity
        self.persist_dir = persist_dir
        self.on_assignment = on_assignment
        self.report = report
        self.settings = settings or LinkSettings()
        self.status = LinkStatus()
        self.status.credential = "joined" if self.identity.joined else "joining"
        self.status.credential_expires_at = self.identity.credential_expires_at
        self.log = log.bind(edge=self.edge, server=plan.server_url)
        self._wanted: Assignment | None = None
        self._wanted_changed = asyncio.Event()
        self._renewed_at = utcnow()
        self._nc: NATS | None = None
        self._session_closed: asyncio.Event | None = None
        self._refusals = 0
        self._session_work: list[Callable[[NATS], Coroutine[Any, Any, None]]] = []
        self._closing: set[asyncio.Task[None]] = set()
        logs.register_secret(plan.seed)
        logs.register_secret(plan.join_token)

    # --- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        # A fresh key pair is kept before its token is presented: a crash mid-join retries
        # with the same key, which Ops accepts as the same edge.
        save_identity(self.persist_dir, self.identity)
        async with asyncio.TaskGroup() as tg:
            assigning = tg.create_task(self._assign_latest())
            try:
                await self._connect_forever(stop)
            finally:
                assigning.cancel()

    async def _connect_forever(self, stop: asyncio.Event) -> None:
        delays = backoff.delays(cap=RETRY_CAP_S)
        while not stop.is_set():
            closed = asyncio.Event()
            try:
                nc = await self._connect(closed)
                if nc is not None:
                    delays = backoff.delays(cap=RETRY_CAP_S)
                    await self._session(nc, closed, stop)
            except Exception as exc:  # inference must outlive any bug of the link
                # (a full disk saving the identity, an answer nobody expected): say so, retry
                self.status.reason = f"link error: {type(exc).__name__}: {exc}"
                self.log.error("link_failed", error=repr(exc), exc_info=exc)
            wait = next(delays)
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stop.wait()

    async def _connect(self, closed: asyncio.Event) -> NATS | None:
        token = None if self.identity.joined else self.plan.join_token
        status = self.status

        async def on_closed() -> None:
            status.connected = False
            closed.set()

        async def on_disconnected() -> None:
            status.connected = False

        async def on_reconnected() -> None:
            status.connected = True
            self._refusals = 0

        async def on_error(exc: Exception) -> None:
            # Refused while reconnecting: once may be the callout not back yet (a broker
            # restart); REFUSALS_TO_CLOSE in a row is a removed or expired credential, which
            # nats-py would retry every half second for ever: close, so the loop says why and
            # backs off.
            if _refused(exc):
                status.reason = str(exc)
                self._refusals += 1
                if self._refusals >= REFUSALS_TO_CLOSE:
                    self._close_soon()

        opts: dict[str, Any] = {
            "servers": servers_of(self.plan.server_url or ""),  # one, or a cluster's nodes
            "name": self.edge,
            "nkeys_seed_str": self.identity.seed,
            "inbox_prefix": subjects.inbox_prefix(self.edge),
            "connect_timeout": self.settings.connect_timeout_s,
            # the first connect is ours to retry; once up, nats-py rides out blips
            "allow_reconnect": False,
            "max_reconnect_attempts": 0,
            "closed_cb": on_closed,
            "disconnected_cb": on_disconnected,
            "reconnected_cb": on_reconnected,
            "error_cb": on_error,
        }
        if token is not None:
            opts["token"] = token
        nc = NATS()
        try:
            await nc.connect(**opts)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            self._refused_or_unreachable(exc)
            # a failed WebSocket connect leaves nats-py's aiohttp session open: close it
            with contextlib.suppress(Exception):
                await nc.close()
            return None
        self._nc = nc
        self._session_closed = closed
        self._refusals = 0
        nc.options["allow_reconnect"] = True
        nc.options["max_reconnect_attempts"] = -1
        nc.options["reconnect_time_wait"] = 0.25  # back within a second of the broker
        status.connected = True
        status.reason = ""
        if not self.identity.joined:
            await self._joined()
        self.log.info("ops_connected", access=status.credential)
        return nc

    def _close_soon(self) -> None:
        """Close the current connection from a callback; its session then ends, even if
        nats-py's close never comes back (it can hang while reconnecting)."""
        nc = self._nc
        if nc is None or nc.is_closed or self._closing:
            return
        ended = self._session_closed

        async def close() -> None:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await nc.close()
            except TimeoutError:
                self.log.info("close_timed_out")
            finally:
                if ended is not None:
                    ended.set()

        task = asyncio.get_running_loop().create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _refused_or_unreachable(self, exc: BaseException) -> None:
        status = self.status
        if not _refused(exc):
            status.reason = f"Ops unreachable: {type(exc).__name__}: {exc}"
            self.log.info("ops_unreachable", error=f"{type(exc).__name__}: {exc}")
            return
        if status.credential == "revoked":
            reason = "this edge was removed; add it again for a new bundle"
        elif not self.identity.joined:
            status.credential = "refused"
            reason = "the join was refused: the join token is used, expired or wrong"
        elif status.expired_by_clock(utcnow()):
            status.credential = "expired"
            reason = "the credential expired (no contact for too long)"
        else:
            status.credential = "refused"
            reason = "Ops refused this edge's key (removed, or its credential expired)"
        status.reason = reason
        self.log.warning(
            "ops_refused",
            reason=reason,
            access=status.credential,
            fix="remove_edge and add_edge, then restart the agent with the new EDGE_BUNDLE",
        )

    async def _joined(self) -> None:
        """The join went through: keep that before anything else (the token is spent). The
        credential's expiry comes with the renewal that follows at once."""
        now = utcnow()
        self.identity = joined(self.identity, at=now, credential_expires_at=now)
        save_identity(self.persist_dir, self.identity)
        self.status.credential = "joined"
        self.log.info("edge_joined")
        self.log.info("Node attestation was successful.")

    # --- one connection --------------------------------------------------------------------

    def on_session(self, work: Callable[[NATS], Coroutine[Any, Any, None]]) -> None:
        """Run ``work(nc)`` during every connected session (the shipper); it is cancelled
        when the session ends, and must handle its own errors."""
        self._session_work.append(work)

    async def _session(self, nc: NATS, closed: asyncio.Event, stop: asyncio.Event) -> None:
        try:
            await nc.subscribe(subjects.control(self.edge), cb=self._on_control)
            try:
                await self._renew(nc)
            except EdgepubError as exc:  # the token service is away: the beats renew later
                self.log.info("renew_unanswered", error=str(exc))
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._heartbeats(nc))]
                tasks += [tg.create_task(work(nc)) for work in self._session_work]
                ended = tg.create_task(closed.wait())
                stopping = tg.create_task(stop.wait())
                await asyncio.wait({ended, stopping}, return_when=asyncio.FIRST_COMPLETED)
                for task in (*tasks, ended, stopping):
                    task.cancel()
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            self.log.info("ops_session_ended", error=f"{type(exc).__name__}: {exc}")
        finally:
            self.status.connected = False
            with contextlib.suppress(Exception):
                await nc.close()
        if not stop.is_set():
            self.log.info("ops_disconnected", reason=self.status.reason or "connection closed")

    async def _renew(self, nc: NATS) -> None:
        subject = subjects.edge_subject(self.edge, subjects.EDGE_RENEW)
        reply = await rpc.call(
            nc, subject, RenewRequest(), RenewReply, timeout=self.settings.request_timeout_s
        )
        self.status.credential_expires_at = reply.credential_expires_at
        self.status.last_contact = self._renewed_at = utcnow()
        self.identity = renewed(self.identity, credential_expires_at=reply.credential_expires_at)
        save_identity(self.persist_dir, self.identity)

    def _renew_due(self) -> bool:
        expires = self.status.credential_expires_at
        if expires is None:
            return True
        half = (expires - self._renewed_at) / 2
        return utcnow() >= self._renewed_at + half

    async def _heartbeats(self, nc: NATS) -> None:
        subject = subjects.edge_subject(self.edge, subjects.EDGE_HEARTBEAT)
        while True:
            try:
                reply = await rpc.call(
                    nc,
                    subject,
                    self.report(),
                    HeartbeatReply,
                    timeout=self.settings.request_timeout_s,
                )
                self.status.last_contact = utcnow()
                self.want(reply.assignment)
                if self._renew_due():
                    await self._renew(nc)
            except (EdgepubError, TimeoutError, nats.errors.Error) as exc:
                self.log.info("heartbeat_unanswered", error=str(exc))
            await asyncio.sleep(self.settings.heartbeat_s)

    async def _on_control(self, msg: Msg) -> None:
        if (msg.headers or {}).get(subjects.HEADER_CONTROL) != self.edge:
            # a reply some edge named this subject for: answered inside the edge account
            self.log.debug("control_not_from_ops", size=len(msg.data))
            return
        try:
            notice = _control.decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self.log.warning("control_unreadable", error=str(exc))
            return
        if isinstance(notice, RunPipeline):
            self.log.info(
                "told_to_run",
                publish_id=notice.assignment.publish_id,
                pipeline_version=notice.assignment.pipeline_version_name,
            )
            self.want(notice.assignment)
        elif isinstance(notice, Revoked):
            self.status.credential = "revoked"
            self.status.reason = f"revoked by Ops ({notice.reason})"
            self.log.warning("edge_revoked", reason=notice.reason, serving="the cached pipeline")
            self._close_soon()

    # --- assignments -----------------------------------------------------------------------

    def want(self, assignment: Assignment) -> None:
        """Run ``assignment`` next (the latest wins; the swap runs beside the link)."""
        if assignment != self._wanted:
            self._wanted = assignment
            self._wanted_changed.set()

    async def _assign_latest(self) -> None:
        while True:
            await self._wanted_changed.wait()
            self._wanted_changed.clear()
            wanted = self._wanted
            if wanted is not None:
                await self.on_assignment(wanted)
