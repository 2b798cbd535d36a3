//! The one list of environment variables the executor reads: names, defaults and meanings.

/// One environment variable the executor reads: its name, its default as shown to users (`""` when
/// there is none) and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variable {
    pub name: &'static str,
    pub default: &'static str,
    pub description: &'static str,
}

/// Shorthand that keeps the tables below readable.
const fn var(name: &'static str, default: &'static str, description: &'static str) -> Variable {
    Variable {
        name,
        default,
        description,
    }
}

/// Every variable of the configuration contract, in documentation order: Sourcegraph's executor
/// variables first, then kube-executor's own. Defaults here are the ones
/// [`Config::from_vars`](super::Config::from_vars) applies.
pub const VARIABLES: &[Variable] = &[
    var(
        "EXECUTOR_FRONTEND_URL",
        "",
        "Base URL of the Sourcegraph frontend (required), e.g. http://sourcegraph-frontend:30080; job pods clone repositories from it too.",
    ),
    var(
        "EXECUTOR_FRONTEND_PASSWORD",
        "",
        "Shared secret equal to the site configuration's executors.accessToken (required).",
    ),
    var(
        "EXECUTOR_QUEUE_NAME",
        "",
        "Single queue to take jobs from, batches or codeintel; set exactly one of this and EXECUTOR_QUEUE_NAMES.",
    ),
    var(
        "EXECUTOR_QUEUE_NAMES",
        "",
        "Comma-separated queues to take jobs from (batches, codeintel), without spaces.",
    ),
    var(
        "EXECUTOR_QUEUE_POLL_INTERVAL",
        "1s",
        "Wait between dequeue attempts while the queue has no job for this executor.",
    ),
    var(
        "EXECUTOR_MAXIMUM_NUM_JOBS",
        "1",
        "Number of jobs run at the same time (at least 1).",
    ),
    var(
        "EXECUTOR_MAXIMUM_RUNTIME_PER_JOB",
        "30m",
        "Longest time one job may run before it is stopped and reported as failed.",
    ),
    var(
        "EXECUTOR_NUM_TOTAL_JOBS",
        "0",
        "Stop taking jobs after this many and exit once they finish (0 = no limit).",
    ),
    var(
        "EXECUTOR_MAX_ACTIVE_TIME",
        "0",
        "Stop taking jobs after this long and exit once running jobs finish (0 = no limit).",
    ),
    var(
        "EXECUTOR_KEEP_WORKSPACES",
        "false",
        "Note in each job's teardown log that the workspace is preserved; the workspace lives and dies with the job pod.",
    ),
    var(
        "EXECUTOR_USE_FIRECRACKER",
        "false",
        "Accepted for compatibility; must be false because this executor runs jobs only as Kubernetes Jobs.",
    ),
    var(
        "EXECUTOR_JOB_NUM_CPUS",
        "4",
        "CPU count sent to the frontend with every dequeue request (codeintel jobs see it as VM_CPUS).",
    ),
    var(
        "EXECUTOR_FIRECRACKER_NUM_CPUS",
        "",
        "Older name of EXECUTOR_JOB_NUM_CPUS, used when that is unset.",
    ),
    var(
        "EXECUTOR_JOB_MEMORY",
        "12G",
        "Memory size sent to the frontend with every dequeue request (codeintel jobs see it as VM_MEM).",
    ),
    var(
        "EXECUTOR_FIRECRACKER_MEMORY",
        "",
        "Older name of EXECUTOR_JOB_MEMORY, used when that is unset.",
    ),
    var(
        "EXECUTOR_FIRECRACKER_DISK_SPACE",
        "20G",
        "Disk size sent to the frontend with every dequeue request (codeintel jobs see it as VM_DISK).",
    ),
    var(
        "EXECUTOR_DOCKER_ADD_HOST_GATEWAY",
        "false",
        "Must be true when EXECUTOR_FRONTEND_URL points at host.docker.internal; otherwise unused.",
    ),
    var(
        "EXECUTOR_DOCKER_AUTH_CONFIG",
        "",
        "Accepted for compatibility and checked to be a JSON object, but unused: job pods pull images with KUBERNETES_IMAGE_PULL_SECRETS.",
    ),
    var(
        "NODE_EXPORTER_URL",
        "",
        "URL of a node_exporter (without /metrics) whose metrics are forwarded to the frontend in heartbeats.",
    ),
    var(
        "DOCKER_REGISTRY_NODE_EXPORTER_URL",
        "",
        "URL of the Docker registry's node_exporter (without /metrics), forwarded like NODE_EXPORTER_URL.",
    ),
    var(
        "EXECUTOR_ENABLE_JOB_AUDIT_LOGGING",
        "false",
        "Log every received job, with secrets redacted, at warning level.",
    ),
    var(
        "SRC_LOG_LEVEL",
        "warn",
        "Lowest level the executor logs: dbug, info, warn, eror or crit (debug, warning and error are accepted too); RUST_LOG, when set, replaces it with a full tracing filter.",
    ),
    var(
        "SRC_LOG_FORMAT",
        "condensed",
        "Log format on stderr: condensed or console for people, json (one object per line, with job_id and queue on every line about a job) or logfmt, which means json as in Sourcegraph.",
    ),
    var(
        "SRC_TRACE_LOG",
        "false",
        "Accepted for compatibility with the Helm chart; tracing is not exported.",
    ),
    var(
        "HOSTNAME",
        "",
        "Base of the executor name shown in Site admin > Executors; defaults to the machine's hostname.",
    ),
    var(
        "EXECUTOR_KUBERNETES_CONFIG_PATH",
        "",
        "Kubeconfig file to use; when unset, $HOME/.kube/config, then the in-cluster service account.",
    ),
    var(
        "EXECUTOR_KUBERNETES_CLIENT_QPS",
        "100",
        "Kubernetes API requests per second this executor sends on average (a client-side token bucket that protects a shared API server; at least 1).",
    ),
    var(
        "EXECUTOR_KUBERNETES_CLIENT_BURST",
        "200",
        "Kubernetes API requests this executor may send at once, the token bucket's size, before EXECUTOR_KUBERNETES_CLIENT_QPS applies (at least 1). A job is dequeued only while at least half the bucket is free, so the running jobs' log streams and deletes never queue behind new jobs' creates.",
    ),
    var(
        "EXECUTOR_KUBERNETES_NAMESPACE",
        "",
        "Namespace of the Jobs, Secrets and volume claims this executor creates; unset: the executor's own pod's namespace (POD_NAMESPACE, else its service account's), outside a pod default.",
    ),
    var(
        "EXECUTOR_KUBERNETES_NODE_NAME",
        "",
        "Node that every job pod is pinned to (see EXECUTOR_KUBERNETES_NODE_PINNING).",
    ),
    var(
        "EXECUTOR_KUBERNETES_NODE_SELECTOR",
        "",
        "Node selector of job pods as comma-separated key=value pairs.",
    ),
    var(
        "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS",
        "",
        "JSON array of NodeSelectorRequirement that job pods' nodes must match by label.",
    ),
    var(
        "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_FIELDS",
        "",
        "JSON array of NodeSelectorRequirement that job pods' nodes must match by field.",
    ),
    var(
        "EXECUTOR_KUBERNETES_POD_AFFINITY",
        "",
        "JSON array of PodAffinityTerm (each with a topologyKey) required for job pods.",
    ),
    var(
        "EXECUTOR_KUBERNETES_POD_ANTI_AFFINITY",
        "",
        "JSON array of PodAffinityTerm (each with a topologyKey) that job pods must avoid.",
    ),
    var(
        "EXECUTOR_KUBERNETES_NODE_TOLERATIONS",
        "",
        "JSON array of Toleration added to job pods.",
    ),
    var(
        "EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU",
        "",
        "CPU request of every job container (unset or 0 = none).",
    ),
    var(
        "EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY",
        "12Gi",
        "Memory request of every job container (0 = none).",
    ),
    var(
        "EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU",
        "",
        "CPU limit of every job container (unset or 0 = none).",
    ),
    var(
        "EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY",
        "12Gi",
        "Memory limit of every job container (0 = none).",
    ),
    var(
        "EXECUTOR_KUBERNETES_PERSISTENCE_VOLUME_NAME",
        "sg-executor-pvc",
        "Accepted for compatibility with older manifests and unused: workspaces live in each job's own volume.",
    ),
    var(
        "KUBERNETES_JOB_DEADLINE",
        "1200",
        "activeDeadlineSeconds of job pods: Kubernetes stops a job pod after this many seconds.",
    ),
    var(
        "KUBERNETES_KEEP_JOBS",
        "false",
        "Leave each job's Job, Secret and volume claim in place after it finishes, for debugging.",
    ),
    var(
        "KUBERNETES_RUN_AS_USER",
        "",
        "UID that job containers run as (0 to 2147483647; unset = the image's user).",
    ),
    var(
        "KUBERNETES_RUN_AS_GROUP",
        "",
        "GID that job containers run as (0 to 2147483647; unset = the image's group).",
    ),
    var(
        "KUBERNETES_FS_GROUP",
        "1000",
        "fsGroup of job pods, owning group of their volumes (0 to 2147483647).",
    ),
    var(
        "KUBERNETES_JOB_ANNOTATIONS",
        "",
        "JSON object of annotations added to every Job.",
    ),
    var(
        "KUBERNETES_JOB_POD_ANNOTATIONS",
        "",
        "JSON object of annotations added to every job pod.",
    ),
    var(
        "KUBERNETES_IMAGE_PULL_SECRETS",
        "",
        "Comma-separated names of Secrets that job pods pull images with.",
    ),
    var(
        "KUBERNETES_IMAGE_PULL_POLICY",
        "IfNotPresent",
        "Image pull policy of job containers: Always, Never or IfNotPresent.",
    ),
    var(
        "KUBERNETES_JOB_STEP_IMAGE",
        "sourcegraph/batcheshelper:insiders",
        "Image of the workspace setup container and helper steps; needs sh, git and coreutils.",
    ),
    var(
        "KUBERNETES_SINGLE_JOB_STEP_IMAGE",
        "",
        "Older name of KUBERNETES_JOB_STEP_IMAGE, used when that is unset.",
    ),
    var(
        "KUBERNETES_JOB_VOLUME_TYPE",
        "emptyDir",
        "Kind of the job workspace volume: emptyDir or pvc.",
    ),
    var(
        "KUBERNETES_JOB_VOLUME_SIZE",
        "5Gi",
        "Size of the job workspace volume (emptyDir size limit or claim request).",
    ),
    var(
        "KUBERNETES_ADDITIONAL_JOB_VOLUMES",
        "",
        "JSON array of Volume added to job pods.",
    ),
    var(
        "KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS",
        "",
        "JSON array of VolumeMount added to every job container.",
    ),
    var(
        "KUBERNETES_GIT_CA_CERT",
        "",
        "Path, inside the step image, of a CA certificate git trusts when cloning from the frontend.",
    ),
    var(
        "KUBERNETES_JOB_HOST_NETWORK",
        "false",
        "Run job pods in the node's network namespace.",
    ),
    var(
        "KUBERNETES_SINGLE_JOB_POD",
        "true",
        "Accepted for compatibility; must be true because every job runs as one pod.",
    ),
    var(
        "EXECUTOR_INSTANCE_ID",
        "$HOSTNAME",
        "Identity of this executor deployment, set as a label on everything it creates; executors sharing a namespace need different ones.",
    ),
    var(
        "EXECUTOR_REPORTED_VERSION",
        "0.0.0+dev",
        "Version reported to the frontend; a dev version gets current payloads and is never flagged outdated.",
    ),
    var(
        "EXECUTOR_HEALTH_SERVER_ADDR",
        ":6060",
        "Listen address of the health server: /healthz, /readyz, /metrics, /nfr and the status page.",
    ),
    var(
        "EXECUTOR_SHUTDOWN_GRACE_PERIOD",
        "5m",
        "After SIGTERM, how long running jobs get to finish before they are cancelled.",
    ),
    var(
        "EXECUTOR_LOG_ENTRY_MAX_BYTES",
        "1048576",
        "Largest output kept in one execution log entry (at least 4096); the rest is replaced by a truncation notice.",
    ),
    var(
        "EXECUTOR_KUBERNETES_NODE_PINNING",
        "affinity",
        "How EXECUTOR_KUBERNETES_NODE_NAME pins job pods: affinity (required node affinity, scheduled) or nodeName (spec.nodeName, unscheduled).",
    ),
    var(
        "KUBERNETES_JOB_SERVICE_ACCOUNT",
        "",
        "ServiceAccount of job pods (unset = the namespace's default account).",
    ),
    var(
        "KUBERNETES_JOB_AUTOMOUNT_SERVICE_ACCOUNT_TOKEN",
        "false",
        "Mount the ServiceAccount token into job pods.",
    ),
    var(
        "KUBERNETES_JOB_TTL_SECONDS_AFTER_FINISHED",
        "600",
        "ttlSecondsAfterFinished of Jobs, a safety net for Jobs left behind (0 = not set; ignored with KUBERNETES_KEEP_JOBS).",
    ),
    var(
        "KUBERNETES_JOB_PENDING_TIMEOUT",
        "10m",
        "A job whose pod stays pending or unschedulable this long fails.",
    ),
    var(
        "KUBERNETES_JOB_UNSCHEDULABLE_TIMEOUT",
        "1m",
        "A job whose pod the scheduler cannot place fails after this long, with the scheduler's reason, unless a cluster autoscaler reports adding a node for it (TriggeredScaleUp); then it waits up to KUBERNETES_JOB_PENDING_TIMEOUT.",
    ),
    var(
        "KUBERNETES_JOB_IMAGE_PULL_TIMEOUT",
        "1m",
        "A job whose container cannot pull its image for this long fails.",
    ),
    var(
        "KUBERNETES_JOB_POD_CREATION_TIMEOUT",
        "30s",
        "A job whose Job gets no pod this long (quota, missing ServiceAccount) fails.",
    ),
    var(
        "EXECUTOR_RECOMMENDED_ULIMIT_NOFILE",
        "65536",
        "Minimum soft open-files limit (ulimit -n, at least 1) a job pod must have to count as compliant on /nfr.",
    ),
    var(
        "EXECUTOR_RECOMMENDED_ULIMIT_NPROC",
        "4096",
        "Minimum soft process limit (ulimit -u, at least 1) a job pod must have to count as compliant on /nfr.",
    ),
    var(
        "POD_NAME",
        "",
        "Name of the executor's own pod (Downward API metadata.name); when set, its container restarts count on /nfr.",
    ),
    var(
        "POD_UID",
        "",
        "UID of the executor's own pod (Downward API metadata.uid); with POD_NAME and POD_NAMESPACE equal to the jobs' namespace, every Job is owned by that pod, so deleting the pod garbage-collects its Jobs.",
    ),
    var(
        "POD_NAMESPACE",
        "",
        "Namespace of the executor's own pod (Downward API metadata.namespace); unset = EXECUTOR_KUBERNETES_NAMESPACE.",
    ),
];

/// Variables of Sourcegraph's executor that only its Firecracker and Docker runtimes (or removed code)
/// use. They are accepted so that existing manifests keep working, and their syntax is checked, but
/// they change nothing.
pub(crate) const IGNORED_VARIABLES: &[Variable] = &[
    var(
        "EXECUTOR_USE_KUBERNETES",
        "",
        "Runtime switch of newer Sourcegraph executors; ignored.",
    ),
    var(
        "EXECUTOR_CLEANUP_TASK_INTERVAL",
        "1m",
        "Firecracker VM janitor interval; ignored.",
    ),
    var(
        "EXECUTOR_VM_PREFIX",
        "executor",
        "Firecracker VM name prefix; ignored.",
    ),
    var(
        "EXECUTOR_VM_STARTUP_SCRIPT_PATH",
        "",
        "Firecracker VM startup script; ignored.",
    ),
    var("EXECUTOR_FIRECRACKER_IMAGE", "", "Firecracker VM image; ignored."),
    var(
        "EXECUTOR_FIRECRACKER_KERNEL_IMAGE",
        "",
        "Firecracker kernel image; ignored.",
    ),
    var(
        "EXECUTOR_FIRECRACKER_SANDBOX_IMAGE",
        "",
        "Firecracker sandbox image; ignored.",
    ),
    var(
        "EXECUTOR_FIRECRACKER_BANDWIDTH_INGRESS",
        "524288000",
        "Firecracker VM ingress bandwidth; ignored.",
    ),
    var(
        "EXECUTOR_FIRECRACKER_BANDWIDTH_EGRESS",
        "524288000",
        "Firecracker VM egress bandwidth; ignored.",
    ),
    var(
        "EXECUTOR_DOCKER_HOST_MOUNT_PATH",
        "",
        "Docker-in-Docker workspace path; ignored.",
    ),
    var(
        "EXECUTOR_DOCKER_REGISTRY_MIRROR_URL",
        "",
        "Registry mirror of Firecracker VMs; ignored.",
    ),
    var(
        "EXECUTOR_DOCKER_ADDITIONAL_MOUNTS",
        "",
        "Extra mounts of the Docker runtime; ignored.",
    ),
    var(
        "KUBERNETES_JOB_RETRY_BACKOFF_LIMIT",
        "600",
        "Pod polling of older executors; ignored.",
    ),
    var(
        "KUBERNETES_JOB_RETRY_BACKOFF_DURATION",
        "100ms",
        "Pod polling of older executors; ignored.",
    ),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn catalogue() -> impl Iterator<Item = &'static Variable> {
        VARIABLES.iter().chain(IGNORED_VARIABLES)
    }

    #[test]
    fn variables_have_unique_names_and_one_line_descriptions() {
        let mut seen = BTreeSet::new();
        for variable in catalogue() {
            assert!(seen.insert(variable.name), "{} listed twice", variable.name);
            assert!(
                variable
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                variable.name
            );
            assert!(variable.description.ends_with('.'), "{}", variable.name);
            assert!(!variable.description.contains('\n'), "{}", variable.name);
        }
        let contract_order: Vec<&str> = VARIABLES.iter().map(|variable| variable.name).collect();
        assert_eq!(contract_order.first(), Some(&"EXECUTOR_FRONTEND_URL"));
        assert_eq!(contract_order.last(), Some(&"POD_NAMESPACE"));
    }

    /// Every variable-like name the configuration module mentions outside its tests is in the
    /// catalogue, so nothing is read or reported under a name users cannot look up.
    #[test]
    fn the_source_mentions_only_catalogued_names() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/config");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("read src/config")
            .map(|entry| entry.expect("directory entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
            .collect();
        files.sort();
        assert!(files.len() >= 5, "{files:?}");
        let sources: Vec<String> = files
            .iter()
            .map(|path| std::fs::read_to_string(path).expect("read source"))
            .collect();
        let code: String = sources
            .iter()
            .map(|source| source.split("#[cfg(test)]").next().unwrap_or(source))
            .collect::<Vec<_>>()
            .join("\n");
        let names: BTreeSet<&str> = catalogue().map(|variable| variable.name).collect();
        let prefixes = ["EXECUTOR_", "KUBERNETES_", "SRC_", "NODE_", "DOCKER_"];
        let mentioned: BTreeSet<&str> = code
            .split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .filter(|token| prefixes.iter().any(|prefix| token.starts_with(prefix)) && !token.ends_with('_'))
            .collect();
        let unknown: Vec<&&str> = mentioned
            .iter()
            .filter(|token| !names.contains(**token))
            .collect();
        assert!(
            unknown.is_empty(),
            "not in VARIABLES or IGNORED_VARIABLES: {unknown:?}"
        );
        assert!(mentioned.len() > 60, "the scan found only {mentioned:?}");
    }
}
