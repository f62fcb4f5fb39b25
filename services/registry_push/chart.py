"""A pipeline's Helm chart, as files and as deterministic .tgz bytes (pure).

Equal inputs give equal bytes: tar entries sorted, mtime 0, uid/gid 0, no user names, gzip
header without a name or time. So a second push of the same version has the same digest.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import re
import tarfile
from collections.abc import Mapping
from typing import Any

import msgspec

from edgepub.shared.engine_config import Engine, EngineConfig, Resources, cpu_cores
from edgepub.shared.schemas import encode_json

GIB = 1024**3
DEFAULT_CPUS = 1.0
DEFAULT_MEMORY = "1Gi"
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # fullmatch: "$" would take "key\n"


class ChartInput(msgspec.Struct, frozen=True, kw_only=True):
    pipeline: str
    version: str  # chart version: 0.0.1-<pipeline version uuid>
    app_version: str  # the pipeline version uuid
    registry: str  # host[:port] the edge pulls from
    pipeline_url: str
    image: str  # the engine (edge agent) image
    engine_config: EngineConfig  # decoded, so within the limits (shared/engine_config.py)
    models_size: int  # bytes of all model files: sizes the persistent volume


class Chart(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: str
    files: dict[str, str]  # path inside the chart directory -> text
    metadata: dict[str, str]  # Chart.yaml as a dict: Helm's OCI config blob

    def config_json(self) -> bytes:
        return encode_json(self.metadata)

    def tgz(self) -> bytes:
        return package(self.name, self.files)


# --- values ----------------------------------------------------------------------------


def _cpu(value: int | float | str) -> int | float | str:
    # Whole numbers as whole numbers ("cpu: 2"); Kubernetes CPU strings ("500m") as given.
    if isinstance(value, str):
        return value
    return int(value) if value == int(value) else value


def engine_resources(engine_config: EngineConfig) -> dict[str, Any]:
    """``engine.resources`` for the values: each of limits and requests gets a cpu (its
    own, else ``engine.cpu``, else 1) and a memory (its own, else 1Gi)."""
    engine = engine_config.engine or Engine()
    cpus: int | float | str = DEFAULT_CPUS if engine.cpu is None else engine.cpu
    given = engine.resources
    out: dict[str, Any] = {}
    for kind in ("limits", "requests"):
        part = (getattr(given, kind) if given else None) or Resources()
        out[kind] = {
            "cpu": _cpu(cpus if part.cpu is None else part.cpu),
            "memory": part.memory or DEFAULT_MEMORY,
        }
    return out


def config_cpus(engine_config: EngineConfig) -> int:
    """CONFIG_CPUS: onnxruntime threads, a whole number of at least 1 (and, the config
    being decoded, at most the edge's 1024)."""
    engine = engine_config.engine or Engine()
    cpus = DEFAULT_CPUS if engine.cpu is None else cpu_cores(engine.cpu)
    return max(1, math.ceil(cpus))


def replicas(engine_config: EngineConfig) -> int:
    engine = engine_config.engine or Engine()
    return engine.replicas or 1


def persistence_size(models_size: int) -> str:
    """Room for the cached pipeline twice (an upgrade pulls beside the old one) + 1 GiB of
    local inference log and credentials."""
    return f"{max(1, math.ceil((2 * models_size + GIB) / GIB))}Gi"


def values(spec: ChartInput) -> dict[str, Any]:
    return {
        "ociRegistry": {"registry": spec.registry, "username": "", "password": ""},
        "edgeBundle": "",
        "pipelineUrl": spec.pipeline_url,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "replicaCount": replicas(spec.engine_config),
        "configCpus": config_cpus(spec.engine_config),
        "engine": {"resources": engine_resources(spec.engine_config)},
        "persistence": {"size": persistence_size(spec.models_size), "storageClass": ""},
    }


# --- a small, safe YAML writer (values are ours: dicts of scalars) -----------------------


def _scalar(value: Any) -> str:
    # JSON scalars are YAML scalars; strings are always double-quoted, so "1.0" stays text.
    return json.dumps(value)


def to_yaml(data: Mapping[str, Any], indent: int = 0) -> str:
    lines: list[str] = []
    pad = " " * indent
    for key, value in data.items():
        if not _KEY.fullmatch(key):
            raise ValueError(f"{key!r} cannot be a plain YAML key here")
        if isinstance(value, Mapping) and value:
            lines.append(f"{pad}{key}:")
            lines.append(to_yaml(value, indent + 2).rstrip("\n"))
        elif isinstance(value, Mapping):
            lines.append(f"{pad}{key}: {{}}")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(lines) + "\n"


# --- the chart ---------------------------------------------------------------------------


def build(spec: ChartInput) -> Chart:
    description = f"edgepub edge deployment of pipeline {spec.pipeline}"
    metadata = {
        "apiVersion": "v2",
        "name": spec.pipeline,
        "description": description,
        "type": "application",
        "version": spec.version,
        "appVersion": spec.app_version,
    }
    header = (
        f"# Values for {description}.\n"
        "# Set the registry credentials (and edgeBundle, for observability) at install time:\n"
        "#   --set ociRegistry.username=$OCI_USERNAME --set ociRegistry.password=$OCI_PASSWORD\n"
    )
    files = {
        "Chart.yaml": to_yaml(metadata),
        "values.yaml": header + to_yaml(values(spec)),
        **TEMPLATES,
    }
    return Chart(name=spec.pipeline, version=spec.version, files=files, metadata=metadata)


def package(name: str, files: Mapping[str, str]) -> bytes:
    """``<name>/<path>`` entries, sorted, with every varying header field fixed."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(files):
            data = files[path].encode()
            info = tarfile.TarInfo(f"{name}/{path}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def unpack(tgz: bytes) -> dict[str, str]:
    """The files of a packaged chart (path -> text); for tests and for reading back."""
    out: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        for member in tar.getmembers():
            f = tar.extractfile(member)
            if f is not None:
                out[member.name] = f.read().decode()
    return out


# Helm templates, written out whole so they read as what Kubernetes gets. Names derive from
# the release so two pipelines can share a namespace; the Service is ``engine-svc`` because
# the seed's instructions port-forward ``svc/engine-svc``.

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ printf "%s-engine" .Release.Name | trunc 63 }}
  labels:
    app.kubernetes.io/name: {{ .Chart.Name | trunc 63 | trimSuffix "-" | quote }}
    app.kubernetes.io/instance: {{ .Release.Name | quote }}
    app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
    app.kubernetes.io/component: engine
spec:
  replicas: {{ .Values.replicaCount }}
  # The volume is ReadWriteOnce: the old pod lets go of it before the new one starts.
  strategy:
    type: Recreate
  selector:
    matchLabels:
      app.kubernetes.io/instance: {{ .Release.Name | quote }}
      app.kubernetes.io/component: engine
  template:
    metadata:
      labels:
        app.kubernetes.io/instance: {{ .Release.Name | quote }}
        app.kubernetes.io/component: engine
    spec:
      containers:
        - name: engine
          image: {{ .Values.image | quote }}
          imagePullPolicy: {{ .Values.imagePullPolicy | quote }}
          ports:
            - name: http
              containerPort: 8080
              protocol: TCP
          env:
            - name: PIPELINE_URL
              value: {{ .Values.pipelineUrl | quote }}
            - name: OCI_REGISTRY
              value: {{ .Values.ociRegistry.registry | quote }}
            - name: OCI_USERNAME
              valueFrom:
                secretKeyRef:
                  name: {{ printf "%s-engine" .Release.Name | trunc 63 }}
                  key: ociUsername
            - name: OCI_PASSWORD
              valueFrom:
                secretKeyRef:
                  name: {{ printf "%s-engine" .Release.Name | trunc 63 }}
                  key: ociPassword
            {{- if .Values.edgeBundle }}
            - name: EDGE_BUNDLE
              valueFrom:
                secretKeyRef:
                  name: {{ printf "%s-engine" .Release.Name | trunc 63 }}
                  key: edgeBundle
            {{- end }}
            - name: CONFIG_CPUS
              value: {{ .Values.configCpus | quote }}
          readinessProbe:
            httpGet:
              path: /v2/health/ready
              port: http
            periodSeconds: 5
            failureThreshold: 3
          resources:
            {{- toYaml .Values.engine.resources | nindent 12 }}
          volumeMounts:
            - name: persist
              mountPath: /persist
      volumes:
        - name: persist
          persistentVolumeClaim:
            claimName: {{ printf "%s-persist" .Release.Name | trunc 63 }}
"""

SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: engine-svc
  labels:
    app.kubernetes.io/name: {{ .Chart.Name | trunc 63 | trimSuffix "-" | quote }}
    app.kubernetes.io/instance: {{ .Release.Name | quote }}
    app.kubernetes.io/component: engine
spec:
  type: ClusterIP
  selector:
    app.kubernetes.io/instance: {{ .Release.Name | quote }}
    app.kubernetes.io/component: engine
  ports:
    - name: http
      port: 8080
      targetPort: http
      protocol: TCP
"""

PVC = """\
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ printf "%s-persist" .Release.Name | trunc 63 }}
  labels:
    app.kubernetes.io/name: {{ .Chart.Name | trunc 63 | trimSuffix "-" | quote }}
    app.kubernetes.io/instance: {{ .Release.Name | quote }}
    app.kubernetes.io/component: engine
spec:
  accessModes:
    - ReadWriteOnce
  {{- if .Values.persistence.storageClass }}
  storageClassName: {{ .Values.persistence.storageClass | quote }}
  {{- end }}
  resources:
    requests:
      storage: {{ .Values.persistence.size | quote }}
"""

SECRET = """\
apiVersion: v1
kind: Secret
metadata:
  name: {{ printf "%s-engine" .Release.Name | trunc 63 }}
  labels:
    app.kubernetes.io/name: {{ .Chart.Name | trunc 63 | trimSuffix "-" | quote }}
    app.kubernetes.io/instance: {{ .Release.Name | quote }}
    app.kubernetes.io/component: engine
type: Opaque
stringData:
  ociUsername: {{ .Values.ociRegistry.username | quote }}
  ociPassword: {{ .Values.ociRegistry.password | quote }}
  edgeBundle: {{ .Values.edgeBundle | quote }}
"""

NOTES = """\
Pipeline {{ .Chart.Name }} version {{ .Chart.AppVersion }} is being deployed.
Inference: kubectl port-forward svc/engine-svc -n {{ .Release.Namespace }} 8080
"""

TEMPLATES = {
    "templates/deployment.yaml": DEPLOYMENT,
    "templates/service.yaml": SERVICE,
    "templates/pvc.yaml": PVC,
    "templates/secret.yaml": SECRET,
    "templates/NOTES.txt": NOTES,
}
