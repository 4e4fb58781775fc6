{{/*
Names and labels. Selector labels pick a component's pods and never change after install (a Deployment's
selector is immutable); the other labels may change with every chart version.
*/}}

{{- define "agentscale.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name when it already contains the chart name. */}}
{{- define "agentscale.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "agentscale.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Cluster-scoped names carry the namespace: two releases of the same name in two namespaces never collide. */}}
{{- define "agentscale.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "agentscale.fullname" .) }}
{{- end }}

{{- define "agentscale.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentscale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "agentscale.labels" -}}
helm.sh/chart: {{ include "agentscale.chart" . }}
{{ include "agentscale.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentscale
{{- end }}

{{/* Per component: pass (dict "ctx" $ "component" "operator"). */}}
{{- define "agentscale.componentSelectorLabels" -}}
{{ include "agentscale.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "agentscale.componentLabels" -}}
{{ include "agentscale.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "agentscale.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agentscale.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "agentscale.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "agentscale.redisName" -}}
{{- printf "%s-redis" (include "agentscale.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
