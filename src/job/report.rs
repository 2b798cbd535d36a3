//! The end of a job: its objects are deleted (with the teardown log entries) and the frontend is
//! told how it ended.

use std::time::Instant;

use jiff::Timestamp;
use tracing::{debug, error, info, warn};

use super::{JobRun, Outcome, registry::StopReason};
use crate::{
    config::duration::format_go_duration,
    events::Event,
    k8s::{failure::FailureKind, job_spec::JobObjects},
    log_entry,
    metrics::CommandOp,
    queue::{QueueError, client::MarkOutcome},
};

/// What the teardown's deletes did, for its log entry.
pub(super) struct Deletion {
    start: (Timestamp, Instant),
    /// What was deleted, or what could not be.
    result: Result<Vec<String>, Vec<String>>,
}

impl Deletion {
    /// Whether every delete went through, the Job's included.
    pub(super) fn succeeded(&self) -> bool {
        self.result.is_ok()
    }
}

impl JobRun {
    /// Deletes the job's objects, unless KUBERNETES_KEEP_JOBS; `None` when they are kept.
    pub(super) async fn delete_objects(&self, objects: &JobObjects, owned: bool) -> Option<Deletion> {
        if self.deps.config.kubernetes.keep_jobs {
            return None;
        }
        let start = (Timestamp::now(), Instant::now());
        let result = self.deps.objects.delete_all(objects, owned).await;
        self.deps
            .metrics
            .observe_command(CommandOp::JobDelete, start.1.elapsed(), result.is_ok());
        if let Err(failed) = &result {
            warn!(failures = ?failed, "teardown incomplete; ttlSecondsAfterFinished and the startup sweep will remove the rest");
        }
        let result =
            result.map_err(|failed| failed.iter().map(|f| format!("failed to delete {f}")).collect());
        Some(Deletion { start, result })
    }

    /// Records the teardown entries: the deletes (when there were any), then the workspace's.
    pub(super) async fn record_teardown(&self, deletion: Option<Deletion>) {
        if let Some(deletion) = deletion {
            self.record_deletion(deletion).await;
        }
        let start = (Timestamp::now(), Instant::now());
        let line = if self.deps.config.keep_workspaces {
            "Preserving workspace (EXECUTOR_KEEP_WORKSPACES): it lives in the job pod's volume"
        } else {
            "Removing workspace: it lives in the job pod's volume and goes with the pod"
        };
        let sent = log_entry::send_complete_entry(
            &self.deps.queue,
            &self.handle,
            log_entry::TEARDOWN_FS_KEY,
            Vec::new(),
            &[line.to_string()],
            0,
            start,
        )
        .await;
        if let Err(error) = sent {
            warn!(%error, "could not record the teardown.fs log entry");
        }
    }

    async fn record_deletion(&self, Deletion { start, result }: Deletion) {
        let (lines, exit_code) = match result {
            Ok(done) => (done, 0),
            Err(failed) => (failed, 1),
        };
        let command = ["kubectl", "delete", "job", &self.job_name, "--cascade=background"]
            .map(String::from)
            .to_vec();
        let sent = log_entry::send_complete_entry(
            &self.deps.queue,
            &self.handle,
            log_entry::TEARDOWN_JOB_KEY,
            command,
            &lines,
            exit_code,
            start,
        )
        .await;
        if let Err(error) = sent {
            warn!(%error, "could not record the teardown log entry");
        }
    }

    /// Tells the frontend how the job ended.
    pub(super) async fn report(&self, outcome: Outcome) {
        let Some(result) = self.send_mark(&outcome).await else {
            return;
        };
        match result {
            // The outcome's failure text is logged (redacted) only as the "job failed" line.
            Ok(MarkOutcome::Recorded) => debug!(outcome = outcome.label(), "reported"),
            Ok(MarkOutcome::NotOwned) => {
                warn!("the frontend no longer considers this job ours (404); result not recorded")
            }
            Err(error) => error!(%error, "could not report the job's result to the frontend"),
        }
    }

    /// Records the outcome's event and sends its mark; `None` when the job is not to be reported.
    async fn send_mark(&self, outcome: &Outcome) -> Option<Result<MarkOutcome, QueueError>> {
        let (metrics, queue, handle, job_name) =
            (&self.deps.metrics, &self.deps.queue, &self.handle, &self.job_name);
        let (reported_as, reason) = outcome.metric_labels();
        metrics.record_outcome(reported_as, reason);
        let result = match outcome {
            Outcome::Succeeded => {
                metrics.record(Event::JobSucceeded);
                queue.mark_complete(handle).await
            }
            Outcome::Failed { key, failure } => {
                // The reason can quote a step's termination message or a pod condition, which
                // may carry a secret: the log line and the mark both get the redacted text.
                let message = self.redactor.redact(&format!(
                    "running command {key:?}: job {job_name} failed: {}",
                    failure.reason
                ));
                info!(%message, "job failed");
                match failure.kind {
                    FailureKind::StepFailed => {
                        metrics.record(Event::JobStepFailed);
                        queue.mark_errored(handle, &message).await
                    }
                    FailureKind::Infrastructure => {
                        metrics.record(Event::JobInfrastructureFailed);
                        queue.mark_errored(handle, &message).await
                    }
                    FailureKind::Permanent => {
                        metrics.record(Event::JobPermanentlyFailed);
                        queue.mark_failed(handle, &message).await
                    }
                }
            }
            Outcome::Stopped(StopReason::Canceled) => {
                metrics.record(Event::JobCanceled);
                queue.mark_failed(handle, "job was canceled").await
            }
            Outcome::Stopped(StopReason::Abandoned) => {
                metrics.record(Event::JobAbandoned);
                info!("the frontend no longer knows this job; not reporting it");
                return None;
            }
            Outcome::Stopped(StopReason::Shutdown) => {
                metrics.record(Event::JobInterruptedByShutdown);
                let message = self.redactor.redact(&format!(
                    "job {job_name} was stopped because the executor shut down; it will be retried"
                ));
                queue.mark_errored(handle, &message).await
            }
            Outcome::TimedOut => {
                metrics.record(Event::JobTimedOut);
                let limit = format_go_duration(self.deps.config.maximum_runtime_per_job);
                let message = self.redactor.redact(&format!(
                    "job {job_name} failed: job exceeded maximum execution time of {limit}"
                ));
                queue.mark_errored(handle, &message).await
            }
        };
        Some(result)
    }
}
