"""Consistency checks of rendered deployment artefacts, run by scripts/check-deploy.sh.

Usage: python check_deploy_consistency.py REPO RENDERED.yaml...

Each file is one rendering (helm-<case>.yaml or kustomize-<dir>.yaml). Prints one line per problem
to stderr and exits 1 if there is any.
"""
import re
import sys

import yaml

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
STANDARD_LABELS = ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/managed-by", "app.kubernetes.io/component", "helm.sh/chart"]
# What the executor's own pod tells it through the Downward API, in every shape.
POD_FIELDS = {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace", "POD_UID": "metadata.uid"}


def env_names(repo):
    names = set()
    for line in open(f"{repo}/config/executor.env"):
        m = re.match(r"^(?:# )?([A-Z][A-Z0-9_]*)=", line)
        if m:
            names.add(m.group(1))
    return names - {"EXECUTOR_FRONTEND_PASSWORD"}


def field_refs(container):
    """Env entries of the container that come from the Downward API, name -> field path."""
    refs = {}
    for entry in container.get("env", []):
        path = entry.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if path:
            refs[entry["name"]] = path
    return refs


def check_configmap_and_rbac(label, docs, expected_keys, rbac_rules, problems):
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
    if any(d["kind"] in ("ClusterRole", "ClusterRoleBinding") for d in docs):
        problems.append(f"{label}: renders cluster-scoped RBAC")
    return configmaps[0].get("data", {}) if configmaps else {}


def check_helm_labels(label, docs, problems):
    for d in docs:
        missing = [lbl for lbl in STANDARD_LABELS if lbl not in d["metadata"].get("labels", {})]
        if missing:
            problems.append(f"{label}: {d['kind']} {d['metadata']['name']} lacks labels {missing}")


def check_pod(label, workload, config, is_helm, problems):
    """The executor pod of any shape: Downward API, probes, grace period, config checksum."""
    kind, name = workload["kind"], workload["metadata"]["name"]
    template = workload["spec"]["template"]
    spec = template["spec"]
    container = spec["containers"][0]
    refs = field_refs(container)
    for var, path in POD_FIELDS.items():
        if refs.get(var) != path:
            problems.append(f"{label}: {kind} {name} does not pass {var} from the Downward API's {path}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        if container.get(probe, {}).get("httpGet", {}).get("path") != path:
            problems.append(f"{label}: {probe} is not an HTTP GET of {path}")
    if is_helm:
        grace = spec.get("terminationGracePeriodSeconds", 30)
        period = config.get("EXECUTOR_SHUTDOWN_GRACE_PERIOD", "")
        if not re.fullmatch(r"[0-9]+s", period) or grace <= int(period[:-1]):
            problems.append(f"{label}: terminationGracePeriodSeconds {grace} not above EXECUTOR_SHUTDOWN_GRACE_PERIOD {period!r}")
        if "checksum/config" not in template["metadata"].get("annotations", {}):
            problems.append(f"{label}: pod template lacks the checksum/config annotation")
    return refs


def check_shape(label, docs, workload, refs, config, problems):
    """What each kind must be: one Deployment executor, or several that are instances of their own."""
    kind, spec = workload["kind"], workload["spec"]
    if kind == "Deployment":
        if spec["strategy"]["type"] != "Recreate" or spec["replicas"] != 1:
            problems.append(f"{label}: Deployment must be a single replica with the Recreate strategy")
        return
    if refs.get("EXECUTOR_INSTANCE_ID") != "metadata.name" or config.get("EXECUTOR_INSTANCE_ID") != "":
        problems.append(f"{label}: {kind} pods must take EXECUTOR_INSTANCE_ID from their name"
                        " (Downward API), with the ConfigMap's value empty")
    pod_labels = spec["template"]["metadata"]["labels"]
    if kind == "DaemonSet":
        if refs.get("EXECUTOR_KUBERNETES_NODE_NAME") != "spec.nodeName":
            problems.append(f"{label}: DaemonSet pods must pin their jobs to their node (EXECUTOR_KUBERNETES_NODE_NAME from spec.nodeName)")
        if spec.get("updateStrategy", {}).get("type") != "RollingUpdate":
            problems.append(f"{label}: DaemonSet must update with RollingUpdate")
        return
    if spec.get("replicas", 1) < 2 or spec.get("podManagementPolicy") != "Parallel" or not spec.get("serviceName"):
        problems.append(f"{label}: StatefulSet must have 2+ replicas, podManagementPolicy Parallel and a serviceName")
    if not spec["template"]["spec"].get("topologySpreadConstraints"):
        problems.append(f"{label}: StatefulSet pods have no topology spread")
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    if not any(matches(b["spec"]["selector"], pod_labels) for b in budgets):
        problems.append(f"{label}: no PodDisruptionBudget selects the StatefulSet's pods")
    check_job_policy(label, docs, workload, problems)


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def check_job_policy(label, docs, statefulset, problems):
    """The job NetworkPolicy of a StatefulSet must cover the Jobs of every replica's instance."""
    name, replicas = statefulset["metadata"]["name"], statefulset["spec"]["replicas"]
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-jobs")):
        expressions = policy["spec"]["podSelector"].get("matchExpressions", [])
        instances = [e["values"] for e in expressions if e["key"] == "kube-executor.io/instance"]
        if instances != [[f"{name}-{i}" for i in range(replicas)]]:
            problems.append(f"{label}: job NetworkPolicy selects instances {instances}, not the {replicas} replicas'")


def check_namespaces(label, docs, workload, config, problems):
    """The namespace the executor would use for its Jobs (the ConfigMap's, else its pod's) holds its Role."""
    pod_namespace = workload["metadata"].get("namespace")
    jobs_namespace = config.get("EXECUTOR_KUBERNETES_NAMESPACE") or pod_namespace
    for d in docs:
        if d["kind"] in ("Role", "RoleBinding") and d["metadata"].get("namespace") != jobs_namespace:
            problems.append(f"{label}: {d['kind']} {d['metadata']['name']} is in namespace"
                            f" {d['metadata'].get('namespace')}, the executor's jobs in {jobs_namespace}")


def check_sourcegraph_overlay(repo, label, docs, workload, config, problems):
    """Sourcegraph's example overlay names no jobs namespace: the executor falls back to its pod's."""
    overlay = yaml.safe_load(open(f"{repo}/kustomize/examples/sourcegraph-executors/kustomization.yaml"))
    namespace = overlay["namespace"]
    if config.get("EXECUTOR_KUBERNETES_NAMESPACE") != "":
        problems.append(f"{label}: EXECUTOR_KUBERNETES_NAMESPACE should render empty, not"
                        f" {config.get('EXECUTOR_KUBERNETES_NAMESPACE')!r}")
    if workload["metadata"].get("namespace") != namespace:
        problems.append(f"{label}: the executor is not in the overlay's namespace {namespace}")
    if not any(d["kind"] == "Namespace" and d["metadata"]["name"] == namespace for d in docs):
        problems.append(f"{label}: the overlay does not create its namespace {namespace}")


def check_file(repo, path, expected_keys, rbac_rules, problems):
    label = path.rsplit("/", 1)[-1]
    is_helm = label.startswith("helm-")
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    config = check_configmap_and_rbac(label, docs, expected_keys, rbac_rules, problems)
    if is_helm:
        check_helm_labels(label, docs, problems)
    workloads = [d for d in docs if d["kind"] in WORKLOAD_KINDS]
    if len(workloads) != 1:
        problems.append(f"{label}: expected one executor workload, found {[d['kind'] for d in workloads]}")
        return
    workload = workloads[0]
    refs = check_pod(label, workload, config, is_helm, problems)
    check_shape(label, docs, workload, refs, config, problems)
    check_namespaces(label, docs, workload, config, problems)
    if label == "kustomize-examples-sourcegraph-executors.yaml":
        check_sourcegraph_overlay(repo, label, docs, workload, config, problems)


def main():
    repo, files = sys.argv[1], sys.argv[2:]
    expected_keys = env_names(repo)
    rbac_rules = yaml.safe_load(open(f"{repo}/rbac/role.yaml"))["rules"]
    problems = []
    for path in files:
        check_file(repo, path, expected_keys, rbac_rules, problems)
    for p in problems:
        print(p, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
