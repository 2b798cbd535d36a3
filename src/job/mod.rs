//! One job's life: register → fetch files → create objects → supervise the pod and follow its
//! logs → teardown → report.
//!
//! ```text
//! run ─ JobRun::execute ─ fetch_files ─ build objects ─ create ─ supervise::Supervisor ─┐
//!                                                                follow::ContainerFollower (one per container)
//!     ─ logs read to the end ◄───────────────────────────────────────────────────────────┘
//!     ─ report::delete_objects, while the followers send their final entry updates
//!     ─ report::record_teardown ─ report::report
//! ```

mod follow;
pub mod registry;
mod report;
mod supervise;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::{
    context::Deps,
    events::Event,
    history::FinishedJob,
    k8s::{
        failure::{Cause, Failure, FailureKind},
        job_spec::{self, JobContext, JobObjects, WorkspaceFile},
        labels,
        objects::Created,
    },
    metrics::CommandOp,
    queue::{QueueError, RunKey, client::JobHandle, types::Job},
    redact::Redactor,
    slots::SlotPermit,
};
use registry::{RunningJob, StopReason};

/// How long a re-assigned job waits for its stale run here to wind down.
const REPLACE_STALE_RUN_LIMIT: Duration = Duration::from_secs(120);

/// How a job ended, before it is reported.
#[derive(Debug)]
enum Outcome {
    Succeeded,
    /// `key` is the execution log entry the failure belongs to.
    Failed {
        key: String,
        failure: Failure,
    },
    Stopped(StopReason),
    TimedOut,
}

impl Outcome {
    /// What kind of end this was, without its failure text (which may quote a secret).
    fn label(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed { .. } => "failed",
            Outcome::Stopped(StopReason::Canceled) => "canceled",
            Outcome::Stopped(StopReason::Abandoned) => "abandoned",
            Outcome::Stopped(StopReason::Shutdown) => "stopped by shutdown",
            Outcome::TimedOut => "timed out",
        }
    }

    /// How the outcome is reported to the frontend and why, as `kube_executor_job_outcomes_total`
    /// labels them: a fixed set of values, never the failure text.
    fn metric_labels(&self) -> (&'static str, &'static str) {
        match self {
            Outcome::Succeeded => ("completed", "succeeded"),
            Outcome::Failed { failure, .. } => match failure.kind {
                FailureKind::StepFailed | FailureKind::Infrastructure => ("errored", failure.cause.label()),
                FailureKind::Permanent => ("failed", failure.cause.label()),
            },
            Outcome::Stopped(StopReason::Canceled) => ("failed", "canceled"),
            Outcome::Stopped(StopReason::Abandoned) => ("not_reported", "abandoned"),
            Outcome::Stopped(StopReason::Shutdown) => ("errored", "shutdown"),
            Outcome::TimedOut => ("errored", "timed_out"),
        }
    }

    /// Whether someone else deleted the job's Job or pod before it finished.
    fn job_or_pod_deleted(&self) -> bool {
        matches!(self, Outcome::Failed { failure, .. } if failure.cause == Cause::Deleted)
    }

    /// A failure of the workspace setup, before any container ran.
    fn setup_failed(kind: FailureKind, reason: String) -> Self {
        Outcome::Failed {
            key: job_spec::SETUP_ENTRY_KEY.to_string(),
            failure: Failure {
                container: None,
                reason,
                kind,
                cause: Cause::Setup,
            },
        }
    }
}

/// One run of a dequeued job: what every stage needs, so no stage takes a long parameter list.
struct JobRun {
    deps: Deps,
    key: RunKey,
    /// Name of the Kubernetes Job (and prefix of its other objects).
    job_name: String,
    handle: JobHandle,
    redactor: Redactor,
    /// Cancelled when the job must stop early (cancel, abandon, shutdown).
    stop: CancellationToken,
    running: Arc<RunningJob>,
}

/// Runs one dequeued job to the end and reports it. Never panics on runtime errors; every failure
/// becomes a report to the frontend (or a log line when the frontend cannot be told).
pub async fn run(deps: Deps, key: RunKey, job: Job, mut permit: SlotPermit, stop: CancellationToken) {
    let job_name = labels::job_name(&key.queue, key.id);
    let span = info_span!("job", job_id = key.id, queue = %key.queue, k8s_job = %job_name);
    async move {
        if deps.registry.get(&key).is_some() {
            warn!("the frontend re-assigned a job still running here; stopping the stale run first");
        }
        let Some(running) = deps
            .registry
            .insert_replacing(&key, stop.clone(), REPLACE_STALE_RUN_LIMIT)
            .await
        else {
            error!(
                "the stale run of this job did not stop in time; leaving the job to the frontend's resetter"
            );
            return;
        };
        permit.assign(&job_name);
        let redactor = Redactor::new(
            deps.config.frontend_password.expose(),
            job.redacted_values.expose(),
        )
        .with_job_token(job.token.expose());
        let run = JobRun {
            handle: JobHandle::new(&key, job.token.clone()),
            deps,
            key,
            job_name,
            redactor,
            stop,
            running,
        };
        run.run_to_end(&job).await;
        drop(permit);
    }
    .instrument(span)
    .await;
}

impl JobRun {
    async fn run_to_end(&self, job: &Job) {
        self.deps.metrics.handler_started();
        let started = Instant::now();
        info!("job started");
        if self.deps.config.job_audit_logging {
            warn!(
                repository = %job.repository_name,
                commit = %job.commit,
                steps = job.docker_steps.len(),
                files = job.files.len(),
                "job received (audit)"
            );
        }
        let outcome = self.execute(job, started).await;
        let errored = !matches!(outcome, Outcome::Succeeded);
        let finished = self.finished_job(&outcome, started.elapsed());
        self.report(outcome).await;
        self.deps.history.record(finished);
        self.deps.registry.remove(&self.key);
        self.deps.metrics.handler_finished(started.elapsed(), errored);
        info!(elapsed_ms = started.elapsed().as_millis() as u64, "job finished");
    }

    /// What the status page keeps of this run; the failure text is redacted like the mark's.
    fn finished_job(&self, outcome: &Outcome, duration: Duration) -> FinishedJob {
        let (reported_as, reason) = outcome.metric_labels();
        FinishedJob {
            key: self.key.clone(),
            job_name: self.job_name.clone(),
            reported_as,
            reason,
            message: match outcome {
                Outcome::Failed { key, failure } => {
                    Some(self.redactor.redact(&format!("{key}: {}", failure.reason)))
                }
                _ => None,
            },
            finished_at: jiff::Timestamp::now(),
            duration,
        }
    }

    /// Creates the job's objects, supervises the pod to its end and tears the objects down.
    async fn execute(&self, job: &Job, dequeued_at: Instant) -> Outcome {
        let files = match self.fetch_files(job).await {
            Ok(files) => files,
            Err(outcome) => return outcome,
        };
        let cfg = &self.deps.config;
        let ctx = JobContext {
            job,
            queue: &self.key.queue,
            executor_name: &self.deps.executor_name,
            instance_id: &cfg.instance_id,
            frontend_url: &cfg.frontend_url,
            files: &files,
        };
        let objects = match job_spec::build_job_objects(&ctx, &cfg.kubernetes) {
            Ok(objects) => objects,
            Err(error) => return Outcome::setup_failed(FailureKind::Permanent, error.to_string()),
        };
        let created_at = Instant::now();
        match self.create_objects(&objects, dequeued_at, created_at).await {
            Ok(created) => self.supervise_and_tear_down(&objects, created, created_at).await,
            Err(outcome) => outcome,
        }
    }

    /// Creates the job's objects, begun at `started`, counting the time from the dequeue.
    async fn create_objects(
        &self,
        objects: &JobObjects,
        dequeued_at: Instant,
        started: Instant,
    ) -> Result<Created, Outcome> {
        let created = self.deps.objects.create(objects).await;
        self.deps
            .metrics
            .observe_command(CommandOp::JobCreate, started.elapsed(), created.is_ok());
        match created {
            Ok(created) => {
                self.deps
                    .metrics
                    .observe_dequeue_to_job_created(dequeued_at.elapsed());
                self.running.set_created(created.job.clone());
                self.deps.metrics.record(Event::JobCreated);
                info!(
                    replaced_leftovers = created.replaced_leftovers,
                    "Kubernetes Job created"
                );
                Ok(created)
            }
            Err(error) => {
                let kind = if error.is_permanent() {
                    FailureKind::Permanent
                } else {
                    FailureKind::Infrastructure
                };
                Err(Outcome::setup_failed(kind, error.to_string()))
            }
        }
    }

    /// Follows the created Job to its end, reads its logs, deletes its objects and judges it.
    async fn supervise_and_tear_down(
        &self,
        objects: &JobObjects,
        created: Created,
        created_at: Instant,
    ) -> Outcome {
        let job_ref = created.job.clone();
        let mut supervisor = supervise::Supervisor::new(self, &objects.steps, created.job, created_at);
        let outcome = supervisor.watch_to_end().await;
        let pod_finished = matches!(outcome, Outcome::Succeeded | Outcome::Failed { .. });
        supervisor.wait_logs_read(pod_finished).await;
        // A Job deleted by someone else may have gone with --cascade=orphan, which strips the
        // owner reference from its Secrets and PVC (and its pods): those are then ours to delete.
        let deleted_by_us = !outcome.job_or_pod_deleted();
        let owned = created.owned && deleted_by_us;
        // Taken before the delete: a pod that shows up later (recreated from a stale cache) is
        // not the collector's for sure, so it keeps the short stray grace.
        let pods = self.deps.view.pods_of(&job_ref);
        // Every log has been read, so the Job can go while the final entry updates are sent.
        let (deletion, unreadable) =
            tokio::join!(self.delete_objects(objects, owned), supervisor.followers_done());
        if deleted_by_us && deletion.as_ref().is_some_and(report::Deletion::succeeded) {
            self.deps
                .handed_over
                .hand_over(&pods, tokio::time::Instant::now());
        }
        self.record_teardown(deletion).await;
        supervisor.judge_output(outcome, unreadable)
    }

    /// Fetches the workspace files stored on the frontend, with the job token, so the pod never
    /// needs them; inline files are taken as they are.
    /// The workspace files with their content, downloading the ones the payload only references.
    ///
    /// Every file ends up in the job Secret, so each download may only take what is left of the
    /// Secret's limit after the token and the inline files: an oversized file fails the job
    /// (permanently) before most of it is read.
    async fn fetch_files(&self, job: &Job) -> Result<Vec<WorkspaceFile>, Outcome> {
        let inline: usize = job
            .files
            .values()
            .filter_map(|file| file.content.as_ref())
            .map(Vec::len)
            .sum();
        let mut budget = job_spec::MAX_SECRET_BYTES.saturating_sub(job.token.expose().len() + inline);
        let mut files = Vec::with_capacity(job.files.len());
        for (path, file) in &job.files {
            let content = match (&file.content, &file.bucket, &file.key) {
                (Some(content), _, _) => content.clone(),
                (None, Some(bucket), Some(key)) => {
                    let content = self
                        .deps
                        .queue
                        .get_file(&self.handle, bucket, key, budget)
                        .await
                        .map_err(|error| download_failed(path, &error))?;
                    budget -= content.len();
                    content
                }
                _ => {
                    return Err(Outcome::setup_failed(
                        FailureKind::Permanent,
                        format!("workspace file {path:?} has neither content nor a bucket and key"),
                    ));
                }
            };
            files.push(WorkspaceFile {
                path: path.clone(),
                content,
                modified_at: file.modified_at,
            });
        }
        Ok(files)
    }
}

fn download_failed(path: &str, error: &QueueError) -> Outcome {
    match error {
        QueueError::TooLarge { .. } => Outcome::setup_failed(
            FailureKind::Permanent,
            format!(
                "workspace file {path:?} does not fit the job Secret ({} bytes at most, with the \
                 token and the other files): {error}",
                job_spec::MAX_SECRET_BYTES
            ),
        ),
        _ => Outcome::setup_failed(
            FailureKind::Infrastructure,
            format!("could not fetch workspace file {path:?} from the frontend: {error}"),
        ),
    }
}
