"""Log collector append speed: pages through one collector vs a raw ``js.publish``, same run.

    .venv/bin/python bench/collector.py [--quick] [--edges N] [--concurrency N]
        [--batch-pages N] [--open-batches N]

A fresh nats-server (JetStream, no auth) and the streams as the publish service creates
them. ``pages`` pages of 500 rows of ~200 bytes (~100 KB) from ``edges`` edges are put in
the pages stream first; then one collector (the service's own Consumer, Collector and
Appender, in this process) runs until every page is appended: pages appended per second,
an edge's pages in hand grouped into atomic batches (up to ``batch_pages`` pages + the
watermark, checked against the edge's watermark). Against
it, the same page bodies published raw to a plain stream: awaited ``js.publish`` one at
a time, and windows of 64 ``js.publish`` in flight (the faster one is ``raw``).

Prints one JSON object on its last line: ``collector_pages_per_s``, ``collector_rows_per_s``,
``raw_pages_per_s``, ``raw_rows_per_s``, ``ratio`` = collector / raw, ``batches`` (atomic
batches the collector committed: every commit is one watermark message in the stream).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from edgepub.services.log_collector.__main__ import consumer_spec
from edgepub.services.log_collector.appender import Appender
from edgepub.services.log_collector.config import CollectorSettings
from edgepub.services.log_collector.handlers import Collector
from edgepub.services.stack.binaries import find_nats_server
from edgepub.shared import bus, log_lines, logs, subjects
from edgepub.shared.runner import Consumer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.procs import free_port

ROWS = 500


def make_pages(edges: int, pages: int) -> list[tuple[str, bytes, dict[str, str]]]:
    from support.log_pages import page

    out = []
    for i in range(pages):
        edge = f"edge-{i % edges}"
        n = i // edges
        body, headers = page(edge, n * ROWS + 1, (n + 1) * ROWS)
        out.append((subjects.edge_subject(edge, subjects.EDGE_LOGS), body, headers))
    return out


async def _drained(js: JetStreamContext) -> None:
    """Until the collector took every page from the pages stream (a work queue)."""
    while True:
        if (await js.stream_info(subjects.PAGES_STREAM)).state.messages == 0:
            return
        await asyncio.sleep(0.01)


async def run(url: str, pages: int, edges: int, settings: CollectorSettings) -> dict[str, float]:
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    await bus.ensure_streams(js)
    await js.add_stream(StreamConfig(name="RAW", subjects=["raw.>"]))
    work = make_pages(edges, pages)
    for i in range(0, len(work), 64):
        await asyncio.gather(*(js.publish(s, b, headers=h) for s, b, h in work[i : i + 64]))

    collector = Collector(Appender(nc, js, timeout_s=10), settings)
    stop = asyncio.Event()
    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(Consumer(js, consumer_spec(settings), bytes, collector.handle).run(stop))
        await _drained(js)
        took = time.perf_counter() - started
        stop.set()
    info = await js.stream_info(subjects.LOGS_STREAM)
    assert info.state.messages == pages + edges, info.state  # pages + one watermark each
    batches = info.state.last_seq - pages  # each batch added one watermark (rolled up since)

    bodies = [(f"raw.{i % edges}", b) for i, (_, b, _) in enumerate(work)]
    t0 = time.perf_counter()
    for s, b in bodies:
        await js.publish(s, b)
    awaited = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, len(bodies), 64):
        await asyncio.gather(*(js.publish(s, b) for s, b in bodies[i : i + 64]))
    windowed = time.perf_counter() - t0
    await nc.close()
    raw = min(awaited, windowed)
    return {
        "pages": pages,
        "edges": edges,
        "concurrency": settings.concurrency,
        "batch_pages": settings.batch_pages,
        "open_batches": settings.open_batches,
        "batches": batches,
        "page_bytes": len(work[0][1]),
        "rows_per_page": ROWS,
        "collector_pages_per_s": round(pages / took, 1),
        "collector_rows_per_s": round(pages * ROWS / took),
        "raw_awaited_pages_per_s": round(pages / awaited, 1),
        "raw_window64_pages_per_s": round(pages / windowed, 1),
        "raw_pages_per_s": round(pages / raw, 1),
        "raw_rows_per_s": round(pages * ROWS / raw),
        "ratio": round(raw / took, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="400 pages instead of 2000")
    ap.add_argument("--edges", type=int, default=4)
    d = CollectorSettings()
    ap.add_argument("--concurrency", type=int, default=d.concurrency)
    ap.add_argument("--batch-pages", type=int, default=d.batch_pages)
    ap.add_argument("--open-batches", type=int, default=d.open_batches)
    args = ap.parse_args()
    settings = CollectorSettings(
        concurrency=args.concurrency,
        batch=min(d.batch, args.concurrency),
        batch_pages=args.batch_pages,
        open_batches=args.open_batches,
    )
    settings.check()
    pages = 400 if args.quick else 2000
    logs.configure(fmt="console", level="warning")
    assert log_lines.LINE_VERSION == 1
    port = free_port()
    with tempfile.TemporaryDirectory() as store:
        server = subprocess.Popen(
            [find_nats_server(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            result = asyncio.run(run(f"nats://127.0.0.1:{port}", pages, args.edges, settings))
        finally:
            server.terminate()
            server.wait(10)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
