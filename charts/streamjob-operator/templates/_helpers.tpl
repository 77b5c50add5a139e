{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "streamjob-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name. */}}
{{- define "streamjob-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the operator pods. */}}
{{- define "streamjob-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamjob-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels the operator puts on every worker pod (operator/src/build/mod.rs). */}}
{{- define "streamjob-operator.workerSelectorLabels" -}}
app.kubernetes.io/name: streamjob-worker
{{- end -}}

{{/* Labels on every object. */}}
{{- define "streamjob-operator.labels" -}}
{{ include "streamjob-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Annotations on every object, when any. */}}
{{- define "streamjob-operator.annotations" -}}
{{- with .Values.commonAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "streamjob-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "streamjob-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The leader-election Lease: created by the chart, taken and renewed by the operator. */}}
{{- define "streamjob-operator.leaseName" -}}
{{- printf "%s-leader" (include "streamjob-operator.fullname" .) -}}
{{- end -}}

{{- define "streamjob-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "streamjob-operator.workerImage" -}}
{{- default (printf "ghcr.io/streamjob/streamjob-worker:%s" .Chart.AppVersion) .Values.workerImage -}}
{{- end -}}

{{/* The rules for StreamJobs and their children, shared by the ClusterRole and the Roles: the
calls the operator makes, no more (tests/tests/chart_install.rs runs it with only these). */}}
{{- define "streamjob-operator.jobRules" -}}
# Watch the jobs; merge-patch metadata.finalizers (deletionPolicy: DeleteConsumerGroup); get:
# whether the job holding a consumer group still exists. The autoscaler reads no job itself.
- apiGroups: ["streamjob.io"]
  resources: ["streamjobs"]
  verbs: ["get", "list", "watch", "patch"]
# Server-side apply of the status: the reconciler's and the autoscaler's parts.
- apiGroups: ["streamjob.io"]
  resources: ["streamjobs/status"]
  verbs: ["patch"]
# Owner references with blockOwnerDeletion need this where OwnerReferencesPermissionEnforcement is on.
- apiGroups: ["streamjob.io"]
  resources: ["streamjobs/finalizers"]
  verbs: ["update"]
# The children: server-side apply is a patch, and the API server also checks create when the
# object does not exist yet; watched for drift. The autoscaler merge-patches the StatefulSet's
# replicas.
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch"]
# The workers' pods, listed for readiness and failure reasons in the status, and watched by the
# autoscaler (why pods cannot run, for ScaleBlocked).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Kafka credentials and CA bundles of jobs, for the lag probe and consumer-group deletion.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Events on jobs; a repeated event is patched into a series.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# The StatefulSet controller's FailedCreate events (a ResourceQuota, a webhook), watched by the
# autoscaler for the ScaleBlocked condition.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list", "watch"]
{{- end -}}
