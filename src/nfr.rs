//! The two operational NFRs, measured continuously: container restarts (job pods and the
//! executor's own pod) and the soft ulimits job pods run with, served on `/nfr`, in metrics and on
//! the status page.
//!
//! Job pods are read from the shared pod watch, so measuring costs no API call: each pod's
//! `restartCount`s, and the limits its setup container reports as a [`ULIMITS_MARK`] line in its
//! termination message. The executor's own pod (named through the Downward API) is read at
//! startup and then once per heartbeat interval.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::Api;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use crate::k8s::script::ULIMITS_MARK;
use crate::k8s::{failure, job_spec::SETUP_CONTAINER, watch::ClusterView};

/// How far back `podRestarts.recent` counts.
pub const RESTART_WINDOW: Duration = Duration::from_secs(3600);

/// Default minimum soft limit of open files (`EXECUTOR_RECOMMENDED_ULIMIT_NOFILE`).
pub const DEFAULT_RECOMMENDED_NOFILE: u64 = 65536;
/// Default minimum soft limit of processes (`EXECUTOR_RECOMMENDED_ULIMIT_NPROC`).
pub const DEFAULT_RECOMMENDED_NPROC: u64 = 4096;

/// One measured soft limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Unlimited,
    Value(u64),
}

impl Limit {
    fn reaches(self, minimum: u64) -> bool {
        match self {
            Limit::Unlimited => true,
            Limit::Value(value) => value >= minimum,
        }
    }
}

/// What one job pod's setup container measured; `None` where the limit could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ulimits {
    pub nofile: Option<Limit>,
    pub nproc: Option<Limit>,
}

/// The minimums a job pod's soft limits should reach, and also the per-limit failure counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LimitFigures {
    pub nofile: u64,
    pub nproc: u64,
}

/// Reads the measurement line from a termination message; `None` when there is none or it
/// measured nothing.
pub fn parse_ulimits(message: &str) -> Option<Ulimits> {
    let line = message.lines().find_map(|line| {
        line.trim()
            .strip_prefix(ULIMITS_MARK)
            .filter(|rest| rest.is_empty() || rest.starts_with(' '))
    })?;
    let mut measured = Ulimits {
        nofile: None,
        nproc: None,
    };
    for field in line.split_whitespace() {
        let Some((name, value)) = field.split_once('=') else {
            continue;
        };
        let limit = match value {
            "unlimited" | "infinity" => Some(Limit::Unlimited),
            digits => digits.parse().ok().map(Limit::Value),
        };
        match name {
            "nofile" => measured.nofile = limit,
            "nproc" => measured.nproc = limit,
            _ => {}
        }
    }
    (measured.nofile.is_some() || measured.nproc.is_some()).then_some(measured)
}

/// Which measured limits fall short of `recommended` (unmeasured limits never do).
pub fn shortfalls(measured: Ulimits, recommended: LimitFigures) -> LimitFigures {
    let short = |limit: Option<Limit>, minimum| u64::from(limit.is_some_and(|l| !l.reaches(minimum)));
    LimitFigures {
        nofile: short(measured.nofile, recommended.nofile),
        nproc: short(measured.nproc, recommended.nproc),
    }
}

/// `/nfr`: both NFRs as they stand.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub pod_restarts: PodRestarts,
    pub ulimits: UlimitsReport,
    pub updated_at: Timestamp,
}

/// Container restarts: of this executor's job pods, of its own pod, and within [`RESTART_WINDOW`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRestarts {
    pub total: u64,
    pub jobs: u64,
    /// `None` while the executor's own pod is unknown (no `POD_NAME`) or could not be read yet.
    pub executor: Option<u64>,
    pub recent: u64,
    pub recent_window_seconds: u64,
}

/// Job pods' soft limits against the recommended minimums.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UlimitsReport {
    pub measured: u64,
    pub compliant: u64,
    /// 0–100; `None` before the first measurement.
    pub percent_compliant: Option<f64>,
    pub recommended: LimitFigures,
    /// How many measured pods fell short, per limit.
    pub failures: LimitFigures,
}

/// The shared NFR state; cheap to clone.
#[derive(Debug, Clone)]
pub struct Nfr {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    recommended: LimitFigures,
    /// Pods created before this are history: their earlier restarts are not recent.
    started_at: Timestamp,
    updated_at: Timestamp,
    /// Job pods by UID, while the watch still holds them.
    pods: HashMap<String, PodRecord>,
    job_restarts: u64,
    executor_pod: Option<PodRecord>,
    /// When each restart counted in `recent` happened, oldest first.
    recent: VecDeque<Timestamp>,
    measured: u64,
    compliant: u64,
    failures: LimitFigures,
}

/// The highest `restartCount` seen per container of one pod, and whether its limits were counted.
#[derive(Debug, Default)]
struct PodRecord {
    restarts: HashMap<String, i32>,
    measured: bool,
}

impl PodRecord {
    /// Takes the pod's current counts; returns the restarts not seen before.
    fn observe_restarts(&mut self, statuses: &[&ContainerStatus]) -> u64 {
        let mut new = 0;
        for cs in statuses {
            let seen = self.restarts.entry(cs.name.clone()).or_insert(0);
            if cs.restart_count > *seen {
                new += u64::try_from(cs.restart_count - *seen).unwrap_or(0);
                *seen = cs.restart_count;
            }
        }
        new
    }

    fn total(&self) -> u64 {
        self.restarts
            .values()
            .map(|count| u64::try_from(*count).unwrap_or(0))
            .sum()
    }
}

impl Nfr {
    pub fn new(recommended: LimitFigures, now: Timestamp) -> Self {
        Self {
            inner: Arc::new(Mutex::new(State {
                recommended,
                started_at: now,
                updated_at: now,
                pods: HashMap::new(),
                job_restarts: 0,
                executor_pod: None,
                recent: VecDeque::new(),
                measured: 0,
                compliant: 0,
                failures: LimitFigures::default(),
            })),
        }
    }

    /// Takes in every job pod the watch holds: new restarts and first measurements. Pods gone
    /// from the watch are forgotten (their counts stay in the totals).
    pub fn observe_job_pods(&self, pods: &[Arc<Pod>], now: Timestamp) {
        let mut state = self.lock();
        let mut present = HashSet::new();
        for pod in pods {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            let history = created_before(pod, state.started_at);
            let statuses: Vec<&ContainerStatus> = failure::container_statuses(pod).collect();
            let mut record = state.pods.remove(&uid).unwrap_or_default();
            let first_sighting = record.restarts.is_empty();
            let new = record.observe_restarts(&statuses);
            state.job_restarts += new;
            state.add_recent(new, history && first_sighting, &statuses, now);
            if !record.measured
                && let Some(measured) = setup_measurement(&statuses)
            {
                record.measured = true;
                state.count_measurement(measured);
            }
            present.insert(uid.clone());
            state.pods.insert(uid, record);
        }
        state.pods.retain(|uid, _| present.contains(uid));
        state.prune(now);
        state.updated_at = now;
    }

    /// Takes in the executor's own pod, as just read from the API server.
    pub fn observe_executor_pod(&self, pod: &Pod, now: Timestamp) {
        let mut state = self.lock();
        let statuses: Vec<&ContainerStatus> = failure::container_statuses(pod).collect();
        // The first read finds the restarts that led to this process: history.
        let first_read = state.executor_pod.is_none();
        let mut record = state.executor_pod.take().unwrap_or_default();
        let new = record.observe_restarts(&statuses);
        state.add_recent(new, first_read, &statuses, now);
        state.executor_pod = Some(record);
        state.prune(now);
        state.updated_at = now;
    }

    /// Both NFRs as of `now`.
    pub fn snapshot(&self, now: Timestamp) -> Snapshot {
        let mut state = self.lock();
        state.prune(now);
        let executor = state.executor_pod.as_ref().map(PodRecord::total);
        let percent_compliant = (state.measured > 0).then(|| {
            // Two decimals: enough for a dashboard, and 1 of 3 does not print 16 digits.
            let percent = state.compliant as f64 * 100.0 / state.measured as f64;
            (percent * 100.0).round() / 100.0
        });
        Snapshot {
            pod_restarts: PodRestarts {
                total: state.job_restarts + executor.unwrap_or(0),
                jobs: state.job_restarts,
                executor,
                recent: state.recent.len() as u64,
                recent_window_seconds: RESTART_WINDOW.as_secs(),
            },
            ulimits: UlimitsReport {
                measured: state.measured,
                compliant: state.compliant,
                percent_compliant,
                recommended: state.recommended,
                failures: state.failures,
            },
            updated_at: state.updated_at,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // NB: the figures stay meaningful even if a holder panicked; never held across an await.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Puts `new` restarts into the window. Restarts of history (a pod older than this process,
    /// seen for the first time) happened at unknown times, except the latest, which each container
    /// records as its last termination.
    fn add_recent(&mut self, new: u64, history: bool, statuses: &[&ContainerStatus], now: Timestamp) {
        if new == 0 {
            return;
        }
        if !history {
            for _ in 0..new {
                self.recent.push_back(now);
            }
            return;
        }
        let mut latest: Vec<Timestamp> = statuses
            .iter()
            .filter(|cs| cs.restart_count > 0)
            .filter_map(|cs| last_terminated_at(cs))
            .collect();
        latest.sort();
        self.recent.extend(latest);
        self.recent.make_contiguous().sort();
    }

    fn count_measurement(&mut self, measured: Ulimits) {
        let short = shortfalls(measured, self.recommended);
        self.measured += 1;
        if short == LimitFigures::default() {
            self.compliant += 1;
        }
        self.failures.nofile += short.nofile;
        self.failures.nproc += short.nproc;
    }

    /// Drops restarts older than the window.
    fn prune(&mut self, now: Timestamp) {
        let window = SignedDuration::try_from(RESTART_WINDOW).unwrap_or(SignedDuration::MAX);
        let oldest = now.checked_sub(window).unwrap_or(Timestamp::MIN);
        while self.recent.front().is_some_and(|at| *at < oldest) {
            self.recent.pop_front();
        }
    }
}

/// The limits the pod's setup container reported, once it completed.
fn setup_measurement(statuses: &[&ContainerStatus]) -> Option<Ulimits> {
    let setup = statuses.iter().find(|cs| cs.name == SETUP_CONTAINER)?;
    let terminated = setup.state.as_ref()?.terminated.as_ref()?;
    if terminated.exit_code != 0 {
        return None;
    }
    parse_ulimits(terminated.message.as_deref()?)
}

fn created_before(pod: &Pod, started_at: Timestamp) -> bool {
    pod.metadata
        .creation_timestamp
        .as_ref()
        .is_some_and(|created| created.0 < started_at)
}

fn last_terminated_at(cs: &ContainerStatus) -> Option<Timestamp> {
    let finished = cs
        .last_state
        .as_ref()?
        .terminated
        .as_ref()?
        .finished_at
        .as_ref()?;
    Some(finished.0)
}

/// Keeps the job-pod figures current: re-reads the watch's pods whenever it changes.
pub async fn observe_job_pods(view: ClusterView, nfr: Nfr, stop: CancellationToken) {
    let mut changes = view.subscribe();
    loop {
        changes.borrow_and_update();
        nfr.observe_job_pods(&view.pods(), Timestamp::now());
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

/// Reads the executor's own pod now and then every `interval`, for its restart count. A pod that
/// cannot be read (not found, or the Role lacks `get pods` in its namespace) is reported once and
/// leaves `podRestarts.executor` as it was.
pub async fn observe_executor_pod(
    pods: Api<Pod>,
    name: String,
    nfr: Nfr,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match pods.get(&name).await {
            Ok(pod) => nfr.observe_executor_pod(&pod, Timestamp::now()),
            Err(error) if !warned => {
                warned = true;
                warn!(pod = %name, %error, "cannot read the executor's own pod; its restarts are not counted");
            }
            Err(error) => debug!(pod = %name, %error, "cannot read the executor's own pod"),
        }
    }
}

#[cfg(test)]
mod tests;
