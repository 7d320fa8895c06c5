{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "paraformer-asr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or <release> when it already contains the chart name. */}}
{{- define "paraformer-asr.fullname" -}}
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

{{/* Namespace of the release's objects (namespaceOverride for umbrella charts). */}}
{{- define "paraformer-asr.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* A derived name (<fullname>-<suffix>) that still fits in 63 characters. */}}
{{- define "paraformer-asr.suffixed" -}}
{{- $full := include "paraformer-asr.fullname" .root }}
{{- printf "%s-%s" ($full | trunc (int (sub 62 (len .suffix)))) .suffix | trimSuffix "-" }}
{{- end }}

{{- define "paraformer-asr.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every resource carries (without a component). */}}
{{- define "paraformer-asr.labels" -}}
helm.sh/chart: {{ include "paraformer-asr.chart" . }}
app.kubernetes.io/name: {{ include "paraformer-asr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: paraformer-asr
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector of the server pods. The component keeps the helm test pod out of the Services. */}}
{{- define "paraformer-asr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "paraformer-asr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{/* Labels of the server's resources: common labels + selector labels. */}}
{{- define "paraformer-asr.serverLabels" -}}
{{ include "paraformer-asr.labels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "paraformer-asr.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "paraformer-asr.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "paraformer-asr.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{/* "true" when probes go to the plaintext health-only port: kubelet gRPC probes speak neither
TLS nor bearer tokens. */}}
{{- define "paraformer-asr.useHealthPort" -}}
{{- if or .Values.tls.enabled .Values.auth.enabled }}true{{ end }}
{{- end }}

{{/* The port kubelet probes (and the helm test) check. */}}
{{- define "paraformer-asr.probePort" -}}
{{- if include "paraformer-asr.useHealthPort" . }}{{ .Values.server.healthPort }}{{ else }}{{ .Values.server.port }}{{ end }}
{{- end }}

{{/* The longest drain the server may do after SIGTERM. */}}
{{- define "paraformer-asr.drainSeconds" -}}
{{- $drain := int .Values.server.shutdownGraceSeconds }}
{{- if and (not (kindIs "invalid" .Values.server.streamGraceSeconds)) (gt (int .Values.server.streamGraceSeconds) $drain) }}
{{- $drain = int .Values.server.streamGraceSeconds }}
{{- end }}
{{- $drain }}
{{- end }}

{{/* terminationGracePeriodSeconds: preStop sleep + drain + 15 s unless given (and then checked). */}}
{{- define "paraformer-asr.terminationGracePeriodSeconds" -}}
{{- $needed := add (int .Values.server.preStopSleepSeconds) (int (include "paraformer-asr.drainSeconds" .)) }}
{{- if kindIs "invalid" .Values.server.terminationGracePeriodSeconds }}
{{- add $needed 15 }}
{{- else if le (int .Values.server.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "server.terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + the drain time (%d s), or the server is killed while it drains" (int .Values.server.terminationGracePeriodSeconds) $needed) }}
{{- else }}
{{- .Values.server.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Name of the Secret with the server certificate. */}}
{{- define "paraformer-asr.tlsSecretName" -}}
{{- if .Values.tls.existingSecret }}{{ .Values.tls.existingSecret }}{{ else }}{{ include "paraformer-asr.suffixed" (dict "root" . "suffix" "tls") }}{{ end }}
{{- end }}

{{/* Name of the Secret with the bearer tokens. */}}
{{- define "paraformer-asr.authSecretName" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecret }}{{ else }}{{ include "paraformer-asr.suffixed" (dict "root" . "suffix" "auth") }}{{ end }}
{{- end }}

{{/* Does the pod mount a model cache volume? Not when the models are baked into the image. */}}
{{- define "paraformer-asr.mountCache" -}}
{{- if or .Values.models.demo (ne .Values.models.provisioning "image") }}true{{ end }}
{{- end }}

{{/* Environment shared by the server and the fetch-models init container: where models are. */}}
{{- define "paraformer-asr.modelEnv" -}}
- name: HOME
  # The root filesystem is read-only; libraries that cache under ~ write to the /tmp volume.
  value: /tmp
- name: ASR_MODEL_CACHE_DIR
  value: {{ .Values.models.cache.mountPath | quote }}
- name: MODELSCOPE_CACHE
  value: {{ .Values.models.cache.mountPath | quote }}
- name: ASR_ASR_MODEL
  value: {{ .Values.models.asr | quote }}
- name: ASR_VAD_MODEL
  value: {{ .Values.models.vad | quote }}
- name: ASR_PUNC_MODEL
  value: {{ .Values.models.punc | quote }}
- name: ASR_ONLINE_MODEL
  value: {{ .Values.models.online | quote }}
- name: ASR_MODEL_REVISION
  value: {{ .Values.models.revision | quote }}
- name: ASR_DOWNLOAD_TIMEOUT_S
  value: {{ .Values.models.downloadTimeoutSeconds | quote }}
- name: ASR_LOG_LEVEL
  value: {{ .Values.server.logLevel | quote }}
- name: ASR_LOG_FORMAT
  value: {{ .Values.server.logFormat | quote }}
{{- end }}

{{/* Settings that the chart sets itself; server.config may not set them. The settings of the
optional features (pipelines, admin tokens, result cache) count only while the feature is on, so
that a server.config that set them before the chart had values for them keeps working. */}}
{{- define "paraformer-asr.managedEnv" -}}
HOME ASR_MODEL_CACHE_DIR MODELSCOPE_CACHE ASR_ASR_MODEL ASR_VAD_MODEL ASR_PUNC_MODEL ASR_ONLINE_MODEL ASR_MODEL_REVISION ASR_DOWNLOAD_TIMEOUT_S ASR_LOG_LEVEL ASR_LOG_FORMAT ASR_HOST ASR_PORT ASR_METRICS_PORT ASR_HEALTH_PORT ASR_DEVICE ASR_TORCH_THREADS ASR_VAD_PROCESSES ASR_STREAM_PROCESSES ASR_MODEL_PROCESSES ASR_IDLE_WORKER_PROCESSES ASR_SHUTDOWN_GRACE_S ASR_OFFLINE ASR_DEMO ASR_DEMO_DIR ASR_TLS_CERT_FILE ASR_TLS_KEY_FILE ASR_TLS_CLIENT_CA_FILE ASR_AUTH_TOKENS_FILE ASR_MAX_CONCURRENT_RPCS ASR_MAX_QUEUE_WAIT_SECONDS ASR_INFERENCE_NICE ASR_MAX_CONNECTION_AGE_S ASR_MAX_CONNECTION_AGE_GRACE_S ASR_STREAM_GRACE_S
{{- if .Values.models.pipelines.enabled }} ASR_MODELS_CONFIG{{ end }}
{{- if .Values.admin.enabled }} ASR_ADMIN_TOKENS_FILE ASR_ADMIN_TOKENS{{ end }}
{{- if .Values.resultCache.enabled }} ASR_CACHE_MAX_BYTES ASR_CACHE_TTL_S ASR_CACHE_REDIS_URL{{ end }}
{{- end }}

{{/* Where the models config file is mounted (a directory: a ConfigMap update reaches it). */}}
{{- define "paraformer-asr.pipelinesDir" -}}
/etc/paraformer-asr/pipelines
{{- end }}

{{/* The fetch-models init containers, as a YAML list of {name, args}: one for the single pipeline
of models.*, or with models.pipelines one per pipeline that names a hub id not fetched already
(a pipeline's own keys, else the models.* values, as the server resolves them). Directories,
"none" and hub ids that an earlier container fetches are passed as "none", which fetch-models
skips; the server checks directories when it loads them. */}}
{{- define "paraformer-asr.fetchContainers" -}}
{{- $m := .Values.models }}
{{- $fetches := list }}
{{- if not $m.pipelines.enabled }}
{{- $fetches = append $fetches (dict "name" "fetch-models" "args" (list "fetch-models")) }}
{{- else }}
{{- $fetched := list }}
{{- $names := list }}
{{- range $name, $p := $m.pipelines.config.models }}
{{- $p = default dict $p }}
{{- $revision := toString (default $m.revision (get $p "model_revision")) }}
{{- $args := list "fetch-models" }}
{{- $new := false }}
{{- range $role := list "asr" "vad" "punc" "online" }}
{{- $spec := toString (default (get $m $role) (get $p (printf "%s_model" $role))) }}
{{- $key := printf "%s@%s" $spec $revision }}
{{- if and (regexMatch "^[^/.~][^/]*/[^/]+$" $spec) (not (has $key $fetched)) }}
{{- $fetched = append $fetched $key }}
{{- $new = true }}
{{- else }}
{{- $spec = "none" }}
{{- end }}
{{- $args = concat $args (list (printf "--%s-model" $role) $spec) }}
{{- end }}
{{- if $new }}
{{- $args = concat $args (list "--model-revision" $revision) }}
{{- $cname := printf "fetch-models-%s" (regexReplaceAll "[^a-z0-9-]" (lower (toString $name)) "-") | trunc 63 | trimSuffix "-" }}
{{- if has $cname $names }}
{{- fail (printf "models.pipelines.config.models: pipeline %s gives the init container name %s again; rename one of the pipelines" $name $cname) }}
{{- end }}
{{- $names = append $names $cname }}
{{- $fetches = append $fetches (dict "name" $cname "args" $args) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $fetches }}
{{- end }}

{{/* Refuse combinations of values that cannot work, with a message that says what to change. */}}
{{- define "paraformer-asr.validate" -}}
{{- $v := .Values }}
{{- if and $v.tls.enabled (not $v.tls.existingSecret) (not $v.tls.certManager.enabled) }}
{{- fail "tls.enabled needs a certificate: set tls.existingSecret or tls.certManager.enabled" }}
{{- end }}
{{- if and $v.tls.enabled $v.tls.existingSecret $v.tls.certManager.enabled }}
{{- fail "set either tls.existingSecret or tls.certManager.enabled, not both" }}
{{- end }}
{{- if and $v.tls.enabled $v.tls.certManager.enabled (not $v.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name" }}
{{- end }}
{{- if and $v.tls.clientCA.enabled (not $v.tls.enabled) }}
{{- fail "tls.clientCA.enabled (mutual TLS) needs tls.enabled" }}
{{- end }}
{{- if and $v.tls.clientCA.enabled (not $v.tls.clientCA.existingSecret) }}
{{- fail "tls.clientCA.enabled needs tls.clientCA.existingSecret (the CA bundle that signs client certificates)" }}
{{- end }}
{{- if and $v.auth.enabled (not $v.auth.existingSecret) (not $v.auth.tokens) }}
{{- fail "auth.enabled needs auth.existingSecret or auth.tokens" }}
{{- end }}
{{- if and (include "paraformer-asr.useHealthPort" .) (not (int $v.server.healthPort)) }}
{{- fail "with tls or auth on, server.healthPort must be a port: kubelet gRPC probes cannot speak TLS or send tokens" }}
{{- end }}
{{- $ports := list (int $v.server.port) }}
{{- if int $v.server.metricsPort }}{{ $ports = append $ports (int $v.server.metricsPort) }}{{ end }}
{{- if include "paraformer-asr.useHealthPort" . }}{{ $ports = append $ports (int $v.server.healthPort) }}{{ end }}
{{- if ne (len $ports) (len (uniq $ports)) }}
{{- fail (printf "server.port, server.metricsPort and server.healthPort must differ (got %v)" $ports) }}
{{- end }}
{{- $managed := splitList " " (include "paraformer-asr.managedEnv" .) }}
{{- range $key, $_ := $v.server.config }}
{{- if has $key $managed }}
{{- fail (printf "server.config.%s is set by the chart from other values; change those instead" $key) }}
{{- end }}
{{- end }}
{{- if and $v.autoscaling.enabled (not $v.autoscaling.customMetric.enabled) (kindIs "invalid" $v.autoscaling.targetCPUUtilizationPercentage) }}
{{- fail "autoscaling.enabled needs autoscaling.customMetric.enabled or autoscaling.targetCPUUtilizationPercentage" }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and $v.monitoring.serviceMonitor.enabled (not (int $v.server.metricsPort)) }}
{{- fail "monitoring.serviceMonitor.enabled needs server.metricsPort" }}
{{- end }}
{{- if and $v.podDisruptionBudget.enabled (kindIs "invalid" $v.podDisruptionBudget.maxUnavailable) (kindIs "invalid" $v.podDisruptionBudget.minAvailable) }}
{{- fail "podDisruptionBudget needs maxUnavailable or minAvailable" }}
{{- end }}
{{- $pipes := $v.models.pipelines }}
{{- if and $pipes.enabled (not $pipes.config.models) }}
{{- fail "models.pipelines.enabled needs models.pipelines.config.models (name -> settings of each pipeline)" }}
{{- end }}
{{- if and $pipes.enabled (not (hasKey (default dict $pipes.config.models) (toString $pipes.config.default))) }}
{{- fail (printf "models.pipelines.config.default (%q) must name one of models.pipelines.config.models (%s)" (toString $pipes.config.default) (keys (default dict $pipes.config.models) | sortAlpha | join ", ")) }}
{{- end }}
{{- if and $v.admin.enabled (not $v.admin.existingSecret) }}
{{- fail "admin.enabled needs admin.existingSecret (a Secret holding the admin tokens, one per line)" }}
{{- end }}
{{- if and $v.resultCache.enabled $v.resultCache.redis.enabled (not $v.resultCache.redis.existingSecret) }}
{{- fail "resultCache.redis.enabled needs resultCache.redis.existingSecret (a Secret holding the Redis URL)" }}
{{- end }}
{{- if and $v.resultCache.enabled (not $v.resultCache.redis.enabled) (lt (int64 $v.resultCache.maxBytes) 1) }}
{{- fail "resultCache.enabled without Redis needs resultCache.maxBytes above 0 (the in-memory budget)" }}
{{- end }}
{{- $_ := include "paraformer-asr.terminationGracePeriodSeconds" . }}
{{- $_ := include "paraformer-asr.fetchContainers" . }}
{{- end }}
