"""Local log append speed: ``SqliteLog.write`` vs raw ``sqlite3`` WAL inserts, same run.

    .venv/bin/python bench/local_log.py [--quick] [--synchronous FULL|NORMAL]
        [--switch-interval S]

Events of realistic rows (18 float32 features in, 1 out, one model step) in batches of
500 rows, each batch one ``write``, two in flight as the agent's pump writes them (one
encodes while the other commits; each returns once committed); ``--inputs lists`` gives
the events the inputs as Python lists, as the pandas-records path echoes them. Against it,
on a fresh file with the same ``synchronous`` setting and batch size, plain ``sqlite3``:
the same rows already encoded (encode time not counted), one ``executemany`` of one row
per line and one transaction per batch - the floor a per-row table costs. The log stores
blocks of lines, so it also runs ``raw_blocks``: the same lines joined into the log's
64 KiB blocks, inserted raw. ``--switch-interval`` sets the GIL's (the agent runs with
``edge_agent.agent.SWITCH_INTERVAL_S``, 1 ms; left out, Python's 5 ms).

Prints one JSON object on its last line: ``log_rows_per_s``, ``raw_rows_per_s``,
``ratio`` = log / raw (target >= 0.7), ``raw_blocks_rows_per_s``, batch size, setting.
Rounds alternate log and raw; medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np

from edgepub.edge_agent.inference_log import InferenceEvent, ModelUsed
from edgepub.edge_agent.local_log import SqliteLog
from edgepub.edge_agent.log_store import BLOCK_BYTES
from edgepub.edge_agent.row_lines import row_lines

BATCH_ROWS = 500
PUMP_DEPTH = 2  # edge_agent.inference_log.pump's writes in flight
FEATURES = 18


def make_events(batches: int, per_event: int, lists: bool = False) -> list[list[InferenceEvent]]:
    rng = np.random.default_rng(7)
    steps = (ModelUsed("house-price", "m-3f2a", "9c" * 32),)
    out = []
    for b in range(batches):
        batch = []
        for _ in range(BATCH_ROWS // per_event):
            x = (rng.random((per_event, FEATURES)) * 100).astype("float32")
            batch.append(
                InferenceEvent(
                    time=1_700_000_000_000 + b,
                    pipeline="house-price",
                    pipeline_version="v-8d1e",
                    records=per_event,
                    inputs={"x": x.tolist() if lists else x},
                    outputs={"y": (rng.random((per_event, 1)) * 1e6).astype("float32")},
                    elapsed_ns=[41_000],
                    model_versions=steps,
                    partition="edge-1",
                )
            )
        out.append(batch)
    return out


async def time_log(path: Path, batches: list[list[InferenceEvent]], sync: str) -> float:
    """Writes as the agent's pump makes them: at most two in flight (one encodes while the
    other commits), each returning once committed."""
    log = await SqliteLog.open(path, bound_bytes=1 << 40, synchronous=sync)
    writing: deque[asyncio.Task[None]] = deque()
    start = time.perf_counter()
    for batch in batches:
        writing.append(asyncio.create_task(log.write(batch)))
        if len(writing) >= PUMP_DEPTH:
            await writing.popleft()
    for task in writing:
        await task
    elapsed = time.perf_counter() - start
    assert log.write_failures == 0 and log.rows_written == len(batches) * BATCH_ROWS
    await log.close()
    return elapsed


def raw_db(path: Path, sync: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={sync}")
    db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, line BLOB NOT NULL)")
    return db


def time_raw(path: Path, lines: list[list[tuple[bytes]]], sync: str) -> float:
    db = raw_db(path, sync)
    start = time.perf_counter()
    for batch in lines:
        db.execute("BEGIN")
        db.executemany("INSERT INTO t (line) VALUES (?)", batch)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def blocks_of(batch: list[tuple[bytes]]) -> list[tuple[bytes]]:
    blocks, run, size = [], [], 0
    for (line,) in batch:
        run.append(line)
        size += len(line) + 1
        if size >= BLOCK_BYTES:
            blocks.append((b"\n".join(run),))
            run, size = [], 0
    if run:
        blocks.append((b"\n".join(run),))
    return blocks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k rows x 3 rounds")
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL", "OFF"])
    parser.add_argument("--per-event", type=int, default=1, help="records per request")
    parser.add_argument("--inputs", choices=["arrays", "lists"], default="arrays")
    parser.add_argument("--switch-interval", type=float, help="seconds (sys.setswitchinterval)")
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    rows, rounds = (100_000, 3) if args.quick else (500_000, 5)
    batches = make_events(rows // BATCH_ROWS, args.per_event, args.inputs == "lists")
    lines: list[list[tuple[bytes]]] = []
    seq = 1
    for batch in batches:
        encoded = []
        for event in batch:
            encoded.extend((line,) for line in row_lines(event, seq))
            seq += event.records
        lines.append(encoded)
    blocks = [blocks_of(batch) for batch in lines]
    line_bytes = sum(len(line) for batch in lines for (line,) in batch) / rows
    print(f"{rows} rows of ~{line_bytes:.0f} bytes, {rounds} rounds", file=sys.stderr)
    times: dict[str, list[float]] = {"log": [], "raw": [], "raw_blocks": []}
    with tempfile.TemporaryDirectory(prefix="edgepub-bench-log-") as tmp:
        for r in range(rounds):
            home = Path(tmp) / str(r)
            home.mkdir()
            times["log"].append(asyncio.run(time_log(home / "log.db", batches, args.synchronous)))
            times["raw"].append(time_raw(home / "raw.db", lines, args.synchronous))
            times["raw_blocks"].append(time_raw(home / "blocks.db", blocks, args.synchronous))
            print({k: round(rows / v[-1]) for k, v in times.items()}, file=sys.stderr)
    rate = {k: rows / statistics.median(v) for k, v in times.items()}
    result = {
        "log_rows_per_s": round(rate["log"]),
        "raw_rows_per_s": round(rate["raw"]),
        "ratio": round(rate["log"] / rate["raw"], 3),
        "raw_blocks_rows_per_s": round(rate["raw_blocks"]),
        "ratio_to_raw_blocks": round(rate["log"] / rate["raw_blocks"], 3),
        "batch_rows": BATCH_ROWS,
        "records_per_event": args.per_event,
        "inputs": args.inputs,
        "synchronous": args.synchronous,
        "switch_interval_s": sys.getswitchinterval(),
        "rows": rows,
        "row_bytes": round(line_bytes),
        "rounds": rounds,
        "sqlite": sqlite3.sqlite_version,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
