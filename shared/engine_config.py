"""A publish's engine (deployment) configuration, as the Structs the services decode, and the
Kubernetes quantities inside it.

The shape is what ``DeploymentConfigBuilder`` builds (Wallaroo's)::

    {"engine": {"cpu": 0.5, "replicas": 1, "gpu": 1, "arch": "x86", "accel": "none",
                "image": "...", "resources": {"limits": {"cpu": 0.5, "memory": "900Mi",
                                                         "nvidia.com/gpu": 1},
                                              "requests": {...}}},
     "enginelb": {"resources": {...}}, "engineAux": {"images": {"<name>": {"resources": ...}}}}

Keys never set are left out on the way back (``omit_defaults``), so a config round-trips to
the dict it came from; unknown keys are ignored and not kept (Wallaroo's displayed configs
carry a few, e.g. ``autoscale``).

Limits, each the tightest that still takes every config an edge can run:

- cpu: 0.001 to 1024 cores. 1m is the least CPU Kubernetes can express; 1024 is the most
  the edge takes as ``CONFIG_CPUS`` (``edge_agent/config.py``), which the chart derives from
  ``engine.cpu``. A number, or a Kubernetes CPU string (``"500m"``, ``"2"``).
- memory: a Kubernetes quantity string as the SDK writes it (``512Mi``, ``1.5Gi``, ``900M``,
  ``1e9``), more than 0 and below 2^63 bytes (Kubernetes' own bound); ``512m`` (milli-bytes)
  is refused as the slip for ``512Mi`` it always is.
- replicas: 1 to 100 per edge; gpus: 0 to 64 per engine (more GPUs than any one machine).
- labels (arch, accel): 1-64 printable characters; image: 1-512; at most 64 aux images.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Annotated, Any

import msgspec

from .errors import InvalidRequestError

MIN_CPUS = 0.001
MAX_CPUS = 1024.0  # the edge's CONFIG_CPUS bound (edge_agent/config.py MAX_CPUS)
MAX_REPLICAS = 100
MAX_GPUS = 64
MAX_MEMORY_BYTES = 2**63 - 1  # Kubernetes' own bound on a quantity
MAX_QUANTITY_LEN = 64
MAX_AUX_IMAGES = 64

# Meta patterns (msgspec searches them) are anchored \A...\Z, never ^...$: "$" also
# matches before a trailing newline.
QUANTITY_PATTERN = (
    r"\A\+?(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]{1,3}|[kMGTPE])?\Z"
)
CPU_PATTERN = r"\A(?:[0-9]{1,7}m|[0-9]{1,4}(?:\.[0-9]{1,3})?)\Z"
LABEL_PATTERN = r"\A[!-~](?:[ -~]*[!-~])?\Z"  # printable ASCII, no space at either end
_QUANTITY = re.compile(QUANTITY_PATTERN)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}


def quantity_bytes(quantity: str) -> int | None:
    """Bytes in a Kubernetes quantity, rounded up to a whole byte as Kubernetes does; None
    when ``quantity`` is not one."""
    match = _QUANTITY.search(quantity) if len(quantity) <= MAX_QUANTITY_LEN else None
    if match is None:
        return None
    number = Fraction(match["number"])
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        number *= 1024 ** _BINARY[suffix]
    elif suffix in _DECIMAL:
        number *= 1000 ** _DECIMAL[suffix]
    elif suffix:
        number *= Fraction(10) ** int(suffix[1:])
    return math.ceil(number)


def cpu_cores(value: int | float | str) -> float:
    """Cores in a CPU value of a (decoded) config: ``0.5``, ``2``, ``"500m"``."""
    if isinstance(value, str):
        if value.endswith("m"):
            return float(Fraction(value[:-1]) / 1000)
        return float(Fraction(value))
    return float(value)


# --- the types ---------------------------------------------------------------------------

CpuValue = (
    Annotated[int, msgspec.Meta(ge=1, le=int(MAX_CPUS))]
    | Annotated[float, msgspec.Meta(ge=MIN_CPUS, le=MAX_CPUS)]
    | Annotated[str, msgspec.Meta(pattern=CPU_PATTERN)]
)
Memory = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_QUANTITY_LEN, pattern=QUANTITY_PATTERN)
]
Replicas = Annotated[int, msgspec.Meta(ge=1, le=MAX_REPLICAS)]
Gpus = Annotated[int, msgspec.Meta(ge=0, le=MAX_GPUS)]
Label = Annotated[str, msgspec.Meta(max_length=64, pattern=LABEL_PATTERN)]
Image = Annotated[str, msgspec.Meta(max_length=512, pattern=LABEL_PATTERN)]
ImageName = Annotated[str, msgspec.Meta(max_length=128, pattern=LABEL_PATTERN)]


class _Part(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Unknown keys ignored (newer writers, Wallaroo's display extras); unset ones left out."""


MEMORY_EXAMPLES = "e.g. '512Mi', '1Gi', '1.5Gi', '900M' or '1000000' (bytes)"


def _check_cpu(value: int | float | str | None) -> None:
    # A number is bounded by its Meta, a CPU string's form by its pattern; its value here.
    if isinstance(value, str) and not MIN_CPUS <= cpu_cores(value) <= MAX_CPUS:
        raise ValueError(
            f"cpu {value!r} must be from {MIN_CPUS:g} to {MAX_CPUS:g} cores "
            "(the most an edge runs with)"
        )


def _check_memory(value: str | None) -> None:
    size = None if value is None else quantity_bytes(value)
    if size is not None and not 0 < size <= MAX_MEMORY_BYTES:
        raise ValueError(
            f"memory {value!r} must be more than 0 and less than 2^63 bytes; {MEMORY_EXAMPLES}"
        )


class Resources(_Part, frozen=True, kw_only=True):
    """``limits`` or ``requests``."""

    cpu: CpuValue | None = None
    memory: Memory | None = None
    gpu: Gpus | None = msgspec.field(default=None, name="nvidia.com/gpu")

    def __post_init__(self) -> None:
        _check_cpu(self.cpu)
        _check_memory(self.memory)


class ResourceSpec(_Part, frozen=True, kw_only=True):
    limits: Resources | None = None
    requests: Resources | None = None


class Engine(_Part, frozen=True, kw_only=True):
    cpu: CpuValue | None = None
    replicas: Replicas | None = None
    gpu: Gpus | None = None
    arch: Label | None = None
    accel: Label | None = None
    image: Image | None = None
    resources: ResourceSpec | None = None

    def __post_init__(self) -> None:
        _check_cpu(self.cpu)


class EngineLB(_Part, frozen=True, kw_only=True):
    resources: ResourceSpec | None = None


class AuxImage(_Part, frozen=True, kw_only=True):
    resources: ResourceSpec | None = None


class EngineAux(_Part, frozen=True, kw_only=True):
    images: Annotated[dict[ImageName, AuxImage], msgspec.Meta(max_length=MAX_AUX_IMAGES)] | None = (
        None
    )


class EngineConfig(_Part, frozen=True, kw_only=True):
    """A publish's engine configuration (see the module docstring for shape and limits)."""

    engine: Engine | None = None
    enginelb: EngineLB | None = None
    engine_aux: EngineAux | None = msgspec.field(default=None, name="engineAux")

    def as_dict(self) -> dict[str, Any]:
        """The plain dict a user sees (``publish.engine_config``): set keys only."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out

    @classmethod
    def from_dict(cls, config: object, *, what: str = "deployment_config") -> EngineConfig:
        """A user's dict, checked as the services check it; InvalidRequestError naming the
        field (``... - at `deployment_config.engine.cpu```) otherwise."""
        try:
            return msgspec.convert(config, cls)
        except msgspec.ValidationError as exc:
            raise InvalidRequestError(
                f"{what} is not a valid engine config: {readable(str(exc), what)}"
            ) from None


_READABLE = {
    f"Expected `str` matching regex {QUANTITY_PATTERN!r}": (
        f"Expected a Kubernetes quantity, {MEMORY_EXAMPLES}"
    ),
    f"Expected `str` matching regex {CPU_PATTERN!r}": (
        "Expected a number of cores, e.g. 0.5, 2 or '500m'"
    ),
}


def readable(message: str, root: str = "deployment_config") -> str:
    """A ValidationError's message with our patterns named in words and ``$`` as ``root``."""
    for pattern, words in _READABLE.items():
        message = message.replace(pattern, words)
    return message.replace("`$", f"`{root}")
