"""Which service processes a stack runs, and the environment each one gets."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping

import msgspec


class ServiceSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # short name: ``python -m edgepub.services.<name>``
    nats_user: str  # its own NATS user (see config.SERVICE_USERS)
    # Processes the stack runs. The token service answers every edge connect (the auth
    # callout): two replicas in one queue group, so connects go on with one of them down.
    replicas: int = 1
    ready_event: str | None = None  # the log event after which it answers (None: at once)

    @property
    def module(self) -> str:
        return f"edgepub.services.{self.name}"


SERVICES = (
    ServiceSpec(name="publish", nats_user="publish", ready_event="requests_serving"),
    ServiceSpec(name="registry_push", nats_user="registry-push"),
    ServiceSpec(name="token", nats_user="token", replicas=2, ready_event="auth_callout_serving"),
    # ready once its durable consumer exists (the publish service creates the streams)
    ServiceSpec(name="log_collector", nats_user="log-collector", ready_event="consumer_started"),
    # the fleet dashboard (a web page on EDGEPUB_DASHBOARD_PORT), read-only on the bus
    ServiceSpec(name="dashboard", nats_user="dashboard", ready_event="dashboard_serving"),
)
BY_NAME = {s.name: s for s in SERVICES}


class RegistryEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    address: str  # host:port
    repository: str = "edgepub"
    username: str | None = None
    password: str | None = None
    insecure: bool = False


def service_exists(name: str) -> bool:
    """True when ``python -m edgepub.services.<name>`` would run something."""
    try:
        return importlib.util.find_spec(f"edgepub.services.{name}.__main__") is not None
    except ModuleNotFoundError:
        return False


def available_services() -> list[ServiceSpec]:
    return [s for s in SERVICES if service_exists(s.name)]


def service_env(
    base: Mapping[str, str],
    *,
    nats_url: str,
    nats_user: str,
    nats_password: str,
    registry: RegistryEndpoint | None,
) -> dict[str, str]:
    """``base`` (other EDGEPUB_* settings pass through) with the stack's endpoints on top."""
    env = dict(base)
    env.update(
        EDGEPUB_NATS_URL=nats_url,
        EDGEPUB_NATS_USER=nats_user,
        EDGEPUB_NATS_PASSWORD=nats_password,
        EDGEPUB_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    for key in ("EDGEPUB_REGISTRY_USERNAME", "EDGEPUB_REGISTRY_PASSWORD"):
        env.pop(key, None)
    if registry is not None:
        env["EDGEPUB_REGISTRY"] = registry.address
        env["EDGEPUB_REGISTRY_REPOSITORY"] = registry.repository
        env["EDGEPUB_REGISTRY_INSECURE"] = "true" if registry.insecure else "false"
        if registry.username is not None:
            env["EDGEPUB_REGISTRY_USERNAME"] = registry.username
        if registry.password is not None:
            env["EDGEPUB_REGISTRY_PASSWORD"] = registry.password
    return env


def token_env(
    *, issuer_seed: str, xkey_seed: str, system_seed: str, opscenter_host: str
) -> dict[str, str]:
    """What the token service needs beyond NATS: the keys the server trusts (and seals the
    callout to), and the OPSCENTER_HOST it writes into bundles (where edges reach this stack)."""
    return {
        "EDGEPUB_AUTH_ISSUER_SEED": issuer_seed,
        "EDGEPUB_AUTH_XKEY_SEED": xkey_seed,
        "EDGEPUB_SYSTEM_USER_SEED": system_seed,
        "EDGEPUB_OPSCENTER_HOST": opscenter_host,
    }
