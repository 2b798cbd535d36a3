//! Benchmark: the executor's peak memory while 20 concurrent jobs print as fast as they can, as a ratio to 20 quiet jobs in the same run.
//!
//! Run with `NODE_AGENT_BIN=target/debug/node-agent cargo bench --bench log_flood` (a release
//! executor; the test cluster looks for its node agent next to the bench binary otherwise) or
//! `cargo bench --profile dev --bench log_flood` (reuses the test build). It starts its own
//! control plane, dev frontend and executor.
//!
//! 1. Floor: 20 jobs whose step prints one line, all followed at once (the step waits on a gate
//!    that opens only when every one of them has its log entry). Peak RSS afterwards = the floor.
//! 2. Flood: 20 jobs, each step printing `FLOOD_BYTES` of 100-byte lines, then one line with no
//!    newline of `FLOOD_BYTES` bytes. Peak RSS afterwards = the flood peak.
//!
//! Prints both figures, their ratio and the log throughput, and fails when the flood adds more
//! than `BOUND_PER_JOB_KIB` per job above the floor: memory per followed container must stay
//! bounded by the log entry cap, not grow with the output.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use dev_frontend::JobState;
use support::{Env, Gate, job, step};

const JOBS: usize = 20;
/// Bytes each flooding step prints in lines, and again as one unbroken line.
const FLOOD_BYTES: usize = 16 * 1024 * 1024;
/// `EXECUTOR_LOG_ENTRY_MAX_BYTES` of the run (the default).
const ENTRY_CAP_KIB: u64 = 1024;
/// Per flooding job above the floor: the copies of the capped entry in flight (its text, the JSON
/// body of an update, the one being retried) and the line buffer, with room for timing on a loaded
/// machine (2.5 to 5.8 MiB measured in fresh-clone runs). Memory that grew with the output would
/// be 32 MiB a job, twice the bound.
const BOUND_PER_JOB_KIB: u64 = 16 * ENTRY_CAP_KIB;
const JOB_TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let env = Env::start().await;
    let executor = env.spawn_executor(&[
        ("EXECUTOR_MAXIMUM_NUM_JOBS", &JOBS.to_string()),
        ("RUST_LOG", "info"),
    ]);

    let floor = quiet_round(&env).await;
    let floor_kib = executor.peak_rss_kib();

    let started = Instant::now();
    let ids: Vec<i64> = (0..JOBS).map(|_| env.frontend.enqueue(flooding_job())).collect();
    for id in ids {
        let record = env.wait_terminal(id, JOB_TIMEOUT).await;
        assert_eq!(record.state, JobState::Completed, "flood job {id}: {record:#?}");
    }
    let elapsed = started.elapsed();
    let peak_kib = executor.peak_rss_kib();
    env.wait_no_objects(Duration::from_secs(120)).await;

    let total_mib = (2 * FLOOD_BYTES * JOBS) as f64 / (1024.0 * 1024.0);
    let per_job_kib = peak_kib.saturating_sub(floor_kib) / JOBS as u64;
    println!("log_flood: {JOBS} concurrent jobs, entry cap {ENTRY_CAP_KIB} KiB");
    println!("  floor (20 quiet jobs followed at once, {floor:.1} s): peak RSS {floor_kib} KiB");
    println!(
        "  flood (each job {} MiB in lines + {} MiB in one line): peak RSS {peak_kib} KiB",
        FLOOD_BYTES / (1024 * 1024),
        FLOOD_BYTES / (1024 * 1024)
    );
    println!(
        "  ratio flood/floor {:.2}; {per_job_kib} KiB per flooding job above the floor (bound {BOUND_PER_JOB_KIB} KiB)",
        peak_kib as f64 / floor_kib as f64
    );
    println!(
        "  {total_mib:.0} MiB of output in {:.1} s: {:.1} MiB/s through the executor",
        elapsed.as_secs_f64(),
        total_mib / elapsed.as_secs_f64()
    );
    assert!(
        per_job_kib <= BOUND_PER_JOB_KIB,
        "memory grew with the output: {per_job_kib} KiB per job above the floor"
    );
}

/// Runs 20 one-line jobs that are all being followed at the same moment; returns its seconds.
async fn quiet_round(env: &Env) -> f64 {
    let started = Instant::now();
    let gate = Gate::new();
    let ids: Vec<i64> = (0..JOBS)
        .map(|_| {
            let wait = gate.wait_cmd();
            env.frontend
                .enqueue(job(vec![step("quiet", &[&wait, "echo quiet"])]))
        })
        .collect();
    // The step's trace names the gate file once it runs, so its log is being followed.
    let gate_file = gate.path("open").display().to_string();
    for &id in &ids {
        env.wait_for_output("batches", id, &gate_file, JOB_TIMEOUT).await;
    }
    gate.open();
    for id in ids {
        let record = env.wait_terminal(id, JOB_TIMEOUT).await;
        assert_eq!(record.state, JobState::Completed, "quiet job {id}: {record:#?}");
    }
    started.elapsed().as_secs_f64()
}

fn flooding_job() -> dev_frontend::NewJob {
    let line = "flood ".repeat(16) + "0123";
    job(vec![step(
        "flood",
        &[
            &format!("yes '{line}' | head -c {FLOOD_BYTES}"),
            &format!("head -c {FLOOD_BYTES} /dev/zero | tr '\\0' a"),
            "echo",
        ],
    )])
}
