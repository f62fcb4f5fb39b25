"""The local inference log: SQLite (``log_store.py``) on one worker thread.

Every SQLite call runs on that one thread, so the event loop never waits on disk; each
``write`` is one transaction whose rows are lines as they will ship. ``write`` returns once
its transaction committed, so a crash loses at most the batch being written (and what
still waits in the hand-off). Encoding runs on the worker too: under the GIL, encoding on
the loop while the worker commits was measured no faster. Nothing raises into
the pump: a failed write counts its rows into a ``write_failed`` gap line that goes in
with the next write that succeeds, hand-off drops (``note_dropped``) into a
``handoff_full`` one, and rows the bound evicts into an ``evicted`` one, so Ops always gets
the exact count of what it will never see.

A file SQLite calls corrupt (at open or later) is renamed aside with a timestamp, counted
and logged, and a fresh log continues: its seqs start above the old ones (above the
clock's microseconds when nothing could be read back), so a seq Ops holds never returns.

Lines the shipper has read (``read_page``) and not acked are never evicted: evicting them
would count rows in a gap that Ops then also receives. The shipper's window bounds them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog

from edgepub.shared.edge_messages import LogReport

from .config import DEFAULT_LOG_STORAGE, MIN_LOG_STORAGE
from .inference_log import InferenceEvent
from .log_store import LogStore
from .pages import Page
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
_CORRUPT = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


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
        self.rows_written = 0
        self.last_error: str | None = None
        self._store: LogStore | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="edgepub-local-log")
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="edgepub-log-encode")
        self._dropped_written = 0  # of handoff_dropped, what a committed gap line holds
        self._failed_pending = 0  # rows lost to failed writes, not in a gap line yet
        self._horizon = 0  # the last seq read_page handed out
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
        store.fault = self._fault
        return store

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
        """Encode, then queue the commit on the worker (in call order: one encoder)."""
        try:
            runs: list[Run] | None = bodies_of(events)
        except Exception as exc:  # a value nothing can encode: counted, never raised
            self.last_error = f"{type(exc).__name__}: {exc}"
            runs = None
        return self._pool.submit(self._write, events, runs)

    # --- the worker thread (continued)

    def _write(self, events: list[InferenceEvent], runs: list[Run] | None) -> None:
        rows = sum(e.records for e in events)
        store = self._store_or_none()
        if store is None or runs is None:
            self._count_failed(rows)
            return
        dropped = self.handoff_dropped - self._dropped_written
        failed = self._failed_pending
        protect = max(self._horizon, store.watermark)
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
        if page is not None:
            self._horizon = max(self._horizon, page.last_seq)
        return page

    def _ack(self, up_to: int) -> None:
        store = self._store_or_none()
        if store is None:
            return
        try:
            store.ack(up_to)
        except sqlite3.Error as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("local_log_ack_failed", up_to_seq=up_to, error=self.last_error)
            if _corrupt(exc):
                self._replace_corrupt(exc, known=store)
        self._refresh()

    def _replace_corrupt(self, exc: sqlite3.Error, known: LogStore | None) -> None:
        """Move the file aside and start afresh above every seq it may have used; what
        it still owed Ops becomes a ``write_failed`` gap when that can be known."""
        last_seq, owed = (known.last_seq, known.backlog.rows) if known else _salvage(self.path)
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
        floor = last_seq if last_seq is not None else time.time_ns() // 1000
        log.error(
            "local_log_corrupt",
            path=str(self.path),
            moved_to=str(aside),
            error=f"{type(exc).__name__}: {exc}",
            next_seq=floor + 1,
            rows_lost=owed,
        )
        if owed:
            self._failed_pending += owed
            self.failed_rows += owed
        try:
            store = self._new_store()
            store.set_seq_floor(floor)
        except (sqlite3.Error, OSError) as again:
            self._unavailable(again)
            return
        self._store = store
        self._horizon = 0

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
        if self._store is not None:
            self._store.close()
            self._store = None


def _salvage(path: Path) -> tuple[int | None, int]:
    """A corrupt file's last seq, if SQLite can still read it (what it owed Ops cannot be
    told from a file that reads wrong: logged as unknown)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return None, 0
    try:
        last = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        top = db.execute("SELECT max(last_seq) FROM blocks").fetchone()
        return max(int(last[0]) if last else 0, int(top[0] or 0) if top else 0), 0
    except sqlite3.Error:
        return None, 0
    finally:
        db.close()
