"""References, repository names and manifests (shared/artifact.py): pure, no registry."""

from __future__ import annotations

import hashlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepub.shared import artifact
from edgepub.shared.errors import InvalidNameError

SHA = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        (
            "127.0.0.1:5000/edgepub/pipelines/p1:v1",
            "127.0.0.1:5000",
            "edgepub/pipelines/p1",
            "v1",
            None,
        ),
        (f"ghcr.io/org/charts@{SHA}", "ghcr.io", "org/charts", None, SHA),
        (f"localhost/a:t@{SHA}", "localhost", "a", "t", SHA),
        ("oci://registry:5000/x/y:0.0.1-abc", "registry:5000", "x/y", "0.0.1-abc", None),
        ("[::1]:5000/a/b:latest", "[::1]:5000", "a/b", "latest", None),
        (
            "sample-registry.example.com/pipelines/p1:6c3d9899-1335-456b-aaa0-52d03a017cc4",
            "sample-registry.example.com",
            "pipelines/p1",
            "6c3d9899-1335-456b-aaa0-52d03a017cc4",
            None,
        ),
    ],
)
def test_parse_reference(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = artifact.parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert ref.reference == (digest or tag)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "no registry host"),
        ("p1:v1", "no registry host"),
        ("edgepub/pipelines/p1:v1", "is not a registry host"),
        ("127.0.0.1:5000/Edgepub/p1:v1", "bad repository path"),
        ("127.0.0.1:5000/a//b:v1", "bad repository path"),
        ("127.0.0.1:5000/a/b", "neither a tag nor a digest"),
        ("127.0.0.1:5000/a/b:", "bad tag"),
        ("127.0.0.1:5000/a/b:-x", "bad tag"),
        ("127.0.0.1:5000/a/b@sha256:1234", "bad digest"),
        ("127.0.0.1:5000/a/b@sha256:" + "A" * 64, "64 lowercase hex"),
        ("http://127.0.0.1:5000/a:b", "is not a registry host"),
        ("127.0.0.1:5000/" + "a" * 300 + ":v", "longer than 255"),
    ],
)
def test_parse_reference_refuses_garbage(text: str, why: str) -> None:
    with pytest.raises(InvalidNameError) as err:
        artifact.parse_reference(text)
    assert why in str(err.value)
    assert repr(text) in str(err.value)


_component = st.from_regex(r"[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,8}){0,2}", fullmatch=True)
_host = st.one_of(
    st.just("localhost"),
    st.from_regex(r"[a-z][a-z0-9]{0,10}\.[a-z]{2,5}", fullmatch=True),
    st.builds(lambda p: f"127.0.0.1:{p}", st.integers(1, 65535)),
)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}", fullmatch=True)
_digest = st.binary(min_size=1, max_size=16).map(
    lambda b: "sha256:" + hashlib.sha256(b).hexdigest()
)


@given(
    registry=_host,
    parts=st.lists(_component, min_size=1, max_size=4),
    tag=st.one_of(st.none(), _tag),
    digest=st.one_of(st.none(), _digest),
)
def test_reference_round_trip(
    registry: str, parts: list[str], tag: str | None, digest: str | None
) -> None:
    if tag is None and digest is None:
        tag = "latest"
    ref = artifact.Reference(registry=registry, repository="/".join(parts), tag=tag, digest=digest)
    assert artifact.parse_reference(str(ref)) == ref
    assert artifact.parse_reference("oci://" + str(ref)) == ref


def test_names_for_a_publish() -> None:
    version = "6c3d9899-1335-456b-aaa0-52d03a017cc4"
    assert artifact.pipeline_repository("edgepub", "p1") == "edgepub/pipelines/p1"
    assert artifact.chart_repository("org/team", "p1") == "org/team/charts/p1"
    assert artifact.chart_version(version) == f"0.0.1-{version}"
    url = artifact.pipeline_url("127.0.0.1:5000", "edgepub", "p1", version)
    assert url == f"127.0.0.1:5000/edgepub/pipelines/p1:{version}"
    assert artifact.parse_reference(url).tag == version
    assert artifact.chart_url("r.io", "edgepub", "p1") == "oci://r.io/edgepub/charts/p1"
    assert artifact.chart_reference("r.io", "edgepub", SHA) == f"r.io/edgepub/charts@{SHA}"


@pytest.mark.parametrize("bad", ["P1", "p 1", "p/1", "-p", "p..1", ""])
def test_pipeline_names_that_cannot_be_paths_are_refused(bad: str) -> None:
    with pytest.raises(InvalidNameError, match="pipeline name"):
        artifact.pipeline_repository("edgepub", bad)


def test_model_media_types() -> None:
    assert artifact.model_media_type("onnx") == artifact.ONNX_MODEL_MEDIA_TYPE
    assert artifact.model_media_type("tflite") == "application/vnd.edgepub.model.tflite.v1"
    with pytest.raises(InvalidNameError):
        artifact.model_media_type("a/b")


def _desc(n: int, title: str | None = None) -> artifact.Descriptor:
    ann = {artifact.ANNOTATION_TITLE: title} if title else None
    digest = "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()
    return artifact.Descriptor(media_type="application/x", digest=digest, size=n, annotations=ann)


def test_manifest_bytes_are_deterministic_and_spec_shaped() -> None:
    layers = [_desc(2, "b.onnx"), _desc(1, "a.onnx")]
    one = artifact.build_manifest(_desc(0), layers, artifact_type="application/t")
    two = artifact.build_manifest(_desc(0), list(layers), artifact_type="application/t")
    assert one == two
    assert b" " not in one and b"\n" not in one
    data = msgspec.json.decode(one)
    assert list(data) == sorted(data)
    assert data["schemaVersion"] == 2
    assert data["mediaType"] == artifact.OCI_MANIFEST
    assert data["artifactType"] == "application/t"
    assert [layer["annotations"][artifact.ANNOTATION_TITLE] for layer in data["layers"]] == [
        "b.onnx",
        "a.onnx",
    ]
    assert "annotations" not in data["config"] and "annotations" not in data


def test_manifest_changes_with_content() -> None:
    base = artifact.build_manifest(_desc(0), [_desc(1, "a")])
    assert artifact.build_manifest(_desc(0), [_desc(2, "a")]) != base
    assert artifact.build_manifest(_desc(0), [_desc(1, "a")], annotations={"k": "v"}) != base


def test_manifest_decodes_and_finds_layers_by_title() -> None:
    body = artifact.build_manifest(_desc(0), [_desc(1, "a.onnx"), _desc(2, "b.onnx")])
    manifest = artifact.manifest_decoder.decode(body)
    assert artifact.layer_by_title(manifest, "b.onnx").size == 2
    with pytest.raises(InvalidNameError, match=r"c\.onnx"):
        artifact.layer_by_title(manifest, "c.onnx")


@pytest.mark.parametrize(
    "text",
    [
        "reg.example.com/edgepub/pipelines/p:v1\n",
        "reg.example.com\n/edgepub/pipelines/p:v1",
        "reg.example.com/edgepub\n/pipelines/p:v1",
        "reg.example.com/edgepub/pipelines/p@sha256:" + "a" * 64 + "\n",
    ],
)
def test_a_trailing_newline_is_never_part_of_a_reference(text: str) -> None:
    """Checks are fullmatch: "$" would let a newline through into a URL or a header."""
    with pytest.raises(InvalidNameError):
        artifact.parse_reference(text)
    assert not artifact.is_sha256("sha256:" + "a" * 64 + "\n")
    with pytest.raises(InvalidNameError):
        artifact.check_repository("edgepub\n")
    with pytest.raises(InvalidNameError):
        artifact.check_tag("v1\n")
