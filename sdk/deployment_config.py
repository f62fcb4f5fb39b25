"""Deployment (engine) configuration: the builder a Wallaroo notebook calls, and Kubernetes
resource quantities.

``DeploymentConfigBuilder().replica_count(1).cpus(0.5).memory("900Mi").build()`` gives::

    {"engine": {"cpu": 0.5, "replicas": 1,
                "resources": {"limits": {"cpu": 0.5, "memory": "900Mi"},
                              "requests": {"cpu": 0.5, "memory": "900Mi"}}},
     "enginelb": {}, "engineAux": {"images": {}}}

As Wallaroo's client-side builder does, ``cpu`` and ``replicas`` appear at the engine level
too (SDK-COMPAT 16); the seed's displayed configs lack them only because Wallaroo's server
rewrites the config before showing it. Keys that were never set are left out.

Every setter checks its value against the limits the publish service enforces
(``edgepub.shared.engine_config``), so a config the builder builds is one the service takes;
a hand-written dict is checked the same way by ``validate_engine_config`` and ``publish()``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from fractions import Fraction
from numbers import Real
from typing import Any

import msgspec

from edgepub.shared.engine_config import (
    MAX_CPUS,
    MAX_GPUS,
    MAX_MEMORY_BYTES,
    MAX_QUANTITY_LEN,
    MAX_REPLICAS,
    MEMORY_EXAMPLES,
    MIN_CPUS,
    EngineConfig,
    Image,
    Label,
    quantity_bytes,
)
from edgepub.shared.errors import InvalidRequestError

__all__ = [
    "DEFAULT_CPUS",
    "DEFAULT_MEMORY",
    "DeploymentConfig",
    "DeploymentConfigBuilder",
    "default_engine_config",
    "parse_cpu",
    "parse_kube_quantity",
    "validate_engine_config",
]

# Wallaroo's defaults when a config leaves them out (its SDK fills cpu 1.0 and 512Mi).
DEFAULT_CPUS = 1.0
DEFAULT_MEMORY = "512Mi"


class DeploymentConfig(dict[str, Any]):
    """The engine configuration of a publish; a plain dict to every caller that wants one."""


def parse_kube_quantity(quantity: str, *, what: str = "memory") -> int:
    """Bytes in a Kubernetes quantity (``512Mi``, ``1Gi``, ``1.5Gi``, ``900M``, ``1e9``,
    ``1000000``), rounded up to a whole byte as Kubernetes does.

    The milli/micro/nano suffixes are refused: ``512m`` is half a byte to Kubernetes and always
    a slip for ``512Mi``.
    """
    if not isinstance(quantity, str) or len(quantity) > MAX_QUANTITY_LEN:
        raise InvalidRequestError(
            f"{what} {quantity!r} is not a Kubernetes quantity; use a string, {MEMORY_EXAMPLES}"
        )
    value = quantity_bytes(quantity)
    if value is None:
        raise InvalidRequestError(_quantity_hint(quantity, what))
    if value > MAX_MEMORY_BYTES:
        raise InvalidRequestError(f"{what} {quantity!r} is too large (over 2^63 bytes)")
    return value


def _quantity_hint(quantity: str, what: str) -> str:
    small = re.fullmatch(r"\+?(\d+(?:\.\d*)?|\.\d+)([mun])", quantity)
    if small is not None:
        number, unit = small.groups()
        return (
            f"{what} {quantity!r} means {number} {_SMALL_UNITS[unit]} of a byte in Kubernetes "
            f"units; use '{number}Mi' for mebibytes or '{number}M' for megabytes"
        )
    return f"{what} {quantity!r} is not a Kubernetes quantity; {MEMORY_EXAMPLES}"


_SMALL_UNITS = {"m": "thousandths", "u": "millionths", "n": "billionths"}


def parse_cpu(value: object, *, what: str = "cpus") -> float:
    """CPU cores from a number or a Kubernetes CPU quantity string (``"500m"``, ``"2"``),
    from 0.001 (1m, the least Kubernetes expresses) to 1024 (the most an edge runs with)."""
    if isinstance(value, bool) or not isinstance(value, Real | str):
        raise InvalidRequestError(f"{what} {value!r} is not a number of CPU cores, e.g. 0.5 or 2")
    if isinstance(value, str):
        text = value[:-1] if value.endswith("m") else value
        try:
            cores = float(Fraction(text)) / (1000 if value.endswith("m") else 1)
        except (ValueError, ZeroDivisionError, OverflowError):
            raise InvalidRequestError(
                f"{what} {value!r} is not a number of CPU cores, e.g. 0.5, 2 or '500m'"
            ) from None
    else:
        try:
            cores = float(value)
        except OverflowError:
            cores = math.inf
    if not math.isfinite(cores) or cores <= 0:
        raise InvalidRequestError(f"{what} must be a finite number of cores above 0, got {value!r}")
    if not MIN_CPUS <= cores <= MAX_CPUS:
        raise InvalidRequestError(
            f"{what} must be from {MIN_CPUS:g} to {MAX_CPUS:g} cores (the most an edge runs "
            f"with), got {value!r}"
        )
    return cores


def _check_memory(memory: str, what: str) -> str:
    if parse_kube_quantity(memory, what=what) <= 0:
        raise InvalidRequestError(
            f"{what} must be more than 0 bytes, got {memory!r}; {MEMORY_EXAMPLES}"
        )
    return memory


def _check_count(value: object, what: str, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidRequestError(
            f"{what} must be a whole number from {minimum} to {maximum}, got {value!r}"
        )
    return value


_LABEL_TYPES: dict[str, Any] = {"image": Image}


def _check_label(value: object, what: str) -> str:
    text = str(getattr(value, "value", value))
    if not text or not text.strip():
        raise InvalidRequestError(f"{what} must be a non-empty name, got {value!r}")
    try:
        msgspec.convert(text, _LABEL_TYPES.get(what, Label))
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(f"{what} {text!r:.80}: {exc}") from None
    return text


class DeploymentConfigBuilder:
    """Chainable builder of a ``DeploymentConfig``; every setter validates at once, so the
    error points at the call that was wrong."""

    def __init__(self) -> None:
        self._engine: dict[str, Any] = {}
        self._engine_resources: dict[str, Any] = {}
        self._lb_resources: dict[str, Any] = {}

    def cpus(self, core_count: float | str) -> DeploymentConfigBuilder:
        """Cores for the engine: a number, or a Kubernetes CPU string such as ``"500m"``."""
        cores = parse_cpu(core_count, what="cpus")
        if isinstance(core_count, str):
            core_count = cores
        self._engine["cpu"] = core_count
        self._engine_resources["cpu"] = core_count
        return self

    def memory(self, memory_spec: str) -> DeploymentConfigBuilder:
        self._engine_resources["memory"] = _check_memory(memory_spec, "memory")
        return self

    def replica_count(self, count: int) -> DeploymentConfigBuilder:
        self._engine["replicas"] = _check_count(count, "replica_count", 1, MAX_REPLICAS)
        return self

    def gpus(self, gpu_count: int) -> DeploymentConfigBuilder:
        self._engine["gpu"] = _check_count(gpu_count, "gpus", 0, MAX_GPUS)
        self._engine_resources["nvidia.com/gpu"] = gpu_count
        return self

    def arch(self, arch: object = None) -> DeploymentConfigBuilder:
        """Store the target architecture (``x86``, ``arm``, …); ``None`` clears it."""
        return self._label("arch", arch)

    def accel(self, accel: object = None) -> DeploymentConfigBuilder:
        """Store the acceleration (``none``, ``cuda``, …); ``None`` clears it."""
        return self._label("accel", accel)

    def image(self, image: str) -> DeploymentConfigBuilder:
        return self._label("image", image)

    def lb_cpus(self, core_count: float | str) -> DeploymentConfigBuilder:
        cores = parse_cpu(core_count, what="lb_cpus")
        self._lb_resources["cpu"] = cores if isinstance(core_count, str) else core_count
        return self

    def lb_memory(self, memory_spec: str) -> DeploymentConfigBuilder:
        self._lb_resources["memory"] = _check_memory(memory_spec, "lb_memory")
        return self

    def _label(self, key: str, value: object) -> DeploymentConfigBuilder:
        if value is None:
            self._engine.pop(key, None)
        else:
            self._engine[key] = _check_label(value, key)
        return self

    def build(self) -> DeploymentConfig:
        """A fresh config; later calls on the builder do not change it."""
        engine = {key: self._engine[key] for key in _ENGINE_ORDER if key in self._engine}
        if self._engine_resources:
            engine["resources"] = _limits_and_requests(self._engine_resources)
        lb = _limits_and_requests(self._lb_resources) if self._lb_resources else None
        return DeploymentConfig(
            engine=engine,
            enginelb={"resources": lb} if lb else {},
            engineAux={"images": {}},
        )


_ENGINE_ORDER = ("cpu", "replicas", "gpu", "arch", "accel", "image")


_RESOURCE_ORDER = ("cpu", "memory", "nvidia.com/gpu")


def _limits_and_requests(resources: Mapping[str, Any]) -> dict[str, Any]:
    ordered = {key: resources[key] for key in _RESOURCE_ORDER if key in resources}
    return {"limits": ordered, "requests": dict(ordered)}


def default_engine_config() -> DeploymentConfig:
    """The config of a publish made without one: Wallaroo's defaults, 1 CPU and 512Mi."""
    return DeploymentConfigBuilder().cpus(DEFAULT_CPUS).memory(DEFAULT_MEMORY).build()


def validate_engine_config(config: Mapping[str, Any]) -> EngineConfig:
    """Check a config given as a plain dict (a user's own, or one read back from a publish)
    exactly as the publish service will; raise InvalidRequestError naming the first bad
    field by its path (``deployment_config.engine.cpu``). Returns the checked config."""
    if not isinstance(config, Mapping):
        raise InvalidRequestError(f"deployment_config must be a dict, got {type(config).__name__}")
    return EngineConfig.from_dict(config)
