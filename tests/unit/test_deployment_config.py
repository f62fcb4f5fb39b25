"""DeploymentConfigBuilder, engine config validation and Kubernetes quantities."""

from __future__ import annotations

import math
from fractions import Fraction

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


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_replica_count_must_be_at_least_one(bad: object) -> None:
    with pytest.raises(InvalidRequestError, match="replica_count"):
        DeploymentConfigBuilder().replica_count(bad)  # type: ignore[arg-type]


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
        ({"engineAux": {"images": {"m": {"resources": {"limits": {"memory": "x"}}}}}}, "images.m"),
        ({"engineAux": {"images": ["x"]}}, "engineAux.images"),
        ({"engineAux": 1}, "engineAux"),
        ({"enginelb": {"resources": {"limits": {"memory": "1q"}}}}, "enginelb"),
    ],
)
def test_invalid_configs_name_the_field(config: dict[str, object], path: str) -> None:
    with pytest.raises(InvalidRequestError, match=path.replace(".", r"\.")):
        validate_engine_config(config)


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
