{{/*
Helpers shared by the gateway-*, publisher-* and migrate templates.
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "ryze-events.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified release name, at most 63 characters minus room for the longest component
suffix ("-gateway-admin" is 14), so every derived name stays a valid DNS label.
*/}}
{{- define "ryze-events.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 49 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 49 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 49 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Component names. */}}
{{- define "ryze-events.gateway.fullname" -}}
{{- printf "%s-gateway" (include "ryze-events.fullname" .) }}
{{- end }}
{{- define "ryze-events.gateway.adminName" -}}
{{- printf "%s-gateway-admin" (include "ryze-events.fullname" .) }}
{{- end }}
{{- define "ryze-events.publisher.fullname" -}}
{{- printf "%s-publisher" (include "ryze-events.fullname" .) }}
{{- end }}
{{- define "ryze-events.migrate.fullname" -}}
{{- printf "%s-migrate" (include "ryze-events.fullname" .) }}
{{- end }}

{{/* chart label value: name-version. */}}
{{- define "ryze-events.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: name + instance + component, nothing else. They are immutable on a
Deployment, so they never carry helm.sh/chart or the version.
Call with (dict "ctx" $ "component" "gateway").
*/}}
{{- define "ryze-events.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ryze-events.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Full label set. Call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "ryze-events.labels" -}}
helm.sh/chart: {{ include "ryze-events.chart" .ctx }}
{{ include "ryze-events.selectorLabels" . }}
app.kubernetes.io/version: {{ include "ryze-events.imageTag" .ctx | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: ryze-events
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Image tag: image.tag, or appVersion when empty. */}}
{{- define "ryze-events.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* Image reference: repository:tag[@digest]. */}}
{{- define "ryze-events.image" -}}
{{- $ref := printf "%s:%s" .Values.image.repository (include "ryze-events.imageTag" .) }}
{{- if .Values.image.digest }}
{{- $ref = printf "%s@%s" $ref .Values.image.digest }}
{{- end }}
{{- $ref }}
{{- end }}

{{/* Name of the ServiceAccount the pods run as. */}}
{{- define "ryze-events.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ryze-events.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The existing Secret every secret env var references; rendering fails without it. */}}
{{- define "ryze-events.secretName" -}}
{{- required "secrets.existingSecret is required: create a Secret with the keys listed in values.yaml (secrets.keys) and pass its name; the chart never takes secret values" .Values.secrets.existingSecret }}
{{- end }}

{{/* PUBLIC_BASE_URL; rendering fails without it. */}}
{{- define "ryze-events.publicBaseUrl" -}}
{{- required "config.publicBaseUrl is required (PUBLIC_BASE_URL, e.g. https://events.example.com)" .Values.config.publicBaseUrl }}
{{- end }}

{{/*
One env entry taken from the existing Secret.
Call with (dict "ctx" $ "env" "DATABASE_URL" "key" .Values.secrets.keys.databaseUrl "optional" false).
*/}}
{{- define "ryze-events.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ include "ryze-events.secretName" .ctx }}
      key: {{ .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end }}

{{/*
extraEnv, refusing a literal value for any variable that must come from the Secret.
Call with (dict "component" "gateway" "env" .Values.gateway.extraEnv).
*/}}
{{- define "ryze-events.extraEnv" -}}
{{- $secretNames := list "DATABASE_URL" "REDIS_URL" "PUBLISHER_API_KEY" "ENCRYPTION_KEY" "REGION_REDIS_URLS" }}
{{- range .env }}
{{- if and (has .name $secretNames) (hasKey . "value") }}
{{- fail (printf "%s.extraEnv: %s carries a secret and must come from secrets.existingSecret, not a literal value" $.component .name) }}
{{- end }}
{{- end }}
{{- toYaml .env }}
{{- end }}

{{/*
terminationGracePeriodSeconds = preStop sleep + SHUTDOWN_TIMEOUT + margin, so the kubelet
never SIGKILLs a pod that is still draining within its configured bound.
Call with the component's `shutdown` block.
*/}}
{{- define "ryze-events.terminationGracePeriodSeconds" -}}
{{- add (int64 .preStopSleepSeconds) (int64 .timeoutSeconds) (int64 .graceMarginSeconds) }}
{{- end }}

{{/* lifecycle.preStop: native sleep action, or exec `sleep` from the image. */}}
{{- define "ryze-events.preStop" -}}
preStop:
  {{- if .nativeSleepAction }}
  sleep:
    seconds: {{ int64 .preStopSleepSeconds }}
  {{- else }}
  exec:
    command: ["sleep", {{ int64 .preStopSleepSeconds | toString | quote }}]
  {{- end }}
{{- end }}

{{/*
Zone and node spread constraints with the component's selector labels.
Call with (dict "ctx" $ "component" "gateway" "spread" .Values.gateway.topologySpread "extra" .Values.gateway.topologySpreadConstraints).
*/}}
{{- define "ryze-events.topologySpreadConstraints" -}}
{{- if or .spread.enabled .extra -}}
topologySpreadConstraints:
{{- if .spread.enabled }}
{{- range list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
  - maxSkew: {{ int64 $.spread.maxSkew }}
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ $.spread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "ryze-events.selectorLabels" (dict "ctx" $.ctx "component" $.component) | nindent 8 }}
{{- end }}
{{- end }}
{{- with .extra }}
{{ toYaml . | indent 2 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Autoscaling sanity checks, run from the gateway Deployment:
- HPA and KEDA both create an HPA for the Deployment: only one may be enabled;
- the drain of a pod at the target load must fit in SHUTDOWN_TIMEOUT:
  ceil(targetConnectionsPerPod / drainRate) <= gateway.shutdown.timeoutSeconds.
*/}}
{{- define "ryze-events.gateway.autoscalingChecks" -}}
{{- $as := .Values.gateway.autoscaling }}
{{- if and $as.hpa.enabled $as.keda.enabled }}
{{- fail "gateway.autoscaling: enable either hpa or keda, not both (KEDA creates its own HPA)" }}
{{- end }}
{{- if gt (int64 $as.minReplicas) (int64 $as.maxReplicas) }}
{{- fail "gateway.autoscaling.minReplicas must not exceed maxReplicas" }}
{{- end }}
{{- if or $as.hpa.enabled $as.keda.enabled }}
{{- $target := int64 $as.targetConnectionsPerPod }}
{{- $rate := int64 .Values.gateway.config.drainRate }}
{{- $drain := div (sub (add $target $rate) 1) $rate }}
{{- if gt $drain (int64 .Values.gateway.shutdown.timeoutSeconds) }}
{{- fail (printf "gateway: draining targetConnectionsPerPod=%d at drainRate=%d/s takes %ds, more than shutdown.timeoutSeconds=%d; raise drainRate or timeoutSeconds, or lower the target" $target $rate $drain (int64 .Values.gateway.shutdown.timeoutSeconds)) }}
{{- end }}
{{- if gt $target (int64 .Values.gateway.config.maxConnections) }}
{{- fail "gateway.autoscaling.targetConnectionsPerPod must not exceed gateway.config.maxConnections" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Whether any autoscaler owns the gateway's replica count. */}}
{{- define "ryze-events.gateway.autoscaled" -}}
{{- if or .Values.gateway.autoscaling.hpa.enabled .Values.gateway.autoscaling.keda.enabled }}true{{ end }}
{{- end }}

{{/* Default KEDA query: the release's total open connections. */}}
{{- define "ryze-events.gateway.kedaQuery" -}}
{{- if .Values.gateway.autoscaling.keda.prometheus.query }}
{{- tpl .Values.gateway.autoscaling.keda.prometheus.query . }}
{{- else }}
{{- printf "sum(ryze_gateway_connections{namespace=\"%s\",service=\"%s\"})" .Release.Namespace (include "ryze-events.gateway.adminName" .) }}
{{- end }}
{{- end }}

{{/*
Redis TLS files (values redisTls), for both deployments: the env entries pointing at the
mounted files, the read-only mount, and the Secret volume. Each renders nothing when
redisTls.existingSecret is "". The files get fixed names (ca.crt, tls.crt, tls.key) whatever
their keys in the Secret.
*/}}
{{- define "ryze-events.redisTls.env" -}}
{{- $t := .Values.redisTls -}}
{{- $env := list -}}
{{- if $t.existingSecret -}}
{{- if ne (empty $t.keys.cert) (empty $t.keys.key) -}}
{{- fail "redisTls.keys.cert and redisTls.keys.key go together: mutual TLS needs both" -}}
{{- end -}}
{{- if and (empty $t.keys.ca) (empty $t.keys.cert) -}}
{{- fail "redisTls.existingSecret is set but redisTls.keys names no file (ca, or cert and key)" -}}
{{- end -}}
{{- if $t.keys.ca -}}
{{- $env = append $env (dict "name" "REDIS_TLS_CA_FILE" "value" (printf "%s/ca.crt" $t.mountPath)) -}}
{{- end -}}
{{- if $t.keys.cert -}}
{{- $env = append $env (dict "name" "REDIS_TLS_CERT_FILE" "value" (printf "%s/tls.crt" $t.mountPath)) -}}
{{- $env = append $env (dict "name" "REDIS_TLS_KEY_FILE" "value" (printf "%s/tls.key" $t.mountPath)) -}}
{{- end -}}
{{- end -}}
{{- with $env }}{{ toYaml . }}{{ end -}}
{{- end }}

{{- define "ryze-events.redisTls.volumeMount" -}}
{{- with .Values.redisTls -}}
{{- if .existingSecret -}}
- name: redis-tls
  mountPath: {{ .mountPath }}
  readOnly: true
{{- end -}}
{{- end -}}
{{- end }}

{{- define "ryze-events.redisTls.volume" -}}
{{- $t := .Values.redisTls -}}
{{- if $t.existingSecret -}}
{{- $items := list -}}
{{- if $t.keys.ca -}}
{{- $items = append $items (dict "key" $t.keys.ca "path" "ca.crt") -}}
{{- end -}}
{{- if $t.keys.cert -}}
{{- $items = append $items (dict "key" $t.keys.cert "path" "tls.crt") -}}
{{- $items = append $items (dict "key" $t.keys.key "path" "tls.key") -}}
{{- end -}}
{{- /* 0440 (288): readable by the pod's fsGroup, which the non-root user belongs to. */ -}}
{{- list (dict "name" "redis-tls" "secret" (dict "secretName" $t.existingSecret "defaultMode" 288 "items" $items)) | toYaml -}}
{{- end -}}
{{- end }}

{{/*
The Postgres CA bundle (postgresTls.caSecret): a volumeMount for the container and a volume
for the pod, both empty when no Secret is named. Call with the root context.
*/}}
{{- define "ryze-events.postgresCaMount" -}}
{{- if .Values.postgresTls.caSecret }}
- name: postgres-ca
  mountPath: {{ .Values.postgresTls.mountPath | quote }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "ryze-events.postgresCaVolume" -}}
{{- if .Values.postgresTls.caSecret }}
# The Postgres CA bundle, for DATABASE_URL's sslrootcert.
- name: postgres-ca
  secret:
    secretName: {{ .Values.postgresTls.caSecret | quote }}
    items:
      - key: {{ .Values.postgresTls.caKey | quote }}
        path: {{ .Values.postgresTls.caKey | quote }}
    defaultMode: 292  # 0444: readable by the non-root user
{{- end }}
{{- end }}
