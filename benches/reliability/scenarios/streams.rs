//! Scenarios 7 and 8: hostile payloads mixed into a stream of good jobs, and the soak: a long mixed
//! stream at concurrency 20 with the executor's memory and descriptors sampled throughout, ending
//! with jobs no node will take.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::Plan;
use crate::{
    bed::{Bed, Setup},
    monitor::slope_per_minute,
    report::Figures,
    workload::{self, Kind, Launched, Shape},
};

pub async fn hostile_payloads(plan: &Plan) -> Figures {
    let mut bed = Bed::start("7. hostile payloads mixed in", Setup::new(4)).await;
    let launched = bed.enqueue(plan.jobs(15), plan.shape(), |i| {
        if i % 3 == 1 { Kind::Hostile } else { Kind::Numbered }
    });
    let hostile = launched.iter().filter(|l| l.kind == Kind::Hostile).count();
    bed.figures.faults.push(format!(
        "{hostile} hostile payloads among {} jobs",
        launched.len()
    ));
    bed.finish(plan.finish()).await
}

pub async fn soak(plan: &Plan) -> Figures {
    let total = if plan.quick { 100 } else { 500 };
    let mut bed = Bed::start(
        "8. soak at concurrency 20",
        Setup {
            executor_env: vec![
                // The OOM jobs' step needs a limit it can exceed; the others stay far below it.
                ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY", "128Mi".into()),
                // The unschedulable jobs end after this wait (no autoscaler here); the node has room
                // for every other pod, so none of them waits for a node.
                ("KUBERNETES_JOB_UNSCHEDULABLE_TIMEOUT", "5s".into()),
                ("RUST_LOG", "info".into()),
            ],
            ..Setup::new(20)
        },
    )
    .await;
    let shape = Shape {
        lines: 10,
        pause_ms: 50,
    };
    let started = Instant::now();
    let launched = bed.enqueue(total, shape, workload::mixed);
    cancel_while_running(&bed, &launched, plan.finish()).await;
    let unplaced = unschedulable_tail(&mut bed, total / 50, plan.finish()).await;
    let elapsed = started.elapsed();
    let samples = bed.memory.samples();
    let unexplained = without_the_schedulers_reason(&bed, &unplaced);
    let mut figures = bed.finish(plan.finish()).await;
    figures.problems.extend(unexplained);
    figures.notes.push(format!(
        "{total} jobs{}: every tenth fails a step, every tenth is OOM-killed, every tenth is cancelled \
         while running",
        if plan.quick {
            " (quick form; the full run has 500)"
        } else {
            ""
        }
    ));
    figures.notes.push(format!(
        "then {} more jobs with every node tainted NoSchedule (the node selector is per executor, so \
         a stream cannot mix them in): each must end errored with the scheduler's reason",
        unplaced.len()
    ));
    figures.notes.push(format!(
        "{} jobs in {:.0} s ({:.1} jobs/min)",
        total + unplaced.len(),
        elapsed.as_secs_f64(),
        (total + unplaced.len()) as f64 * 60.0 / elapsed.as_secs_f64()
    ));
    figures.notes.push(resource_slopes(&samples));
    figures
}

/// Taints every node NoSchedule, streams `count` jobs no node will take, waits until each ended,
/// and removes the taint; returns their ids.
async fn unschedulable_tail(bed: &mut Bed, count: usize, timeout: Duration) -> Vec<i64> {
    let nodes: Api<Node> = Api::all(bed.env.cluster.client());
    let names = bed.env.cluster.node_names();
    for name in &names {
        if let Err(e) = set_taint(&nodes, name, true).await {
            bed.figures
                .problems
                .push(format!("could not taint node {name}: {e}"));
            return Vec::new();
        }
    }
    let launched = bed.enqueue(
        count,
        Shape {
            lines: 1,
            pause_ms: 0,
        },
        |_| Kind::Unschedulable,
    );
    let ids: Vec<i64> = launched.iter().map(|l| l.id).collect();
    let ended = bed
        .env
        .frontend
        .wait_for_jobs(timeout, |records| {
            records
                .iter()
                .filter(|r| ids.contains(&r.id))
                .all(|r| r.state.is_terminal())
        })
        .await;
    if let Err(e) = ended {
        bed.figures
            .problems
            .push(format!("unschedulable jobs did not end: {e}"));
    }
    for name in &names {
        if let Err(e) = set_taint(&nodes, name, false).await {
            bed.figures
                .problems
                .push(format!("could not untaint node {name}: {e}"));
        }
    }
    ids
}

const TAINT_KEY: &str = "kube-executor.io/reliability-unschedulable";

/// Adds or removes the suite's NoSchedule taint on node `name` (the simulated nodes carry no
/// other taint once Ready, so the list is written whole).
async fn set_taint(nodes: &Api<Node>, name: &str, on: bool) -> Result<(), kube::Error> {
    let taints = if on {
        json!([{"key": TAINT_KEY, "effect": "NoSchedule"}])
    } else {
        json!(null)
    };
    let patch = json!({"spec": {"taints": taints}});
    nodes
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// The jobs of `ids` whose error message is not the scheduler's, one problem each.
fn without_the_schedulers_reason(bed: &Bed, ids: &[i64]) -> Vec<String> {
    ids.iter()
        .filter_map(|id| {
            let message = bed
                .env
                .frontend
                .job("batches", *id)
                .and_then(|r| r.error_message)
                .unwrap_or_default();
            (!message.contains("could not be scheduled")).then(|| {
                format!("unschedulable job {id} did not end with the scheduler's reason: {message:?}")
            })
        })
        .collect()
}

/// Cancels each cancel-kind job once its step prints, until every job has finished.
async fn cancel_while_running(bed: &Bed, launched: &[Launched], timeout: Duration) {
    let first_line = format!("stdout: {} {} out 1", workload::MARK, workload::STEPS[0]);
    let mut pending: Vec<i64> = launched
        .iter()
        .filter(|l| l.kind == Kind::Cancel)
        .map(|l| l.id)
        .collect();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        pending.retain(|id| {
            let Some(record) = bed.env.frontend.job("batches", *id) else {
                return false;
            };
            let running = record.log_entries.iter().any(|e| e.out.contains(&first_line));
            if running && !record.state.is_terminal() {
                // A job that finished first is no longer cancellable; it then ends completed.
                let _ = bed.env.frontend.cancel("batches", *id);
                return false;
            }
            !record.state.is_terminal()
        });
        let done = launched.iter().all(|l| {
            bed.env
                .frontend
                .job("batches", l.id)
                .is_some_and(|r| r.state.is_terminal())
        });
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// RSS and descriptor slopes after the first fifth of the run (warm-up).
fn resource_slopes(samples: &[crate::monitor::Sample]) -> String {
    let warm = &samples[samples.len() / 5..];
    let rss: Vec<(Instant, f64)> = warm.iter().map(|s| (s.at, s.rss_kib as f64 / 1024.0)).collect();
    let fds: Vec<(Instant, f64)> = warm.iter().map(|s| (s.at, s.fds as f64)).collect();
    let (rss_min, rss_max) = span(&rss);
    let (fd_min, fd_max) = span(&fds);
    format!(
        "after warm-up ({} samples): RSS {rss_min:.1}–{rss_max:.1} MiB, slope {:+.2} MiB/min; open fds \
         {fd_min:.0}–{fd_max:.0}, slope {:+.1} fds/min",
        warm.len(),
        slope_per_minute(&rss),
        slope_per_minute(&fds)
    )
}

fn span(points: &[(Instant, f64)]) -> (f64, f64) {
    points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, v)| {
            (lo.min(*v), hi.max(*v))
        })
}
