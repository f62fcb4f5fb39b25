"""The local inference log: SQLite (``log_store.py``) on one worker thread.

Every SQLite call runs on that one thread, so the event loop never waits on disk; each
``write`` is one transaction whose rows are lines as they will ship. ``write`` returns once
its transaction committed, so a crash loses at most the batch being written (and what
still waits in the hand-off). Encoding runs on a thread of its own, in the time the write
before it spends in its commit (the fsync, which holds no GIL): an encoder that started
earlier held the GIL through the worker's many short SQLite calls before the commit, each
of which then waited for the whole encoding (``ENCODE_WAIT_S``). Nothing raises into
the pump: a failed write counts its rows into a ``write_failed`` gap line that goes in
with the next write that succeeds, hand-off drops (``note_dropped``) into a
``handoff_full`` one, and rows the bound evicts into an ``evicted`` one, so Ops always gets
the exact count of what it will never see.

Seqs never come back, and every file's lines tile the seqs from where Ops may be. A
brand-new file starts at the clock's microseconds (above any seq an older file of the
edge's name used: the edge removed and added again with an empty /persist, the volume
lost, the log reopened after it could not open), after a ``reset`` gap line of count 0
reaching back to seq 1: the collector appends from wherever its watermark is, where rows
from 1 would all be taken as held already and dropped.

A file SQLite calls corrupt (at open or later) is renamed aside with a timestamp, counted
and logged, and a fresh one continues above its last seq (above the clock's microseconds
when that cannot be read). The fresh file first stores again the pages handed to the
shipper and not acked (the shipper may still be sending them: Ops takes each once), then
a gap line counting what the old file owed Ops beyond them, reaching back to what Ops
acknowledged so that the collector appends it whatever it holds:

- ``corrupt``: exactly that many rows are lost. The log knows what it handed out and
  what Ops acked in memory, and what an earlier run handed out from ``shipped_to``, which
  a clean close stores.
- ``corrupt_at_most``: an upper bound. Ops may hold some of them: an earlier run handed
  pages out above the acks it stored (a crash, or pages in flight at its close), and the
  shipper has not passed them since.
- ``reset`` (count 0): nothing could be read back; how many rows were lost is unknown.

Lines the shipper has read (``read_page``) and not acked are never evicted: evicting them
would count rows in a gap that Ops then also receives. The shipper's window bounds them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog

from edgepub.shared.edge_messages import LogReport
from edgepub.shared.log_lines import GapReason

from . import pages
from .config import DEFAULT_LOG_STORAGE, MIN_LOG_STORAGE
from .inference_log import InferenceEvent
from .log_store import LogStore, salvage
from .pages import Chunk, Handed, Page
from .row_lines import Run, bodies_of

T = TypeVar("T")
log = structlog.get_logger("edgepub.edge.local_log")
REOPEN_EVERY_S = 1.0  # a log that could not open is tried again this often (on writes)
# Acks are stored every this many pages, or this long after the first one not stored yet
# (or with the next write, in its transaction): a crash re-ships at most that many pages,
# which Ops already holds and drops (its watermark check), and replay pays one fsync per
# ACK_STORE_PAGES pages instead of one per page.
ACK_STORE_PAGES = 64
ACK_STORE_S = 0.5
# The encoder waits at most this long for the write queued before it to reach its commit
# (normally ~0.4 ms: the block inserts): encoding meanwhile would hold the GIL that every
# SQLite call of the worker takes back on its return (5 ms switch interval), so the worker
# waited for the whole encoding and the fsync then ran with nothing to overlap it.
ENCODE_WAIT_S = 0.005
_CORRUPT = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_DOUBT: dict[GapReason, int] = {"corrupt": 0, "corrupt_at_most": 1, "reset": 2}


class Restart(msgspec.Struct, frozen=True, kw_only=True):
    """How a fresh file starts: ``carried`` pages (above ``watermark``, what Ops acked),
    then a gap line at ``seq`` counting ``count`` rows, reaching back to ``first_seq``."""

    seq: int
    first_seq: int
    count: int
    reason: GapReason
    watermark: int
    carried: tuple[Page, ...] = ()

    def chunks(self) -> list[Chunk]:
        line = pages.gap_line(self.seq, self.count, self.reason, first_seq=self.first_seq)
        carried = [c for page in self.carried for c in pages.chunks_of(page)]
        return [*carried, Chunk(self.seq, self.seq, None, self.count, line)]


def clock_seq() -> int:
    """A floor above every seq an older file of this name used: the clock's microseconds
    (an edge logs far fewer than a million rows a second)."""
    return time.time_ns() // 1000


def default_bound(free_bytes: int) -> int:
    """Without ``LOCAL_INFERENCE_STORAGE``: 1 GiB, but never more than a quarter of the
    space free at start (an edge on a small SD card keeps room for everything else)."""
    return max(MIN_LOG_STORAGE, min(DEFAULT_LOG_STORAGE, free_bytes // 4))


def free_bytes(path: Path) -> int:
    """Free space where the log lives; 0 when that cannot be known (a dead disk, a file in
    the way): the log then opens at its smallest bound, or fails and says so, and inference
    never stops for it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def _corrupt(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _CORRUPT
    return not isinstance(exc, sqlite3.OperationalError)


class SqliteLog:
    """Use ``await SqliteLog.open(path, bound_bytes=...)``; see the module's docstring."""

    def __init__(self, path: Path, bound_bytes: int, synchronous: str = "FULL") -> None:
        self.path = path
        self.bound_bytes = bound_bytes
        self.synchronous = synchronous
        self.fault: Callable[[str], None] | None = None  # tests: raise inside a transaction
        self.evicted_rows = 0
        self.handoff_dropped = 0  # noted by the agent (loop thread)
        self.write_failures = 0  # writes (or opens) that failed
        self.failed_rows = 0
        self.corrupt_files = 0
        self.corrupt_rows = 0  # counted in the gap lines of corrupt files
        self.rows_written = 0
        self.last_error: str | None = None
        self._store: LogStore | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="edgepub-local-log")
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="edgepub-log-encode")
        self._staging = threading.Condition()  # the encoder waits on it (ENCODE_WAIT_S)
        self._precommit = 0  # writes queued on the worker that have not reached the commit
        self._staged = False  # (worker) the write being stored has not reached it yet
        self._dropped_written = 0  # of handoff_dropped, what a committed gap line holds
        self._failed_pending = 0  # rows lost to failed writes, not in a gap line yet
        self._handed = Handed()  # what read_page handed out above the file's watermark
        self._restart: Restart | None = None  # a corrupt file's, until a fresh one begins
        # (seq, reason): a gap line up to seq counted rows inexactly (or an earlier run
        # handed out pages up to seq): a count that includes it is no better until the
        # shipper passes seq
        self._doubt: tuple[int, GapReason] | None = None
        self._acked = 0  # what Ops acknowledged (loop thread); stored lazily
        self._acks_unstored = 0
        self._store_acks: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._watermark = self._last_seq = self._backlog = self._file_bytes = 0
        self._used_bytes = 0
        self._oldest_ms: int | None = None  # when the oldest unacked row was logged
        self._oldest_key: tuple[int, int] | None = None  # (acked up to, evicted) it is for
        self.last_ack_at: float | None = None  # time.monotonic() of Ops' last new ack

    @classmethod
    async def open(cls, path: Path, *, bound_bytes: int, synchronous: str = "FULL") -> SqliteLog:
        """Open or create the log; never raises for the file's state (a log that cannot
        open counts the rows it is given and tries again)."""
        self = cls(path, bound_bytes, synchronous)
        await self._run(self._open)
        return self

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # --- what the agent and the shipper read (loop thread; the worker keeps them fresh)

    @property
    def watermark(self) -> int:
        return self._watermark

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def backlog(self) -> int:
        """Lines (rows and gap lines) the file holds as not acked by Ops (acks reach the
        file within ACK_STORE_S)."""
        return self._backlog

    @property
    def file_bytes(self) -> int:
        """The main file and its WAL."""
        return self._file_bytes

    @property
    def used_bytes(self) -> int:
        """Bytes of the main file's pages in use: what the unacked lines take."""
        return self._used_bytes

    @property
    def oldest_unacked_ms(self) -> int | None:
        """When the oldest row Ops has not acknowledged was logged (epoch ms), or None."""
        return self._oldest_ms if self._backlog > 0 else None

    def report(self) -> LogReport:
        """What the heartbeat says of the log (ages: the token service makes them times)."""
        oldest = self.oldest_unacked_ms
        acked = self.last_ack_at
        return LogReport(
            backlog_rows=self._backlog,
            backlog_bytes=self._used_bytes if self._backlog > 0 else 0,
            oldest_unsent_age_s=None if oldest is None else max(time.time() - oldest / 1000, 0.0),
            last_ack_age_s=None if acked is None else max(time.monotonic() - acked, 0.0),
        )

    @property
    def healthy(self) -> bool:
        return self._store is not None and self._failed_pending == 0

    def view(self) -> dict[str, Any]:
        """For ``GET /status``."""
        return {
            "healthy": self.healthy,
            "path": str(self.path),
            "bound_bytes": self.bound_bytes,
            "file_bytes": self.file_bytes,
            "last_seq": self.last_seq,
            "watermark": self.watermark,
            "backlog": self.backlog,
            "evicted_rows": self.evicted_rows,
            "handoff_dropped": self.handoff_dropped,
            "write_failures": self.write_failures,
            "failed_rows": self.failed_rows,
            "corrupt_files": self.corrupt_files,
            "corrupt_rows": self.corrupt_rows,
            "last_error": self.last_error,
            "rows_written": self.rows_written,
        }

    # --- the API

    def note_dropped(self, count: int) -> None:
        """``count`` more events' rows the hand-off dropped: a gap line with the next write."""
        if count > 0:
            self.handoff_dropped += count

    async def write(self, events: Sequence[InferenceEvent]) -> None:
        """Encode ``events`` (encoder thread), then commit them as one transaction (the
        worker); returns once committed, or counted as failed. Writes are stored in the
        order they were called, also when a caller stops waiting: once called, a write
        happens. While one commits (its fsync holds no lock) the next one encodes."""
        if events or self.handoff_dropped > self._dropped_written:
            # shielded: a caller that stops waiting must not cancel the queued jobs
            encoding = self._encoder.submit(self._encode, list(events))
            stored = await asyncio.shield(asyncio.wrap_future(encoding))
            await asyncio.shield(asyncio.wrap_future(stored))

    async def read_page(self, after_seq: int, max_rows: int, max_bytes: int) -> Page | None:
        return await self._run(self._read_page, after_seq, max_rows, max_bytes)

    async def ack(self, up_to_seq: int) -> None:
        """Ops holds everything up to ``up_to_seq``: the next page starts after it at once;
        the file learns it with the next write, every ACK_STORE_PAGES acks, or after
        ACK_STORE_S."""
        up_to_seq = min(up_to_seq, self._last_seq)
        if up_to_seq <= self._acked:
            return
        self._acked = up_to_seq
        self.last_ack_at = time.monotonic()
        self._watermark = max(self._watermark, up_to_seq)
        self._acks_unstored += 1
        if self._acks_unstored >= ACK_STORE_PAGES:
            self._queue_ack()  # the shipper goes on: the worker stores it in turn
        elif self._store_acks is None:
            self._store_acks = asyncio.create_task(self._store_ack_soon())

    async def flush(self) -> None:
        """Store the acks not stored yet now."""
        await self._store_ack()

    def _queue_ack(self) -> Future[None]:
        self._acks_unstored = 0
        return self._pool.submit(self._ack, self._acked)

    async def _store_ack(self) -> None:
        await asyncio.wrap_future(self._queue_ack())

    async def _store_ack_soon(self) -> None:
        try:
            await asyncio.sleep(ACK_STORE_S)
            if self._acks_unstored:
                await self._store_ack()
        finally:
            self._store_acks = None

    async def close(self) -> None:
        if self._store_acks is not None:
            self._store_acks.cancel()
        await self._store_ack()
        # behind every write already called: through the encoder, then the worker
        closing = await asyncio.wrap_future(self._encoder.submit(self._pool.submit, self._close))
        await asyncio.wrap_future(closing)
        self._encoder.shutdown(wait=False)
        self._pool.shutdown(wait=False)

    # --- the worker thread

    def _open(self) -> LogStore | None:
        try:
            self._store = self._new_store()
        except sqlite3.Error as exc:
            if _corrupt(exc):
                self._replace_corrupt(exc, known=None)
            else:
                self._unavailable(exc)
        except OSError as exc:
            self._unavailable(exc)
        self._refresh()
        return self._store

    def _new_store(self) -> LogStore:
        store = LogStore(self.path, self.bound_bytes, self.synchronous)
        try:
            if store.fresh:
                self._begin(store)
            else:
                self._inherit(store)
        except BaseException:
            store.close()
            raise
        store.fault = self._fault
        store.committing = self._committing
        return store

    def _begin(self, store: LogStore) -> None:
        """A fresh file: after a corrupt one, as ``_replace_corrupt`` decided; otherwise
        from the clock, after a ``reset`` gap line reaching back to seq 1."""
        restart = self._restart or Restart(
            seq=max(clock_seq(), self._last_seq + 1, self._handed.top + 1),
            first_seq=self._acked + 1,
            count=0,
            reason="reset",
            watermark=self._acked,
        )
        store.begin(restart.watermark, restart.chunks())
        self._handed.restart(restart.watermark, sum(p.rows + p.gaps for p in restart.carried))
        if self._restart is not None:
            self._restart = None
            self._doubt = None if restart.reason == "corrupt" else (restart.seq, restart.reason)
        log.info(
            "local_log_started",
            path=str(self.path),
            first_seq=restart.seq,
            reaches_back_to=restart.first_seq,
            reason=restart.reason,
            rows_lost=restart.count,
            lines_carried=store.backlog.lines - 1,
        )

    def _inherit(self, store: LogStore) -> None:
        """An existing file: what an earlier run may have handed out above its stored
        watermark (all of it after a crash; ``shipped_to`` after a clean close)."""
        shipped = store.last_seq if store.shipped_to is None else store.shipped_to
        self._handed.restart(store.watermark, 0)
        if shipped > store.watermark:
            self._doubt = (shipped, "corrupt_at_most")

    def _fault(self, op: str) -> None:
        if self.fault is not None:
            self.fault(op)

    def _unavailable(self, exc: BaseException) -> None:
        self._store = None
        self._retry_at = time.monotonic() + REOPEN_EVERY_S
        self.last_error = f"{type(exc).__name__}: {exc}"
        log.error("local_log_unavailable", path=str(self.path), error=self.last_error)

    def _store_or_none(self) -> LogStore | None:
        due = self._store is None and time.monotonic() >= self._retry_at
        if due and self._open() is not None:
            log.info("local_log_reopened", path=str(self.path), last_seq=self._last_seq)
        return self._store

    # --- the encoder thread

    def _encode(self, events: list[InferenceEvent]) -> Future[None]:
        """Encode once the write queued before has reached its commit (or after
        ``ENCODE_WAIT_S``), then queue the commit on the worker (in call order: one
        encoder)."""
        with self._staging:
            self._staging.wait_for(lambda: self._precommit <= 0, ENCODE_WAIT_S)
        try:
            runs: list[Run] | None = bodies_of(events)
        except Exception as exc:  # a value nothing can encode: counted, never raised
            self.last_error = f"{type(exc).__name__}: {exc}"
            runs = None
        with self._staging:
            self._precommit += 1
        return self._pool.submit(self._write, events, runs)

    # --- the worker thread (continued)

    def _write(self, events: list[InferenceEvent], runs: list[Run] | None) -> None:
        self._staged = True
        try:
            self._store_write(events, runs)
        finally:
            self._committing()  # a write that failed before its commit, or stored nothing

    def _committing(self) -> None:
        """The write being stored reaches its COMMIT (``LogStore.committing``): the next
        one may encode now, in the time its fsync takes."""
        if self._staged:
            self._staged = False
            with self._staging:
                self._precommit -= 1
                self._staging.notify()

    def _store_write(self, events: list[InferenceEvent], runs: list[Run] | None) -> None:
        rows = sum(e.records for e in events)
        store = self._store_or_none()
        if store is None or runs is None:
            self._count_failed(rows)
            return
        dropped = self.handoff_dropped - self._dropped_written
        failed = self._failed_pending
        protect = max(self._handed.top, store.watermark)
        acked_rows = store.acked_rows
        try:
            stored, evicted = store.append(
                runs,
                [("handoff_full", dropped), ("write_failed", failed)],
                protect,
                acked=self._acked,
            )
        except sqlite3.Error as exc:
            self._count_failed(rows, exc)
            if _corrupt(exc):
                self._replace_corrupt(exc, known=store)
            self._refresh()
            return
        self._handed.stored(store.watermark, store.acked_rows - acked_rows)
        self._dropped_written += dropped
        self._failed_pending -= failed
        self.rows_written += stored
        self.evicted_rows += evicted
        self._refresh()

    def _count_failed(self, rows: int, exc: BaseException | None = None) -> None:
        self.write_failures += 1
        self.failed_rows += rows
        self._failed_pending += rows
        if exc is not None:
            self.last_error = f"{type(exc).__name__}: {exc}"
        log.warning(
            "local_log_write_failed", rows=rows, lost_so_far=self.failed_rows, error=self.last_error
        )

    def _read_page(self, after: int, max_rows: int, max_bytes: int) -> Page | None:
        store = self._store_or_none()
        if store is None:
            return None
        try:
            page = store.read_page(after, max_rows, max_bytes)
        except sqlite3.Error as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("local_log_read_failed", after_seq=after, error=self.last_error)
            if _corrupt(exc):
                self._replace_corrupt(exc, known=store)
                self._refresh()
            return None
        self._handed.acked(self._acked)
        if page is not None:
            self._handed.read(after, page)
        return page

    def _ack(self, up_to: int) -> None:
        store = self._store_or_none()
        if store is None:
            return
        acked_rows = store.acked_rows
        try:
            store.ack(up_to)
            self._handed.stored(store.watermark, store.acked_rows - acked_rows)
        except sqlite3.Error as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("local_log_ack_failed", up_to_seq=up_to, error=self.last_error)
            if _corrupt(exc):
                self._replace_corrupt(exc, known=store)
        self._refresh()

    def _replace_corrupt(self, exc: sqlite3.Error, known: LogStore | None) -> None:
        """Move the file aside and begin a fresh one above every seq it may have used (see
        the module's docstring)."""
        if self._restart is None:  # else an earlier corrupt file's, not begun yet
            restart = self._after(known) if known is not None else self._after_unreadable()
            self._restart = restart
            self.corrupt_rows += restart.count
        restart = self._restart
        if known is not None:
            known.close()
        self._store = None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                os.replace(source, f"{aside}{suffix}")
        self.corrupt_files += 1
        log.error(
            "local_log_corrupt",
            path=str(self.path),
            moved_to=str(aside),
            error=f"{type(exc).__name__}: {exc}",
            next_seq=restart.seq,
            rows_lost=restart.count,
            count_is=restart.reason,
            reaches_back_to=restart.first_seq,
            pages_carried=len(restart.carried),
        )
        try:
            self._store = self._new_store()
        except (sqlite3.Error, OSError) as again:
            self._unavailable(again)

    def _after(self, store: LogStore) -> Restart:
        """A corrupt file this process has open: what it owed Ops is known in memory."""
        acked = max(store.watermark, self._acked)
        handed = self._handed
        top = max(handed.top, store.watermark)
        carried = handed.since(acked)
        if carried is not None and self._acked <= top:
            return Restart(
                seq=store.last_seq + 1,
                first_seq=top + 1,
                count=store.backlog.rows - handed.rows,  # rows never handed out
                reason=self._reason(True, top),
                watermark=acked,
                carried=tuple(carried),
            )
        # pages the shipper holds that cannot be stored again: counted too (Ops may
        # receive them: an upper bound then)
        try:
            count, exact = store.count(acked, store.last_seq).rows, handed.top <= acked
        except sqlite3.Error:
            count, exact = store.backlog.rows, acked == store.watermark >= handed.top
        return Restart(
            seq=store.last_seq + 1,
            first_seq=acked + 1,
            count=count,
            reason=self._reason(exact, acked),
            watermark=acked,
        )

    def _after_unreadable(self) -> Restart:
        """A corrupt file SQLite cannot open: what its meta row still says, if anything."""
        found = salvage(self.path)
        watermark = found.watermark or 0
        acked = max(watermark, self._acked)
        seq = max(clock_seq(), (found.last_seq or 0) + 1, self._last_seq + 1)
        reason: GapReason = "reset"
        count = 0
        if found.backlog_rows is not None:
            shipped = found.shipped_to
            exact = shipped is not None and max(shipped, self._acked) <= watermark
            count, reason = found.backlog_rows, self._reason(exact, acked)
        return Restart(
            seq=seq, first_seq=min(acked + 1, seq), count=count, reason=reason, watermark=acked
        )

    def _reason(self, exact: bool, passed: int) -> GapReason:
        """``corrupt`` when the count is exact, unless it includes what an earlier
        inexact count (or run) left above ``passed``."""
        reason: GapReason = "corrupt" if exact else "corrupt_at_most"
        doubt = self._doubt
        if doubt is not None and doubt[0] > passed and _DOUBT[doubt[1]] > _DOUBT[reason]:
            reason = doubt[1]
        return reason

    def _refresh(self) -> None:
        store = self._store
        if store is None:
            return
        self._watermark = max(store.watermark, self._acked)
        self._last_seq = store.last_seq
        self._backlog = store.backlog.lines
        self._file_bytes = store.file_bytes()
        try:
            self._used_bytes = store.used_bytes()
            after = max(store.watermark, self._acked)
            key = (after, self.evicted_rows)
            if key != self._oldest_key or (self._oldest_ms is None and self._backlog > 0):
                self._oldest_key = key
                self._oldest_ms = store.oldest_row_ms(after)
        except (sqlite3.Error, msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._oldest_ms = None  # the figures only: writes and pages report their own
            self.last_error = f"{type(exc).__name__}: {exc}"

    def _close(self) -> None:
        store = self._store
        if store is None:
            return
        shipped = max(self._handed.top, self._acked)
        if self._doubt is not None:
            shipped = max(shipped, self._doubt[0])
        try:
            store.note_shipped(shipped)
        except sqlite3.Error as exc:  # the next open counts as after a crash
            log.warning("local_log_close_unnoted", path=str(self.path), error=str(exc))
        store.close()
        self._store = None
