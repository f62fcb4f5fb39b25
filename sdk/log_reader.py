"""Reading the pipeline log over the bus: ``Pipeline.logs()`` and ``edgepub logs``.

Every read is an ordered consumer on LOGS_STREAM filtered to one pipeline's subjects (one
partition's with ``partition=``), so the server sends only those pages and the SDK holds
at most a bounded client buffer of them. Each page becomes Arrow columns of the rows the
read wants as it arrives (``log_pages``) and is dropped; what the read holds is those
columns, every row of a window or only the newest ``limit`` (``log_columns``), never the
stream. Where to start and stop is decided in ``log_window``. The pipeline name is the
key: a replace keeps the same pipeline's log, and a publish of another pipeline files its
rows under that one.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import nats.errors
import pyarrow as pa
import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError as JsNotFoundError

from edgepub.shared import subjects
from edgepub.shared.errors import InvalidRequestError, ServiceUnavailableError
from edgepub.shared.log_lines import RowLine

from .log_columns import Newest, Selection, TableBuilder, selection
from .log_pages import Page, PageRows, page_of, page_rows
from .log_window import (
    DEFAULT_LIMIT,
    Window,
    check_limit,
    chunks_back,
    walked_far_enough,
    window,
)

if TYPE_CHECKING:
    from .client import Client

log = structlog.get_logger("edgepub.sdk")

WORKSPACE_ID = 1  # publishes are filed in the default workspace (PublishRecord.workspace_id)
MSG_WAIT_S = 10.0  # a page not delivered within this while one is pending: the read fails
# The consumer's client-side buffer: beyond it nats-py drops pages ("slow consumer") and the
# ordered consumer re-asks from the last one read, so it bounds the SDK's memory, never what
# it reads. The server's flow control keeps fewer bytes than this in flight for 65 KB pages
# (16 MB dropped pages, 64 MB did not: tests/integration/test_sdk_logs.py).
PENDING_MSGS = 4096
PENDING_BYTES = 64 << 20


@dataclass
class LogRead:
    table: pa.Table
    matched: int  # rows the read found (more than the table holds when a limit applied)
    gap_rows: int  # rows the edges counted as lost, in the pages read


def _delivered(msg: Msg) -> Page:
    meta = msg.metadata
    return page_of(msg, meta.sequence.stream, meta.timestamp)


def _position(msg: Msg) -> tuple[int, int]:
    """The page's stream sequence and when the server appended it (epoch ms)."""
    meta = msg.metadata
    return meta.sequence.stream, int(meta.timestamp.timestamp() * 1000)


def _rows(msg: Msg, sel: Selection, w: Window | None) -> PageRows:
    meta = msg.metadata
    return page_rows(msg, meta.sequence.stream, meta.timestamp, sel, w)


@contextlib.asynccontextmanager
async def _consumer(
    js: JetStreamContext, subject: str, config: ConsumerConfig
) -> AsyncIterator[JetStreamContext.PushSubscription]:
    sub = await js.subscribe(
        subject,
        stream=subjects.LOGS_STREAM,  # named: looking it up is an API call users lack
        ordered_consumer=True,
        config=config,
        pending_msgs_limit=PENDING_MSGS,
        pending_bytes_limit=PENDING_BYTES,
    )
    try:
        yield sub
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


async def _next(sub: JetStreamContext.PushSubscription, subject: str) -> Msg:
    try:
        return await sub.next_msg(timeout=MSG_WAIT_S)
    except (NatsTimeoutError, TimeoutError) as exc:
        raise ServiceUnavailableError(
            f"the pipeline log stopped delivering {subject} for {MSG_WAIT_S:.0f} s; try again"
        ) from exc


async def _last(js: JetStreamContext, subject: str) -> Any:
    """The last page on ``subject`` (a wildcard), or None when there is none."""
    try:
        return await js.get_last_msg(subjects.LOGS_STREAM, subject)
    except JsNotFoundError:
        return None


async def read_window(
    js: JetStreamContext, subject: str, w: Window, limit: int | None, sel: Selection
) -> LogRead:
    last = await _last(js, subject)
    keep: Newest | TableBuilder = Newest(limit, sel) if limit else TableBuilder(sel)
    gaps = 0
    if last is not None and last.time >= w.consumer_start():
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=w.consumer_start()
        )
        async with _consumer(js, subject, config) as sub:
            while True:
                msg = await _next(sub, subject)
                seq, ts_ms = _position(msg)
                if w.past(ts_ms):
                    break
                page = _rows(msg, sel, w)
                if page.table is not None:  # a gap has no time: it counts with its page's rows
                    keep.add_table(page.table)
                    gaps += page.gap_rows
                if seq >= last.seq or msg.metadata.num_pending == 0:
                    break
    return _result(keep, gaps)


async def read_newest(js: JetStreamContext, subject: str, limit: int, sel: Selection) -> LogRead:
    """Walk back from the last page until no earlier page can hold one of the newest rows."""
    last = await _last(js, subject)
    keep = Newest(limit, sel)
    gaps = 0
    if last is None:
        return _result(keep, gaps)
    info = await js.stream_info(subjects.LOGS_STREAM)
    oldest_ms: int | None = None
    for lo, hi in chunks_back(info.state.first_seq, last.seq):
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=lo)
        async with _consumer(js, subject, config) as sub:
            while True:
                msg = await _next(sub, subject)
                seq, ts_ms = _position(msg)
                if seq >= hi:
                    break  # read by the chunk before
                oldest_ms = ts_ms if oldest_ms is None else min(oldest_ms, ts_ms)
                page = _rows(msg, sel, None)
                gaps += page.gap_rows
                if page.table is not None:
                    keep.add_table(page.table)
                if seq >= last.seq:
                    break
        if oldest_ms is not None and walked_far_enough(
            keep.seen, limit, keep.kth_newest_ms(), oldest_ms
        ):
            break
    return _result(keep, gaps)


def _result(keep: Newest | TableBuilder, gaps: int) -> LogRead:
    matched = keep.rows if isinstance(keep, TableBuilder) else keep.seen
    return LogRead(keep.finish(), matched, gaps)


def log_subject(pipeline: str, partition: str | None) -> str:
    try:
        return subjects.pipeline_logs(WORKSPACE_ID, pipeline, partition)
    except ValueError as exc:
        raise InvalidRequestError(f"partition {partition!r} is not an edge name") from exc


def read_logs(
    client: Client,
    pipeline: str,
    *,
    limit: int | None = None,
    start_datetime: datetime | None = None,
    end_datetime: datetime | None = None,
    valid: bool | None = None,
    dataset: Any = None,
    dataset_exclude: Any = None,
    dataset_separator: str | None = None,
    partition: str | None = None,
) -> LogRead:
    """The read behind ``Pipeline.logs`` (warnings are the caller's)."""
    w = window(start_datetime, end_datetime)
    check_limit(limit)
    if valid is not None and not isinstance(valid, bool):
        raise InvalidRequestError(f"valid takes True, False or None, not {valid!r}")
    # Every row an edge logs is a served inference: valid=False (Wallaroo's "failed ones
    # too") has nothing more to add.
    sel = selection(dataset, dataset_exclude, dataset_separator)
    subject = log_subject(pipeline, partition)

    async def read() -> LogRead:
        js = (await client._session.nc()).jetstream()
        if w is None:
            return await read_newest(js, subject, limit or DEFAULT_LIMIT, sel)
        return await read_window(js, subject, w, limit, sel)

    return client._run(read())


def warn_about(read: LogRead, stacklevel: int = 3) -> None:
    returned = read.table.num_rows
    if read.matched > returned:
        warnings.warn(
            f"There are more logs available: {returned} of at least {read.matched} rows "
            "returned. Please set a larger limit or narrow the window.",
            stacklevel=stacklevel,
        )
    if read.gap_rows:
        warnings.warn(
            f"{read.gap_rows} rows were lost at the edge before they were shipped (gap "
            "records in the log: the edge's local bound, a full queue or a failed write).",
            stacklevel=stacklevel,
        )


async def follow(
    js: JetStreamContext,
    subject: str,
    on_row: Callable[[RowLine, str], None],
    on_ready: Callable[[], None],
) -> None:
    """Rows as pages are appended from now on, until cancelled (Ctrl-C)."""
    async with _consumer(js, subject, ConsumerConfig(deliver_policy=DeliverPolicy.NEW)) as sub:
        on_ready()
        while True:
            try:
                msg = await sub.next_msg(timeout=MSG_WAIT_S)
            except (NatsTimeoutError, TimeoutError):
                continue  # quiet: nothing appended
            page = _delivered(msg)
            for _, row in page.rows:
                on_row(row, page.partition)
