//! Public data types of the dev frontend: job definitions going in, records coming out (camelCase JSON).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The queues a Sourcegraph frontend serves; any other name is rejected by the protocol routes.
pub const KNOWN_QUEUES: [&str; 2] = ["batches", "codeintel"];

/// A job to put on a queue (body of `POST /dev/jobs`).
///
/// Field names and meaning follow the executor `Job` payload; the token, id and payload version are
/// assigned by the frontend at dequeue time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewJob {
    /// `batches` or `codeintel`.
    pub queue: String,
    /// Repository the executor clones through `/.executors/git/<repositoryName>`.
    #[serde(default)]
    pub repository_name: String,
    #[serde(default)]
    pub repository_directory: String,
    #[serde(default)]
    pub commit: String,
    #[serde(default)]
    pub fetch_tags: bool,
    #[serde(default)]
    pub shallow_clone: bool,
    #[serde(default)]
    pub sparse_checkout: Vec<String>,
    /// Workspace files keyed by their path relative to the workspace.
    #[serde(default)]
    pub files: BTreeMap<String, JobFile>,
    #[serde(default)]
    pub docker_steps: Vec<DockerStep>,
    #[serde(default)]
    pub cli_steps: Vec<CliStep>,
    /// Secret value → replacement; the executor must redact these from logs.
    #[serde(default)]
    pub redacted_values: BTreeMap<String, String>,
    /// Sent only in version-2 payloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_auth_config: Option<serde_json::Value>,
}

/// A workspace file: either inline `content` (plain text here; base64 on the v2 wire) or a
/// reference to an uploaded file (`bucket` + `key`, served by `/.executors/files/...`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// RFC 3339; the zero time is sent when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_at: Option<String>,
}

/// One docker step of a job, serialized exactly as the executor payload carries it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerStep {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    pub image: String,
    #[serde(default)]
    pub commands: Vec<String>,
    #[serde(default)]
    pub dir: String,
    #[serde(default)]
    pub env: Vec<String>,
}

/// One src-cli step of a job (note the field is `command`, not `commands`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CliStep {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub dir: String,
    #[serde(default)]
    pub env: Vec<String>,
}

/// Lifecycle state of a job record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Processing,
    Completed,
    /// Final only once `numFailures` reached `maxFailures`; below that an errored job is re-queued.
    Errored,
    /// Also the state of a job canceled while still queued.
    Failed,
}

impl JobState {
    /// Whether the job will never run again.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Completed | JobState::Errored | JobState::Failed)
    }

    /// Lower-case name as used on the wire and in pages.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Processing => "processing",
            JobState::Completed => "completed",
            JobState::Errored => "errored",
            JobState::Failed => "failed",
        }
    }
}

/// Everything the frontend knows about one job (never its token or redacted values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub id: i64,
    pub queue: String,
    pub repository_name: String,
    pub commit: String,
    pub state: JobState,
    /// Name of the executor that dequeued it last.
    pub executor: Option<String>,
    pub error_message: Option<String>,
    /// How often the resetter re-queued it because its executor stopped heartbeating for it.
    pub num_resets: u32,
    /// How often it was marked errored.
    pub num_failures: u32,
    /// How often it was dequeued.
    pub num_dequeues: u32,
    pub cancel_requested: bool,
    /// Payload version of the last dequeue: 1 or 2.
    pub payload_version: Option<u8>,
    pub queued_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// Last time the owning executor reported this job in a heartbeat (or the dequeue time).
    pub last_heartbeat_at: Option<Timestamp>,
    pub log_entries: Vec<LogEntryRecord>,
    pub mark_calls: Vec<MarkRecord>,
}

/// One execution log entry of a job, with bookkeeping that shows how it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntryRecord {
    /// 1-based index within the job, as returned by `addExecutionLogEntry`.
    pub id: i64,
    pub key: String,
    pub command: Vec<String>,
    pub start_time: Option<String>,
    pub exit_code: Option<i64>,
    pub out: String,
    pub duration_ms: Option<i64>,
    /// Which executor sent the add.
    pub executor_name: String,
    pub added_at: Timestamp,
    /// Number of `updateExecutionLogEntry` calls this entry received.
    pub update_count: u32,
    pub first_update_at: Option<Timestamp>,
    pub last_update_at: Option<Timestamp>,
}

/// Which mark call was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MarkKind {
    Complete,
    Errored,
    Failed,
}

/// Audit entry for one `mark*` call on a job, accepted (204) or rejected (404).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MarkRecord {
    pub kind: MarkKind,
    pub executor_name: String,
    pub error_message: Option<String>,
    pub at: Timestamp,
    /// HTTP status answered: 204 or 404.
    pub status: u16,
}

/// Heartbeat telemetry of one executor (the `executor_heartbeats` row plus test bookkeeping).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutorRecord {
    pub hostname: String,
    /// Set by single-queue heartbeats.
    pub queue_name: Option<String>,
    /// Set by multi-queue heartbeats.
    pub queue_names: Vec<String>,
    pub os: String,
    pub architecture: String,
    pub docker_version: String,
    pub executor_version: String,
    pub git_version: String,
    pub ignite_version: String,
    pub src_cli_version: String,
    pub first_seen_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub heartbeat_count: u64,
    /// Raw Prometheus text of the last heartbeat.
    pub prometheus_metrics: String,
    /// Job ids of the last heartbeat as sent ("12" or "12-batches").
    pub last_job_ids: Vec<String>,
}

/// One handled HTTP request, for protocol tests. Never contains headers or tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    pub at: Timestamp,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub executor_name: Option<String>,
}
