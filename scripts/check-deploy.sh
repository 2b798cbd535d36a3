#!/usr/bin/env bash
#! Checks the deployment artefacts: Helm chart, Kustomize component and overlay, rbac/, config/.
#
# Usage: scripts/check-deploy.sh
#
# 1. helm lint --strict of helm/kube-executor with default values (plus the three required values
#    given with --set), in StatefulSet (replicaCount 3) and DaemonSet (mode daemonset) mode, with
#    ci/full-values.yaml (also as a StatefulSet) and with examples/sourcegraph-override.yaml;
#    helm template of each. The chart must refuse, printing why, to render without
#    executor.frontendUrl and each value combination that cannot work (see `refusals` below).
# 2. kubectl kustomize of kustomize/components/executor and of kustomize/examples/{overlay,
#    statefulset,daemonset,sourcegraph-executors}.
# 3. Consistency (scripts/check_deploy_consistency.py): every ConfigMap renders exactly the
#    variables of config/executor.env (less EXECUTOR_FRONTEND_PASSWORD, which lives in a Secret);
#    every Role has the rules of rbac/role.yaml and sits in the namespace the executor would run
#    its Jobs in; every chart object has the standard labels; every executor pod passes POD_NAME,
#    POD_NAMESPACE and POD_UID from the Downward API and has the HTTP probes; a Deployment is one
#    replica with Recreate; StatefulSet and DaemonSet pods take their instance id from their name
#    (DaemonSet pods also pin their jobs to spec.nodeName); a StatefulSet has a
#    PodDisruptionBudget, a topology spread and a job NetworkPolicy covering every replica; the
#    Sourcegraph-shaped overlay renders an empty EXECUTOR_KUBERNETES_NAMESPACE with the executor in
#    the overlay's namespace.
# 4. kubernetes-validate --strict against Kubernetes $VALIDATE_K8S_VERSION (default 1.33.0) of every
#    rendered object. ServiceMonitor is skipped: it is a prometheus-operator CRD, not in the core
#    schemas the tool ships.
# 5. Only when KUBECONFIG is set (a live cluster): kubectl apply --dry-run=server of everything
#    rendered, after creating the namespaces it uses; ServiceMonitors are skipped when the cluster
#    has no servicemonitors.monitoring.coreos.com CRD. On a cluster without policy/v1 (before
#    Kubernetes 1.21) PodDisruptionBudgets are dry-run as policy/v1beta1, the version the chart
#    renders when helm reads such a cluster's API versions.
#
# Tools come from scripts/install-tools.sh (run here; it reuses what is installed). Exits non-zero
# naming every step that failed.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$REPO/helm/kube-executor"
VALIDATE_K8S_VERSION="${VALIDATE_K8S_VERSION:-1.33.0}"
RELEASE=kube-executor
RELEASE_NAMESPACE=sourcegraph

failures=()
step() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'FAILED: %s\n' "$*" >&2; failures+=("$*"); }
die() { printf 'check-deploy: %s\n' "$*" >&2; exit 1; }

tool_paths="$("$REPO/scripts/install-tools.sh")" || die "scripts/install-tools.sh failed"
HELM="$(sed -n 's/^helm=//p' <<<"$tool_paths")"
KUBERNETES_VALIDATE="$(sed -n 's/^kubernetes-validate=//p' <<<"$tool_paths")"
# The venv that holds kubernetes-validate also has PyYAML, used by the consistency checks.
PYTHON="$(dirname "$KUBERNETES_VALIDATE")/python"
if ! { [ -x "$HELM" ] && [ -x "$KUBERNETES_VALIDATE" ] && [ -x "$PYTHON" ]; }; then
  die "install-tools.sh did not report usable tools: $tool_paths"
fi
command -v kubectl >/dev/null || die "kubectl is not on PATH (needed for kubectl kustomize)"

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

# --- 1. Helm ---------------------------------------------------------------------------------

# The values the chart requires (it refuses to render a config the executor would reject).
REQUIRED_SETS=(
  --set executor.frontendUrl=http://sourcegraph-frontend.sourcegraph.svc.cluster.local:30080
  --set executor.frontendPassword=placeholder-access-token-0123456789
  --set executor.queueName=batches
)
helm_cases=(default statefulset daemonset full-values full-values-statefulset sourcegraph-override)
helm_args() {
  case "$1" in
    default) printf '%s\n' "${REQUIRED_SETS[@]}" ;;
    statefulset) printf '%s\n' "${REQUIRED_SETS[@]}" --set replicaCount=3 ;;
    daemonset) printf '%s\n' "${REQUIRED_SETS[@]}" --set mode=daemonset ;;
    full-values) printf '%s\n' -f "$CHART/ci/full-values.yaml" ;;
    full-values-statefulset) printf '%s\n' -f "$CHART/ci/full-values.yaml" --set replicaCount=3 ;;
    sourcegraph-override) printf '%s\n' -f "$CHART/examples/sourcegraph-override.yaml" ;;
  esac
}

rendered=()
for case in "${helm_cases[@]}"; do
  mapfile -t args < <(helm_args "$case")
  step "helm lint --strict ($case values)"
  if ! "$HELM" lint --strict "$CHART" "${args[@]}" >"$OUT/lint-$case.log" 2>&1; then
    cat "$OUT/lint-$case.log" >&2
    fail "helm lint --strict with $case values"
  fi
  step "helm template ($case values)"
  if "$HELM" template "$RELEASE" "$CHART" --namespace "$RELEASE_NAMESPACE" "${args[@]}" \
       >"$OUT/helm-$case.yaml" 2>"$OUT/template-$case.log"; then
    rendered+=("$OUT/helm-$case.yaml")
  else
    cat "$OUT/template-$case.log" >&2
    fail "helm template with $case values"
  fi
done

# Values that cannot work, each with (a regular expression of) the reason the chart must print:
# "<what>|<expected message>|<helm template arguments...>".
refusals=(
  "no executor.frontendUrl|executor.frontendUrl is required|"
  "replicaCount 0 (schema)|/replicaCount.*minimum|--set replicaCount=0"
  "replicaCount 0 (template, schema skipped)|replicaCount must be a whole number of at least 1|--skip-schema-validation --set replicaCount=0"
  "an unknown mode (schema)|/mode.*one of.*replicas.*daemonset|--set mode=cluster"
  "an unknown mode (template, schema skipped)|mode must be replicas .* or daemonset|--skip-schema-validation --set mode=cluster"
  "replicaCount with mode daemonset|replicaCount \\(2\\) is for mode replicas|--set mode=daemonset --set replicaCount=2"
  "per-job claims with nodeName pinning in mode daemonset|pvc with EXECUTOR_KUBERNETES_NODE_PINNING=nodeName cannot work in mode daemonset|--set mode=daemonset --set config.KUBERNETES_JOB_VOLUME_TYPE=pvc --set config.EXECUTOR_KUBERNETES_NODE_PINNING=nodeName"
  "a shared instance id in a StatefulSet|EXECUTOR_INSTANCE_ID must stay unset with a StatefulSet|--set replicaCount=3 --set config.EXECUTOR_INSTANCE_ID=executor"
  "a shared instance id in a DaemonSet (extraEnv)|EXECUTOR_INSTANCE_ID must stay unset with a DaemonSet|--set mode=daemonset --set executor.extraEnv[0].name=EXECUTOR_INSTANCE_ID --set executor.extraEnv[0].value=executor"
  "a fixed job node in a StatefulSet|a fixed job node name .* sends the jobs of every executor of the StatefulSet to that one node|--set replicaCount=3 --set executor.kubernetesJob.node.name=node-1"
  "a fixed job node without the Downward API in a DaemonSet|a fixed job node name .* of the DaemonSet to that one node|--set mode=daemonset --set executor.kubernetesJob.node.pinToExecutorNode=false --set config.EXECUTOR_KUBERNETES_NODE_NAME=node-1"
  "a job node selector the DaemonSet's nodes lack|must hold on every node the DaemonSet runs on.*add pool=jobs to nodeSelector|--set mode=daemonset --set executor.kubernetesJob.node.selector=pool=jobs"
  "a StatefulSet name too long for its pods|is longer than 52 characters|--set replicaCount=2 --set fullnameOverride=executor-with-a-name-far-too-long-for-statefulset-pods"
)
for refusal in "${refusals[@]}"; do
  IFS='|' read -r what message arguments <<<"$refusal"
  read -ra arguments <<<"$arguments"
  # Every case but the first has the required values, so only the case's own values are wrong.
  [ "$what" = "no executor.frontendUrl" ] || arguments=("${REQUIRED_SETS[@]}" "${arguments[@]}")
  step "helm template with $what must fail saying why"
  if "$HELM" template "$RELEASE" "$CHART" "${arguments[@]}" >/dev/null 2>"$OUT/refusal.log"; then
    fail "helm template rendered with $what"
  elif ! grep -Eq -- "$message" "$OUT/refusal.log"; then
    cat "$OUT/refusal.log" >&2
    fail "helm template with $what failed without the message /$message/"
  fi
done

# --- 2. Kustomize ----------------------------------------------------------------------------

for dir in components/executor examples/overlay examples/statefulset examples/daemonset \
  examples/sourcegraph-executors; do
  name="kustomize-${dir//\//-}"
  step "kubectl kustomize kustomize/$dir"
  if kubectl kustomize "$REPO/kustomize/$dir" >"$OUT/$name.yaml" 2>"$OUT/$name.log"; then
    rendered+=("$OUT/$name.yaml")
  else
    cat "$OUT/$name.log" >&2
    fail "kubectl kustomize kustomize/$dir"
  fi
done

# --- 3. Consistency --------------------------------------------------------------------------

step "consistency: ConfigMaps vs config/executor.env, Roles vs rbac/, labels, executor pods per shape"
if ! "$PYTHON" "$REPO/scripts/check_deploy_consistency.py" "$REPO" "${rendered[@]}"; then
  fail "consistency checks (see the lines above)"
fi

# --- 4. Schema validation --------------------------------------------------------------------

# One file per object, so a failure names the object; ServiceMonitors go to a separate list.
split_objects() {
  "$PYTHON" - "$@" <<'PY'
import os, sys, yaml
out = sys.argv[1]
for path in sys.argv[2:]:
    base = os.path.basename(path).removesuffix(".yaml")
    for i, doc in enumerate(d for d in yaml.safe_load_all(open(path)) if d):
        kind, name = doc["kind"], doc["metadata"]["name"]
        sub = "crd-kinds" if kind == "ServiceMonitor" else "core"
        os.makedirs(f"{out}/{sub}/{base}", exist_ok=True)
        with open(f"{out}/{sub}/{base}/{i:02d}-{kind}-{name}.yaml", "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
PY
}

if [ "${#rendered[@]}" -gt 0 ]; then
  split_objects "$OUT/objects" "${rendered[@]}" || fail "splitting the rendered output into objects"
  step "kubernetes-validate --strict --kubernetes-version $VALIDATE_K8S_VERSION (ServiceMonitor skipped: CRD kind)"
  mapfile -t objects < <(find "$OUT/objects/core" -name '*.yaml' | sort)
  if ! "$KUBERNETES_VALIDATE" --strict --quiet --kubernetes-version "$VALIDATE_K8S_VERSION" \
       "${objects[@]}" >"$OUT/validate.log" 2>&1; then
    sed "s|$OUT/objects/core/||g" "$OUT/validate.log" >&2
    fail "kubernetes-validate --strict of the rendered manifests"
  fi
fi

# --- 5. Server-side dry run (live cluster only) -------------------------------------------------

if [ -n "${KUBECONFIG:-}" ]; then
  step "kubectl apply --dry-run=server against $(kubectl config current-context 2>/dev/null || echo KUBECONFIG)"
  has_servicemonitor_crd=0
  kubectl get crd servicemonitors.monitoring.coreos.com >/dev/null 2>&1 && has_servicemonitor_crd=1
  has_policy_v1=0
  kubectl api-versions 2>/dev/null | grep -qx 'policy/v1' && has_policy_v1=1
  [ "$has_policy_v1" = 1 ] || step "(the cluster has no policy/v1: PodDisruptionBudgets are dry-run as policy/v1beta1)"
  for file in "${rendered[@]}"; do
    label="$(basename "$file" .yaml)"
    mapfile -t namespaces < <("$PYTHON" -c '
import sys, yaml
names = {d["metadata"].get("namespace") for d in yaml.safe_load_all(open(sys.argv[1])) if d}
print("\n".join(sorted(n for n in names if n)))' "$file")
    for ns in "${namespaces[@]}"; do
      [ -n "$ns" ] || continue
      kubectl get namespace "$ns" >/dev/null 2>&1 || kubectl create namespace "$ns" >/dev/null \
        || fail "creating namespace $ns for the server dry run"
    done
    dir="$OUT/objects/core/$label"
    if [ -d "$OUT/objects/crd-kinds/$label" ]; then
      if [ "$has_servicemonitor_crd" = 1 ]; then
        cp "$OUT/objects/crd-kinds/$label"/*.yaml "$dir/"
      else
        step "($label: ServiceMonitor skipped, the cluster has no monitoring.coreos.com CRD)"
      fi
    fi
    if [ "$has_policy_v1" = 0 ]; then
      for budget in "$dir"/*-PodDisruptionBudget-*.yaml; do
        [ -e "$budget" ] && sed -i 's|^apiVersion: policy/v1$|apiVersion: policy/v1beta1|' "$budget"
      done
    fi
    # Objects without a namespace (the kustomize component alone) go to the default namespace.
    if ! kubectl apply --dry-run=server -f "$dir" >"$OUT/dry-run-$label.log" 2>&1; then
      cat "$OUT/dry-run-$label.log" >&2
      fail "kubectl apply --dry-run=server of $label"
    fi
  done
else
  step "KUBECONFIG is not set: server-side dry run skipped"
fi

if [ "${#failures[@]}" -gt 0 ]; then
  printf '\ncheck-deploy: %d check(s) failed:\n' "${#failures[@]}" >&2
  printf '  - %s\n' "${failures[@]}" >&2
  exit 1
fi
printf 'check-deploy: all checks passed\n' >&2
