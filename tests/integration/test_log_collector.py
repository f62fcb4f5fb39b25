"""The log collector across real processes: edges (joined through the token service, on
their own subjects, exactly as the shipper publishes) ship pages; the pipeline log at Ops
holds every row once, in order per edge, filed under the edge's name."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest

from edgepub import Client
from edgepub.shared import subjects
from support import log_pages
from support.log_pages import join, owner
from support.servers import NatsServer
from support.services import OpsServices

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture
def publish_id(client: Client, model_file: Path) -> int:
    model = client.upload_model("rf", model_file)
    return client.build_pipeline("logs").add_model_step(model).publish(progress=False).id


def test_pages_of_two_edges_arrive_once_in_order_under_their_names(
    nats_server: NatsServer, ops: OpsServices, publish_id: int
) -> None:
    async def main() -> None:
        a = await join(nats_server, publish_id, "shop-a")
        b = await join(nats_server, publish_id, "shop-b")
        nc = await owner(nats_server)
        try:
            await asyncio.gather(
                log_pages.ship(a, "shop-a", 1, 1000, size=100),
                log_pages.ship(b, "shop-b", 1, 730, size=73),
            )
            got = await log_pages.wait_rows(nc, 1730)
            got.assert_exactly_once({"shop-a": 1000, "shop-b": 730})
            assert got.subjects_of == {
                "shop-a": {subjects.pipeline_log(1, "p", "shop-a")},
                "shop-b": {subjects.pipeline_log(1, "p", "shop-b")},
            }
            assert got.watermarks == {"shop-a": 1000, "shop-b": 730}
            # the page is gone from the work queue once appended
            assert await log_pages.pages_pending(nc) == 0
        finally:
            for c in (a, b, nc):
                await c.close()

    asyncio.run(main())


def test_an_overlapping_page_is_cut_and_a_covered_one_dropped(
    nats_server: NatsServer, ops: OpsServices, publish_id: int
) -> None:
    async def main() -> None:
        edge = await join(nats_server, publish_id, "shop-c")
        nc = await owner(nats_server)
        subject = subjects.edge_subject("shop-c", subjects.EDGE_LOGS)
        try:
            await log_pages.ship(edge, "shop-c", 1, 100, size=100)
            await log_pages.wait_rows(nc, 100)
            # the edge re-paged after a restart: 51..150 overlaps, 1..60 is covered (a page of
            # the same range and id within the duplicate window the pages stream drops itself)
            for first, last in ((51, 150), (1, 60)):
                body, headers = log_pages.page("shop-c", first, last)
                await log_pages.send(edge, subject, body, headers)
            await log_pages.ship(edge, "shop-c", 151, 200, size=50)
            got = await log_pages.wait_rows(nc, 200)
            got.assert_exactly_once({"shop-c": 200})
            covered = ops["log_collector"].count_events("page_covered")
            assert covered == 1
        finally:
            await edge.close()
            await nc.close()

    asyncio.run(main())


def test_an_edge_cannot_write_the_pipeline_log_or_claim_another_partition(
    nats_server: NatsServer, ops: OpsServices, publish_id: int
) -> None:
    async def main() -> None:
        edge = await join(nats_server, publish_id, "shop-d")
        nc = await owner(nats_server)
        try:
            body, headers = log_pages.page("shop-d", 1, 10)
            headers[subjects.HEADER_PARTITION] = "shop-x"  # ignored: the subject names it
            await log_pages.send(
                edge, subjects.edge_subject("shop-d", subjects.EDGE_LOGS), body, headers
            )
            with pytest.raises((nats.errors.Error, TimeoutError)):
                await edge.request(subjects.pipeline_log(1, "p", "shop-x"), body, timeout=1)
            got = await log_pages.wait_rows(nc, 10)
            got.assert_exactly_once({"shop-d": 10})
        finally:
            await edge.close()
            await nc.close()

    asyncio.run(main())


def test_one_edges_backlog_goes_home_in_fewer_atomic_batches_than_pages(
    nats_server: NatsServer, ops: OpsServices, publish_id: int
) -> None:
    """Group commit: 200 pages of one edge queued while the collector was away are appended
    in batches of many pages, every row once, in order."""
    col = ops["log_collector"]
    col.terminate()

    async def main() -> None:
        edge = await join(nats_server, publish_id, "shop-g")
        nc = await owner(nats_server)
        try:
            pages = await log_pages.ship(edge, "shop-g", 1, 2000, size=10)
            assert pages == 200 and await log_pages.pages_pending(nc) == 200
            col.start()
            got = await log_pages.wait_rows(nc, 2000, within_s=60)
            got.assert_exactly_once({"shop-g": 2000})
            assert got.watermarks == {"shop-g": 2000}
            state = (await nc.jetstream().stream_info(subjects.LOGS_STREAM)).state
            # each batch stored its pages and one watermark (rolled up to the last since)
            assert state.messages == pages + 1
            batches = state.last_seq - pages
            print(f"{pages} pages in {batches} atomic batches")
            assert 1 <= batches <= pages // 4, f"{batches} atomic batches for {pages} pages"
            assert await log_pages.pages_pending(nc) == 0
        finally:
            await edge.close()
            await nc.close()

    asyncio.run(main())
