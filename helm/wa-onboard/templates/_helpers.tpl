{{/* Chart name. */}}
{{- define "wa-onboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name (release-based, at most 63 characters). */}}
{{- define "wa-onboard.fullname" -}}
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

{{- define "wa-onboard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wa-onboard.labels" -}}
helm.sh/chart: {{ include "wa-onboard.chart" . }}
{{ include "wa-onboard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "wa-onboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wa-onboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "wa-onboard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wa-onboard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the encryption key, database URL and API key. */}}
{{- define "wa-onboard.secretName" -}}
{{- if .Values.secret.existingSecret }}
{{- .Values.secret.existingSecret }}
{{- else }}
{{- include "wa-onboard.fullname" . }}
{{- end }}
{{- end }}

{{/* Whether this release creates its own Secret (there is something to put in it). */}}
{{- define "wa-onboard.createSecret" -}}
{{- if and (not .Values.secret.existingSecret) (or .Values.secret.encryptionKey .Values.database.url (and .Values.bootstrapTenant.enabled .Values.secret.apiKey)) }}true{{- end }}
{{- end }}

{{/* Base URL providers call back on. */}}
{{- define "wa-onboard.publicWebhookUrl" -}}
{{- if .Values.publicWebhookUrl }}
{{- .Values.publicWebhookUrl }}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts }}
{{- $host := (first .Values.ingress.hosts).host }}
{{- $https := false }}
{{- range .Values.ingress.tls }}{{ if has $host .hosts }}{{ $https = true }}{{ end }}{{ end }}
{{- printf "%s://%s" (ternary "https" "http" $https) $host }}
{{- end }}
{{- end }}

{{/*
Refuses configurations that cannot work, with a message saying what to change. Included by
every template that depends on it (Helm stops at the first fail).
*/}}
{{- define "wa-onboard.validate" -}}
{{- $driver := .Values.database.driver }}
{{- if eq $driver "sqlite" }}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail (printf "replicaCount=%d needs PostgreSQL: SQLite is a single-process store. Set database.driver=postgres with database.url (or secret.existingSecret), or keep replicaCount=1 (see values-ha-postgres.yaml)." (int .Values.replicaCount)) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- fail "autoscaling.enabled=true needs PostgreSQL: SQLite is a single-process store. Set database.driver=postgres with database.url (or secret.existingSecret), or disable autoscaling (see values-ha-postgres.yaml)." }}
{{- end }}
{{- if and .Values.database.url (not (hasPrefix "sqlite:" .Values.database.url)) }}
{{- fail "database.url must start with sqlite: when database.driver=sqlite (or set database.driver=postgres)." }}
{{- end }}
{{- else if eq $driver "postgres" }}
{{- if and (not .Values.secret.existingSecret) (not .Values.database.url) }}
{{- fail "database.driver=postgres needs database.url (postgres://...) or secret.existingSecret holding it." }}
{{- end }}
{{- if and .Values.database.url (not (or (hasPrefix "postgres://" .Values.database.url) (hasPrefix "postgresql://" .Values.database.url))) }}
{{- fail "database.url must start with postgres:// or postgresql:// when database.driver=postgres." }}
{{- end }}
{{- if and (not .Values.secret.existingSecret) (not .Values.secret.encryptionKey) }}
{{- fail "database.driver=postgres needs secret.encryptionKey (or secret.existingSecret): every replica must decrypt with the same key." }}
{{- end }}
{{- else }}
{{- fail (printf "database.driver must be sqlite or postgres, not %q." $driver) }}
{{- end }}
{{- if and .Values.bootstrapTenant.enabled (not .Values.secret.existingSecret) (not .Values.secret.apiKey) }}
{{- fail "bootstrapTenant.enabled=true needs secret.apiKey (starting with wao_) or secret.existingSecret holding it." }}
{{- end }}
{{- if and .Values.secret.apiKey (not (hasPrefix "wao_" .Values.secret.apiKey)) }}
{{- fail "secret.apiKey must start with wao_." }}
{{- end }}
{{- end }}

{{/* The config file: chart-managed settings, then .Values.config merged over them. */}}
{{- define "wa-onboard.config" -}}
{{- /* Listen addresses, data dir and log format come from the environment (deployment.yaml). */}}
{{- /* The operator console (GET / on the gRPC port): off unless asked for, as in production. */}}
{{- $server := dict "console" .Values.console.enabled }}
{{- with include "wa-onboard.publicWebhookUrl" . }}
{{- $_ := set $server "public_webhook_url" . }}
{{- end }}
{{- $cfg := dict
  "security" (dict "encryption_key_id" .Values.secret.encryptionKeyId)
  "dev" (dict "enabled" (or .Values.bootstrapTenant.enabled .Values.sandbox.enabled) "tenant" .Values.bootstrapTenant.name)
  "sandbox" (dict "enabled" .Values.sandbox.enabled) }}
{{- if $server }}
{{- $_ := set $cfg "server" $server }}
{{- end }}
{{- $merged := mustMergeOverwrite $cfg (deepCopy .Values.config) }}
{{- include "wa-onboard.integers" $merged }}
{{- toToml $merged }}
{{- end }}

{{/*
Helm reads every YAML number as a float64, and toToml would write `32.0` where the service
expects an integer: turns whole floats back into integers, in place, through nested maps and
lists.
*/}}
{{- define "wa-onboard.integers" -}}
{{- $m := . }}
{{- range $k, $v := $m }}
{{- if and (kindIs "float64" $v) (eq $v (float64 (int64 $v))) }}
{{- $_ := set $m $k (int64 $v) }}
{{- else if kindIs "map" $v }}
{{- include "wa-onboard.integers" $v }}
{{- else if kindIs "slice" $v }}
{{- $out := list }}
{{- range $v }}
{{- if and (kindIs "float64" .) (eq . (float64 (int64 .))) }}
{{- $out = append $out (int64 .) }}
{{- else }}
{{- if kindIs "map" . }}{{ include "wa-onboard.integers" . }}{{ end }}
{{- $out = append $out . }}
{{- end }}
{{- end }}
{{- $_ := set $m $k $out }}
{{- end }}
{{- end }}
{{- end }}
