//! Configuration from environment variables: Sourcegraph's executor variables plus kube-executor's own.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{NodeSelectorRequirement, PodAffinityTerm, Toleration, Volume, VolumeMount},
    apimachinery::pkg::api::resource::Quantity,
};
use serde::{Deserialize, de::DeserializeOwned};

use crate::queue::types::{KNOWN_QUEUES, Secret};

/// Which queue(s) this executor takes jobs from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueSelection {
    /// `EXECUTOR_QUEUE_NAME`: single-queue routes and heartbeat shape.
    Single(String),
    /// `EXECUTOR_QUEUE_NAMES`: multi-queue routes and heartbeat shape.
    Multi(Vec<String>),
}

/// Log output format (`SRC_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Condensed,
    Json,
    Logfmt,
    Console,
}

/// How `EXECUTOR_KUBERNETES_NODE_NAME` pins job pods (`EXECUTOR_KUBERNETES_NODE_PINNING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePinning {
    /// Required node affinity on `metadata.name`: the scheduler keeps its accounting.
    Affinity,
    /// Raw `spec.nodeName`, as Sourcegraph does: bypasses the scheduler.
    NodeName,
}

/// Workspace volume kind (`KUBERNETES_JOB_VOLUME_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeType {
    EmptyDir,
    Pvc,
}

/// The whole configuration of one executor process.
#[derive(Debug, Clone)]
pub struct Config {
    /// `EXECUTOR_FRONTEND_URL`, without a trailing slash.
    pub frontend_url: String,
    /// `EXECUTOR_FRONTEND_PASSWORD`.
    pub frontend_password: Secret<String>,
    pub queues: QueueSelection,
    /// `EXECUTOR_QUEUE_POLL_INTERVAL`.
    pub poll_interval: Duration,
    /// `EXECUTOR_MAXIMUM_NUM_JOBS` (at least 1).
    pub maximum_num_jobs: usize,
    /// `EXECUTOR_MAXIMUM_RUNTIME_PER_JOB`.
    pub maximum_runtime_per_job: Duration,
    /// `EXECUTOR_NUM_TOTAL_JOBS`; `None` = unlimited (0).
    pub num_total_jobs: Option<u64>,
    /// `EXECUTOR_MAX_ACTIVE_TIME`; `None` = unlimited (0).
    pub max_active_time: Option<Duration>,
    /// `EXECUTOR_KEEP_WORKSPACES`.
    pub keep_workspaces: bool,
    /// `EXECUTOR_JOB_NUM_CPUS` (fallback `EXECUTOR_FIRECRACKER_NUM_CPUS`): sent in dequeue requests.
    pub job_num_cpus: u32,
    /// `EXECUTOR_JOB_MEMORY` (fallback `EXECUTOR_FIRECRACKER_MEMORY`): sent in dequeue requests.
    pub job_memory: String,
    /// `EXECUTOR_FIRECRACKER_DISK_SPACE`: sent in dequeue requests.
    pub job_disk_space: String,
    /// `NODE_EXPORTER_URL`, forwarded in heartbeats when set.
    pub node_exporter_url: Option<String>,
    /// `DOCKER_REGISTRY_NODE_EXPORTER_URL`.
    pub docker_registry_node_exporter_url: Option<String>,
    /// `EXECUTOR_ENABLE_JOB_AUDIT_LOGGING`.
    pub job_audit_logging: bool,
    /// `SRC_LOG_LEVEL` mapped to a tracing filter directive (`debug`, `info`, `warn`, `error`).
    pub log_level: String,
    /// `SRC_LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `SRC_TRACE_LOG`.
    pub trace_log: bool,
    /// `HOSTNAME` (or the OS hostname): base of the executor name.
    pub hostname: String,
    /// `EXECUTOR_INSTANCE_ID` (default: hostname): label value on every object this executor creates.
    pub instance_id: String,
    /// `EXECUTOR_REPORTED_VERSION` (default `0.0.0+dev`).
    pub reported_version: String,
    /// `EXECUTOR_HEALTH_SERVER_ADDR` (default `:6060`, i.e. 0.0.0.0:6060).
    pub health_server_addr: SocketAddr,
    /// `EXECUTOR_SHUTDOWN_GRACE_PERIOD` (default 5m).
    pub shutdown_grace_period: Duration,
    /// `EXECUTOR_LOG_ENTRY_MAX_BYTES` (default 1 MiB).
    pub log_entry_max_bytes: usize,
    pub kubernetes: KubernetesConfig,
}

/// Everything that shapes the Kubernetes objects of a job and how they are watched.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// `EXECUTOR_KUBERNETES_CONFIG_PATH`; `None` = `$HOME/.kube/config`, then in-cluster.
    pub config_path: Option<String>,
    /// `EXECUTOR_KUBERNETES_NAMESPACE` (default `default`).
    pub namespace: String,
    /// `EXECUTOR_KUBERNETES_NODE_NAME`.
    pub node_name: Option<String>,
    /// `EXECUTOR_KUBERNETES_NODE_PINNING` (default affinity).
    pub node_pinning: NodePinning,
    /// `EXECUTOR_KUBERNETES_NODE_SELECTOR` (`k1=v1,k2=v2`).
    pub node_selector: BTreeMap<String, String>,
    /// `EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS` (JSON).
    pub node_required_affinity_match_expressions: Vec<NodeSelectorRequirement>,
    /// `EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_FIELDS` (JSON).
    pub node_required_affinity_match_fields: Vec<NodeSelectorRequirement>,
    /// `EXECUTOR_KUBERNETES_POD_AFFINITY` (JSON; every term has a non-empty topologyKey).
    pub pod_affinity: Vec<PodAffinityTerm>,
    /// `EXECUTOR_KUBERNETES_POD_ANTI_AFFINITY` (JSON; every term has a non-empty topologyKey).
    pub pod_anti_affinity: Vec<PodAffinityTerm>,
    /// `EXECUTOR_KUBERNETES_NODE_TOLERATIONS` (JSON).
    pub tolerations: Vec<Toleration>,
    /// `EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU`; `None` when unset or zero.
    pub request_cpu: Option<Quantity>,
    /// `EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY` (default 12Gi); `None` when zero.
    pub request_memory: Option<Quantity>,
    /// `EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU`; `None` when unset or zero.
    pub limit_cpu: Option<Quantity>,
    /// `EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY` (default 12Gi); `None` when zero.
    pub limit_memory: Option<Quantity>,
    /// `KUBERNETES_JOB_DEADLINE` seconds (default 1200).
    pub job_deadline_seconds: i64,
    /// `KUBERNETES_KEEP_JOBS`.
    pub keep_jobs: bool,
    /// `KUBERNETES_RUN_AS_USER`.
    pub run_as_user: Option<i64>,
    /// `KUBERNETES_RUN_AS_GROUP`.
    pub run_as_group: Option<i64>,
    /// `KUBERNETES_FS_GROUP` (default 1000).
    pub fs_group: Option<i64>,
    /// `KUBERNETES_JOB_ANNOTATIONS` (JSON object).
    pub job_annotations: BTreeMap<String, String>,
    /// `KUBERNETES_JOB_POD_ANNOTATIONS` (JSON object).
    pub pod_annotations: BTreeMap<String, String>,
    /// `KUBERNETES_IMAGE_PULL_SECRETS` (comma-separated names).
    pub image_pull_secrets: Vec<String>,
    /// `KUBERNETES_IMAGE_PULL_POLICY` (`Always`, `Never`, `IfNotPresent`; default IfNotPresent).
    pub image_pull_policy: String,
    /// `KUBERNETES_JOB_STEP_IMAGE` (fallback `KUBERNETES_SINGLE_JOB_STEP_IMAGE`).
    pub step_image: String,
    /// `KUBERNETES_JOB_VOLUME_TYPE`.
    pub volume_type: VolumeType,
    /// `KUBERNETES_JOB_VOLUME_SIZE` (default 5Gi).
    pub volume_size: Quantity,
    /// `KUBERNETES_ADDITIONAL_JOB_VOLUMES` (JSON array of Volume).
    pub additional_volumes: Vec<Volume>,
    /// `KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS` (JSON array of VolumeMount).
    pub additional_volume_mounts: Vec<VolumeMount>,
    /// `KUBERNETES_GIT_CA_CERT`: path inside the step image.
    pub git_ca_cert: Option<String>,
    /// `KUBERNETES_JOB_HOST_NETWORK`.
    pub host_network: bool,
    /// `KUBERNETES_JOB_SERVICE_ACCOUNT`.
    pub job_service_account: Option<String>,
    /// `KUBERNETES_JOB_AUTOMOUNT_SERVICE_ACCOUNT_TOKEN` (default false).
    pub automount_service_account_token: bool,
    /// `KUBERNETES_JOB_TTL_SECONDS_AFTER_FINISHED` (default 600; `None` when 0 or when keeping jobs).
    pub ttl_seconds_after_finished: Option<i32>,
    /// `KUBERNETES_JOB_PENDING_TIMEOUT` (default 10m).
    pub pending_timeout: Duration,
    /// `KUBERNETES_JOB_IMAGE_PULL_TIMEOUT` (default 1m).
    pub image_pull_timeout: Duration,
    /// `KUBERNETES_JOB_POD_CREATION_TIMEOUT` (default 30s).
    pub pod_creation_timeout: Duration,
}

// === Variable catalogue ===

/// One environment variable the executor reads: its name, its default as shown to users (`""` when
/// there is none) and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variable {
    pub name: &'static str,
    pub default: &'static str,
    pub description: &'static str,
}

const fn var(name: &'static str, default: &'static str, description: &'static str) -> Variable {
    Variable {
        name,
        default,
        description,
    }
}

/// Every variable of the configuration contract, in documentation order: Sourcegraph's executor
/// variables first, then kube-executor's own. Defaults here are the ones [`Config::from_vars`] applies.
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
        "Lowest level logged: dbug, info, warn, error or crit.",
    ),
    var(
        "SRC_LOG_FORMAT",
        "condensed",
        "Log format: condensed, json, logfmt or console.",
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
        "EXECUTOR_KUBERNETES_NAMESPACE",
        "default",
        "Namespace of the Jobs, Secrets and volume claims this executor creates.",
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
        "Listen address of the /healthz and /readyz endpoints.",
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
        "KUBERNETES_JOB_IMAGE_PULL_TIMEOUT",
        "1m",
        "A job whose container cannot pull its image for this long fails.",
    ),
    var(
        "KUBERNETES_JOB_POD_CREATION_TIMEOUT",
        "30s",
        "A job whose Job gets no pod this long (quota, missing ServiceAccount) fails.",
    ),
];

/// Variables of Sourcegraph's executor that only its Firecracker and Docker runtimes (or removed code)
/// use. They are accepted so that existing manifests keep working, and their syntax is checked, but
/// they change nothing.
pub const IGNORED_VARIABLES: &[Variable] = &[
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

/// Suffix of Sourcegraph's per-process override: `NAME_executor` takes precedence over `NAME`.
const OVERRIDE_SUFFIX: &str = "_executor";

fn catalogue() -> impl Iterator<Item = &'static Variable> {
    VARIABLES.iter().chain(IGNORED_VARIABLES)
}

/// The catalogue default of `name`. A default like `$HOSTNAME` stands for another variable's value,
/// which the parser applies itself.
fn default_of(name: &str) -> Option<&'static str> {
    VARIABLES
        .iter()
        .find(|variable| variable.name == name)
        .map(|variable| variable.default)
        .filter(|default| !default.is_empty() && !default.starts_with('$'))
}

// === Errors ===

/// Everything wrong with a configuration, collected in one pass so it can be fixed in one go.
#[derive(Debug, thiserror::Error)]
#[error("{}", render_problems(&self.problems))]
pub struct ConfigError {
    /// One sentence per problem, each starting with the variable at fault.
    pub problems: Vec<String>,
}

fn render_problems(problems: &[String]) -> String {
    let noun = if problems.len() == 1 {
        "problem"
    } else {
        "problems"
    };
    let mut text = format!("invalid configuration ({} {noun}):", problems.len());
    for problem in problems {
        text.push_str("\n  - ");
        text.push_str(problem);
    }
    text
}

// === Raw variables ===

/// The variables as strings, after empty values were dropped and `NAME_executor` overrides applied.
///
/// envy lowercases names, so each field is its variable's name in lowercase; `var!` derives the name
/// from the field, so a parse step cannot report a variable other than the one it reads.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct RawVars {
    executor_frontend_url: Option<String>,
    executor_frontend_password: Option<String>,
    executor_queue_name: Option<String>,
    executor_queue_names: Option<String>,
    executor_queue_poll_interval: Option<String>,
    executor_maximum_num_jobs: Option<String>,
    executor_maximum_runtime_per_job: Option<String>,
    executor_num_total_jobs: Option<String>,
    executor_max_active_time: Option<String>,
    executor_keep_workspaces: Option<String>,
    executor_use_firecracker: Option<String>,
    executor_job_num_cpus: Option<String>,
    executor_firecracker_num_cpus: Option<String>,
    executor_job_memory: Option<String>,
    executor_firecracker_memory: Option<String>,
    executor_firecracker_disk_space: Option<String>,
    executor_docker_add_host_gateway: Option<String>,
    executor_docker_auth_config: Option<String>,
    node_exporter_url: Option<String>,
    docker_registry_node_exporter_url: Option<String>,
    executor_enable_job_audit_logging: Option<String>,
    src_log_level: Option<String>,
    src_log_format: Option<String>,
    src_trace_log: Option<String>,
    hostname: Option<String>,
    executor_kubernetes_config_path: Option<String>,
    executor_kubernetes_namespace: Option<String>,
    executor_kubernetes_node_name: Option<String>,
    executor_kubernetes_node_selector: Option<String>,
    executor_kubernetes_node_required_affinity_match_expressions: Option<String>,
    executor_kubernetes_node_required_affinity_match_fields: Option<String>,
    executor_kubernetes_pod_affinity: Option<String>,
    executor_kubernetes_pod_anti_affinity: Option<String>,
    executor_kubernetes_node_tolerations: Option<String>,
    executor_kubernetes_resource_request_cpu: Option<String>,
    executor_kubernetes_resource_request_memory: Option<String>,
    executor_kubernetes_resource_limit_cpu: Option<String>,
    executor_kubernetes_resource_limit_memory: Option<String>,
    executor_kubernetes_persistence_volume_name: Option<String>,
    kubernetes_job_deadline: Option<String>,
    kubernetes_keep_jobs: Option<String>,
    kubernetes_run_as_user: Option<String>,
    kubernetes_run_as_group: Option<String>,
    kubernetes_fs_group: Option<String>,
    kubernetes_job_annotations: Option<String>,
    kubernetes_job_pod_annotations: Option<String>,
    kubernetes_image_pull_secrets: Option<String>,
    kubernetes_image_pull_policy: Option<String>,
    kubernetes_job_step_image: Option<String>,
    kubernetes_single_job_step_image: Option<String>,
    kubernetes_job_volume_type: Option<String>,
    kubernetes_job_volume_size: Option<String>,
    kubernetes_additional_job_volumes: Option<String>,
    kubernetes_additional_job_volume_mounts: Option<String>,
    kubernetes_git_ca_cert: Option<String>,
    kubernetes_job_host_network: Option<String>,
    kubernetes_single_job_pod: Option<String>,
    executor_instance_id: Option<String>,
    executor_reported_version: Option<String>,
    executor_health_server_addr: Option<String>,
    executor_shutdown_grace_period: Option<String>,
    executor_log_entry_max_bytes: Option<String>,
    executor_kubernetes_node_pinning: Option<String>,
    kubernetes_job_service_account: Option<String>,
    kubernetes_job_automount_service_account_token: Option<String>,
    kubernetes_job_ttl_seconds_after_finished: Option<String>,
    kubernetes_job_pending_timeout: Option<String>,
    kubernetes_job_image_pull_timeout: Option<String>,
    kubernetes_job_pod_creation_timeout: Option<String>,
    // Accepted, checked, unused (`IGNORED_VARIABLES`).
    executor_use_kubernetes: Option<String>,
    executor_cleanup_task_interval: Option<String>,
    executor_vm_prefix: Option<String>,
    executor_vm_startup_script_path: Option<String>,
    executor_firecracker_image: Option<String>,
    executor_firecracker_kernel_image: Option<String>,
    executor_firecracker_sandbox_image: Option<String>,
    executor_firecracker_bandwidth_ingress: Option<String>,
    executor_firecracker_bandwidth_egress: Option<String>,
    executor_docker_host_mount_path: Option<String>,
    executor_docker_registry_mirror_url: Option<String>,
    executor_docker_additional_mounts: Option<String>,
    kubernetes_job_retry_backoff_limit: Option<String>,
    kubernetes_job_retry_backoff_duration: Option<String>,
}

/// The environment after the rules every variable shares, ready for envy.
struct Prepared {
    /// Known variables only, non-empty, overrides applied.
    vars: BTreeMap<String, String>,
    /// Variables whose value came from `NAME_executor`.
    overridden: BTreeSet<String>,
}

/// Applies the rules shared by every variable: empty means unset, `NAME_executor` wins over `NAME`,
/// and only the exact names of the catalogue are kept (envy lowercases keys, so `Executor_Queue_Name`
/// would otherwise be read as `EXECUTOR_QUEUE_NAME`).
fn prepare(vars: impl IntoIterator<Item = (String, String)>) -> Prepared {
    let known: BTreeSet<&str> = catalogue().map(|variable| variable.name).collect();
    let mut plain = BTreeMap::new();
    let mut overrides = BTreeMap::new();
    for (name, value) in vars {
        if value.is_empty() {
            continue;
        }
        if let Some(base) = name.strip_suffix(OVERRIDE_SUFFIX)
            && known.contains(base)
        {
            overrides.insert(base.to_owned(), value);
        } else if known.contains(name.as_str()) {
            plain.insert(name, value);
        }
    }
    let overridden = overrides.keys().cloned().collect();
    plain.extend(overrides);
    Prepared {
        vars: plain,
        overridden,
    }
}

// === Parsing ===

/// A variable's name and effective value: what was set, else the catalogue default.
#[derive(Clone, Copy)]
struct Var<'a> {
    name: &'static str,
    /// The variable the value came from: `name`, or an older name it falls back to.
    source: &'static str,
    value: Option<&'a str>,
}

impl<'a> Var<'a> {
    fn new(name: &'static str, value: Option<&'a str>) -> Self {
        let value = value.or_else(|| default_of(name));
        Var {
            name,
            source: name,
            value,
        }
    }

    /// `name`, or the older `fallback` name when only that is set.
    fn with_fallback(
        name: &'static str,
        value: Option<&'a str>,
        fallback: &'static str,
        fallback_value: Option<&'a str>,
    ) -> Self {
        match (value, fallback_value) {
            (None, Some(old)) => Var {
                name,
                source: fallback,
                value: Some(old),
            },
            _ => Var::new(name, value),
        }
    }

    fn is_set(&self) -> bool {
        self.value.is_some()
    }
}

/// `var!(raw.name)`: the variable `NAME` with its value, named after the field it is read from.
macro_rules! var {
    ($raw:ident . $field:ident) => {
        Var::new(catalogued_name(stringify!($field)), $raw.$field.as_deref())
    };
}

/// The catalogue's spelling of a raw field's variable. A field outside the catalogue keeps its own
/// name; `raw_fields_match_the_catalogue` makes sure there is none.
fn catalogued_name(field: &'static str) -> &'static str {
    catalogue()
        .find(|variable| variable.name.eq_ignore_ascii_case(field))
        .map_or(field, |variable| variable.name)
}

const DURATION_EXAMPLES: &str = "examples: 1s, 30m, 1h30m";
const QUANTITY_EXAMPLES: &str = "examples: 500m, 2, 1.5, 512Mi, 12Gi, 1e3";
const BOOL_VALUES: &str = "1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False";
/// Largest UID/GID and `int32` field value Kubernetes accepts.
const MAX_ID: i64 = i32::MAX as i64;
const U32_MAX: i64 = u32::MAX as i64;

/// Collects problems while turning strings into typed values. Parse methods return a placeholder
/// after recording a problem, so that every variable is checked even when an earlier one failed.
struct Parser {
    problems: Vec<String>,
    overridden: BTreeSet<String>,
}

impl Parser {
    /// How a problem names a variable: the one the user set, including where an override came from.
    fn label(&self, var: &Var<'_>) -> String {
        if self.overridden.contains(var.source) {
            format!("{} (set by {}{OVERRIDE_SUFFIX})", var.source, var.source)
        } else if var.source != var.name {
            format!("{} (fallback for {})", var.source, var.name)
        } else {
            var.source.to_owned()
        }
    }

    fn problem(&mut self, var: &Var<'_>, message: impl std::fmt::Display) {
        let label = self.label(var);
        self.problems.push(format!("{label}: {message}"));
    }

    /// Records that the value is wrong, quoting it.
    fn invalid(&mut self, var: &Var<'_>, value: &str, expected: impl std::fmt::Display) {
        self.problem(var, format_args!("{value:?} {expected}"));
    }

    fn string(&mut self, var: Var<'_>) -> Option<String> {
        var.value.map(str::to_owned)
    }

    /// A Go `strconv.ParseBool` value; `None` when unset or invalid.
    fn bool_opt(&mut self, var: Var<'_>) -> Option<bool> {
        let value = var.value?;
        let parsed = parse_go_bool(value);
        if parsed.is_none() {
            self.invalid(
                &var,
                value,
                format_args!("is not a boolean (expected one of {BOOL_VALUES})"),
            );
        }
        parsed
    }

    fn bool(&mut self, var: Var<'_>) -> bool {
        self.bool_opt(var).unwrap_or(false)
    }

    /// An integer within `min..=max`; `None` when unset or invalid.
    fn int(&mut self, var: Var<'_>, min: i64, max: i64) -> Option<i64> {
        let value = var.value?;
        match value.parse::<i64>() {
            Ok(parsed) if parsed < min => {
                self.invalid(
                    &var,
                    value,
                    format_args!("is too small (expected at least {min})"),
                );
                None
            }
            Ok(parsed) if parsed > max => {
                self.invalid(&var, value, format_args!("is too large (expected at most {max})"));
                None
            }
            Ok(parsed) => Some(parsed),
            Err(_) => {
                self.invalid(&var, value, "is not an integer");
                None
            }
        }
    }

    /// An integer within `min..=max` converted to `T` (the caller picks `max` so that it fits).
    fn int_as<T: TryFrom<i64>>(&mut self, var: Var<'_>, min: i64, max: i64) -> Option<T> {
        self.int(var, min, max)
            .and_then(|parsed| T::try_from(parsed).ok())
    }

    /// A Go duration; `None` when unset or invalid. Negative durations are rejected.
    fn duration(&mut self, var: Var<'_>) -> Option<Duration> {
        let value = var.value?;
        match parse_go_duration(value) {
            Some(nanos) if nanos < 0 => {
                self.invalid(&var, value, "is negative (expected a duration of 0 or more)");
                None
            }
            Some(nanos) => Some(Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))),
            None => {
                self.invalid(
                    &var,
                    value,
                    format_args!("is not a duration ({DURATION_EXAMPLES})"),
                );
                None
            }
        }
    }

    /// A duration greater than zero, or `Duration::ZERO` after recording a problem.
    fn positive_duration(&mut self, var: Var<'_>) -> Duration {
        let parsed = self.duration(var);
        if parsed == Some(Duration::ZERO)
            && let Some(value) = var.value
        {
            self.invalid(&var, value, "must be greater than 0");
        }
        parsed.unwrap_or_default()
    }

    /// A Kubernetes quantity of 0 or more; `Some(None)` for zero, `None` when unset or invalid.
    fn quantity(&mut self, var: Var<'_>) -> Option<Option<Quantity>> {
        let value = var.value?;
        match parse_quantity(value) {
            Ok(parsed) if parsed.negative && !parsed.zero => {
                self.invalid(&var, value, "is negative (expected a quantity of 0 or more)");
                None
            }
            Ok(parsed) if parsed.zero => Some(None),
            Ok(_) => Some(Some(Quantity(value.to_owned()))),
            Err(reason) => {
                self.invalid(
                    &var,
                    value,
                    format_args!("is not a Kubernetes quantity: {reason} ({QUANTITY_EXAMPLES})"),
                );
                None
            }
        }
    }

    /// A JSON document of type `T`; `None` when unset or invalid.
    fn json<T: DeserializeOwned>(&mut self, var: Var<'_>, shape: &str) -> Option<T> {
        let value = var.value?;
        match serde_json::from_str(value) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                self.invalid(&var, value, format_args!("is not a valid JSON {shape}: {error}"));
                None
            }
        }
    }

    /// One of `choices`, compared exactly.
    fn choice<T: Copy>(&mut self, var: Var<'_>, choices: &[(&str, T)], fallback: T) -> T {
        let Some(value) = var.value else { return fallback };
        if let Some((_, parsed)) = choices.iter().find(|(name, _)| *name == value) {
            return *parsed;
        }
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        self.invalid(&var, value, format_args!("is not one of {}", names.join(", ")));
        fallback
    }

    /// A UID or GID as Kubernetes accepts them, worded like Sourcegraph's own message.
    fn id(&mut self, var: Var<'_>, kind: &str) -> Option<i64> {
        let value = var.value?;
        match value.parse::<i64>() {
            Ok(parsed) if (0..=MAX_ID).contains(&parsed) => Some(parsed),
            _ => {
                let label = self.label(&var);
                self.problems.push(format!(
                    "{label} must be a {kind} in the range 0 to 2,147,483,647, but got {value:?}."
                ));
                None
            }
        }
    }

    /// A lowercase DNS name as Kubernetes requires for object names (`max` 63 for labels, 253 for
    /// subdomains).
    fn dns_name(&mut self, var: Var<'_>, max: usize) -> Option<String> {
        let value = var.value?;
        let allow_dots = max > 63;
        if !is_dns_name(value, max, allow_dots) {
            let rule = if allow_dots {
                "is not a valid Kubernetes name (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters)"
            } else {
                "is not a valid Kubernetes name (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)"
            };
            self.invalid(&var, value, rule);
        }
        Some(value.to_owned())
    }
}

impl Config {
    /// Reads the configuration from the process environment.
    ///
    /// # Errors
    /// Every problem found, see [`Config::from_vars`]; also variables whose value is not UTF-8.
    pub fn from_env() -> Result<Config, ConfigError> {
        let mut vars = Vec::new();
        let mut problems = Vec::new();
        // NB: `std::env::vars()` panics on a non-UTF-8 entry anywhere in the environment.
        for (name, value) in std::env::vars_os() {
            let Ok(name) = name.into_string() else { continue };
            match value.into_string() {
                Ok(value) => vars.push((name, value)),
                Err(_) => non_utf8_problem(&name, &mut problems),
            }
        }
        parse(vars, problems)
    }

    /// Reads the configuration from `(name, value)` pairs.
    ///
    /// Empty values count as unset, `NAME_executor` overrides `NAME`, and names outside
    /// [`VARIABLES`] and [`IGNORED_VARIABLES`] are not read.
    ///
    /// # Errors
    /// All problems found, each naming its variable; the frontend password is never quoted.
    pub fn from_vars<I: IntoIterator<Item = (String, String)>>(vars: I) -> Result<Config, ConfigError> {
        parse(vars, Vec::new())
    }
}

fn non_utf8_problem(name: &str, problems: &mut Vec<String>) {
    let base = name.strip_suffix(OVERRIDE_SUFFIX).unwrap_or(name);
    if catalogue().any(|variable| variable.name == base) {
        problems.push(format!("{name}: the value is not valid UTF-8"));
    }
}

fn raw_vars(prepared: &Prepared) -> Result<RawVars, ConfigError> {
    let pairs = prepared
        .vars
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()));
    envy::from_iter(pairs).map_err(|error| ConfigError {
        problems: vec![format!("reading the environment failed: {error}")],
    })
}

fn parse(
    vars: impl IntoIterator<Item = (String, String)>,
    problems: Vec<String>,
) -> Result<Config, ConfigError> {
    let prepared = prepare(vars);
    let raw = raw_vars(&prepared)?;
    let mut parser = Parser {
        problems,
        overridden: prepared.overridden,
    };
    let config = build(&raw, &mut parser);
    if parser.problems.is_empty() {
        return Ok(config);
    }
    let mut problems = parser.problems;
    redact_password(&mut problems, raw.executor_frontend_password.as_deref());
    Err(ConfigError { problems })
}

/// NB: a password pasted into the wrong variable would otherwise be quoted back; short values are
/// left alone because replacing them would mangle unrelated text (the frontend demands 20+ chars).
fn redact_password(problems: &mut [String], password: Option<&str>) {
    let Some(password) = password.filter(|password| password.len() >= 6) else {
        return;
    };
    for problem in problems {
        if problem.contains(password) {
            *problem = problem.replace(password, "[redacted]");
        }
    }
}

fn build(raw: &RawVars, p: &mut Parser) -> Config {
    let add_host_gateway = p.bool(var!(raw.executor_docker_add_host_gateway));
    let frontend_url = frontend_url(p, var!(raw.executor_frontend_url), add_host_gateway);
    let password = var!(raw.executor_frontend_password);
    if !password.is_set() {
        p.problem(
            &password,
            "is required (the site configuration's executors.accessToken)",
        );
    }
    let frontend_password = Secret::new(password.value.unwrap_or_default().to_owned());
    let queues = queues(p, var!(raw.executor_queue_name), var!(raw.executor_queue_names));

    let poll_interval = p.positive_duration(var!(raw.executor_queue_poll_interval));
    let maximum_num_jobs = p
        .int_as(var!(raw.executor_maximum_num_jobs), 1, U32_MAX)
        .unwrap_or(1);
    let maximum_runtime_per_job = p.positive_duration(var!(raw.executor_maximum_runtime_per_job));
    let num_total_jobs = p
        .int_as::<u64>(var!(raw.executor_num_total_jobs), 0, i64::MAX)
        .filter(|n| *n > 0);
    let max_active_time = p
        .duration(var!(raw.executor_max_active_time))
        .filter(|d| !d.is_zero());
    let keep_workspaces = p.bool(var!(raw.executor_keep_workspaces));

    let use_firecracker = var!(raw.executor_use_firecracker);
    if p.bool(use_firecracker) {
        p.problem(
            &use_firecracker,
            "true is not supported: kube-executor runs every job as a Kubernetes Job; set it to false or leave it unset",
        );
    }

    let cpus = Var::with_fallback(
        "EXECUTOR_JOB_NUM_CPUS",
        raw.executor_job_num_cpus.as_deref(),
        "EXECUTOR_FIRECRACKER_NUM_CPUS",
        raw.executor_firecracker_num_cpus.as_deref(),
    );
    let job_num_cpus = p.int_as(cpus, 0, U32_MAX).unwrap_or(0);
    let memory = Var::with_fallback(
        "EXECUTOR_JOB_MEMORY",
        raw.executor_job_memory.as_deref(),
        "EXECUTOR_FIRECRACKER_MEMORY",
        raw.executor_firecracker_memory.as_deref(),
    );
    let job_memory = data_size(p, memory);
    let job_disk_space = data_size(p, var!(raw.executor_firecracker_disk_space));

    let docker_auth = var!(raw.executor_docker_auth_config);
    if let Some(value) = docker_auth.value {
        check_secret_json_object(p, &docker_auth, value);
    }
    let node_exporter_url = exporter_url(p, var!(raw.node_exporter_url));
    let docker_registry_node_exporter_url = exporter_url(p, var!(raw.docker_registry_node_exporter_url));
    let job_audit_logging = p.bool(var!(raw.executor_enable_job_audit_logging));
    let log_level = log_level(p, var!(raw.src_log_level));
    let log_format = log_format(p, var!(raw.src_log_format));
    let trace_log = p.bool(var!(raw.src_trace_log));

    let hostname = p.string(var!(raw.hostname)).unwrap_or_else(os_hostname);
    let instance_id = instance_id(p, var!(raw.executor_instance_id), &hostname);
    let reported_version = p.string(var!(raw.executor_reported_version)).unwrap_or_default();
    let health_server_addr = listen_addr(p, var!(raw.executor_health_server_addr));
    let shutdown_grace_period = p
        .duration(var!(raw.executor_shutdown_grace_period))
        .unwrap_or_default();
    let log_entry_max_bytes = p
        .int_as(var!(raw.executor_log_entry_max_bytes), 4096, U32_MAX)
        .unwrap_or(4096);

    check_ignored(p, raw);
    let kubernetes = kubernetes(p, raw);

    Config {
        frontend_url,
        frontend_password,
        queues,
        poll_interval,
        maximum_num_jobs,
        maximum_runtime_per_job,
        num_total_jobs,
        max_active_time,
        keep_workspaces,
        job_num_cpus,
        job_memory,
        job_disk_space,
        node_exporter_url,
        docker_registry_node_exporter_url,
        job_audit_logging,
        log_level,
        log_format,
        trace_log,
        hostname,
        instance_id,
        reported_version,
        health_server_addr,
        shutdown_grace_period,
        log_entry_max_bytes,
        kubernetes,
    }
}

fn kubernetes(p: &mut Parser, raw: &RawVars) -> KubernetesConfig {
    let config_path = p.string(var!(raw.executor_kubernetes_config_path));
    let namespace = p
        .dns_name(var!(raw.executor_kubernetes_namespace), 63)
        .unwrap_or_default();
    let node_name = p.dns_name(var!(raw.executor_kubernetes_node_name), 253);
    let node_pinning = node_pinning(p, var!(raw.executor_kubernetes_node_pinning));
    let node_selector = node_selector(p, var!(raw.executor_kubernetes_node_selector));
    let node_required_affinity_match_expressions = node_requirements(
        p,
        var!(raw.executor_kubernetes_node_required_affinity_match_expressions),
    );
    let node_required_affinity_match_fields = node_requirements(
        p,
        var!(raw.executor_kubernetes_node_required_affinity_match_fields),
    );
    let pod_affinity = pod_affinity_terms(p, var!(raw.executor_kubernetes_pod_affinity));
    let pod_anti_affinity = pod_affinity_terms(p, var!(raw.executor_kubernetes_pod_anti_affinity));
    let tolerations = p
        .json(
            var!(raw.executor_kubernetes_node_tolerations),
            "array of Toleration",
        )
        .unwrap_or_default();

    let request_cpu = p
        .quantity(var!(raw.executor_kubernetes_resource_request_cpu))
        .flatten();
    let limit_cpu = p
        .quantity(var!(raw.executor_kubernetes_resource_limit_cpu))
        .flatten();
    let request_memory = p
        .quantity(var!(raw.executor_kubernetes_resource_request_memory))
        .flatten();
    let limit_memory = p
        .quantity(var!(raw.executor_kubernetes_resource_limit_memory))
        .flatten();
    check_request_within_limit(
        p,
        (var!(raw.executor_kubernetes_resource_request_cpu), &request_cpu),
        (var!(raw.executor_kubernetes_resource_limit_cpu), &limit_cpu),
    );
    check_request_within_limit(
        p,
        (
            var!(raw.executor_kubernetes_resource_request_memory),
            &request_memory,
        ),
        (var!(raw.executor_kubernetes_resource_limit_memory), &limit_memory),
    );
    // Vestigial in Sourcegraph too: only its removed multi-job mode mounted this claim.
    let _unused_persistence_volume = p.string(var!(raw.executor_kubernetes_persistence_volume_name));

    let deadline = var!(raw.kubernetes_job_deadline);
    let job_deadline_seconds = p.int(deadline, 1, i64::MAX).unwrap_or(1);
    let keep_jobs = p.bool(var!(raw.kubernetes_keep_jobs));
    let run_as_user = p.id(var!(raw.kubernetes_run_as_user), "UID");
    let run_as_group = p.id(var!(raw.kubernetes_run_as_group), "GID");
    let fs_group = p.id(var!(raw.kubernetes_fs_group), "GID");
    let job_annotations = p
        .json(var!(raw.kubernetes_job_annotations), "object of string values")
        .unwrap_or_default();
    let pod_annotations = p
        .json(
            var!(raw.kubernetes_job_pod_annotations),
            "object of string values",
        )
        .unwrap_or_default();
    let image_pull_secrets = image_pull_secrets(p, var!(raw.kubernetes_image_pull_secrets));
    let image_pull_policy = p.choice(
        var!(raw.kubernetes_image_pull_policy),
        &[
            ("Always", "Always"),
            ("Never", "Never"),
            ("IfNotPresent", "IfNotPresent"),
        ],
        "IfNotPresent",
    );
    let step_image = Var::with_fallback(
        "KUBERNETES_JOB_STEP_IMAGE",
        raw.kubernetes_job_step_image.as_deref(),
        "KUBERNETES_SINGLE_JOB_STEP_IMAGE",
        raw.kubernetes_single_job_step_image.as_deref(),
    );
    let step_image = image_reference(p, step_image);
    let volume_type = p.choice(
        var!(raw.kubernetes_job_volume_type),
        &[("emptyDir", VolumeType::EmptyDir), ("pvc", VolumeType::Pvc)],
        VolumeType::EmptyDir,
    );
    let volume_size_var = var!(raw.kubernetes_job_volume_size);
    let volume_size = match p.quantity(volume_size_var) {
        Some(Some(size)) => size,
        Some(None) => {
            p.invalid(
                &volume_size_var,
                volume_size_var.value.unwrap_or_default(),
                "must be greater than 0",
            );
            Quantity::default()
        }
        None => Quantity::default(),
    };
    let additional_volumes = p
        .json(var!(raw.kubernetes_additional_job_volumes), "array of Volume")
        .unwrap_or_default();
    let additional_volume_mounts = p
        .json(
            var!(raw.kubernetes_additional_job_volume_mounts),
            "array of VolumeMount",
        )
        .unwrap_or_default();
    let git_ca_cert = p.string(var!(raw.kubernetes_git_ca_cert));
    let host_network = p.bool(var!(raw.kubernetes_job_host_network));
    let single_job_pod = var!(raw.kubernetes_single_job_pod);
    if p.bool_opt(single_job_pod) == Some(false) {
        p.problem(
            &single_job_pod,
            "false is not supported: kube-executor runs each job as a single pod; set it to true or leave it unset",
        );
    }
    let job_service_account = p.dns_name(var!(raw.kubernetes_job_service_account), 253);
    let automount_service_account_token = p.bool(var!(raw.kubernetes_job_automount_service_account_token));
    let ttl = p.int_as::<i32>(var!(raw.kubernetes_job_ttl_seconds_after_finished), 0, MAX_ID);
    let ttl_seconds_after_finished = ttl.filter(|seconds| *seconds > 0 && !keep_jobs);
    let pending_timeout = p.positive_duration(var!(raw.kubernetes_job_pending_timeout));
    let image_pull_timeout = p.positive_duration(var!(raw.kubernetes_job_image_pull_timeout));
    let pod_creation_timeout = p.positive_duration(var!(raw.kubernetes_job_pod_creation_timeout));

    KubernetesConfig {
        config_path,
        namespace,
        node_name,
        node_pinning,
        node_selector,
        node_required_affinity_match_expressions,
        node_required_affinity_match_fields,
        pod_affinity,
        pod_anti_affinity,
        tolerations,
        request_cpu,
        request_memory,
        limit_cpu,
        limit_memory,
        job_deadline_seconds,
        keep_jobs,
        run_as_user,
        run_as_group,
        fs_group,
        job_annotations,
        pod_annotations,
        image_pull_secrets,
        image_pull_policy: image_pull_policy.to_owned(),
        step_image,
        volume_type,
        volume_size,
        additional_volumes,
        additional_volume_mounts,
        git_ca_cert,
        host_network,
        job_service_account,
        automount_service_account_token,
        ttl_seconds_after_finished,
        pending_timeout,
        image_pull_timeout,
        pod_creation_timeout,
    }
}

// === Individual variables ===

fn frontend_url(p: &mut Parser, var: Var<'_>, add_host_gateway: bool) -> String {
    let Some(value) = var.value else {
        p.problem(
            &var,
            "is required (for example http://sourcegraph-frontend:30080)",
        );
        return String::new();
    };
    match parse_http_url(value) {
        Ok(url) => {
            if url.host.eq_ignore_ascii_case("host.docker.internal") && !add_host_gateway {
                p.problem(
                    &var,
                    "points at host.docker.internal, which needs EXECUTOR_DOCKER_ADD_HOST_GATEWAY=true",
                );
            }
            value.trim_end_matches('/').to_owned()
        }
        // NB: user information may hold a password, so that value is not quoted.
        Err(UrlError::UserInfo) => {
            p.problem(&var, "must not contain user information (user:password@); the executor authenticates with EXECUTOR_FRONTEND_PASSWORD");
            String::new()
        }
        Err(UrlError::Invalid(reason)) => {
            p.invalid(
                &var,
                value,
                format_args!("is not a URL of the form http(s)://host[:port][/path]: {reason}"),
            );
            String::new()
        }
    }
}

fn exporter_url(p: &mut Parser, var: Var<'_>) -> Option<String> {
    let value = var.value?;
    match parse_http_url(value) {
        Ok(_) => {}
        Err(UrlError::UserInfo) => p.problem(&var, "must not contain user information (user:password@)"),
        Err(UrlError::Invalid(reason)) => {
            p.invalid(
                &var,
                value,
                format_args!("is not a URL of the form http(s)://host[:port][/path]: {reason}"),
            );
        }
    }
    Some(value.to_owned())
}

fn queues(p: &mut Parser, single: Var<'_>, multi: Var<'_>) -> QueueSelection {
    let known = KNOWN_QUEUES.join(" or ");
    match (single.value, multi.value) {
        (None, None) => {
            p.problems.push(format!(
                "neither {} nor {} is set (expected one of them, naming {known})",
                p.label(&single),
                p.label(&multi)
            ));
            QueueSelection::Single(String::new())
        }
        (Some(_), Some(_)) => {
            p.problems.push(format!(
                "both {} and {} are set (expected exactly one of them)",
                p.label(&single),
                p.label(&multi)
            ));
            QueueSelection::Single(String::new())
        }
        (Some(name), None) => {
            if !KNOWN_QUEUES.contains(&name) {
                p.invalid(
                    &single,
                    name,
                    format_args!("is not a known queue (expected {known})"),
                );
            }
            QueueSelection::Single(name.to_owned())
        }
        (None, Some(list)) => {
            let mut names: Vec<String> = Vec::new();
            // NB: like Sourcegraph, no trimming: " batches" would be sent to the frontend verbatim.
            for name in list.split(',') {
                if !KNOWN_QUEUES.contains(&name) {
                    p.invalid(
                        &multi,
                        name,
                        format_args!(
                            "is not a known queue (expected {known}, comma-separated without spaces)"
                        ),
                    );
                } else if names.iter().any(|seen| seen == name) {
                    p.invalid(&multi, name, "is listed more than once");
                }
                names.push(name.to_owned());
            }
            QueueSelection::Multi(names)
        }
    }
}

/// Sizes like `12G` that the frontend interprets; only the shape is checked here.
fn data_size(p: &mut Parser, var: Var<'_>) -> String {
    let Some(value) = var.value else {
        return String::new();
    };
    let digits = value
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, unit) = value.split_at(digits);
    let number_ok = !number.is_empty() && number.parse::<f64>().is_ok();
    let unit_ok = unit
        .trim_start_matches(' ')
        .bytes()
        .all(|b| b.is_ascii_alphabetic());
    if !number_ok || !unit_ok {
        p.invalid(&var, value, "is not a size (examples: 12G, 512M, 20GB)");
    }
    value.to_owned()
}

/// Checks a secret JSON document without ever quoting it: only the position of a syntax error.
fn check_secret_json_object(p: &mut Parser, var: &Var<'_>, value: &str) {
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(serde_json::Value::Object(_)) => {}
        Ok(_) => p.problem(var, "is not a JSON object like {\"auths\": {...}} (value not shown: it holds credentials)"),
        Err(error) => p.problem(
            var,
            format_args!(
                "is not valid JSON: syntax error at line {} column {} (value not shown: it holds credentials)",
                error.line(),
                error.column()
            ),
        ),
    }
}

fn log_level(p: &mut Parser, var: Var<'_>) -> String {
    let Some(value) = var.value else {
        return "warn".to_owned();
    };
    let directive = match value.to_ascii_lowercase().as_str() {
        "dbug" | "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "eror" | "error" => "error",
        // tracing has no level above error.
        "crit" => "error",
        _ => {
            p.invalid(
                &var,
                value,
                "is not a log level (expected dbug, info, warn, error or crit)",
            );
            "warn"
        }
    };
    directive.to_owned()
}

fn log_format(p: &mut Parser, var: Var<'_>) -> LogFormat {
    let Some(value) = var.value else {
        return LogFormat::Condensed;
    };
    match value.to_ascii_lowercase().as_str() {
        "condensed" => LogFormat::Condensed,
        "json" => LogFormat::Json,
        "logfmt" => LogFormat::Logfmt,
        "console" => LogFormat::Console,
        _ => {
            p.invalid(
                &var,
                value,
                "is not a log format (expected condensed, json, logfmt or console)",
            );
            LogFormat::Condensed
        }
    }
}

/// The machine's hostname, as Go's `os.Hostname` reads it, when `HOSTNAME` is unset.
fn os_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|content| content.trim().to_owned())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "executor".to_owned())
}

fn instance_id(p: &mut Parser, var: Var<'_>, hostname: &str) -> String {
    const RULE: &str = "is not a valid Kubernetes label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)";
    match var.value {
        Some(value) => {
            if !is_label_value(value) {
                p.invalid(&var, value, RULE);
            }
            value.to_owned()
        }
        None => {
            if !is_label_value(hostname) {
                p.problem(
                    &var,
                    format_args!("is unset, so it defaults to the hostname {hostname:?}, which {RULE}; set EXECUTOR_INSTANCE_ID"),
                );
            }
            hostname.to_owned()
        }
    }
}

fn listen_addr(p: &mut Parser, var: Var<'_>) -> SocketAddr {
    let fallback = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 6060);
    let Some(value) = var.value else { return fallback };
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return addr;
    }
    let parsed = value.rsplit_once(':').and_then(|(host, port)| {
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|_| port.bytes().all(|b| b.is_ascii_digit()))?;
        match host {
            "" => Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)),
            "localhost" => Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
            _ => None,
        }
    });
    parsed.unwrap_or_else(|| {
        p.invalid(
            &var,
            value,
            "is not a listen address (examples: :6060, 0.0.0.0:6060, 127.0.0.1:6060, [::]:6060, localhost:6060)",
        );
        fallback
    })
}

fn node_pinning(p: &mut Parser, var: Var<'_>) -> NodePinning {
    let Some(value) = var.value else {
        return NodePinning::Affinity;
    };
    match value.to_ascii_lowercase().as_str() {
        "affinity" => NodePinning::Affinity,
        "nodename" => NodePinning::NodeName,
        _ => {
            p.invalid(
                &var,
                value,
                "is not a node pinning mode (expected affinity or nodeName)",
            );
            NodePinning::Affinity
        }
    }
}

fn node_selector(p: &mut Parser, var: Var<'_>) -> BTreeMap<String, String> {
    let mut selector = BTreeMap::new();
    let Some(value) = var.value else { return selector };
    for pair in value.split(',') {
        match pair.split_once('=') {
            Some((key, label)) if !key.is_empty() && !label.contains('=') => {
                selector.insert(key.to_owned(), label.to_owned());
            }
            _ => p.invalid(
                &var,
                pair,
                "is not a key=value pair (expected comma-separated key=value pairs, e.g. disk=ssd,zone=a)",
            ),
        }
    }
    selector
}

const REQUIREMENT_OPERATORS: [&str; 6] = ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"];

fn node_requirements(p: &mut Parser, var: Var<'_>) -> Vec<NodeSelectorRequirement> {
    let requirements: Vec<NodeSelectorRequirement> = p
        .json(var, "array of NodeSelectorRequirement")
        .unwrap_or_default();
    for (index, requirement) in requirements.iter().enumerate() {
        if requirement.key.is_empty() {
            p.problem(&var, format_args!("entry {index} has an empty key"));
        }
        if !REQUIREMENT_OPERATORS.contains(&requirement.operator.as_str()) {
            p.problem(
                &var,
                format_args!(
                    "entry {index} has operator {:?} (expected one of {})",
                    requirement.operator,
                    REQUIREMENT_OPERATORS.join(", ")
                ),
            );
        }
    }
    requirements
}

fn pod_affinity_terms(p: &mut Parser, var: Var<'_>) -> Vec<PodAffinityTerm> {
    let terms: Vec<PodAffinityTerm> = p.json(var, "array of PodAffinityTerm").unwrap_or_default();
    for (index, term) in terms.iter().enumerate() {
        // Kubernetes rejects an empty topologyKey, which would fail every Job at creation.
        if term.topology_key.is_empty() {
            p.problem(
                &var,
                format_args!("entry {index} has no topologyKey (expected e.g. \"topologyKey\": \"kubernetes.io/hostname\")"),
            );
        }
    }
    terms
}

/// Kubernetes rejects a pod whose request exceeds its limit; say so now rather than per job.
fn check_request_within_limit(
    p: &mut Parser,
    (request_var, request): (Var<'_>, &Option<Quantity>),
    (limit_var, limit): (Var<'_>, &Option<Quantity>),
) {
    let (Some(request), Some(limit)) = (request, limit) else {
        return;
    };
    let (Some(request_value), Some(limit_value)) = (quantity_value(&request.0), quantity_value(&limit.0))
    else {
        return;
    };
    if request_value > limit_value * (1.0 + 1e-12) {
        let limit_label = p.label(&limit_var);
        p.invalid(
            &request_var,
            &request.0,
            format_args!(
                "is more than {limit_label} {:?}; Kubernetes rejects pods whose request exceeds their limit",
                limit.0
            ),
        );
    }
}

fn image_pull_secrets(p: &mut Parser, var: Var<'_>) -> Vec<String> {
    let Some(value) = var.value else { return Vec::new() };
    let names: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect();
    for name in &names {
        if !is_dns_name(name, 253, true) {
            p.invalid(
                &var,
                name,
                "is not a valid Secret name (lowercase letters, digits, '-' and '.')",
            );
        }
    }
    names
}

fn image_reference(p: &mut Parser, var: Var<'_>) -> String {
    let Some(value) = var.value else {
        return String::new();
    };
    if value.chars().any(char::is_whitespace) {
        p.invalid(&var, value, "is not an image reference (it contains whitespace)");
    }
    value.to_owned()
}

/// Variables Sourcegraph's other runtimes use: accepted, ignored, but still checked so a typo does
/// not go unnoticed until the configuration is moved to an executor that reads them.
fn check_ignored(p: &mut Parser, raw: &RawVars) {
    p.bool(var!(raw.executor_use_kubernetes));
    p.duration(var!(raw.executor_cleanup_task_interval));
    p.int(
        var!(raw.executor_firecracker_bandwidth_ingress),
        i64::MIN,
        i64::MAX,
    );
    p.int(
        var!(raw.executor_firecracker_bandwidth_egress),
        i64::MIN,
        i64::MAX,
    );
    p.int(var!(raw.kubernetes_job_retry_backoff_limit), i64::MIN, i64::MAX);
    p.duration(var!(raw.kubernetes_job_retry_backoff_duration));
    // Free-form strings: nothing to check.
    let _ = (
        &raw.executor_vm_prefix,
        &raw.executor_vm_startup_script_path,
        &raw.executor_firecracker_image,
        &raw.executor_firecracker_kernel_image,
        &raw.executor_firecracker_sandbox_image,
        &raw.executor_docker_host_mount_path,
        &raw.executor_docker_registry_mirror_url,
        &raw.executor_docker_additional_mounts,
    );
}

// === Syntax ===

/// Go's `strconv.ParseBool`.
fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `time.ParseDuration`: an optional sign, then one or more `<decimal><unit>` with units ns,
/// us (µs), ms, s, m, h; a bare `0` is allowed. Returns signed nanoseconds; `None` when the text is
/// not a duration or does not fit Go's 64-bit nanosecond range.
fn parse_go_duration(text: &str) -> Option<i128> {
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        rest = after_int;
        let mut fraction_digits = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let fraction_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            (fraction_digits, rest) = after_dot.split_at(fraction_len);
        }
        if int_digits.is_empty() && fraction_digits.is_empty() {
            return None;
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (unit, after_unit) = rest.split_at(unit_len);
        rest = after_unit;
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let int: u128 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().ok()?
        };
        let mut nanos = int.checked_mul(unit_nanos)?;
        if !fraction_digits.is_empty() {
            // Digits beyond 20 are below a nanosecond even for hours.
            let kept = &fraction_digits[..fraction_digits.len().min(20)];
            let fraction: u128 = kept.parse().ok()?;
            let scale = 10u128.checked_pow(u32::try_from(kept.len()).ok()?)?;
            nanos = nanos.checked_add(fraction * unit_nanos / scale)?;
        }
        total = total.checked_add(nanos)?;
        if total > 1u128 << 63 {
            return None;
        }
    }
    let limit = if negative { 1u128 << 63 } else { (1u128 << 63) - 1 };
    if total > limit {
        return None;
    }
    let total = i128::try_from(total).ok()?;
    Some(if negative { -total } else { total })
}

/// What the quantity checks need to know about a valid quantity.
#[derive(Debug, PartialEq, Eq)]
struct QuantityShape {
    negative: bool,
    zero: bool,
}

const BINARY_SUFFIXES: [(&str, i32); 6] = [
    ("Ki", 10),
    ("Mi", 20),
    ("Gi", 30),
    ("Ti", 40),
    ("Pi", 50),
    ("Ei", 60),
];
const DECIMAL_SUFFIXES: [(&str, i32); 9] = [
    ("n", -9),
    ("u", -6),
    ("m", -3),
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
];

/// Splits a quantity into its number and suffix after checking Kubernetes' grammar:
/// `<sign>?<digits>[.<digits>]<suffix>` with suffix empty, a binary SI suffix (Ki…Ei), a decimal SI
/// suffix (n, u, m, k, M, G, T, P, E) or an exponent (`e`/`E` and a signed integer).
fn split_quantity(text: &str) -> Result<(&str, &str), String> {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let int_len = unsigned.bytes().take_while(u8::is_ascii_digit).count();
    let mut number_len = int_len;
    let mut fraction_len = 0;
    if unsigned[int_len..].starts_with('.') {
        fraction_len = unsigned[int_len + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        number_len += 1 + fraction_len;
    }
    if int_len + fraction_len == 0 {
        return Err("it does not start with a number".to_owned());
    }
    let sign_len = text.len() - unsigned.len();
    let (number, suffix) = text.split_at(sign_len + number_len);
    let known_suffix = suffix.is_empty()
        || BINARY_SUFFIXES
            .iter()
            .chain(&DECIMAL_SUFFIXES)
            .any(|(name, _)| *name == suffix)
        || suffix
            .strip_prefix(['e', 'E'])
            .map(|exponent| exponent.strip_prefix(['+', '-']).unwrap_or(exponent))
            .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
    if !known_suffix {
        return Err(format!(
            "unknown suffix {suffix:?} (expected Ki, Mi, Gi, Ti, Pi, Ei, n, u, m, k, M, G, T, P, E or an exponent like e3)"
        ));
    }
    Ok((number, suffix))
}

fn parse_quantity(text: &str) -> Result<QuantityShape, String> {
    let (number, _) = split_quantity(text)?;
    Ok(QuantityShape {
        negative: number.starts_with('-'),
        zero: number.bytes().all(|b| !b.is_ascii_digit() || b == b'0'),
    })
}

/// Approximate value of a valid quantity, precise enough to compare a request with a limit.
fn quantity_value(text: &str) -> Option<f64> {
    let (number, suffix) = split_quantity(text).ok()?;
    let mantissa: f64 = number.parse().ok()?;
    let scale = if let Some((_, power)) = BINARY_SUFFIXES.iter().find(|(name, _)| *name == suffix) {
        2f64.powi(*power)
    } else if let Some((_, power)) = DECIMAL_SUFFIXES.iter().find(|(name, _)| *name == suffix) {
        10f64.powi(*power)
    } else if suffix.is_empty() {
        1.0
    } else {
        10f64.powi(suffix[1..].parse().ok()?)
    };
    Some(mantissa * scale)
}

/// Kubernetes label value: at most 63 characters, alphanumerics with `-`, `_`, `.` inside.
fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= 63
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// RFC 1123 label (`allow_dots` false) or subdomain (true) of at most `max` characters.
fn is_dns_name(value: &str, max: usize, allow_dots: bool) -> bool {
    let bytes = value.as_bytes();
    let inner_ok =
        |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || (allow_dots && *b == b'.');
    let edge_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= max && edge_ok(first) && edge_ok(last) && bytes.iter().all(inner_ok)
        }
        _ => false,
    }
}

/// The parts of an http(s) URL the checks need.
struct HttpUrl<'a> {
    host: &'a str,
}

enum UrlError {
    /// The URL has `user[:password]@`; the caller must not quote it.
    UserInfo,
    Invalid(&'static str),
}

/// `http(s)://host[:port][/path]`, with host a DNS name, an IPv4 address or a bracketed IPv6 address.
fn parse_http_url(text: &str) -> Result<HttpUrl<'_>, UrlError> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(UrlError::Invalid("no scheme:// prefix"));
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(UrlError::Invalid("the scheme must be http or https"));
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    if authority.contains('@') {
        return Err(UrlError::UserInfo);
    }
    if path.contains(['?', '#']) {
        return Err(UrlError::Invalid("it must not have a query or fragment"));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(UrlError::Invalid("the path contains whitespace"));
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((ipv6, after)) = bracketed.split_once(']') else {
            return Err(UrlError::Invalid("an IPv6 host lacks its closing ]"));
        };
        if ipv6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(UrlError::Invalid("the bracketed host is not an IPv6 address"));
        }
        match after {
            "" => (ipv6, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (ipv6, Some(port)),
                None => return Err(UrlError::Invalid("unexpected text after the IPv6 host")),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::Invalid("it has no host"));
    }
    if !authority.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(UrlError::Invalid(
            "the host may only contain letters, digits, '-', '_' and '.'",
        ));
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|port| port > 0);
        if !valid {
            return Err(UrlError::Invalid("the port must be a number from 1 to 65535"));
        }
    }
    Ok(HttpUrl { host })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const PASSWORD: &str = "pw-Zq7xK2mVt9rLsB4nWcH8";

    /// The variables every test needs, overlaid with `extra` (an empty value replaces a required one
    /// with "unset").
    fn env_with(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars: BTreeMap<String, String> = [
            ("EXECUTOR_FRONTEND_URL", "http://sourcegraph-frontend:30080"),
            ("EXECUTOR_FRONTEND_PASSWORD", PASSWORD),
            ("EXECUTOR_QUEUE_NAME", "batches"),
            ("HOSTNAME", "executor-7d9f8-abcde"),
        ]
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
        for (name, value) in extra {
            vars.insert(name.to_string(), value.to_string());
        }
        vars.into_iter().collect()
    }

    fn config_with(extra: &[(&str, &str)]) -> Config {
        match Config::from_vars(env_with(extra)) {
            Ok(config) => config,
            Err(error) => panic!("expected a valid configuration, got: {error}"),
        }
    }

    fn problems_with(extra: &[(&str, &str)]) -> Vec<String> {
        match Config::from_vars(env_with(extra)) {
            Ok(config) => panic!("expected problems for {extra:?}, got {config:?}"),
            Err(error) => error.problems,
        }
    }

    fn q(text: &str) -> Option<Quantity> {
        Some(Quantity(text.to_owned()))
    }

    #[test]
    fn defaults_with_only_the_required_variables() {
        let config = config_with(&[]);
        assert_eq!(config.frontend_url, "http://sourcegraph-frontend:30080");
        assert_eq!(config.frontend_password.expose(), PASSWORD);
        assert_eq!(config.queues, QueueSelection::Single("batches".into()));
        assert_eq!(config.poll_interval, Duration::from_secs(1));
        assert_eq!(config.maximum_num_jobs, 1);
        assert_eq!(config.maximum_runtime_per_job, Duration::from_secs(30 * 60));
        assert_eq!(config.num_total_jobs, None);
        assert_eq!(config.max_active_time, None);
        assert!(!config.keep_workspaces);
        assert_eq!(config.job_num_cpus, 4);
        assert_eq!(config.job_memory, "12G");
        assert_eq!(config.job_disk_space, "20G");
        assert_eq!(config.node_exporter_url, None);
        assert_eq!(config.docker_registry_node_exporter_url, None);
        assert!(!config.job_audit_logging);
        assert_eq!(config.log_level, "warn");
        assert_eq!(config.log_format, LogFormat::Condensed);
        assert!(!config.trace_log);
        assert_eq!(config.hostname, "executor-7d9f8-abcde");
        assert_eq!(config.instance_id, "executor-7d9f8-abcde");
        assert_eq!(config.reported_version, "0.0.0+dev");
        assert_eq!(
            config.health_server_addr,
            "0.0.0.0:6060".parse().expect("literal address")
        );
        assert_eq!(config.shutdown_grace_period, Duration::from_secs(5 * 60));
        assert_eq!(config.log_entry_max_bytes, 1_048_576);

        let k = &config.kubernetes;
        assert_eq!(k.config_path, None);
        assert_eq!(k.namespace, "default");
        assert_eq!(k.node_name, None);
        assert_eq!(k.node_pinning, NodePinning::Affinity);
        assert!(k.node_selector.is_empty());
        assert!(k.node_required_affinity_match_expressions.is_empty());
        assert!(k.node_required_affinity_match_fields.is_empty());
        assert!(k.pod_affinity.is_empty());
        assert!(k.pod_anti_affinity.is_empty());
        assert!(k.tolerations.is_empty());
        assert_eq!(k.request_cpu, None);
        assert_eq!(k.request_memory, q("12Gi"));
        assert_eq!(k.limit_cpu, None);
        assert_eq!(k.limit_memory, q("12Gi"));
        assert_eq!(k.job_deadline_seconds, 1200);
        assert!(!k.keep_jobs);
        assert_eq!(k.run_as_user, None);
        assert_eq!(k.run_as_group, None);
        assert_eq!(k.fs_group, Some(1000));
        assert!(k.job_annotations.is_empty());
        assert!(k.pod_annotations.is_empty());
        assert!(k.image_pull_secrets.is_empty());
        assert_eq!(k.image_pull_policy, "IfNotPresent");
        assert_eq!(k.step_image, "sourcegraph/batcheshelper:insiders");
        assert_eq!(k.volume_type, VolumeType::EmptyDir);
        assert_eq!(k.volume_size, Quantity("5Gi".into()));
        assert!(k.additional_volumes.is_empty());
        assert!(k.additional_volume_mounts.is_empty());
        assert_eq!(k.git_ca_cert, None);
        assert!(!k.host_network);
        assert_eq!(k.job_service_account, None);
        assert!(!k.automount_service_account_token);
        assert_eq!(k.ttl_seconds_after_finished, Some(600));
        assert_eq!(k.pending_timeout, Duration::from_secs(600));
        assert_eq!(k.image_pull_timeout, Duration::from_secs(60));
        assert_eq!(k.pod_creation_timeout, Duration::from_secs(30));
    }

    /// Every variable set to a value different from its default.
    fn full_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("EXECUTOR_FRONTEND_URL", "https://host.docker.internal:8443/sg/"),
            ("EXECUTOR_FRONTEND_PASSWORD", PASSWORD),
            ("EXECUTOR_QUEUE_NAME", ""),
            ("EXECUTOR_QUEUE_NAMES", "batches,codeintel"),
            ("EXECUTOR_QUEUE_POLL_INTERVAL", "250ms"),
            ("EXECUTOR_MAXIMUM_NUM_JOBS", "8"),
            ("EXECUTOR_MAXIMUM_RUNTIME_PER_JOB", "1h30m"),
            ("EXECUTOR_NUM_TOTAL_JOBS", "100"),
            ("EXECUTOR_MAX_ACTIVE_TIME", "12h"),
            ("EXECUTOR_KEEP_WORKSPACES", "true"),
            ("EXECUTOR_USE_FIRECRACKER", "false"),
            ("EXECUTOR_JOB_NUM_CPUS", "2"),
            ("EXECUTOR_FIRECRACKER_NUM_CPUS", "16"),
            ("EXECUTOR_JOB_MEMORY", "8G"),
            ("EXECUTOR_FIRECRACKER_MEMORY", "64G"),
            ("EXECUTOR_FIRECRACKER_DISK_SPACE", "50G"),
            ("EXECUTOR_DOCKER_ADD_HOST_GATEWAY", "true"),
            (
                "EXECUTOR_DOCKER_AUTH_CONFIG",
                r#"{"auths":{"registry.example.com":{"auth":"dXNlcjpwYXNz"}}}"#,
            ),
            ("NODE_EXPORTER_URL", "http://node-exporter:9100"),
            (
                "DOCKER_REGISTRY_NODE_EXPORTER_URL",
                "http://registry-exporter:9100",
            ),
            ("EXECUTOR_ENABLE_JOB_AUDIT_LOGGING", "T"),
            ("SRC_LOG_LEVEL", "dbug"),
            ("SRC_LOG_FORMAT", "json"),
            ("SRC_TRACE_LOG", "1"),
            ("HOSTNAME", "executor-pod-1"),
            ("EXECUTOR_KUBERNETES_CONFIG_PATH", "/etc/kube/config"),
            ("EXECUTOR_KUBERNETES_NAMESPACE", "sourcegraph"),
            ("EXECUTOR_KUBERNETES_NODE_NAME", "node-a.example"),
            ("EXECUTOR_KUBERNETES_NODE_SELECTOR", "disk=ssd,zone=a"),
            (
                "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS",
                r#"[{"key":"pool","operator":"In","values":["jobs"]}]"#,
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_FIELDS",
                r#"[{"key":"metadata.name","operator":"NotIn","values":["node-b"]}]"#,
            ),
            (
                "EXECUTOR_KUBERNETES_POD_AFFINITY",
                r#"[{"labelSelector":{"matchLabels":{"app":"cache"}},"topologyKey":"kubernetes.io/hostname"}]"#,
            ),
            (
                "EXECUTOR_KUBERNETES_POD_ANTI_AFFINITY",
                r#"[{"labelSelector":{"matchLabels":{"app":"db"}},"topologyKey":"topology.kubernetes.io/zone"}]"#,
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_TOLERATIONS",
                r#"[{"key":"jobs","operator":"Equal","value":"yes","effect":"NoSchedule"}]"#,
            ),
            ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU", "500m"),
            ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY", "1Gi"),
            ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU", "2"),
            ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY", "4e9"),
            ("EXECUTOR_KUBERNETES_PERSISTENCE_VOLUME_NAME", "old-pvc"),
            ("KUBERNETES_JOB_DEADLINE", "3600"),
            ("KUBERNETES_KEEP_JOBS", "false"),
            ("KUBERNETES_RUN_AS_USER", "100"),
            ("KUBERNETES_RUN_AS_GROUP", "0"),
            ("KUBERNETES_FS_GROUP", "2147483647"),
            ("KUBERNETES_JOB_ANNOTATIONS", r#"{"team":"search"}"#),
            (
                "KUBERNETES_JOB_POD_ANNOTATIONS",
                r#"{"sidecar.istio.io/inject":"false"}"#,
            ),
            ("KUBERNETES_IMAGE_PULL_SECRETS", " regcred , ,other.creds,"),
            ("KUBERNETES_IMAGE_PULL_POLICY", "Always"),
            (
                "KUBERNETES_JOB_STEP_IMAGE",
                "registry.example.com/batcheshelper:6.0.0",
            ),
            ("KUBERNETES_SINGLE_JOB_STEP_IMAGE", "old/batcheshelper:1"),
            ("KUBERNETES_JOB_VOLUME_TYPE", "pvc"),
            ("KUBERNETES_JOB_VOLUME_SIZE", "20Gi"),
            (
                "KUBERNETES_ADDITIONAL_JOB_VOLUMES",
                r#"[{"name":"ca","configMap":{"name":"corp-ca"}}]"#,
            ),
            (
                "KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS",
                r#"[{"name":"ca","mountPath":"/ca","readOnly":true}]"#,
            ),
            ("KUBERNETES_GIT_CA_CERT", "/ca/ca.crt"),
            ("KUBERNETES_JOB_HOST_NETWORK", "true"),
            ("KUBERNETES_SINGLE_JOB_POD", "true"),
            ("EXECUTOR_INSTANCE_ID", "sg-executor_batches.1"),
            ("EXECUTOR_REPORTED_VERSION", "6.2.1106"),
            ("EXECUTOR_HEALTH_SERVER_ADDR", "localhost:8080"),
            ("EXECUTOR_SHUTDOWN_GRACE_PERIOD", "0"),
            ("EXECUTOR_LOG_ENTRY_MAX_BYTES", "4096"),
            ("EXECUTOR_KUBERNETES_NODE_PINNING", "NodeName"),
            ("KUBERNETES_JOB_SERVICE_ACCOUNT", "job-runner"),
            ("KUBERNETES_JOB_AUTOMOUNT_SERVICE_ACCOUNT_TOKEN", "true"),
            ("KUBERNETES_JOB_TTL_SECONDS_AFTER_FINISHED", "3600"),
            ("KUBERNETES_JOB_PENDING_TIMEOUT", "2m"),
            ("KUBERNETES_JOB_IMAGE_PULL_TIMEOUT", "90s"),
            ("KUBERNETES_JOB_POD_CREATION_TIMEOUT", "45s"),
        ]
    }

    #[test]
    fn full_env_covers_every_variable() {
        let names: BTreeSet<&str> = full_env().iter().map(|(name, _)| *name).collect();
        let missing: Vec<&str> = VARIABLES
            .iter()
            .map(|variable| variable.name)
            .filter(|name| !names.contains(name))
            .collect();
        assert!(missing.is_empty(), "full_env() lacks {missing:?}");
    }

    #[test]
    fn every_variable_is_parsed() {
        let config = config_with(&full_env());
        assert_eq!(config.frontend_url, "https://host.docker.internal:8443/sg");
        assert_eq!(
            config.queues,
            QueueSelection::Multi(vec!["batches".into(), "codeintel".into()])
        );
        assert_eq!(config.poll_interval, Duration::from_millis(250));
        assert_eq!(config.maximum_num_jobs, 8);
        assert_eq!(config.maximum_runtime_per_job, Duration::from_secs(90 * 60));
        assert_eq!(config.num_total_jobs, Some(100));
        assert_eq!(config.max_active_time, Some(Duration::from_secs(12 * 3600)));
        assert!(config.keep_workspaces);
        assert_eq!(config.job_num_cpus, 2, "the primary name wins over its fallback");
        assert_eq!(config.job_memory, "8G");
        assert_eq!(config.job_disk_space, "50G");
        assert_eq!(
            config.node_exporter_url.as_deref(),
            Some("http://node-exporter:9100")
        );
        assert_eq!(
            config.docker_registry_node_exporter_url.as_deref(),
            Some("http://registry-exporter:9100")
        );
        assert!(config.job_audit_logging);
        assert_eq!(config.log_level, "debug");
        assert_eq!(config.log_format, LogFormat::Json);
        assert!(config.trace_log);
        assert_eq!(config.hostname, "executor-pod-1");
        assert_eq!(config.instance_id, "sg-executor_batches.1");
        assert_eq!(config.reported_version, "6.2.1106");
        assert_eq!(
            config.health_server_addr,
            "127.0.0.1:8080".parse().expect("literal address")
        );
        assert_eq!(config.shutdown_grace_period, Duration::ZERO);
        assert_eq!(config.log_entry_max_bytes, 4096);

        let k = &config.kubernetes;
        assert_eq!(k.config_path.as_deref(), Some("/etc/kube/config"));
        assert_eq!(k.namespace, "sourcegraph");
        assert_eq!(k.node_name.as_deref(), Some("node-a.example"));
        assert_eq!(k.node_pinning, NodePinning::NodeName);
        assert_eq!(
            k.node_selector,
            BTreeMap::from([
                ("disk".to_owned(), "ssd".to_owned()),
                ("zone".to_owned(), "a".to_owned())
            ])
        );
        let expression = &k.node_required_affinity_match_expressions;
        assert_eq!((expression.len(), expression[0].key.as_str()), (1, "pool"));
        assert_eq!(expression[0].operator, "In");
        assert_eq!(expression[0].values, Some(vec!["jobs".to_owned()]));
        let field = &k.node_required_affinity_match_fields;
        assert_eq!(
            (field.len(), field[0].key.as_str(), field[0].operator.as_str()),
            (1, "metadata.name", "NotIn")
        );
        assert_eq!(k.pod_affinity.len(), 1);
        assert_eq!(k.pod_affinity[0].topology_key, "kubernetes.io/hostname");
        let selector = k.pod_affinity[0]
            .label_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref());
        assert_eq!(
            selector.and_then(|labels| labels.get("app")).map(String::as_str),
            Some("cache")
        );
        assert_eq!(k.pod_anti_affinity[0].topology_key, "topology.kubernetes.io/zone");
        assert_eq!(k.tolerations.len(), 1);
        assert_eq!(k.tolerations[0].effect.as_deref(), Some("NoSchedule"));
        assert_eq!(k.tolerations[0].value.as_deref(), Some("yes"));
        assert_eq!(k.request_cpu, q("500m"));
        assert_eq!(k.request_memory, q("1Gi"));
        assert_eq!(k.limit_cpu, q("2"));
        assert_eq!(k.limit_memory, q("4e9"));
        assert_eq!(k.job_deadline_seconds, 3600);
        assert!(!k.keep_jobs);
        assert_eq!(k.run_as_user, Some(100));
        assert_eq!(k.run_as_group, Some(0));
        assert_eq!(k.fs_group, Some(2_147_483_647));
        assert_eq!(k.job_annotations.get("team").map(String::as_str), Some("search"));
        assert_eq!(
            k.pod_annotations
                .get("sidecar.istio.io/inject")
                .map(String::as_str),
            Some("false")
        );
        assert_eq!(
            k.image_pull_secrets,
            vec!["regcred".to_owned(), "other.creds".to_owned()]
        );
        assert_eq!(k.image_pull_policy, "Always");
        assert_eq!(k.step_image, "registry.example.com/batcheshelper:6.0.0");
        assert_eq!(k.volume_type, VolumeType::Pvc);
        assert_eq!(k.volume_size, Quantity("20Gi".into()));
        assert_eq!(k.additional_volumes.len(), 1);
        assert_eq!(k.additional_volumes[0].name, "ca");
        let config_map = k.additional_volumes[0]
            .config_map
            .as_ref()
            .map(|source| source.name.as_str());
        assert_eq!(config_map, Some("corp-ca"));
        assert_eq!(k.additional_volume_mounts.len(), 1);
        assert_eq!(k.additional_volume_mounts[0].mount_path, "/ca");
        assert_eq!(k.additional_volume_mounts[0].read_only, Some(true));
        assert_eq!(k.git_ca_cert.as_deref(), Some("/ca/ca.crt"));
        assert!(k.host_network);
        assert_eq!(k.job_service_account.as_deref(), Some("job-runner"));
        assert!(k.automount_service_account_token);
        assert_eq!(k.ttl_seconds_after_finished, Some(3600));
        assert_eq!(k.pending_timeout, Duration::from_secs(120));
        assert_eq!(k.image_pull_timeout, Duration::from_secs(90));
        assert_eq!(k.pod_creation_timeout, Duration::from_secs(45));
    }

    #[test]
    fn helm_rendered_env_with_empty_values_parses() {
        let config = Config::from_vars(
            [
                (
                    "EXECUTOR_FRONTEND_URL",
                    "http://sourcegraph-frontend.sg.svc.cluster.local:30080",
                ),
                ("EXECUTOR_FRONTEND_PASSWORD", PASSWORD),
                ("EXECUTOR_MAXIMUM_NUM_JOBS", "10"),
                ("EXECUTOR_MAXIMUM_RUNTIME_PER_JOB", "30m"),
                ("EXECUTOR_QUEUE_NAME", ""),
                ("EXECUTOR_QUEUE_NAMES", "batches,codeintel"),
                ("SRC_LOG_LEVEL", "warn"),
                ("SRC_LOG_FORMAT", "condensed"),
                ("SRC_TRACE_LOG", "false"),
                ("EXECUTOR_KUBERNETES_NAMESPACE", "sg"),
                ("EXECUTOR_KUBERNETES_CONFIG_PATH", ""),
                ("EXECUTOR_KUBERNETES_NODE_NAME", ""),
                ("EXECUTOR_KUBERNETES_NODE_SELECTOR", ""),
                ("EXECUTOR_KUBERNETES_NODE_TOLERATIONS", ""),
                ("EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS", ""),
                ("EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_FIELDS", ""),
                ("EXECUTOR_KUBERNETES_POD_AFFINITY", ""),
                ("EXECUTOR_KUBERNETES_POD_ANTI_AFFINITY", ""),
                ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU", ""),
                ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY", "1Gi"),
                ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU", ""),
                ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY", "12Gi"),
                ("KUBERNETES_JOB_DEADLINE", "1200"),
                ("KUBERNETES_RUN_AS_USER", ""),
                ("KUBERNETES_RUN_AS_GROUP", ""),
                ("KUBERNETES_FS_GROUP", "1000"),
                ("EXECUTOR_DOCKER_ADD_HOST_GATEWAY", "false"),
                ("KUBERNETES_KEEP_JOBS", "false"),
                ("EXECUTOR_KEEP_WORKSPACES", "false"),
                ("EXECUTOR_USE_FIRECRACKER", "false"),
                ("EXECUTOR_INSTANCE_ID", "sg-executor-k8s"),
                // Injected by Kubernetes and the image; not ours to read.
                ("HOSTNAME", "executor-batches-codeintel-5d8f9c7b6-x2x4q"),
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("KUBERNETES_SERVICE_PORT", "443"),
                ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
                ("HOME", "/home/sourcegraph"),
            ]
            .map(|(name, value)| (name.to_owned(), value.to_owned())),
        );
        let config = match config {
            Ok(config) => config,
            Err(error) => panic!("Helm-rendered environment rejected: {error}"),
        };
        assert_eq!(config.maximum_num_jobs, 10);
        assert_eq!(
            config.queues,
            QueueSelection::Multi(vec!["batches".into(), "codeintel".into()])
        );
        assert_eq!(config.kubernetes.namespace, "sg");
        assert_eq!(config.kubernetes.config_path, None);
        assert_eq!(config.kubernetes.request_cpu, None);
        assert_eq!(config.kubernetes.request_memory, q("1Gi"));
        assert_eq!(config.kubernetes.run_as_user, None);
        assert!(config.kubernetes.tolerations.is_empty());
        assert_eq!(config.instance_id, "sg-executor-k8s");
    }

    #[test]
    fn kustomize_component_env_parses() {
        let config = config_with(&[
            ("EXECUTOR_USE_FIRECRACKER", "false"),
            ("EXECUTOR_KUBERNETES_PERSISTENCE_VOLUME_NAME", "sg-executor-pvc"),
            (
                "EXECUTOR_KUBERNETES_POD_AFFINITY",
                r#"[{"labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["executor"]}]}, "topologyKey": "kubernetes.io/hostname"}]"#,
            ),
            ("EXECUTOR_FRONTEND_URL", "http://sourcegraph-frontend"),
            ("EXECUTOR_MAXIMUM_NUM_JOBS", "8"),
            ("EXECUTOR_QUEUE_NAME", ""),
            ("EXECUTOR_QUEUE_NAMES", "codeintel"),
            ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY", "5Gi"),
        ]);
        assert_eq!(config.frontend_url, "http://sourcegraph-frontend");
        assert_eq!(config.queues, QueueSelection::Multi(vec!["codeintel".into()]));
        assert_eq!(config.kubernetes.pod_affinity.len(), 1);
        assert_eq!(config.kubernetes.request_memory, q("5Gi"));
    }

    #[test]
    fn executor_suffix_overrides_the_plain_name() {
        let config = config_with(&[
            ("EXECUTOR_QUEUE_POLL_INTERVAL", "1s"),
            ("EXECUTOR_QUEUE_POLL_INTERVAL_executor", "5s"),
            // An empty override is unset, so the plain value stays.
            ("EXECUTOR_MAXIMUM_NUM_JOBS", "3"),
            ("EXECUTOR_MAXIMUM_NUM_JOBS_executor", ""),
            // An override alone is enough.
            ("KUBERNETES_JOB_DEADLINE_executor", "60"),
        ]);
        assert_eq!(config.poll_interval, Duration::from_secs(5));
        assert_eq!(config.maximum_num_jobs, 3);
        assert_eq!(config.kubernetes.job_deadline_seconds, 60);

        let problems = problems_with(&[("SRC_LOG_LEVEL_executor", "loud")]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("SRC_LOG_LEVEL (set by SRC_LOG_LEVEL_executor): \"loud\""),
            "{problems:?}"
        );
    }

    #[test]
    fn older_names_are_fallbacks() {
        let config = config_with(&[
            ("EXECUTOR_FIRECRACKER_NUM_CPUS", "8"),
            ("EXECUTOR_FIRECRACKER_MEMORY", "32G"),
            ("KUBERNETES_SINGLE_JOB_STEP_IMAGE", "example/helper:1"),
        ]);
        assert_eq!(config.job_num_cpus, 8);
        assert_eq!(config.job_memory, "32G");
        assert_eq!(config.kubernetes.step_image, "example/helper:1");

        // Empty primaries are unset, so the fallback applies.
        let config = config_with(&[
            ("EXECUTOR_JOB_NUM_CPUS", ""),
            ("EXECUTOR_FIRECRACKER_NUM_CPUS", "6"),
        ]);
        assert_eq!(config.job_num_cpus, 6);

        let problems = problems_with(&[("EXECUTOR_FIRECRACKER_NUM_CPUS", "many")]);
        assert_eq!(
            problems,
            vec![
                "EXECUTOR_FIRECRACKER_NUM_CPUS (fallback for EXECUTOR_JOB_NUM_CPUS): \"many\" is not an integer"
            ]
        );
    }

    #[test]
    fn unknown_and_wrongly_cased_names_are_not_read() {
        let config = config_with(&[
            ("executor_maximum_num_jobs", "7"),
            ("Executor_Maximum_Num_Jobs", "9"),
            ("EXECUTOR_MAXIMUM_NUM_JOB", "oops"),
            ("SOMETHING_ELSE_executor", "x"),
        ]);
        assert_eq!(config.maximum_num_jobs, 1);
    }

    #[test]
    fn hostname_falls_back_to_the_machine_name() {
        let config = config_with(&[("HOSTNAME", "")]);
        assert_eq!(config.hostname, os_hostname());
        assert!(!config.hostname.is_empty());
        assert_eq!(config.instance_id, config.hostname);
    }

    #[test]
    fn keep_jobs_disables_the_ttl_and_zero_values_mean_unset() {
        let config = config_with(&[
            ("KUBERNETES_KEEP_JOBS", "true"),
            ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY", "0"),
            ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY", "0Gi"),
            ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU", "0.0"),
            ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU", "-0m"),
        ]);
        assert_eq!(config.kubernetes.ttl_seconds_after_finished, None);
        assert_eq!(config.kubernetes.request_memory, None);
        assert_eq!(config.kubernetes.limit_memory, None);
        assert_eq!(config.kubernetes.request_cpu, None);
        assert_eq!(config.kubernetes.limit_cpu, None);
        let config = config_with(&[("KUBERNETES_JOB_TTL_SECONDS_AFTER_FINISHED", "0")]);
        assert_eq!(config.kubernetes.ttl_seconds_after_finished, None);
    }

    #[test]
    fn log_levels_map_to_tracing_directives() {
        for (level, directive) in [
            ("dbug", "debug"),
            ("debug", "debug"),
            ("info", "info"),
            ("warn", "warn"),
            ("warning", "warn"),
            ("error", "error"),
            ("eror", "error"),
            ("crit", "error"),
            ("INFO", "info"),
        ] {
            assert_eq!(
                config_with(&[("SRC_LOG_LEVEL", level)]).log_level,
                directive,
                "{level}"
            );
        }
        for (format, expected) in [
            ("condensed", LogFormat::Condensed),
            ("json", LogFormat::Json),
            ("logfmt", LogFormat::Logfmt),
            ("console", LogFormat::Console),
        ] {
            assert_eq!(
                config_with(&[("SRC_LOG_FORMAT", format)]).log_format,
                expected,
                "{format}"
            );
        }
    }

    #[test]
    fn health_server_addresses() {
        for (text, expected) in [
            (":6060", "0.0.0.0:6060"),
            ("0.0.0.0:7070", "0.0.0.0:7070"),
            ("127.0.0.1:80", "127.0.0.1:80"),
            ("[::]:6060", "[::]:6060"),
            ("localhost:9000", "127.0.0.1:9000"),
        ] {
            let config = config_with(&[("EXECUTOR_HEALTH_SERVER_ADDR", text)]);
            assert_eq!(
                config.health_server_addr,
                expected.parse().expect("literal address"),
                "{text}"
            );
        }
    }

    /// Each case makes exactly one problem, which starts with the variable and says what is expected.
    #[test]
    fn every_invalid_value_is_reported_against_its_variable() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "EXECUTOR_FRONTEND_URL",
                "sourcegraph.example.com",
                "no scheme:// prefix",
            ),
            (
                "EXECUTOR_FRONTEND_URL",
                "ftp://sourcegraph",
                "scheme must be http or https",
            ),
            ("EXECUTOR_FRONTEND_URL", "http://", "it has no host"),
            ("EXECUTOR_FRONTEND_URL", "http://:30080", "it has no host"),
            (
                "EXECUTOR_FRONTEND_URL",
                "http://frontend:99999",
                "port must be a number",
            ),
            (
                "EXECUTOR_FRONTEND_URL",
                "http://frontend?x=1",
                "query or fragment",
            ),
            (
                "EXECUTOR_FRONTEND_URL",
                "http://front end",
                "host may only contain",
            ),
            (
                "EXECUTOR_FRONTEND_URL",
                "http://host.docker.internal:3080",
                "EXECUTOR_DOCKER_ADD_HOST_GATEWAY=true",
            ),
            (
                "EXECUTOR_QUEUE_NAME",
                "indexing",
                "\"indexing\" is not a known queue (expected batches or codeintel)",
            ),
            (
                "EXECUTOR_QUEUE_POLL_INTERVAL",
                "5 sec",
                "\"5 sec\" is not a duration (examples: 1s, 30m, 1h30m)",
            ),
            ("EXECUTOR_QUEUE_POLL_INTERVAL", "0", "must be greater than 0"),
            (
                "EXECUTOR_MAXIMUM_NUM_JOBS",
                "0",
                "\"0\" is too small (expected at least 1)",
            ),
            ("EXECUTOR_MAXIMUM_NUM_JOBS", "ten", "\"ten\" is not an integer"),
            ("EXECUTOR_MAXIMUM_RUNTIME_PER_JOB", "30", "is not a duration"),
            (
                "EXECUTOR_NUM_TOTAL_JOBS",
                "-1",
                "is too small (expected at least 0)",
            ),
            ("EXECUTOR_MAX_ACTIVE_TIME", "-1h", "is negative"),
            (
                "EXECUTOR_KEEP_WORKSPACES",
                "yes",
                "\"yes\" is not a boolean (expected one of 1, t, T, TRUE",
            ),
            (
                "EXECUTOR_USE_FIRECRACKER",
                "true",
                "runs every job as a Kubernetes Job",
            ),
            ("EXECUTOR_USE_FIRECRACKER", "maybe", "is not a boolean"),
            ("EXECUTOR_JOB_NUM_CPUS", "four", "is not an integer"),
            ("EXECUTOR_JOB_NUM_CPUS", "-2", "is too small"),
            ("EXECUTOR_JOB_MEMORY", "lots", "is not a size"),
            ("EXECUTOR_FIRECRACKER_DISK_SPACE", "20G!", "is not a size"),
            ("EXECUTOR_DOCKER_ADD_HOST_GATEWAY", "si", "is not a boolean"),
            (
                "EXECUTOR_DOCKER_AUTH_CONFIG",
                "{\"auths\": ",
                "is not valid JSON: syntax error at line 1",
            ),
            ("EXECUTOR_DOCKER_AUTH_CONFIG", "[1, 2]", "is not a JSON object"),
            ("NODE_EXPORTER_URL", "node-exporter:9100", "is not a URL"),
            (
                "DOCKER_REGISTRY_NODE_EXPORTER_URL",
                "tcp://registry:9100",
                "scheme must be http or https",
            ),
            ("EXECUTOR_ENABLE_JOB_AUDIT_LOGGING", "enabled", "is not a boolean"),
            (
                "SRC_LOG_LEVEL",
                "verbose",
                "is not a log level (expected dbug, info, warn, error or crit)",
            ),
            (
                "SRC_LOG_FORMAT",
                "xml",
                "is not a log format (expected condensed, json, logfmt or console)",
            ),
            ("SRC_TRACE_LOG", "nah", "is not a boolean"),
            (
                "EXECUTOR_KUBERNETES_NAMESPACE",
                "Source_Graph",
                "is not a valid Kubernetes name",
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_NAME",
                "Node A",
                "is not a valid Kubernetes name",
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_PINNING",
                "scheduler",
                "expected affinity or nodeName",
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_SELECTOR",
                "disk=ssd,zone",
                "\"zone\" is not a key=value pair",
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_SELECTOR",
                "=ssd",
                "\"=ssd\" is not a key=value pair",
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_SELECTOR",
                "a=b=c",
                "\"a=b=c\" is not a key=value pair",
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS",
                "[{\"key\": \"pool\"",
                "is not a valid JSON array of NodeSelectorRequirement: EOF while parsing",
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS",
                r#"[{"key":"pool","operator":"Equals","values":["jobs"]}]"#,
                "entry 0 has operator \"Equals\" (expected one of In, NotIn, Exists, DoesNotExist, Gt, Lt)",
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_FIELDS",
                r#"{"key":"metadata.name","operator":"In"}"#,
                "invalid type: map, expected a sequence",
            ),
            (
                "EXECUTOR_KUBERNETES_POD_AFFINITY",
                r#"[{"labelSelector":{"matchLabels":{"app":"x"}}}]"#,
                "entry 0 has no topologyKey",
            ),
            (
                "EXECUTOR_KUBERNETES_POD_ANTI_AFFINITY",
                r#"[{"topologyKey":"kubernetes.io/hostname"},{"topologyKey":""}]"#,
                "entry 1 has no topologyKey",
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_TOLERATIONS",
                "NoSchedule",
                "is not a valid JSON array of Toleration",
            ),
            (
                "EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU",
                "1 core",
                "is not a Kubernetes quantity: unknown suffix \" core\"",
            ),
            ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU", "-1", "is negative"),
            (
                "EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU",
                "two",
                "does not start with a number",
            ),
            (
                "EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU",
                "1.2.3",
                "unknown suffix \".3\"",
            ),
            (
                "EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY",
                "12GB",
                "unknown suffix \"GB\"",
            ),
            (
                "EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY",
                "16Gi",
                "is more than EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY \"12Gi\"",
            ),
            (
                "EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY",
                "1e",
                "unknown suffix \"e\"",
            ),
            (
                "KUBERNETES_JOB_DEADLINE",
                "0",
                "is too small (expected at least 1)",
            ),
            ("KUBERNETES_JOB_DEADLINE", "20m", "is not an integer"),
            ("KUBERNETES_KEEP_JOBS", "nope", "is not a boolean"),
            (
                "KUBERNETES_RUN_AS_USER",
                "-1",
                "KUBERNETES_RUN_AS_USER must be a UID in the range 0 to 2,147,483,647, but got \"-1\".",
            ),
            (
                "KUBERNETES_RUN_AS_USER",
                "2147483648",
                "must be a UID in the range 0 to 2,147,483,647",
            ),
            (
                "KUBERNETES_RUN_AS_GROUP",
                "staff",
                "must be a GID in the range 0 to 2,147,483,647, but got \"staff\"",
            ),
            (
                "KUBERNETES_FS_GROUP",
                "-1",
                "must be a GID in the range 0 to 2,147,483,647",
            ),
            (
                "KUBERNETES_JOB_ANNOTATIONS",
                r#"{"team": 5}"#,
                "is not a valid JSON object of string values: invalid type: integer `5`",
            ),
            (
                "KUBERNETES_JOB_POD_ANNOTATIONS",
                "team=search",
                "is not a valid JSON object of string values",
            ),
            (
                "KUBERNETES_IMAGE_PULL_SECRETS",
                "regcred,Reg_Cred",
                "\"Reg_Cred\" is not a valid Secret name",
            ),
            (
                "KUBERNETES_IMAGE_PULL_POLICY",
                "always",
                "is not one of Always, Never, IfNotPresent",
            ),
            (
                "KUBERNETES_JOB_STEP_IMAGE",
                "batcheshelper latest",
                "contains whitespace",
            ),
            (
                "KUBERNETES_JOB_VOLUME_TYPE",
                "hostPath",
                "is not one of emptyDir, pvc",
            ),
            ("KUBERNETES_JOB_VOLUME_SIZE", "0", "must be greater than 0"),
            (
                "KUBERNETES_JOB_VOLUME_SIZE",
                "5 GB",
                "is not a Kubernetes quantity",
            ),
            (
                "KUBERNETES_ADDITIONAL_JOB_VOLUMES",
                r#"[{"name": 5}]"#,
                "is not a valid JSON array of Volume: invalid type",
            ),
            (
                "KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS",
                r#"{"name":"x"}"#,
                "is not a valid JSON array of VolumeMount",
            ),
            ("KUBERNETES_JOB_HOST_NETWORK", "on", "is not a boolean"),
            (
                "KUBERNETES_SINGLE_JOB_POD",
                "false",
                "runs each job as a single pod",
            ),
            ("KUBERNETES_SINGLE_JOB_POD", "0", "runs each job as a single pod"),
            ("KUBERNETES_SINGLE_JOB_POD", "maybe", "is not a boolean"),
            (
                "EXECUTOR_INSTANCE_ID",
                "-executor-",
                "is not a valid Kubernetes label value",
            ),
            (
                "EXECUTOR_INSTANCE_ID",
                "a123456789012345678901234567890123456789012345678901234567890123",
                "is not a valid Kubernetes label value",
            ),
            (
                "EXECUTOR_HEALTH_SERVER_ADDR",
                "example.com:6060",
                "is not a listen address",
            ),
            ("EXECUTOR_HEALTH_SERVER_ADDR", "6060", "is not a listen address"),
            ("EXECUTOR_HEALTH_SERVER_ADDR", ":http", "is not a listen address"),
            ("EXECUTOR_SHUTDOWN_GRACE_PERIOD", "5 minutes", "is not a duration"),
            (
                "EXECUTOR_LOG_ENTRY_MAX_BYTES",
                "100",
                "is too small (expected at least 4096)",
            ),
            ("EXECUTOR_LOG_ENTRY_MAX_BYTES", "1MiB", "is not an integer"),
            (
                "KUBERNETES_JOB_SERVICE_ACCOUNT",
                "Runner",
                "is not a valid Kubernetes name",
            ),
            (
                "KUBERNETES_JOB_AUTOMOUNT_SERVICE_ACCOUNT_TOKEN",
                "2",
                "is not a boolean",
            ),
            (
                "KUBERNETES_JOB_TTL_SECONDS_AFTER_FINISHED",
                "-1",
                "is too small (expected at least 0)",
            ),
            (
                "KUBERNETES_JOB_TTL_SECONDS_AFTER_FINISHED",
                "3000000000",
                "is too large",
            ),
            ("KUBERNETES_JOB_PENDING_TIMEOUT", "0s", "must be greater than 0"),
            ("KUBERNETES_JOB_IMAGE_PULL_TIMEOUT", "1x", "is not a duration"),
            ("KUBERNETES_JOB_POD_CREATION_TIMEOUT", "30", "is not a duration"),
            // Accepted for compatibility, unused, but still checked.
            ("EXECUTOR_USE_KUBERNETES", "nope", "is not a boolean"),
            ("EXECUTOR_CLEANUP_TASK_INTERVAL", "1 minute", "is not a duration"),
            (
                "EXECUTOR_FIRECRACKER_BANDWIDTH_INGRESS",
                "fast",
                "is not an integer",
            ),
            (
                "EXECUTOR_FIRECRACKER_BANDWIDTH_EGRESS",
                "1.5",
                "is not an integer",
            ),
            ("KUBERNETES_JOB_RETRY_BACKOFF_LIMIT", "many", "is not an integer"),
            (
                "KUBERNETES_JOB_RETRY_BACKOFF_DURATION",
                "soon",
                "is not a duration",
            ),
        ];
        for (name, value, expected) in cases {
            let problems = problems_with(&[(name, value)]);
            assert_eq!(problems.len(), 1, "{name}={value:?}: {problems:#?}");
            assert!(problems[0].starts_with(name), "{name}={value:?}: {problems:#?}");
            assert!(
                problems[0].contains(expected),
                "{name}={value:?}: expected {expected:?} in {problems:#?}"
            );
        }
    }

    #[test]
    fn queue_selection_problems() {
        let both = problems_with(&[("EXECUTOR_QUEUE_NAMES", "codeintel")]);
        assert_eq!(
            both,
            vec!["both EXECUTOR_QUEUE_NAME and EXECUTOR_QUEUE_NAMES are set (expected exactly one of them)"]
        );

        let neither = problems_with(&[("EXECUTOR_QUEUE_NAME", ""), ("EXECUTOR_QUEUE_NAMES", "")]);
        assert_eq!(neither.len(), 1);
        assert!(
            neither[0].starts_with("neither EXECUTOR_QUEUE_NAME nor EXECUTOR_QUEUE_NAMES is set"),
            "{neither:?}"
        );

        let spaced = problems_with(&[
            ("EXECUTOR_QUEUE_NAME", ""),
            ("EXECUTOR_QUEUE_NAMES", "codeintel,  batches"),
        ]);
        assert_eq!(spaced.len(), 1);
        assert!(
            spaced[0].starts_with("EXECUTOR_QUEUE_NAMES: \"  batches\" is not a known queue"),
            "{spaced:?}"
        );
        assert!(spaced[0].contains("comma-separated without spaces"), "{spaced:?}");

        let repeated = problems_with(&[
            ("EXECUTOR_QUEUE_NAME", ""),
            ("EXECUTOR_QUEUE_NAMES", "batches,batches"),
        ]);
        assert_eq!(
            repeated,
            vec!["EXECUTOR_QUEUE_NAMES: \"batches\" is listed more than once"]
        );

        let trailing = problems_with(&[("EXECUTOR_QUEUE_NAME", ""), ("EXECUTOR_QUEUE_NAMES", "batches,")]);
        assert_eq!(trailing.len(), 1);
        assert!(
            trailing[0].starts_with("EXECUTOR_QUEUE_NAMES: \"\" is not a known queue"),
            "{trailing:?}"
        );
    }

    #[test]
    fn required_variables_are_reported_when_missing() {
        let problems = problems_with(&[("EXECUTOR_FRONTEND_URL", ""), ("EXECUTOR_FRONTEND_PASSWORD", "")]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("EXECUTOR_FRONTEND_URL: is required"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("EXECUTOR_FRONTEND_PASSWORD: is required"),
            "{problems:?}"
        );
    }

    #[test]
    fn several_problems_are_reported_together() {
        let error = match Config::from_vars(env_with(&[
            ("EXECUTOR_QUEUE_POLL_INTERVAL", "5 sec"),
            ("EXECUTOR_MAXIMUM_NUM_JOBS", "0"),
            ("KUBERNETES_RUN_AS_USER", "-1"),
            ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU", "1 core"),
            ("KUBERNETES_JOB_VOLUME_TYPE", "hostPath"),
        ])) {
            Ok(config) => panic!("expected problems, got {config:?}"),
            Err(error) => error,
        };
        let text = error.to_string();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("invalid configuration (5 problems):"));
        let rest: Vec<&str> = lines.collect();
        assert_eq!(rest.len(), 5, "{text}");
        for name in [
            "EXECUTOR_QUEUE_POLL_INTERVAL",
            "EXECUTOR_MAXIMUM_NUM_JOBS",
            "KUBERNETES_RUN_AS_USER",
            "EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU",
            "KUBERNETES_JOB_VOLUME_TYPE",
        ] {
            assert_eq!(
                rest.iter()
                    .filter(|line| line.starts_with(&format!("  - {name}")))
                    .count(),
                1,
                "{text}"
            );
        }
    }

    #[test]
    fn the_password_never_appears_in_errors() {
        let error = match Config::from_vars(env_with(&[
            (
                "EXECUTOR_FRONTEND_URL",
                &format!("https://admin:{PASSWORD}@sourcegraph.example.com"),
            ),
            ("EXECUTOR_QUEUE_NAME", PASSWORD),
            (
                "EXECUTOR_DOCKER_AUTH_CONFIG",
                &format!("{{\"auths\": {PASSWORD}}}"),
            ),
            ("KUBERNETES_RUN_AS_USER", PASSWORD),
            ("SRC_LOG_LEVEL_executor", &format!("x{PASSWORD}x")),
        ])) {
            Ok(config) => panic!("expected problems, got {config:?}"),
            Err(error) => error,
        };
        assert_eq!(error.problems.len(), 5, "{error}");
        let display = error.to_string();
        let debug = format!("{error:?}");
        // Any 8-character piece of the password would be a leak too.
        for window in PASSWORD.as_bytes().windows(8) {
            let piece = std::str::from_utf8(window).expect("ASCII password");
            assert!(!display.contains(piece), "{piece:?} leaked into {display}");
            assert!(!debug.contains(piece), "{piece:?} leaked into {debug}");
        }
        assert!(
            display.contains("EXECUTOR_FRONTEND_URL: must not contain user information"),
            "{display}"
        );
        assert!(
            display.contains("EXECUTOR_DOCKER_AUTH_CONFIG: is not valid JSON"),
            "{display}"
        );
        // A valid configuration's Debug output hides the password too.
        let config = config_with(&[]);
        assert!(!format!("{config:?}").contains(PASSWORD));
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
        assert_eq!(
            contract_order.last(),
            Some(&"KUBERNETES_JOB_POD_CREATION_TIMEOUT")
        );
    }

    /// The raw struct's fields are exactly the catalogue, so nothing is read without being documented
    /// and nothing documented is silently ignored.
    #[test]
    fn raw_fields_match_the_catalogue() {
        let fields = match serde_json::to_value(RawVars::default()) {
            Ok(serde_json::Value::Object(fields)) => fields,
            other => panic!("RawVars did not serialize to an object: {other:?}"),
        };
        let fields: BTreeSet<String> = fields.keys().map(|field| field.to_ascii_uppercase()).collect();
        let names: BTreeSet<String> = catalogue().map(|variable| variable.name.to_owned()).collect();
        assert_eq!(fields, names);

        // And every name makes it through envy into its field.
        let every = catalogue().map(|variable| (variable.name.to_owned(), "x".to_owned()));
        let raw = match raw_vars(&prepare(every)) {
            Ok(raw) => raw,
            Err(error) => panic!("{error}"),
        };
        let values = match serde_json::to_value(raw) {
            Ok(serde_json::Value::Object(values)) => values,
            other => panic!("RawVars did not serialize to an object: {other:?}"),
        };
        let unset: Vec<&String> = values
            .iter()
            .filter(|(_, value)| value.as_str() != Some("x"))
            .map(|(k, _)| k)
            .collect();
        assert!(unset.is_empty(), "not read: {unset:?}");
    }

    /// Every variable-like name this file mentions outside its tests is in the catalogue.
    #[test]
    fn the_source_mentions_only_catalogued_names() {
        let source = include_str!("config.rs");
        let code = source.split("#[cfg(test)]").next().unwrap_or(source);
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

    #[test]
    fn go_durations() {
        let s = 1_000_000_000i128;
        for (text, nanos) in [
            ("0", 0),
            ("-0", 0),
            ("+0", 0),
            ("1s", s),
            ("1.5s", 3 * s / 2),
            (".5s", s / 2),
            ("1.s", s),
            ("30m", 1800 * s),
            ("1h30m", 5400 * s),
            ("1h0m0s", 3600 * s),
            ("250ms", s / 4),
            ("10us", 10_000),
            ("10\u{b5}s", 10_000),
            ("10\u{3bc}s", 10_000),
            ("7ns", 7),
            ("-1.5h", -5400 * s),
            ("+2m", 120 * s),
            ("1.0000000001s", s),
            ("2562047h47m16.854775807s", i64::MAX as i128),
            ("-2562047h47m16.854775808s", i64::MIN as i128),
        ] {
            assert_eq!(parse_go_duration(text), Some(nanos), "{text}");
        }
        for text in [
            "",
            "-",
            "s",
            "1",
            "00",
            "1.5",
            "5 sec",
            "1d",
            "1S",
            "1h 30m",
            ".s",
            "1..5s",
            " 1s",
            "1s ",
            "2562047h47m16.854775808s",
            "99999999999999999999999999999999999999999h",
        ] {
            assert_eq!(parse_go_duration(text), None, "{text:?}");
        }
    }

    #[test]
    fn go_bools() {
        for text in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(text), Some(true));
        }
        for text in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(text), Some(false));
        }
        for text in ["", "yes", "tRUE", " true", "2"] {
            assert_eq!(parse_go_bool(text), None, "{text:?}");
        }
    }

    #[test]
    fn kubernetes_quantities() {
        let shape = |negative, zero| Ok(QuantityShape { negative, zero });
        for (text, expected) in [
            ("1", shape(false, false)),
            ("500m", shape(false, false)),
            ("1.5", shape(false, false)),
            (".5", shape(false, false)),
            ("5.", shape(false, false)),
            ("12Gi", shape(false, false)),
            ("1Ei", shape(false, false)),
            ("100n", shape(false, false)),
            ("3u", shape(false, false)),
            ("4k", shape(false, false)),
            ("2E", shape(false, false)),
            ("1e3", shape(false, false)),
            ("1E-3", shape(false, false)),
            ("+1e+3", shape(false, false)),
            ("-1", shape(true, false)),
            ("0", shape(false, true)),
            ("0.000Mi", shape(false, true)),
            ("-0", shape(true, true)),
        ] {
            assert_eq!(parse_quantity(text), expected, "{text}");
        }
        for text in [
            "", "Gi", "-", ".", "1 Gi", "1gi", "1KB", "1K", "1e", "1e1.5", "1.2.3", "1Gi ", " 1", "１",
        ] {
            assert!(parse_quantity(text).is_err(), "{text:?}");
        }
        assert_eq!(quantity_value("1Gi"), Some(1_073_741_824.0));
        assert_eq!(quantity_value("500m"), Some(0.5));
        assert_eq!(quantity_value("2e3"), Some(2000.0));
        assert_eq!(quantity_value("1G"), Some(1e9));
    }

    #[test]
    fn label_values_and_dns_names() {
        for value in ["a", "executor", "sg-executor_batches.1", "A1", &"x".repeat(63)] {
            assert!(is_label_value(value), "{value}");
        }
        for value in ["", "-a", "a-", "a b", "a/b", &"x".repeat(64)] {
            assert!(!is_label_value(value), "{value:?}");
        }
        assert!(is_dns_name("default", 63, false));
        assert!(!is_dns_name("a.b", 63, false));
        assert!(is_dns_name("a.b", 253, true));
        assert!(!is_dns_name("Default", 63, false));
    }

    #[test]
    fn frontend_urls() {
        for (text, expected) in [
            ("http://sourcegraph-frontend", "http://sourcegraph-frontend"),
            ("https://sg.example.com/", "https://sg.example.com"),
            ("http://10.0.0.5:3080/prefix/", "http://10.0.0.5:3080/prefix"),
            ("http://[::1]:3080", "http://[::1]:3080"),
            ("HTTPS://Sg.Example.com", "HTTPS://Sg.Example.com"),
        ] {
            assert_eq!(
                config_with(&[("EXECUTOR_FRONTEND_URL", text)]).frontend_url,
                expected,
                "{text}"
            );
        }
        for text in [
            "http://[::1",
            "http://[nothost]:80",
            "http://[::1]x",
            "http://host:",
            "http://host:0",
        ] {
            assert!(parse_http_url(text).is_err(), "{text}");
        }
    }
}
