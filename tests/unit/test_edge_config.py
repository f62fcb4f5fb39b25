"""The edge agent's environment: pure parsing, every bad value one line naming the variable,
the value and what is expected; secrets never in the line."""

from __future__ import annotations

import base64
import contextlib
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepub.edge_agent import backoff
from edgepub.edge_agent.config import (
    DEFAULT_LOG_STORAGE,
    DEFAULT_PAGE_SIZE,
    HttpLimits,
    parse_cpus,
    parse_env,
    parse_log_limits,
)
from edgepub.edge_agent.sizes import UNITS, SizeError, format_size, parse_size
from edgepub.shared.bundle import BundleError, decode_bundle
from edgepub.shared.errors import ConfigError

URL = "registry.example.com:5000/edgepub/pipelines/house-price:6c3d9899-1335-456b-aaa0-52d03a017cc4"
# The seed's own example bundle.
SEED_BUNDLE = (
    "ZXhwb3J0IEJVTkRMRV9WRVJTSU9OPTEKZXhwb3J0IEVER0VfTkFNRT14Z2ItY2NmcmF1ZC1lZGdlLXRlc3QKZXhwb3J0"
    "IEpPSU5fVE9LRU49MzE0OGFkYTUtMjg1YS00ZmNhLWIzYjgtYjUwYTQ4ZDc1MTFiCmV4cG9ydCBPUFNDRU5URVJfSE9T"
    "VD1kb2MtdGVzdC5lZGdlLndhbGxhcm9vY29tbXVuaXR5Lm5pbmphCmV4cG9ydCBQSVBFTElORV9VUkw9Z2hjci5pby93"
    "YWxsYXJvb2xhYnMvZG9jLXNhbXBsZXMvcGlwZWxpbmVzL2VkZ2UtcGlwZWxpbmU6ZjM4OGMxMDktOGQ1Ny00ZWQyLTk4"
    "MDYtYWExM2Y4NTQ1NzZiCmV4cG9ydCBXT1JLU1BBQ0VfSUQ9NQ=="
)


def env(**values: str) -> dict[str, str]:
    return {"PIPELINE_URL": URL, **values}


def problem(values: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_env(values)
    message = info.value.message
    assert "\n" not in message
    return message


# --- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,size",
    [("512Mi", 512 << 20), ("1Gi", 1 << 30), ("1.5Gi", 3 << 29), ("2Ti", 2 << 40), ("64Ki", 65536)],
)
def test_sizes_in_the_seed_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["1G", "1gi", "1 Gi", "Gi", "-1Gi", "1e3Mi", "", "1GiB", ".5Gi"])
def test_other_sizes_are_refused(text: str) -> None:
    with pytest.raises(SizeError):
        parse_size(text)


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(sorted(UNITS)))
def test_size_round_trip(number: int, unit: str) -> None:
    size = parse_size(f"{number}{unit}")
    assert size == number * UNITS[unit]
    assert parse_size(format_size(size)) == size


@given(st.text(max_size=12))
def test_size_parser_never_crashes(text: str) -> None:
    with contextlib.suppress(SizeError):
        assert parse_size(text) >= 0


# --- LOCAL_INFERENCE_STORAGE and PLATEAU_PAGE_SIZE -------------------------------------------


def test_log_limits_default_when_neither_is_set() -> None:
    assert parse_log_limits(None, None) == (DEFAULT_LOG_STORAGE, DEFAULT_PAGE_SIZE, False)
    cfg = parse_env(env(LOCAL_INFERENCE_STORAGE="512Mi", PLATEAU_PAGE_SIZE="250"))
    assert (cfg.log_storage_bytes, cfg.page_size, cfg.log_limits_given) == (512 << 20, 250, True)


@given(
    st.one_of(st.none(), st.text(max_size=8), st.sampled_from(["1Gi", "512Mi", "12Ki"])),
    st.one_of(st.none(), st.text(max_size=8), st.sampled_from(["100", "0", "1000001"])),
)
def test_log_limits_accept_exactly_the_valid_pairs(storage: str | None, page: str | None) -> None:
    def valid_size(s: str) -> bool:
        try:
            return parse_size(s) >= 1 << 20
        except SizeError:
            return False

    ok = (storage is None and page is None) or (
        storage is not None
        and page is not None
        and valid_size(storage)
        and page.isascii()
        and page.isdigit()
        and 1 <= int(page) <= 1_000_000
    )
    try:
        parse_log_limits(storage, page)
        assert ok
    except ConfigError as exc:
        assert not ok
        assert "LOCAL_INFERENCE_STORAGE" in exc.message or "PLATEAU_PAGE_SIZE" in exc.message


@pytest.mark.parametrize(
    "values,words",
    [
        ({"LOCAL_INFERENCE_STORAGE": "1Gi"}, ["PLATEAU_PAGE_SIZE=not set", "'1Gi'"]),
        ({"PLATEAU_PAGE_SIZE": "10"}, ["LOCAL_INFERENCE_STORAGE=not set", "'10'"]),
        ({"LOCAL_INFERENCE_STORAGE": "1GB", "PLATEAU_PAGE_SIZE": "10"}, ["'1GB'", "Gi"]),
        ({"LOCAL_INFERENCE_STORAGE": "1Gi", "PLATEAU_PAGE_SIZE": "-3"}, ["PLATEAU_PAGE_SIZE='-3'"]),
    ],
)
def test_bad_log_limits_name_the_variable(values: dict[str, str], words: list[str]) -> None:
    message = problem(env(**values))
    for word in words:
        assert word in message


# --- the other variables --------------------------------------------------------------------


def test_a_complete_environment() -> None:
    cfg = parse_env(
        env(
            OCI_USERNAME="u",
            OCI_PASSWORD="p" * 8,
            CONFIG_CPUS="2.5",
            DEBUG="true",
            EDGEPUB_PERSIST_DIR="/tmp/x",
            EDGEPUB_PORT="9000",
            EDGE_BUNDLE=SEED_BUNDLE,
        )
    )
    assert cfg.reference.registry == "registry.example.com:5000"
    assert cfg.reference.repository == "edgepub/pipelines/house-price"
    assert cfg.intra_op_threads == 2 and cfg.debug and cfg.port == 9000
    assert str(cfg.persist_dir) == "/tmp/x"
    assert cfg.bundle is not None and cfg.edge_name == "xgb-ccfraud-edge-test"
    assert not cfg.insecure  # a remote registry: TLS
    assert "p" * 8 not in repr(cfg) and cfg.bundle.join_token not in repr(cfg)


def test_defaults() -> None:
    cfg = parse_env(env())
    assert (cfg.port, str(cfg.persist_dir), cfg.cpus, cfg.intra_op_threads) == (
        8080,
        "/persist",
        1.0,
        1,
    )
    assert cfg.max_body_bytes == 64 << 20 and cfg.bundle is None
    assert cfg.max_records == 100_000
    assert (cfg.handoff_capacity, cfg.handoff_bytes) == (10_000, 64 << 20)
    assert cfg.max_inflight is None and cfg.inflight_limit == 8  # 8 per CONFIG_CPUS worker
    assert parse_env(env(CONFIG_CPUS="2.5")).inflight_limit == 16
    assert cfg.http == HttpLimits(
        max_header_bytes=32 << 10,
        header_timeout_s=10,
        body_timeout_s=60,
        keep_alive_s=30,
        max_connections=1000,
    )


def test_the_request_bounds() -> None:
    cfg = parse_env(
        env(
            EDGEPUB_MAX_RECORDS="5000",
            EDGEPUB_MAX_HEADER="8Ki",
            EDGEPUB_HEADER_TIMEOUT_S="2",
            EDGEPUB_BODY_TIMEOUT_S="3",
            EDGEPUB_KEEP_ALIVE_S="4",
            EDGEPUB_MAX_CONNECTIONS="50",
            EDGEPUB_MAX_INFLIGHT="3",
            EDGEPUB_LOG_QUEUE_BYTES="1Mi",
        )
    )
    assert cfg.max_records == 5000
    assert cfg.inflight_limit == 3 and cfg.handoff_bytes == 1 << 20
    assert cfg.http == HttpLimits(
        max_header_bytes=8192,
        header_timeout_s=2,
        body_timeout_s=3,
        keep_alive_s=4,
        max_connections=50,
    )


def test_pipeline_url_may_come_from_the_bundle() -> None:
    cfg = parse_env({"EDGE_BUNDLE": SEED_BUNDLE})
    assert cfg.pipeline_url.startswith("ghcr.io/wallaroolabs/doc-samples/pipelines/edge-pipeline:")


@pytest.mark.parametrize(
    "oci_registry,insecure",
    [
        (None, False),
        ("registry.example.com:5000", False),
        ("http://registry.example.com:5000", True),
        ("https://registry.example.com:5000/edgepub", False),
    ],
)
def test_oci_registry_sets_the_scheme(oci_registry: str | None, insecure: bool) -> None:
    values = env() if oci_registry is None else env(OCI_REGISTRY=oci_registry)
    assert parse_env(values).insecure is insecure


def test_a_loopback_registry_is_plain_http() -> None:
    assert parse_env({"PIPELINE_URL": "127.0.0.1:5000/edgepub/pipelines/p:1"}).insecure


@pytest.mark.parametrize(
    "values,words",
    [
        ({"PIPELINE_URL": ""}, ["PIPELINE_URL=not set"]),
        ({"PIPELINE_URL": "not a url"}, ["PIPELINE_URL='not a url'"]),
        (
            {"OCI_REGISTRY": "other.example.com"},
            ["OCI_REGISTRY='other.example.com'", "PIPELINE_URL"],
        ),
        ({"OCI_USERNAME": "bob"}, ["OCI_PASSWORD=not set", "'bob'"]),
        ({"OCI_PASSWORD": "sekrit-pw"}, ["OCI_USERNAME=not set"]),
        ({"CONFIG_CPUS": "0"}, ["CONFIG_CPUS='0'"]),
        ({"CONFIG_CPUS": "nan"}, ["CONFIG_CPUS='nan'"]),
        ({"DEBUG": "maybe"}, ["DEBUG='maybe'", "true or false"]),
        ({"EDGEPUB_PORT": "70000"}, ["EDGEPUB_PORT='70000'"]),
        ({"EDGEPUB_MAX_BODY": "lots"}, ["EDGEPUB_MAX_BODY='lots'"]),
        ({"EDGEPUB_MAX_RECORDS": "0"}, ["EDGEPUB_MAX_RECORDS='0'", "from 1"]),
        ({"EDGEPUB_MAX_HEADER": "100"}, ["EDGEPUB_MAX_HEADER='100'", "Ki"]),
        ({"EDGEPUB_MAX_HEADER": "512"}, ["EDGEPUB_MAX_HEADER='512'"]),
        ({"EDGEPUB_HEADER_TIMEOUT_S": "0"}, ["EDGEPUB_HEADER_TIMEOUT_S='0'", "1 to 3600"]),
        ({"EDGEPUB_BODY_TIMEOUT_S": "1.5"}, ["EDGEPUB_BODY_TIMEOUT_S='1.5'", "whole number"]),
        ({"EDGEPUB_KEEP_ALIVE_S": "forever"}, ["EDGEPUB_KEEP_ALIVE_S='forever'"]),
        ({"EDGEPUB_MAX_CONNECTIONS": "²"}, ["EDGEPUB_MAX_CONNECTIONS='²'"]),
        ({"EDGEPUB_LOG_FORMAT": "xml"}, ["EDGEPUB_LOG_FORMAT='xml'"]),
        ({"EDGEPUB_MAX_INFLIGHT": "0"}, ["EDGEPUB_MAX_INFLIGHT='0'", "from 1"]),
        ({"EDGEPUB_MAX_INFLIGHT": "many"}, ["EDGEPUB_MAX_INFLIGHT='many'"]),
        ({"EDGEPUB_LOG_QUEUE_BYTES": "64MB"}, ["EDGEPUB_LOG_QUEUE_BYTES='64MB'", "Mi"]),
    ],
)
def test_each_bad_value_is_named(values: dict[str, str], words: list[str]) -> None:
    message = problem(env(**values))
    for word in words:
        assert word in message, message
    assert "sekrit-pw" not in message


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_cpus(value: float) -> None:
    try:
        cpus = parse_cpus(repr(value))
        assert 0 < cpus <= 1024
    except ConfigError as exc:
        assert "CONFIG_CPUS" in exc.message


# --- EDGE_BUNDLE (the codec itself: test_bundle.py) -------------------------------------------


def _bundle(**changes: str) -> str:
    values = {
        "BUNDLE_VERSION": "1",
        "EDGE_NAME": "shop-12",
        "JOIN_TOKEN": "26fc1cb8-2512-4be7-94de-6464b50d638b",
        "OPSCENTER_HOST": "ops.example.com",
        "PIPELINE_URL": URL,
        "WORKSPACE_ID": "7",
    }
    values.update(changes)
    lines = [f"export {k}={v}" for k, v in values.items() if v != "-"]
    return base64.b64encode("\n".join(lines).encode()).decode()


@pytest.mark.parametrize(
    "bundle,words",
    [
        ("%%%", ["base64"]),
        (base64.b64encode(b"\xff\xfe").decode(), ["UTF-8"]),
        (base64.b64encode(b"hello world").decode(), ["line 1"]),
        (_bundle(BUNDLE_VERSION="2"), ["BUNDLE_VERSION='2'"]),
        (_bundle(EDGE_NAME="Shop_12"), ["EDGE_NAME='Shop_12'"]),
        (_bundle(JOIN_TOKEN="not-a-uuid"), ["JOIN_TOKEN", "hidden"]),
        (_bundle(JOIN_TOKEN=str(uuid.uuid1())), ["version-4"]),
        (_bundle(WORKSPACE_ID="x"), ["WORKSPACE_ID='x'"]),
        (_bundle(OPSCENTER_HOST="-"), ["OPSCENTER_HOST"]),
    ],
)
def test_bad_bundles(bundle: str, words: list[str]) -> None:
    with pytest.raises(BundleError) as info:
        decode_bundle(bundle)
    for word in words:
        assert word in str(info.value)
    message = problem(env(EDGE_BUNDLE=bundle))
    assert message.startswith("EDGE_BUNDLE=<") and "hidden" in message
    assert bundle not in message and "26fc1cb8" not in message


# --- backoff ----------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=10_000), st.floats(min_value=0, max_value=0.999999))
def test_backoff_stays_between_a_fraction_of_a_second_and_the_cap(
    attempt: int, rand: float
) -> None:
    wait = backoff.delay(attempt, rand)
    assert 0.1 <= wait <= backoff.CAP_S
    if attempt == 0:
        assert wait < 0.4


def test_backoff_grows_then_caps() -> None:
    import random

    waits = [w for w, _ in zip(backoff.delays(random.Random(1)), range(20), strict=False)]
    assert waits[0] < 0.4 and max(waits) <= 30.0 and waits[-1] >= 15.0
