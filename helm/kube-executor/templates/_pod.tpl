{{/*
The executor's pod template, shared by the Deployment, the StatefulSet and the DaemonSet (the mode
and replicaCount pick which one renders).
*/}}
{{- define "kube-executor.podTemplate" -}}
{{- $e := .Values.executor }}
{{- $sg := .Values.sourcegraph }}
{{- $podAnnotations := mergeOverwrite (deepCopy (default dict $sg.podAnnotations)) (deepCopy (default dict $e.podAnnotations)) (deepCopy (default dict .Values.podAnnotations)) }}
{{- $podLabels := mergeOverwrite (deepCopy (default dict $sg.podLabels)) (deepCopy (default dict $e.podLabels)) (deepCopy (default dict .Values.podLabels)) }}
{{- $nodeSelector := fromJson (include "kube-executor.podNodeSelector" .) }}
{{- $affinity := .Values.affinity | default $e.affinity | default $sg.affinity }}
{{- $tolerations := .Values.tolerations | default $e.tolerations | default $sg.tolerations }}
{{- $priorityClassName := .Values.priorityClassName | default $e.priorityClassName | default $sg.priorityClassName }}
{{- $pullSecrets := list }}
{{- range concat (default list $sg.imagePullSecrets) (default list .Values.imagePullSecrets) }}
{{- $pullSecrets = append $pullSecrets (ternary (dict "name" .) . (kindIs "string" .)) }}
{{- end }}
{{- $podSecurityContext := deepCopy .Values.podSecurityContext }}
{{- if $e.podSecurityContext }}
{{- $podSecurityContext = $e.podSecurityContext }}
{{- else if $e.securityContext }}
{{- range $field := list "runAsUser" "runAsGroup" "fsGroup" }}
{{- if not (kindIs "invalid" (index $e.securityContext $field)) }}
{{- $_ := set $podSecurityContext $field (index $e.securityContext $field) }}
{{- end }}
{{- end }}
{{- end }}
{{- $containerSecurityContext := $e.containerSecurityContext | default .Values.securityContext }}
{{- $resources := $e.resources | default .Values.resources }}
metadata:
  annotations:
    kubectl.kubernetes.io/default-container: executor
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- if not $e.frontendExistingSecret }}
    checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
    {{- end }}
    {{- with $podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  labels:
    {{- with $podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- include "kube-executor.labels" . | nindent 4 }}
spec:
  serviceAccountName: {{ include "kube-executor.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automount }}
  # Longer than EXECUTOR_SHUTDOWN_GRACE_PERIOD so running jobs can report before the SIGKILL.
  terminationGracePeriodSeconds: {{ add (int64 .Values.shutdownGracePeriodSeconds) 30 }}
  {{- with $podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $pullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if eq (include "kube-executor.workloadKind" .) "StatefulSet" }}
  # Executors on different nodes (and zones) so that losing one node stops few of them; soft, so a
  # small cluster still runs every replica.
  topologySpreadConstraints:
    {{- with .Values.topologySpreadConstraints }}
    {{- toYaml . | nindent 4 }}
    {{- else }}
    {{- range $key := list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
    - maxSkew: 1
      topologyKey: {{ $key }}
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "kube-executor.selectorLabels" $ | nindent 10 }}
    {{- end }}
    {{- end }}
  {{- end }}
  containers:
    - name: executor
      image: {{ include "kube-executor.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy | default $sg.image.pullPolicy | default "IfNotPresent" }}
      {{- with $containerSecurityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - name: http-debug
          containerPort: 6060
          protocol: TCP
      envFrom:
        - configMapRef:
            name: {{ include "kube-executor.fullname" . }}
        {{- if not $e.frontendExistingSecret }}
        - secretRef:
            name: {{ include "kube-executor.fullname" . }}
        {{- end }}
      env:
        # The executor's own pod (Downward API): /nfr counts its container restarts, and its
        # Jobs are owned by it, so deleting the pod garbage-collects them.
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        - name: POD_UID
          valueFrom:
            fieldRef:
              fieldPath: metadata.uid
        {{- if include "kube-executor.severalExecutors" . }}
        # Each executor is an instance of its own: it counts and sweeps only the Jobs labelled with
        # its pod's name (stable across restarts in a StatefulSet). Wins over the ConfigMap.
        - name: EXECUTOR_INSTANCE_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- end }}
        {{- if $e.frontendExistingSecret }}
        # Only the one key: other keys of a shared Secret stay out of the environment.
        - name: EXECUTOR_FRONTEND_PASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ $e.frontendExistingSecret }}
              key: {{ $e.frontendExistingSecretKey | default "EXECUTOR_FRONTEND_PASSWORD" }}
        {{- end }}
        {{- if include "kube-executor.pinToExecutorNode" . }}
        # Job pods run on the executor's own node (Downward API); wins over the ConfigMap.
        - name: EXECUTOR_KUBERNETES_NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: spec.nodeName
        {{- end }}
        {{- with $e.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: http-debug
        initialDelaySeconds: 10
        periodSeconds: 10
        timeoutSeconds: 5
        failureThreshold: 3
      readinessProbe:
        httpGet:
          path: /readyz
          port: http-debug
        periodSeconds: 5
        timeoutSeconds: 5
        failureThreshold: 3
      terminationMessagePolicy: FallbackToLogsOnError
      volumeMounts:
        # The root filesystem is read-only; git and temporary files go here.
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: tmp
      emptyDir: {}
{{- end }}
