"""DeploymentConfigBuilder, engine config validation and Kubernetes quantities."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepub.deployment_config import (
    DeploymentConfig,
    DeploymentConfigBuilder,
    default_engine_config,
    parse_cpu,
    parse_kube_quantity,
    validate_engine_config,
)
from edgepub.shared.engine_config import MAX_CPUS, EngineConfig
from edgepub.shared.errors import EdgepubError, InvalidRequestError

# Engine configs as the seed displays them.
SEED_CONFIGS = [
    {
        "engine": {
            "resources": {
                "limits": {"cpu": 0.5, "memory": "900Mi"},
                "requests": {"cpu": 0.5, "memory": "900Mi"},
            }
        },
        "engineAux": {"images": {}},
        "enginelb": {},
    },
    {
        "engine": {
            "resources": {
                "limits": {"cpu": 4.0, "memory": "3Gi"},
                "requests": {"cpu": 4.0, "memory": "3Gi"},
                "accel": "none",
                "arch": "x86",
                "gpu": False,
            }
        },
        "engineAux": {"autoscale": {"type": "none"}, "images": None},
        "enginelb": {
            "resources": {
                "limits": {"cpu": 1.0, "memory": "512Mi"},
                "requests": {"cpu": 0.2, "memory": "512Mi"},
                "accel": "none",
                "arch": "x86",
                "gpu": False,
            }
        },
    },
]


# --- builder ----------------------------------------------------------------------------------


def test_seed_example_with_engine_level_cpu_and_replicas() -> None:
    config = DeploymentConfigBuilder().replica_count(1).cpus(0.5).memory("900Mi").build()
    assert isinstance(config, DeploymentConfig)
    assert isinstance(config, dict)
    assert config == {
        "engine": {
            "cpu": 0.5,
            "replicas": 1,
            "resources": {
                "limits": {"cpu": 0.5, "memory": "900Mi"},
                "requests": {"cpu": 0.5, "memory": "900Mi"},
            },
        },
        "enginelb": {},
        "engineAux": {"images": {}},
    }
    # The resource part is exactly what the seed shows for this call.
    assert config["engine"]["resources"] == SEED_CONFIGS[0]["engine"]["resources"]  # type: ignore[index]


def test_key_order_does_not_depend_on_call_order() -> None:
    a = DeploymentConfigBuilder().replica_count(2).memory("1Gi").cpus(1).build()
    b = DeploymentConfigBuilder().cpus(1).memory("1Gi").replica_count(2).build()
    assert repr(a) == repr(b)
    assert list(a) == ["engine", "enginelb", "engineAux"]
    assert list(a["engine"]) == ["cpu", "replicas", "resources"]


def test_unset_keys_are_left_out() -> None:
    assert DeploymentConfigBuilder().build() == {
        "engine": {},
        "enginelb": {},
        "engineAux": {"images": {}},
    }
    only_memory = DeploymentConfigBuilder().memory("1Gi").build()
    assert only_memory["engine"] == {
        "resources": {"limits": {"memory": "1Gi"}, "requests": {"memory": "1Gi"}}
    }


def test_build_returns_an_independent_config() -> None:
    builder = DeploymentConfigBuilder().cpus(1)
    first = builder.build()
    first["engine"]["resources"]["limits"]["cpu"] = 99
    builder.cpus(2)
    assert builder.build()["engine"]["cpu"] == 2
    assert first["engine"]["cpu"] == 1


def test_gpus_arch_accel_image_and_lb() -> None:
    config = (
        DeploymentConfigBuilder()
        .gpus(1)
        .arch("arm")
        .accel("cuda")
        .image("ghcr.io/x/engine:1")
        .lb_cpus(0.2)
        .lb_memory("512Mi")
        .build()
    )
    assert config["engine"] == {
        "gpu": 1,
        "arch": "arm",
        "accel": "cuda",
        "image": "ghcr.io/x/engine:1",
        "resources": {"limits": {"nvidia.com/gpu": 1}, "requests": {"nvidia.com/gpu": 1}},
    }
    assert config["enginelb"] == {
        "resources": {
            "limits": {"cpu": 0.2, "memory": "512Mi"},
            "requests": {"cpu": 0.2, "memory": "512Mi"},
        }
    }
    assert "arch" not in DeploymentConfigBuilder().arch("x86").arch(None).build()["engine"]


def test_enum_like_arch_is_stored_by_value() -> None:
    class Arch:
        value = "x86"

    assert DeploymentConfigBuilder().arch(Arch()).build()["engine"]["arch"] == "x86"


def test_cpu_quantity_string_is_stored_as_cores() -> None:
    assert DeploymentConfigBuilder().cpus("500m").build()["engine"]["cpu"] == 0.5


@pytest.mark.parametrize(
    "bad", [0, -1, 0.0, float("nan"), float("inf"), True, "abc", None, "0m", "1e400", 10**400]
)
def test_cpus_must_be_more_than_zero(bad: object) -> None:
    with pytest.raises(InvalidRequestError, match="cpus"):
        DeploymentConfigBuilder().cpus(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["abc", "", "1 Gi", "1gi", "1GB", "-1Gi", "Gi", "0", "0Mi", 512])
def test_memory_must_be_a_positive_quantity(bad: object) -> None:
    with pytest.raises(InvalidRequestError, match="memory"):
        DeploymentConfigBuilder().memory(bad)  # type: ignore[arg-type]


def test_milli_memory_is_refused_with_the_likely_fix() -> None:
    with pytest.raises(InvalidRequestError) as info:
        DeploymentConfigBuilder().memory("512m")
    assert "'512Mi'" in str(info.value)
    assert "'512M'" in str(info.value)


@pytest.mark.parametrize("bad", [1025, 1e300, 10**6, "1025", "2000000m", 0.0001])
def test_cpus_must_be_what_an_edge_runs_with(bad: object) -> None:
    with pytest.raises(InvalidRequestError, match=r"cpus must be from 0\.001 to 1024 cores"):
        DeploymentConfigBuilder().cpus(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="lb_cpus"):
        DeploymentConfigBuilder().lb_cpus(bad)  # type: ignore[arg-type]


def test_the_cpu_bound_is_the_edges() -> None:
    from edgepub.edge_agent.config import MAX_CPUS as EDGE_MAX_CPUS

    assert MAX_CPUS == EDGE_MAX_CPUS
    DeploymentConfigBuilder().cpus(MAX_CPUS).build()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", 101, 10**9])
def test_replica_count_must_be_at_least_one(bad: object) -> None:
    with pytest.raises(InvalidRequestError, match="replica_count"):
        DeploymentConfigBuilder().replica_count(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 65, True])
def test_gpus_are_bounded(bad: object) -> None:
    with pytest.raises(InvalidRequestError, match="gpus"):
        DeploymentConfigBuilder().gpus(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "bad"), [("arch", "x86\n"), ("accel", "a" * 65), ("image", "x" * 513)]
)
def test_labels_are_printable_and_bounded(key: str, bad: str) -> None:
    with pytest.raises(InvalidRequestError, match=key):
        getattr(DeploymentConfigBuilder(), key)(bad)


def test_errors_are_catchable_as_plain_exceptions() -> None:
    with pytest.raises(ValueError):
        DeploymentConfigBuilder().cpus(0)
    with pytest.raises(EdgepubError) as info:
        DeploymentConfigBuilder().cpus(0)
    assert info.value.code == "invalid_request"


def test_default_engine_config() -> None:
    assert default_engine_config() == {
        "engine": {
            "cpu": 1.0,
            "resources": {
                "limits": {"cpu": 1.0, "memory": "512Mi"},
                "requests": {"cpu": 1.0, "memory": "512Mi"},
            },
        },
        "enginelb": {},
        "engineAux": {"images": {}},
    }
    assert default_engine_config() is not default_engine_config()


# --- validate_engine_config ---------------------------------------------------------------


@pytest.mark.parametrize("config", [*SEED_CONFIGS, {}, default_engine_config()])
def test_valid_configs_pass(config: dict[str, object]) -> None:
    validate_engine_config(config)


@pytest.mark.parametrize(
    ("config", "path"),
    [
        (
            {"engine": {"resources": {"limits": {"memory": "lots"}}}},
            "engine.resources.limits.memory",
        ),
        ({"engine": {"resources": {"requests": {"cpu": -1}}}}, "engine.resources.requests.cpu"),
        ({"engine": {"cpu": 0}}, "engine.cpu"),
        ({"engine": {"replicas": 0}}, "engine.replicas"),
        ({"engine": []}, "engine"),
        ({"engine": {"resources": 3}}, "engine.resources"),
        (
            {"engineAux": {"images": {"m": {"resources": {"limits": {"memory": "x"}}}}}},
            "engineAux.images[...].resources.limits.memory",
        ),
        ({"engineAux": {"images": ["x"]}}, "engineAux.images"),
        ({"engineAux": 1}, "engineAux"),
        (
            {"enginelb": {"resources": {"limits": {"memory": "1q"}}}},
            "enginelb.resources.limits.memory",
        ),
    ],
)
def test_invalid_configs_name_the_field(config: dict[str, object], path: str) -> None:
    with pytest.raises(InvalidRequestError, match=re.escape(f"`deployment_config.{path}`")):
        validate_engine_config(config)


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"engine": {"cpu": math.inf}}, "engine.cpu"),
        ({"engine": {"cpu": math.nan}}, "engine.cpu"),
        ({"engine": {"cpu": 1e300}}, "engine.cpu"),
        ({"engine": "x"}, "engine"),
        ({"engine": {"resources": [1]}}, "engine.resources"),
        (
            {"engine": {"resources": {"limits": {"memory": "1Gi\n"}}}},
            "engine.resources.limits.memory",
        ),
        ({"engine": {"resources": {"limits": {"memory": "0Mi"}}}}, "engine.resources.limits"),
        ({"engine": {"resources": {"limits": {"cpu": "2000"}}}}, "engine.resources.limits"),
        ({"engine": {"replicas": 101}}, "engine.replicas"),
        ({"engine": {"gpu": 65}}, "engine.gpu"),
        ({"engine": {"arch": "x86\n"}}, "engine.arch"),
        ({"engineAux": {"images": {f"i{n}": {} for n in range(65)}}}, "engineAux.images"),
    ],
)
def test_what_the_service_refuses_names_the_field(config: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidRequestError, match=re.escape(f"`deployment_config.{path}`")):
        validate_engine_config(config)


_builders = st.fixed_dictionaries(
    {},
    optional={
        "cpus": st.one_of(
            st.floats(min_value=0.001, max_value=MAX_CPUS), st.integers(1, 1024), st.just("500m")
        ),
        "memory": st.sampled_from(["512Mi", "1Gi", "1.5Gi", "900M", "1000000", "1e9"]),
        "replica_count": st.integers(1, 100),
        "gpus": st.integers(0, 64),
        "arch": st.sampled_from(["x86", "arm"]),
        "accel": st.sampled_from(["none", "cuda", "openvino"]),
        "image": st.just("ghcr.io/x/engine:1"),
        "lb_cpus": st.floats(min_value=0.001, max_value=MAX_CPUS),
        "lb_memory": st.just("512Mi"),
    },
)


@given(_builders)
def test_every_built_config_is_one_the_service_takes_and_shows_back(calls: dict[str, Any]) -> None:
    builder = DeploymentConfigBuilder()
    for method, value in calls.items():
        getattr(builder, method)(value)
    config = builder.build()
    checked = validate_engine_config(config)
    assert checked.as_dict() == config  # the dict the SDK shows is the one it sent
    # ... and the same after the wire (msgpack) and KV.
    again = msgspec.msgpack.decode(msgspec.msgpack.encode(checked), type=EngineConfig)
    assert again.as_dict() == config


@pytest.mark.parametrize(
    "stored",
    [
        {},
        {"engine": {"cpu": 2}},
        {"engineAux": {"images": None}},
        {"enginelb": {"resources": {"limits": {"cpu": "500m"}, "requests": {"cpu": "500m"}}}},
        *SEED_CONFIGS,
    ],
)
def test_configs_stored_before_still_decode(stored: dict[str, Any]) -> None:
    """Shapes the SDK sent (and the KV holds) before the service decoded engine configs."""
    validate_engine_config(stored)


def test_non_dict_config() -> None:
    with pytest.raises(InvalidRequestError, match="must be a dict"):
        validate_engine_config([])  # type: ignore[arg-type]


# --- quantities ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("512Mi", 512 * 2**20),
        ("1Gi", 2**30),
        ("1.5Gi", 3 * 2**29),
        ("900Mi", 900 * 2**20),
        ("900M", 900_000_000),
        ("1000000", 1_000_000),
        ("1k", 1000),
        ("1Ki", 1024),
        ("1e3", 1000),
        ("1E3", 1000),
        ("1E", 10**18),
        ("2Ti", 2 * 2**40),
        (".5Gi", 2**29),
        ("1.", 1),
        ("+1Ki", 1024),
        ("0.1", 1),  # rounded up to a whole byte
        ("0", 0),
    ],
)
def test_parse_kube_quantity(quantity: str, expected: int) -> None:
    assert parse_kube_quantity(quantity) == expected


@pytest.mark.parametrize(
    "bad", ["", "Gi", "1 Gi", " 1Gi", "1gi", "1KiB", "-1Gi", "1e", "1.2.3", "1e9999", "9" * 100]
)
def test_parse_kube_quantity_refuses(bad: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_kube_quantity(bad)


def test_too_large() -> None:
    with pytest.raises(InvalidRequestError, match="too large"):
        parse_kube_quantity("9Ei")


def test_parse_cpu() -> None:
    assert parse_cpu("500m") == 0.5
    assert parse_cpu("2") == 2.0
    assert parse_cpu(4) == 4.0


_BINARY = ["", "Ki", "Mi", "Gi", "Ti"]
_DECIMAL = ["k", "M", "G", "T"]


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(range(len(_BINARY))))
def test_binary_round_trip(n: int, power: int) -> None:
    assert parse_kube_quantity(f"{n}{_BINARY[power]}") == n * 1024**power


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(range(len(_DECIMAL))))
def test_decimal_round_trip(n: int, power: int) -> None:
    assert parse_kube_quantity(f"{n}{_DECIMAL[power]}") == n * 1000 ** (power + 1)
    assert parse_kube_quantity(f"{n}e{3 * (power + 1)}") == n * 1000 ** (power + 1)


@given(
    st.integers(min_value=0, max_value=10**4),
    st.integers(min_value=0, max_value=999),
    st.sampled_from(range(1, len(_BINARY))),
)
def test_fractions_round_up(whole: int, frac: int, power: int) -> None:
    exact = (Fraction(whole) + Fraction(frac, 1000)) * 1024**power
    assert parse_kube_quantity(f"{whole}.{frac:03d}{_BINARY[power]}") == math.ceil(exact)


_units = st.sampled_from([("", 1), ("k", 1000), ("Ki", 1024), ("M", 10**6), ("Mi", 2**20)])


@given(st.integers(0, 10**5), _units, st.integers(0, 10**5), _units)
def test_monotonic(a: int, unit_a: tuple[str, int], b: int, unit_b: tuple[str, int]) -> None:
    qa, qb = f"{a}{unit_a[0]}", f"{b}{unit_b[0]}"
    if a * unit_a[1] <= b * unit_b[1]:
        assert parse_kube_quantity(qa) <= parse_kube_quantity(qb)
    else:
        assert parse_kube_quantity(qa) > parse_kube_quantity(qb)


@given(st.text(max_size=12))
def test_any_text_parses_or_raises_invalid_request(text: str) -> None:
    try:
        value = parse_kube_quantity(text)
    except InvalidRequestError:
        return
    assert value >= 0
