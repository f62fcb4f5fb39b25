"""The Ops Helm chart (deploy/helm/edgepub) with the real ``helm``: it lints strictly, its
manifests pass the Kubernetes 1.31 schemas strictly, and it agrees with the code it deploys.

Agreement, checked against the code rather than a copy of it: the render command NOTES.txt
prints, run for real, names the StatefulSet's pods under the headless Service and the
registry's Service; the Secret keys the pods mount are exactly the files render writes (less
the two no pod reads); every container command runs a real service with its own env file;
every EDGEPUB_* name the manifests set is read by the service it is given to, and its default
in values.yaml loads to the same settings as the code's default.

``helm`` comes from ``python3 deploy/fetch_helm_tools.py`` (CI's setup runs it).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgepub.services.stack.catalog import BY_NAME, SERVICES
from edgepub.services.stack.deployment import parse_env
from edgepub.shared.settings import Env, LogSettings

REPO = Path(__file__).resolve().parents[2]
HELM = REPO / ".tools" / "bin" / "helm"
CHART = REPO / "deploy" / "helm" / "edgepub"
NAMESPACE = "edgepub-ops"
RELEASE = "edgepub"
SECRET = "edgepub-config"
K8S_VERSION = "1.31.0"
TARGET = ("-n", NAMESPACE, "--kube-version", K8S_VERSION)  # helm template's cluster
SERVICE_CHECK = ["python3", "/usr/local/lib/edgepub-healthcheck.py"]  # deploy/services/Dockerfile
NOT_MOUNTED = {"credentials.json", "stack.json"}  # the render's own and the SDK login

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not HELM.exists(), reason=f"no {HELM}: run python3 deploy/fetch_helm_tools.py"
    ),
]

# Values sets: the defaults, and one that changes what the names, mounts and env depend on.
DEFAULTS: dict[str, Any] = {"config": {"secretName": SECRET}}
SMALL: dict[str, Any] = {
    "config": {"secretName": SECRET},
    "fullnameOverride": "ops",
    "nats": {"replicas": 1, "edgeService": {"type": "LoadBalancer"}},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "host": "ops.example.com",
        "tlsSecretName": "ops-tls",
    },
    "images": {"pullSecrets": [{"name": "regcred"}], "services": {"repository": "r/s"}},
    "token": {"replicas": 3},
    "publish": {"env": {"EDGEPUB_LOG_LEVEL": "debug", "EDGEPUB_LOGS_MAX_BYTES": 1 << 33}},
    "registryPush": {
        "env": {"EDGEPUB_PUSH_CONCURRENCY": 4, "EDGEPUB_PUSH_MAX_DELIVER": 99},
        "extraEnv": [{"name": "EDGEPUB_REGISTRY_EMAIL", "value": "ops@example.com"}],
    },
    "dashboard": {
        "port": 9470,
        "env": {"EDGEPUB_DASHBOARD_STUCK_AFTER_S": 60},
        "ingress": {"enabled": True, "host": "fleet.example.com", "className": "nginx"},
    },
}
VALUE_SETS = {"defaults": DEFAULTS, "small": SMALL}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60)


def values_file(tmp_path: Path, values: Mapping[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(dict(values)))
    return path


def template(tmp_path: Path, values: Mapping[str, Any], chart: Path = CHART) -> list[Any]:
    out = helm("template", RELEASE, str(chart), *TARGET, "-f", str(values_file(tmp_path, values)))
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def notes(tmp_path: Path, values: Mapping[str, Any]) -> str:
    """NOTES.txt as ``helm install`` prints it (which needs a cluster): rendered through a
    ConfigMap in a copy of the chart."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ include "edgepub/templates/NOTES.txt" . | quote }}\n'
    )
    docs = template(tmp_path, values, chart)
    return str(next(d for d in docs if d["metadata"]["name"] == "notes")["data"]["notes"])


def objects(docs: list[Any], kind: str) -> dict[str, Any]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(docs: list[Any]) -> Iterator[tuple[Any, Any]]:
    """(workload, container) for every pod template."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                yield d, c


def secret_items(workload: Any) -> set[str]:
    keys: set[str] = set()
    for vol in workload["spec"]["template"]["spec"].get("volumes", []):
        if "secret" in vol:
            assert vol["secret"]["secretName"] == SECRET
            keys |= {item["key"] for item in vol["secret"]["items"]}
    return keys


def service_of(container: Any) -> str | None:
    """The service a container runs with the stack's run verb (None: not a service)."""
    cmd = container["command"]
    if cmd[:4] != ["python", "-m", "edgepub.services.stack", "run"]:
        return None
    return str(cmd[4])


def rendered_config(tmp_path: Path, values: Mapping[str, Any]) -> dict[str, str]:
    """Runs the render command NOTES.txt prints for these values (into tmp_path/config)."""
    text = notes(tmp_path, values)
    (line,) = [ln.strip() for ln in text.splitlines() if "edgepub.services.stack render" in ln]
    argv = shlex.split(line)
    assert argv[:4] == ["python", "-m", "edgepub.services.stack", "render"], line
    out = tmp_path / "config"
    argv[argv.index("--out") + 1] = str(out)
    argv = [a.replace("EDGE_ADDRESS", "edge.example.com") for a in argv]
    done = subprocess.run(
        [sys.executable, *argv[1:]], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert f"create secret generic {SECRET} --from-file=edgepub-config" in text
    return {p.name: p.read_text() for p in out.iterdir()}


def test_lint_strict(tmp_path: Path) -> None:
    for values in VALUE_SETS.values():
        values_path = str(values_file(tmp_path, values))
        out = helm("lint", "--strict", str(CHART), "--kube-version", K8S_VERSION, "-f", values_path)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "0 chart(s) failed" in out.stdout
        assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout, out.stdout


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_manifests_pass_the_kubernetes_schemas_strictly(tmp_path: Path, name: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    docs = template(tmp_path, VALUE_SETS[name])
    kinds = {d["kind"] for d in docs}
    expected = {"StatefulSet", "Deployment", "Service", "PersistentVolumeClaim"}
    assert expected | {"PodDisruptionBudget"} <= kinds
    assert ("Ingress" in kinds) == (name == "small")
    for version in (K8S_VERSION, kv.utils.latest_version()):
        for doc in docs:
            kv.validate(doc, version, strict=True)  # raises naming the field


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_the_documented_render_names_the_charts_hosts(tmp_path: Path, name: str) -> None:
    values = VALUE_SETS[name]
    docs = template(tmp_path, values)
    files = rendered_config(tmp_path, values)
    (sts,) = objects(docs, "StatefulSet").values()
    services = objects(docs, "Service")
    headless = services[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= pod_labels.items()
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    replicas = sts["spec"]["replicas"]
    assert replicas == values.get("nats", {}).get("replicas", 3)
    name_, svc = sts["metadata"]["name"], headless["metadata"]["name"]
    hosts = [f"{name_}-{i}.{svc}.{NAMESPACE}.svc.cluster.local" for i in range(replicas)]
    client = next(p["port"] for p in headless["spec"]["ports"] if p["name"] == "client")
    route = next(p["port"] for p in headless["spec"]["ports"] if p["name"] == "route")

    assert {f"nats-{i}.conf" for i in range(replicas)} == {
        f for f in files if f.startswith("nats-")
    }
    for i in range(replicas):
        conf = files[f"nats-{i}.conf"]
        for j, other in enumerate(hosts):
            assert (f"@{other}:{route}" in conf) == (i != j), (i, j)
    registry = next(s for n, s in services.items() if n.endswith("-registry"))
    registry_address = f"{registry['metadata']['name']}.{NAMESPACE}.svc.cluster.local:" + str(
        registry["spec"]["ports"][0]["port"]
    )
    for spec in SERVICES:
        env = parse_env(files[f"{spec.name}.env"])
        assert env["EDGEPUB_NATS_URL"] == ",".join(f"nats://{h}:{client}" for h in hosts)
        assert env["EDGEPUB_REGISTRY"] == registry_address
        assert env["EDGEPUB_REPLICAS"] == str(min(replicas, 3))
    # the dashboard listens where its Deployment and Service say
    dashboard = parse_env(files["dashboard.env"])
    port = values.get("dashboard", {}).get("port", 8470)
    assert (dashboard["EDGEPUB_DASHBOARD_HOST"], dashboard["EDGEPUB_DASHBOARD_PORT"]) == (
        "0.0.0.0",
        str(port),
    )
    deployment = next(d for n, d in objects(docs, "Deployment").items() if n.endswith("-dashboard"))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    service = services[deployment["metadata"]["name"]]
    assert service["spec"]["ports"] == [
        {"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}
    ]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    dashboard_ingress = values.get("dashboard", {}).get("ingress", {})
    ingresses = objects(docs, "Ingress")
    assert (service["metadata"]["name"] in ingresses) == bool(dashboard_ingress.get("enabled"))
    if dashboard_ingress.get("enabled"):
        rule = ingresses.pop(service["metadata"]["name"])["spec"]["rules"][0]
        assert rule["host"] == dashboard_ingress["host"]
        (path,) = rule["http"]["paths"]
        assert (
            path["path"] == "/"
            and path["backend"]["service"]["name"] == service["metadata"]["name"]
        )
    token = parse_env(files["token.env"])
    ingress = values.get("ingress", {})
    if ingress.get("enabled"):
        assert token["EDGEPUB_OPSCENTER_HOST"] == f"{ingress['host']}/edge"
        (ing,) = ingresses.values()
        (path,) = ing["spec"]["rules"][0]["http"]["paths"]
        assert path["path"] == "/edge"
        backend = services[path["backend"]["service"]["name"]]
        assert backend["spec"]["ports"][0]["port"] == 4223
    registry_yml = yaml.safe_load(files["registry.yml"])
    assert registry_yml["http"]["addr"].endswith(f":{registry['spec']['ports'][0]['port']}")


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_secret_keys_are_the_rendered_files(tmp_path: Path, name: str) -> None:
    values = VALUE_SETS[name]
    docs = template(tmp_path, values)
    files = rendered_config(tmp_path, values)
    mounted: set[str] = set()
    for workload, container in containers(docs):
        keys = secret_items(workload)
        mounted |= keys
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["config"]["mountPath"] == "/config" and mounts["config"]["readOnly"]
        svc = service_of(container)
        if svc is not None:
            assert keys == {f"{svc}.env"}
        elif workload["kind"] == "StatefulSet":
            replicas = workload["spec"]["replicas"]
            assert keys == {f"nats-{i}.conf" for i in range(replicas)}
            assert container["args"] == ["-c", "/config/nats-$(POD_INDEX).conf"]
            (index,) = [e for e in container["env"] if e["name"] == "POD_INDEX"]
            field = index["valueFrom"]["fieldRef"]["fieldPath"]
            assert field == "metadata.labels['apps.kubernetes.io/pod-index']"
        else:
            assert container["command"] == ["docker-registry"]
            assert container["args"] == ["serve", "/config/registry.yml"]
            assert keys == {"registry.yml", "htpasswd"}
            auth = yaml.safe_load(files["registry.yml"])["auth"]["htpasswd"]["path"]
            assert auth == "/config/htpasswd"
    assert mounted == set(files) - NOT_MOUNTED
    assert set(files) >= NOT_MOUNTED


def test_commands_run_real_services_with_their_own_env_file(tmp_path: Path) -> None:
    docs = template(tmp_path, DEFAULTS)
    ran: dict[str, int] = {}
    for workload, container in containers(docs):
        svc = service_of(container)
        if svc is None:
            continue
        assert svc in BY_NAME, svc
        assert container["command"][5:] == ["--env-file", f"/config/{svc}.env"]
        ran[svc] = workload["spec"]["replicas"]
    assert ran.keys() == BY_NAME.keys()
    for spec in SERVICES:
        assert ran[spec.name] >= spec.replicas, spec.name  # token: 2


def test_workloads_are_locked_down(tmp_path: Path) -> None:
    docs = template(tmp_path, DEFAULTS)
    for workload, container in containers(docs):
        pod = workload["spec"]["template"]["spec"]
        # Service links would add EDGEPUB_NATS_PORT and the like when the release is edgepub
        assert pod["enableServiceLinks"] is False
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert pod["terminationGracePeriodSeconds"] > 0
        writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
        if service_of(container) == "registry_push":
            assert "/data/cache" in writable
        if service_of(container) == "dashboard":
            for probe in ("readinessProbe", "livenessProbe"):
                assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
        elif service_of(container) is not None:
            for probe in ("readinessProbe", "livenessProbe"):
                assert container[probe]["exec"]["command"] == SERVICE_CHECK
    (sts,) = objects(docs, "StatefulSet").values()
    (nats,) = sts["spec"]["template"]["spec"]["containers"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert nats[probe]["httpGet"]["path"].startswith("/healthz")
        assert nats[probe]["httpGet"]["port"] == "monitor"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in nats["volumeMounts"]


def test_the_service_probe_is_the_images_healthcheck() -> None:
    dockerfile = REPO / "deploy" / "services" / "Dockerfile"
    if not dockerfile.exists():
        pytest.skip(f"no {dockerfile}")
    healthcheck = re.search(r"^HEALTHCHECK .*\n\s*CMD (\[.*\])", dockerfile.read_text(), re.M)
    assert healthcheck is not None
    assert yaml.safe_load(healthcheck.group(1)) == SERVICE_CHECK
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart_values["serviceHealthcheck"] == SERVICE_CHECK


# --- settings: what the services read, and the code's defaults ---------------------------


def _publish(env: Env) -> object:
    from edgepub.services.publish.__main__ import outcomes_spec
    from edgepub.shared import bus

    return (bus.LogLimits.from_env(env), bus.replicas_from_env(env), outcomes_spec(env))


def _registry_push(env: Env) -> object:
    from edgepub.services.registry_push.config import PushSettings

    return PushSettings.from_env(env)


def _token(env: Env) -> object:
    from edgepub.services.token.__main__ import replaces_spec
    from edgepub.services.token.settings import TokenSettings

    return (TokenSettings.from_env(env), replaces_spec(env))


def _log_collector(env: Env) -> object:
    from edgepub.services.log_collector.config import CollectorSettings

    return CollectorSettings.from_env(env)


def _dashboard(env: Env) -> object:
    from edgepub.services.dashboard.settings import DashboardSettings

    return DashboardSettings.from_env(env)


# Everything each service reads from its environment at start, with LogSettings (all read
# EDGEPUB_LOG_LEVEL): a name whose value changes none of it is not a setting of that service.
LOADERS: dict[str, Callable[[Env], object]] = {
    "publish": _publish,
    "registry_push": _registry_push,
    "token": _token,
    "log_collector": _log_collector,
    "dashboard": _dashboard,
}
# A different valid value, for the settings that are not numbers.
OTHER: dict[str, str] = {
    "EDGEPUB_LOG_LEVEL": "debug",
    "EDGEPUB_CACHE_MAX_BYTES": "3Gi",
    "EDGEPUB_TRUST_DOMAIN": "other.example",
    "EDGEPUB_ENGINE_IMAGE": "other-edge:9.9",
}


def settings(service: str, environ: Mapping[str, str]) -> object:
    env = Env(dict(environ))
    return (LOADERS[service](env), LogSettings.from_env(env))


def other_value(name: str, value: str) -> str:
    if name in OTHER:
        return OTHER[name] if OTHER[name] != value else "warning"
    number = float(value)
    return str(int(number) * 2) if number.is_integer() else str(number * 2)


def code_literals() -> set[str]:
    """Every "EDGEPUB_..." string literal in the services' and shared code."""
    found: set[str] = set()
    for top in ("services", "shared"):
        for path in (REPO / top).rglob("*.py"):
            found |= set(re.findall(r"[\"'](EDGEPUB_[A-Z0-9_]+)[\"']", path.read_text()))
    return found


def test_loaders_cover_every_service() -> None:
    assert LOADERS.keys() == BY_NAME.keys()


class Recording(dict[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, items: Mapping[str, str]) -> None:
        super().__init__(items)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)


# Read at start but no value of their own in the chart: the home (EDGEPUB_CACHE_DIR, from
# the env file, wins over it), and the collector's test-only fault seam.
NO_VALUE = {"EDGEPUB_HOME", "EDGEPUB_FAULT_EXIT_AFTER_APPENDS"}


def test_every_setting_the_services_read_has_a_value(tmp_path: Path) -> None:
    files = rendered_config(tmp_path, DEFAULTS)
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    keys = {"publish": "publish", "registry_push": "registryPush", "token": "token"}
    keys |= {"log_collector": "logCollector", "dashboard": "dashboard"}
    for svc, loader in LOADERS.items():
        file_env = parse_env(files[f"{svc}.env"])
        environ = Recording(file_env)
        loader(Env(environ))
        LogSettings.from_env(Env(environ))
        settings_read = environ.asked - file_env.keys() - NO_VALUE
        declared = set(chart_values[keys[svc]]["env"])
        assert settings_read == declared, (
            f"{keys[svc]}.env: missing {sorted(settings_read - declared)}, "
            f"not read {sorted(declared - settings_read)}"
        )


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_env_names_are_read_by_the_code_and_not_shadowed(tmp_path: Path, name: str) -> None:
    values = VALUE_SETS[name]
    docs = template(tmp_path, values)
    files = rendered_config(tmp_path, values)
    read = code_literals()
    for _, container in containers(docs):
        set_here = [e["name"] for e in container.get("env", [])]
        for env_name in set_here:
            if env_name.startswith("EDGEPUB_"):
                assert env_name in read, f"{container['name']}: nothing reads {env_name}"
        svc = service_of(container)
        if svc is not None:
            # the run verb puts the env file over the pod's environment: a name in both
            # would be silently ignored
            shadowed = set(set_here) & parse_env(files[f"{svc}.env"]).keys()
            assert not shadowed, f"{svc}: the env file overrides {shadowed}"


def test_value_defaults_are_the_codes_defaults(tmp_path: Path) -> None:
    docs = template(tmp_path, DEFAULTS)
    files = rendered_config(tmp_path, DEFAULTS)
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    keys = {"publish": "publish", "registry_push": "registryPush", "token": "token"}
    keys |= {"log_collector": "logCollector", "dashboard": "dashboard"}
    checked = 0
    for _, container in containers(docs):
        svc = service_of(container)
        if svc is None:
            continue
        base = parse_env(files[f"{svc}.env"])  # what the pod's process gets from the file
        code_default = settings(svc, base)
        declared = chart_values[keys[svc]]["env"]
        rendered = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        for env_name, default in declared.items():
            where = f"{keys[svc]}.env.{env_name}"
            if default is None:  # left to the code: not rendered
                assert env_name not in rendered, where
                continue
            value = rendered[env_name]
            assert settings(svc, {**base, env_name: value}) == code_default, (
                f"{where}={value!r} is not the code's default"
            )
            changed = {**base, env_name: other_value(env_name, value)}
            assert settings(svc, changed) != code_default, f"{where}: {svc} does not read it"
            checked += 1
    assert checked >= 30


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "config.secretName"),
        ({**DEFAULTS, "publish": {"env": {"EDGEPUB_NATS_URL": "x"}}}, "env file sets"),
        (
            {**DEFAULTS, "token": {"extraEnv": [{"name": "EDGEPUB_REPLICAS", "value": "1"}]}},
            "env file sets",
        ),
        ({**DEFAULTS, "token": {"replicas": 1}}, "token.replicas"),
        ({**DEFAULTS, "nats": {"replicas": 6}}, "nats.replicas"),
        ({**DEFAULTS, "ingress": {"enabled": True}}, "ingress.host"),
        ({**DEFAULTS, "dashboard": {"ingress": {"enabled": True}}}, "dashboard.ingress.host"),
        ({**DEFAULTS, "dashboard": {"env": {"EDGEPUB_DASHBOARD_PORT": 1}}}, "env file sets"),
        ({**DEFAULTS, "fullnameOverride": "x" * 41}, "fullnameOverride"),
        ({**DEFAULTS, "registryPush": {"env": {"EDGEPUB_STOP_GRACE_S": 30}}}, "STOP_GRACE"),
    ],
)
def test_bad_values_are_refused(tmp_path: Path, values: dict[str, Any], message: str) -> None:
    out = helm("template", RELEASE, str(CHART), *TARGET, "-f", str(values_file(tmp_path, values)))
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
