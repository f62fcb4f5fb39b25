"""One page from the durable consumer: check it, queue it with its edge's other pages in
hand, and let the runner ack by the outcome of the round that settled it.

Group commit: an edge's pages are settled a round at a time (``edge_queues``, in fetch
order, which is stream order). A round reads the edge's watermark (or remembers it), lets
``decisions.group`` pick the queued pages that chain from it, and appends them all as ONE
atomic batch the server checks (``appender``); the pages that arrive meanwhile form the
next round's group. Pages of different edges go in parallel, at most ``open_batches``
batches at once.

Exactly once rests on the server's check of every batch, never on this process's memory:
the watermarks held here only save a read. A remembered watermark can only be behind the
stream's (they only grow), so "covered" decided from it is right, an append decided from
it is checked by the server, and a "wait" is decided again from a fresh read. Other
collector processes are kept in order by the same check.

An edge whose watermark is not in the stream is new, unless retention or an operator
removed what Ops held of it (``_without_mark``): its last page in the log says where Ops is
and the watermark is written back from it; with no page either, its pages wait for
``adopt_after_s`` and the edge then resumes from its lowest waiting page (``_adopt``,
logged as ``watermark_lost``). Both writes are checked like an append.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from edgepub.shared.runner import Delivery, Reject, Retry

from . import decisions, fault
from .appender import NO_MARK, Appender, AppendFailed, Conflict, Mark
from .config import GROUP_MAX_BYTES, CollectorSettings
from .pages import CorruptPage, Page, parse, stored_end
from .sweep import Sweep

log = structlog.get_logger("edgepub.log_collector")

MAX_CONFLICTS = 8  # rounds in a row a page's batch was refused before the page is naked
APPEND_RETRY_S = 20.0  # a round retries unanswered reads and commits this long (< ack wait)
# A page still waiting for an earlier one after this many looks (~0.35 s) reads its edge's
# pages stream ahead of itself for the pages that fill the hole (``_read_ahead``).
READ_AHEAD_AFTER = 4
READ_AHEAD_PAGES = 512
READ_AHEAD_EVERY_S = 1.0
READ_AHEAD_BYTES = 64 * 1024 * 1024

# --- the queues: each edge's pages in hand, in fetch order, one drainer per edge --------
#
# What makes group commit possible: while one round of an edge is appending, the edge's
# next pages queue here, and the next round sees them all at once. Every handler awaits its
# own page's outcome. The queue is memory only and holds nothing exactly once rests on: a
# page whose handler is gone (cancelled on stop) is skipped, and its message comes back.

# None: appended or covered (ack); Wait: an earlier page has to come first.
Outcome = decisions.Wait | None


@dataclass(eq=False, slots=True)
class Entry:
    """One page in hand, and the future its handler awaits."""

    page: Page
    done: asyncio.Future[Outcome]
    conflicts: int = 0  # rounds in a row its batch was refused by a moving watermark

    @property
    def open(self) -> bool:
        return not self.done.done()

    def settle(self, outcome: Outcome) -> None:
        if self.open:
            self.done.set_result(outcome)

    def fail(self, error: BaseException) -> None:
        if self.open:
            self.done.set_exception(error)


# One round for an edge: takes the open entries (in fetch order) when it is ready to
# decide, settles some and leaves the rest for the next round; it must settle at least one
# or count a conflict on one, so the drainer ends.
Round = Callable[[str, Callable[[], list[Entry]]], Awaitable[None]]


@dataclass(slots=True)
class _Edge:
    entries: list[Entry] = field(default_factory=list)
    drainer: asyncio.Task[None] | None = None


class EdgeQueues:
    """Each edge's queue and its drainer, a task that runs rounds while pages are queued."""

    def __init__(self, round_: Round) -> None:
        self._round = round_
        self._edges: dict[str, _Edge] = {}

    async def submit(self, page: Page) -> Outcome:
        """Queue the page for its edge and wait for its outcome (Retry and other failures
        are raised)."""
        entry = self._enqueue(page)
        try:
            return await entry.done
        finally:
            entry.done.cancel()  # a no-op once settled; else the drainer skips it

    def offer(self, page: Page) -> None:
        """Queue a page no handler holds (read ahead from the stream): appended like the
        rest, its outcome kept by nobody; its own delivery finds it covered later."""
        entry = self._enqueue(page)
        entry.done.add_done_callback(_unwatched)

    def _enqueue(self, page: Page) -> Entry:
        entry = Entry(page=page, done=asyncio.get_running_loop().create_future())
        state = self._edges.setdefault(page.edge, _Edge())
        state.entries.append(entry)
        if state.drainer is None:
            state.drainer = asyncio.create_task(self._drain(page.edge, state))
        return entry

    async def _drain(self, edge: str, state: _Edge) -> None:
        try:
            while True:
                state.entries = [e for e in state.entries if e.open]
                if not state.entries:
                    return
                try:
                    await self._round(edge, lambda: [e for e in state.entries if e.open])
                except Exception as exc:  # a bug: fail the pages (naked), never hang them
                    for entry in state.entries:
                        entry.fail(exc)
        finally:
            state.drainer = None
            if self._edges.get(edge) is state:
                del self._edges[edge]


def _unwatched(done: asyncio.Future[Outcome]) -> None:
    if not done.cancelled():
        done.exception()  # read, so asyncio does not report it as never retrieved


class Collector:
    def __init__(self, appender: Appender, settings: CollectorSettings) -> None:
        self._appender = appender
        self._settings = settings
        self._marks: dict[str, Mark] = {}
        self._queues = EdgeQueues(self._round)
        self._open = asyncio.Semaphore(settings.open_batches)
        self._looking: set[str] = set()  # edges whose pages stream is being read ahead
        self._looked: dict[str, tuple[int, float]] = {}  # edge -> (hole, no look before)
        self._adopted: dict[str, int] = {}  # edges resumed with no trace in Ops -> from where
        self._after_append = fault.exit_after_appends(settings.fault_exit_after_appends)
        self.sweep = Sweep(appender, settings.watermark_sweep_s, self.moved)  # run it beside

    def moved(self, edge: str, old: Mark, new: Mark) -> None:
        """The sweep re-rolled ``edge``'s watermark: remember where it is now (unless this
        process appended since, which the server's check made the re-roll lose to)."""
        if self._marks.get(edge) == old:
            self._marks[edge] = new

    async def handle(self, body: bytes, delivery: Delivery) -> None:
        try:
            page = parse(delivery.subject, delivery.headers, body)
        except CorruptPage as exc:
            raise Reject(f"corrupt page on {delivery.subject}: {exc.reason}") from exc
        deadline = time.monotonic() + self._settings.wait_hold_s
        attempt = 0
        while True:
            waiting = await self._queues.submit(page)
            if waiting is None:
                return
            attempt += 1
            if attempt == READ_AHEAD_AFTER:
                await self._read_ahead(page, delivery, waiting)
                continue
            if time.monotonic() >= deadline:
                if waiting.missing_from == 1 and await self._adopt(page, delivery):
                    continue
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

    async def _read_ahead(self, page: Page, delivery: Delivery, hole: decisions.Wait) -> None:
        """Queue the pages of ``page``'s edge that fill the hole before it, read from the
        pages stream itself.

        The pages a hole waits for are in the stream, unacked (a work queue keeps nothing
        else), but may not come soon: a page the edge sent again (its first try got no
        ack) is stored behind the pages sent after it, and a page another collector gave
        back sits in nak backoff. Meanwhile the pages after the hole wait in the
        collectors' hands, and once they are as many as the consumer's max_ack_pending
        nothing new is delivered at all. So a page that has waited reads its edge's
        subject from the start (direct gets: nothing consumed, at most READ_AHEAD_PAGES
        messages and READ_AHEAD_BYTES, once per hole per READ_AHEAD_EVERY_S) and queues
        what fills the hole; the server's check of the append keeps it exactly once."""
        edge = page.edge
        now = time.monotonic()
        last = self._looked.get(edge)
        if edge in self._looking or (last and last[0] == hole.missing_from and now < last[1]):
            return  # one look at a time per edge, one per hole for a while
        self._looking.add(edge)
        self._looked[edge] = (hole.missing_from, now + READ_AHEAD_EVERY_S)
        want_from, want_to = hole.missing_from, hole.missing_to
        after, scanned, read, found = 0, 0, 0, 0
        try:
            while scanned < READ_AHEAD_PAGES and read < READ_AHEAD_BYTES:
                raw = await self._appender.next_page(delivery.subject, after)
                if raw is None:
                    break
                after, scanned, read = raw.stream_seq, scanned + 1, read + len(raw.body)
                try:
                    ahead = parse(raw.subject, raw.headers, raw.body)
                except CorruptPage:
                    continue  # its own delivery drops it with the reason
                if ahead.range.end < want_from or ahead.range.reach > want_to:
                    continue
                self._queues.offer(ahead)
                found += 1
                if ahead.range.reach <= want_from:
                    want_from = ahead.range.end + 1
                    if want_from > want_to:
                        break
        except AppendFailed as exc:
            log.info("read_ahead_failed", edge=edge, error=str(exc)[:200])
        finally:
            self._looking.discard(edge)
        log.info(
            "pages_read_ahead",
            edge=edge,
            missing_from=hole.missing_from,
            missing_to=hole.missing_to,
            scanned=scanned,
            found=found,
        )

    async def _adopt(self, page: Page, delivery: Delivery) -> bool:
        """Resume ``page``'s edge from its lowest page waiting in the pages stream when Ops
        holds nothing of it (neither a watermark nor a page: retention or an operator
        removed them) and its pages have waited ``adopt_after_s`` for rows before them.

        Nothing can be appended twice: the log holds no row of the edge, and the watermark
        is written with the server's check (the edge has none), so collectors racing agree.
        What it gives up is rows 1..N-1 of an edge whose first page is so late that the
        later ones waited all this while; they are found covered and logged as an error."""
        edge = page.edge
        waited = time.time() - delivery.stored_at
        if edge in self._adopted or edge in self._looking or not delivery.stored_at:
            return False  # done, or looked into by another of its pages: this one retries
        if waited < self._settings.adopt_after_s:
            return False
        self._looking.add(edge)
        try:
            if (await self._appender.read(edge)).stream_seq:
                return False
            if await self._appender.last_page(edge) is not None:
                return False
            lowest = await self._lowest_waiting(page, delivery)
            if lowest <= 1:
                return False
            try:
                resumed = Mark(stream_seq=0, last_seq=lowest - 1)
                self._marks[edge] = await self._appender.rewrite(edge, resumed)
            except Conflict:
                self._marks.pop(edge, None)  # another collector resumed it first: read it
                return True
            self._adopted[edge] = lowest - 1
            log.error(
                "watermark_lost",
                edge=edge,
                resumed_after=lowest - 1,
                waited_s=round(waited, 1),
                reason=(
                    f"neither the watermark of {edge!r} nor any page of it is in the pipeline "
                    f"log, and its pages waited {waited:.0f}s for seq 1..{lowest - 1}: resumed "
                    f"from seq {lowest} (retention or a purge removed what Ops held; "
                    "EDGEPUB_COLLECTOR_ADOPT_AFTER_S sets the wait)"
                ),
            )
        except AppendFailed as exc:
            log.info("adopt_failed", edge=edge, error=str(exc)[:200])
            return False
        finally:
            self._looking.discard(edge)
        return True

    async def _lowest_waiting(self, page: Page, delivery: Delivery) -> int:
        """The lowest edge sequence any page of the edge in the pages stream reaches (read
        from the start of its subject, as ``_read_ahead`` reads)."""
        lowest, after, scanned, read = page.range.reach, 0, 0, 0
        while scanned < READ_AHEAD_PAGES and read < READ_AHEAD_BYTES:
            raw = await self._appender.next_page(delivery.subject, after)
            if raw is None:
                break
            after, scanned, read = raw.stream_seq, scanned + 1, read + len(raw.body)
            try:
                lowest = min(lowest, parse(raw.subject, raw.headers, raw.body).range.reach)
            except CorruptPage:
                continue
        return lowest

    async def _round(self, edge: str, pending: Callable[[], list[Entry]]) -> None:
        """Settle what one atomic batch (or none) can of ``edge``'s queued pages.

        A watermark read or a commit that gets no answer (a node died, a leader moves) is
        tried again here, the pages kept in their queue and in their order, for up to
        APPEND_RETRY_S: naking them would send the edge's pages back to the stream out of
        order, and every later page would then wait for its turn to come round again."""
        async with self._open:  # the queue grows while a batch slot is awaited
            fresh = edge not in self._marks
            failing_since: float | None = None
            while True:
                entries = pending()
                if not entries:
                    return
                try:
                    mark = await self._mark(edge, fresh=fresh)
                except AppendFailed as exc:
                    failing_since = await self._failed(edge, entries, exc, failing_since)
                    if failing_since is None:
                        return
                    fresh = True
                    continue
                g = decisions.group(
                    mark.last_seq,
                    [e.page.range for e in entries],
                    max_pages=self._settings.batch_pages,
                    sizes=[len(e.page.body) for e in entries],
                    max_bytes=GROUP_MAX_BYTES,
                )
                for i in g.covered:
                    self._covered(entries[i], mark)
                if not g.members:
                    if g.waiting and not fresh:
                        fresh = True  # remembered marks lag: look at the stream's first
                        continue
                    for i, wait in g.waiting:
                        entries[i].settle(wait)
                    return
                members = [entries[m.index] for m in g.members]
                parts = [
                    (e.page, decisions.cut(e.page.seqs, m.after))
                    for e, m in zip(members, g.members, strict=True)
                ]
                try:
                    new = await self._appender.append(edge, parts, mark, g.watermark)
                    break
                except Conflict as exc:
                    self._refused(edge, members, exc)
                    return
                except AppendFailed as exc:
                    self._marks.pop(edge, None)  # stored or not: the stream will say
                    failing_since = await self._failed(edge, members, exc, failing_since)
                    if failing_since is None:
                        return
                    fresh = True
        if self._after_append is not None:
            self._after_append()  # the test-only fault seam: may exit before any ack
        self._marks[edge] = new
        self.sweep.appended(sum(len(e.page.body) for e in members))
        for (page, start), m in zip(parts, g.members, strict=True):
            log.debug(
                "page_appended",
                edge=edge,
                first_seq=page.seqs[min(start, len(page.seqs) - 1)],
                last_seq=page.last,
                cut=start,
                watermark=g.watermark,
                group=len(parts),
            )
            entries[m.index].settle(None)
        log.debug("batch_appended", edge=edge, pages=len(parts), watermark=g.watermark)

    async def _failed(
        self, edge: str, entries: list[Entry], exc: AppendFailed, since: float | None
    ) -> float | None:
        """After a failed read or commit: wait a little and go on (the time failing began),
        or, failing for APPEND_RETRY_S, hand the pages back to the stream (None)."""
        now = time.monotonic()
        since = now if since is None else since
        if now - since >= APPEND_RETRY_S:
            for entry in entries:
                entry.fail(self._retry(str(exc), exc))
            return None
        log.info("append_unanswered", edge=edge, pages=len(entries), error=str(exc)[:200])
        await asyncio.sleep(min(1.0, 0.1 * 2 ** min(int(now - since), 4)))
        return since

    def _covered(self, entry: Entry, mark: Mark) -> None:
        page = entry.page
        if page.range.end <= self._adopted.get(page.edge, 0):
            log.error(
                "page_below_lost_watermark",
                edge=page.edge,
                first_seq=page.first,
                last_seq=page.last,
                resumed_after=self._adopted[page.edge],
                reason="the page came after its edge was resumed past it: its rows are dropped",
            )
        log.info(
            "page_covered",
            edge=page.edge,
            first_seq=page.first,
            last_seq=page.last,
            watermark=mark.last_seq,
        )
        entry.settle(None)

    def _refused(self, edge: str, members: list[Entry], exc: Conflict) -> None:
        """The watermark moved under the batch: its pages are decided again next round
        from a fresh read, up to MAX_CONFLICTS rounds each."""
        self._marks.pop(edge, None)
        for entry in members:
            log.info("append_refused", edge=edge, first_seq=entry.page.first, reason=str(exc))
            entry.conflicts += 1
            if entry.conflicts >= MAX_CONFLICTS:
                reason = (
                    f"edge {edge!r}: {MAX_CONFLICTS} appends in a row refused by a moving watermark"
                )
                entry.fail(self._retry(reason, exc))

    def _retry(self, reason: str, cause: Exception) -> Retry:
        """What each page of a failed round raises: as if raised ``from`` its cause, which a
        dead letter reads."""
        retry = Retry(reason, delay=self._settings.retry_s)
        retry.__cause__ = cause
        return retry

    async def _mark(self, edge: str, *, fresh: bool) -> Mark:
        if not fresh and edge in self._marks:
            return self._marks[edge]
        mark = await self._appender.read(edge)  # AppendFailed: the caller's pages retry
        if mark.stream_seq == 0:
            mark = await self._without_mark(edge)
        self._marks[edge] = mark
        return mark

    async def _without_mark(self, edge: str) -> Mark:
        """An edge with no watermark in the stream: new (NO_MARK), unless a page of it is in
        the log. A watermark is its edge's last message, so retention takes the pages first;
        one gone with a page left was removed out of turn (a purge), and the last page's end
        is what Ops holds. The watermark is written back from it (checked: the edge has
        none), so it does not depend on that page staying."""
        raw = await self._appender.last_page(edge)
        if raw is None:
            return NO_MARK
        try:
            end = stored_end(raw.headers, raw.body)
        except CorruptPage as exc:
            raise AppendFailed(
                f"the last page of {edge!r} in the pipeline log (seq {raw.stream_seq}) is not "
                f"one this service wrote: {exc.reason}"
            ) from exc
        log.warning(
            "watermark_recovered",
            edge=edge,
            last_seq=end,
            page_seq=raw.stream_seq,
            reason=(
                f"the watermark of {edge!r} is not in the pipeline log but its last page is: "
                f"Ops holds up to seq {end}; writing the watermark back"
            ),
        )
        try:
            return await self._appender.rewrite(edge, Mark(stream_seq=0, last_seq=end))
        except Conflict:
            return await self._appender.read(edge)  # another collector wrote it first
