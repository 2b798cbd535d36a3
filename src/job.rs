//! One job's life: resolve files → create objects → follow the pod and its logs → teardown → report.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::Api;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{
    config::Config,
    events::{Event, Events},
    k8s::{
        failure::{self, Failure, FailureKind, Timeouts, Tracker, Verdict},
        job_spec::{self, JobContext, JobObjects, StepSpec, WorkspaceFile},
        logs::{self, ContainerProbe},
        objects::Objects,
        watch::ClusterView,
    },
    log_entry::{self, LogEntryWriter},
    queue::{
        client::{JobHandle, MarkOutcome, QueueClient},
        types::Job,
    },
    redact::Redactor,
    slots::SlotPermit,
};

/// Why a running job is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The frontend asked (heartbeat `cancelIds`).
    Canceled,
    /// The frontend no longer knows the job (heartbeat `knownIds`): its result cannot be reported.
    Abandoned,
    /// The executor is shutting down and the grace period is over.
    Shutdown,
}

/// A running job as the heartbeat sees it.
#[derive(Debug)]
pub struct RunningJob {
    pub queue: String,
    pub id: i64,
    stop: CancellationToken,
    reason: Mutex<Option<StopReason>>,
    /// Consecutive heartbeats that included this job but whose `knownIds` did not.
    pub missing_from_known: Mutex<u32>,
}

impl RunningJob {
    /// Asks the job to stop; the first reason wins.
    pub fn stop(&self, reason: StopReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        drop(r);
        self.stop.cancel();
    }

    fn reason(&self) -> Option<StopReason> {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The jobs this process is running, by heartbeat ID (`<id>` or `<id>-<queue>`).
#[derive(Debug, Default, Clone)]
pub struct Registry {
    inner: Arc<Mutex<HashMap<String, Arc<RunningJob>>>>,
    removed: Arc<tokio::sync::Notify>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<RunningJob>>> {
        // NB: never held across an await.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a job; `None` if one with the same ID is already running.
    pub fn insert(
        &self,
        uid: &str,
        queue: &str,
        id: i64,
        stop: CancellationToken,
    ) -> Option<Arc<RunningJob>> {
        let mut jobs = self.lock();
        if jobs.contains_key(uid) {
            return None;
        }
        let job = Arc::new(RunningJob {
            queue: queue.to_string(),
            id,
            stop,
            reason: Mutex::new(None),
            missing_from_known: Mutex::new(0),
        });
        jobs.insert(uid.to_string(), job.clone());
        Some(job)
    }

    pub fn remove(&self, uid: &str) {
        self.lock().remove(uid);
        self.removed.notify_waiters();
    }

    /// Registers a job, first stopping an older run of the same ID: the frontend hands out an ID
    /// we still run only after it re-queued the job, so that run's result could not be recorded.
    /// `None` if the older run does not end within `limit`.
    pub async fn insert_replacing(
        &self,
        uid: &str,
        queue: &str,
        id: i64,
        stop: CancellationToken,
        limit: Duration,
    ) -> Option<Arc<RunningJob>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let removed = self.removed.notified();
            if let Some(job) = self.insert(uid, queue, id, stop.clone()) {
                return Some(job);
            }
            if let Some(old) = self.get(uid) {
                old.stop(StopReason::Abandoned);
            }
            if tokio::time::timeout_at(deadline, removed).await.is_err() {
                return None;
            }
        }
    }

    /// Snapshot of the running jobs.
    pub fn all(&self) -> Vec<(String, Arc<RunningJob>)> {
        self.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn get(&self, uid: &str) -> Option<Arc<RunningJob>> {
        self.lock().get(uid).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Everything a job task needs; cheap to clone.
#[derive(Clone)]
pub struct Deps {
    pub config: Arc<Config>,
    pub queue: QueueClient,
    pub objects: Objects,
    pub pods: Api<Pod>,
    pub view: ClusterView,
    pub events: Events,
    pub registry: Registry,
    pub executor_name: String,
}

/// How a job ended, before it is reported.
#[derive(Debug)]
enum Outcome {
    Succeeded,
    Failed { key: String, failure: Failure },
    Stopped(StopReason),
    TimedOut,
}

/// Runs one dequeued job to the end and reports it. Never panics on runtime errors; every failure
/// becomes a report to the frontend (or a log line when the frontend cannot be told).
pub async fn run(deps: Deps, job: Job, mut permit: SlotPermit, stop: CancellationToken) {
    let cfg = deps.config.clone();
    let queue = if job.queue.is_empty() {
        match &cfg.queues {
            crate::config::QueueSelection::Single(q) => q.clone(),
            // A multi-queue frontend always sets `queue`; an older one falls back to the first.
            crate::config::QueueSelection::Multi(qs) => qs.first().cloned().unwrap_or_default(),
        }
    } else {
        job.queue.clone()
    };
    let uid = match &cfg.queues {
        crate::config::QueueSelection::Single(_) => job.id.to_string(),
        crate::config::QueueSelection::Multi(_) => format!("{}-{}", job.id, queue),
    };
    let job_name = crate::k8s::labels::job_name(&queue, job.id);
    let span = info_span!("job", job_id = job.id, queue = %queue, k8s_job = %job_name);
    async move {
        let replacing = deps.registry.get(&uid).is_some();
        if replacing {
            warn!("the frontend re-assigned a job still running here; stopping the stale run first");
        }
        let Some(running) = deps
            .registry
            .insert_replacing(&uid, &queue, job.id, stop.clone(), Duration::from_secs(120))
            .await
        else {
            error!(
                "the stale run of this job did not stop in time; leaving the job to the frontend's resetter"
            );
            return;
        };
        permit.assign(&job_name);
        deps.events.handler_started();
        let started = Instant::now();
        info!("job started");
        if cfg.job_audit_logging {
            warn!(
                repository = %job.repository_name,
                commit = %job.commit,
                steps = job.docker_steps.len(),
                files = job.files.len(),
                "job received (audit)"
            );
        }
        let handle = JobHandle {
            id: job.id,
            queue: queue.clone(),
            token: job.token.clone(),
        };
        let redactor = Redactor::new(cfg.frontend_password.expose(), job.redacted_values.expose());
        let outcome = execute(
            &deps, &job, &queue, &job_name, &handle, &redactor, &stop, &running,
        )
        .await;
        let errored = !matches!(outcome, Outcome::Succeeded);
        report(&deps, &handle, &job_name, outcome).await;
        deps.registry.remove(&uid);
        deps.events.handler_finished(started.elapsed(), errored);
        info!(elapsed_ms = started.elapsed().as_millis() as u64, "job finished");
        drop(permit);
    }
    .instrument(span)
    .await;
}

#[allow(clippy::too_many_arguments)]
async fn execute(
    deps: &Deps,
    job: &Job,
    queue: &str,
    job_name: &str,
    handle: &JobHandle,
    redactor: &Redactor,
    stop: &CancellationToken,
    running: &RunningJob,
) -> Outcome {
    let cfg = &deps.config;
    let setup_key = "setup.workspace".to_string();
    let fail = |kind: FailureKind, reason: String| Outcome::Failed {
        key: setup_key.clone(),
        failure: Failure {
            container: None,
            reason,
            kind,
        },
    };

    // Files stored on the frontend are fetched here, with the job token, so the pod never needs them.
    let mut files = Vec::with_capacity(job.files.len());
    for (path, file) in &job.files {
        let content = match (&file.content, &file.bucket, &file.key) {
            (Some(content), _, _) => content.clone(),
            (None, Some(bucket), Some(key)) => match deps.queue.get_file(handle, bucket, key).await {
                Ok(content) => content,
                Err(error) => {
                    return fail(
                        FailureKind::Infrastructure,
                        format!("could not fetch workspace file {path:?} from the frontend: {error}"),
                    );
                }
            },
            _ => {
                return fail(
                    FailureKind::Permanent,
                    format!("workspace file {path:?} has neither content nor a bucket and key"),
                );
            }
        };
        files.push(WorkspaceFile {
            path: path.clone(),
            content,
            modified_at: file.modified_at,
        });
    }

    let ctx = JobContext {
        job,
        queue,
        executor_name: &deps.executor_name,
        instance_id: &cfg.instance_id,
        frontend_url: &cfg.frontend_url,
        files: &files,
    };
    let objects = match job_spec::build_job_objects(&ctx, &cfg.kubernetes) {
        Ok(objects) => objects,
        Err(error) => return fail(FailureKind::Permanent, error.to_string()),
    };

    let created_at = Instant::now();
    let owned = match deps.objects.create(&objects).await {
        Ok(created) => {
            deps.events.record(Event::JobCreated);
            info!(
                replaced_leftovers = created.replaced_leftovers,
                "Kubernetes Job created"
            );
            created.owned
        }
        Err(error) => {
            let kind = if error.is_permanent() {
                FailureKind::Permanent
            } else {
                FailureKind::Infrastructure
            };
            return fail(kind, error.to_string());
        }
    };

    let outcome = supervise(
        deps, &objects, job_name, handle, redactor, stop, running, created_at,
    )
    .await;
    teardown(deps, &objects, owned, handle).await;
    outcome
}

/// Watches the pod until it ends, following each container's log as an execution log entry.
#[allow(clippy::too_many_arguments)]
async fn supervise(
    deps: &Deps,
    objects: &JobObjects,
    job_name: &str,
    handle: &JobHandle,
    redactor: &Redactor,
    stop: &CancellationToken,
    running: &RunningJob,
    created_at: Instant,
) -> Outcome {
    let cfg = &deps.config;
    let timeouts = Timeouts {
        pending: cfg.kubernetes.pending_timeout,
        image_pull: cfg.kubernetes.image_pull_timeout,
        pod_creation: cfg.kubernetes.pod_creation_timeout,
    };
    let deadline = tokio::time::Instant::now() + cfg.maximum_runtime_per_job;
    let mut changes = deps.view.subscribe();
    let mut tracker = Tracker::new(created_at);
    let mut followers: JoinSet<Option<(String, String)>> = JoinSet::new();
    let mut following: HashSet<String> = HashSet::new();
    let mut restarts: HashMap<String, i32> = HashMap::new();
    let stop_followers = CancellationToken::new();
    let mut entry_order = EntryOrder::default();

    let outcome = loop {
        // Mark the current change as seen before reading the stores, so no change is missed.
        changes.borrow_and_update();
        let k8s_job = deps.view.job(job_name);
        let pod = deps.view.pod_for_job(job_name);
        if let Some(pod) = &pod {
            for cs in failure::container_statuses(pod) {
                let previous = restarts.insert(cs.name.clone(), cs.restart_count).unwrap_or(0);
                for _ in previous..cs.restart_count {
                    deps.events.record(Event::PodRestart);
                }
            }
            for cs in started_in_pod_order(&objects.steps, pod) {
                if !following.insert(cs.name.clone()) {
                    continue;
                }
                let (key, command) = entry_for(&objects.steps, &cs.name);
                let turn = entry_order.next_turn();
                followers.spawn(
                    follow_container(
                        deps.clone(),
                        handle.clone(),
                        redactor.clone(),
                        pod_name(pod),
                        cs.name.clone(),
                        (key, command, started_at(cs)),
                        turn,
                        job_name.to_string(),
                        stop_followers.clone(),
                    )
                    .in_current_span(),
                );
            }
        }
        let verdict = tracker.evaluate(Instant::now(), &timeouts, k8s_job.as_deref(), pod.as_deref());
        match verdict {
            Verdict::Succeeded => break Outcome::Succeeded,
            Verdict::Failed(failure) => {
                let key = failure
                    .container
                    .as_deref()
                    .map(|c| entry_for(&objects.steps, c).0)
                    .unwrap_or_else(|| first_unfinished_key(&objects.steps, pod.as_deref()));
                break Outcome::Failed { key, failure };
            }
            Verdict::Waiting { recheck_in } => {
                let recheck = recheck_in.unwrap_or(Duration::from_secs(3600));
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(recheck) => {}
                    _ = stop.cancelled() => break Outcome::Stopped(running.reason().unwrap_or(StopReason::Shutdown)),
                    _ = tokio::time::sleep_until(deadline) => break Outcome::TimedOut,
                }
            }
        }
    };

    // A finished pod's containers have all terminated: let the followers read the logs to the
    // end and send the final updates before the Job is deleted. A stopped job's pod is deleted
    // first, which ends its log streams.
    let finished = matches!(outcome, Outcome::Succeeded | Outcome::Failed { .. });
    if !finished {
        stop_followers.cancel();
    }
    let drain = if finished {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(5)
    };
    let mut problems: Vec<(String, String)> = Vec::new();
    let deadline = tokio::time::sleep(drain);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            done = followers.join_next() => match done {
                None => break,
                Some(Ok(Some(problem))) => problems.push(problem),
                Some(_) => {}
            },
            _ = &mut deadline, if !stop_followers.is_cancelled() => {
                warn!("log followers did not finish in time; closing their entries");
                stop_followers.cancel();
            }
        }
    }
    // A job whose output could not be read did not really succeed: batch changes read their
    // results from the logs, so report it rather than complete it with missing output.
    match (outcome, problems.into_iter().next()) {
        (Outcome::Succeeded, Some((container, reason))) => Outcome::Failed {
            key: entry_for(&objects.steps, &container).0,
            failure: Failure {
                container: Some(container),
                reason,
                kind: FailureKind::Infrastructure,
            },
        },
        (outcome, _) => outcome,
    }
}

/// Streams one container's log into its execution log entry and closes it with the exit code.
#[allow(clippy::too_many_arguments)]
async fn follow_container(
    deps: Deps,
    handle: JobHandle,
    redactor: Redactor,
    pod: String,
    container: String,
    (key, command, start_time): (String, Vec<String>, Timestamp),
    mut turn: EntryTurn,
    job_name: String,
    stop: CancellationToken,
) -> Option<(String, String)> {
    turn.wait().await;
    let opened = LogEntryWriter::open(
        deps.queue.clone(),
        handle,
        redactor,
        &key,
        &command,
        start_time,
        deps.config.log_entry_max_bytes,
        deps.events.clone(),
    )
    .await;
    // Whether or not it was created, the next container's entry may now be added.
    turn.done();
    let mut writer = match opened {
        Ok(writer) => writer,
        Err(error) => {
            error!(%key, %error, "could not create the execution log entry");
            return None;
        }
    };
    debug!(%key, %container, "following container log");
    let probe = Probe {
        view: deps.view.clone(),
        job_name: job_name.clone(),
        container: container.clone(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let notices = tx.clone();
    let follow = {
        let pods = deps.pods.clone();
        let changes = deps.view.subscribe();
        let events = deps.events.clone();
        let stop = stop.clone();
        let container = container.clone();
        let pod = pod.clone();
        async move {
            let result = logs::follow(&pods, &pod, &container, &probe, changes, &events, &stop, |line| {
                let _ = tx.send(line.to_string());
            })
            .await;
            match result {
                Ok(()) => None,
                Err(error @ logs::FollowError::Forbidden(_)) => {
                    error!(%container, %error, "cannot stream the container log; check the executor's Role");
                    let _ = notices.send(format!("[kube-executor] {error}"));
                    Some((container, format!("could not read the container log: {error}")))
                }
                Err(error) => {
                    debug!(%container, %error, "log follow ended early");
                    None
                }
            }
        }
    };
    let mut follow = std::pin::pin!(follow);
    let mut follow_done = false;
    let mut problem = None;
    loop {
        let wait = writer.next_flush_in().unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            line = rx.recv() => match line {
                Some(line) => writer.push_line(&line),
                None => break,
            },
            result = &mut follow, if !follow_done => {
                follow_done = true;
                problem = result;
            }
            _ = tokio::time::sleep(wait) => writer.flush_if_due().await,
        }
    }
    let exit_code = exit_code_of(&deps.view, &job_name, &container).unwrap_or(1);
    if let Err(error) = writer.finish(exit_code).await {
        error!(%key, %error, "could not send the final log entry update");
    }
    problem
}

/// Hands out turns for adding execution log entries, so entries are added in the order their
/// containers were found started even though each container is followed on its own task.
///
/// The frontend (and Sourcegraph's UI and batches backend) keeps entries in the order they were
/// added; two containers seen starting in one pod update must not race to add theirs.
#[derive(Default)]
struct EntryOrder {
    previous: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl EntryOrder {
    /// The next turn: it may add its entry once every earlier turn has added (or failed to add) its own.
    fn next_turn(&mut self) -> EntryTurn {
        let (done, next) = tokio::sync::oneshot::channel();
        EntryTurn {
            after: self.previous.replace(next),
            done: Some(done),
        }
    }
}

/// One follower's place in [`EntryOrder`].
struct EntryTurn {
    after: Option<tokio::sync::oneshot::Receiver<()>>,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl EntryTurn {
    /// Waits until the previous entry was added; a previous follower that ended counts as done.
    async fn wait(&mut self) {
        if let Some(after) = self.after.take() {
            let _ = after.await;
        }
    }

    fn done(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

/// The pod's started containers in pod order (setup, steps, main), however the status lists them.
fn started_in_pod_order<'a>(steps: &[StepSpec], pod: &'a Pod) -> Vec<&'a ContainerStatus> {
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

struct Probe {
    view: ClusterView,
    job_name: String,
    container: String,
}

impl ContainerProbe for Probe {
    fn terminated(&self) -> bool {
        self.pod_gone() || exit_code_of(&self.view, &self.job_name, &self.container).is_some()
    }

    fn pod_gone(&self) -> bool {
        self.view.pod_for_job(&self.job_name).is_none()
    }
}

fn exit_code_of(view: &ClusterView, job_name: &str, container: &str) -> Option<i32> {
    let pod = view.pod_for_job(job_name)?;
    failure::container_statuses(&pod)
        .find(|cs| cs.name == container)
        .and_then(|cs| cs.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code))
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

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

fn entry_for(steps: &[StepSpec], container: &str) -> (String, Vec<String>) {
    match steps.iter().find(|s| s.container_name == container) {
        Some(step) => (step.key.clone(), step.command.clone()),
        None => (container.replace('-', "."), Vec::new()),
    }
}

/// The key of the first container that has not completed: what could not run.
fn first_unfinished_key(steps: &[StepSpec], pod: Option<&Pod>) -> String {
    let done: HashSet<String> = pod
        .map(|p| {
            failure::container_statuses(p)
                .filter(|cs| {
                    cs.state
                        .as_ref()
                        .and_then(|s| s.terminated.as_ref())
                        .is_some_and(|t| t.exit_code == 0)
                })
                .map(|cs| cs.name.clone())
                .collect()
        })
        .unwrap_or_default();
    steps
        .iter()
        .find(|s| !done.contains(&s.container_name))
        .or(steps.first())
        .map_or_else(|| "setup.workspace".to_string(), |s| s.key.clone())
}

/// Deletes the job's objects (unless KUBERNETES_KEEP_JOBS) and records the teardown entries.
async fn teardown(deps: &Deps, objects: &JobObjects, owned: bool, handle: &JobHandle) {
    let cfg = &deps.config;
    let job_name = kube::ResourceExt::name_any(&objects.job);
    if !cfg.kubernetes.keep_jobs {
        let start = (Timestamp::now(), Instant::now());
        let (lines, exit_code) = match deps.objects.delete_all(objects, owned).await {
            Ok(done) => (done, 0),
            Err(failed) => {
                let lines: Vec<String> = failed.iter().map(|f| format!("failed to delete {f}")).collect();
                warn!(failures = ?failed, "teardown incomplete; ttlSecondsAfterFinished and the startup sweep will remove the rest");
                (lines, 1)
            }
        };
        let command = vec![
            "kubectl".to_string(),
            "delete".to_string(),
            "job".to_string(),
            job_name.clone(),
            "--cascade=background".to_string(),
        ];
        if let Err(error) = log_entry::send_complete_entry(
            &deps.queue,
            handle,
            "teardown.kubernetes.job",
            command,
            &lines,
            exit_code,
            start,
        )
        .await
        {
            warn!(%error, "could not record the teardown log entry");
        }
    }
    let start = (Timestamp::now(), Instant::now());
    let lines = if cfg.keep_workspaces {
        vec!["Preserving workspace (EXECUTOR_KEEP_WORKSPACES): it lives in the job pod's volume".to_string()]
    } else {
        vec!["Removing workspace: it lives in the job pod's volume and goes with the pod".to_string()]
    };
    if let Err(error) =
        log_entry::send_complete_entry(&deps.queue, handle, "teardown.fs", Vec::new(), &lines, 0, start).await
    {
        warn!(%error, "could not record the teardown.fs log entry");
    }
}

/// Tells the frontend how the job ended.
async fn report(deps: &Deps, handle: &JobHandle, job_name: &str, outcome: Outcome) {
    let maximum_runtime = format_go_duration(deps.config.maximum_runtime_per_job);
    let result = match &outcome {
        Outcome::Succeeded => {
            deps.events.record(Event::JobSucceeded);
            deps.queue.mark_complete(handle).await
        }
        Outcome::Failed { key, failure } => {
            let message = format!(
                "running command {key:?}: job {job_name} failed: {}",
                failure.reason
            );
            info!(%message, "job failed");
            match failure.kind {
                FailureKind::StepFailed => {
                    deps.events.record(Event::JobStepFailed);
                    deps.queue.mark_errored(handle, &message).await
                }
                FailureKind::Infrastructure => {
                    deps.events.record(Event::JobInfrastructureFailed);
                    deps.queue.mark_errored(handle, &message).await
                }
                FailureKind::Permanent => {
                    deps.events.record(Event::JobPermanentlyFailed);
                    deps.queue.mark_failed(handle, &message).await
                }
            }
        }
        Outcome::Stopped(StopReason::Canceled) => {
            deps.events.record(Event::JobCanceled);
            deps.queue.mark_failed(handle, "job was canceled").await
        }
        Outcome::Stopped(StopReason::Abandoned) => {
            deps.events.record(Event::JobAbandoned);
            info!("the frontend no longer knows this job; not reporting it");
            return;
        }
        Outcome::Stopped(StopReason::Shutdown) => {
            deps.events.record(Event::JobInterruptedByShutdown);
            deps.queue
                .mark_errored(
                    handle,
                    &format!("job {job_name} was stopped because the executor shut down; it will be retried"),
                )
                .await
        }
        Outcome::TimedOut => {
            deps.events.record(Event::JobTimedOut);
            deps.queue
                .mark_errored(
                    handle,
                    &format!(
                        "job {job_name} failed: job exceeded maximum execution time of {maximum_runtime}"
                    ),
                )
                .await
        }
    };
    match result {
        Ok(MarkOutcome::Recorded) => debug!(?outcome, "reported"),
        Ok(MarkOutcome::NotOwned) => {
            warn!("the frontend no longer considers this job ours (404); result not recorded")
        }
        Err(error) => error!(%error, "could not report the job's result to the frontend"),
    }
}

/// Formats like Go's `time.Duration.String()` (e.g. `30m0s`), as Sourcegraph's messages do.
pub fn format_go_duration(d: Duration) -> String {
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(format_go_duration(Duration::from_secs(1800)), "30m0s");
        assert_eq!(format_go_duration(Duration::from_secs(5400)), "1h30m0s");
        assert_eq!(format_go_duration(Duration::from_secs(5)), "5s");
    }

    #[tokio::test]
    async fn a_reassigned_job_stops_the_stale_run_before_registering() {
        let registry = Registry::default();
        let old = registry
            .insert("7", "batches", 7, CancellationToken::new())
            .expect("first run");
        let finishing = {
            let registry = registry.clone();
            let old = old.clone();
            tokio::spawn(async move {
                old.stop.cancelled().await;
                registry.remove("7");
            })
        };
        let new = registry
            .insert_replacing(
                "7",
                "batches",
                7,
                CancellationToken::new(),
                Duration::from_secs(5),
            )
            .await
            .expect("the stale run ended");
        assert_eq!(old.reason(), Some(StopReason::Abandoned));
        assert!(!Arc::ptr_eq(&old, &new));
        finishing.await.expect("join");
    }

    #[tokio::test]
    async fn entry_turns_add_in_order_whichever_follower_runs_first() {
        let mut order = EntryOrder::default();
        let turns: Vec<EntryTurn> = (0..4).map(|_| order.next_turn()).collect();
        let added = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = JoinSet::new();
        // Spawned last-first: without the turns the last container would add its entry first.
        for (index, mut turn) in turns.into_iter().enumerate().rev() {
            let added = added.clone();
            tasks.spawn(async move {
                turn.wait().await;
                added.lock().expect("lock").push(index);
                turn.done();
            });
            tokio::task::yield_now().await;
        }
        while tasks.join_next().await.is_some() {}
        assert_eq!(*added.lock().expect("lock"), [0, 1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_that_ends_without_adding_does_not_block_the_next() {
        let mut order = EntryOrder::default();
        let first = order.next_turn();
        let mut second = order.next_turn();
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second.wait())
            .await
            .expect("the next turn is free once the earlier follower is gone");
    }

    #[test]
    fn registry_rejects_duplicates_and_stop_keeps_first_reason() {
        let registry = Registry::default();
        let job = registry
            .insert("1", "batches", 1, CancellationToken::new())
            .expect("first insert");
        assert!(
            registry
                .insert("1", "batches", 1, CancellationToken::new())
                .is_none()
        );
        job.stop(StopReason::Canceled);
        job.stop(StopReason::Shutdown);
        assert_eq!(job.reason(), Some(StopReason::Canceled));
        assert!(job.stop.is_cancelled());
    }
}
