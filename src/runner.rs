//! The executor's loops: startup ping, heartbeats, and the dequeue loop with graceful shutdown.
//!
//! ```text
//! slot → dequeue → spawn job task ─┐      heartbeat every 5 s: running IDs → cancelIds / knownIds
//!   ▲                              │
//!   └──── slot freed when the job's Job is gone ◄─ shared Job watch
//! ```

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use crate::{
    config::{Config, QueueSelection},
    context::Deps,
    events::Event,
    job::{
        self,
        registry::{Registry, StopReason},
    },
    queue::{
        RunKey,
        types::{
            DequeueRequest, HeartbeatRequestMulti, HeartbeatRequestV1, HeartbeatResponse, Job, QueueJobIds,
            Telemetry,
        },
    },
    slots::{SlotPermit, Slots},
    telemetry::SystemInfo,
};

/// Heartbeat period; must stay well under the frontend's 25 s stalled-job limit.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// A job missing from `knownIds` this many heartbeats in a row is abandoned.
const ABANDON_AFTER_MISSING: u32 = 2;

/// Signals from outside: `drain` stops dequeuing and lets jobs finish; `force` stops them.
#[derive(Clone, Default)]
pub struct Shutdown {
    pub drain: CancellationToken,
    pub force: CancellationToken,
}

/// How long the frontend may go without answering a heartbeat before `/readyz` fails: two missed
/// heartbeats, so one slow answer does not flap readiness.
pub const FRONTEND_SILENCE_LIMIT: Duration = Duration::from_secs(2 * HEARTBEAT_INTERVAL.as_secs() + 1);

/// When the frontend last answered; read by `/readyz`.
#[derive(Clone, Default)]
pub struct FrontendStatus {
    last_answer: std::sync::Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

impl FrontendStatus {
    /// Whether the frontend has ever answered.
    pub fn answered(&self) -> bool {
        self.last_answer().is_some()
    }

    /// Whether the frontend answered within [`FRONTEND_SILENCE_LIMIT`]: while it fails or hangs,
    /// no job can be dequeued or reported, so the executor is not ready.
    pub fn answering(&self) -> bool {
        self.last_answer()
            .is_some_and(|at| at.elapsed() < FRONTEND_SILENCE_LIMIT)
    }

    fn last_answer(&self) -> Option<tokio::time::Instant> {
        // A poisoned lock still holds a valid instant: the writer only assigns it.
        *self
            .last_answer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self) {
        *self
            .last_answer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tokio::time::Instant::now());
    }
}

/// The Prometheus `queue` label: the queue, or the sorted queues joined with `_`.
pub fn queue_label(queues: &QueueSelection) -> String {
    match queues {
        QueueSelection::Single(q) => q.clone(),
        QueueSelection::Multi(qs) => {
            let mut qs = qs.clone();
            qs.sort();
            qs.join("_")
        }
    }
}

/// Sends heartbeats (with only the executor name) every second until the frontend answers.
/// The first heartbeat also registers the name the frontend checks on job routes.
///
/// # Errors
/// Returns `Err(())` if `stop` is cancelled first.
pub async fn ping_until_answered(
    deps: &Deps,
    system: &SystemInfo,
    frontend: &FrontendStatus,
    stop: &CancellationToken,
) -> Result<(), ()> {
    let started = Instant::now();
    loop {
        match send_heartbeat(deps, system, &[], false).await {
            Ok(_) => {
                frontend.set();
                info!(executor = %deps.executor_name, "frontend answered");
                return Ok(());
            }
            Err(error) => {
                // Starting executors commonly race the frontend's own start: stay quiet at first.
                if started.elapsed() > Duration::from_secs(60) || !error.is_transient() {
                    warn!(%error, "frontend not reachable yet; retrying");
                } else {
                    debug!(%error, "frontend not reachable yet; retrying");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Err(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn send_heartbeat(
    deps: &Deps,
    system: &SystemInfo,
    running: &[RunKey],
    with_metrics: bool,
) -> Result<HeartbeatResponse, crate::queue::client::QueueError> {
    let cfg = &deps.config;
    let telemetry = Telemetry {
        os: system.os.clone(),
        architecture: system.architecture.clone(),
        docker_version: String::new(),
        executor_version: cfg.reported_version.clone(),
        git_version: system.git_version.clone(),
        ignite_version: String::new(),
        src_cli_version: String::new(),
        prometheus_metrics: if with_metrics {
            system.metrics_text(deps)
        } else {
            String::new()
        },
    };
    match &cfg.queues {
        QueueSelection::Single(queue) => {
            let ids: Vec<i64> = running.iter().map(|key| key.id).collect();
            let req = HeartbeatRequestV1 {
                version: "V2".to_string(),
                executor_name: deps.executor_name.clone(),
                job_ids: (!ids.is_empty()).then_some(ids),
                telemetry,
            };
            deps.queue.heartbeat_single(queue, &req).await
        }
        QueueSelection::Multi(queues) => {
            let req = HeartbeatRequestMulti {
                version: String::new(),
                executor_name: deps.executor_name.clone(),
                queue_names: queues.clone(),
                job_ids_by_queue: ids_by_queue(running),
                telemetry,
            };
            deps.queue.heartbeat_multi(&req).await
        }
    }
}

/// Running jobs grouped by queue, queues sorted by name, as the multi-queue heartbeat sends them.
fn ids_by_queue(running: &[RunKey]) -> Vec<QueueJobIds> {
    let mut by_queue: Vec<QueueJobIds> = Vec::new();
    for key in running {
        match by_queue.iter_mut().find(|q| q.queue_name == key.queue) {
            Some(q) => q.job_ids.push(key.id.to_string()),
            None => by_queue.push(QueueJobIds {
                queue_name: key.queue.clone(),
                job_ids: vec![key.id.to_string()],
            }),
        }
    }
    by_queue.sort_by(|a, b| a.queue_name.cmp(&b.queue_name));
    by_queue
}

/// Heartbeats every [`HEARTBEAT_INTERVAL`] until `stop`; applies `cancelIds` and `knownIds`.
pub async fn heartbeat_loop(
    deps: Deps,
    system: SystemInfo,
    frontend: FrontendStatus,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let running: Vec<RunKey> = deps.registry.all().into_iter().map(|(key, _)| key).collect();
        match send_heartbeat(&deps, &system, &running, true).await {
            Ok(response) => {
                frontend.set();
                apply_heartbeat_response(&deps, &running, &response);
            }
            Err(error) => {
                deps.metrics.record(Event::FrontendError);
                warn!(%error, "heartbeat failed; retrying on the next tick");
            }
        }
    }
}

fn apply_heartbeat_response(deps: &Deps, sent: &[RunKey], response: &HeartbeatResponse) {
    let cancel: HashSet<&str> = response.cancel_ids.iter().map(String::as_str).collect();
    let known: HashSet<&str> = response.known_ids.iter().map(String::as_str).collect();
    for key in sent {
        let Some(job) = deps.registry.get(key) else {
            continue;
        };
        let id = key.to_string();
        if cancel.contains(id.as_str()) {
            info!(job_id = key.id, queue = %key.queue, "the frontend canceled the job");
            job.stop(StopReason::Canceled);
        }
        if job.note_known(known.contains(id.as_str())) >= ABANDON_AFTER_MISSING {
            warn!(
                job_id = key.id,
                queue = %key.queue,
                "the frontend no longer knows this job (reset or reassigned); stopping it"
            );
            job.stop(StopReason::Abandoned);
        }
    }
}

/// The key of a dequeued job: its queue is the one the frontend named (multi-queue), else the
/// executor's only queue. The one place a job's queue is resolved.
///
/// # Errors
/// In multi-queue mode, a job from a queue this executor was not configured for: the message
/// to mark it failed with (its key is then only good for that).
fn run_key(queues: &QueueSelection, job: &Job) -> Result<RunKey, (RunKey, String)> {
    match queues {
        QueueSelection::Single(queue) if job.queue.is_empty() => Ok(RunKey::single(job.id, queue)),
        QueueSelection::Single(_) => Ok(RunKey::single(job.id, &job.queue)),
        // A multi-queue frontend always names the queue; an older one falls back to the first.
        QueueSelection::Multi(queues) if job.queue.is_empty() => {
            Ok(RunKey::multi(job.id, queues.first().map_or("", String::as_str)))
        }
        QueueSelection::Multi(queues) if queues.contains(&job.queue) => Ok(RunKey::multi(job.id, &job.queue)),
        // The executor's resources and RBAC were sized for its queues only.
        QueueSelection::Multi(queues) => Err((
            RunKey::multi(job.id, &job.queue),
            format!(
                "the job came from queue {:?}, which is not one of this executor's queues \
                 (EXECUTOR_QUEUE_NAMES={})",
                job.queue,
                queues.join(",")
            ),
        )),
    }
}

/// Marks a dequeued job failed without running it.
async fn fail_unrun(deps: &Deps, job: &crate::queue::client::JobHandle, message: &str) {
    deps.metrics.record(Event::JobPermanentlyFailed);
    warn!(job_id = job.id, queue = %job.queue, message, "not running the dequeued job; marking it failed");
    if let Err(error) = deps.queue.mark_failed(job, message).await {
        warn!(job_id = job.id, queue = %job.queue, %error, "could not mark the job failed");
    }
}

/// The dequeue loop: take a slot, dequeue, start the job; stops on `drain`, on
/// EXECUTOR_NUM_TOTAL_JOBS or on EXECUTOR_MAX_ACTIVE_TIME.
pub async fn dequeue_loop(deps: Deps, slots: std::sync::Arc<Slots>, jobs: TaskTracker, shutdown: Shutdown) {
    let cfg: &Config = &deps.config;
    let started = Instant::now();
    let mut dequeued: u64 = 0;
    let mut consecutive_errors: u32 = 0;
    let (route_queue, queues) = match &cfg.queues {
        QueueSelection::Single(q) => (Some(q.clone()), Vec::new()),
        QueueSelection::Multi(qs) => (None, qs.clone()),
    };
    let request = DequeueRequest {
        queues,
        executor_name: deps.executor_name.clone(),
        version: cfg.reported_version.clone(),
        num_cpus: cfg.job_num_cpus,
        memory: cfg.job_memory.clone(),
        disk_space: cfg.job_disk_space.clone(),
    };
    loop {
        if cfg.num_total_jobs.is_some_and(|n| dequeued >= n) {
            info!(dequeued, "EXECUTOR_NUM_TOTAL_JOBS reached; no more dequeues");
            break;
        }
        if cfg.max_active_time.is_some_and(|t| started.elapsed() >= t) {
            info!("EXECUTOR_MAX_ACTIVE_TIME reached; no more dequeues");
            break;
        }
        let Some(permit) = room_for_a_job(&deps, &slots, &shutdown).await else {
            break;
        };
        let result = tokio::select! {
            _ = shutdown.drain.cancelled() => break,
            result = deps.queue.dequeue(route_queue.as_deref(), &request) => result,
        };
        match result {
            Ok(Some(job)) => {
                consecutive_errors = 0;
                dequeued += 1;
                deps.metrics.record(Event::JobDequeued);
                match run_key(&cfg.queues, &job) {
                    Ok(key) => {
                        // The key's queue: single-queue dequeues do not name it in the job.
                        info!(job_id = key.id, queue = %key.queue, "dequeued a job");
                        let stop = shutdown.force.child_token();
                        jobs.spawn(job::run(deps.clone(), key, job, permit, stop));
                    }
                    Err((key, message)) => {
                        drop(permit);
                        let handle = crate::queue::client::JobHandle::new(&key, job.token.clone());
                        fail_unrun(&deps, &handle, &message).await;
                    }
                }
            }
            Ok(None) => {
                consecutive_errors = 0;
                drop(permit);
                tokio::select! {
                    _ = shutdown.drain.cancelled() => break,
                    _ = tokio::time::sleep(cfg.poll_interval) => {}
                }
            }
            Err(crate::queue::client::QueueError::UnreadableJob { job, reason }) => {
                drop(permit);
                dequeued += 1;
                mark_unreadable(&deps, &job, &reason).await;
            }
            Err(error) => {
                drop(permit);
                deps.metrics.record(Event::FrontendError);
                consecutive_errors = consecutive_errors.saturating_add(1);
                let delay = error_backoff(cfg.poll_interval, consecutive_errors);
                warn!(%error, retry_in_ms = delay.as_millis() as u64, "dequeue failed");
                tokio::select! {
                    _ = shutdown.drain.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Waits for a free slot, then for the Kubernetes client to have room for a new job's creates;
/// `None` once draining.
async fn room_for_a_job(
    deps: &Deps,
    slots: &std::sync::Arc<Slots>,
    shutdown: &Shutdown,
) -> Option<SlotPermit> {
    let permit = tokio::select! {
        _ = shutdown.drain.cancelled() => return None,
        permit = slots.acquire() => permit,
    };
    // A job dequeued while the client's requests queue for tokens would wait there, and its
    // creates would hold the running jobs' log streams and deletes back; left in the queue, it can
    // go to another replica meanwhile.
    let paced = Instant::now();
    tokio::select! {
        _ = shutdown.drain.cancelled() => return None,
        () = deps.kube_headroom.wait_for_new_job_room() => {}
    }
    deps.metrics.record_dequeue_paced(paced.elapsed());
    Some(permit)
}

/// Marks failed a dequeued job whose payload cannot be read: it is ours on the frontend now.
async fn mark_unreadable(deps: &Deps, job: &crate::queue::client::JobHandle, reason: &str) {
    // The reason quotes no payload value (see `payload_error_reason`); the secrets known here
    // (the password, the job's token) are redacted as for any job.
    let redactor = crate::redact::Redactor::new(deps.config.frontend_password.expose(), &Default::default())
        .with_job_token(job.token.expose());
    let reason = redactor.redact(reason);
    let message = format!("the executor could not read the job payload: {reason}");
    fail_unrun(deps, job, &message).await;
}

/// Capped exponential backoff with jitter for consecutive frontend errors.
fn error_backoff(base: Duration, consecutive: u32) -> Duration {
    crate::retry::dequeue_errors(base).delay_after(consecutive)
}

/// How long stopped jobs get to tear down and report after the force, whatever is unreachable.
/// What they could not delete is left to `ttlSecondsAfterFinished`, the ownerReferences and the
/// next start's sweep; what they could not report, the frontend's resetter re-queues.
pub const FORCED_STOP_LIMIT: Duration = Duration::from_secs(10);

/// Waits for running jobs after a drain: up to the grace period, then stops them (force) and
/// gives them [`FORCED_STOP_LIMIT`] to wind down.
pub async fn drain_jobs(jobs: &TaskTracker, shutdown: &Shutdown, grace: Duration, registry: &Registry) {
    jobs.close();
    if !registry.is_empty() {
        info!(
            running = registry.len(),
            grace_s = grace.as_secs(),
            "waiting for running jobs to finish"
        );
    }
    tokio::select! {
        _ = jobs.wait() => return,
        _ = shutdown.force.cancelled() => info!("second signal: stopping running jobs now"),
        _ = tokio::time::sleep(grace) => info!("shutdown grace period over: stopping running jobs"),
    }
    for (_, job) in registry.all() {
        job.stop(StopReason::Shutdown);
    }
    shutdown.force.cancel();
    if tokio::time::timeout(FORCED_STOP_LIMIT, jobs.wait())
        .await
        .is_err()
    {
        warn!(
            left = registry.len(),
            limit_s = FORCED_STOP_LIMIT.as_secs(),
            "stopped jobs did not wind down in time (the API server or the frontend may be \
             unreachable); exiting anyway: their objects go with their TTL, ownerReferences and the \
             next start's sweep"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_frontend_counts_as_answering_until_two_heartbeats_go_unanswered() {
        let frontend = FrontendStatus::default();
        assert!(!frontend.answered() && !frontend.answering(), "never answered");
        frontend.set();
        tokio::time::advance(HEARTBEAT_INTERVAL * 2).await;
        assert!(
            frontend.answering(),
            "one missed heartbeat and a slow one are tolerated"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            frontend.answered() && !frontend.answering(),
            "silent for two heartbeats and more"
        );
        frontend.set();
        assert!(frontend.answering(), "answering again");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let a = error_backoff(Duration::from_secs(1), 1);
        let b = error_backoff(Duration::from_secs(1), 3);
        let c = error_backoff(Duration::from_secs(1), 30);
        assert!(a >= Duration::from_secs(1) && a <= Duration::from_secs(2));
        assert!(b >= Duration::from_secs(4));
        assert!(c >= Duration::from_secs(15) && c <= Duration::from_secs(30));
    }

    fn dequeued(id: i64, queue: &str) -> Job {
        serde_json::from_value(serde_json::json!({"id": id, "queue": queue})).expect("minimal job")
    }

    #[test]
    fn the_queue_is_resolved_once_into_the_run_key() {
        let single = QueueSelection::Single("batches".into());
        let multi = QueueSelection::Multi(vec!["codeintel".into(), "batches".into()]);
        assert_eq!(
            run_key(&single, &dequeued(7, "")),
            Ok(RunKey::single(7, "batches"))
        );
        assert_eq!(
            run_key(&multi, &dequeued(7, "batches")).map(|key| key.to_string()),
            Ok("7-batches".to_string())
        );
        assert_eq!(
            run_key(&multi, &dequeued(7, "")),
            Ok(RunKey::multi(7, "codeintel"))
        );
    }

    #[test]
    fn a_job_from_an_unconfigured_queue_is_refused_with_the_queues() {
        let multi = QueueSelection::Multi(vec!["codeintel".into(), "batches".into()]);
        let (key, message) =
            run_key(&multi, &dequeued(7, "other")).expect_err("not one of the executor's queues");
        assert_eq!(
            key,
            RunKey::multi(7, "other"),
            "marked failed on the queue it came from"
        );
        assert!(message.contains("queue \"other\""), "{message}");
        assert!(
            message.contains("EXECUTOR_QUEUE_NAMES=codeintel,batches"),
            "{message}"
        );
    }

    #[test]
    fn multi_queue_heartbeat_groups_ids_by_sorted_queue() {
        let running = [
            RunKey::multi(3, "codeintel"),
            RunKey::multi(1, "batches"),
            RunKey::multi(3, "batches"),
        ];
        let grouped: Vec<(String, Vec<String>)> = ids_by_queue(&running)
            .into_iter()
            .map(|q| (q.queue_name, q.job_ids))
            .collect();
        assert_eq!(
            grouped,
            [
                ("batches".to_string(), vec!["1".to_string(), "3".to_string()]),
                ("codeintel".to_string(), vec!["3".to_string()]),
            ]
        );
    }

    #[test]
    fn multi_queue_label_is_sorted() {
        let q = QueueSelection::Multi(vec!["codeintel".into(), "batches".into()]);
        assert_eq!(queue_label(&q), "batches_codeintel");
    }
}
