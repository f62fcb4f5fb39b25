"""What ``edgepub up`` runs, decided without I/O."""

from __future__ import annotations

from typing import Any

from edgepub.services.stack import config
from edgepub.services.stack.catalog import SERVICES, service_env
from edgepub.services.stack.plan import Probe, StackPlan, UpOptions, build_plan
from edgepub.services.stack.supervisor import Backoff, restart_delay

CREDS = config.generate_credentials()
BASE_ENV = {"PATH": "/usr/bin", "EDGEPUB_LOG_LEVEL": "debug", "EDGEPUB_REGISTRY_PASSWORD": "old"}


def _plan(**opts: Any) -> StackPlan:
    options = UpOptions(data_dir="/d", nats_port=4333, registry_port=5111, **opts)
    return build_plan(
        options,
        CREDS,
        nats_binary="/bin/nats-server",
        registry_binary="/bin/registry",
        services=SERVICES[:2],
        base_env=BASE_ENV,
        python="/py",
        pid=42,
    )


def test_embedded_stack_runs_nats_then_registry_then_services() -> None:
    plan = _plan()
    assert [c.name for c in plan.infra] == ["nats-server", "registry"]
    assert plan.infra[0].argv == ("/bin/nats-server", "-c", "/d/nats.conf")
    assert plan.infra[0].probe is Probe.NATS and plan.infra[1].probe is Probe.REGISTRY
    assert [c.argv for c in plan.services] == [
        ("/py", "-m", "edgepub.services.publish"),
        ("/py", "-m", "edgepub.services.registry_push"),
    ]
    assert {f.path for f in plan.files} == {"/d/nats.conf", "/d/registry.yml", "/d/htpasswd"}


def test_each_service_gets_its_own_nats_user_and_the_registry() -> None:
    publish, push = _plan().services
    assert publish.env is not None and push.env is not None
    assert publish.env["EDGEPUB_NATS_USER"] == "publish"
    assert publish.env["EDGEPUB_NATS_PASSWORD"] == CREDS.nats_users["publish"]
    assert push.env["EDGEPUB_NATS_USER"] == "registry-push"
    assert push.env["EDGEPUB_NATS_URL"] == "nats://127.0.0.1:4333"
    assert push.env["EDGEPUB_REGISTRY"] == "127.0.0.1:5111"
    assert push.env["EDGEPUB_REGISTRY_USERNAME"] == "edgepub"
    assert push.env["EDGEPUB_REGISTRY_PASSWORD"] == CREDS.registry_password
    assert push.env["EDGEPUB_REGISTRY_INSECURE"] == "true"
    assert push.env["EDGEPUB_LOG_FORMAT"] == "json"
    assert push.env["EDGEPUB_LOG_LEVEL"] == "debug"  # other EDGEPUB_* pass through
    assert push.env["PATH"] == "/usr/bin"


def test_stack_info_carries_the_sdk_user() -> None:
    info = _plan().info
    assert info.nats_url == "nats://127.0.0.1:4333"
    assert info.registry == "127.0.0.1:5111" and info.registry_insecure
    assert info.sdk_user == "admin" and info.sdk_password == CREDS.nats_users["admin"]
    assert info.pid == 42 and info.data_dir == "/d"


def test_external_nats_and_registry_start_neither() -> None:
    plan = _plan(
        nats_url="nats://nats.example:4222",
        nats_user="svc",
        nats_password="pw",
        registry="ghcr.io",
        registry_username="me",
        registry_password="tok",
        registry_repository="acme/edge",
    )
    assert plan.infra == () and plan.files == ()
    env = plan.services[0].env
    assert env is not None
    assert env["EDGEPUB_NATS_URL"] == "nats://nats.example:4222"
    assert env["EDGEPUB_NATS_USER"] == "svc"
    assert env["EDGEPUB_REGISTRY"] == "ghcr.io"
    assert env["EDGEPUB_REGISTRY_REPOSITORY"] == "acme/edge"
    assert env["EDGEPUB_REGISTRY_INSECURE"] == "false"
    assert plan.info.registry_password == "tok" and plan.info.sdk_user == "svc"


def test_external_anonymous_nats_sets_no_user() -> None:
    env = _plan(nats_url="nats://n:4222").services[0].env
    assert env is not None
    assert "EDGEPUB_NATS_USER" not in env and "EDGEPUB_NATS_PASSWORD" not in env


def test_no_services() -> None:
    assert _plan(services=False).services == ()


def test_service_env_drops_stale_registry_credentials_without_a_registry() -> None:
    env = service_env(BASE_ENV, nats_url="u", nats_user="a", nats_password="p", registry=None)
    assert "EDGEPUB_REGISTRY_PASSWORD" not in env


def test_restart_delays_double_to_a_cap_and_reset_after_a_healthy_run() -> None:
    policy = Backoff()
    delays: list[float] = []
    previous: float | None = None
    for _ in range(10):
        previous = restart_delay(policy, previous, ran_for_s=1.0)
        delays.append(previous)
    assert delays[:4] == [0.25, 0.5, 1.0, 2.0]
    assert delays[-1] == 30.0
    assert restart_delay(policy, 30.0, ran_for_s=61.0) == 0.25
