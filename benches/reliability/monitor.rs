//! What the suite observes on its own, independently of the executor: the executor's Jobs in the
//! cluster (concurrency, executions per queue job, creation times), the executor process's memory
//! and descriptors, and its `/readyz` answers.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};
use tokio_util::sync::CancellationToken;

use crate::support::{INSTANCE, http_status, live_jobs::LiveJobs};

/// A watch on the executor's Jobs, kept by the suite.
pub struct ClusterMonitor {
    state: Arc<Mutex<JobsSeen>>,
    stop: CancellationToken,
}

struct JobsSeen {
    /// Job name → UID of every Job ever seen (the name carries the queue job id).
    uids_by_name: BTreeMap<String, BTreeSet<String>>,
    /// Jobs neither finished nor being deleted, as last seen.
    active: LiveJobs,
    /// When each new Job UID was first seen.
    created: Vec<Instant>,
}

impl Default for JobsSeen {
    fn default() -> Self {
        JobsSeen {
            uids_by_name: BTreeMap::new(),
            active: LiveJobs::new(|job| !job_finished(job) && LiveJobs::not_deleting(job)),
            created: Vec::new(),
        }
    }
}

impl ClusterMonitor {
    pub fn start(client: kube::Client) -> ClusterMonitor {
        let state = Arc::new(Mutex::new(JobsSeen::default()));
        let stop = CancellationToken::new();
        let jobs: Api<Job> = Api::namespaced(client, "default");
        let config = watcher::Config::default().labels(&format!("kube-executor.io/instance={INSTANCE}"));
        let stream = watcher(jobs, config).default_backoff();
        let seen = state.clone();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                let next = tokio::select! {
                    _ = stopped.cancelled() => return,
                    next = stream.next() => next,
                };
                match next {
                    Some(Ok(event)) => lock(&seen).apply(event),
                    // The watcher re-lists by itself (the API server may be down on purpose).
                    Some(Err(_)) => {}
                    None => return,
                }
            }
        });
        ClusterMonitor { state, stop }
    }

    /// The most Jobs seen unfinished at once.
    pub fn max_active(&self) -> usize {
        lock(&self.state).active.max_total()
    }

    /// How many distinct Jobs were created for the Kubernetes Job name `name`.
    pub fn executions(&self, name: &str) -> usize {
        lock(&self.state).uids_by_name.get(name).map_or(0, BTreeSet::len)
    }

    /// The first Job creation seen at or after `instant`.
    pub fn first_creation_after(&self, instant: Instant) -> Option<Instant> {
        lock(&self.state)
            .created
            .iter()
            .copied()
            .filter(|c| *c >= instant)
            .min()
    }
}

impl Drop for ClusterMonitor {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl JobsSeen {
    fn apply(&mut self, event: watcher::Event<Job>) {
        if let watcher::Event::Apply(job) | watcher::Event::InitApply(job) = &event
            && let (Some(name), Some(uid)) = (job.metadata.name.clone(), job.metadata.uid.clone())
            && self.uids_by_name.entry(name).or_default().insert(uid)
        {
            self.created.push(Instant::now());
        }
        self.active.apply(&event);
    }
}

/// A Job with a true `Complete` or `Failed` condition: its pod no longer runs.
fn job_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding it would already have failed the scenario.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Samples the executor process's resident memory and open descriptors.
pub struct ProcessSampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    pid: Arc<std::sync::atomic::AtomicI32>,
    stop: CancellationToken,
}

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub rss_kib: u64,
    pub peak_kib: u64,
    pub fds: usize,
}

impl ProcessSampler {
    pub fn start(pid: i32, every: Duration) -> ProcessSampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let pid = Arc::new(std::sync::atomic::AtomicI32::new(pid));
        let stop = CancellationToken::new();
        let (into, watched, stopped) = (samples.clone(), pid.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let pid = watched.load(std::sync::atomic::Ordering::Relaxed);
                if let Some(sample) = sample(pid) {
                    lock(&into).push(sample);
                }
            }
        });
        ProcessSampler { samples, pid, stop }
    }

    /// Follows a restarted executor.
    pub fn follow(&self, pid: i32) {
        self.pid.store(pid, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn samples(&self) -> Vec<Sample> {
        lock(&self.samples).clone()
    }

    /// The highest peak RSS any sample saw, in KiB.
    pub fn peak_kib(&self) -> u64 {
        self.samples().iter().map(|s| s.peak_kib).max().unwrap_or(0)
    }
}

impl Drop for ProcessSampler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn sample(pid: i32) -> Option<Sample> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some(Sample {
        at: Instant::now(),
        rss_kib: crate::support::status_kib(pid, "VmRSS")?,
        peak_kib: crate::support::status_kib(pid, "VmHWM")?,
        fds,
    })
}

/// Least-squares slope of `value` over time in units per minute.
pub fn slope_per_minute(points: &[(Instant, f64)]) -> f64 {
    let Some(&(origin, _)) = points.first() else {
        return 0.0;
    };
    let xs: Vec<f64> = points
        .iter()
        .map(|(t, _)| (*t - origin).as_secs_f64() / 60.0)
        .collect();
    let n = xs.len() as f64;
    let mean_x = xs.iter().sum::<f64>() / n;
    let mean_y = points.iter().map(|(_, y)| y).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (x, (_, y)) in xs.iter().zip(points) {
        num += (x - mean_x) * (y - mean_y);
        den += (x - mean_x) * (x - mean_x);
    }
    if den == 0.0 { 0.0 } else { num / den }
}

/// Polls the executor's `/readyz` and keeps every answer with its time.
pub struct ReadySampler {
    answers: Arc<Mutex<Vec<(Instant, bool)>>>,
    addr: Arc<Mutex<SocketAddr>>,
    stop: CancellationToken,
}

impl ReadySampler {
    pub fn start(addr: SocketAddr) -> ReadySampler {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let addr = Arc::new(Mutex::new(addr));
        let stop = CancellationToken::new();
        let (into, target, stopped) = (answers.clone(), addr.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let addr = *lock(&target);
                let ready = tokio::time::timeout(Duration::from_secs(2), http_status(addr, "/readyz"))
                    .await
                    .ok()
                    .flatten()
                    == Some(200);
                lock(&into).push((Instant::now(), ready));
            }
        });
        ReadySampler { answers, addr, stop }
    }

    /// Follows a restarted executor's health server.
    pub fn follow(&self, addr: SocketAddr) {
        *lock(&self.addr) = addr;
    }

    /// Whether some answer between `from` and `to` was "not ready".
    pub fn failed_between(&self, from: Instant, to: Instant) -> bool {
        lock(&self.answers)
            .iter()
            .any(|(at, ready)| *at >= from && *at <= to && !ready)
    }

    /// Whether the last answer was "ready".
    pub fn ready_now(&self) -> bool {
        lock(&self.answers).last().is_some_and(|(_, ready)| *ready)
    }
}

impl Drop for ReadySampler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
