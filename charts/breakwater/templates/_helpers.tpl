{{/* Standard labels on every object of the chart. */}}
{{- define "breakwater.labels" -}}
app.kubernetes.io/name: {{ include "breakwater.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: breakwater
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The chart's name, "breakwater" unless overridden. */}}
{{- define "breakwater.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Object names: <release>-breakwater, or the release name if it already says breakwater. */}}
{{- define "breakwater.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "breakwater.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the operator's pods (stable across upgrades). */}}
{{- define "breakwater.selectorLabels" -}}
app.kubernetes.io/name: {{ include "breakwater.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The operator's ServiceAccount. */}}
{{- define "breakwater.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "breakwater.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference: registry/repository:tag, the tag defaulting to appVersion.
     Call with (dict "image" .Values.x.image "root" .). */}}
{{- define "breakwater.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- if .root.Values.imageRegistry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .root.Values.imageRegistry) .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The name of the MutatingWebhookConfiguration (cluster-scoped, so it carries the release). */}}
{{- define "breakwater.webhookName" -}}
{{- printf "%s-injector" (include "breakwater.fullname" .) -}}
{{- end -}}

{{/* The Secret with the webhook's and the config API's certificates (ca.crt, tls.crt, tls.key):
     written by the operator, or by cert-manager when certManager.enabled. */}}
{{- define "breakwater.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "breakwater.fullname" .) -}}
{{- end -}}

{{/* Namespaces the webhook never sees. */}}
{{- define "breakwater.excludedNamespaces" -}}
{{- $list := list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace -}}
{{- concat $list .Values.webhook.excludeNamespaces | uniq | toJson -}}
{{- end -}}

{{/*
Where the operator serves /debug/snapshots: the pod's address for kubectl breakwater with
diagnostics.enabled, else loopback. IPv6 addresses get brackets.
*/}}
{{- define "breakwater.debugAddress" -}}
{{- $ip := ternary .Values.operator.bindAddresses.debug "127.0.0.1" .Values.diagnostics.enabled -}}
{{- if contains ":" $ip -}}
[{{ $ip }}]:{{ .Values.operator.ports.debug }}
{{- else -}}
{{ $ip }}:{{ .Values.operator.ports.debug }}
{{- end -}}
{{- end }}
