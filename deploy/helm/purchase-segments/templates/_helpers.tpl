{{/* Names and labels. */}}
{{- define "ps.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ps.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "ps.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "ps.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ps.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ps.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ps.labels" -}}
{{ include "ps.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ps.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{/* Secret names: the chart's own, or the one the user manages. */}}
{{- define "ps.apiSecret" -}}
{{- printf "%s-api" (include "ps.fullname" .) -}}
{{- end -}}
{{- define "ps.redisSecret" -}}
{{- default (include "ps.apiSecret" .) .Values.redis.existingSecret -}}
{{- end -}}
{{- define "ps.tokenSecret" -}}
{{- default (include "ps.apiSecret" .) .Values.apiToken.existingSecret -}}
{{- end -}}
{{- define "ps.hasToken" -}}
{{- if or .Values.apiToken.value .Values.apiToken.existingSecret }}true{{ end -}}
{{- end -}}
{{- define "ps.kafkaSecret" -}}
{{- default (printf "%s-kafka" (include "ps.fullname" .)) .Values.kafka.security.existingSecret -}}
{{- end -}}
{{- define "ps.kafkaSecured" -}}
{{- if ne .Values.kafka.security.protocol "PLAINTEXT" }}true{{ end -}}
{{- end -}}
{{- define "ps.kafkaTls" -}}
{{- if has .Values.kafka.security.protocol (list "SSL" "SASL_SSL") }}true{{ end -}}
{{- end -}}
{{- define "ps.kafkaClientCert" -}}
{{- if and (include "ps.kafkaTls" .) (or .Values.kafka.security.clientCert .Values.kafka.security.mutualTls) }}true{{ end -}}
{{- end -}}
{{- define "ps.redisTlsSecret" -}}
{{- default (printf "%s-redis-tls" (include "ps.fullname" .)) .Values.redis.tls.existingSecret -}}
{{- end -}}
{{- define "ps.redisTlsFiles" -}}
{{- with .Values.redis.tls }}{{ if or .caCert .clientCert .existingSecret }}true{{ end }}{{ end -}}
{{- end -}}
{{- define "ps.redisCa" -}}
{{- with .Values.redis.tls }}{{ if or .caCert .existingSecret }}true{{ end }}{{ end -}}
{{- end -}}
{{- define "ps.redisClientCert" -}}
{{- with .Values.redis.tls }}{{ if or .clientCert (and .existingSecret .mutualTls) }}true{{ end }}{{ end -}}
{{- end -}}
{{- define "ps.kafkaSasl" -}}
{{- if has .Values.kafka.security.protocol (list "SASL_PLAINTEXT" "SASL_SSL") }}true{{ end -}}
{{- end -}}

{{/* Checks that stop a broken release before anything is applied. */}}
{{- define "ps.checks" -}}
{{- if gt (int .Values.worker.replicas) (int .Values.settings.partitions) -}}
{{- fail (printf "worker.replicas (%d) is more than settings.partitions (%d): a worker beyond the partition count owns nothing (docs/deploy.md)" (int .Values.worker.replicas) (int .Values.settings.partitions)) -}}
{{- end -}}
{{- if not (has .Values.kafka.security.protocol (list "PLAINTEXT" "SSL" "SASL_PLAINTEXT" "SASL_SSL")) -}}
{{- fail (printf "kafka.security.protocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, got %q" .Values.kafka.security.protocol) -}}
{{- end -}}
{{- if not (has .Values.settings.clock (list "wall" "event")) -}}
{{- fail (printf "settings.clock must be wall or event, got %q" .Values.settings.clock) -}}
{{- end -}}
{{- range $name, $_ := .Values.settings.extra -}}
{{- if not (hasPrefix "SEGMENTS_" $name) -}}
{{- fail (printf "settings.extra names SEGMENTS_* settings only, got %q" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Environment of both processes besides the settings ConfigMap: the secrets. */}}
{{- define "ps.secretEnv" -}}
- name: SEGMENTS_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "ps.redisSecret" . }}
      key: redis-url
{{- if include "ps.hasToken" . }}
- name: SEGMENTS_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "ps.tokenSecret" . }}
      key: api-token
{{- end }}
{{- if include "ps.kafkaSasl" . }}
- name: SEGMENTS_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ include "ps.kafkaSecret" . }}
      key: sasl-username
- name: SEGMENTS_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "ps.kafkaSecret" . }}
      key: sasl-password
{{- end }}
{{- end -}}

{{/* Volumes and mounts of both processes: the rule file, Kafka's and Redis's TLS files. */}}
{{- define "ps.volumes" -}}
- name: rules
  configMap:
    name: {{ include "ps.fullname" . }}-rules
{{- if include "ps.kafkaTls" . }}
- name: kafka-tls
  secret:
    secretName: {{ include "ps.kafkaSecret" . }}
{{- end }}
{{- if include "ps.redisTlsFiles" . }}
- name: redis-tls
  secret:
    secretName: {{ include "ps.redisTlsSecret" . }}
{{- end }}
{{- end -}}

{{- define "ps.volumeMounts" -}}
- name: rules
  mountPath: /etc/segments/rules
  readOnly: true
{{- if include "ps.kafkaTls" . }}
- name: kafka-tls
  mountPath: /etc/segments/kafka
  readOnly: true
{{- end }}
{{- if include "ps.redisTlsFiles" . }}
- name: redis-tls
  mountPath: /etc/segments/redis
  readOnly: true
{{- end }}
{{- end -}}

{{/* Pod annotations that roll the pods when what they read at start changes. */}}
{{- define "ps.checksums" -}}
checksum/settings: {{ include (print .Template.BasePath "/configmap-settings.yaml") . | sha256sum }}
checksum/rules: {{ include (print .Template.BasePath "/configmap-rules.yaml") . | sha256sum }}
checksum/secrets: {{ include (print .Template.BasePath "/secrets.yaml") . | sha256sum }}
{{- end -}}

{{- define "ps.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 6
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 3
{{- end -}}
