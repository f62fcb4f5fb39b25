"""Shipping the local log home: pages after the watermark, in sequence order, several in
flight, the watermark moved only by the stream's ack; runs during every connected session.

A page goes to ``edgepub.edge.<edge>.logs`` as a request: the stream (EDGEPUB_EDGE_PAGES)
answers with its ack on the edge's inbox, so the edge needs no JetStream API. Its message
id is ``<edge>.<first>.<last>``, so a page re-sent within the duplicate window is stored
once; past the window, the collector's watermark check refuses it. Acks are taken in page
order: the watermark is the end of the longest acknowledged prefix. Any failure (a timeout,
an error ack, the connection gone) drops the window and starts again from the watermark,
after a short jittered wait; inference never waits on any of this.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

import msgspec
import nats
import structlog
from nats.aio.client import Client as NATS

from edgepub.shared import subjects
from edgepub.shared.log_lines import Gap, GapLine, encode_line

from . import backoff
from .pages import Page

log = structlog.get_logger("edgepub.edge.shipper")
HEADROOM = 4096  # bytes of a message that headers and framing may take


class PageSource(Protocol):
    """What the shipper reads (the SQLite local log)."""

    @property
    def watermark(self) -> int: ...

    async def read_page(self, after_seq: int, max_rows: int, max_bytes: int) -> Page | None: ...

    async def ack(self, up_to_seq: int) -> None: ...


class ShipSettings(msgspec.Struct, frozen=True, kw_only=True):
    page_rows: int = 1000  # PLATEAU_PAGE_SIZE
    window: int = 32  # pages in flight at once
    ack_timeout_s: float = 1.0  # a page's ack; past it the window starts again
    idle_poll_s: float = 0.1  # with nothing to ship, how soon to look again


class _Ack(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, object] | None = None


_ack = msgspec.json.Decoder(_Ack)


class PageRefused(Exception):
    """The stream answered with an error (not stored)."""


def headers_of(edge: str, page: Page, pipeline: str, workspace: int) -> dict[str, str]:
    return {
        "Nats-Msg-Id": f"{edge}.{page.first_seq}.{page.last_seq}",
        subjects.HEADER_FIRST_SEQ: str(page.first_seq),
        subjects.HEADER_LAST_SEQ: str(page.last_seq),
        subjects.HEADER_ROWS: str(page.rows),
        subjects.HEADER_PIPELINE: pipeline,
        subjects.HEADER_WORKSPACE: str(workspace),
    }


def too_large(page: Page) -> Page:
    """A page of one line the server cannot carry: shipped as a gap of that one row."""
    line = encode_line(
        GapLine(
            seq=page.last_seq,
            gap=Gap(count=1, first_seq=page.first_seq, last_seq=page.last_seq, reason="too_large"),
        )
    )
    return Page(
        first_seq=page.first_seq,
        last_seq=page.last_seq,
        body=line,
        line_count=1,
        rows=0,
        gaps=1,
        pipeline=page.pipeline,
    )


class Shipper:
    def __init__(
        self,
        source: PageSource,
        edge: str,
        where: WhereTo,
        settings: ShipSettings | None = None,
    ) -> None:
        self.source = source
        self.edge = edge
        self.where = where
        self.settings = settings or ShipSettings()
        self.subject = subjects.edge_subject(edge, subjects.EDGE_LOGS)
        self.shipped_pages = 0
        self.shipped_rows = 0
        self.last_error = ""
        self.log = log.bind(edge=edge)

    def view(self) -> dict[str, object]:
        return {
            "pages": self.shipped_pages,
            "rows": self.shipped_rows,
            "last_error": self.last_error or None,
        }

    async def run(self, nc: NATS) -> None:
        """Ship until cancelled (the session ended); every failure is retried."""
        delays = backoff.delays(first=0.1, cap=5.0)
        while True:
            shipped = self.shipped_pages
            try:
                await self._ship(nc)
            except* (PageRefused, TimeoutError, nats.errors.Error, OSError) as group:
                self.last_error = "; ".join(f"{type(e).__name__}: {e}" for e in group.exceptions)
            if self.shipped_pages > shipped:  # it got somewhere: start the waits afresh
                delays = backoff.delays(first=0.1, cap=5.0)
            wait = next(delays)
            self.log.info("shipping_paused", error=self.last_error, retry_in_s=round(wait, 2))
            await asyncio.sleep(wait)

    async def _ship(self, nc: NATS) -> None:
        """Pages in flight belong to one task group: the first failure cancels the window,
        and the next round starts again from the watermark."""
        max_bytes = max(1024, nc.max_payload - HEADROOM)
        in_flight: deque[tuple[Page, asyncio.Task[None]]] = deque()
        after = self.source.watermark
        async with asyncio.TaskGroup() as tg:
            while True:
                while len(in_flight) < self.settings.window:
                    page = await self.source.read_page(after, self.settings.page_rows, max_bytes)
                    if page is None:
                        break
                    if page.body_bytes > max_bytes:
                        page = too_large(page)
                    in_flight.append((page, tg.create_task(self._send(nc, page))))
                    after = page.last_seq
                if not in_flight:
                    await asyncio.sleep(self.settings.idle_poll_s)
                    continue
                page, sending = in_flight.popleft()
                await sending
                await self.source.ack(page.last_seq)
                self.shipped_pages += 1
                self.shipped_rows += page.rows

    async def _send(self, nc: NATS, page: Page) -> None:
        pipeline, workspace = self.where(page)
        reply = await nc.request(
            self.subject,
            page.body,
            timeout=self.settings.ack_timeout_s,
            headers=headers_of(self.edge, page, pipeline, workspace),
        )
        try:
            ack = _ack.decode(reply.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise PageRefused(f"not a stream ack: {exc}") from None
        if ack.error is not None or not ack.stream:
            raise PageRefused(f"page {page.first_seq}-{page.last_seq} not stored: {ack.error}")


class WhereTo(Protocol):
    """The pipeline and workspace a page is filed under (a gap-only page has none of its
    own: the pipeline that serves now)."""

    def __call__(self, page: Page) -> tuple[str, int]: ...
