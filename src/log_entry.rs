//! One execution log entry on the frontend: created when a step starts, updated at most about once
//! a second while its output grows, and closed with the exit code and duration.

use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::{
    events::Event,
    metrics::Metrics,
    queue::{
        client::{JobHandle, QueueClient},
        types::ExecutionLogEntry,
    },
    redact::Redactor,
};

/// Key of the entry recording the deletion of the job's Kubernetes objects.
pub const TEARDOWN_JOB_KEY: &str = "teardown.kubernetes.job";
/// Key of the entry recording what became of the workspace.
pub const TEARDOWN_FS_KEY: &str = "teardown.fs";

/// How often a growing entry is sent again.
pub const UPDATE_INTERVAL: Duration = Duration::from_secs(1);

/// Where an entry goes and how its output is treated: the job's routes, its redactor, the size cap.
pub struct EntrySink {
    pub client: QueueClient,
    pub job: JobHandle,
    pub redactor: Redactor,
    /// EXECUTOR_LOG_ENTRY_MAX_BYTES.
    pub max_bytes: usize,
    pub metrics: Metrics,
}

/// Builds and uploads one entry. Output lines are redacted and prefixed `stdout: `.
pub struct LogEntryWriter {
    client: QueueClient,
    job: JobHandle,
    redactor: Redactor,
    entry: ExecutionLogEntry,
    id: i64,
    max_bytes: usize,
    truncated: bool,
    dirty: bool,
    last_sent: Instant,
    started: Instant,
    metrics: Metrics,
}

/// The size-cap notice, itself a `stdout: ` line so parsers of the output keep working.
fn truncation_notice(max_bytes: usize) -> String {
    format!(
        "stdout: [kube-executor] output truncated: this log entry reached its limit of {max_bytes} bytes \
         (EXECUTOR_LOG_ENTRY_MAX_BYTES); the step keeps running but further output is not recorded\n"
    )
}

impl LogEntryWriter {
    /// Creates the entry on the frontend (`addExecutionLogEntry`).
    ///
    /// # Errors
    /// When the frontend does not accept the entry even after retries.
    pub async fn open(
        sink: EntrySink,
        key: &str,
        command: &[String],
        start_time: Timestamp,
    ) -> Result<Self, crate::queue::client::QueueError> {
        let EntrySink {
            client,
            job,
            redactor,
            max_bytes,
            metrics,
        } = sink;
        let entry = ExecutionLogEntry {
            key: key.to_string(),
            command: redactor.redact_all(command),
            start_time,
            exit_code: None,
            out: String::new(),
            duration_ms: None,
        };
        let id = client.add_execution_log_entry(&job, &entry).await?;
        Ok(Self {
            client,
            job,
            redactor,
            entry,
            id,
            max_bytes,
            truncated: false,
            dirty: false,
            last_sent: Instant::now(),
            started: Instant::now(),
            metrics,
        })
    }

    /// Appends one output line (without its newline).
    pub fn push_line(&mut self, line: &str) {
        if self.truncated {
            return;
        }
        let notice = truncation_notice(self.max_bytes);
        for line in output_lines(&self.redactor, line) {
            if self.entry.out.len() + line.len() + notice.len() > self.max_bytes {
                self.entry.out.push_str(&notice);
                self.truncated = true;
                self.metrics.record(Event::LogEntryTruncated);
                break;
            }
            self.entry.out.push_str(&line);
        }
        self.dirty = true;
    }

    /// Sends the entry if it changed and the last update is at least [`UPDATE_INTERVAL`] old.
    /// A failed intermediate update is only logged: the next one carries the whole entry again.
    pub async fn flush_if_due(&mut self) {
        if !self.dirty || self.last_sent.elapsed() < UPDATE_INTERVAL {
            return;
        }
        match self
            .client
            .update_execution_log_entry(&self.job, self.id, &self.entry)
            .await
        {
            Ok(()) => {
                self.dirty = false;
                self.last_sent = Instant::now();
            }
            Err(error) => {
                tracing::warn!(key = %self.entry.key, %error, "log entry update failed; will resend")
            }
        }
    }

    /// Time until the next update may be sent, when there is something to send.
    pub fn next_flush_in(&self) -> Option<Duration> {
        self.dirty
            .then(|| UPDATE_INTERVAL.saturating_sub(self.last_sent.elapsed()))
    }

    /// Closes the entry with its exit code and duration (the final update, retried).
    ///
    /// # Errors
    /// When the final update cannot be delivered.
    pub async fn finish(mut self, exit_code: i32) -> Result<(), crate::queue::client::QueueError> {
        self.entry.exit_code = Some(exit_code);
        self.entry.duration_ms = Some(i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX));
        self.client
            .update_execution_log_entry(&self.job, self.id, &self.entry)
            .await
    }
}

/// The entry lines for one output line, redacted and prefixed. A viewer shows the parts of a line
/// as separate lines: progress output overwrites itself with a
/// lone `\r`, and every part must carry the `stdout: ` prefix. A final `\r` (of a `\r\n` ending)
/// only ends the line.
fn output_lines(redactor: &Redactor, line: &str) -> Vec<String> {
    // Redacted whole first, so a secret that spans a carriage return is still found.
    let redacted = redactor.redact(line);
    redacted
        .strip_suffix('\r')
        .unwrap_or(&redacted)
        .split('\r')
        .map(|segment| format!("stdout: {segment}\n"))
        .collect()
}

/// Sends a finished entry in one call (used for teardown entries, which have no live output).
///
/// # Errors
/// When the frontend does not accept the entry even after retries.
pub async fn send_complete_entry(
    client: &QueueClient,
    job: &JobHandle,
    key: &str,
    command: Vec<String>,
    out_lines: &[String],
    exit_code: i32,
    started: (Timestamp, Instant),
) -> Result<(), crate::queue::client::QueueError> {
    let out: String = out_lines.iter().map(|l| format!("stdout: {l}\n")).collect();
    let entry = ExecutionLogEntry {
        key: key.to_string(),
        command,
        start_time: started.0,
        exit_code: Some(exit_code),
        out,
        duration_ms: Some(i64::try_from(started.1.elapsed().as_millis()).unwrap_or(i64::MAX)),
    };
    client.add_execution_log_entry(job, &entry).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn redactor() -> Redactor {
        Redactor::new(
            "",
            &BTreeMap::from([("s3cr3t".to_string(), "[SECRET]".to_string())]),
        )
    }

    #[test]
    fn every_carriage_return_segment_is_its_own_prefixed_line() {
        assert_eq!(
            output_lines(&redactor(), "a\rb\rc"),
            ["stdout: a\n", "stdout: b\n", "stdout: c\n"]
        );
        assert_eq!(
            output_lines(
                &redactor(),
                "remote: Counting objects:  66% (2/3)\rremote: Counting objects: 100% (3/3), done."
            ),
            [
                "stdout: remote: Counting objects:  66% (2/3)\n",
                "stdout: remote: Counting objects: 100% (3/3), done.\n"
            ]
        );
    }

    #[test]
    fn a_carriage_return_before_the_newline_only_ends_the_line() {
        assert_eq!(output_lines(&redactor(), "done\r"), ["stdout: done\n"]);
        assert_eq!(output_lines(&redactor(), ""), ["stdout: \n"]);
        assert_eq!(output_lines(&redactor(), "\r"), ["stdout: \n"]);
    }

    #[test]
    fn each_segment_is_redacted() {
        assert_eq!(
            output_lines(&redactor(), "x s3cr3t\rs3cr3t y\rs3c"),
            ["stdout: x [SECRET]\n", "stdout: [SECRET] y\n", "stdout: s3c\n"]
        );
    }
}
