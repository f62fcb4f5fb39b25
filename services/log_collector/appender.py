"""Appending pages to the pipeline log: one atomic batch the server checks.

The batch is one or more pages of one edge that chain (group commit: the server's cost is
mostly per batch, ~3.5 ms), each page's lines one message on its pipeline log subject, then
the edge's new watermark on ``edgepub.wm.<edge>`` (rolled up to one message per edge, exempt
from ``max_age``), which commits it. Its first message expects the stream sequence of the
edge's watermark message as this collector last saw it (0: none yet): if anyone appended
for that edge since (a replay of any age, a second collector), the server refuses the
whole batch with "wrong last sequence" (10071) and nothing of it is stored.

What nats-server 2.15.1 answers (measured): a batch message that is not the commit gets an
empty reply when it asks for one, so every page is published without a reply subject (one
round trip per batch; one connection keeps the order); the commit's reply is the
PubAck ``{"stream", "seq", "batch", "count"}`` whose ``seq`` is the watermark's, or
``{"error": {"err_code": 10071, "description": "wrong last sequence: N"}}`` with N the
subject's actual last sequence; a commit whose earlier messages never arrived gets 10176
("atomic publish batch is incomplete").

The server's limits on one atomic batch (nats-server ``server/stream.go``): at most 1000
messages, the commit included (``streamDefaultMaxAtomicBatchSize``, else 10199 "too
large"), at most 50 open per stream and 1000 per server (else 10210 "too many inflight"),
the commit within 10 s of the first message. There is no limit on a batch's bytes beyond
each message's ``max_payload``; the stream's ingest queue holds 128 MiB
(``streamDefaultMaxQueueBytes``), which is why a group is also capped by bytes
(``config.GROUP_MAX_BYTES``).

Watermarks outlive the log's retention: ``Nats-TTL: never`` exempts them from
``max_age``, but ``max_bytes`` evicts the oldest messages whatever their TTL (measured), so
``sweep`` re-rolls an idle edge's watermark to the tail (``rewrite``, checked like an
append) before eviction reaches it. An edge's watermark is always its last message in the
stream (every batch ends with it), so eviction takes its pages first: a watermark gone
while a page of its edge is left was removed out of turn (a purge), and the edge's last
page says where Ops is (``last_page``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.nuid import NUID

from edgepub.shared import subjects

from .pages import Page, appended, decode_watermark, encode_watermark

WRONG_LAST_SEQUENCE = 10071

_BATCH_ID = "Nats-Batch-Id"
_BATCH_SEQ = "Nats-Batch-Sequence"
_BATCH_COMMIT = "Nats-Batch-Commit"
_EXPECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
_EXPECT_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
_ROLLUP = "Nats-Rollup"
_TTL = "Nats-TTL"
_STATUS = "Status"
_SUBJECT = "Nats-Subject"
_SEQUENCE = "Nats-Sequence"
_NO_RESULTS = "404"
_TOO_MANY = "413"
_END_OF_BATCH = "204"


@dataclass(frozen=True, slots=True)
class Mark:
    """An edge's watermark as the stream holds it."""

    stream_seq: int  # of the watermark message; 0: the edge has none
    last_seq: int  # the edge sequence Ops holds up to


NO_MARK = Mark(stream_seq=0, last_seq=0)


class Conflict(Exception):
    """The server refused the batch: the edge's watermark moved since it was read."""


class AppendFailed(Exception):
    """No answer, or another refusal: whether it was stored is unknown until the
    watermark is read again."""


class TooMany(AppendFailed):
    """More watermarks matched than nats-server returns in one multi-get (1024)."""


@dataclass(frozen=True, slots=True)
class LogState:
    """The pipeline log stream's extent and its byte bound, as stream info says."""

    first_seq: int
    last_seq: int
    bytes: int
    max_bytes: int  # 0: no bound


class _Ack(msgspec.Struct):
    seq: int = 0
    error: dict[str, object] | None = None


_ack = msgspec.json.Decoder(_Ack)


@dataclass(frozen=True, slots=True)
class Raw:
    """A message of the pages stream as a direct get returns it."""

    stream_seq: int
    subject: str
    headers: dict[str, str]
    body: bytes


class Appender:
    def __init__(self, nc: NATS, js: JetStreamContext, *, timeout_s: float) -> None:
        self._nc = nc
        self._js = js
        self._timeout = timeout_s
        self._nuid = NUID()
        self._direct = f"$JS.API.DIRECT.GET.{subjects.LOGS_STREAM}"

    async def read(self, edge: str) -> Mark:
        """The edge's watermark, from the stream (a direct get of its last message)."""
        try:
            async with asyncio.timeout(self._timeout):
                msg = await self._js.get_last_msg(
                    subjects.LOGS_STREAM, subjects.watermark(edge), direct=True
                )
        except NotFoundError:
            return NO_MARK
        except (nats.errors.Error, TimeoutError) as exc:
            raise AppendFailed(f"reading the watermark of {edge!r}: {exc!r}") from exc
        return _mark(edge, msg.seq or 0, msg.data or b"")

    async def state(self) -> LogState:
        try:
            async with asyncio.timeout(self._timeout):
                info = await self._js.stream_info(subjects.LOGS_STREAM)
        except (nats.errors.Error, TimeoutError) as exc:
            raise AppendFailed(f"stream info of {subjects.LOGS_STREAM}: {exc!r}") from exc
        return LogState(
            first_seq=info.state.first_seq,
            last_seq=info.state.last_seq,
            bytes=info.state.bytes,
            max_bytes=max(0, info.config.max_bytes or 0),
        )

    async def marks_up_to(self, seq: int) -> list[tuple[str, Mark]]:
        """Every edge whose watermark message is at stream sequence ``seq`` or below, with
        that mark: one batched direct get (``multi_last``, nats-server 2.11+) whatever the
        number of edges; TooMany past the server's 1024 at once."""
        request = {"multi_last": [f"{subjects.WATERMARK_ROOT}.>"], "up_to_seq": seq}
        inbox = self._nc.new_inbox()
        out: list[tuple[str, Mark]] = []
        try:
            sub = await self._nc.subscribe(inbox)
            try:
                await self._nc.publish(self._direct, msgspec.json.encode(request), reply=inbox)
                async with asyncio.timeout(self._timeout):
                    while True:
                        msg = await sub.next_msg(timeout=self._timeout)
                        headers = msg.headers or {}
                        status = headers.get(_STATUS)
                        if status in (_END_OF_BATCH, _NO_RESULTS):
                            return out
                        if status == _TOO_MANY:
                            raise TooMany(f"more than 1024 watermarks at or below seq {seq}")
                        if status:
                            raise AppendFailed(f"listing watermarks: status {status} {headers}")
                        subject = headers.get(_SUBJECT, "")
                        edge = subject.removeprefix(f"{subjects.WATERMARK_ROOT}.")
                        out.append((edge, _mark(edge, int(headers.get(_SEQUENCE, 0)), msg.data)))
            finally:
                await sub.unsubscribe()
        except (nats.errors.Error, TimeoutError) as exc:
            raise AppendFailed(f"listing the watermarks up to seq {seq}: {exc!r}") from exc

    async def rewrite(self, edge: str, mark: Mark) -> Mark:
        """Write the edge's watermark ``mark.last_seq`` at the stream's tail (rolling up the
        one it replaces), checked like an append against ``mark.stream_seq`` (0: the edge
        must have none): Conflict if the edge appended, or another collector wrote its
        watermark, since. A re-roll, or a watermark restored."""
        headers = {_ROLLUP: "sub", _TTL: "never", _EXPECT_SEQ: str(mark.stream_seq)}
        try:
            reply = await self._nc.request(
                subjects.watermark(edge),
                encode_watermark(edge, mark.last_seq),
                headers=headers,
                timeout=self._timeout,
            )
        except (nats.errors.Error, TimeoutError) as exc:
            raise AppendFailed(f"no answer to writing the watermark of {edge!r}: {exc!r}") from exc
        return Mark(stream_seq=_committed(reply.data), last_seq=mark.last_seq)

    async def last_page(self, edge: str) -> Raw | None:
        """The edge's latest page in the pipeline log, any workspace and pipeline (a direct
        get of the last message on ``edgepub.logs.*.*.<edge>``), or None."""
        request = {"last_by_subj": f"{subjects.LOGS_ROOT}.*.*.{subjects.token(edge)}"}
        try:
            msg = await self._nc.request(
                self._direct, msgspec.json.encode(request), timeout=self._timeout
            )
        except (nats.errors.Error, TimeoutError) as exc:
            raise AppendFailed(f"reading the last page of {edge!r}: {exc!r}") from exc
        headers = dict(msg.headers or {})
        status = headers.get(_STATUS)
        if status == _NO_RESULTS:
            return None
        if status:
            raise AppendFailed(f"reading the last page of {edge!r}: status {status} {headers}")
        return Raw(
            stream_seq=int(headers.get(_SEQUENCE, 0)),
            subject=headers.get(_SUBJECT, ""),
            headers=headers,
            body=msg.data or b"",
        )

    async def next_page(self, subject: str, after: int) -> Raw | None:
        """The first message on ``subject`` of the pages stream past stream sequence
        ``after`` (a direct get: nothing is consumed), or None when there is none."""
        try:
            async with asyncio.timeout(self._timeout):
                msg = await self._js.get_msg(
                    subjects.PAGES_STREAM, seq=after + 1, subject=subject, next=True, direct=True
                )
        except NotFoundError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise AppendFailed(f"reading ahead on {subject}: {exc!r}") from exc
        return Raw(
            stream_seq=msg.seq or 0,
            subject=msg.subject or subject,
            headers=dict(msg.headers or {}),
            body=msg.data or b"",
        )

    async def append(
        self, edge: str, parts: Sequence[tuple[Page, int]], mark: Mark, watermark: int
    ) -> Mark:
        """Append each of ``parts`` (a page of ``edge`` and the index of its first line to
        append; a page cut to nothing adds no message) and the watermark, as one batch
        checked against ``mark``; the new mark, or Conflict / AppendFailed."""
        batch = self._nuid.next().decode()
        expect = {_EXPECT_SEQ: str(mark.stream_seq), _EXPECT_SUBJECT: subjects.watermark(edge)}
        n = 1
        for page, start in parts:
            if start >= len(page.lines):
                continue
            body, headers = appended(page, start)
            headers.update(expect, **{_BATCH_ID: batch, _BATCH_SEQ: str(n)})
            try:
                await self._nc.publish(page.log_subject, body, headers=headers)
            except nats.errors.Error as exc:
                raise AppendFailed(f"publishing page {n} of the batch: {exc!r}") from exc
            n, expect = n + 1, {}
        commit = {
            _BATCH_ID: batch,
            _BATCH_SEQ: str(n),
            _BATCH_COMMIT: "1",
            _ROLLUP: "sub",
            _TTL: "never",
            **expect,
        }
        try:
            reply = await self._nc.request(
                subjects.watermark(edge),
                encode_watermark(edge, watermark),
                headers=commit,
                timeout=self._timeout,
            )
        except (nats.errors.Error, TimeoutError) as exc:
            raise AppendFailed(f"no answer to the commit: {exc!r}") from exc
        return Mark(stream_seq=_committed(reply.data), last_seq=watermark)


def _mark(edge: str, stream_seq: int, data: bytes) -> Mark:
    try:
        body = decode_watermark(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        # Only this service writes watermarks: a bad one is a bug to look at, not a page's.
        raise AppendFailed(f"the watermark of {edge!r} does not decode: {exc}") from exc
    return Mark(stream_seq=stream_seq, last_seq=body.last_seq)


def _committed(data: bytes) -> int:
    try:
        ack = _ack.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise AppendFailed(f"the commit's answer is no PubAck: {data[:200]!r}") from exc
    if ack.error is not None:
        if ack.error.get("err_code") == WRONG_LAST_SEQUENCE:
            raise Conflict(str(ack.error.get("description", "")))
        raise AppendFailed(f"the commit was refused: {ack.error}")
    if ack.seq <= 0:
        raise AppendFailed(f"the commit's answer has no sequence: {data[:200]!r}")
    return ack.seq
