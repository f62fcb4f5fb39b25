"""Pure pieces of shared/: names, subjects, settings, redaction, errors, backoff."""

from __future__ import annotations

import io
import json

import msgspec
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from edgepub.edge_agent.tensors import OIP_DATATYPES
from edgepub.shared import errors, logs, subjects
from edgepub.shared.dtypes import DTYPES, ORT_TYPES
from edgepub.shared.errors import ConfigError, InvalidNameError
from edgepub.shared.names import check_name
from edgepub.shared.runner import backoff
from edgepub.shared.schemas import ModelVersion, PublishRecord, decode
from edgepub.shared.settings import Env, RegistrySettings


@pytest.mark.parametrize("name", ["a", "house-price-rf", "p1", "x" * 63])
def test_dns_safe_names_pass(name: str) -> None:
    assert check_name("model", name) == name


@pytest.mark.parametrize(
    "name", ["", "-a", "a-", "A", "a_b", "a.b", "x" * 64, "a b", "a>", "a\n", "a\r\n", "\na"]
)
def test_unsafe_names_are_refused_with_a_fix(name: str) -> None:
    with pytest.raises(InvalidNameError, match="DNS-safe"):
        check_name("pipeline", name)


_TOKEN_CHARS = st.sampled_from(["a", "Z", "0", "-", "_", ".", "*", ">", " ", "\n", "\r", "\t"])


@given(st.text(_TOKEN_CHARS, min_size=0, max_size=12) | st.text(max_size=12))
def test_subject_tokens_never_change_a_subject_shape(value: str) -> None:
    """Either a token keeps a subject's shape, or it is refused; tried with separators,
    wildcards and line breaks in every position."""
    shape_breakers = set(". *>\n\r\t")
    if (
        value
        and not (shape_breakers & set(value))
        and value.isascii()
        and all(c.isalnum() or c in "-_" for c in value)
    ):
        assert subjects.token(value) == value
    else:
        with pytest.raises(ValueError, match="cannot be a subject token"):
            subjects.token(value)


def test_request_subjects_round_trip() -> None:
    subject = subjects.request("admin", subjects.VERB_PUBLISH_CREATE)
    assert subject == "edgepub.req.admin.publish.publish.create"
    assert subjects.parse_request(subject) == ("admin", "publish.publish.create")
    assert subjects.service_of(subjects.VERB_PUBLISH_CREATE) == "publish"
    with pytest.raises(ValueError):
        subjects.request("a.b", "x")
    with pytest.raises(ValueError, match="not an edgepub request"):
        subjects.parse_request("edgepub.req.admin.publish")  # no verb after the service


def test_every_verb_is_answered_by_a_service_on_its_own_subjects() -> None:
    for verb in subjects.VERBS:
        service = subjects.service_of(verb)
        wildcard = subjects.request_wildcard(service)
        assert wildcard == f"edgepub.req.*.{service}.>"
        assert subjects.request("u", verb).startswith(f"edgepub.req.u.{service}.")


@pytest.mark.parametrize("value", ["a\n", "a\r\n", "\na", "a b", "a.b", "*", ">", ""])
def test_subject_tokens_refuse_newlines_and_separators(value: str) -> None:
    with pytest.raises(ValueError, match="cannot be a subject token"):
        subjects.token(value)


def test_inbox_prefix_is_per_user() -> None:
    assert subjects.inbox_prefix("alice") == "_INBOX.alice"
    with pytest.raises(ValueError):
        subjects.inbox_prefix("a.>")


def test_settings_errors_name_the_variable_and_value() -> None:
    with pytest.raises(ConfigError, match="EDGEPUB_REGISTRY is not set"):
        RegistrySettings.from_env(Env({}))
    with pytest.raises(ConfigError, match=r"EDGEPUB_REGISTRY_DEADLINE_S='soon' is not a number"):
        RegistrySettings.from_env(
            Env({"EDGEPUB_REGISTRY": "r:5000", "EDGEPUB_REGISTRY_DEADLINE_S": "soon"})
        )
    with pytest.raises(ConfigError, match="host\\[:port\\] only"):
        RegistrySettings.from_env(Env({"EDGEPUB_REGISTRY": "https://r/x"}))
    local = RegistrySettings.from_env(Env({"EDGEPUB_REGISTRY": "127.0.0.1:5000"}))
    assert local.insecure and local.repository == "edgepub"
    with pytest.raises(ConfigError, match="not a boolean"):
        Env({"X": "maybe"}).flag("X", False)


def test_redaction_masks_secret_keys_and_registered_values() -> None:
    out = io.StringIO()
    logs.configure(fmt="json", stream=out)
    logs.register_secret("hunter2-very-secret")
    log = structlog.get_logger()
    log.info("login", password="hunter2-very-secret", user="edgepub")
    log.info("failed", error="GET http://edgepub:hunter2-very-secret@r/v2/ refused")
    log.info("nested", detail={"join_token": "abc", "ok": 1})
    text = out.getvalue()
    assert "hunter2-very-secret" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["password"] == logs.MASK and lines[0]["user"] == "edgepub"
    assert logs.MASK in lines[1]["error"]
    assert lines[2]["detail"] == {"join_token": logs.MASK, "ok": 1}
    structlog.reset_defaults()


def test_every_error_code_is_unique_and_round_trips() -> None:
    codes = [c.code for c in errors._KNOWN]
    assert len(codes) == len(set(codes))
    for cls in errors._KNOWN:
        again = errors.from_code(cls.code, "m")
        assert type(again) is cls and str(again) == "m"
    assert type(errors.from_code("from-the-future", "m")) is errors.EdgepubError


@given(st.integers(min_value=1, max_value=100))
def test_backoff_grows_and_is_capped(attempt: int) -> None:
    assert 0.5 <= backoff(attempt) <= 30.0
    assert backoff(attempt + 1) >= backoff(attempt)


# --- records written before the services typed what clients send -------------------------


@pytest.mark.parametrize(
    "stored_config",
    [
        {},
        {
            "engine": {
                "cpu": 1.0,
                "resources": {
                    "limits": {"cpu": 1.0, "memory": "512Mi"},
                    "requests": {"cpu": 1.0, "memory": "512Mi"},
                },
            },
            "enginelb": {},
            "engineAux": {"images": {}},
        },
        {"engine": {"cpu": 2, "replicas": 3, "gpu": 1, "arch": "arm", "accel": "cuda"}},
        {"enginelb": {"resources": {"limits": {"cpu": "500m"}}}},
    ],
)
def test_publish_records_already_in_kv_still_decode_unchanged(
    stored_config: dict[str, object],
) -> None:
    old = {
        "v": 1,
        "id": 4,
        "pipeline_name": "p",
        "pipeline_version_id": 1,
        "pipeline_version_name": "6c3d9899-1335-456b-aaa0-52d03a017cc4",
        "status": "Published",
        "engine_config": stored_config,
    }
    record = decode(PublishRecord, msgspec.msgpack.encode(old))
    assert record.engine_config.as_dict() == stored_config
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(record))["engine_config"] == stored_config


def test_model_records_keep_their_specs_as_stored() -> None:
    """Registered models' specs are checked on the way in (CheckedTensorSpec); records
    stored before (a ZipMap output, say) still decode as plain TensorSpecs."""
    old = {
        "name": "clf",
        "version": "6c3d9899-1335-456b-aaa0-52d03a017cc4",
        "sha256": "a" * 64,
        "size": 10,
        "file_name": "clf.onnx",
        "outputs": [{"name": "p", "dtype": "seq(map(int64,tensor(float)))", "shape": []}],
    }
    model = decode(ModelVersion, msgspec.msgpack.encode(old))
    assert model.outputs[0].dtype == "seq(map(int64,tensor(float)))"


def test_the_dtypes_a_client_may_declare_are_those_the_edge_serves() -> None:
    assert set(ORT_TYPES.values()) == DTYPES == set(OIP_DATATYPES)
