//! In-memory state of the frontend: job records, job tokens, executor heartbeats, files and the
//! request log, plus the state transitions the queue protocol performs on them.

use std::collections::{BTreeMap, HashMap, VecDeque};

use base64::Engine as _;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::model::{
    CliStep, DockerStep, ExecutorRecord, JobRecord, JobState, LogEntryRecord, MarkKind, MarkRecord, NewJob,
    RequestRecord,
};

/// How many requests `GET /dev/requests` remembers.
const REQUEST_LOG_CAPACITY: usize = 2000;

/// A processing job stalled this many times more is failed instead of re-queued.
pub(crate) const MAX_RESETS: u32 = 3;

/// Sent for files without a modification time, like Go's zero `time.Time`.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

struct Job {
    record: JobRecord,
    definition: NewJob,
}

/// What a job token grants access to.
#[derive(Debug, Clone)]
pub(crate) struct JobToken {
    pub(crate) secret: String,
    pub(crate) job_id: i64,
    pub(crate) queue: String,
    pub(crate) repo: String,
}

/// Telemetry carried by both heartbeat shapes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Telemetry {
    pub(crate) os: String,
    pub(crate) architecture: String,
    pub(crate) docker_version: String,
    pub(crate) executor_version: String,
    pub(crate) git_version: String,
    pub(crate) ignite_version: String,
    pub(crate) src_cli_version: String,
    pub(crate) prometheus_metrics: String,
}

/// Why a log-entry call was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LogEntryError {
    UnknownJob,
    UnknownEntry,
}

/// Result of a stall sweep, for logging.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ResetOutcome {
    pub(crate) requeued: Vec<(String, i64)>,
    pub(crate) failed: Vec<(String, i64)>,
}

#[derive(Default)]
pub(crate) struct Store {
    jobs: BTreeMap<(String, i64), Job>,
    last_id_by_queue: HashMap<String, i64>,
    tokens: Vec<JobToken>,
    executors: BTreeMap<String, ExecutorRecord>,
    files: HashMap<(String, String), Vec<u8>>,
    requests: VecDeque<RequestRecord>,
    /// Rotates the starting queue of multi-queue dequeues so no queue starves.
    multi_queue_cursor: usize,
}

// === impl Store: jobs ===

impl Store {
    pub(crate) fn enqueue(&mut self, definition: NewJob) -> i64 {
        let last_id = self.last_id_by_queue.entry(definition.queue.clone()).or_insert(0);
        *last_id += 1;
        let id = *last_id;
        let record = JobRecord {
            id,
            queue: definition.queue.clone(),
            repository_name: definition.repository_name.clone(),
            commit: definition.commit.clone(),
            state: JobState::Queued,
            executor: None,
            error_message: None,
            num_resets: 0,
            num_failures: 0,
            num_dequeues: 0,
            cancel_requested: false,
            payload_version: None,
            queued_at: Timestamp::now(),
            started_at: None,
            finished_at: None,
            last_heartbeat_at: None,
            log_entries: Vec::new(),
            mark_calls: Vec::new(),
        };
        self.jobs
            .insert((definition.queue.clone(), id), Job { record, definition });
        id
    }

    pub(crate) fn job(&self, queue: &str, id: i64) -> Option<JobRecord> {
        self.jobs
            .get(&(queue.to_owned(), id))
            .map(|job| job.record.clone())
    }

    pub(crate) fn jobs(&self) -> Vec<JobRecord> {
        self.jobs.values().map(|job| job.record.clone()).collect()
    }

    /// Takes the oldest queued job of the first non-empty queue (rotating the start for
    /// multi-queue requests), marks it processing for `executor` and returns its wire payload.
    pub(crate) fn dequeue(
        &mut self,
        queues: &[String],
        executor: &str,
        v2_payload: bool,
        multi_queue: bool,
    ) -> Option<serde_json::Value> {
        if queues.is_empty() {
            return None;
        }
        let start = if multi_queue {
            self.multi_queue_cursor % queues.len()
        } else {
            0
        };
        let key = (0..queues.len()).find_map(|offset| {
            let queue = &queues[(start + offset) % queues.len()];
            self.jobs
                .iter()
                .filter(|((job_queue, _), job)| job_queue == queue && job.record.state == JobState::Queued)
                .map(|(key, _)| key.clone())
                .next()
        })?;
        if multi_queue {
            self.multi_queue_cursor = self.multi_queue_cursor.wrapping_add(1);
        }
        let secret = new_job_token();
        let job = self.jobs.get_mut(&key)?;
        let now = Timestamp::now();
        job.record.state = JobState::Processing;
        job.record.executor = Some(executor.to_owned());
        job.record.started_at = Some(now);
        job.record.last_heartbeat_at = Some(now);
        job.record.finished_at = None;
        job.record.num_dequeues += 1;
        job.record.payload_version = Some(if v2_payload { 2 } else { 1 });
        let payload = wire_payload(job, &secret, v2_payload, multi_queue);
        let token = JobToken {
            secret,
            job_id: key.1,
            queue: key.0.clone(),
            repo: job.definition.repository_name.clone(),
        };
        // A re-dequeued job gets a fresh token; the old one must stop working.
        self.tokens
            .retain(|t| !(t.job_id == token.job_id && t.queue == token.queue));
        self.tokens.push(token);
        Some(payload)
    }

    /// Finds the token with a constant-time comparison against every stored secret.
    pub(crate) fn find_token(&self, presented: &str) -> Option<JobToken> {
        let mut found = None;
        for token in &self.tokens {
            if constant_time_eq(token.secret.as_bytes(), presented.as_bytes()) {
                found = Some(token.clone());
            }
        }
        found
    }

    fn revoke_token(&mut self, queue: &str, id: i64) {
        self.tokens.retain(|t| !(t.job_id == id && t.queue == queue));
    }

    fn owned_processing_job(&mut self, queue: &str, id: i64, executor: &str) -> Option<&mut Job> {
        self.jobs.get_mut(&(queue.to_owned(), id)).filter(|job| {
            job.record.state == JobState::Processing && job.record.executor.as_deref() == Some(executor)
        })
    }

    pub(crate) fn add_log_entry(
        &mut self,
        queue: &str,
        id: i64,
        executor: &str,
        entry: LogEntryFields,
    ) -> Result<i64, LogEntryError> {
        let job = self
            .owned_processing_job(queue, id, executor)
            .ok_or(LogEntryError::UnknownJob)?;
        let entry_id = job.record.log_entries.len() as i64 + 1;
        job.record.log_entries.push(LogEntryRecord {
            id: entry_id,
            key: entry.key,
            command: entry.command,
            start_time: entry.start_time,
            exit_code: entry.exit_code,
            out: entry.out,
            duration_ms: entry.duration_ms,
            executor_name: executor.to_owned(),
            added_at: Timestamp::now(),
            update_count: 0,
            first_update_at: None,
            last_update_at: None,
        });
        Ok(entry_id)
    }

    pub(crate) fn update_log_entry(
        &mut self,
        queue: &str,
        id: i64,
        executor: &str,
        entry_id: i64,
        entry: LogEntryFields,
    ) -> Result<(), LogEntryError> {
        let job = self
            .owned_processing_job(queue, id, executor)
            .ok_or(LogEntryError::UnknownJob)?;
        let stored = job
            .record
            .log_entries
            .iter_mut()
            .find(|stored| stored.id == entry_id)
            .ok_or(LogEntryError::UnknownEntry)?;
        let now = Timestamp::now();
        stored.key = entry.key;
        stored.command = entry.command;
        stored.start_time = entry.start_time;
        stored.exit_code = entry.exit_code;
        stored.out = entry.out;
        stored.duration_ms = entry.duration_ms;
        stored.update_count += 1;
        stored.first_update_at.get_or_insert(now);
        stored.last_update_at = Some(now);
        Ok(())
    }

    /// Applies a mark call; `false` means the job is unknown, not processing or not owned (404).
    pub(crate) fn mark(
        &mut self,
        queue: &str,
        id: i64,
        executor: &str,
        kind: MarkKind,
        error_message: Option<String>,
        max_failures: u32,
    ) -> bool {
        let now = Timestamp::now();
        let accepted = match self.owned_processing_job(queue, id, executor) {
            Some(job) => {
                let record = &mut job.record;
                record.finished_at = Some(now);
                record.error_message = error_message.clone();
                record.state = match kind {
                    MarkKind::Complete => JobState::Completed,
                    MarkKind::Failed => JobState::Failed,
                    MarkKind::Errored => {
                        record.num_failures += 1;
                        if record.num_failures >= max_failures.max(1) {
                            JobState::Errored
                        } else {
                            JobState::Queued
                        }
                    }
                };
                true
            }
            None => false,
        };
        if accepted {
            self.revoke_token(queue, id);
        }
        if let Some(job) = self.jobs.get_mut(&(queue.to_owned(), id)) {
            job.record.mark_calls.push(MarkRecord {
                kind,
                executor_name: executor.to_owned(),
                error_message,
                at: now,
                status: if accepted { 204 } else { 404 },
            });
        }
        accepted
    }

    /// Flags a processing job for cancellation, or fails a queued one right away.
    pub(crate) fn cancel(&mut self, queue: &str, id: i64) -> Result<(), CancelError> {
        let job = self
            .jobs
            .get_mut(&(queue.to_owned(), id))
            .ok_or(CancelError::NotFound)?;
        match job.record.state {
            JobState::Queued => {
                job.record.cancel_requested = true;
                job.record.state = JobState::Failed;
                job.record.error_message = Some("canceled".to_owned());
                job.record.finished_at = Some(Timestamp::now());
                Ok(())
            }
            JobState::Processing => {
                job.record.cancel_requested = true;
                Ok(())
            }
            finished => Err(CancelError::AlreadyFinished(finished)),
        }
    }

    /// Re-queues processing jobs not heartbeated for `stalled_after`, failing those reset
    /// [`MAX_RESETS`] times already. Their tokens are revoked.
    pub(crate) fn reset_stalled(&mut self, now: Timestamp, stalled_after: SignedDuration) -> ResetOutcome {
        let mut outcome = ResetOutcome::default();
        for ((queue, id), job) in &mut self.jobs {
            let record = &mut job.record;
            if record.state != JobState::Processing {
                continue;
            }
            let last_alive = record
                .last_heartbeat_at
                .or(record.started_at)
                .unwrap_or(record.queued_at);
            if now.duration_since(last_alive) < stalled_after {
                continue;
            }
            if record.num_resets >= MAX_RESETS {
                record.state = JobState::Failed;
                record.error_message = Some(format!(
                    "job reset too many times ({MAX_RESETS}): executor stopped heartbeating"
                ));
                record.finished_at = Some(now);
                outcome.failed.push((queue.clone(), *id));
            } else {
                record.state = JobState::Queued;
                record.num_resets += 1;
                outcome.requeued.push((queue.clone(), *id));
            }
        }
        for (queue, id) in outcome.requeued.iter().chain(&outcome.failed) {
            self.tokens.retain(|t| !(t.job_id == *id && &t.queue == queue));
        }
        outcome
    }
}

/// Why the admin cancel was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CancelError {
    NotFound,
    AlreadyFinished(JobState),
}

/// Fields of an execution log entry as the executor sends them.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogEntryFields {
    pub(crate) key: String,
    pub(crate) command: Vec<String>,
    pub(crate) start_time: Option<String>,
    pub(crate) exit_code: Option<i64>,
    pub(crate) out: String,
    pub(crate) duration_ms: Option<i64>,
}

// === impl Store: executors ===

impl Store {
    /// Upserts the heartbeat row; returns (known, cancel) among `job_ids` of `queue`s and refreshes
    /// the heartbeat time of the known ones.
    pub(crate) fn heartbeat(
        &mut self,
        executor: &str,
        queues: HeartbeatQueues,
        telemetry: Telemetry,
        reported: &[(String, i64)],
        reported_raw: Vec<String>,
    ) -> HeartbeatAnswer {
        let now = Timestamp::now();
        let (queue_name, queue_names) = match queues {
            HeartbeatQueues::Single(queue) => (Some(queue), Vec::new()),
            HeartbeatQueues::Multi(queues) => (None, queues),
        };
        let record = self
            .executors
            .entry(executor.to_owned())
            .or_insert_with(|| ExecutorRecord {
                hostname: executor.to_owned(),
                queue_name: None,
                queue_names: Vec::new(),
                os: String::new(),
                architecture: String::new(),
                docker_version: String::new(),
                executor_version: String::new(),
                git_version: String::new(),
                ignite_version: String::new(),
                src_cli_version: String::new(),
                first_seen_at: now,
                last_seen_at: now,
                heartbeat_count: 0,
                prometheus_metrics: String::new(),
                last_job_ids: Vec::new(),
            });
        record.queue_name = queue_name;
        record.queue_names = queue_names;
        record.os = telemetry.os;
        record.architecture = telemetry.architecture;
        record.docker_version = telemetry.docker_version;
        record.executor_version = telemetry.executor_version;
        record.git_version = telemetry.git_version;
        record.ignite_version = telemetry.ignite_version;
        record.src_cli_version = telemetry.src_cli_version;
        record.last_seen_at = now;
        record.heartbeat_count += 1;
        record.prometheus_metrics = telemetry.prometheus_metrics;
        record.last_job_ids = reported_raw;

        let mut known = Vec::new();
        let mut cancel = Vec::new();
        for (queue, id) in reported {
            if let Some(job) = self.owned_processing_job(queue, *id, executor) {
                job.record.last_heartbeat_at = Some(now);
                known.push((queue.clone(), *id));
                if job.record.cancel_requested {
                    cancel.push((queue.clone(), *id));
                }
            }
        }
        HeartbeatAnswer { known, cancel }
    }

    pub(crate) fn executor_known(&self, executor: &str) -> bool {
        self.executors.contains_key(executor)
    }

    /// Executors newest first, like the Instances page orders them.
    pub(crate) fn executors(&self) -> Vec<ExecutorRecord> {
        let mut executors: Vec<ExecutorRecord> = self.executors.values().cloned().collect();
        executors.sort_by(|a, b| {
            b.first_seen_at
                .cmp(&a.first_seen_at)
                .then(a.hostname.cmp(&b.hostname))
        });
        executors
    }
}

/// Reported jobs the executor still owns, and those of them to cancel, as (queue, id).
pub(crate) struct HeartbeatAnswer {
    pub(crate) known: Vec<(String, i64)>,
    pub(crate) cancel: Vec<(String, i64)>,
}

/// Which queue column a heartbeat fills.
pub(crate) enum HeartbeatQueues {
    Single(String),
    Multi(Vec<String>),
}

// === impl Store: files and requests ===

impl Store {
    pub(crate) fn add_file(&mut self, bucket: &str, key: &str, content: Vec<u8>) {
        self.files.insert((bucket.to_owned(), key.to_owned()), content);
    }

    pub(crate) fn file(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.files.get(&(bucket.to_owned(), key.to_owned())).cloned()
    }

    pub(crate) fn record_request(&mut self, request: RequestRecord) {
        if self.requests.len() == REQUEST_LOG_CAPACITY {
            self.requests.pop_front();
        }
        self.requests.push_back(request);
    }

    pub(crate) fn requests(&self) -> Vec<RequestRecord> {
        self.requests.iter().cloned().collect()
    }
}

/// Compares secrets without an early exit on the first differing byte.
pub(crate) fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter().zip(right).fold(0u8, |acc, (l, r)| acc | (l ^ r)) == 0
}

/// 20 random bytes, hex-encoded, drawn from UUIDv4 randomness.
fn new_job_token() -> String {
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes.iter().take(20).map(|b| format!("{b:02x}")).collect()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireFile<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bucket: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    modified_at: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireJob<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u8>,
    id: i64,
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<&'a str>,
    repository_name: &'a str,
    repository_directory: &'a str,
    commit: &'a str,
    fetch_tags: bool,
    shallow_clone: bool,
    sparse_checkout: &'a [String],
    files: BTreeMap<&'a str, WireFile<'a>>,
    docker_steps: &'a [DockerStep],
    cli_steps: &'a [CliStep],
    redacted_values: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    docker_auth_config: Option<serde_json::Value>,
}

/// Builds the dequeue response body in the payload version the executor understands.
fn wire_payload(job: &Job, token: &str, v2_payload: bool, multi_queue: bool) -> serde_json::Value {
    let definition = &job.definition;
    let files = definition
        .files
        .iter()
        .map(|(path, file)| {
            let content = file.content.as_ref().filter(|c| !c.is_empty()).map(|content| {
                if v2_payload {
                    base64::engine::general_purpose::STANDARD.encode(content)
                } else {
                    content.clone()
                }
            });
            let wire = WireFile {
                content,
                bucket: file.bucket.as_deref().filter(|b| !b.is_empty()),
                key: file.key.as_deref().filter(|k| !k.is_empty()),
                modified_at: file.modified_at.as_deref().unwrap_or(ZERO_TIME),
            };
            (path.as_str(), wire)
        })
        .collect();
    let wire = WireJob {
        version: v2_payload.then_some(2),
        id: job.record.id,
        token,
        queue: multi_queue.then_some(job.record.queue.as_str()),
        repository_name: &definition.repository_name,
        repository_directory: &definition.repository_directory,
        commit: &definition.commit,
        fetch_tags: definition.fetch_tags,
        shallow_clone: definition.shallow_clone,
        sparse_checkout: &definition.sparse_checkout,
        files,
        docker_steps: &definition.docker_steps,
        cli_steps: &definition.cli_steps,
        redacted_values: &definition.redacted_values,
        docker_auth_config: v2_payload.then(|| {
            definition
                .docker_auth_config
                .clone()
                .unwrap_or_else(|| serde_json::json!({}))
        }),
    };
    // Serializing plain structs of strings, numbers and maps with string keys cannot fail.
    serde_json::to_value(wire).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(queue: &str) -> NewJob {
        NewJob {
            queue: queue.to_owned(),
            repository_name: "github.com/o/r".to_owned(),
            ..NewJob::default()
        }
    }

    #[test]
    fn ids_increase_per_queue() {
        let mut store = Store::default();
        assert_eq!(store.enqueue(job("batches")), 1);
        assert_eq!(store.enqueue(job("batches")), 2);
        assert_eq!(store.enqueue(job("codeintel")), 1);
    }

    #[test]
    fn tokens_are_forty_hex_chars_and_distinct() {
        let first = new_job_token();
        assert_eq!(first.len(), 40);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(first, new_job_token());
    }

    #[test]
    fn errored_jobs_are_requeued_until_max_failures() {
        let mut store = Store::default();
        let id = store.enqueue(job("batches"));
        let queues = ["batches".to_owned()];
        assert!(store.dequeue(&queues, "e", true, false).is_some());
        assert!(store.mark("batches", id, "e", MarkKind::Errored, Some("boom".into()), 2));
        assert_eq!(store.job("batches", id).map(|j| j.state), Some(JobState::Queued));
        assert!(store.dequeue(&queues, "e", true, false).is_some());
        assert!(store.mark("batches", id, "e", MarkKind::Errored, Some("boom".into()), 2));
        let record = store.job("batches", id);
        assert_eq!(record.as_ref().map(|j| j.state), Some(JobState::Errored));
        assert_eq!(record.map(|j| j.num_failures), Some(2));
    }

    #[test]
    fn stalled_jobs_fail_after_max_resets() {
        let mut store = Store::default();
        let id = store.enqueue(job("codeintel"));
        let queues = ["codeintel".to_owned()];
        let later = Timestamp::now() + SignedDuration::from_secs(60);
        for _ in 0..MAX_RESETS {
            assert!(store.dequeue(&queues, "e", true, false).is_some());
            let outcome = store.reset_stalled(later, SignedDuration::from_secs(25));
            assert_eq!(outcome.requeued, vec![("codeintel".to_owned(), id)]);
        }
        assert!(store.dequeue(&queues, "e", true, false).is_some());
        let outcome = store.reset_stalled(later, SignedDuration::from_secs(25));
        assert_eq!(outcome.failed, vec![("codeintel".to_owned(), id)]);
        assert!(store.tokens.is_empty());
    }
}
