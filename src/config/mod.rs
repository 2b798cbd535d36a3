//! Configuration from environment variables: Sourcegraph's executor variables plus kube-executor's own.
//!
//! The variables are listed once, in [`VARIABLES`] and `IGNORED_VARIABLES` (`catalogue`); the
//! environment is read by those names only. `parser` holds the rules every variable shares (empty
//! means unset, `NAME_executor` overrides `NAME`, defaults from the catalogue) and collects every
//! problem instead of stopping at the first; `build` turns the values into [`Config`]. Go's
//! duration and bool syntax live in [`duration`], Kubernetes quantities in `quantity`.

mod build;
mod catalogue;
pub mod duration;
mod parser;
mod quantity;

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use k8s_openapi::{
    api::core::v1::{NodeSelectorRequirement, PodAffinityTerm, Toleration, Volume, VolumeMount},
    apimachinery::pkg::api::resource::Quantity,
};

pub(crate) use catalogue::IGNORED_VARIABLES;
pub use catalogue::{VARIABLES, Variable};
pub use parser::default_of;
use parser::{Env, Parser};

use crate::queue::types::Secret;

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
    /// One compact human-readable line per event, without colours.
    Condensed,
    /// One JSON object per line, with the fields of the enclosing spans (a job's `job_id`, `queue`).
    Json,
    /// Human-readable, coloured for a terminal.
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
    /// `EXECUTOR_RECOMMENDED_ULIMIT_NOFILE` (default 65536): the ulimits NFR's open-files minimum.
    pub recommended_ulimit_nofile: u64,
    /// `EXECUTOR_RECOMMENDED_ULIMIT_NPROC` (default 4096): the ulimits NFR's process minimum.
    pub recommended_ulimit_nproc: u64,
    /// `POD_NAME` (Downward API): the executor's own pod, whose restarts the NFRs count.
    pub pod_name: Option<String>,
    /// `POD_NAMESPACE` (Downward API); `None` = the jobs namespace.
    pub pod_namespace: Option<String>,
    pub kubernetes: KubernetesConfig,
}

/// Everything that shapes the Kubernetes objects of a job and how they are watched.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// `EXECUTOR_KUBERNETES_CONFIG_PATH`; `None` = `$HOME/.kube/config`, then in-cluster.
    pub config_path: Option<String>,
    /// `EXECUTOR_KUBERNETES_CLIENT_QPS`: average Kubernetes API requests per second.
    pub client_qps: u32,
    /// `EXECUTOR_KUBERNETES_CLIENT_BURST`: requests sent at once before the rate applies.
    pub client_burst: u32,
    /// `EXECUTOR_KUBERNETES_NAMESPACE`, else the pod's own namespace, else `default`.
    pub namespace: String,
    /// Where [`Self::namespace`] came from; the executor logs it at startup.
    pub namespace_source: NamespaceSource,
    /// `EXECUTOR_KUBERNETES_NODE_NAME`.
    pub node_name: Option<String>,
    /// `EXECUTOR_KUBERNETES_NODE_PINNING` (default affinity).
    pub node_pinning: NodePinning,
    /// The executor's own pod, which owns every Job; `None` unless POD_NAME, POD_UID and
    /// POD_NAMESPACE are set and the pod is in the jobs' namespace (an owner in another namespace
    /// would make the garbage collector delete the Jobs at once).
    pub owner_pod: Option<OwnerPod>,
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
    /// `KUBERNETES_JOB_UNSCHEDULABLE_TIMEOUT` (default 1m): how long an unschedulable pod waits
    /// when no cluster autoscaler is adding a node for it.
    pub unschedulable_timeout: Duration,
    /// `KUBERNETES_JOB_IMAGE_PULL_TIMEOUT` (default 1m).
    pub image_pull_timeout: Duration,
    /// `KUBERNETES_JOB_POD_CREATION_TIMEOUT` (default 30s).
    pub pod_creation_timeout: Duration,
}

/// Everything wrong with a configuration, collected in one pass so it can be fixed in one go.
#[derive(Debug, thiserror::Error)]
#[error("{}", parser::render_problems(&self.problems))]
pub struct ConfigError {
    /// One sentence per problem, each starting with the variable at fault.
    pub problems: Vec<String>,
}

impl Config {
    /// Namespace of the executor's own pod: POD_NAMESPACE, else the jobs namespace.
    pub fn own_pod_namespace(&self) -> &str {
        self.pod_namespace
            .as_deref()
            .unwrap_or(&self.kubernetes.namespace)
    }

    /// Reads the configuration from the process environment, and the service account's
    /// namespace file when neither EXECUTOR_KUBERNETES_NAMESPACE nor POD_NAMESPACE names one.
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
                Err(_) => parser::non_utf8_problem(&name, &mut problems),
            }
        }
        let mut config = parse(vars, problems)?;
        if config.kubernetes.namespace_source == NamespaceSource::Default
            && let Some(namespace) = service_account_namespace(Path::new(SERVICE_ACCOUNT_NAMESPACE_FILE))
        {
            config.kubernetes.namespace = namespace;
            config.kubernetes.namespace_source = NamespaceSource::ServiceAccount;
        }
        Ok(config)
    }

    /// Reads the configuration from `(name, value)` pairs.
    ///
    /// Empty values count as unset, `NAME_executor` overrides `NAME`, and names outside
    /// [`VARIABLES`] and `IGNORED_VARIABLES` are not read.
    ///
    /// # Errors
    /// All problems found, each naming its variable; the frontend password is never quoted.
    pub fn from_vars<I: IntoIterator<Item = (String, String)>>(vars: I) -> Result<Config, ConfigError> {
        parse(vars, Vec::new())
    }
}

/// A pod that owns the Jobs: its name and UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerPod {
    pub name: String,
    pub uid: String,
}

/// The namespace file every pod's service account volume carries.
const SERVICE_ACCOUNT_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Where the namespace of the executor's objects came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceSource {
    /// EXECUTOR_KUBERNETES_NAMESPACE.
    Variable,
    /// POD_NAMESPACE (Downward API).
    PodNamespace,
    /// The service account's namespace file: the executor runs in a pod.
    ServiceAccount,
    /// None of them: `default`.
    Default,
}

impl NamespaceSource {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Variable => "EXECUTOR_KUBERNETES_NAMESPACE",
            Self::PodNamespace => "POD_NAMESPACE (the executor's own pod)",
            Self::ServiceAccount => "the service account's namespace (the executor's own pod)",
            Self::Default => "the default: no variable names one and the executor is not in a pod",
        }
    }
}

/// The namespace in `file`, when it holds a valid one.
fn service_account_namespace(file: &Path) -> Option<String> {
    let namespace = std::fs::read_to_string(file).ok()?.trim().to_string();
    crate::k8s::labels::is_dns_label(&namespace).then_some(namespace)
}

/// `problems` are those found before parsing (non-UTF-8 values); the result carries them all.
fn parse(
    vars: impl IntoIterator<Item = (String, String)>,
    problems: Vec<String>,
) -> Result<Config, ConfigError> {
    let env = Env::prepare(vars);
    let mut parser = Parser::new(&env, problems);
    let config = build::config(&env, &mut parser);
    parser.finish(env.value("EXECUTOR_FRONTEND_PASSWORD"))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let required = [
            ("EXECUTOR_FRONTEND_URL", "https://sg.example.com"),
            ("EXECUTOR_FRONTEND_PASSWORD", "hunter2-hunter2"),
            ("EXECUTOR_QUEUE_NAME", "batches"),
        ];
        required
            .iter()
            .chain(pairs)
            .map(|(name, value)| ((*name).to_string(), (*value).to_string()))
            .collect()
    }

    fn namespace(pairs: &[(&str, &str)]) -> (String, NamespaceSource) {
        let config = Config::from_vars(vars(pairs)).expect("valid configuration");
        (config.kubernetes.namespace, config.kubernetes.namespace_source)
    }

    #[test]
    fn the_namespace_is_the_variable_else_the_pods_own_else_default() {
        assert_eq!(
            namespace(&[("EXECUTOR_KUBERNETES_NAMESPACE", "jobs"), ("POD_NAMESPACE", "sg")]),
            ("jobs".to_string(), NamespaceSource::Variable)
        );
        assert_eq!(
            namespace(&[("EXECUTOR_KUBERNETES_NAMESPACE", ""), ("POD_NAMESPACE", "sg")]),
            ("sg".to_string(), NamespaceSource::PodNamespace)
        );
        assert_eq!(namespace(&[]), ("default".to_string(), NamespaceSource::Default));
    }

    #[test]
    fn the_executor_pod_owns_the_jobs_only_when_known_and_in_their_namespace() {
        let owner = |pairs: &[(&str, &str)]| {
            Config::from_vars(vars(pairs))
                .expect("valid configuration")
                .kubernetes
                .owner_pod
        };
        let pod = [("POD_NAME", "executor-0"), ("POD_UID", "1b2c-uid")];
        let same = [
            pod.as_slice(),
            &[("POD_NAMESPACE", "sg"), ("EXECUTOR_KUBERNETES_NAMESPACE", "sg")],
        ]
        .concat();
        assert_eq!(
            owner(&same),
            Some(OwnerPod {
                name: "executor-0".into(),
                uid: "1b2c-uid".into()
            })
        );
        let elsewhere = [
            pod.as_slice(),
            &[("POD_NAMESPACE", "sg"), ("EXECUTOR_KUBERNETES_NAMESPACE", "jobs")],
        ]
        .concat();
        assert_eq!(
            owner(&elsewhere),
            None,
            "an owner in another namespace would delete the Jobs"
        );
        assert_eq!(owner(&pod), None, "the pod's namespace must be known");
        assert_eq!(
            owner(&[("POD_NAME", "executor-0"), ("POD_NAMESPACE", "default")]),
            None
        );
    }

    #[test]
    fn the_service_account_namespace_file_is_read_only_when_valid() {
        let dir = std::env::temp_dir().join(format!("ke-sa-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("namespace");
        std::fs::write(&file, "sourcegraph\n").expect("write");
        assert_eq!(service_account_namespace(&file).as_deref(), Some("sourcegraph"));
        std::fs::write(&file, "Not A Namespace").expect("write");
        assert_eq!(service_account_namespace(&file), None);
        assert_eq!(service_account_namespace(&dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
