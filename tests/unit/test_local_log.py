"""The SQLite local log on real files: append, pages, acks, restarts, the bound and its gap,
drops and failed writes counted, a corrupt file moved aside; the event loop never blocks."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgepub.edge_agent.inference_log import InferenceEvent, LogHandoff, ModelUsed, pump
from edgepub.edge_agent.local_log import SqliteLog, default_bound
from edgepub.shared.log_lines import GapLine, RowLine, decode_line
from support.waiting import async_wait_for

pytestmark = pytest.mark.no_blocking
MiB = 1 << 20


def event(records: int = 10, pipeline: str = "p1", version: str = "v-1") -> InferenceEvent:
    rng = np.random.default_rng(records)
    return InferenceEvent(
        time=1_700_000_000_000,
        pipeline=pipeline,
        pipeline_version=version,
        records=records,
        inputs={"x": rng.random((records, 18)).astype("float32")},
        outputs={"y": rng.random((records, 1)).astype("float32")},
        elapsed_ns=[1000],
        model_versions=(ModelUsed("scaler", "m-1", "ab" * 32),),
        partition="edge-1",
    )


def run(fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(fn())


async def read_all(log: SqliteLog, after: int = 0, max_rows: int = 1000) -> list[bytes]:
    lines: list[bytes] = []
    while (page := await log.read_page(after, max_rows, 1 << 20)) is not None:
        lines.extend(page.lines())
        after = page.last_seq
    return lines


def aside(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.corrupt-*"))


def tally(lines: list[bytes]) -> tuple[int, dict[str, int], list[int]]:
    """Row lines, rows lost by reason, and every seq in order."""
    rows, lost, seqs = 0, {}, []
    for raw in lines:
        line = decode_line(raw)
        seqs.append(line.seq)
        if isinstance(line, GapLine):
            lost[line.gap.reason] = lost.get(line.gap.reason, 0) + line.gap.count
        else:
            rows += 1
    return rows, lost, seqs


def test_append_read_and_ack(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = await SqliteLog.open(tmp_path / "log.db", bound_bytes=64 * MiB)
        await log.write([event(10), event(5, "p2"), event(7)])
        assert (log.last_seq, log.backlog, log.watermark) == (22, 22, 0)
        page = await log.read_page(0, 100, 1 << 20)
        assert page is not None and page.pipeline == "p1" and page.rows == 10  # p2 starts anew
        line = decode_line(page.lines()[0])
        assert isinstance(line, RowLine) and line.seq == 1 and line.pipeline_version == "v-1"
        assert line.models == (("scaler", "m-1", "ab" * 32),)
        page = await log.read_page(3, 4, 1 << 20)
        assert page is not None and (page.first_seq, page.last_seq) == (4, 7)
        rows, lost, seqs = tally(await read_all(log))
        assert rows == 22 and not lost and seqs == list(range(1, 23))
        await log.ack(15)  # inside a block: the rest of it still reads
        assert log.watermark == 15  # at once; the file (and the backlog) learn it soon after
        await log.flush()
        assert (log.watermark, log.backlog) == (15, 7)
        assert tally(await read_all(log, 15))[2] == list(range(16, 23))
        await log.ack(3)  # never back
        assert log.watermark == 15
        await log.ack(10**9)  # never past what exists
        await log.flush()
        assert (log.watermark, log.backlog) == (22, 0)
        assert await log.read_page(22, 10, 1 << 20) is None
        await log.close()

    run(scenario)


def test_restart_keeps_seq_and_watermark_even_when_everything_was_acked(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "log.db"
        log = await SqliteLog.open(path, bound_bytes=64 * MiB)
        await log.write([event(10)])
        await log.ack(4)
        await log.close()
        log = await SqliteLog.open(path, bound_bytes=64 * MiB)
        assert (log.last_seq, log.watermark, log.backlog) == (10, 4, 6)
        await log.ack(10)
        await log.close()
        log = await SqliteLog.open(path, bound_bytes=64 * MiB)
        await log.write([event(3)])
        assert tally(await read_all(log, log.watermark))[2] == [11, 12, 13]
        await log.close()

    run(scenario)


def test_the_bound_evicts_the_oldest_into_one_exact_gap_and_the_file_stays_bounded(
    tmp_path: Path,
) -> None:
    bound = 4 * MiB
    slack = 256 << 10  # one write batch (here ~60 KiB) and SQLite's page rounding

    async def scenario() -> None:
        log = await SqliteLog.open(tmp_path / "log.db", bound_bytes=bound)
        largest = 0
        for _ in range(400):  # ~24 MiB of rows through a 4 MiB bound
            await log.write([event(100)])
            largest = max(largest, log.file_bytes)
        assert log.evicted_rows > 0
        rows, lost, seqs = tally(await read_all(log))
        assert rows + lost["evicted"] == 40_000 and lost["evicted"] == log.evicted_rows
        assert seqs == sorted(set(seqs)) and seqs[-1] == 40_000
        first = decode_line((await read_all(log))[0])
        assert isinstance(first, GapLine) and first.gap.first_seq == 1  # one gap, at the head
        assert largest <= bound + slack, (largest, bound)
        await log.ack(log.last_seq)  # acked: pages go back to the file system (the ack is
        await log.write([event(1)])  # stored with this write, its WAL reset by the next)
        await log.write([event(1)])
        assert log.file_bytes < bound // 2
        await log.close()

    run(scenario)


def test_lines_read_and_not_acked_are_never_evicted(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = await SqliteLog.open(tmp_path / "log.db", bound_bytes=2 * MiB)
        await log.write([event(100)])
        page = await log.read_page(0, 50, 1 << 20)  # in flight: seqs 1..50
        assert page is not None
        for _ in range(100):
            await log.write([event(100)])
        assert log.evicted_rows > 0
        rest = await read_all(log, page.last_seq)
        rows, lost, seqs = tally(rest)
        assert page.rows + rows + lost["evicted"] == 10_100  # Ops gets each row or its count
        assert seqs[0] > 50
        await log.ack(page.last_seq)
        await log.close()

    run(scenario)


def test_dropped_and_failed_rows_are_counted_in_gap_lines(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = await SqliteLog.open(tmp_path / "log.db", bound_bytes=64 * MiB)
        await log.write([event(2)])
        log.note_dropped(5)

        def full(op: str) -> None:
            if op == "write":
                raise sqlite3.OperationalError("database or disk is full")

        log.fault = full
        await log.write([event(7)])  # does not raise
        await log.write([event(1)])
        assert (log.write_failures, log.failed_rows, log.last_seq) == (2, 8, 2)
        assert not log.healthy and "disk is full" in str(log.view()["last_error"])
        log.fault = None
        await log.write([event(3)])
        assert log.healthy
        rows, lost, seqs = tally(await read_all(log))
        assert (rows, lost) == (5, {"handoff_full": 5, "write_failed": 8})
        assert seqs == [1, 2, 3, 4, 5, 6, 7]  # the gaps come before the rows after them
        await log.close()

    run(scenario)


def test_the_pump_reports_handoff_drops_by_record(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = await SqliteLog.open(tmp_path / "log.db", bound_bytes=64 * MiB)
        handoff = LogHandoff(capacity=2)
        for _ in range(5):
            handoff.offer(event(3))  # two fit: 3 events x 3 records dropped
        pumping = asyncio.create_task(pump(handoff, log, linger_s=0))
        await async_wait_for(lambda: log.last_seq >= 7, what="the pump's batch")
        pumping.cancel()
        rows, lost, _ = tally(await read_all(log))
        assert (rows, lost) == (6, {"handoff_full": 9})
        await log.close()

    run(scenario)


def test_a_corrupt_file_is_moved_aside_and_a_fresh_log_continues_above_it(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        path = tmp_path / "log.db"
        path.write_bytes(b"not a database at all" * 500)
        log = await SqliteLog.open(path, bound_bytes=64 * MiB)
        assert log.corrupt_files == 1
        assert [p.name.startswith("log.db.corrupt-") for p in aside(tmp_path)] == [True]
        assert log.last_seq > 10**15  # nothing was readable: above the clock's microseconds
        await log.write([event(2)])
        seqs = tally(await read_all(log, log.watermark))[2]
        assert len(seqs) == 2 and seqs[0] > 10**15
        await log.close()

    run(scenario)


def test_a_log_that_cannot_open_counts_and_inference_goes_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        blocker = tmp_path / "file"
        blocker.write_text("")
        log = await SqliteLog.open(blocker / "logs" / "log.db", bound_bytes=64 * MiB)
        await log.write([event(4)])
        assert (log.write_failures, log.failed_rows, log.healthy) == (1, 4, False)
        assert await log.read_page(0, 10, 1000) is None
        await log.ack(5)
        await log.close()

    run(scenario)


def test_a_tiny_bound_keeps_only_the_newest_and_counts_the_rest(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = await SqliteLog.open(tmp_path / "log.db", bound_bytes=8 << 10)
        for _ in range(20):
            await log.write([event(50), event(50)])
        rows, lost, _ = tally(await read_all(log))
        assert rows + lost["evicted"] == 2000 and rows > 0
        assert log.file_bytes < 512 << 10
        await log.close()

    run(scenario)


def test_default_bound() -> None:
    assert default_bound(100 << 30) == 1 << 30
    assert default_bound(400 * MiB) == 100 * MiB
    assert default_bound(0) == MiB
