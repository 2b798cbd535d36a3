//! The suite's verdicts, read from the frontend's records and the suite's own watch of the cluster:
//! terminal states, executions, every numbered line once and in order, objects left behind.

use std::time::Duration;

use dev_frontend::{DevFrontend, JobRecord, JobState, LogEntryRecord};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::{Api, api::ListParams};

use crate::{
    monitor::ClusterMonitor,
    support::{Env, INSTANCE},
    workload::{Launched, MARK, STEPS},
};

/// The must-be-zero figures and what explains them.
#[derive(Debug, Default)]
pub struct Tally {
    pub lost: usize,
    pub duplicates: usize,
    pub lines_wrong: usize,
    /// Runs beyond the first, where the fault forced a retry.
    pub retried: usize,
    pub problems: Vec<String>,
}

/// Judges every job of a scenario once it is over.
pub fn judge(frontend: &DevFrontend, monitor: &ClusterMonitor, jobs: &[Launched]) -> Tally {
    let mut tally = Tally::default();
    for launched in jobs {
        let id = launched.id;
        let Some(record) = frontend.job("batches", id) else {
            tally.lost += 1;
            tally
                .problems
                .push(format!("job {id} is unknown to the frontend"));
            continue;
        };
        judge_one(&record, launched, monitor, &mut tally);
    }
    tally
}

fn judge_one(record: &JobRecord, launched: &Launched, monitor: &ClusterMonitor, tally: &mut Tally) {
    let (id, kind) = (record.id, launched.kind);
    if !record.state.is_terminal() {
        tally.lost += 1;
        tally
            .problems
            .push(format!("job {id} never finished: {:?}", record.state));
        return;
    }
    if record.state != kind.expected() {
        tally.problems.push(format!(
            "job {id} ({kind:?}) ended {:?}, expected {:?}: {:?}",
            record.state,
            kind.expected(),
            record.error_message
        ));
    }
    let runs = record.num_dequeues as usize;
    // The frontend revokes a run's token on its first accepted mark, so more accepted marks than
    // runs, or two that finish the job, mean a job was reported twice.
    let accepted = record.mark_calls.iter().filter(|m| m.status == 204);
    let finishing = accepted
        .clone()
        .filter(|m| m.kind != dev_frontend::MarkKind::Errored)
        .count();
    let extra_marks = accepted.count().saturating_sub(runs) + finishing.saturating_sub(1);
    if extra_marks > 0 {
        tally.duplicates += extra_marks;
        tally
            .problems
            .push(format!("job {id} was reported twice: {:?}", record.mark_calls));
    }
    let created = monitor.executions(&format!("sg-executor-job-batches-{id}"));
    // Every Job is one execution; a dequeue that created no Job (a refused payload) is none.
    if created > runs {
        tally.duplicates += created - runs;
        tally
            .problems
            .push(format!("job {id}: {created} Jobs created for {runs} dequeues"));
    }
    if runs > 1 {
        if !launched.may_retry {
            tally.duplicates += runs - 1;
            tally
                .problems
                .push(format!("job {id} ran {runs} times without a fault forcing it"));
        } else {
            tally.retried += runs - 1;
        }
    }
    if kind.prints_numbered_lines() {
        check_lines(record, launched, tally);
    }
}

/// Every entry of a numbered step holds its lines in order with no duplicate or gap; the entries of
/// the run that finished the job hold all of them.
fn check_lines(record: &JobRecord, launched: &Launched, tally: &mut Tally) {
    let (kind, expected) = (launched.kind, launched.lines);
    for name in STEPS {
        let key = format!("step.kubernetes.{name}");
        let entries: Vec<&LogEntryRecord> = record.log_entries.iter().filter(|e| e.key == key).collect();
        // One entry per step per run: a second one in a run is an upload applied twice.
        let runs = record.num_dequeues as usize;
        if entries.len() > runs {
            tally.lines_wrong += entries.len() - runs;
            tally.problems.push(format!(
                "job {}: {} entries {key} for {runs} runs",
                record.id,
                entries.len()
            ));
        }
        for (index, entry) in entries.iter().enumerate() {
            let last = index + 1 == entries.len();
            let must_be_whole = last && record.state == kind.expected();
            for stream in ["out", "err"] {
                let wrong = wrong_lines(entry, name, stream, expected, must_be_whole);
                if wrong > 0 {
                    tally.lines_wrong += wrong;
                    tally.problems.push(format!(
                        "job {} entry {} ({key}, {stream}): {wrong} lines lost, duplicated or out of order:\n{}",
                        record.id, entry.id, entry.out
                    ));
                }
            }
        }
        if entries.is_empty() && record.state == JobState::Completed {
            tally.lines_wrong += 2 * expected;
            tally.problems.push(format!("job {}: no entry {key}", record.id));
        }
    }
}

/// Lines lost, duplicated or out of order in one stream of one entry.
fn wrong_lines(entry: &LogEntryRecord, step: &str, stream: &str, expected: usize, whole: bool) -> usize {
    let prefix = format!("stdout: {MARK} {step} {stream} ");
    if entry.out.contains("output truncated") {
        return 0;
    }
    let seen: Vec<usize> = entry
        .out
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    let in_order = seen.iter().enumerate().filter(|(i, n)| **n == i + 1).count();
    let wrong_here = seen.len() - in_order;
    let missing = if whole {
        expected.saturating_sub(in_order)
    } else {
        0
    };
    wrong_here + missing
}

/// This executor's Jobs, pods, Secrets and PVCs still in the cluster after `timeout`, as
/// `kind/name`.
pub async fn leftovers(env: &Env, timeout: Duration) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let found = list_objects(env).await;
        let done = found.as_ref().is_some_and(Vec::is_empty);
        if done || tokio::time::Instant::now() >= deadline {
            return found.unwrap_or_else(|| vec!["(the cluster could not be listed)".to_string()]);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn list_objects(env: &Env) -> Option<Vec<String>> {
    let params = ListParams::default().labels(&format!("kube-executor.io/instance={INSTANCE}"));
    let client = env.cluster.client();
    let mut found = Vec::new();
    let names = |kind: &str, items: Vec<Option<String>>| -> Vec<String> {
        items
            .into_iter()
            .map(|n| format!("{kind}/{}", n.unwrap_or_default()))
            .collect()
    };
    let jobs = env.jobs_api().list(&params).await.ok()?.items;
    found.extend(names("Job", jobs.into_iter().map(|o| o.metadata.name).collect()));
    let pods = env.pods_api().list(&params).await.ok()?.items;
    // A pod's owner and phase tell whose cleanup it escaped (the executor's or the garbage collector's).
    found.extend(pods.into_iter().map(|pod| {
        let owner = pod
            .metadata
            .owner_references
            .as_ref()
            .and_then(|o| o.first())
            .map_or_else(
                || "none".to_string(),
                |o| format!("{} {} uid {}", o.kind, o.name, o.uid),
            );
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        format!(
            "Pod/{} (owner {owner}, phase {phase}, deleting {})",
            pod.metadata.name.unwrap_or_default(),
            pod.metadata.deletion_timestamp.is_some()
        )
    }));
    let secrets = Api::<Secret>::namespaced(client.clone(), "default")
        .list(&params)
        .await
        .ok()?
        .items;
    found.extend(names(
        "Secret",
        secrets.into_iter().map(|o| o.metadata.name).collect(),
    ));
    let claims = Api::<PersistentVolumeClaim>::namespaced(client, "default")
        .list(&params)
        .await
        .ok()?
        .items;
    found.extend(names(
        "PersistentVolumeClaim",
        claims.into_iter().map(|o| o.metadata.name).collect(),
    ));
    Some(found)
}
