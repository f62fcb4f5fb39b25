"""What the fleet dashboard shows, computed from what the services publish: pure, no I/O.

Inputs are the records as they are in KV: ``EdgeRecord`` (``edge.<name>``) and
``EdgeSeen`` (``seen.<name>``, the last heartbeat) from the token service's edges bucket,
``PublishRecord`` from the publish service, and ``now``. The dashboard owns no state:
every figure here is a function of those records and ``now``, so any replica, restarted
at any time, shows the same.

**Connection** uses the token service's rule (``shared.edge_messages.edge_connection``):
``online`` while the last heartbeat is at most ``offline_after_s`` old (the boundary
itself is online), ``offline`` after, ``never`` without one; a removed edge is never
online, and a heartbeat from before the record was created (an earlier edge of that name)
is not this edge's.

**Sync** compares the publish the edge should run (``EdgeRecord.assignment``) with the
one its last heartbeat says it runs:

- ``in_sync``: it runs the assigned publish (or, from an agent that does not know the
  publish id yet, the assigned pipeline version);
- ``failed``: it does not, and its heartbeat says it tried that very publish and could not
  load it (``EdgeSeen.failed``, with the agent's reason and attempt count);
- ``pending``: anything else (a replace just moved it, it has not beaten since, it is
  offline, it never connected).

**Since when** (``sync_since``), derived from timestamps the services write, never from
state the dashboard would keep:

- ``in_sync``: the later of ``EdgeRecord.assigned_at`` (set by the token service when it
  adds the edge or a replace moves it) and ``EdgeSeen.running_since`` (the token service's
  receive time minus the agent's reported ``running_for_s``, so an edge's wrong clock
  moves nothing): in sync from when both held;
- ``failed``: ``EdgeSeen.failed.since`` (the first failed attempt at that publish, made a
  time the same way);
- ``pending``: ``assigned_at``.

Records written before these fields existed have them None: ``assigned_at`` then falls
back to the record's ``created_at`` for an edge never moved (the same publish id as the
one it was added with cannot be told apart, so the fallback is documented, not exact) and
``sync_since`` is None when nothing better is known.

**Rollout** of a publish counts the live (non-revoked) edges assigned to it, each in
exactly one of: ``running`` (in sync), ``failed``, ``offline_not_reached`` (not running
it and not online: offline, or never connected; the token service cannot have told it),
``pending`` (online and not running it yet). So targeted = running + failed + pending +
offline_not_reached. ``running_not_targeted`` counts edges still running the publish
while assigned to another one (a replace in progress, seen from the old publish).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import msgspec

from edgepub.shared.edge_messages import (
    ConnectionStatus,
    CredentialState,
    EdgeRecord,
    EdgeSeen,
    credential_end,
    credential_state,
    edge_connection,
    own_report,
)
from edgepub.shared.schemas import PublishRecord, PublishStatus

# The token service's EDGEPUB_EDGE_OFFLINE_AFTER_S default (services/token/settings.py;
# tests/unit/test_dashboard_view.py keeps them equal).
DEFAULT_OFFLINE_AFTER_S = 30.0
DEFAULT_BACKLOG_ROWS = 10_000
DEFAULT_STUCK_AFTER_S = 600.0
MAX_LIMIT = 1000  # rows in one page

SyncState = Literal["in_sync", "pending", "failed"]


class Thresholds(msgspec.Struct, frozen=True, kw_only=True):
    offline_after_s: float = DEFAULT_OFFLINE_AFTER_S  # no heartbeat for longer: offline
    backlog_rows: int = DEFAULT_BACKLOG_ROWS  # a local log backlog over this is flagged
    stuck_after_s: float = DEFAULT_STUCK_AFTER_S  # Publishing (or pending) longer: stuck


class EdgeRow(msgspec.Struct, frozen=True, kw_only=True):
    """One edge in the fleet view. Traffic and log figures are as of ``last_seen`` (the
    heartbeat they came with); None where the edge never said (an older agent)."""

    name: str
    id: str
    tags: tuple[str, ...]
    workspace_name: str
    pipeline_name: str
    # link
    connection: ConnectionStatus
    offline_after_s: float
    last_seen: datetime | None
    last_seen_age_s: float | None
    credential_state: CredentialState
    credential_expires_at: datetime | None
    # what it should run and what it runs
    desired_publish_id: int
    desired_version: str  # the assignment's pipeline version name
    assigned_at: datetime | None
    running_publish_id: int | None
    running_version: str | None
    sync: SyncState
    sync_reason: str | None  # why pending or failed (None: in sync)
    sync_since: datetime | None
    sync_age_s: float | None
    agent_version: str | None
    status: str | None  # the agent's own word: "serving", "waiting: ..."
    # inference over the heartbeat interval
    traffic_interval_s: float | None
    requests: int | None
    errors: int | None
    rate_per_s: float | None
    p50_ms: float | None
    p95_ms: float | None
    # the local inference log
    backlog_rows: int | None
    backlog_bytes: int | None
    backlog_over: bool  # backlog_rows over the threshold
    oldest_unsent_at: datetime | None
    oldest_unsent_age_s: float | None
    last_upload_at: datetime | None  # Ops last acknowledged a page (since the agent started)
    last_upload_age_s: float | None


class Counters(msgspec.Struct, frozen=True, kw_only=True):
    total: int = 0
    online: int = 0
    offline: int = 0
    never: int = 0  # never sent a heartbeat
    in_sync: int = 0
    out_of_sync: int = 0  # pending + failed
    pending: int = 0
    failed: int = 0
    backlog_over: int = 0
    offline_after_s: float = DEFAULT_OFFLINE_AFTER_S
    backlog_threshold_rows: int = DEFAULT_BACKLOG_ROWS


class Rollout(msgspec.Struct, frozen=True, kw_only=True):
    targeted: int = 0  # live edges assigned to the publish
    running: int = 0  # of those, running it
    pending: int = 0  # online, not running it yet
    failed: int = 0  # reported they could not load it
    offline_not_reached: int = 0  # not running it and not online (offline or never seen)
    running_not_targeted: int = 0  # running it while assigned elsewhere (being replaced)


class PublishRow(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    pipeline_name: str
    pipeline_version_name: str
    status: PublishStatus
    status_since: datetime  # the record's updated_at: when it took this status
    status_age_s: float
    stuck: bool  # PendingPublish or Publishing for longer than stuck_after_s
    stuck_reason: str | None
    error: str | None  # an Error's reason
    created_at: datetime
    created_by: str
    replaces: tuple[int, ...]
    rollout: Rollout


# --- rows ---------------------------------------------------------------------------------


def _age(now: datetime, at: datetime | None) -> float | None:
    return None if at is None else max((now - at).total_seconds(), 0.0)


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


def _sync(
    record: EdgeRecord, seen: EdgeSeen | None, connection: ConnectionStatus
) -> tuple[SyncState, str | None, datetime | None]:
    a = record.assignment
    assigned_at = record.assigned_at or record.created_at
    if seen is None:
        return "pending", "no heartbeat yet: the edge has not connected", assigned_at
    running_id = seen.running_publish_id
    if running_id == a.publish_id or (
        running_id is None and seen.running_version == a.pipeline_version_name
    ):
        return "in_sync", None, _later(record.assigned_at, seen.running_since)
    failed = seen.failed
    if failed is not None and failed.publish_id == a.publish_id:
        tries = "attempt" if failed.attempts == 1 else "attempts"
        return (
            "failed",
            f"could not load publish {a.publish_id} ({failed.attempts} {tries}): {failed.reason}",
            failed.since,
        )
    runs = (
        "runs nothing yet"
        if seen.running_version is None
        else f"runs {seen.running_version}"
        + ("" if running_id is None else f" (publish {running_id})")
    )
    if connection == "offline":
        why = f"offline; {runs}: learns publish {a.publish_id} at its next heartbeat"
    else:
        why = f"{runs}; publish {a.publish_id} ({a.pipeline_version_name}) assigned"
    return "pending", why, assigned_at


def edge_row(
    record: EdgeRecord, seen: EdgeSeen | None, now: datetime, thresholds: Thresholds
) -> EdgeRow:
    """One edge's row at ``now``."""
    a = record.assignment
    seen = own_report(record, seen)
    last_seen = seen.at if seen else None
    connection = edge_connection(record, seen, now, thresholds.offline_after_s)
    sync, reason, since = _sync(record, seen, connection)
    traffic = seen.traffic if seen else None
    log = seen.log if seen else None
    backlog_rows = log.backlog_rows if log else (seen.backlog if seen else None)
    return EdgeRow(
        name=record.name,
        id=record.id,
        tags=record.tags,
        workspace_name=record.workspace_name,
        pipeline_name=a.pipeline_name,
        connection=connection,
        offline_after_s=thresholds.offline_after_s,
        last_seen=last_seen,
        last_seen_age_s=_age(now, last_seen),
        credential_state=credential_state(record, now),
        credential_expires_at=credential_end(record),
        desired_publish_id=a.publish_id,
        desired_version=a.pipeline_version_name,
        assigned_at=record.assigned_at,
        running_publish_id=seen.running_publish_id if seen else None,
        running_version=seen.running_version if seen else None,
        sync=sync,
        sync_reason=reason,
        sync_since=since,
        sync_age_s=_age(now, since),
        agent_version=(seen.agent_version or None) if seen else None,
        status=seen.status if seen else None,
        traffic_interval_s=traffic.interval_s if traffic else None,
        requests=traffic.requests if traffic else None,
        errors=traffic.errors if traffic else None,
        rate_per_s=traffic.rate_per_s if traffic else None,
        p50_ms=traffic.p50_ms if traffic else None,
        p95_ms=traffic.p95_ms if traffic else None,
        backlog_rows=backlog_rows,
        backlog_bytes=log.backlog_bytes if log else None,
        backlog_over=backlog_rows is not None and backlog_rows > thresholds.backlog_rows,
        oldest_unsent_at=log.oldest_unsent_at if log else None,
        oldest_unsent_age_s=_age(now, log.oldest_unsent_at) if log else None,
        last_upload_at=log.last_ack_at if log else None,
        last_upload_age_s=_age(now, log.last_ack_at) if log else None,
    )


def fleet_rows(
    records: Iterable[EdgeRecord],
    seen: Mapping[str, EdgeSeen],
    now: datetime,
    thresholds: Thresholds | None = None,
    *,
    include_removed: bool = False,
) -> list[EdgeRow]:
    """Every edge's row, by name; removed edges (tombstones) only if asked for."""
    t = thresholds or Thresholds()
    rows = [
        edge_row(r, seen.get(r.name), now, t)
        for r in records
        if include_removed or r.state != "revoked"
    ]
    rows.sort(key=lambda row: row.name)
    return rows


def counters(rows: Iterable[EdgeRow], thresholds: Thresholds | None = None) -> Counters:
    t = thresholds or Thresholds()
    n: dict[str, int] = dict.fromkeys(
        ("total", "online", "offline", "never", "in_sync", "pending", "failed", "backlog_over"),
        0,
    )
    for row in rows:
        n["total"] += 1
        n[row.connection] += 1
        n[row.sync] += 1
        n["backlog_over"] += row.backlog_over
    return Counters(
        **n,
        out_of_sync=n["pending"] + n["failed"],
        offline_after_s=t.offline_after_s,
        backlog_threshold_rows=t.backlog_rows,
    )


def rollout(publish_id: int, rows: Iterable[EdgeRow]) -> Rollout:
    """How far ``publish_id`` has reached its edges (each targeted edge counted once)."""
    n = dict.fromkeys(("targeted", "running", "pending", "failed", "offline_not_reached"), 0)
    elsewhere = 0
    for row in rows:
        if row.desired_publish_id != publish_id:
            if row.running_publish_id == publish_id:
                elsewhere += 1
            continue
        n["targeted"] += 1
        if row.sync == "in_sync":
            n["running"] += 1
        elif row.sync == "failed":
            n["failed"] += 1
        elif row.connection != "online":
            n["offline_not_reached"] += 1
        else:
            n["pending"] += 1
    return Rollout(**n, running_not_targeted=elsewhere)


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    return f"{s // 3600}h {s % 3600 // 60}m"


def publish_row(
    publish: PublishRecord, rows: Sequence[EdgeRow], now: datetime, thresholds: Thresholds
) -> PublishRow:
    age = _age(now, publish.updated_at) or 0.0
    stuck_reason = None
    if publish.status in ("PendingPublish", "Publishing") and age > thresholds.stuck_after_s:
        waiting = (
            "the push has not started (no registry-push worker took it)"
            if publish.status == "PendingPublish"
            else "the registry push has reported no outcome"
        )
        stuck_reason = (
            f"{publish.status} for {_duration(age)} (over "
            f"{_duration(thresholds.stuck_after_s)}): {waiting} since "
            f"{publish.updated_at.isoformat()}"
        )
    return PublishRow(
        id=publish.id,
        pipeline_name=publish.pipeline_name,
        pipeline_version_name=publish.pipeline_version_name,
        status=publish.status,
        status_since=publish.updated_at,
        status_age_s=age,
        stuck=stuck_reason is not None,
        stuck_reason=stuck_reason,
        error=publish.error if publish.status == "Error" else None,
        created_at=publish.created_at,
        created_by=publish.created_by,
        replaces=tuple(publish.replaces),
        rollout=rollout(publish.id, rows),
    )


def publish_rows(
    publishes: Iterable[PublishRecord],
    rows: Sequence[EdgeRow],
    now: datetime,
    thresholds: Thresholds | None = None,
) -> list[PublishRow]:
    """Every publish, newest first, each with its rollout over ``rows`` (the fleet rows)."""
    t = thresholds or Thresholds()
    out = [publish_row(p, rows, now, t) for p in publishes]
    out.sort(key=lambda p: p.id, reverse=True)
    return out


# --- columns, filters, sorting, paging, CSV ---------------------------------------------------

ColumnKind = Literal["str", "int", "float", "time", "bool", "tags"]


def _kind_of(annotation: Any) -> ColumnKind:
    """How a column of this type filters and sorts (``X | None`` as ``X``)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    tp = args[0] if get_origin(annotation) in (Union, UnionType) else annotation
    if tp is str or get_origin(tp) is Literal:
        return "str"
    if get_origin(tp) is tuple:
        return "tags"
    for python, kind in ((datetime, "time"), (bool, "bool"), (int, "int"), (float, "float")):
        if tp is python:
            return kind  # type: ignore[return-value]
    raise TypeError(f"no column kind for {annotation!r}")


# Every EdgeRow field is a column, in the order shown; its kind says how a filter's value
# is read and how it compares.
COLUMNS: dict[str, ColumnKind] = {f.name: _kind_of(f.type) for f in msgspec.structs.fields(EdgeRow)}
Op = Literal["eq", "ne", "lt", "le", "gt", "ge", "contains", "null"]
OPS: frozenset[str] = frozenset(("eq", "ne", "lt", "le", "gt", "ge", "contains", "null"))
_ORDERED = frozenset(("int", "float", "time", "str"))
_MAX_VALUES = 64  # any-of values in one filter
_MAX_FILTERS = 64
_MAX_TEXT = 256


class Filter(msgspec.Struct, frozen=True, kw_only=True):
    column: str
    op: Op
    values: tuple[Any, ...]  # typed per column; any of them matches (eq, contains)


class FleetQuery(msgspec.Struct, frozen=True, kw_only=True):
    """The fleet view's URL query, parsed.

    - ``q``: text every row's name or one of its tags contains (case-insensitive);
    - ``<column>=a,b``: the column equals one of the values; ``<column>.<op>=v`` with op
      ``eq``, ``ne``, ``lt``, ``le``, ``gt``, ``ge`` (ordered columns), ``contains``
      (text and tags) or ``null`` (``true``: the value is missing; ``false``: present).
      Numbers as numbers, times as ISO 8601 with a zone, booleans ``true``/``false``.
      A row whose value is missing matches only ``ne`` and ``null=true``;
    - ``sort=<column>`` (``-<column>``: descending) and ``desc=true|false``;
    - ``offset`` and ``limit`` (at most ``MAX_LIMIT``).
    """

    q: str | None = None
    filters: tuple[Filter, ...] = ()
    sort: str = "name"
    descending: bool = False
    offset: int = 0
    limit: int = 100


def _bool(text: str, key: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ValueError(f"{key}: expected true or false, got {text[:40]!r}")


def _typed(kind: ColumnKind, text: str, key: str) -> Any:
    text = text.strip()
    if kind in ("str", "tags"):
        return text
    if kind == "bool":
        return _bool(text, key)
    if kind == "time":
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{key}: expected an ISO 8601 time, got {text[:40]!r}") from None
        if at.tzinfo is None:
            raise ValueError(f"{key}: the time {text[:40]!r} needs a zone (Z or +00:00)")
        return at
    try:
        number = int(text) if kind == "int" else float(text)
    except ValueError:
        raise ValueError(f"{key}: expected a number, got {text[:40]!r}") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"{key}: expected a finite number, got {text[:40]!r}")
    return number


def _int_param(text: str, key: str, low: int, high: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{key}: expected a whole number, got {text[:40]!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{key}: expected {low} to {high}, got {value}")
    return value


def _column(name: str, key: str) -> ColumnKind:
    kind = COLUMNS.get(name)
    if kind is None:
        raise ValueError(
            f"unknown column {name[:64]!r} in {key[:80]!r}; columns: {', '.join(COLUMNS)}"
        )
    return kind


def _filter(key: str, text: str) -> Filter:
    column, _, op = key.partition(".")
    kind = _column(column, key)
    op = op or "eq"
    if op not in OPS:
        raise ValueError(f"unknown operator {op[:32]!r} in {key[:80]!r}; operators: {sorted(OPS)}")
    if op in ("lt", "le", "gt", "ge") and kind not in _ORDERED:
        raise ValueError(f"{key}: {column} ({kind}) has no order for {op}")
    if op == "contains" and kind not in ("str", "tags"):
        raise ValueError(f"{key}: contains needs a text column, {column} is {kind}")
    if op == "null":
        return Filter(column=column, op="null", values=(_bool(text, key),))
    parts = text.split(",") if op in ("eq", "ne", "contains") else [text]
    if len(parts) > _MAX_VALUES:
        raise ValueError(f"{key}: at most {_MAX_VALUES} values")
    values = tuple(_typed(kind, part, key) for part in parts)
    return Filter(column=column, op=op, values=values)  # type: ignore[arg-type]


def _pairs(params: Mapping[str, str | Sequence[str]]) -> list[tuple[str, str]]:
    out = []
    for key, value in params.items():
        if not isinstance(key, str):
            raise ValueError(f"query keys are text, got {type(key).__name__}")
        values = [value] if isinstance(value, str) else list(value)
        for v in values:
            if not isinstance(v, str):
                raise ValueError(f"{key[:80]}: expected text, got {type(v).__name__}")
            if len(v) > 4096:
                raise ValueError(f"{key[:80]}: value over 4096 characters")
            out.append((key, v))
    return out


def parse_query(params: Mapping[str, str | Sequence[str]]) -> FleetQuery:
    """The query of a fleet URL (``params``: each key's value or values). Raises
    ``ValueError`` naming what is wrong: an unknown column or operator, a value of the
    wrong type, a parameter given twice that may be given once."""
    once: dict[str, str] = {}
    filters: list[Filter] = []
    for key, value in _pairs(params):
        if key in ("q", "sort", "desc", "offset", "limit"):
            if key in once:
                raise ValueError(f"{key}: given more than once")
            once[key] = value
        else:
            filters.append(_filter(key, value))
            if len(filters) > _MAX_FILTERS:
                raise ValueError(f"at most {_MAX_FILTERS} filters")
    sort = once.get("sort", "name").strip() or "name"
    descending = sort.startswith("-")
    sort = sort.removeprefix("-")
    _column(sort, "sort")
    if "desc" in once:
        descending = _bool(once["desc"], "desc")
    q = once.get("q", "").strip()
    if len(q) > _MAX_TEXT:
        raise ValueError(f"q: at most {_MAX_TEXT} characters")
    return FleetQuery(
        q=q or None,
        filters=tuple(filters),
        sort=sort,
        descending=descending,
        offset=_int_param(once["offset"], "offset", 0, 10**9) if "offset" in once else 0,
        limit=_int_param(once["limit"], "limit", 1, MAX_LIMIT) if "limit" in once else 100,
    )


def _matches(value: Any, f: Filter, kind: ColumnKind) -> bool:
    op = f.op
    if op == "null":
        return bool((value is None or (kind == "tags" and not value)) == f.values[0])
    if value is None:
        return op == "ne"
    if kind == "tags":
        if op == "contains":
            return any(v.lower() in t.lower() for t in value for v in f.values)
        hit = any(v in value for v in f.values)  # eq: has one of the tags
        return hit if op == "eq" else not hit
    if op == "eq":
        return value in f.values
    if op == "ne":
        return value not in f.values
    if op == "contains":
        return any(v.lower() in str(value).lower() for v in f.values)
    bound = f.values[0]
    try:
        if op == "lt":
            return bool(value < bound)
        if op == "le":
            return bool(value <= bound)
        if op == "gt":
            return bool(value > bound)
        return bool(value >= bound)
    except TypeError:  # e.g. a str bound for a Literal column compared as str: never
        return False


def filter_rows(rows: Iterable[EdgeRow], query: FleetQuery) -> list[EdgeRow]:
    """The rows every filter of ``query`` (and its ``q``) matches, in their order."""
    q = query.q.lower() if query.q else None
    plan = [(f, COLUMNS[f.column]) for f in query.filters]
    out = []
    for row in rows:
        if q is not None and q not in row.name and not any(q in t.lower() for t in row.tags):
            continue
        if all(_matches(getattr(row, f.column), f, kind) for f, kind in plan):
            out.append(row)
    return out


def _sort_value(value: Any, kind: ColumnKind) -> Any:
    if kind == "tags":
        return tuple(t.lower() for t in value)
    if kind == "str":
        return str(value).lower()
    return value


def sort_rows(rows: Iterable[EdgeRow], key: str, descending: bool = False) -> list[EdgeRow]:
    """``rows`` by column ``key`` (text case-insensitive; then by name), missing values
    last in either direction. ``ValueError`` for an unknown column."""
    kind = _column(key, "sort")
    present: list[EdgeRow] = []
    missing: list[EdgeRow] = []
    for row in rows:
        value = getattr(row, key)
        (missing if value is None or (kind == "tags" and not value) else present).append(row)
    present.sort(key=lambda r: r.name)
    present.sort(key=lambda r: _sort_value(getattr(r, key), kind), reverse=descending)
    missing.sort(key=lambda r: r.name)
    return present + missing


def page(rows: Sequence[EdgeRow], offset: int = 0, limit: int = 100) -> list[EdgeRow]:
    if offset < 0 or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"offset >= 0 and 1 <= limit <= {MAX_LIMIT}, got {offset}, {limit}")
    return list(rows[offset : offset + limit])


def apply_query(rows: Iterable[EdgeRow], query: FleetQuery) -> tuple[list[EdgeRow], int]:
    """Filter, sort and page: (the page's rows, how many matched in all)."""
    matched = sort_rows(filter_rows(rows, query), query.sort, query.descending)
    return page(matched, query.offset, query.limit), len(matched)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        value = ";".join(value)
    if isinstance(value, str):
        # a spreadsheet runs cells that start like a formula: quote those
        return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
    return str(value)


def to_csv(rows: Iterable[EdgeRow], columns: Sequence[str] | None = None) -> str:
    """``rows`` as CSV with a header: every column, or ``columns`` in that order (tags
    joined by ``;``, times ISO 8601, missing values empty)."""
    names = list(columns) if columns is not None else list(COLUMNS)
    for name in names:
        _column(name, "columns")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([_cell(getattr(row, name)) for name in names])
    return out.getvalue()
