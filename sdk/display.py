"""How a publish shows itself: rows with the seed's labels, an HTML table for notebooks and a
plain-text rendering for terminals and logs. Pure: records in, strings out.

Labels are Wallaroo's (SDK-COMPAT 5). Additions: an ``Error`` row after ``Status`` when the
publish failed; ``EDGE_PORT`` in the Docker/Podman notes (the command maps ``$EDGE_PORT``).
"""

from __future__ import annotations

import html
import io
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgepub.shared.errors import InvalidRequestError
from edgepub.shared.schemas import PublishRecord

from .commands import docker_run_command, helm_install_command, podman_run_command

__all__ = [
    "LIST_COLUMNS",
    "PUBLISH_LABELS",
    "TIME_FORMAT",
    "Commands",
    "format_datetime",
    "publish_fields",
    "publish_html",
    "publish_rows",
    "publish_text",
    "publishes_html",
    "publishes_text",
]

PUBLISH_LABELS = (
    "ID",
    "Pipeline Name",
    "Pipeline Version",
    "Status",
    "Workspace Id",
    "Workspace Name",
    "Edges",
    "Engine URL",
    "Pipeline URL",
    "Helm Chart URL",
    "Helm Chart Reference",
    "Helm Chart Version",
    "Engine Config",
    "User Images",
    "Created By",
    "Created At",
    "Updated At",
    "Replaces",
    "Docker Run Command",
    "Podman Run Command",
    "Helm Install Command",
)
LIST_COLUMNS = (
    "id",
    "pipeline_version_name",
    "engine_url",
    "pipeline_url",
    "created_by",
    "created_at",
    "updated_at",
)
TIME_FORMAT = "%Y-%d-%b %H:%M:%S"  # Wallaroo's list format: 2023-17-Aug 14:04:44
NO_PUBLISHES = "(no publishes)"
_RUN_VARS = ("EDGE_PORT", "OCI_USERNAME", "OCI_PASSWORD")
_HELM_VARS = ("HELM_INSTALL_NAME", "HELM_INSTALL_NAMESPACE", "OCI_USERNAME", "OCI_PASSWORD")


class Commands(NamedTuple):
    """A command row: one command, or one per edge, and the note naming the variables."""

    entries: tuple[tuple[str | None, str], ...]  # (edge name, or None without edges; command)
    note: str

    def as_text(self) -> str:
        if len(self.entries) == 1 and self.entries[0][0] is None:
            return f"{self.entries[0][1]}\n\n{self.note}"
        parts = [f"Edge: {edge}\n{command}" for edge, command in self.entries]
        return "\n\n".join([*parts, self.note])


Value = str | Commands


def format_datetime(value: datetime) -> str:
    """UTC, as Python prints it: ``2023-08-17 14:04:44.939862+00:00``."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return str(aware.astimezone(UTC))


def _note(names: Sequence[str]) -> str:
    listed = ", ".join(names[:-1]) + f", and {names[-1]}"
    return f"Note: Please set the {listed} environment variables."


def _replaces(record: PublishRecord, replaced: Mapping[int, PublishRecord]) -> list[str]:
    out = []
    for publish_id in record.replaces:
        old = replaced.get(publish_id)
        if old is None:
            out.append(f"Publish {publish_id}")
        else:
            out.append(
                f'Publish {publish_id}, Pipeline "{old.pipeline_name}", '
                f"Version {old.pipeline_version_id}"
            )
    return out


def _sorted(value: object) -> object:
    """Dicts with sorted keys, all the way down: how Wallaroo shows an engine config."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    return value


def _unavailable(record: PublishRecord) -> str:
    if record.status == "Error":
        return "(none: the publish failed)"
    return "(available once the publish is Published)"


def _bundles(
    record: PublishRecord, edges: Mapping[str, str]
) -> list[tuple[str | None, str | None]]:
    """(edge name, bundle) per command: one per edge, else the publish's own bundle if it has
    one, else a single command without observability."""
    if edges:
        return list(edges.items())
    return [(None, record.docker_run_variables.get("EDGE_BUNDLE") or None)]


def _run_commands(record: PublishRecord, edges: Mapping[str, str], podman: bool) -> Value:
    pipeline_url = record.pipeline_url or record.docker_run_variables.get("PIPELINE_URL")
    if not pipeline_url or not record.engine_url:
        return _unavailable(record)
    render = podman_run_command if podman else docker_run_command
    bundles = _bundles(record, edges)
    try:
        entries = tuple(
            (
                edge,
                render(
                    pipeline_url=pipeline_url,
                    engine_url=record.engine_url,
                    engine_config=record.engine_config.as_dict(),
                    edge_bundle=bundle,
                ),
            )
            for edge, bundle in bundles
        )
    except InvalidRequestError as exc:
        return f"(cannot render: {exc.message})"
    with_volume = any(bundle for _, bundle in bundles)
    return Commands(
        entries, _note(("PERSISTENT_VOLUME_DIR", *_RUN_VARS) if with_volume else _RUN_VARS)
    )


def _helm_commands(
    record: PublishRecord, edges: Mapping[str, str], upgrades: Collection[str]
) -> Value:
    if record.helm is None:
        return _unavailable(record)
    helm = record.helm
    bundles = _bundles(record, edges)
    entries = tuple(
        (
            edge,
            helm_install_command(
                chart_url=helm.chart,
                chart_version=helm.version,
                helm_values=helm.values,
                edge_bundle=bundle,
                upgrade=edge is not None and edge in upgrades,
            ),
        )
        for edge, bundle in bundles
    )
    return Commands(entries, _note(_HELM_VARS))


def publish_fields(
    record: PublishRecord,
    edges: Mapping[str, str] | None = None,
    replaced: Mapping[int, PublishRecord] | None = None,
    upgrades: Collection[str] = (),
) -> list[tuple[str, Value]]:
    """(label, value) pairs; command rows keep their structure for the HTML sub-table.
    ``edges``: edge name -> bundle; ``replaced``: replaced publishes by id, for detail;
    ``upgrades``: the edges already running a pipeline this publish replaces, shown
    ``helm upgrade`` (in place, as the seed's replace example) where the rest get
    ``helm install``."""
    edges = edges or {}
    helm = record.helm
    fields: list[tuple[str, Value]] = [
        ("ID", str(record.id)),
        ("Pipeline Name", record.pipeline_name),
        ("Pipeline Version", record.pipeline_version_name),
        ("Status", record.status),
    ]
    if record.error:
        fields.append(("Error", record.error))
    fields += [
        ("Workspace Id", str(record.workspace_id)),
        ("Workspace Name", record.workspace_name),
        ("Edges", "\n".join(edges)),
        ("Engine URL", record.engine_url or ""),
        ("Pipeline URL", record.pipeline_url or ""),
        ("Helm Chart URL", "oci://" + helm.chart.removeprefix("oci://") if helm else ""),
        ("Helm Chart Reference", helm.reference if helm else ""),
        ("Helm Chart Version", helm.version if helm else ""),
        ("Engine Config", repr(_sorted(record.engine_config.as_dict()))),
        ("User Images", repr(record.user_images)),
        ("Created By", record.created_by),
        ("Created At", format_datetime(record.created_at)),
        ("Updated At", format_datetime(record.updated_at)),
        ("Replaces", "\n".join(_replaces(record, replaced or {}))),
        ("Docker Run Command", _run_commands(record, edges, podman=False)),
        ("Podman Run Command", _run_commands(record, edges, podman=True)),
        ("Helm Install Command", _helm_commands(record, edges, upgrades)),
    ]
    return fields


def publish_rows(
    record: PublishRecord,
    edges: Mapping[str, str] | None = None,
    replaced: Mapping[int, PublishRecord] | None = None,
    upgrades: Collection[str] = (),
) -> list[tuple[str, str]]:
    """The display rows as plain strings; multi-line values are joined by newlines."""
    return [
        (label, value.as_text() if isinstance(value, Commands) else value)
        for label, value in publish_fields(record, edges, replaced, upgrades)
    ]


# --- HTML -----------------------------------------------------------------------------------

_LEFT = ' style="text-align: left"'


def _html_lines(value: str) -> str:
    return "<br/>".join(html.escape(line, quote=False) for line in value.split("\n"))


def _html_commands(commands: Commands) -> str:
    rows = []
    if any(edge is not None for edge, _ in commands.entries):
        rows.append(f"<tr><td{_LEFT}><b>Edge</b></td><td{_LEFT}><b>Command</b></td></tr>")
    for edge, command in commands.entries:
        pre = f"<pre{_LEFT}>{html.escape(command, quote=False)}</pre>"
        name = "" if edge is None else f"<td>{html.escape(edge, quote=False)}</td>"
        rows.append(f"<tr>{name}<td>{pre}</td></tr>")
    return f"<table>{''.join(rows)}</table><br/><i>{html.escape(commands.note, quote=False)}</i>"


def publish_html(
    record: PublishRecord,
    edges: Mapping[str, str] | None = None,
    replaced: Mapping[int, PublishRecord] | None = None,
    upgrades: Collection[str] = (),
) -> str:
    """A two-column HTML table; every value escaped, commands in ``<pre>``."""
    rows = []
    for label, value in publish_fields(record, edges, replaced, upgrades):
        cell = _html_commands(value) if isinstance(value, Commands) else _html_lines(value)
        rows.append(f"<tr><td>{html.escape(label, quote=False)}</td><td>{cell}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _list_row(record: PublishRecord, time_format: str) -> list[str]:
    return [
        str(record.id),
        record.pipeline_version_name,
        record.engine_url or "",
        record.pipeline_url or "",
        record.created_by,
        _utc(record.created_at).strftime(time_format),
        _utc(record.updated_at).strftime(time_format),
    ]


def _utc(value: datetime) -> datetime:
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC)


def publishes_html(records: Iterable[PublishRecord], time_format: str = TIME_FORMAT) -> str:
    """The seed's list table, or ``(no publishes)``."""
    rows = [_list_row(r, time_format) for r in records]
    if not rows:
        return NO_PUBLISHES
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in LIST_COLUMNS) + "</tr>"
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell, quote=False)}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table>{head}{body}</table>"


# --- text -----------------------------------------------------------------------------------


def _render(table: Table, width: int) -> str:
    console = Console(
        file=io.StringIO(), width=width, color_system=None, force_terminal=False, record=True
    )
    console.print(table)
    text = console.export_text(styles=False)
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def publish_text(
    record: PublishRecord,
    edges: Mapping[str, str] | None = None,
    replaced: Mapping[int, PublishRecord] | None = None,
    upgrades: Collection[str] = (),
    *,
    width: int = 120,
) -> str:
    """A field table, then each command unwrapped below it so it can be copied as it is."""
    table = Table(show_header=False, box=box.SIMPLE, title=f"Publish {record.id}")
    table.add_column("Field", no_wrap=True)
    table.add_column("Value", overflow="fold")
    sections = []
    for label, value in publish_fields(record, edges, replaced, upgrades):
        if isinstance(value, Commands):
            sections.append(f"{label}\n{'-' * len(label)}\n{value.as_text()}")
        else:
            table.add_row(Text(label), Text(value))  # Text: values are never rich markup
    return "\n\n".join([_render(table, width), *sections]) + "\n"


def publishes_text(
    records: Iterable[PublishRecord], time_format: str = TIME_FORMAT, *, width: int | None = None
) -> str:
    """The list table for a terminal or a log, or ``(no publishes)``. Without ``width`` the
    table is as wide as its content, so URLs are never folded."""
    rows = [_list_row(r, time_format) for r in records]
    if not rows:
        return NO_PUBLISHES
    table = Table(box=box.SIMPLE_HEAD)
    for column in LIST_COLUMNS:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    if width is None:
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(LIST_COLUMNS)]
        width = sum(widths) + 3 * len(widths) + 2
    return _render(table, width) + "\n"
