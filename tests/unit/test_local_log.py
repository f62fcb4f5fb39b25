"""The SQLite local log on real files: append, pages, acks, restarts, the bound and its gap,
drops and failed writes counted, a corrupt file moved aside; the event loop never blocks.

A fresh file's first line is a ``reset`` gap line at the clock's microseconds (``start``
below): its rows follow it."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from edgepub.edge_agent import local_log
from edgepub.edge_agent.inference_log import InferenceEvent, LogHandoff, ModelUsed, pump
from edgepub.edge_agent.local_log import SqliteLog, default_bound
from edgepub.edge_agent.pages import Page
from edgepub.edge_agent.shipper import headers_of
from edgepub.services.log_collector import decisions
from edgepub.services.log_collector.pages import parse
from edgepub.shared import subjects
from edgepub.shared.log_lines import Gap, GapLine, RowLine, decode_line
from support.sqlite_damage import damage_leaf
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


class Ops:
    """What Ops holds of one edge, decided by the collector's own functions (``parse``,
    ``decide``, ``cut``) page by page: its watermark, rows, gap counts and seqs."""

    def __init__(self, watermark: int = 0) -> None:
        self.watermark = watermark
        self.rows = self.lost = self.covered = 0
        self.seqs: list[int] = []
        self.gaps: list[Gap] = []

    @property
    def total(self) -> int:
        return self.rows + self.lost

    def take(self, page: Page) -> decisions.Decision:
        subject = subjects.edge_subject("edge-1", subjects.EDGE_LOGS)
        got = parse(subject, headers_of("edge-1", page, page.pipeline or "p1", 1), page.body)
        decision = decisions.decide(got.range, self.watermark)
        if isinstance(decision, decisions.Covered):
            self.covered += 1
        if isinstance(decision, decisions.Append):
            for raw in got.lines[decisions.cut(got.seqs, decision.after) :]:
                line = decode_line(raw)
                self.seqs.append(line.seq)
                if isinstance(line, GapLine):
                    self.lost += line.gap.count
                    self.gaps.append(line.gap)
                else:
                    self.rows += 1
            self.watermark = decision.watermark
        return decision


async def ship(log: SqliteLog, ops: Ops, max_rows: int = 25) -> None:
    """As the shipper does: pages after the watermark until there are none, each taken by
    Ops and acked; none may wait (a page that waits waits forever: nothing fills it)."""
    after = log.watermark
    while (page := await log.read_page(after, max_rows, 1 << 20)) is not None:
        decision = ops.take(page)
        assert not isinstance(decision, decisions.Wait), (decision, page.first_seq)
        await log.ack(page.last_seq)
        after = page.last_seq
    assert ops.seqs == sorted(set(ops.seqs)), "a seq twice or out of order at Ops"


def malformed(op: str) -> None:
    """A fault as SQLite raises it for a corrupt file, inside the write's transaction."""
    if op == "write":
        raise sqlite3.DatabaseError("database disk image is malformed")


def test_append_read_and_ack(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = await SqliteLog.open(tmp_path / "log.db", bound_bytes=64 * MiB)
        s = log.last_seq  # the reset line's
        await log.write([event(10), event(5, "p2"), event(7)])
        assert (log.last_seq, log.backlog, log.watermark) == (s + 22, 23, 0)
        page = await log.read_page(s, 100, 1 << 20)
        assert page is not None and page.pipeline == "p1" and page.rows == 10  # p2 starts anew
        line = decode_line(page.lines()[0])
        assert isinstance(line, RowLine) and line.seq == s + 1 and line.pipeline_version == "v-1"
        assert line.models == (("scaler", "m-1", "ab" * 32),)
        page = await log.read_page(s + 3, 4, 1 << 20)
        assert page is not None and (page.first_seq, page.last_seq) == (s + 4, s + 7)
        rows, lost, seqs = tally(await read_all(log, s))
        assert rows == 22 and not lost and seqs == list(range(s + 1, s + 23))
        await log.ack(s + 15)  # inside a block: the rest of it still reads
        assert log.watermark == s + 15  # at once; the file (and the backlog) soon after
        await log.flush()
        assert (log.watermark, log.backlog) == (s + 15, 7)
        assert tally(await read_all(log, s + 15))[2] == list(range(s + 16, s + 23))
        await log.ack(s + 3)  # never back
        assert log.watermark == s + 15
        await log.ack(s + 10**9)  # never past what exists
        await log.flush()
        assert (log.watermark, log.backlog) == (s + 22, 0)
        assert await log.read_page(s + 22, 10, 1 << 20) is None
        await log.close()

    run(scenario)


def test_restart_keeps_seq_and_watermark_even_when_everything_was_acked(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "log.db"
        log = await SqliteLog.open(path, bound_bytes=64 * MiB)
        s = log.last_seq
        await log.write([event(10)])
        await log.ack(s + 4)
        await log.close()
        log = await SqliteLog.open(path, bound_bytes=64 * MiB)
        assert (log.last_seq, log.watermark, log.backlog) == (s + 10, s + 4, 6)
        await log.ack(s + 10)
        await log.close()
        log = await SqliteLog.open(path, bound_bytes=64 * MiB)
        await log.write([event(3)])
        assert tally(await read_all(log, log.watermark))[2] == [s + 11, s + 12, s + 13]
        await log.close()

    run(scenario)


def test_the_bound_evicts_the_oldest_into_one_exact_gap_and_the_file_stays_bounded(
    tmp_path: Path,
) -> None:
    bound = 4 * MiB
    slack = 256 << 10  # one write batch (here ~60 KiB) and SQLite's page rounding

    async def scenario() -> None:
        log = await SqliteLog.open(tmp_path / "log.db", bound_bytes=bound)
        s = log.last_seq
        largest = 0
        for _ in range(400):  # ~24 MiB of rows through a 4 MiB bound
            await log.write([event(100)])
            largest = max(largest, log.file_bytes)
        assert log.evicted_rows > 0
        rows, lost, seqs = tally(await read_all(log))
        assert rows + lost["evicted"] == 40_000 and lost["evicted"] == log.evicted_rows
        assert seqs == sorted(set(seqs)) and seqs[-1] == s + 40_000
        first = decode_line((await read_all(log))[0])
        # one gap at the head, the reset line folded into it: it still reaches back to 1
        assert isinstance(first, GapLine) and first.gap.first_seq == 1
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
        page = await log.read_page(0, 50, 1 << 20)  # in flight: the reset line and 49 rows
        assert page is not None
        for _ in range(100):
            await log.write([event(100)])
        assert log.evicted_rows > 0
        rest = await read_all(log, page.last_seq)
        rows, lost, seqs = tally(rest)
        assert page.rows + rows + lost["evicted"] == 10_100  # Ops gets each row or its count
        assert seqs[0] > page.last_seq
        await log.ack(page.last_seq)
        await log.close()

    run(scenario)


def test_dropped_and_failed_rows_are_counted_in_gap_lines(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = await SqliteLog.open(tmp_path / "log.db", bound_bytes=64 * MiB)
        s = log.last_seq
        await log.write([event(2)])
        log.note_dropped(5)

        def full(op: str) -> None:
            if op == "write":
                raise sqlite3.OperationalError("database or disk is full")

        log.fault = full
        await log.write([event(7)])  # does not raise
        await log.write([event(1)])
        assert (log.write_failures, log.failed_rows, log.last_seq) == (2, 8, s + 2)
        assert not log.healthy and "disk is full" in str(log.view()["last_error"])
        log.fault = None
        await log.write([event(3)])
        assert log.healthy
        rows, lost, seqs = tally(await read_all(log, s))
        assert (rows, lost) == (5, {"handoff_full": 5, "write_failed": 8})
        assert seqs == list(range(s + 1, s + 8))  # the gaps come before the rows after them
        await log.close()

    run(scenario)


def test_the_pump_reports_handoff_drops_by_record(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = await SqliteLog.open(tmp_path / "log.db", bound_bytes=64 * MiB)
        s = log.last_seq
        handoff = LogHandoff(capacity=2)
        for _ in range(5):
            handoff.offer(event(3))  # two fit: 3 events x 3 records dropped
        pumping = asyncio.create_task(pump(handoff, log, linger_s=0))
        await async_wait_for(lambda: log.last_seq >= s + 7, what="the pump's batch")
        pumping.cancel()
        rows, lost, _ = tally(await read_all(log, s))
        assert (rows, lost) == (6, {"handoff_full": 9})
        await log.close()

    run(scenario)


def test_a_fresh_file_starts_at_the_clock_after_a_reset_line_reaching_back_to_1(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        before = time.time_ns() // 1000
        log = await SqliteLog.open(tmp_path / "log.db", bound_bytes=64 * MiB)
        s = log.last_seq
        assert before <= s <= time.time_ns() // 1000 and s < 2**53  # exact in JSON doubles
        assert (log.backlog, log.watermark) == (1, 0)
        await log.write([event(5)])
        first = decode_line((await read_all(log))[0])
        reset = Gap(count=0, first_seq=1, last_seq=s, reason="reset")
        assert first == GapLine(seq=s, gap=reset)
        ops = Ops(watermark=500)  # the edge's name had an older file: Ops holds 1..500
        await ship(log, ops)
        assert (ops.rows, ops.lost, ops.covered, ops.watermark) == (5, 0, 0, s + 5)
        await log.close()

    run(scenario)


def test_a_deleted_log_starts_again_above_every_seq_ops_holds(tmp_path: Path) -> None:
    """Hole 2: a new file under a name Ops knows (the edge removed and added again with an
    empty /persist, the volume lost) started at seq 1, and Ops took its pages as held."""

    async def scenario() -> None:
        path = tmp_path / "log.db"
        ops = Ops()
        log = await SqliteLog.open(path, bound_bytes=64 * MiB)
        await log.write([event(10)])
        await ship(log, ops)
        await log.close()
        await asyncio.to_thread(lambda: [f.unlink() for f in tmp_path.glob("log.db*")])
        log = await SqliteLog.open(path, bound_bytes=64 * MiB)
        assert log.last_seq > ops.watermark
        await log.write([event(7)])
        await ship(log, ops)
        assert (ops.rows, ops.lost, ops.covered) == (17, 0, 0)
        assert [g.reason for g in ops.gaps] == ["reset", "reset"]
        await log.close()

    run(scenario)


def test_corrupt_while_open_the_gap_counts_what_ops_lacks_from_its_ack(tmp_path: Path) -> None:
    """Hole 1 (/tmp/audit10/corrupt_wedge.py): Ops held the first rows, the file went
    corrupt with the rest unshipped and the ack not stored yet. The gap counted the acked
    rows too and started above the old file's last seq: every later page waited."""

    async def scenario() -> None:
        log = await SqliteLog.open(tmp_path / "log.db", bound_bytes=64 * MiB)
        await log.write([event(10)])
        ops = Ops()
        page = await log.read_page(0, 4, 1 << 20)  # the reset line and 3 rows
        assert page is not None and isinstance(ops.take(page), decisions.Append)
        await log.ack(page.last_seq)  # in memory: the file learns it later
        log.fault = malformed
        await log.write([event(3)])  # corrupt: these 3 rows fail, the file is moved aside
        log.fault = None
        await log.write([event(2)])
        assert (log.corrupt_files, log.corrupt_rows, len(aside(tmp_path))) == (1, 7, 1)
        await ship(log, ops)
        corrupt = [g for g in ops.gaps if g.reason == "corrupt"]
        assert len(corrupt) == 1 and corrupt[0].count == 7
        assert corrupt[0].first_seq == page.last_seq + 1  # reaches back to Ops' watermark
        assert (ops.rows, ops.total) == (5, 15)  # 3 + 2 rows; 7 in the gap, 3 write_failed
        await log.close()

    run(scenario)


@pytest.mark.parametrize("delivered", [True, False], ids=["ops-got-them", "lost-in-flight"])
def test_pages_in_flight_at_corruption_are_stored_again_and_counted_once(
    tmp_path: Path, delivered: bool
) -> None:
    async def scenario() -> None:
        log = await SqliteLog.open(tmp_path / "log.db", bound_bytes=64 * MiB)
        await log.write([event(40)])
        ops = Ops()
        first = await log.read_page(0, 10, 1 << 20)  # the reset line and 9 rows
        assert first is not None
        ops.take(first)
        await log.ack(first.last_seq)
        in_flight = [await log.read_page(first.last_seq, 10, 1 << 20)]
        assert in_flight[0] is not None
        in_flight.append(await log.read_page(in_flight[0].last_seq, 10, 1 << 20))
        again = await log.read_page(first.last_seq, 10, 1 << 20)  # the window started again
        assert again == in_flight[0]
        if delivered:  # Ops stored them; their acks never came back
            for page in in_flight:
                assert page is not None
                ops.take(page)
        log.fault = malformed
        await log.write([event(4)])
        log.fault = None
        await log.write([event(2)])
        await ship(log, ops)
        assert ops.total == 40 + 4 + 2
        assert ops.rows == 29 + 2  # each once: Ops cuts what it holds from a page
        corrupt = [g for g in ops.gaps if g.reason == "corrupt"]
        assert [g.count for g in corrupt] == [11]  # only rows never handed to the shipper
        await log.close()

    run(scenario)


def test_corrupt_at_open_after_a_clean_close_counts_exactly(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "log.db"
        log = await SqliteLog.open(path, bound_bytes=64 * MiB)
        for _ in range(20):
            await log.write([event(100)])
        ops = Ops()
        for _ in range(6):
            page = await log.read_page(log.watermark, 25, 1 << 20)
            assert page is not None
            ops.take(page)
            await log.ack(page.last_seq)
        await log.close()  # stores the acks, and that nothing above them was handed out
        await asyncio.to_thread(damage_leaf, path, ops.watermark)
        log = await SqliteLog.open(path, bound_bytes=64 * MiB)
        assert log.corrupt_files == 1
        await log.write([event(3)])
        await ship(log, ops)
        assert (ops.rows, ops.total) == (149 + 3, 2003)
        corrupt = [g for g in ops.gaps if g.reason == "corrupt"]
        assert len(corrupt) == 1 and corrupt[0].count == 2000 - 149
        await log.close()

    run(scenario)


def test_corrupt_at_open_after_pages_in_flight_at_close_is_an_upper_bound(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "log.db"
        log = await SqliteLog.open(path, bound_bytes=64 * MiB)
        for _ in range(20):
            await log.write([event(100)])
        ops = Ops()
        page = await log.read_page(0, 25, 1 << 20)
        assert page is not None
        ops.take(page)
        await log.ack(page.last_seq)
        late = await log.read_page(page.last_seq, 25, 1 << 20)  # stored at Ops, ack lost
        assert late is not None
        ops.take(late)
        await log.close()
        await asyncio.to_thread(damage_leaf, path, ops.watermark)
        log = await SqliteLog.open(path, bound_bytes=64 * MiB)
        await ship(log, ops)
        (gap,) = [g for g in ops.gaps if g.reason != "reset"]
        assert gap.reason == "corrupt_at_most" and gap.count == 2000 - 24  # from its ack on
        assert ops.total == 2000 + late.rows  # an upper bound: the late page's rows twice
        await log.close()

    run(scenario)


def test_a_file_nothing_reads_from_resets_from_the_clock_reaching_back_to_1(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        path = tmp_path / "log.db"
        path.write_bytes(b"not a database at all" * 500)
        before = time.time_ns() // 1000
        log = await SqliteLog.open(path, bound_bytes=64 * MiB)
        assert log.corrupt_files == 1
        assert [p.name.startswith("log.db.corrupt-") for p in aside(tmp_path)] == [True]
        assert log.last_seq >= before  # nothing was readable: the clock's microseconds
        await log.write([event(2)])
        ops = Ops(watermark=before - 10)  # whatever Ops holds
        await ship(log, ops)
        assert ops.gaps == [Gap(count=0, first_seq=1, last_seq=log.last_seq - 2, reason="reset")]
        assert (ops.rows, ops.covered) == (2, 0)
        await log.close()

    run(scenario)


def test_a_second_corruption_before_the_first_gap_shipped_keeps_the_count(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        log = await SqliteLog.open(tmp_path / "log.db", bound_bytes=64 * MiB)
        await log.write([event(10)])
        ops = Ops()
        page = await log.read_page(0, 4, 1 << 20)
        assert page is not None
        ops.take(page)
        await log.ack(page.last_seq)
        for rows in (2, 5):  # two files go bad in turn; the first one's gap never shipped
            log.fault = malformed
            await log.write([event(rows)])
            log.fault = None
        await log.write([event(1)])
        await ship(log, ops)
        assert (log.corrupt_files, ops.rows, ops.total) == (2, 3 + 1, 10 + 2 + 5 + 1)
        assert [g.count for g in ops.gaps if g.reason == "corrupt"] == [7]  # folded in once
        await log.close()

    run(scenario)


def test_a_log_that_opens_late_starts_at_the_clock_and_counts_what_it_missed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_log, "REOPEN_EVERY_S", 0.0)

    async def scenario() -> None:
        blocker = tmp_path / "logs"
        blocker.write_text("")  # a file where the log's directory should be
        log = await SqliteLog.open(blocker / "log.db", bound_bytes=64 * MiB)
        await log.write([event(4)])
        assert (log.failed_rows, log.healthy) == (4, False)
        await asyncio.to_thread(blocker.unlink)
        before = time.time_ns() // 1000
        await log.write([event(3)])
        assert log.healthy and log.last_seq >= before
        ops = Ops(watermark=77)  # an older file of this name
        await ship(log, ops)
        assert [g.reason for g in ops.gaps] == ["reset", "write_failed"]
        assert (ops.rows, ops.total, ops.covered) == (3, 7, 0)
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


class _ReclaimFails:
    """A connection whose free-page reclaim (after a commit, outside any transaction)
    fails as on a full disk."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith("PRAGMA freelist_count") and not self._db.in_transaction:
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)


def test_a_reclaim_failing_after_the_commit_never_counts_stored_rows_as_failed(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        log = await SqliteLog.open(tmp_path / "log.db", bound_bytes=64 * MiB)
        s = log.last_seq
        await log.write([event(10)])
        store = log._store
        assert store is not None
        store.db = _ReclaimFails(store.db)  # type: ignore[assignment]
        await log.ack(s + 10)
        await log.write([event(5)])  # carries the ack: its transaction commits, then reclaims
        await log.flush()
        assert (log.last_seq, log.healthy) == (s + 15, True)
        rows, lost, seqs = tally(await read_all(log, s + 10))
        assert rows == 5 and not lost and seqs == list(range(s + 11, s + 16))  # no gap
        await log.write([event(2)])
        assert log.last_seq == s + 17  # no seq reused
        await log.close()

    run(scenario)


def test_each_write_encodes_once_the_one_before_reached_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes in flight together: the second encodes only after the first reached its
    COMMIT (with a wait long enough that no timeout decides it); writes that fail inside
    the transaction, cannot be encoded or store nothing let the next one go all the same."""
    order: list[str] = []
    encode = local_log.bodies_of

    def bodies_of(events: list[InferenceEvent]) -> Any:
        order.append(f"encode {events[0].records}")
        return encode(events)

    def note(op: str) -> None:
        if op == "write":
            order.append("commit")

    monkeypatch.setattr(local_log, "ENCODE_WAIT_S", 60.0)
    monkeypatch.setattr(local_log, "bodies_of", bodies_of)

    async def scenario() -> None:
        log = await SqliteLog.open(tmp_path / "log.db", bound_bytes=64 * MiB)
        s = log.last_seq
        log.fault = note
        await asyncio.gather(*(log.write([event(n)]) for n in (1, 2, 3)))
        assert order == ["encode 1", "commit", "encode 2", "commit", "encode 3", "commit"]
        log.fault = malformed
        await log.write([event(4)])  # fails before its commit (the file is moved aside)
        log.fault = None
        unencodable = msgspec.structs.replace(event(1), inputs={"x": [object()]})
        await asyncio.gather(log.write([unencodable]), log.write([]), log.write([event(5)]))
        assert log._precommit == 0 and log.rows_written == 6 + 5
        assert log.failed_rows == 4 + 1 and log.last_seq > s + 6
        await log.close()

    run(scenario)
