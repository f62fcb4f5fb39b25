"""Every edge's watermark kept ahead of the pipeline log's byte eviction.

``Nats-TTL: never`` spares a watermark from the log's ``max_age``, not from its
``max_bytes``: nats-server evicts the oldest messages, watermark or not (measured on
2.15.1), and an idle edge's watermark sinks towards the front as other edges append. Lost,
the edge would look new: its next pages would wait for rows 1..W forever, and a replay at
or below W would be appended twice. An active edge's watermark moves to the tail with
every append (the hot path needs nothing more); for the idle ones each collector process
sweeps, every ``EDGEPUB_COLLECTOR_WATERMARK_SWEEP_S`` and as soon as it has itself
appended an eighth of the log's max_bytes since its last sweep (so a fast log is swept as
often as it needs, whatever the clock):

- when the log holds at least a quarter of its max_bytes (below that nothing is evicted
  before the log takes in three quarters of it more), every watermark in the oldest three
  quarters of the stream's sequence range, and not written since the last sweep, is listed
  (one batched direct get, ``Appender.marks_up_to``) and written again at the tail
  (``Appender.rewrite``), checked against its stream sequence like an append: if the edge
  appended, or another collector re-rolled it, meanwhile, the server refuses this one and
  nothing changes. Exactly once holds with any number of sweeps.
- what it needs: the log takes in less than half its max_bytes between two sweeps. When
  eviction got past the point below which the last sweep left nothing, it logs
  ``watermark_sweep_behind`` (sweep more often, or raise EDGEPUB_LOGS_MAX_BYTES).

A watermark is re-rolled about once per quarter of the log's messages taken in, and at most
every other sweep: one small message per idle edge; nothing while the log is under a
quarter full. A re-roll costs ~0.25 ms (1,100 in 0.6 s on a loaded 2-core test machine);
where watermarks are most of the log's messages (1,100 edges and 16 MiB of pages in the
test) most of them are re-rolled every other sweep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from .appender import Appender, AppendFailed, Conflict, Mark, TooMany

log = structlog.get_logger("edgepub.log_collector")

REROLL_FILL = 0.25  # of max_bytes: below it no watermark is at risk within one sweep
REROLL_SHARE = 0.75  # the oldest part of the sequence range whose watermarks are re-rolled
REROLLS_AT_ONCE = 256  # in flight at once (~0.25 ms each on an idle server)
KICK_SHARE = 0.125  # of max_bytes appended by this process: sweep now

Moved = Callable[[str, Mark, Mark], None]  # edge, the mark it had, the mark it has now


class Sweep:
    def __init__(self, appender: Appender, every_s: float, moved: Moved) -> None:
        self._appender = appender
        self._every = every_s
        self._moved = moved
        self._last_seq = 0  # the stream's last sequence at the last sweep
        self._left_from = 0  # below it the last sweep left no watermark (0: it did nothing)
        self._kick = asyncio.Event()
        self._kick_bytes = 0  # appended bytes that call for a sweep now (0: none known yet)
        self._appended = 0  # bytes this process appended since its last sweep

    def appended(self, nbytes: int) -> None:
        """This process appended a batch of ``nbytes``: sweep now once they add up."""
        self._appended += nbytes
        if self._kick_bytes and self._appended >= self._kick_bytes:
            self._kick.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._appended = 0
            self._kick.clear()
            try:
                await self.once()
            except AppendFailed as exc:  # the broker away, the stream not created yet
                log.info("watermark_sweep_failed", error=str(exc)[:200])
            waits = [asyncio.create_task(stop.wait()), asyncio.create_task(self._kick.wait())]
            try:
                await asyncio.wait(waits, timeout=self._every, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()

    async def once(self) -> int:
        """One sweep: how many watermarks it re-rolled."""
        started = time.monotonic()
        state = await self._appender.state()
        self._kick_bytes = int(state.max_bytes * KICK_SHARE)
        full = state.max_bytes > 0 and state.bytes >= state.max_bytes * REROLL_FILL
        if full and self._left_from and state.first_seq > self._left_from:
            log.warning(
                "watermark_sweep_behind",
                first_seq=state.first_seq,
                left_from=self._left_from,
                max_bytes=state.max_bytes,
                reason=(
                    "the pipeline log evicted past where the last sweep left watermarks: an "
                    "idle edge's watermark may be gone; lower "
                    "EDGEPUB_COLLECTOR_WATERMARK_SWEEP_S or raise EDGEPUB_LOGS_MAX_BYTES"
                ),
            )
        # not re-rolled: what was written since the last sweep (at the tail then)
        fresh_from = self._last_seq or state.last_seq
        self._last_seq, self._left_from = state.last_seq, 0
        if not full or state.last_seq <= state.first_seq:
            return 0
        span = state.last_seq - state.first_seq
        upto = min(state.first_seq + int(span * REROLL_SHARE), fresh_from)
        self._left_from = upto
        # below ``done`` every watermark is re-rolled; more than the server lists at once
        # (TooMany): halve the window above it, the older part first, then the rest
        moved, done, listed = 0, state.first_seq - 1, upto
        while done < upto:
            try:
                marks = await self._appender.marks_up_to(listed)
            except TooMany:
                if listed <= done + 1:
                    raise  # one sequence holds one message: cannot happen
                listed = done + (listed - done) // 2
                continue
            for i in range(0, len(marks), REROLLS_AT_ONCE):
                chunk = marks[i : i + REROLLS_AT_ONCE]
                moved += sum(await asyncio.gather(*(self._reroll(e, m) for e, m in chunk)))
            done, listed = listed, upto
        if moved:
            log.info(
                "watermarks_rerolled",
                count=moved,
                up_to_seq=upto,
                first_seq=state.first_seq,
                last_seq=state.last_seq,
                fill=round(state.bytes / state.max_bytes, 3),
                took_s=round(time.monotonic() - started, 3),
            )
        return moved

    async def _reroll(self, edge: str, mark: Mark) -> bool:
        try:
            new = await self._appender.rewrite(edge, mark)
        except Conflict:
            return False  # it moved meanwhile (an append, another sweep): at the tail now
        self._moved(edge, mark, new)
        return True
