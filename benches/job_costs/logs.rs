//! Log latency (a line printed in a pod until the frontend has it) and one job's log throughput,
//! each next to a minimal client following the same container's log.

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use futures_util::{AsyncBufReadExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::LogParams,
    runtime::{WatchStreamExt, wait::await_condition, watcher},
};

use crate::{
    observe::JOB_ID_LABEL,
    procs,
    report::{LogLatency, LogThroughput, percentile},
    support::{Env, job, step},
};

const LINES: usize = 50;
const FLOOD_BYTES: usize = 64 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(600);

/// One line every 100 ms, each carrying the time it was printed; the frontend's copy and a minimal
/// follower's copy are timed as they arrive.
pub async fn latency(env: &Env) -> LogLatency {
    let command = format!("for i in $(seq 1 {LINES}); do echo \"lat $i $(date +%s%N)\"; sleep 0.1; done");
    let id = env.frontend.enqueue(job(vec![step("latency", &[&command])]));
    let executor = env.spawn_executor(&[("RUST_LOG", "warn"), ("EXECUTOR_INSTANCE_ID", "bench-latency")]);
    let floor = tokio::spawn(follow_step_log(env.cluster.client(), id, false));
    let seen = Mutex::new(BTreeMap::<u64, f64>::new());
    env.frontend
        .wait_for_job("batches", id, TIMEOUT, |record| {
            let now = now_ns();
            let mut seen = seen.lock().expect("seen lines");
            for entry in &record.log_entries {
                for line in entry.out.lines() {
                    if let Some((index, printed)) = stamped(line.trim_start_matches("stdout: ")) {
                        seen.entry(index).or_insert((now - printed) as f64 / 1e6);
                    }
                }
            }
            record.state.is_terminal()
        })
        .await
        .expect("the latency job ends");
    executor.kill_and_wait().await;
    let floor = floor.await.expect("the floor follower");
    let executor_ms: Vec<f64> = seen.into_inner().expect("seen lines").into_values().collect();
    let floor_ms: Vec<f64> = floor
        .lines
        .iter()
        .filter_map(|(line, at)| Some((at - stamped(line)?.1) as f64 / 1e6))
        .collect();
    LogLatency {
        lines: executor_ms.len(),
        p50_ms: percentile(&executor_ms, 50.0),
        p99_ms: percentile(&executor_ms, 99.0),
        floor_p50_ms: percentile(&floor_ms, 50.0),
        floor_p99_ms: percentile(&floor_ms, 99.0),
    }
}

/// One job printing `FLOOD_BYTES` of 128-byte lines as fast as it can.
pub async fn throughput(env: &Env) -> LogThroughput {
    let command = format!("head -c {FLOOD_BYTES} /dev/zero | tr '\\0' x | fold -w 127");
    let id = env.frontend.enqueue(job(vec![step("flood", &[&command])]));
    let executor = env.spawn_executor(&[("RUST_LOG", "warn"), ("EXECUTOR_INSTANCE_ID", "bench-flood")]);
    let pid = executor.pid() as u32;
    let cpu_before = procs::cpu_seconds(pid);
    let floor = tokio::spawn(follow_step_log(env.cluster.client(), id, true));
    let floor = floor.await.expect("the floor follower");
    let record = env.wait_terminal(id, TIMEOUT).await;
    let cpu = procs::cpu_seconds(pid) - cpu_before;
    executor.kill_and_wait().await;
    let entry = record
        .log_entries
        .iter()
        .find(|e| e.key == "step.kubernetes.flood")
        .expect("the flood step's entry");
    let first_line_at = floor.first_stamp.expect("the floor saw the first line");
    let executor_done = entry.last_update_at.expect("the entry was updated");
    let mib = FLOOD_BYTES as f64 / (1024.0 * 1024.0);
    let seconds = |end: Timestamp| (end.as_microsecond() - first_line_at.as_microsecond()) as f64 / 1e6;
    LogThroughput {
        mib,
        executor_mib_per_s: mib / seconds(executor_done),
        floor_mib_per_s: mib / seconds(floor.ended_at),
        executor_cpu_seconds_per_mib: cpu / mib,
    }
}

fn now_ns() -> i128 {
    Timestamp::now().as_nanosecond()
}

/// `lat <index> <printed at, ns>`.
fn stamped(line: &str) -> Option<(u64, i128)> {
    let mut parts = line.strip_prefix("lat ")?.split(' ');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

struct Followed {
    lines: Vec<(String, i128)>,
    first_stamp: Option<Timestamp>,
    ended_at: Timestamp,
}

/// Follows job `id`'s step container like a minimal client: waits for its pod and the container to
/// start, then reads the log to its end, noting when each line arrived.
async fn follow_step_log(client: kube::Client, id: i64, timestamps: bool) -> Followed {
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod = wait_for_pod(&pods, id).await;
    let name = pod.name_any();
    let container = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|c| {
            c.iter()
                .find(|c| c.name.starts_with("step-"))
                .map(|c| c.name.clone())
        })
        .expect("a step container");
    let started = {
        let container = container.clone();
        move |pod: Option<&Pod>| {
            pod.and_then(|p| {
                p.status
                    .as_ref()?
                    .init_container_statuses
                    .as_ref()?
                    .iter()
                    .find(|s| s.name == container)
                    .cloned()
            })
            .and_then(|s| s.state)
            .is_some_and(|state| state.running.is_some() || state.terminated.is_some())
        }
    };
    tokio::time::timeout(TIMEOUT, await_condition(pods.clone(), &name, started))
        .await
        .expect("the step container starts in time")
        .expect("watch the job pod");
    let params = LogParams {
        container: Some(container),
        follow: true,
        timestamps,
        ..LogParams::default()
    };
    let reader = pods.log_stream(&name, &params).await.expect("open the log");
    let mut lines = std::pin::pin!(reader.lines());
    let mut followed = Followed {
        lines: Vec::new(),
        first_stamp: None,
        ended_at: Timestamp::now(),
    };
    while let Some(line) = lines.next().await {
        let line = line.expect("read the log");
        if timestamps {
            if followed.first_stamp.is_none() {
                followed.first_stamp = line.split(' ').next().and_then(|s| s.parse().ok());
            }
        } else {
            followed.lines.push((line, now_ns()));
        }
    }
    followed.ended_at = Timestamp::now();
    followed
}

async fn wait_for_pod(pods: &Api<Pod>, id: i64) -> Pod {
    let config = watcher::Config::default().labels(&format!("{JOB_ID_LABEL}={id}"));
    let mut created = std::pin::pin!(watcher(pods.clone(), config).applied_objects());
    match tokio::time::timeout(TIMEOUT, created.next()).await {
        Ok(Some(Ok(pod))) => pod,
        other => panic!("the job's pod did not appear: {other:?}"),
    }
}
