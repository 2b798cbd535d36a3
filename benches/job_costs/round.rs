//! One round of the bench: a batch of queued jobs run by the floor client or by executors, with
//! what it cost measured from outside.

use std::{sync::Arc, time::Duration};

use dev_frontend::{JobRecord, JobState, MarkKind};
use jiff::Timestamp;

use crate::{
    audit::{self, AuditLog},
    floor::{self, FloorClient},
    observe::Observer,
    procs,
    report::{Overheads, Round, STAGES, Streaming},
    support::{Env, Executor, job, step},
};

const ROUND_TIMEOUT: Duration = Duration::from_secs(1800);
pub const EXECUTOR_AGENT: &str = "kube-executor/";

fn trivial_job() -> dev_frontend::NewJob {
    job(vec![step("trivial", &["true"])])
}

/// The floor client running `jobs` jobs, `concurrency` at a time.
pub async fn floor(env: &Arc<Env>, observer: &Arc<Observer>, jobs: usize, concurrency: usize) -> Round {
    let ids: Vec<i64> = (0..jobs).map(|_| env.frontend.enqueue(trivial_job())).collect();
    let client = Arc::new(FloorClient {
        http: reqwest::Client::new(),
        frontend: env.frontend.url(),
        token: env.frontend.access_token().unwrap_or_default().to_string(),
        kube: env.cluster.client(),
        config: kube_executor::config::Config::from_vars(
            env.executor_env(&[("EXECUTOR_INSTANCE_ID", floor::NAME), ("HOSTNAME", floor::NAME)]),
        )
        .expect("the floor's executor configuration"),
    });
    let cluster_cpu = procs::total_cpu_seconds(&env.cluster.process_ids());
    let started = std::time::Instant::now();
    floor::run(client, observer.clone(), jobs, concurrency).await;
    let elapsed = started.elapsed();
    let records = terminal_records(env, &ids).await;
    Round {
        label: "floor client".to_string(),
        concurrency,
        replicas: 0,
        jobs,
        completed: completed(&records),
        overheads: overheads(observer, &records),
        requests: audit::Counts::new(),
        jobs_per_minute: jobs as f64 / elapsed.as_secs_f64() * 60.0,
        executor_cpu_seconds: 0.0,
        cluster_cpu_seconds: procs::total_cpu_seconds(&env.cluster.process_ids()) - cluster_cpu,
        executor_peak_rss_kib: 0,
        max_live_per_instance: observer.take_max_live().into_values().max().unwrap_or(0),
    }
}

/// `replicas` executors sharing `concurrency` slots run `Plan::jobs_at(concurrency, replicas)` trivial jobs.
pub async fn executors(
    env: &Arc<Env>,
    observer: &Arc<Observer>,
    concurrency: usize,
    replicas: usize,
) -> Round {
    let jobs = crate::Plan::jobs_at(concurrency, replicas);
    let mut audit = AuditLog::from_now(env.cluster.audit_log_path());
    observer.take_max_live();
    let ids: Vec<i64> = (0..jobs).map(|_| env.frontend.enqueue(trivial_job())).collect();
    let cluster_cpu = procs::total_cpu_seconds(&env.cluster.process_ids());
    let slots = concurrency.div_ceil(replicas);
    let executors: Vec<Executor> = (0..replicas)
        .map(|replica| spawn(env, &format!("bench-{concurrency}-{replica}"), slots))
        .collect();
    let sampler = RssSampler::start(executors.iter().map(|e| e.pid() as u32).collect());
    let records = terminal_records(env, &ids).await;
    let (peak_rss, executor_cpu) = sampler.stop();
    let cluster_cpu = procs::total_cpu_seconds(&env.cluster.process_ids()) - cluster_cpu;
    let first_dequeue = records.iter().filter_map(|r| r.started_at).min();
    let last_mark = records.iter().filter_map(mark_time).max();
    let elapsed = span_seconds(first_dequeue, last_mark);
    for executor in executors {
        executor.kill_and_wait().await;
    }
    env.wait_no_objects(Duration::from_secs(120)).await;
    Round {
        label: format!("executor ×{replicas}"),
        concurrency,
        replicas,
        jobs,
        completed: completed(&records),
        overheads: overheads(observer, &records),
        requests: audit.take(EXECUTOR_AGENT),
        jobs_per_minute: jobs as f64 / elapsed * 60.0,
        executor_cpu_seconds: executor_cpu,
        cluster_cpu_seconds: cluster_cpu,
        executor_peak_rss_kib: peak_rss,
        max_live_per_instance: observer.take_max_live().into_values().max().unwrap_or(0),
    }
}

/// The executor's resident memory once ready with nothing to do.
pub async fn idle_rss(env: &Arc<Env>) -> u64 {
    let executor = spawn(env, "bench-idle", 10);
    executor.wait_ready(Duration::from_secs(60)).await;
    // Ready means its watches are listed and synced: what an idle executor holds.
    let rss = procs::rss_kib(executor.pid() as u32);
    executor.kill_and_wait().await;
    rss
}

/// `concurrency` jobs printing a line a second, all followed at once.
pub async fn streaming(env: &Arc<Env>, concurrency: usize) -> Streaming {
    let gate = crate::support::Gate::new();
    let open = gate.path("open");
    let command = format!(
        "i=0; while [ ! -e {} ]; do i=$((i+1)); echo tick-$i; sleep 1; done",
        open.display()
    );
    let ids: Vec<i64> = (0..concurrency)
        .map(|_| env.frontend.enqueue(job(vec![step("stream", &[&command])])))
        .collect();
    let executor = spawn(env, &format!("bench-stream-{concurrency}"), concurrency);
    let started = std::time::Instant::now();
    // Every job's step entry has a second line: all of them are being followed.
    for id in &ids {
        env.wait_for_output("batches", *id, "tick-2", ROUND_TIMEOUT).await;
    }
    let pid = executor.pid() as u32;
    let rss = procs::rss_kib(pid);
    let ramp_seconds = started.elapsed().as_secs_f64();
    gate.open();
    let records = terminal_records(env, &ids).await;
    let completed = completed(&records);
    let peak = executor.peak_rss_kib();
    executor.kill_and_wait().await;
    env.wait_no_objects(Duration::from_secs(300)).await;
    Streaming {
        concurrency,
        rss_kib: rss,
        peak_rss_kib: peak,
        ramp_seconds,
        completed,
    }
}

fn spawn(env: &Env, instance: &str, slots: usize) -> Executor {
    env.spawn_executor(&[
        ("EXECUTOR_INSTANCE_ID", instance),
        ("HOSTNAME", instance),
        ("EXECUTOR_MAXIMUM_NUM_JOBS", &slots.to_string()),
        ("RUST_LOG", "warn"),
        // Hundreds of Jobs at once queue up in the controller-manager on this small machine; the
        // bench measures that wait rather than failing the jobs it delays.
        ("KUBERNETES_JOB_POD_CREATION_TIMEOUT", "10m"),
        ("KUBERNETES_JOB_PENDING_TIMEOUT", "10m"),
    ])
}

/// The jobs' records once each is terminal; a job that did not complete is reported by the round
/// (and fails the bench), not a reason to stop measuring.
async fn terminal_records(env: &Env, ids: &[i64]) -> Vec<JobRecord> {
    let mut records = Vec::with_capacity(ids.len());
    for id in ids {
        let record = env.wait_terminal(*id, ROUND_TIMEOUT).await;
        if record.state != JobState::Completed {
            eprintln!("job {id} ended {:?}: {:?}", record.state, record.error_message);
        }
        records.push(record);
    }
    records
}

fn completed(records: &[JobRecord]) -> usize {
    records.iter().filter(|r| r.state == JobState::Completed).count()
}

fn mark_time(record: &JobRecord) -> Option<Timestamp> {
    record
        .mark_calls
        .iter()
        .find(|m| m.kind == MarkKind::Complete && m.status == 204)
        .map(|m| m.at)
}

fn span_seconds(from: Option<Timestamp>, to: Option<Timestamp>) -> f64 {
    match (from, to) {
        (Some(from), Some(to)) => (to.as_millisecond() - from.as_millisecond()).max(1) as f64 / 1000.0,
        _ => f64::NAN,
    }
}

fn millis_between(from: Timestamp, to: Timestamp) -> f64 {
    (to.as_microsecond() - from.as_microsecond()) as f64 / 1000.0
}

fn overheads(observer: &Observer, records: &[JobRecord]) -> Overheads {
    let mut to_created = Vec::new();
    let mut to_marked = Vec::new();
    let mut stages: [Vec<f64>; STAGES.len()] = Default::default();
    for record in records {
        if let (Some(dequeued), Some(created)) = (record.started_at, observer.job_created(record.id)) {
            to_created.push(millis_between(dequeued, created));
        }
        if let (Some(succeeded), Some(marked)) = (observer.pod_succeeded(record.id), mark_time(record)) {
            to_marked.push(millis_between(succeeded, marked));
            for (samples, sample) in stages.iter_mut().zip(stage_samples(record, succeeded, marked)) {
                samples.extend(sample);
            }
        }
    }
    Overheads::from_samples(to_created, to_marked, stages)
}

/// One job's figure for each of [`STAGES`]; a stage the job's calls do not show is `None` (the
/// floor client adds no step entries).
fn stage_samples(record: &JobRecord, succeeded: Timestamp, marked: Timestamp) -> [Option<f64>; STAGES.len()] {
    let entry = |key: &str| record.log_entries.iter().find(|e| e.key == key);
    let steps_closed = record
        .log_entries
        .iter()
        .filter(|e| !e.key.starts_with("teardown."))
        .map(|e| e.last_update_at.unwrap_or(e.added_at))
        .max();
    let teardown_job = entry("teardown.kubernetes.job");
    let teardown_fs = entry("teardown.fs").map(|e| e.added_at);
    let gap = |from: Option<Timestamp>, to: Option<Timestamp>| Some(millis_between(from?, to?));
    [
        gap(Some(succeeded), steps_closed),
        gap(steps_closed.or(Some(succeeded)), teardown_job.map(|e| e.added_at)),
        gap(teardown_job.map(|e| e.added_at), teardown_fs),
        gap(teardown_fs, Some(marked)),
        teardown_job.and_then(|e| e.duration_ms).map(|ms| ms as f64),
    ]
}

/// Samples the executors' resident memory every 100 ms: the most they held together.
struct RssSampler {
    pids: Vec<u32>,
    cpu_before: f64,
    task: tokio::task::JoinHandle<()>,
    peak: Arc<std::sync::atomic::AtomicU64>,
}

impl RssSampler {
    fn start(pids: Vec<u32>) -> RssSampler {
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = tokio::spawn({
            let (pids, peak) = (pids.clone(), peak.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    let total: u64 = pids.iter().map(|pid| procs::rss_kib(*pid)).sum();
                    peak.fetch_max(total, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        RssSampler {
            cpu_before: procs::total_cpu_seconds(&pids),
            pids,
            task,
            peak,
        }
    }

    /// The peak resident memory seen and the CPU seconds used since the start.
    fn stop(self) -> (u64, f64) {
        self.task.abort();
        let cpu = procs::total_cpu_seconds(&self.pids) - self.cpu_before;
        (self.peak.load(std::sync::atomic::Ordering::Relaxed), cpu)
    }
}
