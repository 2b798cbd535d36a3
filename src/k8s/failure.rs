//! Decides from a job's Pod and Job objects whether it is still going, succeeded, or failed and why.
//!
//! Pure: the job task feeds it what the shared watch currently sees and the clock, and acts on the
//! verdict. When a stuck pod's Events decide (an autoscaler's verdict, a pull's runtime message), it
//! asks for them with [`Verdict::ReadPodEvents`] instead of reading them. Timers (pending, image pull, pod creation) are measured from when a condition was first
//! seen, so a verdict never depends on how often it is asked.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ContainerStatus, Pod, PodCondition},
};

use super::pod_events::{Autoscaler, PodEvents};

/// The shortest time between two reads of one stuck pod's Events, whatever the configuration.
const MIN_EVENTS_REREAD: Duration = Duration::from_secs(1);

/// How long a job may stay in each kind of "stuck" state before it is failed.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Pod unschedulable / pending.
    pub pending: Duration,
    /// Pod unschedulable with no cluster autoscaler adding a node for it.
    pub unschedulable: Duration,
    /// A container in `ErrImagePull` / `ImagePullBackOff` / a container config error.
    pub image_pull: Duration,
    /// The Job exists but has no pod.
    pub pod_creation: Duration,
}

/// Whether retrying the job could help; decides `markErrored` versus `markFailed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A step's command exited non-zero.
    StepFailed,
    /// The cluster could not run the job (scheduling, eviction, pull, deadline): worth retrying.
    Infrastructure,
    /// Retrying cannot help (an invalid image name).
    Permanent,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The container that failed or could not start, when known.
    pub container: Option<String>,
    /// A sentence a person can act on.
    pub reason: String,
    pub kind: FailureKind,
    pub cause: Cause,
}

/// What made a job fail, as the fixed label of `kube_executor_job_outcomes_total` and the
/// status page (the reason text is for people, and may quote a step's output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    StepFailed,
    OomKilled,
    Unschedulable,
    ImagePull,
    InvalidImage,
    ContainerConfig,
    Deadline,
    Evicted,
    NodeRejected,
    Deleted,
    JobFailed,
    PodNotCreated,
    PendingTimeout,
    PodFailed,
    LogUnreadable,
    /// The workspace could not be prepared before any container ran (payload, files, objects).
    Setup,
}

impl Cause {
    pub fn label(self) -> &'static str {
        match self {
            Cause::StepFailed => "step_failed",
            Cause::OomKilled => "oom_killed",
            Cause::Unschedulable => "unschedulable",
            Cause::ImagePull => "image_pull",
            Cause::InvalidImage => "invalid_image",
            Cause::ContainerConfig => "container_config",
            Cause::Deadline => "deadline",
            Cause::Evicted => "evicted",
            Cause::NodeRejected => "node_rejected",
            Cause::Deleted => "deleted",
            Cause::JobFailed => "job_failed",
            Cause::PodNotCreated => "pod_not_created",
            Cause::PendingTimeout => "pending_timeout",
            Cause::PodFailed => "pod_failed",
            Cause::LogUnreadable => "log_unreadable",
            Cause::Setup => "setup",
        }
    }
}

/// The state of a job's pod as far as the executor is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Still going; when `recheck_in` is set, a timer expires then even if nothing changes.
    Waiting {
        recheck_in: Option<Duration>,
    },
    Succeeded,
    Failed(Failure),
    /// The pod has been stuck long enough that its Events decide what happens next: read them
    /// (see [`super::pod_events::read`]), pass them to [`Tracker::note_pod_events`] and evaluate
    /// again.
    ReadPodEvents,
}

/// The pod's Events as last read, and when.
#[derive(Debug)]
struct EventsRead {
    at: Instant,
    /// `None` when they could not be read.
    events: Option<PodEvents>,
}

/// Remembers, for one job, when each stuck condition was first seen and which pod it runs in.
#[derive(Debug)]
pub struct Tracker {
    job_created_at: Instant,
    job_seen: bool,
    pod_uid: Option<String>,
    first_seen: HashMap<String, Instant>,
    /// Per container, the runtime's message from its last `ErrImagePull`, which the
    /// `ImagePullBackOff` that follows replaces with a bare "Back-off pulling image".
    pull_messages: HashMap<String, String>,
    events: Option<EventsRead>,
}

impl Tracker {
    /// Starts tracking a Job created at `job_created_at`.
    pub fn new(job_created_at: Instant) -> Self {
        Self {
            job_created_at,
            job_seen: false,
            pod_uid: None,
            first_seen: HashMap::new(),
            pull_messages: HashMap::new(),
            events: None,
        }
    }

    /// Records the pod's Events (`None`: they could not be read) after a
    /// [`Verdict::ReadPodEvents`].
    pub fn note_pod_events(&mut self, now: Instant, events: Option<PodEvents>) {
        self.events = Some(EventsRead { at: now, events });
    }

    /// Judges the current objects. `job`/`pod` are what the watch holds now (`None` when absent).
    pub fn evaluate(
        &mut self,
        now: Instant,
        timeouts: &Timeouts,
        job: Option<&Job>,
        pod: Option<&Pod>,
    ) -> Verdict {
        let mut clock = Clock {
            now,
            timeouts,
            timers: Timers::default(),
        };
        match self.judge(&mut clock, job, pod) {
            Verdict::Waiting { .. } => {
                // Forget conditions that cleared, so a later recurrence starts a fresh timer.
                let active = &clock.timers.active;
                self.first_seen.retain(|key, _| active.contains(key));
                Verdict::Waiting {
                    recheck_in: clock.timers.next,
                }
            }
            other => other,
        }
    }

    fn judge(&mut self, clock: &mut Clock<'_>, job: Option<&Job>, pod: Option<&Pod>) -> Verdict {
        match job {
            Some(_) => self.job_seen = true,
            None if self.job_seen => {
                return infrastructure(
                    Cause::Deleted,
                    None,
                    "the Kubernetes Job was deleted before it finished".to_string(),
                );
            }
            None => {}
        }
        let Some(pod) = pod else {
            return self.judge_without_pod(clock, job);
        };
        if let Some(verdict) = self.judge_pod_identity(pod) {
            return verdict;
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Pending");
        match phase {
            "Succeeded" => return Verdict::Succeeded,
            "Failed" => return Verdict::Failed(failed_pod(pod)),
            _ => {}
        }
        if pod.metadata.deletion_timestamp.is_some() {
            return infrastructure(
                Cause::Deleted,
                None,
                "the job pod was deleted (by someone else, an eviction or a node drain) before it finished"
                    .to_string(),
            );
        }
        let unschedulable = self.judge_unschedulable(clock, pod);
        if let Err(verdict) = unschedulable {
            return verdict;
        }
        if let Some(verdict) = self.judge_waiting_containers(clock, pod) {
            return verdict;
        }
        let explained = unschedulable.is_ok_and(|u| u);
        if phase == "Pending"
            && !explained
            && let Some(verdict) = self.judge_pending(clock, pod)
        {
            return verdict;
        }
        Verdict::Waiting { recheck_in: None }
    }

    /// No pod (yet, or any more): a failed Job, a deleted pod, or the pod-creation timer.
    fn judge_without_pod(&mut self, clock: &mut Clock<'_>, job: Option<&Job>) -> Verdict {
        if let Some(reason) = job.and_then(job_failed_condition) {
            return infrastructure(Cause::JobFailed, None, reason);
        }
        if self.pod_uid.is_some() {
            return infrastructure(
                Cause::Deleted,
                None,
                "the job pod was deleted before it finished".to_string(),
            );
        }
        let limit = clock.timeouts.pod_creation;
        let waited = clock.now.saturating_duration_since(self.job_created_at);
        if waited >= limit {
            let detail = job.and_then(job_condition_summary).unwrap_or_default();
            return infrastructure(
                Cause::PodNotCreated,
                None,
                format!(
                    "no pod was created for the Job within {}{detail} (check ResourceQuota, LimitRange, \
                     admission webhooks and the job ServiceAccount)",
                    human(limit)
                ),
            );
        }
        clock.timers.wait(limit - waited);
        Verdict::Waiting { recheck_in: None }
    }

    /// Remembers the job's pod; a different pod means ours was deleted and replaced.
    fn judge_pod_identity(&mut self, pod: &Pod) -> Option<Verdict> {
        let uid = pod.metadata.uid.clone();
        match (&self.pod_uid, &uid) {
            (None, Some(u)) => self.pod_uid = Some(u.clone()),
            (Some(first), Some(u)) if first != u => {
                return Some(infrastructure(
                    Cause::Deleted,
                    None,
                    "the job pod was deleted and replaced before it finished".to_string(),
                ));
            }
            _ => {}
        }
        None
    }

    /// `Ok(true)` while the scheduler reports the pod unschedulable (its timer running), `Ok(false)`
    /// when it does not, `Err` once it has waited long enough or its Events must be read.
    fn judge_unschedulable(&mut self, clock: &mut Clock<'_>, pod: &Pod) -> Result<bool, Verdict> {
        let Some(cond) = unschedulable_condition(pod) else {
            return Ok(false);
        };
        let why = condition_text(cond);
        let limit = clock.timeouts.pending;
        if self.timer("unschedulable", limit, clock).is_none() {
            let autoscaler = self
                .read_events()
                .and_then(|events| events.autoscaler.as_ref())
                .map(autoscaler_note)
                .unwrap_or_default();
            return Err(infrastructure(
                Cause::Unschedulable,
                None,
                format!(
                    "the pod could not be scheduled within {}: {why}{autoscaler}",
                    human(limit)
                ),
            ));
        }
        self.judge_autoscaler(clock, &why)
    }

    /// Past the short unschedulable wait only a cluster autoscaler adding a node for the pod is
    /// worth waiting for, and its Events say whether one is.
    fn judge_autoscaler(&mut self, clock: &mut Clock<'_>, why: &str) -> Result<bool, Verdict> {
        let short = clock.timeouts.unschedulable;
        let since = self.first_seen.get("unschedulable").copied().unwrap_or(clock.now);
        let waited = clock.now.saturating_duration_since(since);
        if waited < short {
            clock.timers.wait(short - waited);
            return Ok(true);
        }
        // Read again once per short wait: an autoscaler that was scaling up may give up.
        let reread = short.max(MIN_EVENTS_REREAD);
        let Some(read) = self
            .events
            .as_ref()
            .filter(|read| read.at >= since && clock.now.saturating_duration_since(read.at) < reread)
        else {
            return Err(Verdict::ReadPodEvents);
        };
        let next_read = reread - clock.now.saturating_duration_since(read.at);
        match read.events.as_ref().map(|events| events.autoscaler.as_ref()) {
            // Unreadable Events tell nothing: wait as long as the pending timeout allows.
            None | Some(Some(Autoscaler::ScalingUp(_))) => {
                clock.timers.wait(next_read);
                Ok(true)
            }
            Some(autoscaler) => Err(infrastructure(
                Cause::Unschedulable,
                None,
                format!(
                    "the pod could not be scheduled and no cluster autoscaler is adding a node for it \
                     (waited {}, KUBERNETES_JOB_UNSCHEDULABLE_TIMEOUT): {why}{}",
                    human(short),
                    autoscaler.map(autoscaler_note).unwrap_or_default()
                ),
            )),
        }
    }

    /// The pod's Events, when they were read and could be.
    fn read_events(&self) -> Option<&PodEvents> {
        self.events.as_ref().and_then(|read| read.events.as_ref())
    }

    /// Containers that cannot start: a bad image at once, pull and config errors after a timer.
    fn judge_waiting_containers(&mut self, clock: &mut Clock<'_>, pod: &Pod) -> Option<Verdict> {
        let limit = clock.timeouts.image_pull;
        for cs in container_statuses(pod) {
            let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
                continue;
            };
            let reason = waiting.reason.as_deref().unwrap_or("");
            let message = waiting.message.clone().unwrap_or_default();
            match reason {
                "InvalidImageName" | "ErrImageNeverPull" => {
                    return Some(Verdict::Failed(Failure {
                        cause: Cause::InvalidImage,
                        container: Some(cs.name.clone()),
                        reason: format!("image {:?} cannot be used ({reason}): {message}", cs.image),
                        kind: FailureKind::Permanent,
                    }));
                }
                "ErrImagePull" | "ImagePullBackOff" => {
                    if let Some(verdict) = self.judge_pull(clock, cs, reason, message) {
                        return Some(verdict);
                    }
                }
                "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError"
                    if self.timer(&format!("config/{}", cs.name), limit, clock).is_none() =>
                {
                    return Some(infrastructure(
                        Cause::ContainerConfig,
                        Some(cs.name.clone()),
                        format!("the container could not be started ({reason}): {message}"),
                    ));
                }
                _ => {}
            }
        }
        None
    }

    /// A container that cannot pull its image fails after the pull timer, with the runtime's
    /// message: from its last `ErrImagePull`, else from its `Failed` Event, else what it says now.
    fn judge_pull(
        &mut self,
        clock: &mut Clock<'_>,
        cs: &ContainerStatus,
        reason: &str,
        message: String,
    ) -> Option<Verdict> {
        if reason == "ErrImagePull" && !message.is_empty() {
            self.pull_messages.insert(cs.name.clone(), message.clone());
        }
        let limit = clock.timeouts.image_pull;
        if self.timer(&format!("pull/{}", cs.name), limit, clock).is_some() {
            return None;
        }
        let remembered = self.pull_messages.get(&cs.name).or_else(|| {
            self.read_events()
                .and_then(|events| events.pull_failures.get(&cs.name))
        });
        let runtime_message = match remembered {
            Some(text) => text.clone(),
            None if self.events.is_none() => return Some(Verdict::ReadPodEvents),
            None => message,
        };
        Some(infrastructure(
            Cause::ImagePull,
            Some(cs.name.clone()),
            format!(
                "image {:?} could not be pulled within {} ({reason}): {runtime_message}",
                cs.image,
                human(limit)
            ),
        ))
    }

    /// A Pending pod that has started no container and that the scheduler has not explained (a
    /// node that never starts the pod, a stuck volume...).
    ///
    /// NB: a pod running its init containers (the job's steps) is also in phase Pending, so this
    /// timer only runs while no container has started yet.
    fn judge_pending(&mut self, clock: &mut Clock<'_>, pod: &Pod) -> Option<Verdict> {
        let any_started = container_statuses(pod).any(|cs| {
            cs.state
                .as_ref()
                .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
        });
        let limit = clock.timeouts.pending;
        if any_started || self.timer("pending", limit, clock).is_some() {
            return None;
        }
        Some(infrastructure(
            Cause::PendingTimeout,
            None,
            format!(
                "the pod stayed Pending without starting a container for more than {}",
                human(limit)
            ),
        ))
    }

    /// Starts or continues the timer `key`; `None` once it has run out, else the time left.
    fn timer(&mut self, key: &str, limit: Duration, clock: &mut Clock<'_>) -> Option<Duration> {
        let since = *self.first_seen.entry(key.to_string()).or_insert(clock.now);
        clock.timers.active.push(key.to_string());
        let elapsed = clock.now.saturating_duration_since(since);
        if elapsed >= limit {
            return None;
        }
        let left = limit - elapsed;
        clock.timers.wait(left);
        Some(left)
    }
}

/// One evaluation's view of time: now, the limits, and the timers seen running.
struct Clock<'t> {
    now: Instant,
    timeouts: &'t Timeouts,
    timers: Timers,
}

#[derive(Default)]
struct Timers {
    next: Option<Duration>,
    active: Vec<String>,
}

impl Timers {
    fn wait(&mut self, left: Duration) {
        self.next = Some(self.next.map_or(left, |n| n.min(left)));
    }
}

/// The pod's `PodScheduled=False` condition, while the scheduler cannot place it.
fn unschedulable_condition(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
        .filter(|c| c.status == "False")
}

/// The scheduler's message (`0/3 nodes are available: ...`), else its reason.
fn condition_text(cond: &PodCondition) -> String {
    match cond.message.as_deref().filter(|m| !m.is_empty()) {
        Some(message) => message.to_string(),
        None => cond.reason.clone().unwrap_or_default(),
    }
}

/// What the autoscaler said, appended to an unschedulable failure.
fn autoscaler_note(autoscaler: &Autoscaler) -> String {
    match autoscaler {
        Autoscaler::ScalingUp(message) => format!("; cluster-autoscaler was scaling up: {message}"),
        Autoscaler::WillNotScaleUp(message) => format!("; cluster-autoscaler: {message}"),
    }
}

fn infrastructure(cause: Cause, container: Option<String>, reason: String) -> Verdict {
    Verdict::Failed(Failure {
        cause,
        container,
        reason,
        kind: FailureKind::Infrastructure,
    })
}

/// Init containers first (in order), then the app containers.
pub fn container_statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    let status = pod.status.as_ref();
    status
        .and_then(|s| s.init_container_statuses.as_deref())
        .unwrap_or_default()
        .iter()
        .chain(
            status
                .and_then(|s| s.container_statuses.as_deref())
                .unwrap_or_default()
                .iter(),
        )
}

fn failed_pod(pod: &Pod) -> Failure {
    let status = pod.status.as_ref();
    let pod_reason = status.and_then(|s| s.reason.clone()).unwrap_or_default();
    let pod_message = status.and_then(|s| s.message.clone()).unwrap_or_default();
    let with_message = |text: String| {
        if pod_message.is_empty() {
            text
        } else {
            format!("{text}: {pod_message}")
        }
    };
    match pod_reason.as_str() {
        "" => {}
        "DeadlineExceeded" => {
            let deadline = pod.spec.as_ref().and_then(|s| s.active_deadline_seconds);
            return Failure {
                cause: Cause::Deadline,
                container: running_container(pod),
                reason: match deadline {
                    Some(s) => format!("the job exceeded its deadline of {s}s (KUBERNETES_JOB_DEADLINE)"),
                    None => with_message("the job exceeded its deadline".to_string()),
                },
                kind: FailureKind::Infrastructure,
            };
        }
        "Evicted" => {
            return Failure {
                cause: Cause::Evicted,
                container: running_container(pod),
                reason: with_message("the pod was evicted".to_string()),
                kind: FailureKind::Infrastructure,
            };
        }
        other => {
            // Kubelet admission failures (OutOfcpu, OutOfmemory, OutOfpods, NodeAffinity, ...):
            // the node refused the pod, typically because it was pinned with spec.nodeName.
            return Failure {
                cause: Cause::NodeRejected,
                container: None,
                reason: with_message(format!("the node rejected the pod ({other})")),
                kind: FailureKind::Infrastructure,
            };
        }
    }
    for cs in container_statuses(pod) {
        let Some(t) = cs.state.as_ref().and_then(|s| s.terminated.as_ref()) else {
            continue;
        };
        if t.exit_code == 0 {
            continue;
        }
        let reason = t.reason.as_deref().unwrap_or("");
        if reason == "OOMKilled" {
            return Failure {
                cause: Cause::OomKilled,
                container: Some(cs.name.clone()),
                reason: format!(
                    "the container was killed because it ran out of memory (OOMKilled, exit code {}); \
                     raise EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY",
                    t.exit_code
                ),
                kind: FailureKind::Infrastructure,
            };
        }
        let detail = t.message.as_deref().map(str::trim).filter(|m| !m.is_empty());
        return Failure {
            cause: Cause::StepFailed,
            container: Some(cs.name.clone()),
            reason: match detail {
                Some(m) => format!("the step exited with code {}: {m}", t.exit_code),
                None => format!("the step exited with code {}", t.exit_code),
            },
            kind: FailureKind::StepFailed,
        };
    }
    Failure {
        cause: Cause::PodFailed,
        container: running_container(pod),
        reason: with_message("the pod failed".to_string()),
        kind: FailureKind::Infrastructure,
    }
}

/// The container that was running (or about to) when the pod stopped.
fn running_container(pod: &Pod) -> Option<String> {
    container_statuses(pod)
        .find(|cs| {
            cs.state
                .as_ref()
                .is_none_or(|s| s.terminated.as_ref().is_none_or(|t| t.exit_code != 0))
        })
        .map(|cs| cs.name.clone())
}

fn job_failed_condition(job: &Job) -> Option<String> {
    let cond = job
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")?;
    Some(format!(
        "the Job failed ({}): {}",
        cond.reason.as_deref().unwrap_or("unknown reason"),
        cond.message.as_deref().unwrap_or("")
    ))
}

fn job_condition_summary(job: &Job) -> Option<String> {
    let conds = job.status.as_ref()?.conditions.as_ref()?;
    let parts: Vec<String> = conds
        .iter()
        .map(|c| {
            format!(
                "{}={} {}",
                c.type_,
                c.status,
                c.message.as_deref().or(c.reason.as_deref()).unwrap_or("")
            )
        })
        .collect();
    (!parts.is_empty()).then(|| format!(" (Job conditions: {})", parts.join("; ")))
}

/// Whether a Job has finished (Complete or Failed condition true).
pub fn job_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("valid pod fixture")
    }

    fn job() -> Job {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "j"}})).expect("valid job fixture")
    }

    const T: Timeouts = Timeouts {
        pending: Duration::from_secs(600),
        unschedulable: Duration::from_secs(60),
        image_pull: Duration::from_secs(60),
        pod_creation: Duration::from_secs(30),
    };

    #[test]
    fn succeeded_pod_succeeds() {
        let mut t = Tracker::new(Instant::now());
        let p = pod(serde_json::json!({"metadata":{"uid":"a"},"status":{"phase":"Succeeded"}}));
        assert_eq!(
            t.evaluate(Instant::now(), &T, Some(&job()), Some(&p)),
            Verdict::Succeeded
        );
    }

    #[test]
    fn failing_step_names_its_container_and_exit_code() {
        let mut t = Tracker::new(Instant::now());
        let p = pod(
            serde_json::json!({"metadata":{"uid":"a"},"status":{"phase":"Failed",
            "initContainerStatuses":[
              {"name":"setup-workspace","image":"i","imageID":"","ready":false,"restartCount":0,"state":{"terminated":{"exitCode":0}}},
              {"name":"step-kubernetes-0","image":"i","imageID":"","ready":false,"restartCount":0,"state":{"terminated":{"exitCode":3,"reason":"Error"}}}]}}),
        );
        let Verdict::Failed(f) = t.evaluate(Instant::now(), &T, Some(&job()), Some(&p)) else {
            panic!("expected failure");
        };
        assert_eq!(f.container.as_deref(), Some("step-kubernetes-0"));
        assert_eq!(f.kind, FailureKind::StepFailed);
        assert!(f.reason.contains("code 3"), "{}", f.reason);
    }

    #[test]
    fn oom_killed_is_reported_as_such() {
        let mut t = Tracker::new(Instant::now());
        let p = pod(
            serde_json::json!({"metadata":{"uid":"a"},"status":{"phase":"Failed",
            "containerStatuses":[{"name":"main","image":"i","imageID":"","ready":false,"restartCount":0,
              "state":{"terminated":{"exitCode":137,"reason":"OOMKilled"}}}]}}),
        );
        let Verdict::Failed(f) = t.evaluate(Instant::now(), &T, Some(&job()), Some(&p)) else {
            panic!("expected failure");
        };
        assert!(f.reason.contains("OOMKilled"), "{}", f.reason);
    }

    #[test]
    fn unschedulable_pod_fails_only_after_the_pending_timeout() {
        let start = Instant::now();
        let mut t = Tracker::new(start);
        let p = pod(
            serde_json::json!({"metadata":{"uid":"a"},"status":{"phase":"Pending","conditions":[
            {"type":"PodScheduled","status":"False","reason":"Unschedulable",
             "message":"0/2 nodes are available: 2 node(s) didn't match node selector."}]}}),
        );
        match t.evaluate(start, &T, Some(&job()), Some(&p)) {
            Verdict::Waiting { recheck_in } => assert_eq!(recheck_in, Some(T.unschedulable)),
            other => panic!("unexpected {other:?}"),
        }
        // After the short wait the Events decide; an autoscaler scaling up keeps the pod waiting.
        let short = start + T.unschedulable;
        assert_eq!(
            t.evaluate(short, &T, Some(&job()), Some(&p)),
            Verdict::ReadPodEvents
        );
        let scaling = PodEvents {
            autoscaler: Some(Autoscaler::ScalingUp("pod triggered scale-up".into())),
            ..PodEvents::default()
        };
        t.note_pod_events(short, Some(scaling));
        assert!(matches!(
            t.evaluate(short, &T, Some(&job()), Some(&p)),
            Verdict::Waiting { .. }
        ));
        let later = start + T.pending;
        let Verdict::Failed(f) = t.evaluate(later, &T, Some(&job()), Some(&p)) else {
            panic!("expected failure");
        };
        assert!(f.reason.contains("didn't match node selector"), "{}", f.reason);
        assert_eq!(f.kind, FailureKind::Infrastructure);
    }

    #[test]
    fn image_pull_backoff_fails_after_the_pull_timeout_with_the_image() {
        let start = Instant::now();
        let mut t = Tracker::new(start);
        let p = pod(
            serde_json::json!({"metadata":{"uid":"a"},"status":{"phase":"Pending",
            "initContainerStatuses":[{"name":"setup-workspace","image":"unpullable.invalid/x","imageID":"","ready":false,
              "restartCount":0,"state":{"waiting":{"reason":"ImagePullBackOff","message":"pull access denied"}}}]}}),
        );
        assert!(matches!(
            t.evaluate(start, &T, Some(&job()), Some(&p)),
            Verdict::Waiting { .. }
        ));
        // No ErrImagePull was seen, so the kubelet's Event is asked for; unreadable, the status says why.
        let timed_out = start + T.image_pull;
        assert_eq!(
            t.evaluate(timed_out, &T, Some(&job()), Some(&p)),
            Verdict::ReadPodEvents
        );
        t.note_pod_events(timed_out, None);
        let Verdict::Failed(f) = t.evaluate(timed_out, &T, Some(&job()), Some(&p)) else {
            panic!("expected failure");
        };
        assert!(f.reason.contains("unpullable.invalid/x"), "{}", f.reason);
        assert!(
            f.reason.ends_with("(ImagePullBackOff): pull access denied"),
            "{}",
            f.reason
        );
        assert_eq!(f.container.as_deref(), Some("setup-workspace"));
    }

    #[test]
    fn invalid_image_name_fails_at_once_as_permanent() {
        let mut t = Tracker::new(Instant::now());
        let p = pod(
            serde_json::json!({"metadata":{"uid":"a"},"status":{"phase":"Pending",
            "initContainerStatuses":[{"name":"s","image":"Bad Image","imageID":"","ready":false,"restartCount":0,
              "state":{"waiting":{"reason":"InvalidImageName"}}}]}}),
        );
        let Verdict::Failed(f) = t.evaluate(Instant::now(), &T, Some(&job()), Some(&p)) else {
            panic!("expected failure");
        };
        assert_eq!(f.kind, FailureKind::Permanent);
    }

    #[test]
    fn missing_pod_fails_after_the_creation_timeout_and_deleted_job_at_once() {
        let start = Instant::now();
        let mut t = Tracker::new(start);
        assert!(matches!(
            t.evaluate(start, &T, None, None),
            Verdict::Waiting { .. }
        ));
        assert!(matches!(
            t.evaluate(start, &T, Some(&job()), None),
            Verdict::Waiting { .. }
        ));
        let Verdict::Failed(f) = t.evaluate(start + T.pod_creation, &T, Some(&job()), None) else {
            panic!("expected failure");
        };
        assert!(f.reason.contains("no pod was created"), "{}", f.reason);
        let Verdict::Failed(f) = t.evaluate(start, &T, None, None) else {
            panic!("a job seen before and now gone must fail");
        };
        assert!(f.reason.contains("deleted"), "{}", f.reason);
    }

    #[test]
    fn kubelet_admission_failure_and_eviction_and_deadline() {
        for (reason, needle) in [
            ("OutOfcpu", "rejected"),
            ("Evicted", "evicted"),
            ("DeadlineExceeded", "deadline"),
        ] {
            let mut t = Tracker::new(Instant::now());
            let p = pod(
                serde_json::json!({"metadata":{"uid":"a"},"spec":{"containers":[],"activeDeadlineSeconds":5},
                "status":{"phase":"Failed","reason":reason,"message":"m"}}),
            );
            let Verdict::Failed(f) = t.evaluate(Instant::now(), &T, Some(&job()), Some(&p)) else {
                panic!("expected failure for {reason}");
            };
            assert!(f.reason.contains(needle), "{reason}: {}", f.reason);
        }
    }

    #[test]
    fn long_running_init_steps_never_hit_the_pending_timeout() {
        let start = Instant::now();
        let mut t = Tracker::new(start);
        let p = pod(
            serde_json::json!({"metadata":{"uid":"a"},"status":{"phase":"Pending","conditions":[
            {"type":"PodScheduled","status":"True"}],
            "initContainerStatuses":[{"name":"step-kubernetes-0","image":"i","imageID":"","ready":false,
              "restartCount":0,"state":{"running":{"startedAt":"2026-01-01T00:00:00Z"}}}]}}),
        );
        let much_later = start + T.pending * 3;
        assert_eq!(
            t.evaluate(much_later, &T, Some(&job()), Some(&p)),
            Verdict::Waiting { recheck_in: None }
        );
    }

    #[test]
    fn pending_pod_that_never_starts_fails_after_the_pending_timeout() {
        let start = Instant::now();
        let mut t = Tracker::new(start);
        let p = pod(
            serde_json::json!({"metadata":{"uid":"a"},"status":{"phase":"Pending","conditions":[
            {"type":"PodScheduled","status":"True"}]}}),
        );
        assert!(matches!(
            t.evaluate(start, &T, Some(&job()), Some(&p)),
            Verdict::Waiting { .. }
        ));
        let Verdict::Failed(f) = t.evaluate(start + T.pending, &T, Some(&job()), Some(&p)) else {
            panic!("expected failure");
        };
        assert!(f.reason.contains("without starting a container"), "{}", f.reason);
    }

    #[test]
    fn deleted_pod_fails_the_job() {
        let mut t = Tracker::new(Instant::now());
        let p = pod(
            serde_json::json!({"metadata":{"uid":"a","deletionTimestamp":"2026-01-01T00:00:00Z"},
            "status":{"phase":"Running"}}),
        );
        assert!(matches!(
            t.evaluate(Instant::now(), &T, Some(&job()), Some(&p)),
            Verdict::Failed(_)
        ));
        let mut t = Tracker::new(Instant::now());
        let running = pod(serde_json::json!({"metadata":{"uid":"a"},"status":{"phase":"Running"}}));
        assert!(matches!(
            t.evaluate(Instant::now(), &T, Some(&job()), Some(&running)),
            Verdict::Waiting { .. }
        ));
        assert!(matches!(
            t.evaluate(Instant::now(), &T, Some(&job()), None),
            Verdict::Failed(_)
        ));
    }
}
