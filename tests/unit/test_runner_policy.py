"""How long each consumer tries and what it says when it gives up (pure): the runner's
delays and bounds, the specs the services build, registry-push's dead-letter reasons."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepub.services.publish.__main__ import outcomes_spec
from edgepub.services.registry_push.__main__ import consumer_spec
from edgepub.services.registry_push.config import PushSettings, default_max_deliver
from edgepub.services.registry_push.handlers import gave_up_failure
from edgepub.shared.errors import ConfigError, NotFoundError
from edgepub.shared.oci import RegistryUnreachableError
from edgepub.shared.runner import (
    Consumer,
    ConsumerSpec,
    Delivery,
    GaveUp,
    Retry,
    failure_text,
    next_delay,
)
from edgepub.shared.settings import Env

BASE = {"EDGEPUB_REGISTRY": "127.0.0.1:5000", "EDGEPUB_CACHE_DIR": "/var/edgepub/cache"}


def spec(**kw: object) -> ConsumerSpec:
    return ConsumerSpec(stream="S", durable="d", filter_subjects=("a",), **kw)  # type: ignore[arg-type]


def gave_up(
    error: BaseException | None, *, n: int = 3, age: float = 12.0, why: str = "max_deliver"
) -> GaveUp:
    delivery = Delivery(subject="a", num_delivered=n, stream_seq=1, stored_at=100.0)
    return GaveUp(delivery=delivery, why=why, age_s=age, error=error)  # type: ignore[arg-type]


@given(
    attempt=st.integers(1, 50),
    age=st.floats(0, 2000, allow_nan=False),
    deadline=st.floats(0.1, 1000, allow_nan=False) | st.none(),
    retry=st.floats(0, 100, allow_nan=False) | st.none(),
)
def test_a_delay_never_passes_the_deadline_nor_the_cap(
    attempt: int, age: float, deadline: float | None, retry: float | None
) -> None:
    s = spec(deadline_s=deadline, retry_max_s=10.0)
    error: Exception = Retry("later", delay=retry) if retry is not None else ValueError("x")
    delay = next_delay(error, attempt, age, s)
    assert delay >= 0.05
    if retry is None:
        assert delay <= 10.0
    if deadline is not None:
        assert delay <= max(0.05, deadline - age)


def test_the_server_bounds_nothing_the_runner_ends_every_message() -> None:
    s = spec(concurrency=2, max_ack_pending=1, max_deliver=5)
    config = Consumer(None, s, bytes, None).consumer_config()  # type: ignore[arg-type]
    assert config.max_deliver == -1  # an exhausted message is never dropped unannounced
    assert config.max_ack_pending == 1
    for bad in ({"concurrency": 0}, {"batch": 0}, {"max_deliver": 0}, {"max_ack_pending": 0}):
        with pytest.raises(ValueError, match=">= 1"):
            spec(**bad)


def test_failure_text_is_the_handlers_reason_or_the_error() -> None:
    assert failure_text(Retry("registry down", 1.0), 2) == "registry down"
    assert failure_text(NotFoundError("model 'm' is missing"), 2) == (
        "NotFoundError: model 'm' is missing"
    )
    assert failure_text(PermissionError(13, "Permission denied"), 2) == (
        "PermissionError: [Errno 13] Permission denied"
    )
    assert failure_text(None, 4).startswith("delivered 4 times and no attempt finished")
    assert len(failure_text(ValueError("x" * 2000), 1)) == 500


def test_registry_push_fetches_only_what_it_runs_and_retries_until_the_deadline() -> None:
    settings = PushSettings.from_env(Env(BASE))
    s = consumer_spec(settings)
    assert (s.concurrency, s.batch) == (1, 1)
    assert s.deadline_s == 600.0 and s.retry_max_s == 10.0
    assert s.max_deliver == default_max_deliver(600.0, 10.0) == 70
    # enough deliveries at the longest wait to reach the deadline
    assert (s.max_deliver - 10) * s.retry_max_s >= s.deadline_s
    custom = PushSettings.from_env(
        Env({**BASE, "EDGEPUB_PUSH_CONCURRENCY": "3", "EDGEPUB_PUSH_MAX_DELIVER": "5"})
    )
    assert (consumer_spec(custom).concurrency, consumer_spec(custom).max_deliver) == (3, 5)
    for name, bad in (
        ("EDGEPUB_PUSH_MAX_DELIVER", "0"),
        ("EDGEPUB_PUSH_CONCURRENCY", "-1"),
        ("EDGEPUB_PUSH_CONCURRENCY", "two"),
        ("EDGEPUB_STOP_GRACE_S", "-1"),
    ):
        with pytest.raises(ConfigError, match=name):
            PushSettings.from_env(Env({**BASE, name: bad}))


def test_the_publish_service_records_outcomes_in_turn_however_late() -> None:
    s = outcomes_spec(Env({}))
    assert (s.concurrency, s.batch, s.deadline_s) == (1, 1, None)
    assert s.max_deliver == 20


def test_a_dead_push_says_what_failed_in_the_errors_own_words() -> None:
    settings = PushSettings.from_env(Env(BASE))
    outage = RegistryUnreachableError("127.0.0.1:5000", "connection refused")
    retry = Retry(outage.message, delay=1.0)
    retry.__cause__ = outage
    code, reason = gave_up_failure(gave_up(retry, age=601.0, why="deadline"), settings)
    assert code == "registry_unavailable"
    assert reason.startswith("registry 127.0.0.1:5000 unreachable for 601 s: connection refused")
    code, reason = gave_up_failure(gave_up(NotFoundError("model 'm' is gone")), settings)
    assert (code, reason) == ("not_found", "model 'm' is gone")


def test_a_dead_push_names_the_limit_and_for_the_cache_the_fix() -> None:
    settings = PushSettings.from_env(Env(BASE))
    denied = PermissionError(13, "Permission denied", "/var/edgepub/cache/models/.ab.part")
    code, reason = gave_up_failure(gave_up(denied), settings)
    assert code == "internal"
    assert reason.startswith(
        "registry-push gave up after 3 attempts in 12 s (EDGEPUB_PUSH_MAX_DELIVER=70): "
        "PermissionError: [Errno 13] Permission denied: '/var/edgepub/cache/models/.ab.part'"
    )
    assert reason.endswith(
        "check that registry-push may write its cache directory "
        "EDGEPUB_CACHE_DIR=/var/edgepub/cache and that its disk has room"
    )
    _, reason = gave_up_failure(gave_up(ValueError("bad"), why="deadline"), settings)
    assert "(EDGEPUB_REGISTRY_DEADLINE_S=600): ValueError: bad" in reason
    assert "EDGEPUB_CACHE_DIR" not in reason
    _, reason = gave_up_failure(gave_up(None, n=71, age=2400.0), settings)
    assert "after 71 attempts in 2400 s" in reason and "no attempt finished" in reason
