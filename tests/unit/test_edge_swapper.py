"""The swap loop against a fake agent (no registry, no onnxruntime): one swap at a time,
the newest assignment wins, duplicates and stale ones are skipped, failures are retried
with backoff until they work or something newer arrives."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import structlog
from structlog.testing import capture_logs

from edgepub.edge_agent.assignment import read_record
from edgepub.edge_agent.metrics import EdgeMetrics
from edgepub.edge_agent.swap import Swapper
from edgepub.shared.edge_messages import Assignment
from edgepub.shared.errors import InvalidNameError, RegistryUnavailableError
from support.waiting import async_wait_for

T = TypeVar("T")
START = "reg.example:5000/edgepub/pipelines/fraud:v1"


def url(version: str) -> str:
    return f"reg.example:5000/edgepub/pipelines/fraud:{version}"


def assignment(publish_id: int, version: str) -> Assignment:
    return Assignment(
        publish_id=publish_id,
        pipeline_name="fraud",
        pipeline_version_id=publish_id,
        pipeline_version_name=version,
        pipeline_url=url(version),
    )


class FakePipeline:
    def __init__(self, version: str) -> None:
        self.pipeline_name = "fraud"
        self.version = version


class FakeHost:
    """Fetches succeed unless told to fail (``failures``) or held (``gates``)."""

    def __init__(self) -> None:
        self.service: Any = SimpleNamespace(pipeline=None)
        self.log: Any = structlog.get_logger("test").bind()
        self.metrics = EdgeMetrics()
        self.fetched: list[str] = []
        self.failures: dict[str, int] = {}  # url -> how many fetches fail (-1: all)
        self.gates: dict[str, asyncio.Event] = {}
        self.refuse: set[str] = set()

    async def fetch(self, pipeline_url: str) -> Any:
        self.fetched.append(pipeline_url)
        if pipeline_url in self.refuse:
            raise InvalidNameError(f"{pipeline_url} is on another registry")
        left = self.failures.get(pipeline_url, 0)
        if left:
            self.failures[pipeline_url] = left - 1
            raise RegistryUnavailableError(f"HTTP 503 for {pipeline_url}")
        gate = self.gates.get(pipeline_url)
        if gate is not None:
            await gate.wait()
        return SimpleNamespace(url=pipeline_url, source=SimpleNamespace(manifest_digest="d"))

    async def load(self, cached: Any) -> tuple[Any, bool]:
        return FakePipeline(cached.url.rsplit(":", 1)[-1]), True

    def reason(self, exc: Exception) -> str:
        return f"pull failed: {exc}"


def scenario(
    tmp_path: Path, body: Callable[[Swapper, FakeHost], Awaitable[T]]
) -> tuple[T, list[dict[str, Any]]]:
    """Run ``body`` with a swapper serving v1 (from PIPELINE_URL) and its loop running."""

    async def main() -> T:
        host = FakeHost()
        swapper = Swapper(host, host.metrics, tmp_path, START, retry_first_s=0.01, retry_cap_s=0.05)
        swapper.start()
        swapper.install(FakePipeline("v1"), START)  # type: ignore[arg-type]
        async with asyncio.TaskGroup() as tg:
            loop = tg.create_task(swapper.run())
            await async_wait_for(lambda: swapper._active, 5.0, "the loop")
            try:
                return await body(swapper, host)
            finally:
                loop.cancel()

    with capture_logs() as logs:
        result = asyncio.run(main())
    return result, [dict(e) for e in logs]


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_a_swap_serves_the_new_pipeline_records_it_and_releases_the_old(tmp_path: Path) -> None:
    async def body(swapper: Swapper, host: FakeHost) -> Any:
        outcome = await swapper.assign(assignment(2, "v2"))
        gc.collect()  # nothing holds v1 but the test's own frames: it must be gone
        return outcome, swapper.running, host.service.pipeline.version, swapper.released

    (outcome, running, served, released), logs = scenario(tmp_path, body)
    assert outcome == "swapped"
    assert served == "v2"
    assert (running.publish_id, running.pipeline_version, running.pipeline_url) == (
        2,
        "v2",
        url("v2"),
    )
    assert released == ["v1"]
    [swapped] = events(logs, "pipeline_swapped")
    assert (swapped["from_version"], swapped["to_version"]) == ("v1", "v2")
    assert (swapped["from_publish_id"], swapped["to_publish_id"]) == (None, 2)
    record = read_record(tmp_path)
    assert record is not None
    assert (record.assignment.publish_id, record.start_pipeline_url) == (2, START)


def test_assigning_what_already_runs_is_a_no_op_logged_at_debug(tmp_path: Path) -> None:
    async def body(swapper: Swapper, host: FakeHost) -> Any:
        first = await swapper.assign(assignment(2, "v2"))
        again = await swapper.assign(assignment(2, "v2"))
        return first, again, list(host.fetched)

    (first, again, fetched), logs = scenario(tmp_path, body)
    assert (first, again) == ("swapped", "same")
    assert fetched == [url("v2")]
    assert [e["log_level"] for e in events(logs, "assignment_already_running")] == ["debug"]


def test_the_pipeline_url_it_started_with_assigned_adopts_the_publish_without_a_pull(
    tmp_path: Path,
) -> None:
    async def body(swapper: Swapper, host: FakeHost) -> Any:
        outcome = await swapper.assign(assignment(1, "v1"))
        return outcome, swapper.running, list(host.fetched)

    (outcome, running, fetched), _ = scenario(tmp_path, body)
    assert (outcome, running.publish_id, fetched) == ("same", 1, [])
    assert read_record(tmp_path) is not None  # a restart now runs publish 1 offline too


def test_an_assignment_older_than_the_newest_is_skipped(tmp_path: Path) -> None:
    async def body(swapper: Swapper, host: FakeHost) -> Any:
        newer = await swapper.assign(assignment(3, "v3"))
        older = await swapper.assign(assignment(2, "v2"))
        return newer, older, swapper.running, list(host.fetched)

    (newer, older, running, fetched), logs = scenario(tmp_path, body)
    assert (newer, older) == ("swapped", "stale")
    assert running.pipeline_version == "v3"
    assert fetched == [url("v3")]
    assert events(logs, "assignment_stale")[0]["newest_publish_id"] == 3


def test_one_swap_at_a_time_and_the_latest_wins(tmp_path: Path) -> None:
    async def body(swapper: Swapper, host: FakeHost) -> Any:
        gate = host.gates[url("v2")] = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            two = tg.create_task(swapper.assign(assignment(2, "v2")))
            await async_wait_for(lambda: host.fetched, 5.0, "the v2 pull")
            three = tg.create_task(swapper.assign(assignment(3, "v3")))
            await async_wait_for(lambda: swapper._pending is not None, 5.0, "v3 queued")
            four = tg.create_task(swapper.assign(assignment(4, "v4")))
            await async_wait_for(lambda: three.done(), 5.0, "v3 superseded")
            gate.set()
        return two.result(), three.result(), four.result(), swapper.running, list(host.fetched)

    (two, three, four, running, fetched), _ = scenario(tmp_path, body)
    # v2 was loaded but v4 had arrived: installing v2 for a moment would be wasted
    assert (two, three, four) == ("superseded", "superseded", "swapped")
    assert fetched == [url("v2"), url("v4")]  # v3 never pulled
    assert (running.publish_id, running.pipeline_version) == (4, "v4")


def test_a_failed_swap_keeps_the_old_pipeline_and_retries_until_it_works(tmp_path: Path) -> None:
    async def body(swapper: Swapper, host: FakeHost) -> Any:
        host.failures[url("v2")] = 3
        outcome = await swapper.assign(assignment(2, "v2"))
        served_after_failure = host.service.pipeline.version
        await async_wait_for(
            lambda: swapper.running and swapper.running.pipeline_version == "v2", 5.0, "v2"
        )
        return outcome, served_after_failure, len(host.fetched)

    (outcome, served, pulls), logs = scenario(tmp_path, body)
    assert (outcome, served, pulls) == ("failed", "v1", 4)
    failed = events(logs, "pipeline_swap_failed")
    assert [e["attempt"] for e in failed] == [1, 2, 3]
    assert all("HTTP 503" in e["reason"] and e["retry_in_s"] > 0 for e in failed)
    assert failed[0]["serving_version"] == "v1"
    assert len(events(logs, "pipeline_swapped")) == 1


def test_retries_stop_when_a_newer_assignment_arrives(tmp_path: Path) -> None:
    async def body(swapper: Swapper, host: FakeHost) -> Any:
        host.failures[url("v2")] = -1  # never works
        first = await swapper.assign(assignment(2, "v2"))
        await async_wait_for(lambda: host.fetched.count(url("v2")) >= 2, 5.0, "a retry")
        second = await swapper.assign(assignment(3, "v3"))
        v2_pulls = host.fetched.count(url("v2"))
        # with the loop idle again, a duplicate is answered at once: nothing retries v2
        third = await swapper.assign(assignment(3, "v3"))
        return first, second, third, v2_pulls, host.fetched.count(url("v2"))

    (first, second, third, before, after), _ = scenario(tmp_path, body)
    assert (first, second, third) == ("failed", "swapped", "same")
    assert before == after


def test_a_url_on_another_registry_fails_once_without_retries(tmp_path: Path) -> None:
    async def body(swapper: Swapper, host: FakeHost) -> Any:
        host.refuse.add(url("v2"))
        outcome = await swapper.assign(assignment(2, "v2"))
        # the next assignment is handled at once: the loop is not retrying
        after = await swapper.assign(assignment(3, "v3"))
        return outcome, after, list(host.fetched)

    (outcome, after, fetched), logs = scenario(tmp_path, body)
    assert (outcome, after) == ("failed", "swapped")
    assert fetched == [url("v2"), url("v3")]
    [failed] = events(logs, "pipeline_swap_failed")
    assert failed["retry_in_s"] is None and "another registry" in failed["reason"]


def test_metrics_show_the_running_pipeline_and_swap_outcomes(tmp_path: Path) -> None:
    async def body(swapper: Swapper, host: FakeHost) -> Any:
        before = host.metrics.render()
        await swapper.assign(assignment(2, "v2"))
        return before, host.metrics.render()

    (before, after), _ = scenario(tmp_path, body)
    info = "edgepub_edge_pipeline_info"
    assert (
        f'{info}{{pipeline="fraud",pipeline_version="v1",pipeline_url="{START}",publish_id=""}} 1'
        in before
    )
    assert f'pipeline_version="v2",pipeline_url="{url("v2")}",publish_id="2"}} 1' in after
    assert 'edgepub_edge_pipeline_swaps_total{outcome="swapped"} 1' in after
