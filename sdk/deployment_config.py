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
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from fractions import Fraction
from numbers import Real
from typing import Any

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

_MAX_QUANTITY_LEN = 64
_MAX_BYTES = 2**63 - 1  # Kubernetes' own bound on a quantity
_QUANTITY = re.compile(
    r"^\+?(?P<number>\d+(?:\.\d*)?|\.\d+)"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d{1,3}|[kMGTPE])?$"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}
_EXAMPLES = "e.g. '512Mi', '1Gi', '1.5Gi', '900M' or '1000000' (bytes)"


class DeploymentConfig(dict[str, Any]):
    """The engine configuration of a publish; a plain dict to every caller that wants one."""


def parse_kube_quantity(quantity: str, *, what: str = "memory") -> int:
    """Bytes in a Kubernetes quantity (``512Mi``, ``1Gi``, ``1.5Gi``, ``900M``, ``1e9``,
    ``1000000``), rounded up to a whole byte as Kubernetes does.

    The milli/micro/nano suffixes are refused: ``512m`` is half a byte to Kubernetes and always
    a slip for ``512Mi``.
    """
    if not isinstance(quantity, str) or len(quantity) > _MAX_QUANTITY_LEN:
        raise InvalidRequestError(
            f"{what} {quantity!r} is not a Kubernetes quantity; use a string, {_EXAMPLES}"
        )
    match = _QUANTITY.match(quantity)
    if match is None:
        raise InvalidRequestError(_quantity_hint(quantity, what))
    number = Fraction(match["number"])
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        number *= 1024 ** _BINARY[suffix]
    elif suffix in _DECIMAL:
        number *= 1000 ** _DECIMAL[suffix]
    elif suffix:
        number *= Fraction(10) ** int(suffix[1:])
    value = math.ceil(number)
    if value > _MAX_BYTES:
        raise InvalidRequestError(f"{what} {quantity!r} is too large (over 2^63 bytes)")
    return value


def _quantity_hint(quantity: str, what: str) -> str:
    small = re.match(r"^\+?(\d+(?:\.\d*)?|\.\d+)([mun])$", quantity)
    if small is not None:
        number, unit = small.groups()
        return (
            f"{what} {quantity!r} means {number} {_SMALL_UNITS[unit]} of a byte in Kubernetes "
            f"units; use '{number}Mi' for mebibytes or '{number}M' for megabytes"
        )
    return f"{what} {quantity!r} is not a Kubernetes quantity; {_EXAMPLES}"


_SMALL_UNITS = {"m": "thousandths", "u": "millionths", "n": "billionths"}


def parse_cpu(value: object, *, what: str = "cpus") -> float:
    """CPU cores from a number or a Kubernetes CPU quantity string (``"500m"``, ``"2"``)."""
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
    return cores


def _check_memory(memory: str, what: str) -> str:
    if parse_kube_quantity(memory, what=what) <= 0:
        raise InvalidRequestError(f"{what} must be more than 0 bytes, got {memory!r}; {_EXAMPLES}")
    return memory


def _check_count(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidRequestError(f"{what} must be a whole number >= {minimum}, got {value!r}")
    return value


def _check_label(value: object, what: str) -> str:
    text = str(getattr(value, "value", value))
    if not text or not text.strip():
        raise InvalidRequestError(f"{what} must be a non-empty name, got {value!r}")
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
        self._engine["replicas"] = _check_count(count, "replica_count", 1)
        return self

    def gpus(self, gpu_count: int) -> DeploymentConfigBuilder:
        self._engine["gpu"] = _check_count(gpu_count, "gpus", 0)
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

    def lb_cpus(self, core_count: float) -> DeploymentConfigBuilder:
        parse_cpu(core_count, what="lb_cpus")
        self._lb_resources["cpu"] = core_count
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


def validate_engine_config(config: Mapping[str, Any]) -> None:
    """Check a config given as a plain dict (a user's own, or one read back from a publish);
    raise InvalidRequestError naming the first bad field by its path."""
    if not isinstance(config, Mapping):
        raise InvalidRequestError(f"deployment_config must be a dict, got {type(config).__name__}")
    for section in ("engine", "enginelb"):
        stanza = config.get(section)
        stanza = {} if stanza is None else stanza
        if not isinstance(stanza, Mapping):
            raise InvalidRequestError(f"deployment_config.{section} must be a dict")
        _validate_stanza(stanza, f"deployment_config.{section}")
    engine: Mapping[str, Any] = config.get("engine") or {}
    if "cpu" in engine:
        parse_cpu(engine["cpu"], what="deployment_config.engine.cpu")
    if "replicas" in engine:
        _check_count(engine["replicas"], "deployment_config.engine.replicas", 1)
    aux = config.get("engineAux")
    aux = {} if aux is None else aux
    if not isinstance(aux, Mapping):
        raise InvalidRequestError("deployment_config.engineAux must be a dict")
    images = aux.get("images")
    images = {} if images is None else images  # Wallaroo's server sends None for "none"
    if not isinstance(images, Mapping):
        raise InvalidRequestError("deployment_config.engineAux.images must be a dict")
    for name, image in images.items():
        if not isinstance(image, Mapping):
            raise InvalidRequestError(f"deployment_config.engineAux.images.{name} must be a dict")
        _validate_stanza(image, f"deployment_config.engineAux.images.{name}")


def _validate_stanza(stanza: Mapping[str, Any], path: str) -> None:
    resources = stanza.get("resources")
    resources = {} if resources is None else resources
    if not isinstance(resources, Mapping):
        raise InvalidRequestError(f"{path}.resources must be a dict")
    for kind in ("limits", "requests"):
        values = resources.get(kind)
        values = {} if values is None else values
        if not isinstance(values, Mapping):
            raise InvalidRequestError(f"{path}.resources.{kind} must be a dict")
        if "cpu" in values:
            parse_cpu(values["cpu"], what=f"{path}.resources.{kind}.cpu")
        if "memory" in values:
            _check_memory(values["memory"], f"{path}.resources.{kind}.memory")
