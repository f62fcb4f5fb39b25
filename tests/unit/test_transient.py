"""JetStream calls ride out a moment without a leader: transient failures are retried with
backoff until a deadline, anything else is raised at once."""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
import pytest
from structlog.testing import capture_logs

from edgepub.shared import transient
from edgepub.shared.transient import is_transient, retry_transient


@pytest.fixture(autouse=True)
def _no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transient, "backoff", lambda attempt, cap=2.0: 0.0)


class Flaky:
    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def test_transient_failures_are_retried_and_said_once() -> None:
    call = Flaky(
        nats.errors.TimeoutError(),
        nats.js.errors.ServiceUnavailableError(code=503, description="no leader"),
        nats.errors.NoRespondersError(),
    )
    with capture_logs() as logs:
        assert asyncio.run(retry_transient(call, what="consumer x")) == "ok"
    assert call.calls == 4
    said = [e for e in logs if e["event"] == "jetstream_unavailable"]
    assert len(said) == 1 and said[0]["what"] == "consumer x"


@pytest.mark.parametrize(
    "error",
    [
        nats.js.errors.NotFoundError(code=404, description="stream not found"),
        nats.js.errors.BadRequestError(code=400, description="bad"),
        ValueError("a bug"),
    ],
)
def test_anything_else_is_raised_at_once(error: BaseException) -> None:
    call = Flaky(error)
    with pytest.raises(type(error)):
        asyncio.run(retry_transient(call, what="x"))
    assert call.calls == 1 and not is_transient(error)


def test_past_the_deadline_the_last_failure_is_raised() -> None:
    call = Flaky(*[TimeoutError()] * 1000)
    with pytest.raises(TimeoutError):
        asyncio.run(retry_transient(call, what="x", deadline_s=0.0))
    assert call.calls == 1


def test_a_cluster_still_forming_is_waited_out() -> None:
    forming = nats.js.errors.BadRequestError(
        code=400, err_code=10005, description="no suitable peers for placement"
    )
    call = Flaky(forming, forming)
    assert asyncio.run(retry_transient(call, what="x")) == "ok" and call.calls == 3
