"""The Helm chart (services/registry_push/chart.py): deterministic bytes, well-formed files.

No helm binary exists here, so a tiny renderer below evaluates exactly the template
language the chart uses (values lookups, quote, printf, trunc, toYaml, nindent, if/end,
whitespace trimming) and fails on anything else; the rendered documents must parse as
YAML and have the shape Kubernetes expects.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
from typing import Any

import msgspec
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepub.services.registry_push import chart as chart_mod
from edgepub.shared.engine_config import MAX_CPUS, EngineConfig

VERSION = "6c3d9899-1335-456b-aaa0-52d03a017cc4"
ENGINE_CONFIG = {
    "engine": {
        "cpu": 0.5,
        "replicas": 2,
        "resources": {
            "limits": {"cpu": 0.5, "memory": "900Mi"},
            "requests": {"cpu": 0.5, "memory": "900Mi"},
        },
    },
    "enginelb": {},
    "engineAux": {"images": {}},
}


def spec(**overrides: Any) -> chart_mod.ChartInput:
    values: dict[str, Any] = {
        "pipeline": "edge-pipeline",
        "version": f"0.0.1-{VERSION}",
        "app_version": VERSION,
        "registry": "127.0.0.1:5000",
        "pipeline_url": f"127.0.0.1:5000/edgepub/pipelines/edge-pipeline:{VERSION}",
        "image": "edgepub-edge:0.1.0",
        "engine_config": ENGINE_CONFIG,
        "models_size": 50 * 1024 * 1024,
    }
    values.update(overrides)
    if isinstance(values["engine_config"], dict):
        values["engine_config"] = EngineConfig.from_dict(values["engine_config"])
    return chart_mod.ChartInput(**values)


# --- bytes ---------------------------------------------------------------------------------


def test_same_input_same_bytes() -> None:
    one = chart_mod.build(spec()).tgz()
    two = chart_mod.build(spec()).tgz()
    assert one == two
    assert chart_mod.build(spec()).config_json() == chart_mod.build(spec()).config_json()


def test_different_input_different_bytes() -> None:
    base = chart_mod.build(spec()).tgz()
    assert chart_mod.build(spec(app_version="other", version="0.0.1-other")).tgz() != base
    assert chart_mod.build(spec(image="edge:2")).tgz() != base


def test_archive_headers_carry_nothing_that_varies() -> None:
    tgz = chart_mod.build(spec()).tgz()
    assert tgz[4:8] == b"\0\0\0\0"  # gzip MTIME
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert all(n.startswith("edge-pipeline/") for n in names)
    assert {"edge-pipeline/Chart.yaml", "edge-pipeline/values.yaml"} <= set(names)
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
    assert gzip.decompress(tgz)  # a plain gzip stream


def test_unpack_gives_back_the_files() -> None:
    built = chart_mod.build(spec())
    files = chart_mod.unpack(built.tgz())
    assert files == {f"edge-pipeline/{k}": v for k, v in built.files.items()}


# --- Chart.yaml and values.yaml --------------------------------------------------------------


def test_chart_yaml() -> None:
    built = chart_mod.build(spec())
    meta = yaml.safe_load(built.files["Chart.yaml"])
    assert meta == {
        "apiVersion": "v2",
        "name": "edge-pipeline",
        "description": "edgepub edge deployment of pipeline edge-pipeline",
        "type": "application",
        "version": f"0.0.1-{VERSION}",
        "appVersion": VERSION,
    }
    assert json.loads(built.config_json()) == meta


def test_values_yaml() -> None:
    values = yaml.safe_load(chart_mod.build(spec()).files["values.yaml"])
    assert values["ociRegistry"] == {"registry": "127.0.0.1:5000", "username": "", "password": ""}
    assert values["edgeBundle"] == ""
    assert values["pipelineUrl"] == f"127.0.0.1:5000/edgepub/pipelines/edge-pipeline:{VERSION}"
    assert values["image"] == "edgepub-edge:0.1.0"
    assert values["replicaCount"] == 2
    assert values["configCpus"] == 1
    assert values["engine"]["resources"] == {
        "limits": {"cpu": 0.5, "memory": "900Mi"},
        "requests": {"cpu": 0.5, "memory": "900Mi"},
    }
    assert values["persistence"] == {"size": "2Gi", "storageClass": ""}


def test_values_from_an_empty_engine_config() -> None:
    values = yaml.safe_load(chart_mod.build(spec(engine_config={})).files["values.yaml"])
    assert values["engine"]["resources"]["limits"] == {"cpu": 1, "memory": "1Gi"}
    assert values["configCpus"] == 1 and values["replicaCount"] == 1


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [(0.25, 1), (1, 1), (2.5, 3), (4.0, 4), ("500m", 1), ("3", 3), (1024, 1024)],
)
def test_config_cpus(cpu: Any, expected: int) -> None:
    assert chart_mod.config_cpus(EngineConfig.from_dict({"engine": {"cpu": cpu}})) == expected


def test_kubernetes_cpu_strings_stay_strings() -> None:
    config = {"engine": {"resources": {"limits": {"cpu": "500m"}, "requests": {"cpu": 2}}}}
    values = yaml.safe_load(chart_mod.build(spec(engine_config=config)).files["values.yaml"])
    assert values["engine"]["resources"]["limits"]["cpu"] == "500m"
    assert values["engine"]["resources"]["requests"]["cpu"] == 2


_cpu = st.one_of(
    st.integers(1, int(MAX_CPUS)),
    st.floats(min_value=0.001, max_value=MAX_CPUS),
    st.integers(1, 1_024_000).map(lambda m: f"{m}m"),
)
_memory = st.sampled_from(["1", "512Mi", "1.5Gi", "900M", "1e9", "7Ei"])
_resources = st.fixed_dictionaries({}, optional={"cpu": _cpu, "memory": _memory})
_configs = st.fixed_dictionaries(
    {},
    optional={
        "engine": st.fixed_dictionaries(
            {},
            optional={
                "cpu": _cpu,
                "replicas": st.integers(1, 100),
                "resources": st.fixed_dictionaries(
                    {}, optional={"limits": _resources, "requests": _resources}
                ),
            },
        ),
        "enginelb": st.just({}),
    },
)


@settings(max_examples=200)
@given(_configs)
def test_any_decoded_config_gives_values_an_edge_takes(config: dict[str, Any]) -> None:
    """Whatever passes the service's decoding, the chart writer turns into values the edge
    accepts (CONFIG_CPUS 1..1024) without raising."""
    wire = msgspec.msgpack.encode(config)
    decoded = msgspec.msgpack.decode(wire, type=EngineConfig)
    values = yaml.safe_load(chart_mod.build(spec(engine_config=decoded)).files["values.yaml"])
    assert 1 <= values["configCpus"] <= MAX_CPUS
    assert 1 <= values["replicaCount"] <= 100
    for kind in ("limits", "requests"):
        assert set(values["engine"]["resources"][kind]) == {"cpu", "memory"}


def test_persistence_size_grows_with_the_models() -> None:
    assert chart_mod.persistence_size(0) == "1Gi"
    assert chart_mod.persistence_size(3 * chart_mod.GIB) == "7Gi"


def test_to_yaml_quotes_strings_that_look_like_other_things() -> None:
    text = chart_mod.to_yaml({"a": "1.0", "b": "true", "c": "null", "d": {}, "e": "x: y #z"})
    assert yaml.safe_load(text) == {"a": "1.0", "b": "true", "c": "null", "d": {}, "e": "x: y #z"}
    with pytest.raises(ValueError):
        chart_mod.to_yaml({"bad key": 1})
    with pytest.raises(ValueError):
        chart_mod.to_yaml({"key\n": 1})


# --- templates -------------------------------------------------------------------------------

_ACTION = re.compile(r"(\{\{-?\s*)(.*?)(\s*-?\}\})", re.S)


def _lookup(path: str, ctx: dict[str, Any]) -> Any:
    value: Any = ctx
    for part in path.strip(".").split("."):
        value = value[part]  # KeyError: the template references something that isn't there
    return value


def _call(cmd: str, piped: Any, ctx: dict[str, Any], has_piped: bool) -> Any:
    words = re.findall(r'"[^"]*"|\S+', cmd)
    args = [
        json.loads(w) if w.startswith('"') else (_lookup(w, ctx) if w.startswith(".") else w)
        for w in words[1:]
    ]
    if has_piped:
        args.append(piped)
    name = words[0]
    if name.startswith("."):
        return _lookup(name, ctx)
    if name == "quote":
        return json.dumps("" if args[0] is None else str(args[0]))
    if name == "printf":
        return args[0] % tuple(args[1:])
    if name == "trunc":
        return str(args[1])[: int(args[0])]
    if name == "trimSuffix":
        return str(args[1]).removesuffix(str(args[0]))
    if name == "toYaml":
        return yaml.safe_dump(args[0], default_flow_style=False).rstrip("\n")
    if name == "nindent":
        pad = " " * int(args[0])
        return "\n" + "\n".join(pad + line for line in str(args[1]).splitlines())
    raise AssertionError(f"the test renderer does not know {name!r}")


def _evaluate(expr: str, ctx: dict[str, Any]) -> Any:
    value: Any = None
    for i, cmd in enumerate(expr.split("|")):
        value = _call(cmd.strip(), value, ctx, has_piped=i > 0)
    return value


def render(template: str, ctx: dict[str, Any]) -> str:
    """Helm's subset the chart uses; trims whitespace as ``{{-`` / ``-}}`` do."""
    out: list[str] = []
    emitting = [True]
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        if m.group(1).startswith("{{-"):
            text = text.rstrip()
        if all(emitting):
            out.append(text)
        pos = m.end()
        if m.group(3).endswith("-}}"):
            while pos < len(template) and template[pos].isspace():
                pos += 1
        action = m.group(2).strip()
        if action.startswith("if "):
            emitting.append(bool(_evaluate(action[3:], ctx)))
        elif action == "end":
            emitting.pop()
        elif all(emitting):
            out.append(str(_evaluate(action, ctx)))
    assert len(emitting) == 1, "unbalanced if/end"
    out.append(template[pos:])
    return "".join(out)


def context(values: dict[str, Any]) -> dict[str, Any]:
    return {
        "Values": values,
        "Release": {"Name": "shop-12", "Namespace": "edge", "Service": "Helm"},
        "Chart": {"Name": "edge-pipeline", "AppVersion": VERSION},
    }


def rendered(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    built = chart_mod.build(spec())
    values = yaml.safe_load(built.files["values.yaml"])
    for key, value in (overrides or {}).items():
        values[key] = value
    docs: dict[str, Any] = {}
    for path, text in built.files.items():
        if path.startswith("templates/") and path.endswith(".yaml"):
            doc = yaml.safe_load(render(text, context(values)))
            docs[doc["kind"]] = doc
    return docs


def test_templates_balance_and_reference_only_existing_values() -> None:
    built = chart_mod.build(spec())
    values = yaml.safe_load(built.files["values.yaml"])
    templates = {p: t for p, t in built.files.items() if p.startswith("templates/")}
    assert set(templates) >= {
        "templates/deployment.yaml",
        "templates/service.yaml",
        "templates/pvc.yaml",
        "templates/secret.yaml",
    }
    for path, text in templates.items():
        assert text.count("{{") == text.count("}}"), path
        assert len(re.findall(r"\{\{-?\s*if\b", text)) == len(re.findall(r"\{\{-?\s*end\b", text))
        for ref in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", text):
            _lookup(ref, values)  # KeyError names the missing value


def test_files_without_directives_are_plain_yaml() -> None:
    for path, text in chart_mod.build(spec()).files.items():
        if path.endswith(".yaml") and "{{" not in text:
            assert isinstance(yaml.safe_load(text), dict), path


def test_rendered_deployment() -> None:
    deployment = rendered()["Deployment"]
    assert deployment["apiVersion"] == "apps/v1"
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (container,) = pod["containers"]
    assert container["image"] == "edgepub-edge:0.1.0"
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    env = {e["name"]: e for e in container["env"]}
    assert set(env) == {
        "PIPELINE_URL",
        "OCI_REGISTRY",
        "OCI_USERNAME",
        "OCI_PASSWORD",
        "CONFIG_CPUS",
    }
    assert env["PIPELINE_URL"]["value"].endswith(f"/pipelines/edge-pipeline:{VERSION}")
    assert env["CONFIG_CPUS"]["value"] == "1"
    assert env["OCI_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "shop-12-engine",
        "key": "ociPassword",
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["resources"]["limits"] == {"cpu": 0.5, "memory": "900Mi"}
    assert container["volumeMounts"] == [{"name": "persist", "mountPath": "/persist"}]
    assert pod["volumes"] == [
        {"name": "persist", "persistentVolumeClaim": {"claimName": "shop-12-persist"}}
    ]


def test_rendered_deployment_with_an_edge_bundle() -> None:
    container = rendered({"edgeBundle": "ZXhwb3J0"})["Deployment"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["EDGE_BUNDLE"]["valueFrom"]["secretKeyRef"]["key"] == "edgeBundle"


def test_rendered_service_pvc_and_secret() -> None:
    docs = rendered({"ociRegistry": {"registry": "r:1", "username": "u", "password": "p"}})
    service = docs["Service"]
    assert service["metadata"]["name"] == "engine-svc"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    pvc = docs["PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == "shop-12-persist"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert "storageClassName" not in pvc["spec"]
    secret = docs["Secret"]
    assert secret["stringData"] == {"ociUsername": "u", "ociPassword": "p", "edgeBundle": ""}


def test_long_pipeline_names_still_make_valid_labels() -> None:
    name = "a" * 62 + "-b"
    built = chart_mod.build(spec(pipeline=name))
    text = render(built.files["templates/service.yaml"], context({}) | {"Chart": {"Name": name}})
    label = yaml.safe_load(text)["metadata"]["labels"]["app.kubernetes.io/name"]
    assert label == "a" * 62


def test_rendered_pvc_with_a_storage_class() -> None:
    pvc = rendered({"persistence": {"size": "5Gi", "storageClass": "fast"}})[
        "PersistentVolumeClaim"
    ]
    assert pvc["spec"]["storageClassName"] == "fast"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
