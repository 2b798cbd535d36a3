{{/* Names, labels and value conversions shared by the kube-executor templates. */}}

{{- define "kube-executor.name" -}}
{{- default .Chart.Name (default .Values.sourcegraph.nameOverride .Values.nameOverride) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: also the executor's instance ID, so it must stay stable across upgrades. */}}
{{- define "kube-executor.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "kube-executor.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kube-executor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kube-executor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kube-executor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels plus the user's sourcegraph.labels and executor.labels, on every object. */}}
{{- define "kube-executor.labels" -}}
{{- $labels := dict
  "helm.sh/chart" (include "kube-executor.chart" .)
  "app.kubernetes.io/version" (.Chart.AppVersion | toString)
  "app.kubernetes.io/managed-by" .Release.Service
  "app.kubernetes.io/component" "executor"
  "app.kubernetes.io/part-of" "kube-executor"
  "app.kubernetes.io/name" (include "kube-executor.name" .)
  "app.kubernetes.io/instance" .Release.Name
}}
{{- $labels = mergeOverwrite (deepCopy (default dict .Values.sourcegraph.labels)) (deepCopy (default dict .Values.executor.labels)) $labels }}
{{- toYaml $labels }}
{{- end }}

{{/* Namespace of the job objects, and so of the Role, job ServiceAccount and job NetworkPolicy. */}}
{{- define "kube-executor.jobNamespace" -}}
{{- default .Release.Namespace .Values.executor.namespace }}
{{- end }}

{{- define "kube-executor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kube-executor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Empty when job pods should use the namespace's default ServiceAccount. */}}
{{- define "kube-executor.jobServiceAccountName" -}}
{{- if .Values.jobServiceAccount.create }}
{{- default (printf "%s-job" (include "kube-executor.fullname" . | trunc 59 | trimSuffix "-")) .Values.jobServiceAccount.name }}
{{- else }}
{{- .Values.jobServiceAccount.name }}
{{- end }}
{{- end }}

{{- define "kube-executor.rbacEnabled" -}}
{{- if and .Values.rbac.create (ne (toString .Values.executor.configureRbac) "false") }}true{{ end }}
{{- end }}

{{- define "kube-executor.secretName" -}}
{{- default (include "kube-executor.fullname" .) .Values.executor.frontendExistingSecret }}
{{- end }}

{{- define "kube-executor.image" -}}
{{- $repository := .Values.image.repository }}
{{- if not $repository }}
{{- $repository = ternary (printf "%s/kube-executor" (trimSuffix "/" .Values.sourcegraph.image.repository)) "kube-executor" (ne .Values.sourcegraph.image.repository "") }}
{{- end }}
{{- $tag := .Values.image.tag | toString }}
{{- if not $tag }}
{{- $tag = default .Chart.AppVersion (tpl (.Values.sourcegraph.image.defaultTag | toString) .) }}
{{- end }}
{{- if hasPrefix "sha256:" $tag }}
{{- printf "%s@%s" $repository $tag }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{/*
An environment variable value as a string: nil is empty (unset), whole numbers print without an
exponent (values are parsed as floats, and 1048576 would otherwise print as 1.048576e+06), lists
and maps become JSON (so the JSON-typed variables can be written as YAML).
*/}}
{{- define "kube-executor.envValue" -}}
{{- $v := . }}
{{- if kindIs "invalid" $v }}
{{- else if or (kindIs "slice" $v) (kindIs "map" $v) }}
{{- toJson $v }}
{{- else if kindIs "float64" $v }}
{{- if eq $v (float64 (int64 $v)) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else }}
{{- $v }}
{{- end }}
{{- end }}

{{/* Sourcegraph's chart uses -1 for "not set" in run-as values; the executor wants empty. */}}
{{- define "kube-executor.optionalId" -}}
{{- $s := include "kube-executor.envValue" . }}
{{- if not (hasPrefix "-" $s) }}{{ $s }}{{ end }}
{{- end }}

{{/* Node selector: Sourcegraph's "k1=v1,k2=v2" string, or a map. */}}
{{- define "kube-executor.nodeSelectorValue" -}}
{{- $v := . }}
{{- if kindIs "map" $v }}
{{- $pairs := list }}
{{- range $k := keys $v | sortAlpha }}
{{- $pairs = append $pairs (printf "%s=%v" $k (index $v $k)) }}
{{- end }}
{{- join "," $pairs }}
{{- else }}
{{- include "kube-executor.envValue" $v }}
{{- end }}
{{- end }}

{{/* Deployment (mode replicas, one replica), StatefulSet (more) or DaemonSet (mode daemonset). */}}
{{- define "kube-executor.workloadKind" -}}
{{- if eq (toString .Values.mode) "daemonset" }}DaemonSet
{{- else if gt (int (default 1 .Values.replicaCount)) 1 }}StatefulSet
{{- else }}Deployment
{{- end }}
{{- end }}

{{/* Non-empty when several executors run, each an instance of its own named after its pod. */}}
{{- define "kube-executor.severalExecutors" -}}
{{- if ne (include "kube-executor.workloadKind" .) "Deployment" }}true{{ end }}
{{- end }}

{{/* Non-empty when job pods follow their executor's node: pinToExecutorNode, unset meaning yes in
mode daemonset and no otherwise. */}}
{{- define "kube-executor.pinToExecutorNode" -}}
{{- $pin := .Values.executor.kubernetesJob.node.pinToExecutorNode }}
{{- if kindIs "invalid" $pin }}
{{- $pin = eq (toString .Values.mode) "daemonset" }}
{{- end }}
{{- if $pin }}true{{ end }}
{{- end }}

{{/* The executor pod's node selector: the first non-empty of nodeSelector, executor.*, sourcegraph.*. */}}
{{- define "kube-executor.podNodeSelector" -}}
{{- toJson (.Values.nodeSelector | default .Values.executor.nodeSelector | default .Values.sourcegraph.nodeSelector | default dict) }}
{{- end }}

{{/* A variable as the user set it, (list $ NAME): a plain extraEnv value, else config, else empty. */}}
{{- define "kube-executor.setting" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $value := include "kube-executor.envValue" (index (default dict $root.Values.config) $name) }}
{{- range default list $root.Values.executor.extraEnv }}
{{- if and (eq (toString .name) $name) (hasKey . "value") }}
{{- $value = toString .value }}
{{- end }}
{{- end }}
{{- $value }}
{{- end }}

{{/* Refuses modes and replica counts that cannot work, saying why. */}}
{{- define "kube-executor.validateMode" -}}
{{- $mode := toString .Values.mode }}
{{- if not (has $mode (list "replicas" "daemonset")) }}
{{- fail (printf "mode must be replicas (a Deployment, or a StatefulSet with replicaCount above 1) or daemonset (one executor per node), not %q" $mode) }}
{{- end }}
{{- $replicas := .Values.replicaCount }}
{{- if or (kindIs "invalid" $replicas) (kindIs "string" $replicas) (lt (int $replicas) 1) }}
{{- fail (printf "replicaCount must be a whole number of at least 1 (got %v): it is the number of executors in mode replicas" $replicas) }}
{{- end }}
{{- if and (eq $mode "daemonset") (ne (int $replicas) 1) }}
{{- fail (printf "replicaCount (%v) is for mode replicas: mode daemonset runs one executor on every node that nodeSelector, affinity and tolerations admit" $replicas) }}
{{- end }}
{{- $kind := include "kube-executor.workloadKind" . }}
{{- if and (eq $kind "StatefulSet") (gt (len (include "kube-executor.fullname" .)) 52) }}
{{- fail (printf "the StatefulSet name %q is longer than 52 characters, so its pods' controller-revision-hash labels would be invalid: set fullnameOverride" (include "kube-executor.fullname" .)) }}
{{- end }}
{{- if include "kube-executor.severalExecutors" . }}
{{- if include "kube-executor.setting" (list . "EXECUTOR_INSTANCE_ID") }}
{{- fail (printf "EXECUTOR_INSTANCE_ID must stay unset with a %s: each executor's instance id is its pod's name, and executors sharing one would count and sweep each other's Jobs" $kind) }}
{{- end }}
{{- if and (not (include "kube-executor.pinToExecutorNode" .)) (or .Values.executor.kubernetesJob.node.name (include "kube-executor.setting" (list . "EXECUTOR_KUBERNETES_NODE_NAME"))) }}
{{- fail (printf "a fixed job node name (executor.kubernetesJob.node.name or EXECUTOR_KUBERNETES_NODE_NAME) sends the jobs of every executor of the %s to that one node: set executor.kubernetesJob.node.pinToExecutorNode=true (each executor's node, from the Downward API) or unset the name" $kind) }}
{{- end }}
{{- end }}
{{- if and (eq $mode "daemonset") (include "kube-executor.pinToExecutorNode" .) }}
{{- include "kube-executor.validatePinnedDaemonSet" . }}
{{- end }}
{{- end }}

{{/* Jobs pinned to each DaemonSet pod's node: their volumes and node selector must work there. */}}
{{- define "kube-executor.validatePinnedDaemonSet" -}}
{{- $volumeType := include "kube-executor.setting" (list . "KUBERNETES_JOB_VOLUME_TYPE") | lower }}
{{- $pinning := include "kube-executor.setting" (list . "EXECUTOR_KUBERNETES_NODE_PINNING") | lower }}
{{- if and (eq $volumeType "pvc") (eq $pinning "nodename") }}
{{- fail "KUBERNETES_JOB_VOLUME_TYPE=pvc with EXECUTOR_KUBERNETES_NODE_PINNING=nodeName cannot work in mode daemonset: each job's claim is ReadWriteOnce and bound on the node the scheduler picks, but nodeName pinning bypasses the scheduler, so a WaitForFirstConsumer claim never binds and an Immediate one may be provisioned away from the executor's node; use EXECUTOR_KUBERNETES_NODE_PINNING=affinity (the default)" }}
{{- end }}
{{- $podSelector := fromJson (include "kube-executor.podNodeSelector" .) }}
{{- $jobSelector := include "kube-executor.nodeSelectorValue" .Values.executor.kubernetesJob.node.selector }}
{{- range $pair := splitList "," $jobSelector }}
{{- $kv := splitList "=" $pair }}
{{- if and $pair (ne (toString (index $podSelector (first $kv))) (toString (last $kv))) }}
{{- fail (printf "executor.kubernetesJob.node.selector %q must hold on every node the DaemonSet runs on, since each executor's jobs run on its own node: add %s to nodeSelector" $jobSelector $pair) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Fails the render early with the value to fix, rather than letting the executor crash-loop. */}}
{{- define "kube-executor.validate" -}}
{{- if not .Values.executor.frontendUrl }}
{{- fail "executor.frontendUrl is required: the Sourcegraph frontend's URL, e.g. http://sourcegraph-frontend.sourcegraph.svc.cluster.local:30080" }}
{{- end }}
{{- if not (or .Values.executor.frontendPassword .Values.executor.frontendExistingSecret) }}
{{- fail "executor.frontendPassword (the site config executors.accessToken) or executor.frontendExistingSecret is required" }}
{{- end }}
{{- $queues := default list .Values.executor.queueNames }}
{{- if and .Values.executor.queueName $queues }}
{{- fail "set only one of executor.queueName and executor.queueNames" }}
{{- end }}
{{- if not (or .Values.executor.queueName $queues) }}
{{- fail "executor.queueName (batches or codeintel) or executor.queueNames is required" }}
{{- end }}
{{- include "kube-executor.validateMode" . }}
{{- end }}
