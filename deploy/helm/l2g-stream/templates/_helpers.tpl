{{/* Chart name, truncated to the 63 characters Kubernetes allows in names. */}}
{{- define "l2g-stream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release name already contains the chart name. */}}
{{- define "l2g-stream.fullname" -}}
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

{{- define "l2g-stream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "l2g-stream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "l2g-stream.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "l2g-stream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: l2g-stream
{{- end }}

{{/* Secret holding the SASL credentials (created by the chart or existing). */}}
{{- define "l2g-stream.secretName" -}}
{{- default (printf "%s-kafka-auth" (include "l2g-stream.fullname" .)) .Values.kafkaAuth.existingSecret }}
{{- end }}

{{/* One env value as a string: maps and lists as JSON, everything else as text. */}}
{{- define "l2g-stream.envValue" -}}
{{- if or (kindIs "map" .) (kindIs "slice" .) }}{{ toJson . | quote }}{{ else }}{{ toString . | quote }}{{ end }}
{{- end }}

{{/* The video topic's partition count: the most workers that can share the ingest load. */}}
{{- define "l2g-stream.maxWorkers" -}}
{{- min (int .Values.keda.maxReplicaCount) (int .Values.kafkaTopics.partitions.video) }}
{{- end }}

{{/* The ingest lag (messages per worker) above which workers shed load; the service default when unset
(IngestSettings.lag_high_messages, kept equal by a test). */}}
{{- define "l2g-stream.lagHighMessages" -}}
{{- .Values.env.L2G_INGEST__LAG_HIGH_MESSAGES | default "50" }}
{{- end }}

{{/* Checks that fail the render early with a readable message. */}}
{{- define "l2g-stream.validate" -}}
{{- $protocol := .Values.env.L2G_KAFKA__SECURITY_PROTOCOL | default "PLAINTEXT" }}
{{- if and (hasPrefix "SASL" $protocol) (not .Values.kafkaAuth.enabled) }}
{{- fail "env.L2G_KAFKA__SECURITY_PROTOCOL is SASL_*: set kafkaAuth.enabled and the credentials" }}
{{- end }}
{{- if and .Values.kafkaAuth.enabled (not (hasPrefix "SASL" $protocol)) }}
{{- fail "kafkaAuth.enabled needs env.L2G_KAFKA__SECURITY_PROTOCOL=SASL_PLAINTEXT or SASL_SSL" }}
{{- end }}
{{- if and .Values.kafkaAuth.enabled (not .Values.env.L2G_KAFKA__SASL_MECHANISM) }}
{{- fail "kafkaAuth.enabled needs env.L2G_KAFKA__SASL_MECHANISM (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)" }}
{{- end }}
{{- if and .Values.keda.enabled (ge (int .Values.keda.lagThreshold) (int (include "l2g-stream.lagHighMessages" .))) }}
{{- fail "keda.lagThreshold must be below env.L2G_INGEST__LAG_HIGH_MESSAGES: KEDA has to add workers before they shed load (see deploy/README.md, Autoscaling and load shedding)" }}
{{- end }}
{{- if and (not .Values.keda.enabled) (gt (int .Values.replicaCount) (int .Values.kafkaTopics.partitions.video)) }}
{{- fail "replicaCount exceeds kafkaTopics.partitions.video: the extra workers would get no partition" }}
{{- end }}
{{- end }}
