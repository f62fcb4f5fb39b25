{{/*
The release's base name: fullnameOverride, else the release name. Every object's name and
the NATS pods' DNS names (which the rendered config must use) are built from it.
*/}}
{{- define "edgepub.fullname" -}}
{{- $name := default .Release.Name .Values.fullnameOverride -}}
{{- if gt (len $name) 40 -}}
{{- fail (printf "the name %q is longer than 40 characters (StatefulSet pod names and DNS labels must stay within 63): set fullnameOverride" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{- define "edgepub.natsName" -}}{{ include "edgepub.fullname" . }}-nats{{- end -}}
{{- define "edgepub.natsHeadless" -}}{{ include "edgepub.fullname" . }}-nats-headless{{- end -}}
{{- define "edgepub.registryName" -}}{{ include "edgepub.fullname" . }}-registry{{- end -}}
{{- define "edgepub.dashboardName" -}}{{ include "edgepub.fullname" . }}-dashboard{{- end -}}

{{/* node i's DNS name, as --nodes names it: $ = (list root i) */}}
{{- define "edgepub.natsHost" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%d.%s.%s.svc.cluster.local" (include "edgepub.natsName" $root) (index . 1) (include "edgepub.natsHeadless" $root) $root.Release.Namespace -}}
{{- end -}}

{{/* the --nodes value for this release: every NATS pod's DNS name */}}
{{- define "edgepub.renderNodes" -}}
{{- $hosts := list -}}
{{- range $i := until (int .Values.nats.replicas) -}}
{{- $hosts = append $hosts (include "edgepub.natsHost" (list $ $i)) -}}
{{- end -}}
{{- join "," $hosts -}}
{{- end -}}

{{- define "edgepub.registryAddress" -}}
{{- printf "%s.%s.svc.cluster.local:%d" (include "edgepub.registryName" .) .Release.Namespace (int .Values.registry.port) -}}
{{- end -}}

{{- define "edgepub.opscenterHost" -}}
{{- if .Values.opscenterHost -}}
{{- .Values.opscenterHost -}}
{{- else if .Values.ingress.enabled -}}
{{- printf "%s%s" .Values.ingress.host .Values.ingress.path -}}
{{- else -}}
ws://EDGE_ADDRESS:{{ .Values.nats.ports.edge }}
{{- end -}}
{{- end -}}

{{/* the render command for this release (NOTES.txt prints it; README.md documents it) */}}
{{- define "edgepub.renderCommand" -}}
python -m edgepub.services.stack render --out edgepub-config --nodes {{ include "edgepub.renderNodes" . }} --registry {{ include "edgepub.registryAddress" . }} --opscenter-host {{ include "edgepub.opscenterHost" . }} --config-dir {{ .Values.config.mountPath }} --dashboard-port {{ .Values.dashboard.port }}
{{- end -}}

{{- define "edgepub.secretName" -}}
{{- required "config.secretName: the Secret made from the rendered config directory (see the chart's README)" .Values.config.secretName -}}
{{- end -}}

{{- define "edgepub.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: edgepub
{{- end -}}

{{/* selector labels of one component: $ = (list root component) */}}
{{- define "edgepub.selectorLabels" -}}
app.kubernetes.io/name: {{ (index . 0).Chart.Name }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* image reference: $ = (list root imageValues) */}}
{{- define "edgepub.image" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}

{{/*
An env value as the service reads it: whole numbers without an exponent (YAML numbers reach
templates as float64, and 5368709120 would print as 5.36870912e+09), booleans as true/false.
*/}}
{{- define "edgepub.envValue" -}}
{{- if kindIs "float64" . -}}
{{- if eq (float64 (int64 .)) . -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/*
The names each service's env file sets: the run verb puts the file's environment over the
pod's, so a value under one of these names would be silently ignored. Refused instead.
*/}}
{{- define "edgepub.fileEnvNames" -}}
EDGEPUB_NATS_URL EDGEPUB_NATS_USER EDGEPUB_NATS_PASSWORD EDGEPUB_LOG_FORMAT PYTHONUNBUFFERED EDGEPUB_REGISTRY EDGEPUB_REGISTRY_REPOSITORY EDGEPUB_REGISTRY_INSECURE EDGEPUB_REGISTRY_USERNAME EDGEPUB_REGISTRY_PASSWORD EDGEPUB_REPLICAS EDGEPUB_CACHE_DIR EDGEPUB_AUTH_ISSUER_SEED EDGEPUB_AUTH_XKEY_SEED EDGEPUB_SYSTEM_USER_SEED EDGEPUB_OPSCENTER_HOST EDGEPUB_DASHBOARD_HOST EDGEPUB_DASHBOARD_PORT
{{- end -}}
