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
{{- end }}
