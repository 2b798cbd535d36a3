//! Watches a job's pod through the shared watch until it ends, starting a log follower for each
//! container as it starts, then waits for the followers to read their logs and close their entries.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use tokio::{sync::oneshot, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, warn};

use super::{
    JobRun, Outcome,
    follow::{ContainerFollower, EntryOrder, EntrySpec, UnreadableLog},
    registry::StopReason,
};
use crate::{
    events::Event,
    k8s::{
        failure::{self, Cause, Failure, FailureKind, Timeouts, Tracker, Verdict},
        job_spec::{self, StepSpec},
        pod_events::StuckPodJudge,
        watch::CreatedJob,
    },
    metrics::CommandOp,
};

/// How long followers of a finished pod get to read its logs to the end.
const FINISHED_DRAIN: Duration = Duration::from_secs(30);
/// How long followers of a stopped job get; its pod is being deleted, which ends the streams.
const STOPPED_DRAIN: Duration = Duration::from_secs(5);
/// Re-evaluation period when no timer is pending (a watch change wakes the loop sooner).
const IDLE_RECHECK: Duration = Duration::from_secs(3600);

/// The supervision of one job pod.
pub(super) struct Supervisor<'a> {
    run: &'a JobRun,
    /// Setup, steps, main: the pod's containers in order, with their entry keys.
    steps: &'a [StepSpec],
    job: CreatedJob,
    judge: StuckPodJudge,
    followers: JoinSet<Option<UnreadableLog>>,
    /// One per follower: fires (or is dropped) once its container's log has been read to the end.
    logs_read: Vec<oneshot::Receiver<()>>,
    following: HashSet<String>,
    restarts: HashMap<String, i32>,
    entry_order: EntryOrder,
    stop_followers: CancellationToken,
    created_at: Instant,
}

impl<'a> Supervisor<'a> {
    pub(super) fn new(run: &'a JobRun, steps: &'a [StepSpec], job: CreatedJob, created_at: Instant) -> Self {
        Self {
            run,
            steps,
            job,
            judge: StuckPodJudge::new(
                Tracker::new(created_at),
                kube::Api::namespaced(
                    run.deps.pods.clone().into_client(),
                    &run.deps.config.kubernetes.namespace,
                ),
            ),
            followers: JoinSet::new(),
            logs_read: Vec::new(),
            following: HashSet::new(),
            restarts: HashMap::new(),
            entry_order: EntryOrder::default(),
            stop_followers: CancellationToken::new(),
            created_at,
        }
    }

    /// Watches the pod to its end (or the job's stop) and returns how it ended.
    pub(super) async fn watch_to_end(&mut self) -> Outcome {
        let started = Instant::now();
        let outcome = self.watch_until_done().await;
        let succeeded = matches!(outcome, Outcome::Succeeded);
        self.run
            .deps
            .metrics
            .observe_command(CommandOp::PodWait, started.elapsed(), succeeded);
        outcome
    }

    /// A job whose output could not be read did not really succeed: batch changes read their
    /// results from the logs, so it is reported rather than completed with missing output.
    pub(super) fn judge_output(&self, outcome: Outcome, unreadable: Option<UnreadableLog>) -> Outcome {
        match (outcome, unreadable) {
            (Outcome::Succeeded, Some(log)) => Outcome::Failed {
                key: self.entry_key(&log.container),
                failure: Failure {
                    reason: log.reason(),
                    container: Some(log.container),
                    kind: FailureKind::Infrastructure,
                    cause: Cause::LogUnreadable,
                },
            },
            (outcome, _) => outcome,
        }
    }

    async fn watch_until_done(&mut self) -> Outcome {
        let deps = &self.run.deps;
        let cfg = &deps.config;
        let timeouts = Timeouts {
            pending: cfg.kubernetes.pending_timeout,
            unschedulable: cfg.kubernetes.unschedulable_timeout,
            image_pull: cfg.kubernetes.image_pull_timeout,
            pod_creation: cfg.kubernetes.pod_creation_timeout,
        };
        let deadline = tokio::time::Instant::now() + cfg.maximum_runtime_per_job;
        let mut changes = deps.view.subscribe();
        loop {
            // Mark the current change as seen before reading the stores, so no change is missed.
            changes.borrow_and_update();
            let k8s_job = deps.view.job(&self.job);
            let pod = deps.view.pod_of(&self.job);
            if let Some(pod) = &pod {
                self.observe(pod);
            }
            let verdict = self
                .judge
                .evaluate(Instant::now(), &timeouts, k8s_job.as_deref(), pod.as_deref())
                .await;
            let recheck = match verdict {
                Verdict::Succeeded => return Outcome::Succeeded,
                Verdict::Failed(failure) => {
                    let key = match &failure.container {
                        Some(container) => self.entry_key(container),
                        None => self.first_unfinished_key(pod.as_deref()),
                    };
                    return Outcome::Failed { key, failure };
                }
                Verdict::Waiting { recheck_in } => recheck_in.unwrap_or(IDLE_RECHECK),
                // The judge reads the Events itself.
                Verdict::ReadPodEvents => Duration::ZERO,
            };
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(recheck) => {}
                _ = self.run.stop.cancelled() => {
                    return Outcome::Stopped(self.run.running.reason().unwrap_or(StopReason::Shutdown));
                }
                _ = tokio::time::sleep_until(deadline) => return Outcome::TimedOut,
            }
        }
    }

    /// Counts container restarts and starts a follower for each newly started container.
    fn observe(&mut self, pod: &Pod) {
        for cs in failure::container_statuses(pod) {
            let previous = self
                .restarts
                .insert(cs.name.clone(), cs.restart_count)
                .unwrap_or(0);
            for _ in previous..cs.restart_count {
                self.run.deps.metrics.record(Event::PodRestart);
            }
        }
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let was_running = !self.following.is_empty();
        for cs in started_in_pod_order(self.steps, pod) {
            if !self.following.insert(cs.name.clone()) {
                continue;
            }
            let (key, command) = job_spec::entry_for_container(self.steps, &cs.name);
            let (log_read, read) = oneshot::channel();
            self.logs_read.push(read);
            let follower = ContainerFollower {
                deps: self.run.deps.clone(),
                handle: self.run.handle.clone(),
                redactor: self.run.redactor.clone(),
                job: self.job.clone(),
                pod: pod_name.clone(),
                container: cs.name.clone(),
                entry: EntrySpec {
                    key: key.into_owned(),
                    command: command.to_vec(),
                    start_time: started_at(cs),
                },
                turn: self.entry_order.next_turn(),
                log_read: Some(log_read),
                stop: self.stop_followers.clone(),
            };
            self.followers.spawn(follower.run().in_current_span());
        }
        if !was_running && !self.following.is_empty() {
            self.run
                .deps
                .metrics
                .observe_pending_before_running(self.created_at.elapsed());
        }
    }

    /// Waits until every follower has read its container's log to the end: from then on the pod
    /// may go. Followers that take too long are stopped.
    pub(super) async fn wait_logs_read(&mut self, pod_finished: bool) {
        // A finished pod's containers have all terminated, so its logs end by themselves. A
        // stopped job's streams are stopped here.
        if !pod_finished {
            self.stop_followers.cancel();
        }
        let deadline = tokio::time::sleep(if pod_finished {
            FINISHED_DRAIN
        } else {
            STOPPED_DRAIN
        });
        tokio::pin!(deadline);
        let all_read = futures_util::future::join_all(self.logs_read.drain(..));
        tokio::pin!(all_read);
        loop {
            tokio::select! {
                // A follower that ended early dropped its sender, which counts as read.
                _ = &mut all_read => return,
                _ = &mut deadline, if !self.stop_followers.is_cancelled() => {
                    warn!("log followers did not finish in time; closing their entries");
                    self.stop_followers.cancel();
                }
            }
        }
    }

    /// Waits for the followers' final entry updates; returns the first log that could not be
    /// read or recorded.
    pub(super) async fn followers_done(&mut self) -> Option<UnreadableLog> {
        let mut unreadable = None;
        while let Some(done) = self.followers.join_next().await {
            if let Ok(Some(log)) = done {
                unreadable.get_or_insert(log);
            }
        }
        unreadable
    }

    /// The entry key of a container of this pod.
    fn entry_key(&self, container: &str) -> String {
        job_spec::entry_for_container(self.steps, container)
            .0
            .into_owned()
    }

    /// The key of the first container that has not completed: what could not run.
    fn first_unfinished_key(&self, pod: Option<&Pod>) -> String {
        let completed: HashSet<&str> = pod
            .map(|p| {
                failure::container_statuses(p)
                    .filter(|cs| {
                        cs.state
                            .as_ref()
                            .and_then(|s| s.terminated.as_ref())
                            .is_some_and(|t| t.exit_code == 0)
                    })
                    .map(|cs| cs.name.as_str())
                    .collect()
            })
            .unwrap_or_default();
        self.steps
            .iter()
            .find(|s| !completed.contains(s.container_name.as_str()))
            .or(self.steps.first())
            .map_or_else(|| job_spec::SETUP_ENTRY_KEY.to_string(), |s| s.key.clone())
    }
}

/// The pod's started containers in pod order (setup, steps, main), however the status lists them.
fn started_in_pod_order<'p>(steps: &[StepSpec], pod: &'p Pod) -> Vec<&'p ContainerStatus> {
    let mut started: Vec<&ContainerStatus> = failure::container_statuses(pod)
        .filter(|cs| container_started(cs))
        .collect();
    started.sort_by_key(|cs| {
        steps
            .iter()
            .position(|s| s.container_name == cs.name)
            .unwrap_or(usize::MAX)
    });
    started
}

fn container_started(cs: &ContainerStatus) -> bool {
    cs.state
        .as_ref()
        .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
}

fn started_at(cs: &ContainerStatus) -> Timestamp {
    let state = cs.state.as_ref();
    state
        .and_then(|s| s.running.as_ref().and_then(|r| r.started_at.clone()))
        .or_else(|| state.and_then(|s| s.terminated.as_ref().and_then(|t| t.started_at.clone())))
        .map_or_else(Timestamp::now, |t| t.0)
}
