"""``edgepub logs show|tail``: rows of the pipeline log as terminal lines or JSON objects."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec

from edgepub.shared.log_lines import RowLine

from .log_window import from_ms

_json = msgspec.json.Encoder()


def row_object(row: RowLine, partition: str) -> dict[str, Any]:
    """The row as the log holds it, with its partition (the edge) and an ISO time."""
    out: dict[str, Any] = msgspec.to_builtins(row)
    out["time"] = from_ms(row.time).isoformat()
    out["partition"] = partition
    return out


def row_text(row: RowLine, partition: str) -> str:
    """One line: time, partition, the out values."""
    values = " ".join(f"{k}={_json.encode(v).decode()}" for k, v in row.out.items())
    return f"{from_ms(row.time).isoformat()} {partition} {values}"


def add_parser(verbs: Any, connection_args: Any) -> None:
    logs = verbs.add_parser("logs", help="inference logs at Ops").add_subparsers(
        dest="action", required=True
    )
    show = logs.add_parser("show", help="print a pipeline's newest rows")
    show.add_argument("pipeline")
    show.add_argument("--limit", type=int, default=100)
    show.add_argument("--partition", metavar="EDGE", help="one edge's rows")
    connection_args(show)
    tail = logs.add_parser("tail", help="follow a pipeline's rows as they arrive (Ctrl-C)")
    tail.add_argument("pipeline")
    tail.add_argument("--partition", metavar="EDGE", help="one edge's rows")
    connection_args(tail)


def run(args: argparse.Namespace, client: Any) -> None:
    from . import log_reader

    if args.action == "show":
        read = log_reader.read_logs(
            client,
            args.pipeline,
            limit=args.limit,
            partition=args.partition,
            dataset=["*", "metadata.partition"],
        )
        log_reader.warn_about(read)
        if args.json:
            for item in read.table.to_pylist():
                sys.stdout.write(_json.encode(_plain(item)).decode() + "\n")
        else:
            print(read.table.to_pandas().to_string(index=False))
        return
    subject = log_reader.log_subject(args.pipeline, args.partition)

    def on_row(row: RowLine, partition: str) -> None:
        line = (
            _json.encode(row_object(row, partition)).decode()
            if args.json
            else row_text(row, partition)
        )
        print(line, flush=True)

    def on_ready() -> None:
        print(f"following {subject} (Ctrl-C to stop)", file=sys.stderr, flush=True)

    async def tail() -> None:
        js = (await client._session.nc()).jetstream()
        await log_reader.follow(js, subject, on_row, on_ready)

    client._run(tail())


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in item.items()}
