"""One page from the durable consumer: check it, decide against the edge's watermark,
append it (or not), and let the runner ack by outcome.

Exactly once rests on the server's check of every append (``appender``), never on this
process's memory: the watermarks held here only save a read. A remembered watermark can
only be behind the stream's (they only grow), so "covered" decided from it is right, an
append decided from it is checked by the server, and a "wait" is decided again from a
fresh read. Pages of one edge are handled one at a time in this process (in the order
they were fetched, which is stream order); other collector processes are kept in order by
the server's check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

from edgepub.shared.runner import Delivery, Reject, Retry

from . import decisions
from .appender import Appender, AppendFailed, Conflict, Mark
from .config import CollectorSettings
from .pages import CorruptPage, Page, parse

log = structlog.get_logger("edgepub.log_collector")

MAX_CONFLICTS = 8  # decisions in a row refused by the server before the page is naked


class _EdgeLocks:
    """One lock per edge while anyone holds or waits for it (FIFO: fetch order)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, edge: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(edge, (asyncio.Lock(), 0))
        self._locks[edge] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[edge]
            if users == 1:
                del self._locks[edge]
            else:
                self._locks[edge] = (lock, users - 1)


class Collector:
    def __init__(self, appender: Appender, settings: CollectorSettings) -> None:
        self._appender = appender
        self._settings = settings
        self._marks: dict[str, Mark] = {}
        self._locks = _EdgeLocks()

    async def handle(self, body: bytes, delivery: Delivery) -> None:
        try:
            page = parse(delivery.subject, delivery.headers, body)
        except CorruptPage as exc:
            raise Reject(f"corrupt page on {delivery.subject}: {exc.reason}") from exc
        deadline = time.monotonic() + self._settings.wait_hold_s
        attempt = 0
        while True:
            async with self._locks.hold(page.edge):
                waiting = await self._settle(page)
            if waiting is None:
                return
            attempt += 1
            if time.monotonic() >= deadline:
                log.info(
                    "page_waiting",
                    edge=page.edge,
                    first_seq=page.first,
                    last_seq=page.last,
                    missing_from=waiting.missing_from,
                    missing_to=waiting.missing_to,
                )
                raise Retry(
                    f"edge {page.edge!r}: seq {waiting.missing_from}..{waiting.missing_to} "
                    "are not in the pipeline log yet",
                    delay=self._settings.wait_retry_s,
                )
            await asyncio.sleep(decisions.wait_delay(attempt))

    async def _settle(self, page: Page) -> decisions.Wait | None:
        """Append or drop the page; a Wait if an earlier page must come first."""
        fresh = page.edge not in self._marks
        for _ in range(MAX_CONFLICTS):
            mark = await self._mark(page.edge, fresh=fresh)
            decision = decisions.decide(page.range, mark.last_seq)
            if isinstance(decision, decisions.Covered):
                log.info(
                    "page_covered",
                    edge=page.edge,
                    first_seq=page.first,
                    last_seq=page.last,
                    watermark=mark.last_seq,
                )
                return None
            if isinstance(decision, decisions.Wait):
                if fresh:
                    return decision
                fresh = True  # remembered marks lag: look at the stream's before waiting
                continue
            start = decisions.cut(page.seqs, decision.after)
            try:
                new = await self._appender.append(page, start, mark, decision.watermark)
            except Conflict as exc:
                log.info("append_refused", edge=page.edge, first_seq=page.first, reason=str(exc))
                fresh = True
                continue
            except AppendFailed as exc:
                self._marks.pop(page.edge, None)  # stored or not: the stream will say
                raise Retry(str(exc), delay=self._settings.retry_s) from exc
            self._marks[page.edge] = new
            log.debug(
                "page_appended",
                edge=page.edge,
                first_seq=page.seqs[min(start, len(page.seqs) - 1)],
                last_seq=page.last,
                cut=start,
                watermark=decision.watermark,
            )
            return None
        self._marks.pop(page.edge, None)
        raise Retry(
            f"edge {page.edge!r}: {MAX_CONFLICTS} appends in a row refused by a moving watermark",
            delay=self._settings.retry_s,
        )

    async def _mark(self, edge: str, *, fresh: bool) -> Mark:
        if not fresh and edge in self._marks:
            return self._marks[edge]
        try:
            mark = await self._appender.read(edge)
        except AppendFailed as exc:
            raise Retry(str(exc), delay=self._settings.retry_s) from exc
        self._marks[edge] = mark
        return mark
