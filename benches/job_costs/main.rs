//! Benchmark: what each job costs the API server, the frontend and the executor, next to the floor of a minimal client making the same calls.
//!
//! Run with `scripts/bench.sh` (a release build; `--quick` for a shorter run). It starts its own
//! control plane with 20 simulated nodes, the dev frontend and executors, and measures:
//! - the floor: a minimal client (`floor.rs`) running trivial jobs at concurrency 10, and both it
//!   and one executor running 100 jobs one at a time (nothing else loading the machine);
//! - the executor at concurrency 10, 50 and 200 (one replica) and 50 (three replicas): overhead
//!   from dequeue to Job created and from pod `Succeeded` seen to `markComplete`, Kubernetes
//!   requests per job counted from the API server's audit log, throughput, executor and
//!   control-plane CPU, executor memory;
//! - log latency (a line printed in a pod to the frontend having it) and one job's log throughput,
//!   next to a minimal client following the same log;
//! - executor memory idle and with 100 and 500 jobs streaming logs at once.
//!
//! Prints a table and writes `docs/bench.md` and `docs/bench.svg` (to `BENCH_REPORT_DIR` when set).

#[path = "../../tests/support/mod.rs"]
mod support;

mod audit;
mod floor;
mod logs;
mod observe;
mod procs;
mod report;
mod round;

use std::{sync::Arc, time::Duration};

use dev_frontend::FrontendOptions;
use support::Env;
use test_cluster::{ClusterOptions, NodeSpec};

const NODES: usize = 20;
/// Jobs the floor runs in the full form, and the fewest any executor round runs: with 100
/// samples, p99 is the second slowest job rather than the slowest.
const OVERHEAD_SAMPLES: usize = 100;

/// The sizes of one run.
pub struct Plan {
    pub floor_jobs: usize,
    /// (concurrency, replicas) of each round of trivial jobs.
    pub levels: Vec<(usize, usize)>,
    pub streaming: Vec<usize>,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                floor_jobs: 20,
                levels: vec![(10, 1), (50, 1), (30, 3)],
                streaming: vec![100],
            }
        } else {
            Plan {
                floor_jobs: OVERHEAD_SAMPLES,
                levels: vec![(10, 1), (50, 1), (200, 1), (10, 3), (50, 3), (200, 3)],
                streaming: vec![100, 500],
            }
        }
    }

    /// Jobs run at `concurrency` by `replicas` executors: enough rounds that start-up costs are
    /// amortised, at least 40 per executor, since each one opens its own two watches at start
    /// (in steady state an executor runs thousands of jobs on them), and at least as many as the
    /// full form's floor, so a round's p99 is not its single slowest job.
    pub fn jobs_at(concurrency: usize, replicas: usize) -> usize {
        (2 * concurrency).max(40 * replicas).max(OVERHEAD_SAMPLES)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let plan = Plan::new(quick);
    let nodes: Vec<NodeSpec> = (1..=NODES).map(|i| NodeSpec::new(&format!("node-{i}"))).collect();
    let frontend = FrontendOptions {
        // The floor client sends no heartbeats; nothing here should be reset.
        stalled_after: Duration::from_secs(3600),
        ..FrontendOptions::default()
    };
    let env = Arc::new(Env::start_with(ClusterOptions::with_nodes(nodes), frontend).await);
    let observer = Arc::new(observe::Observer::start(env.cluster.client()));

    let mut results = report::Results::new(quick, NODES);
    results.floor = Some(round::floor(&env, &observer, plan.floor_jobs, 10).await);
    results.idle_rss_kib = round::idle_rss(&env).await;
    // One job at a time: what a job's own calls cost when no other job loads the 2 CPUs.
    results
        .unloaded
        .push(round::floor(&env, &observer, OVERHEAD_SAMPLES, 1).await);
    results
        .unloaded
        .push(round::executors(&env, &observer, 1, 1).await);
    for (concurrency, replicas) in &plan.levels {
        let level = round::executors(&env, &observer, *concurrency, *replicas).await;
        eprintln!("round done: {} at concurrency {concurrency}", level.label);
        results.levels.push(level);
    }
    results.log_latency = Some(logs::latency(&env).await);
    results.log_throughput = Some(logs::throughput(&env).await);
    for concurrency in &plan.streaming {
        results.streaming.push(round::streaming(&env, *concurrency).await);
    }
    let failed = report::write(&results);
    env.wait_no_objects(Duration::from_secs(120)).await;
    if let Ok(env) = Arc::try_unwrap(env) {
        env.cluster.stop().await;
    }
    if !failed.is_empty() {
        eprintln!("missed targets:\n  {}", failed.join("\n  "));
        std::process::exit(1);
    }
}
