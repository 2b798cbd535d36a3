//! Wire types of the Sourcegraph executor queue protocol (dequeue, heartbeat, log entries, mark calls).

use std::{collections::BTreeMap, fmt};

use base64::Engine as _;
use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that must never be printed: job tokens, the frontend password, registry credentials.
///
/// `Debug` and `Display` print a placeholder, so a secret that slips into a log line or an error
/// message stays hidden. Read the value with [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// Returns the secret value; call it only where the value is sent or compared.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret)
    }
}

impl<T: Serialize> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// The queues a Sourcegraph frontend serves to executors.
pub const KNOWN_QUEUES: [&str; 2] = ["batches", "codeintel"];

/// `POST /.executors/queue/[<q>/]dequeue` body.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DequeueRequest {
    /// Only in multi-queue mode.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<String>,
    pub executor_name: String,
    /// Selects the payload version: a semver >= 4.3.0 or a dev version gets v2 payloads.
    pub version: String,
    #[serde(rename = "numCPUs", skip_serializing_if = "is_zero")]
    pub num_cpus: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub memory: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub disk_space: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A dequeued job, v1 or v2 payload, normalised: file contents are always raw bytes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawJob")]
pub struct Job {
    /// Payload version (1 when the field is absent).
    pub version: i32,
    pub id: i64,
    /// Per-job token for job routes, git and files; empty on very old frontends.
    pub token: Secret<String>,
    /// Set by the frontend only in multi-queue mode.
    pub queue: String,
    pub repository_name: String,
    pub repository_directory: String,
    pub commit: String,
    pub fetch_tags: bool,
    pub shallow_clone: bool,
    pub sparse_checkout: Vec<String>,
    pub files: BTreeMap<String, JobFile>,
    pub docker_steps: Vec<DockerStep>,
    pub cli_steps: Vec<CliStep>,
    /// Secret value → what to show instead, applied to every log output and command.
    pub redacted_values: Secret<BTreeMap<String, String>>,
    /// Docker config JSON (`{"auths": {...}}`) for pulling step images; v2 only.
    pub docker_auth_config: Option<Secret<serde_json::Value>>,
}

/// One workspace file: inline content, or a reference into the frontend's files store.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFile {
    pub content: Option<Vec<u8>>,
    pub bucket: Option<String>,
    pub key: Option<String>,
    /// `None` when the frontend sent the zero time.
    pub modified_at: Option<Timestamp>,
}

/// A container step.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerStep {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub commands: Vec<String>,
    #[serde(default)]
    pub dir: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub env: Vec<String>,
}

/// A `src` CLI step; the Kubernetes runtime cannot run these.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CliStep {
    #[serde(default)]
    pub key: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub command: Vec<String>,
    #[serde(default)]
    pub dir: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub env: Vec<String>,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawJob {
    #[serde(default)]
    version: i32,
    id: i64,
    #[serde(default)]
    token: String,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    repository_name: String,
    #[serde(default)]
    repository_directory: String,
    #[serde(default)]
    commit: String,
    #[serde(default)]
    fetch_tags: bool,
    #[serde(default)]
    shallow_clone: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    sparse_checkout: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    files: BTreeMap<String, RawFile>,
    #[serde(default, deserialize_with = "null_as_default")]
    docker_steps: Vec<DockerStep>,
    #[serde(default, deserialize_with = "null_as_default")]
    cli_steps: Vec<CliStep>,
    #[serde(default, deserialize_with = "null_as_default")]
    redacted_values: BTreeMap<String, String>,
    #[serde(default)]
    docker_auth_config: Option<serde_json::Value>,
}

/// v2: `{content: base64, modifiedAt}` or `{bucket, key, modifiedAt}`; v1: `{content: plain}`;
/// the 4.0-era format: the plain content string itself.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawFile {
    Plain(String),
    Object {
        #[serde(default)]
        content: Option<String>,
        #[serde(default)]
        bucket: Option<String>,
        #[serde(default)]
        key: Option<String>,
        #[serde(default, rename = "modifiedAt")]
        modified_at: Option<String>,
    },
}

/// What went wrong turning a dequeue response into a [`Job`].
#[derive(Debug, thiserror::Error)]
pub enum JobPayloadError {
    // Neither message quotes the content or the time: the reason goes to the frontend and the
    // log, and the payload can hold secrets.
    #[error("file {path:?}: content is not valid base64")]
    FileContentNotBase64 {
        path: String,
        source: base64::DecodeError,
    },
    #[error("file {path:?}: modifiedAt is not an RFC 3339 time")]
    FileModifiedAt { path: String, source: jiff::Error },
    #[error("file {path:?}: has a bucket or a key but not both, and no content")]
    FileWithoutSource { path: String },
}

impl TryFrom<RawJob> for Job {
    type Error = JobPayloadError;

    fn try_from(raw: RawJob) -> Result<Self, Self::Error> {
        let version = raw.version.max(1);
        let mut files = BTreeMap::new();
        for (path, file) in raw.files {
            let file = match file {
                RawFile::Plain(content) => JobFile {
                    content: Some(content.into_bytes()),
                    bucket: None,
                    key: None,
                    modified_at: None,
                },
                RawFile::Object {
                    content,
                    bucket,
                    key,
                    modified_at,
                } => {
                    let content = match content {
                        Some(c) if version >= 2 => Some(
                            base64::engine::general_purpose::STANDARD
                                .decode(c.as_bytes())
                                .map_err(|source| JobPayloadError::FileContentNotBase64 {
                                    path: path.clone(),
                                    source,
                                })?,
                        ),
                        Some(c) => Some(c.into_bytes()),
                        None => None,
                    };
                    let bucket = bucket.filter(|b| !b.is_empty());
                    let key = key.filter(|k| !k.is_empty());
                    let content = match (content, &bucket, &key) {
                        (Some(content), _, _) => Some(content),
                        (None, Some(_), Some(_)) => None,
                        // Sourcegraph omits empty fields, so this is how an empty file arrives.
                        (None, None, None) => Some(Vec::new()),
                        (None, _, _) => return Err(JobPayloadError::FileWithoutSource { path }),
                    };
                    let modified_at = match modified_at.filter(|m| !m.is_empty()) {
                        None => None,
                        Some(value) => {
                            let ts: Timestamp =
                                value.parse().map_err(|source| JobPayloadError::FileModifiedAt {
                                    path: path.clone(),
                                    source,
                                })?;
                            // Go's zero time means "not set".
                            (ts.as_second() > ZERO_GO_TIME_SECONDS).then_some(ts)
                        }
                    };
                    JobFile {
                        content,
                        bucket,
                        key,
                        modified_at,
                    }
                }
            };
            files.insert(path, file);
        }
        Ok(Job {
            version,
            id: raw.id,
            token: Secret::new(raw.token),
            queue: raw.queue,
            repository_name: raw.repository_name,
            repository_directory: raw.repository_directory,
            commit: raw.commit,
            fetch_tags: raw.fetch_tags,
            shallow_clone: raw.shallow_clone,
            sparse_checkout: raw.sparse_checkout,
            files,
            docker_steps: raw.docker_steps,
            cli_steps: raw.cli_steps,
            redacted_values: Secret::new(raw.redacted_values),
            docker_auth_config: raw.docker_auth_config.filter(|v| !v.is_null()).map(Secret::new),
        })
    }
}

/// Why a job payload could not be read, without quoting any value from it (the payload can hold
/// secrets that no redactor knows yet): serde's message with its quoted value dropped (`invalid
/// type: string, expected i64`), and the line and column.
pub fn payload_error_reason(error: &serde_json::Error) -> String {
    let text = error.to_string();
    // serde_json gives no position for errors raised after the whole payload was read (`try_from`).
    let position = match error.line() {
        0 => String::new(),
        line => format!(" at line {line} column {}", error.column()),
    };
    let message = text.strip_suffix(&position).unwrap_or(&text);
    let message = match error.classify() {
        serde_json::error::Category::Data => without_values(message),
        // Syntax and end-of-input messages name the token expected, never the text found.
        _ => message.to_string(),
    };
    format!("{message}{position}")
}

/// Drops the value serde quotes in its data errors (`invalid type: string "…"`, `unknown variant
/// `…``), keeping what was expected. Other messages (`missing field `id``, `invalid length 2`,
/// [`JobPayloadError`]) name only the schema.
fn without_values(message: &str) -> String {
    for prefix in [
        "invalid type:",
        "invalid value:",
        "unknown variant",
        "unknown field",
    ] {
        if let Some(rest) = message.strip_prefix(prefix) {
            // The expectation comes last; a quoted string value could itself hold ", expected ".
            let (found, expected) = match rest.rfind(", expected ") {
                Some(at) => rest.split_at(at),
                None => (rest, ""),
            };
            let kind = found.split(['`', '"', '\'']).next().unwrap_or("").trim_end();
            return format!("{prefix}{kind}{expected}");
        }
    }
    message.to_string()
}

/// `0001-01-01T00:00:00Z` (Go's zero `time.Time`) in Unix seconds.
const ZERO_GO_TIME_SECONDS: i64 = -62_135_596_800;

/// Telemetry sent in every heartbeat; it fills Site admin > Executors > Instances.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Telemetry {
    pub os: String,
    pub architecture: String,
    pub docker_version: String,
    pub executor_version: String,
    pub git_version: String,
    pub ignite_version: String,
    pub src_cli_version: String,
    pub prometheus_metrics: String,
}

/// Single-queue heartbeat (`POST /.executors/queue/<q>/heartbeat`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatRequestV1 {
    /// Always `"V2"`: tells the frontend the job IDs are the current kind.
    pub version: String,
    pub executor_name: String,
    /// `null` when nothing runs, as the Go client sends.
    pub job_ids: Option<Vec<i64>>,
    #[serde(flatten)]
    pub telemetry: Telemetry,
}

/// Multi-queue heartbeat (`POST /.executors/queue/heartbeat`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatRequestMulti {
    pub version: String,
    pub executor_name: String,
    pub queue_names: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub job_ids_by_queue: Vec<QueueJobIds>,
    #[serde(flatten)]
    pub telemetry: Telemetry,
}

/// Running job IDs of one queue in a multi-queue heartbeat.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueueJobIds {
    pub queue_name: String,
    pub job_ids: Vec<String>,
}

/// The frontend's answer to a heartbeat. IDs are `"<id>"` (single queue) or `"<id>-<queue>"`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResponse {
    #[serde(default, deserialize_with = "ids_as_strings")]
    pub known_ids: Vec<String>,
    #[serde(default, deserialize_with = "ids_as_strings")]
    pub cancel_ids: Vec<String>,
}

/// Accepts `null`, and numbers as well as strings, as Sourcegraph's own client does.
fn ids_as_strings<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Int(i64),
        Float(f64),
    }
    let ids = Option::<Vec<Id>>::deserialize(deserializer)?.unwrap_or_default();
    Ok(ids
        .into_iter()
        .map(|id| match id {
            Id::Text(s) => s,
            Id::Int(n) => n.to_string(),
            // Frontends that decode IDs as JSON numbers may send 12.0.
            Id::Float(f) => format!("{}", f.trunc() as i64),
        })
        .collect())
}

/// One execution log entry as the frontend stores it; sent whole on every update.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionLogEntry {
    pub key: String,
    pub command: Vec<String>,
    pub start_time: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub out: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub duration_ms: Option<i64>,
}

/// `addExecutionLogEntry` body.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddExecutionLogEntryRequest<'a> {
    pub executor_name: &'a str,
    pub job_id: i64,
    #[serde(flatten)]
    pub entry: &'a ExecutionLogEntry,
}

/// `updateExecutionLogEntry` body.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateExecutionLogEntryRequest<'a> {
    pub executor_name: &'a str,
    pub job_id: i64,
    pub entry_id: i64,
    #[serde(flatten)]
    pub entry: &'a ExecutionLogEntry,
}

/// `markComplete` / `markErrored` / `markFailed` body.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MarkRequest<'a> {
    pub executor_name: &'a str,
    pub job_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_payload_decodes_base64_files_and_keeps_references() {
        let job: Job = serde_json::from_str(
            r#"{"version":2,"id":7,"token":"abc","queue":"batches","repositoryName":"github.com/o/r",
                "repositoryDirectory":"repository","commit":"deadbeef","fetchTags":true,"shallowClone":true,
                "sparseCheckout":["a/*"],
                "files":{"input.json":{"content":"aGVsbG8=","modifiedAt":"0001-01-01T00:00:00Z"},
                         "w/f.py":{"bucket":"batch-changes","key":"s/f","modifiedAt":"2024-05-01T10:00:00Z"}},
                "dockerSteps":[{"key":"step.0.pre","image":"img","commands":["echo hi"],"dir":".","env":["A=b"]}],
                "cliSteps":null,"redactedValues":{"s3cr3t":"${{ secrets.X }}"},
                "dockerAuthConfig":{"auths":{"r.example":{"auth":"dTpw"}}}}"#,
        )
        .expect("valid v2 payload");
        assert_eq!(job.version, 2);
        assert_eq!(job.queue, "batches");
        assert!(job.fetch_tags);
        assert_eq!(job.files["input.json"].content.as_deref(), Some(&b"hello"[..]));
        assert_eq!(job.files["input.json"].modified_at, None);
        assert_eq!(job.files["w/f.py"].bucket.as_deref(), Some("batch-changes"));
        assert_eq!(
            job.files["w/f.py"].modified_at.map(|t| t.as_second()),
            Some(1_714_557_600)
        );
        assert_eq!(job.docker_steps[0].env, vec!["A=b".to_string()]);
        assert!(job.cli_steps.is_empty());
        assert!(job.docker_auth_config.is_some());
        assert!(
            !format!("{job:?}").contains("abc"),
            "token must not show in Debug"
        );
        assert!(
            !format!("{job:?}").contains("s3cr3t"),
            "redacted values must not show in Debug"
        );
    }

    #[test]
    fn v1_payload_keeps_plain_content_and_old_flat_files() {
        let job: Job = serde_json::from_str(
            r#"{"id":3,"repositoryName":"r","commit":"c","files":{"a.txt":{"content":"aGVsbG8="},"b.txt":"plain"},
                "dockerSteps":[{"image":"i","commands":["x"],"dir":"","env":null}]}"#,
        )
        .expect("valid v1 payload");
        assert_eq!(job.version, 1);
        assert_eq!(job.files["a.txt"].content.as_deref(), Some(&b"aGVsbG8="[..]));
        assert_eq!(job.files["b.txt"].content.as_deref(), Some(&b"plain"[..]));
        assert!(job.docker_steps[0].env.is_empty());
    }

    #[test]
    fn a_file_with_only_a_time_is_empty_and_half_a_reference_is_an_error() {
        let job = serde_json::from_str::<Job>(
            r#"{"version":2,"id":1,"files":{".keep":{"modifiedAt":"0001-01-01T00:00:00Z"}}}"#,
        )
        .expect("an empty file is valid");
        assert_eq!(job.files[".keep"].content.as_deref(), Some(&b""[..]));
        let err = serde_json::from_str::<Job>(r#"{"version":2,"id":1,"files":{"x":{"bucket":"b"}}}"#)
            .expect_err("a bucket without a key");
        assert!(
            err.to_string()
                .contains("file \"x\": has a bucket or a key but not both"),
            "{err}"
        );
    }

    #[test]
    fn bad_base64_in_v2_is_an_error_naming_the_file() {
        let err = serde_json::from_str::<Job>(r#"{"version":2,"id":1,"files":{"x":{"content":"!!"}}}"#)
            .expect_err("bad base64 must fail");
        assert!(err.to_string().contains("\"x\""), "{err}");
    }

    #[test]
    fn heartbeat_response_accepts_numbers_strings_and_null() {
        let r: HeartbeatResponse =
            serde_json::from_str(r#"{"knownIds":[12,"13-batches",14.0],"cancelIds":null}"#).expect("valid");
        assert_eq!(r.known_ids, vec!["12", "13-batches", "14"]);
        assert!(r.cancel_ids.is_empty());
    }

    #[test]
    fn heartbeat_shapes_match_the_wire_contract() {
        let v1 = HeartbeatRequestV1 {
            version: "V2".into(),
            executor_name: "h-1".into(),
            job_ids: None,
            telemetry: Telemetry {
                os: "linux".into(),
                ..Telemetry::default()
            },
        };
        let json = serde_json::to_value(&v1).expect("serializable");
        assert_eq!(json["jobIds"], serde_json::Value::Null);
        assert_eq!(json["version"], "V2");
        assert_eq!(json["os"], "linux");
        assert_eq!(json["srcCliVersion"], "");
        let multi = HeartbeatRequestMulti {
            version: String::new(),
            executor_name: "h-1".into(),
            queue_names: vec!["batches".into(), "codeintel".into()],
            job_ids_by_queue: vec![QueueJobIds {
                queue_name: "batches".into(),
                job_ids: vec!["12".into()],
            }],
            telemetry: Telemetry::default(),
        };
        let json = serde_json::to_value(&multi).expect("serializable");
        assert_eq!(json["jobIdsByQueue"][0]["jobIds"][0], "12");
        assert_eq!(json["queueNames"][1], "codeintel");
    }

    #[test]
    fn dequeue_request_omits_empty_fields() {
        let req = DequeueRequest {
            queues: vec![],
            executor_name: "e".into(),
            version: "0.0.0+dev".into(),
            num_cpus: 0,
            memory: String::new(),
            disk_space: "20G".into(),
        };
        let json = serde_json::to_value(&req).expect("serializable");
        assert!(
            json.get("queues").is_none() && json.get("numCPUs").is_none() && json.get("memory").is_none()
        );
        assert_eq!(json["diskSpace"], "20G");
    }

    /// The reason for a payload that fails to read, checked not to quote `secret`.
    fn unreadable_reason(payload: &str, secret: &str) -> String {
        let error = match serde_json::from_str::<Job>(payload) {
            Ok(_) => panic!("the payload was expected not to read"),
            Err(error) => error,
        };
        let reason = payload_error_reason(&error);
        assert!(!reason.contains(secret), "the reason quotes a payload value");
        reason
    }

    #[test]
    fn unreadable_payload_reasons_keep_position_not_values() {
        let reason = unreadable_reason(r#"{"id":7,"fetchTags":"s3cr3t, expected x"}"#, "s3cr3t");
        assert_eq!(
            reason,
            "invalid type: string, expected a boolean at line 1 column 40"
        );
        let reason = unreadable_reason(r#"{"id":7,"commit":123456}"#, "123456");
        assert_eq!(
            reason,
            "invalid type: integer, expected a string at line 1 column 23"
        );
        let reason = unreadable_reason(r#"{"token":"tok"}"#, "tok");
        assert_eq!(reason, "missing field `id` at line 1 column 15");
    }

    #[test]
    fn unreadable_file_reasons_name_the_file_not_its_content() {
        let payload = r#"{"version":2,"id":7,"files":{"a.txt":{"content":"s3cr3t!!","modifiedAt":""}}}"#;
        let reason = unreadable_reason(payload, "s3cr3t");
        assert!(
            reason.starts_with(r#"file "a.txt": content is not valid base64"#),
            "{reason}"
        );
        let payload = r#"{"version":2,"id":7,"files":{"a.txt":{"content":"aGk=","modifiedAt":"s3cr3t"}}}"#;
        let reason = unreadable_reason(payload, "s3cr3t");
        assert!(
            reason.starts_with(r#"file "a.txt": modifiedAt is not an RFC 3339 time"#),
            "{reason}"
        );
    }
}
