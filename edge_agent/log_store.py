"""The local inference log's SQLite file, used from one thread (``local_log.py`` owns it).

Schema: ``blocks`` holds lines (``shared/log_lines.py``) as stored and shipped, joined by
``\\n``: a block is a run of consecutive row lines of one pipeline (at most
``BLOCK_BYTES``; one SQLite row per block, not per line, so an append costs a few B-tree
inserts per batch) or a single gap line (``pipeline`` NULL, ``lost`` its count). ``meta``
holds ``last_seq`` and ``watermark``: seqs are given here, never by SQLite, so acked
rows being deleted never lets a number come back. It also holds ``backlog_rows`` (rows not
acked, kept in every transaction: a file too damaged to read its blocks may still say what
it owed) and, between a clean close and the next open, ``shipped_to`` (nothing above it
was ever handed to the shipper: Ops holds no more than that).

A brand-new file (``fresh``) is started by ``begin``: its first line is a gap line that
reaches back over every seq it skips (``local_log.py`` says which and why).

WAL mode, ``synchronous=FULL`` by default: a committed batch survives a power cut, so a
seq Ops may already hold is never handed out again. Every ``append`` is one transaction.

Space: ``auto_vacuum=INCREMENTAL``. Evicted or acked blocks' pages go to the freelist and
the next appends reuse them, so at the bound the file stops growing; once acks have
shipped the backlog (or freed more than a quarter of the bound), free pages beyond
``KEEP_FREE_PAGES`` go back to the file system (``incremental_vacuum``). The
WAL is checkpointed every ``wal_bytes`` and truncated to it (``journal_size_limit``).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import sqlite3
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path

import msgspec
import structlog

from edgepub.shared.log_lines import GapReason, split_lines

from . import pages
from .pages import Chunk, Page, Span
from .row_lines import Run, with_seqs

log = structlog.get_logger("edgepub.edge.log_store")

BLOCK_BYTES = 64 << 10
KEEP_FREE_PAGES = 256  # free pages kept for reuse after acks (1 MiB of 4 KiB pages)
BLOCK_OVERHEAD = 64  # bytes of a block's cell and index entry, for the estimate
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    last_seq INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    pipeline TEXT,
    lost INTEGER NOT NULL,
    body BLOB NOT NULL
);
"""
Block = tuple[int, int, str | None, int, bytes]  # last_seq, first_seq, pipeline, lost, body


class _Head(msgspec.Struct):
    """A row line's sequence number and time (the rest is skipped, not decoded)."""

    seq: int
    time: int = 0


_head = msgspec.json.Decoder(_Head)


def wal_bytes_for(bound: int) -> int:
    """The WAL's share of the bound: 1/16, from 64 KiB to 4 MiB."""
    return min(max(bound // 16, 64 << 10), 4 << 20)


class Counts:
    """What is not acked yet: lines (row + gap) and rows (row lines + gap counts)."""

    def __init__(self, lines: int = 0, rows: int = 0) -> None:
        self.lines, self.rows = lines, rows


class Salvage(msgspec.Struct, frozen=True, kw_only=True):
    """What a corrupt file still says of itself (None: that part does not read)."""

    last_seq: int | None = None
    watermark: int | None = None
    backlog_rows: int | None = None  # rows in (watermark, last_seq]
    shipped_to: int | None = None  # set when it was closed cleanly


class LogStore:
    def __init__(self, path: Path, bound_bytes: int, synchronous: str = "FULL") -> None:
        self.path = path
        self.bound = bound_bytes
        self.wal_bytes = wal_bytes_for(bound_bytes)
        self.db_budget = max(bound_bytes - self.wal_bytes, 0)
        self.fault: Callable[[str], None] | None = None  # a test seam, inside transactions
        # called in an append right before its COMMIT (the fsync): the encoder waits for it
        self.committing: Callable[[], None] | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db = db
        try:
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file only
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"journal_mode is {mode}, not wal")
            db.execute(f"PRAGMA synchronous={synchronous}")
            self.page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
            db.execute(f"PRAGMA wal_autocheckpoint={max(self.wal_bytes // self.page_size, 1)}")
            db.execute(f"PRAGMA journal_size_limit={self.wal_bytes}")
            db.executescript(_SCHEMA)
            meta = _meta(db)
            self.watermark = meta.get("watermark", 0)
            self.last_seq = max(meta.get("last_seq", 0), self._max_seq(), self.watermark)
            self.fresh = "last_seq" not in meta and self.last_seq == 0  # begin() starts it
            self.backlog = self.count(self.watermark, self.last_seq)
            self.acked_rows = 0  # rows acks deleted since it opened
            self.shipped_to = meta.get("shipped_to")
            if self.shipped_to is not None:  # true of the last run only: forget it now
                self._transaction(lambda: db.execute("DELETE FROM meta WHERE key = 'shipped_to'"))
        except BaseException:
            db.close()
            raise

    def _transaction(self, body: Callable[[], object]) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            body()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.rollback()
            raise

    def _max_seq(self) -> int:
        row = self.db.execute("SELECT max(last_seq) FROM blocks").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def count(self, after: int, up_to: int) -> Counts:
        """Lines and rows stored with seqs in (after, up_to]."""
        row = self.db.execute(
            "SELECT coalesce(sum(min(last_seq, ?2) - max(first_seq, ?1 + 1) + 1), 0),"
            " coalesce(sum(CASE WHEN pipeline IS NULL THEN lost"
            "  ELSE min(last_seq, ?2) - max(first_seq, ?1 + 1) + 1 END), 0)"
            " FROM blocks WHERE last_seq > ?1 AND first_seq <= ?2",
            (after, up_to),
        ).fetchone()
        return Counts(int(row[0]), int(row[1]))

    def oldest_row_ms(self, after: int) -> int | None:
        """When the first row line with a seq above ``after`` was logged (epoch ms), or
        None: one block read, whatever the backlog."""
        row = self.db.execute(
            "SELECT body FROM blocks WHERE last_seq > ? AND pipeline IS NOT NULL"
            " ORDER BY last_seq LIMIT 1",
            (after,),
        ).fetchone()
        if row is None:
            return None
        for line in split_lines(bytes(row[0])):
            head = _head.decode(line)
            if head.seq > after:
                return head.time
        return None

    def begin(self, watermark: int, chunks: Sequence[Chunk]) -> None:
        """Start a fresh file in one transaction: ``chunks`` (lines above ``watermark`` in
        seq order, the last one a gap line) become its first blocks."""
        if not self.fresh or not chunks or chunks[-1].pipeline is not None:
            raise ValueError("begin() starts a fresh file with lines that end in a gap line")
        lines = sum(c.lines for c in chunks)
        rows = sum(c.lost if c.pipeline is None else c.lines for c in chunks)
        last = chunks[-1].last_seq

        def start() -> None:
            self.db.executemany(
                "INSERT INTO blocks(last_seq, first_seq, pipeline, lost, body) VALUES (?,?,?,?,?)",
                [(c.last_seq, c.first_seq, c.pipeline, c.lost, c.body) for c in chunks],
            )
            self._put("last_seq", last)
            self._put("watermark", watermark)
            self._put("backlog_rows", rows)

        self._transaction(start)
        self.last_seq, self.watermark, self.fresh = last, watermark, False
        self.backlog = Counts(lines, rows)

    def note_shipped(self, up_to: int) -> None:
        """At a clean close: nothing above ``up_to`` was handed to the shipper."""
        self._transaction(lambda: self._put("shipped_to", up_to))

    def _put(self, key: str, value: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def used_bytes(self) -> int:
        pages_used = self.db.execute("PRAGMA page_count").fetchone()[0]
        pages_used -= self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages_used) * self.page_size

    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    def _blocks(
        self, runs: Sequence[Run], gaps: Sequence[tuple[GapReason, int]]
    ) -> tuple[list[Block], int]:
        """New blocks: the pending gap lines, then the rows (``row_lines.bodies_of``)
        numbered after them."""
        seq = self.last_seq
        blocks: list[Block] = []
        for reason, count in gaps:
            seq += 1
            blocks.append((seq, seq, None, count, pages.gap_line(seq, count, reason)))
        for pipeline, bodies in runs:
            lines = with_seqs(bodies, seq + 1)
            ends = list(itertools.accumulate(map(len, lines)))  # bytes, less the newlines
            start = 0
            while start < len(lines):
                base = ends[start - 1] if start else 0
                # the line that reaches BLOCK_BYTES closes the block
                end = min(bisect.bisect_left(ends, base + BLOCK_BYTES, start) + 1, len(lines))
                blocks.append(
                    (seq + end, seq + start + 1, pipeline, 0, b"\n".join(lines[start:end]))
                )
                start = end
            seq += len(lines)
        return blocks, seq

    def append(
        self,
        runs: Sequence[Run],
        gaps: Sequence[tuple[GapReason, int]],
        protect: int,
        acked: int = 0,
    ) -> tuple[int, int]:
        """Store ``gaps`` then the rows of ``runs``, numbered here, in one transaction,
        evicting the oldest lines after ``protect`` that the bound has no room for; an
        ack up to ``acked`` not
        stored yet goes in the same transaction (and frees its room first). Returns
        (rows stored, evicted)."""
        blocks, seq = self._blocks(runs, [(r, c) for r, c in gaps if c > 0])
        if not blocks:
            if acked > self.watermark:
                self.ack(acked)
            return 0, 0
        need = sum(len(b[4]) + BLOCK_OVERHEAD for b in blocks)
        owed = sum(b[3] if b[2] is None else b[0] - b[1] + 1 for b in blocks)
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            acked_counts = self._delete_acked(acked)
            excess = self.used_bytes() + need - self.db_budget
            evicted_rows, kept, removed = self._evict(excess, blocks, protect)
            db.executemany(
                "INSERT INTO blocks(last_seq, first_seq, pipeline, lost, body) VALUES (?,?,?,?,?)",
                kept,
            )
            self._put("last_seq", seq)
            acked_rows = acked_counts.rows if acked_counts else 0
            self._put("backlog_rows", self.backlog.rows - acked_rows + owed)
            if self.fault is not None:
                self.fault("write")
            if self.committing is not None:
                self.committing()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.rollback()
            raise
        # committed: the numbers follow first, so nothing after this (the reclaim of freed
        # pages, which can fail on a full disk) can make stored rows look failed
        self.last_seq = seq
        self.backlog.lines += sum(b[0] - b[1] + 1 for b in kept) - removed
        self.backlog.rows += owed  # stored as rows or counted in a gap line
        self._acked(acked, acked_counts)
        stored = sum(b[0] - b[1] + 1 for b in kept if b[2] is not None)
        return stored, evicted_rows

    def _old_spans(self, protect: int) -> Generator[tuple[Span, int], None, None]:
        cursor = self.db.execute(
            "SELECT last_seq, first_seq, pipeline, lost, length(body),"
            " CASE WHEN pipeline IS NULL THEN body END"
            " FROM blocks WHERE first_seq > ? ORDER BY last_seq",
            (protect,),
        )
        try:
            for last, first, pipeline, lost, size, gap in cursor:
                yield _span(last, first, pipeline, lost, gap), size + BLOCK_OVERHEAD
        finally:
            cursor.close()

    def _evict(
        self, excess: int, blocks: list[Block], protect: int
    ) -> tuple[int, list[Block], int]:
        """Make room for ``excess`` bytes, plus a margin so that eviction comes in chunks:
        the oldest lines after ``protect`` go first, then (a batch bigger than the bound)
        the batch's own oldest, never its last block. Returns the row lines evicted, the
        blocks to insert (the gap line first) and how many stored lines were deleted."""
        if excess <= 0:
            return 0, blocks, 0
        need = excess + self.db_budget // 32
        candidates = self._old_spans(protect)
        try:
            old, freed = pages.evict_until(candidates, need)
        finally:
            candidates.close()  # its cursor, before the DELETE
        dropped: list[Span] = []
        if freed < need and len(blocks) > 1:
            new = [(_span(*b), len(b[4]) + BLOCK_OVERHEAD) for b in blocks[:-1]]
            dropped, _ = pages.evict_until(new, need - freed)
        spans = old + dropped
        if not spans:
            return 0, blocks, 0
        if old:
            self.db.execute(
                "DELETE FROM blocks WHERE last_seq BETWEEN ? AND ?",
                (old[0].last_seq, old[-1].last_seq),
            )
        gap = spans[-1].last_seq
        lost = sum(s.rows + s.lost for s in spans)
        line = pages.evicted_gap(spans)
        removed = sum(s.last_seq - s.first_seq + 1 for s in old)
        rows = sum(s.rows for s in spans)
        return rows, [(gap, gap, None, lost, line), *blocks[len(dropped) :]], removed

    def read_page(self, after: int, max_rows: int, max_bytes: int) -> Page | None:
        cursor = self.db.execute(
            "SELECT last_seq, first_seq, pipeline, lost, body FROM blocks"
            " WHERE last_seq > ? ORDER BY last_seq",
            (after,),
        )
        try:
            if self.fault is not None:
                self.fault("read")
            return pages.next_page(_chunks(cursor, after), max_rows, max_bytes)
        finally:
            cursor.close()

    def ack(self, up_to: int) -> int:
        """Move the watermark to ``up_to`` (forward only) and delete what it covers;
        returns the new watermark."""
        if min(up_to, self.last_seq) <= self.watermark:
            return self.watermark
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            counts = self._delete_acked(up_to)
            if self.fault is not None:
                self.fault("ack")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.rollback()
            raise
        self._acked(up_to, counts)
        return self.watermark

    def _delete_acked(self, up_to: int) -> Counts | None:
        """Inside a transaction: the blocks ``up_to`` covers deleted and the watermark
        stored; what they held, or None when ``up_to`` moves nothing."""
        up_to = min(up_to, self.last_seq)
        if up_to <= self.watermark:
            return None
        counts = self.count(self.watermark, up_to)
        self.db.execute("DELETE FROM blocks WHERE last_seq <= ?", (up_to,))
        self._put("watermark", up_to)
        self._put("backlog_rows", self.backlog.rows - counts.rows)
        return counts

    def _acked(self, up_to: int, counts: Counts | None) -> None:
        """After the commit of ``_delete_acked``: the numbers follow, the room is freed."""
        if counts is None:
            return
        self.watermark = min(up_to, self.last_seq)
        self.backlog.lines -= counts.lines
        self.backlog.rows -= counts.rows
        self.acked_rows += counts.rows
        self._reclaim()

    def _reclaim(self) -> None:
        """Free pages go back to the file system once the backlog is shipped, or when
        they are more than a quarter of the bound; while a backlog drains, the appends
        reuse them (a vacuum per ack was most of a replay's cost at the edge)."""
        try:
            free = int(self.db.execute("PRAGMA freelist_count").fetchone()[0])
            if free <= KEEP_FREE_PAGES:
                return
            if self.backlog.lines > 0 and free * self.page_size < self.db_budget // 4:
                return
            # executescript steps the pragma to the end (execute frees only one page)
            self.db.executescript(f"PRAGMA incremental_vacuum({free - KEEP_FREE_PAGES});")
        except sqlite3.Error as exc:  # a full disk: what was committed stays; next time
            log.warning("log_reclaim_failed", error=str(exc))

    def close(self) -> None:
        self.db.close()


def _meta(db: sqlite3.Connection) -> dict[str, int]:
    return {str(k): int(v) for k, v in db.execute("SELECT key, value FROM meta")}


def salvage(path: Path) -> Salvage:
    """What a file SQLite calls corrupt still says: its meta row by row, read-only (what
    it owed from ``backlog_rows``, or counted from its blocks when that is missing)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return Salvage()
    try:
        try:
            meta = _meta(db)
        except sqlite3.Error:
            return Salvage()
        try:
            row = db.execute("SELECT max(last_seq) FROM blocks").fetchone()
            top = int(row[0] or 0)
        except sqlite3.Error:
            top = 0
        watermark = meta.get("watermark", 0)
        rows = meta.get("backlog_rows")
        if rows is None:
            with contextlib.suppress(sqlite3.Error):
                row = db.execute(
                    "SELECT coalesce(sum(CASE WHEN pipeline IS NULL THEN lost"
                    " ELSE last_seq - max(first_seq, ?1 + 1) + 1 END), 0)"
                    " FROM blocks WHERE last_seq > ?1",
                    (watermark,),
                ).fetchone()
                rows = int(row[0])
        return Salvage(
            last_seq=max(meta.get("last_seq", 0), top, watermark),
            watermark=watermark,
            backlog_rows=rows,
            shipped_to=meta.get("shipped_to"),
        )
    finally:
        db.close()


def _span(last: int, first: int, pipeline: str | None, lost: int, body: bytes | None) -> Span:
    """A stored block as a span (``body``: a gap block's line; unused for rows)."""
    if pipeline is None and body is not None:
        return Span(
            first_seq=first,
            last_seq=last,
            rows=0,
            lost=lost,
            lost_from=pages.first_lost_seq(body),
        )
    return Span(first_seq=first, last_seq=last, rows=last - first + 1, lost=0, lost_from=first)


def _chunks(cursor: sqlite3.Cursor, after: int) -> Iterator[Chunk]:
    for last, first, pipeline, lost, body in cursor:
        yield Chunk(first, last, pipeline, lost, body).after(after)
