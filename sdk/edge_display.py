"""How edges show themselves: the seed's ``list_edges`` table (ID, Name, Tags, Pipeline
Version, SPIFFE ID) and what a fleet operator needs next to it (connection with its
threshold, last seen, credential, running version, agent). Pure: edges and a clock in,
strings out; every value escaped in HTML.
"""

from __future__ import annotations

import html
import io
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgepub.shared.edge_messages import EdgeInfo

from .display import format_datetime

__all__ = [
    "EDGE_COLUMNS",
    "NO_EDGES",
    "connection_text",
    "credential_text",
    "edge_row",
    "edge_rows",
    "edges_html",
    "edges_text",
    "last_seen_text",
    "running_text",
    "seconds_text",
]

EDGE_COLUMNS = (
    "ID",
    "Name",
    "Tags",
    "Pipeline Version",
    "SPIFFE ID",
    "Status",
    "Last Seen",
    "Credential",
    "Running Version",
    "Agent",
)
NO_EDGES = "(No Edges)"  # the seed's empty list


def seconds_text(seconds: float) -> str:
    """A duration in whole units, as a person reads it: ``45s``, ``90s``, ``5m``, ``7d``."""
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= 2 * size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _utc(value: datetime) -> datetime:
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).astimezone(UTC)


def connection_text(edge: EdgeInfo) -> str:
    """``online``/``offline``/``never connected``, the threshold stated when offline (a
    removed edge is offline because it was removed, whatever its last report)."""
    if edge.connection == "never":
        return "never connected"
    if edge.credential_state == "revoked":
        return "offline (removed)"
    if edge.connection == "offline":
        return f"offline (no contact for over {seconds_text(edge.offline_after_s)})"
    return f"online, {edge.status}" if edge.status else "online"


def last_seen_text(edge: EdgeInfo, now: datetime) -> str:
    """When it last reported, and how long ago: ``2024-03-26 19:07:43+00:00 (12s ago)``."""
    if edge.last_seen is None:
        return "never"
    ago = (_utc(now) - _utc(edge.last_seen)).total_seconds()
    return f"{format_datetime(edge.last_seen)} ({seconds_text(ago)} ago)"


def credential_text(edge: EdgeInfo, now: datetime) -> str:
    """The credential's state in words, with its expiry while it has one."""
    state = edge.credential_state
    if state == "pending":
        text = "pending join (join token not used yet)"
    elif state == "joined":
        text = "joined"
    elif state == "expired":
        text = "expired (remove_edge and add_edge it again for a new bundle)"
    else:
        at = edge.revoked_at
        text = "revoked" if at is None else f"revoked (removed {format_datetime(at)})"
    expires = edge.credential_expires_at
    if state == "joined" and expires is not None:
        left = (_utc(expires) - _utc(now)).total_seconds()
        text += f", expires {format_datetime(expires)} (in {seconds_text(left)})"
    return text


def running_text(edge: EdgeInfo) -> str:
    """The version the edge reports running, flagged while it is not the one it should run."""
    if edge.running_version is None and edge.running_publish_id is None:
        return ""
    text = edge.running_version or ""
    if edge.running_publish_id is not None and edge.running_publish_id != edge.publish_id:
        text += f" (publish {edge.running_publish_id}; should run {edge.publish_id})"
    return text.strip()


def edge_row(edge: EdgeInfo, now: datetime) -> list[str]:
    return [
        edge.id,
        edge.name,
        repr(list(edge.tags)),  # the seed shows tags as a Python list: []
        str(edge.pipeline_version_id),
        edge.spiffe_id,
        connection_text(edge),
        last_seen_text(edge, now),
        credential_text(edge, now),
        running_text(edge),
        edge.agent_version or "",
    ]


def edge_rows(edges: Iterable[EdgeInfo], now: datetime) -> list[list[str]]:
    return [edge_row(e, now) for e in edges]


def edges_html(edges: Sequence[EdgeInfo], now: datetime) -> str:
    """The list table, or ``(No Edges)``."""
    rows = edge_rows(edges, now)
    if not rows:
        return NO_EDGES
    head = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in EDGE_COLUMNS) + "</tr>"
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell, quote=False)}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table>{head}{body}</table>"


def edges_text(edges: Sequence[EdgeInfo], now: datetime, *, width: int | None = None) -> str:
    """The list table for a terminal, as wide as its content unless ``width`` is given."""
    rows = edge_rows(edges, now)
    if not rows:
        return NO_EDGES
    table = Table(box=box.SIMPLE_HEAD)
    for column in EDGE_COLUMNS:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # Text: values are never rich markup
    if width is None:
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(EDGE_COLUMNS)]
        width = sum(widths) + 3 * len(widths) + 2
    console = Console(
        file=io.StringIO(), width=width, color_system=None, force_terminal=False, record=True
    )
    console.print(table)
    text = console.export_text(styles=False)
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n") + "\n"
