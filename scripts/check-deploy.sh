#!/usr/bin/env bash
#! Checks the deployment artefacts: Helm chart, Kustomize component and overlay, rbac/, config/.
#
# Usage: scripts/check-deploy.sh
#
# 1. helm lint --strict of helm/kube-executor with default values (plus the three required values
#    given with --set), with ci/full-values.yaml and with examples/sourcegraph-override.yaml;
#    helm template of each; the chart must refuse to render without executor.frontendUrl.
# 2. kubectl kustomize of kustomize/components/executor and of kustomize/examples/overlay.
# 3. Consistency: every ConfigMap renders exactly the variables of config/executor.env (less
#    EXECUTOR_FRONTEND_PASSWORD, which lives in a Secret); the chart's Role has the same rules as
#    rbac/role.yaml; every chart object has the standard labels.
# 4. kubernetes-validate --strict against Kubernetes $VALIDATE_K8S_VERSION (default 1.33.0) of every
#    rendered object. ServiceMonitor is skipped: it is a prometheus-operator CRD, not in the core
#    schemas the tool ships.
# 5. Only when KUBECONFIG is set (a live cluster): kubectl apply --dry-run=server of everything
#    rendered, after creating the namespaces it uses; ServiceMonitors are skipped when the cluster
#    has no servicemonitors.monitoring.coreos.com CRD.
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
helm_cases=(default full-values sourcegraph-override)
helm_args() {
  case "$1" in
    default) printf '%s\n' "${REQUIRED_SETS[@]}" ;;
    full-values) printf '%s\n' -f "$CHART/ci/full-values.yaml" ;;
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

step "helm template without executor.frontendUrl must fail with a message naming it"
if "$HELM" template "$RELEASE" "$CHART" >/dev/null 2>"$OUT/missing-url.log"; then
  fail "helm template rendered without executor.frontendUrl"
elif ! grep -q 'executor.frontendUrl is required' "$OUT/missing-url.log"; then
  cat "$OUT/missing-url.log" >&2
  fail "helm template without executor.frontendUrl failed for another reason"
fi

# --- 2. Kustomize ----------------------------------------------------------------------------

for dir in components/executor examples/overlay; do
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

step "consistency: ConfigMap keys vs config/executor.env, Role rules vs rbac/, standard labels"
if ! "$PYTHON" - "$REPO" "${rendered[@]}" <<'PY'
import re, sys, yaml
repo, files = sys.argv[1], sys.argv[2:]
problems = []

env_names = set()
for line in open(f"{repo}/config/executor.env"):
    m = re.match(r"^(?:# )?([A-Z][A-Z0-9_]*)=", line)
    if m:
        env_names.add(m.group(1))
expected_keys = env_names - {"EXECUTOR_FRONTEND_PASSWORD"}

rbac_rules = yaml.safe_load(open(f"{repo}/rbac/role.yaml"))["rules"]
standard_labels = ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/managed-by", "app.kubernetes.io/component", "helm.sh/chart"]
# full-values sets config: keys that are all in the env file, so the key set stays the same.
for path in files:
    label = path.rsplit("/", 1)[-1]
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    configmaps = [d for d in docs if d["kind"] == "ConfigMap"]
    if len(configmaps) != 1:
        problems.append(f"{label}: expected one ConfigMap, found {len(configmaps)}")
    for cm in configmaps:
        keys = set(cm.get("data", {}))
        if keys != expected_keys:
            problems.append(f"{label}: ConfigMap {cm['metadata']['name']} keys differ from config/executor.env:"
                            f" missing {sorted(expected_keys - keys)}, extra {sorted(keys - expected_keys)}")
    for role in (d for d in docs if d["kind"] == "Role"):
        if role["rules"] != rbac_rules:
            problems.append(f"{label}: Role {role['metadata']['name']} rules differ from rbac/role.yaml")
    if any(d["kind"] == "ClusterRole" or d["kind"] == "ClusterRoleBinding" for d in docs):
        problems.append(f"{label}: renders cluster-scoped RBAC")
    if label.startswith("helm-"):
        for d in docs:
            labels = d["metadata"].get("labels", {})
            missing = [l for l in standard_labels if l not in labels]
            if missing:
                problems.append(f"{label}: {d['kind']} {d['metadata']['name']} lacks labels {missing}")
        for dep in (d for d in docs if d["kind"] == "Deployment"):
            spec = dep["spec"]["template"]["spec"]
            container = spec["containers"][0]
            grace = spec.get("terminationGracePeriodSeconds", 30)
            cm = configmaps[0]["data"] if configmaps else {}
            period = cm.get("EXECUTOR_SHUTDOWN_GRACE_PERIOD", "")
            if not re.fullmatch(r"[0-9]+s", period) or grace <= int(period[:-1]):
                problems.append(f"{label}: terminationGracePeriodSeconds {grace} not above EXECUTOR_SHUTDOWN_GRACE_PERIOD {period!r}")
            for probe, path_ in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                if container.get(probe, {}).get("httpGet", {}).get("path") != path_:
                    problems.append(f"{label}: {probe} is not an HTTP GET of {path_}")
            if dep["spec"]["strategy"]["type"] != "Recreate" or dep["spec"]["replicas"] != 1:
                problems.append(f"{label}: Deployment must be a single replica with the Recreate strategy")
            if "checksum/config" not in dep["spec"]["template"]["metadata"].get("annotations", {}):
                problems.append(f"{label}: pod template lacks the checksum/config annotation")
for p in problems:
    print(p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
then
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
