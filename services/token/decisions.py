"""What the token service decides, as pure functions over records and the clock: who may
connect (the auth callout), what an edge's credential state is, what list_edges shows.

The shell (``callout.py``, ``handlers.py``) reads the records, calls these, and writes what
they return with compare-and-set, re-deciding on a lost race: so of ten connects racing
with one join token, exactly one is written and the others see a used token.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timedelta

import msgspec

from edgepub.shared import keys, subjects
from edgepub.shared.bundle import join_token_sha256 as token_sha256
from edgepub.shared.edge_messages import (
    EdgeInfo,
    EdgeRecord,
    EdgeSeen,
    credential_end,
    credential_state,
    edge_connection,
    own_report,
)

from .jwt import AuthRequest
from .settings import TokenSettings


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    edge: str
    record: EdgeRecord  # to write (credential moved forward; on a join, the key bound)
    session_expires_at: datetime  # the user JWT's exp
    first_join: bool
    write: bool = True  # False: the record stands as it is (renewed a moment ago)


# A reconnect renews the credential only when the last renewal is older than this share of
# its life: a fleet reconnecting at once (a broker restart) costs reads, not writes.
RENEW_SLACK = 0.01


class Deny(msgspec.Struct, frozen=True, kw_only=True):
    reason: str  # logged by the server and by us; never holds a secret


def spiffe_id(trust_domain: str, edge_id: str) -> str:
    return f"{trust_domain}/ns/deployments/edge/{edge_id}"


def authorize(
    req: AuthRequest, record: EdgeRecord | None, now: datetime, cfg: TokenSettings
) -> Grant | Deny:
    """The auth callout's decision for one connect.

    An edge connects with its name as the client name, signing the server's nonce with its
    nkey. Before its first join it also presents the bundle's join token (``auth_token``):
    a token that matches, unused and unexpired, binds the key to the edge, once. After that
    only the key counts, for as long as the edge keeps in contact.
    """
    opts = req.connect_opts
    name = edge_name(req)
    if name is None:
        return Deny(reason="no edge name (connect with the edge's name as the client name)")
    if not opts.nkey or not keys.verify(opts.nkey, req.client_info.nonce.encode(), opts.sig):
        return Deny(reason=f"edge {name!r}: no key, or the nonce is not signed by it")
    if record is None or record.state == "revoked" or record.name != name:
        return Deny(reason=f"edge {name!r} is not known (never added, or removed)")
    if record.state == "joined":
        return _returning(req, record, now, cfg)
    return _joining(req, record, now, cfg)


def edge_name(req: AuthRequest) -> str | None:
    """The edge a connect claims to be (checked against its key before anything is given)."""
    try:
        return subjects.token(req.connect_opts.name)
    except ValueError:
        return None


def _session_end(record: EdgeRecord, now: datetime, cfg: TokenSettings) -> datetime:
    end = now + timedelta(seconds=cfg.session_ttl_s)
    expires = record.credential_expires_at
    return min(end, expires) if expires is not None else end


def _returning(
    req: AuthRequest, record: EdgeRecord, now: datetime, cfg: TokenSettings
) -> Grant | Deny:
    if req.connect_opts.nkey != record.public_key:
        return Deny(reason=f"edge {record.name!r} joined with another key; its token is used")
    expires = record.credential_expires_at
    if expires is None or expires <= now:
        return Deny(
            reason=f"edge {record.name!r}: credential expired (no contact for "
            f"{cfg.credential_idle_s:.0f}s); remove_edge and add_edge for a new bundle"
        )
    full = now + timedelta(seconds=cfg.credential_idle_s)
    if full - expires <= timedelta(seconds=cfg.credential_idle_s * RENEW_SLACK):
        return Grant(
            edge=record.name,
            record=record,
            session_expires_at=_session_end(record, now, cfg),
            first_join=False,
            write=False,
        )
    renewed = msgspec.structs.replace(record, credential_expires_at=full)
    return Grant(
        edge=record.name,
        record=renewed,
        session_expires_at=_session_end(renewed, now, cfg),
        first_join=False,
    )


def _joining(
    req: AuthRequest, record: EdgeRecord, now: datetime, cfg: TokenSettings
) -> Grant | Deny:
    presented = req.connect_opts.auth_token
    if not presented:
        return Deny(reason=f"edge {record.name!r} has not joined: present its join token")
    if not hmac.compare_digest(token_sha256(presented), record.join_token_sha256):
        return Deny(reason=f"edge {record.name!r}: wrong join token")
    if record.join_token_expires_at <= now:
        return Deny(
            reason=f"edge {record.name!r}: join token expired at "
            f"{record.join_token_expires_at.isoformat()}; remove_edge and add_edge for a new one"
        )
    joined = msgspec.structs.replace(
        record,
        state="joined",
        public_key=req.connect_opts.nkey,
        joined_at=now,
        credential_expires_at=now + timedelta(seconds=cfg.credential_idle_s),
    )
    return Grant(
        edge=record.name,
        record=joined,
        session_expires_at=_session_end(joined, now, cfg),
        first_join=True,
    )


def renewed(record: EdgeRecord, now: datetime, cfg: TokenSettings) -> EdgeRecord | None:
    """The record with its credential moved forward, or None if it may not be renewed."""
    if record.state != "joined" or credential_state(record, now) != "joined":
        return None
    return msgspec.structs.replace(
        record, credential_expires_at=now + timedelta(seconds=cfg.credential_idle_s)
    )


def edge_info(
    record: EdgeRecord, seen: EdgeSeen | None, now: datetime, cfg: TokenSettings, bundle: str
) -> EdgeInfo:
    """An edge as list_edges shows it, with the clock applied.

    A report from before the record was created belongs to an earlier edge of that name
    (removed, then added again): it is not this edge's. A removed edge is never online (its
    connections were closed, its connects are refused): ``offline`` since its last report,
    or ``never``; its credential ended when it was revoked."""
    seen = own_report(record, seen)
    revoked = record.state == "revoked"
    connection = edge_connection(record, seen, now, cfg.offline_after_s)
    expires = credential_end(record)
    a = record.assignment
    return EdgeInfo(
        id=record.id,
        name=record.name,
        tags=record.tags,
        workspace_id=record.workspace_id,
        workspace_name=record.workspace_name,
        publish_id=a.publish_id,
        pipeline_name=a.pipeline_name,
        pipeline_version_id=a.pipeline_version_id,
        pipeline_version_name=a.pipeline_version_name,
        pipeline_url=a.pipeline_url,
        spiffe_id=spiffe_id(cfg.trust_domain, record.id),
        cpus=record.cpus,
        memory=record.memory,
        created_at=record.created_at,
        created_on_version=record.created_on_version,
        credential_state=credential_state(record, now),
        credential_expires_at=expires,
        revoked_at=record.revoked_at if revoked else None,
        connection=connection,
        offline_after_s=cfg.offline_after_s,
        last_seen=seen.at if seen else None,
        running_publish_id=seen.running_publish_id if seen else None,
        running_version=seen.running_version if seen else None,
        agent_version=seen.agent_version if seen else None,
        status=seen.status if seen else None,
        backlog=seen.backlog if seen else None,
        traffic=seen.traffic if seen else None,
        log=seen.log if seen else None,
        failed=seen.failed if seen else None,
        bundle=bundle,
    )
