"""The edge agent in the test's own process: ``Agent.run`` on a free port in a thread of its
own (its event loop there), an HTTP load that records every answer, and a local log that
keeps every inference event. For tests that call the agent's API (``Agent.assign``)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from edgepub.edge_agent.agent import Agent, bind
from edgepub.edge_agent.config import parse_env
from edgepub.edge_agent.inference_log import InferenceEvent

from .edge import FEATURES, http
from .procs import free_port
from .servers import HOST
from .waiting import wait_for

T = TypeVar("T")


class CollectingLog:
    """A ``LocalLog`` that keeps every event (written on the agent's loop, read by tests)."""

    def __init__(self) -> None:
        self.events: list[InferenceEvent] = []

    async def write(self, events: Sequence[InferenceEvent]) -> None:
        self.events.extend(events)


class InProcessAgent:
    """``Agent(config).run(sock)`` in a background thread; ``call`` runs a coroutine there."""

    def __init__(self, persist: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        full = {
            **env,
            "EDGEPUB_PERSIST_DIR": str(persist),
            "EDGEPUB_HOST": HOST,
            "EDGEPUB_PORT": str(self.port),
        }
        self.config = parse_env(full)
        self.log = CollectingLog()
        self.agent = Agent(self.config, self.log)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="edge-agent", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _main(self) -> None:
        try:
            with asyncio.Runner() as runner:
                self.loop = runner.get_loop()
                # no settle_heap: its full collection would walk the test runner's heap (a
                # stall the no_blocking check sees) and freeze it for every later test
                self.exit_code = runner.run(self.agent.run(bind(HOST, self.port), settle=False))
        except BaseException as exc:  # reported by stop() and by every wait
            self.error = exc

    def start(self) -> InProcessAgent:
        self._thread.start()
        wait_for(self._ready, 60.0, "the in-process agent to be ready")
        return self

    def _ready(self) -> bool:
        if self.error is not None:
            raise AssertionError(f"the agent stopped: {self.error!r}") from self.error
        try:
            return http().get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200
        except OSError:
            return False

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop as SIGTERM would; the hand-off is drained into ``log`` before this returns."""
        if self.loop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.agent.stop)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the in-process agent did not stop"
        if self.error is not None:
            raise AssertionError(f"the agent failed: {self.error!r}") from self.error
        return self.exit_code


class Answer(msgspec.Struct, frozen=True):
    request_id: int
    sent: float  # time.monotonic()
    received: float
    status: int  # 0: no answer (connection error, timeout)
    version: str | None  # the pipeline version the answer names
    error: str | None = None


def body_for(request_id: int) -> bytes:
    """One pandas record whose last feature is the request id (exact in float32 < 2**24),
    so a logged event names the request it served."""
    return json.dumps([{"tensor": [0.5] * (FEATURES - 1) + [float(request_id)]}]).encode()


def request_id_of(event: InferenceEvent) -> int:
    column = event.inputs["tensor"]
    return round(float(column[0][-1]))


class Load:
    """``clients`` threads sending to ``/infer`` at ``rate`` requests/s in all until stopped."""

    def __init__(self, url: str, rate: float = 100.0, clients: int = 4) -> None:
        self.url = url + "/infer"
        self.interval = clients / rate
        self.answers: list[Answer] = []
        self._ids = iter(range(1, 1 << 24))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, name=f"load-{i}", daemon=True)
            for i in range(clients)
        ]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def count(self) -> int:
        return len(self.answers)

    def _client(self) -> None:
        session = http()
        headers = {"Content-Type": "application/json; format=pandas-records"}
        next_at = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                request_id = next(self._ids)
            sent = time.monotonic()
            try:
                reply = session.post(
                    self.url, data=body_for(request_id), headers=headers, timeout=10
                )
                version = reply.json()[0]["metadata"]["pipeline_version"] if reply.ok else None
                answer = Answer(
                    request_id,
                    sent,
                    time.monotonic(),
                    reply.status_code,
                    version,
                    None if reply.ok else reply.text[:200],
                )
            except Exception as exc:  # counted as a failed request, with what went wrong
                answer = Answer(request_id, sent, time.monotonic(), 0, None, repr(exc))
            self.answers.append(answer)
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))  # pacing, not synchronisation
