"""Hot swap under load, against a real registry: the agent in this process, 100 requests/s
from four clients throughout, and ``Agent.assign`` as the link to Ops will call it.

Every request is answered (zero failures); answers before the swap name the old version,
answers after it the new; the local log holds exactly one event per request, each with the
version that answered it. A swap to a pipeline that does not exist keeps the old one
serving; a restart with the registry down serves the assigned pipeline from the cache.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from edgepub.shared.edge_messages import Assignment
from support.edge import http, make_model, model_version, publish
from support.inprocess import Answer, InProcessAgent, Load, request_id_of
from support.servers import RegistryServer
from support.waiting import wait_for

PIPELINE = "fraud"
BEFORE_S = 1.0  # of load before the swap, and after it


def push_versions(registry: RegistryServer, work: Path, count: int = 2) -> list[str]:
    """Pipeline versions v1..v<count> (models of different seeds); their PIPELINE_URLs."""
    urls = []
    for seed in range(count):
        version = f"v{seed + 1}"
        path = make_model(work / f"{version}.onnx", seed=seed, trees=5)
        urls.append(publish(registry, PIPELINE, [(model_version("gbr", path), path)], version))
    return urls


def push_two_versions(registry: RegistryServer, work: Path) -> tuple[str, str]:
    v1, v2 = push_versions(registry, work)
    return v1, v2


def assignment(publish_id: int, url: str, version: str) -> Assignment:
    return Assignment(
        publish_id=publish_id,
        pipeline_name=PIPELINE,
        pipeline_version_id=publish_id,
        pipeline_version_name=version,
        pipeline_url=url,
    )


def env(registry: RegistryServer, url: str) -> dict[str, str]:
    return {
        "PIPELINE_URL": url,
        "OCI_USERNAME": registry.username,
        "OCI_PASSWORD": registry.password,
    }


def load_for(load: Load, seconds: float) -> None:
    """Let ``load`` send for about ``seconds`` more (at least that many answers arrive)."""
    target = load.count() + int(seconds * 50)
    wait_for(lambda: load.count() >= target, seconds * 10 + 10, f"{target} answers")


def failures(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if a.status != 200]


def check_log(agent: InProcessAgent, answers: list[Answer]) -> None:
    """One event per request, with the version its answer named."""
    events = agent.log.events
    served = {request_id_of(e): e.pipeline_version for e in events}
    assert len(events) == len(answers) == len(served)
    assert served == {a.request_id: a.version for a in answers}


class HeldRequest:
    """A large request whose body is sent in two halves: the agent picks the pipeline when
    the request starts (it is in flight, holding an inference slot), the rest of the body
    follows only when ``release`` is called. Its answer names the version that served it."""

    ID = 1 << 23  # above every id the load uses

    def __init__(self, agent: InProcessAgent) -> None:
        self.agent = agent
        self.body = json.dumps([{"tensor": [0.5] * 17 + [float(self.ID)]}] * 2000).encode()
        self.go = threading.Event()
        self.answer: Answer | None = None
        self.thread = threading.Thread(target=self._send, daemon=True)

    def _parts(self) -> Iterator[bytes]:
        half = len(self.body) // 2
        yield self.body[:half]
        assert self.go.wait(30), "the held request was never released"
        yield self.body[half:]

    def _send(self) -> None:
        sent = time.monotonic()
        reply = http().post(
            f"{self.agent.url}/infer",
            data=self._parts(),
            headers={"Content-Type": "application/json; format=pandas-records"},
            timeout=30,
        )
        version = reply.json()[0]["metadata"]["pipeline_version"] if reply.ok else None
        self.answer = Answer(self.ID, sent, time.monotonic(), reply.status_code, version)

    def start(self) -> None:
        self.thread.start()
        offload = self.agent.agent.service.offload
        wait_for(lambda: offload.inflight >= 1, 10, "the held request to be in flight")

    def release(self) -> Answer:
        self.go.set()
        self.thread.join(30)
        assert self.answer is not None
        return self.answer


def events_named(logs: list[Any], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == name]


@pytest.mark.no_blocking
def test_swap_under_load_drops_nothing_and_each_answer_names_its_version(
    registry: RegistryServer, tmp_path: Path
) -> None:
    v1, v2 = push_two_versions(registry, tmp_path)
    with capture_logs() as logs:
        agent = InProcessAgent(tmp_path / "persist", env(registry, v1)).start()
        try:
            old = weakref.ref(agent.agent.service.current())
            held = HeldRequest(agent)
            with Load(agent.url) as load:
                load_for(load, BEFORE_S)
                held.start()
                swap_started = time.monotonic()
                agent.call(agent.agent.assign(assignment(2, v2, "v2")))
                swap_done = time.monotonic()
                in_flight = held.release()
                load_for(load, BEFORE_S)
            running = agent.agent.running
            metrics = http().get(f"{agent.url}/metrics", timeout=5).text
            # the old sessions go once the last request holding them is done
            wait_for(lambda: old() is None, 10, "the v1 pipeline to be released")
        finally:
            code = agent.stop()
    answers = load.answers
    assert code == 0
    assert failures(answers) == []
    assert len(answers) >= 100
    # started before the swap, answered after it: served to the end by the old pipeline
    assert in_flight.status == 200 and in_flight.version == "v1"
    assert in_flight.received > swap_done
    before = [a.version for a in answers if a.received < swap_started]
    after = [a.version for a in answers if a.sent > swap_done]
    assert before and set(before) == {"v1"}
    assert after and set(after) == {"v2"}
    check_log(agent, [*answers, in_flight])
    assert running is not None
    assert (running.publish_id, running.pipeline_version, running.pipeline_url) == (2, "v2", v2)
    assert f'pipeline_version="v2",pipeline_url="{v2}",publish_id="2"}} 1' in metrics
    [swapped] = events_named(logs, "pipeline_swapped")
    assert (swapped["from_version"], swapped["to_version"]) == ("v1", "v2")
    assert (swapped["from_publish_id"], swapped["to_publish_id"]) == (None, 2)
    assert swapped["pipeline_version"] == "v1"  # the line is the old pipeline's last word
    assert events_named(logs, "pipeline_released")[0]["released_version"] == "v1"
    # the agent's log follows the swap: what it logs next is bound to v2
    assert events_named(logs, "engine_stopped")[0]["pipeline_version"] == "v2"
    print(f"{len(answers)} answers, {collections.Counter(a.version for a in answers)}")


@pytest.mark.no_blocking
def test_a_swap_to_a_pipeline_that_does_not_exist_keeps_the_old_one_serving(
    registry: RegistryServer, tmp_path: Path
) -> None:
    v1, v2 = push_two_versions(registry, tmp_path)
    missing = v1.rsplit(":", 1)[0] + ":no-such-version"
    with capture_logs() as logs:
        agent = InProcessAgent(tmp_path / "persist", env(registry, v1)).start()
        try:
            with Load(agent.url) as load:
                load_for(load, 0.5)
                agent.call(agent.agent.assign(assignment(2, missing, "no-such-version")))
                load_for(load, 0.5)
                failed_running = agent.agent.running
                wait_for(
                    lambda: len(events_named(logs, "pipeline_swap_failed")) >= 2, 10, "a retry"
                )
                # a newer assignment ends the retries and is served
                agent.call(agent.agent.assign(assignment(3, v2, "v2")))
                load_for(load, 0.5)
        finally:
            code = agent.stop()
    answers = load.answers
    assert code == 0
    assert failures(answers) == []
    check_log(agent, answers)
    assert failed_running is not None and failed_running.pipeline_version == "v1"
    failed = events_named(logs, "pipeline_swap_failed")
    assert failed[0]["pipeline_url"] == missing and failed[0]["serving_version"] == "v1"
    assert "no-such-version" in failed[0]["reason"] or "404" in failed[0]["reason"]
    assert [a.version for a in answers][-1] == "v2"
    assert {a.version for a in answers} == {"v1", "v2"}


def test_a_restart_serves_the_assigned_pipeline_from_cache_with_the_registry_down(
    registry: RegistryServer, tmp_path: Path
) -> None:
    v1, v2 = push_two_versions(registry, tmp_path)
    persist = tmp_path / "persist"
    first = InProcessAgent(persist, env(registry, v1)).start()
    try:
        first.call(first.agent.assign(assignment(2, v2, "v2")))
    finally:
        assert first.stop() == 0
    registry.kill()
    with capture_logs() as logs:
        again = InProcessAgent(persist, env(registry, v1)).start()  # the same PIPELINE_URL
        try:
            reply = http().post(
                f"{again.url}/infer",
                json=[{"tensor": [0.5] * 18}],
                headers={"Content-Type": "application/json; format=pandas-records"},
                timeout=10,
            )
            wait_for(lambda: events_named(logs, "serving_cached_pipeline"), 30, "the pull to fail")
            running = again.agent.running
        finally:
            assert again.stop() == 0
    assert reply.status_code == 200, reply.text
    assert reply.json()[0]["metadata"]["pipeline_version"] == "v2"
    assert running is not None and (running.publish_id, running.pipeline_url) == (2, v2)
    [used] = events_named(logs, "using_cached_pipeline")
    assert used["pipeline_url"] == v2
    assert events_named(logs, "serving_assignment")[0]["publish_id"] == 2


def test_a_restart_with_a_new_pipeline_url_serves_it_and_forgets_the_assignment(
    registry: RegistryServer, tmp_path: Path
) -> None:
    v1, v2, v3 = push_versions(registry, tmp_path, 3)
    persist = tmp_path / "persist"
    first = InProcessAgent(persist, env(registry, v1)).start()
    try:
        first.call(first.agent.assign(assignment(2, v2, "v2")))
    finally:
        assert first.stop() == 0
    assert (persist / "assignment.json").exists()
    with capture_logs() as logs:
        again = InProcessAgent(persist, env(registry, v3)).start()  # the operator redeployed
        try:
            wait_for(lambda: again.agent.service.current().version == "v3", 30, "v3 served")
            running = again.agent.running
        finally:
            assert again.stop() == 0
    assert running is not None and (running.publish_id, running.pipeline_url) == (None, v3)
    assert not (persist / "assignment.json").exists()
    [outdated] = events_named(logs, "assignment_record_outdated")
    assert (outdated["recorded_pipeline_url"], outdated["publish_id"]) == (v1, 2)
