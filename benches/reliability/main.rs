//! Reliability suite: streams of jobs through the real executor while faults are injected into the
//! control plane, the frontend, the executor process and the nodes, then judges from the frontend's
//! records and the cluster that nothing was lost, duplicated or left behind.
//!
//! Run through `scripts/reliability.sh [--quick]`, or directly:
//! `cargo bench --profile dev --locked --bench reliability -- [--quick] [--out FILE] [--only a,b]`.
//! Each scenario starts its own control plane, dev frontend and executor, and stops them all
//! whether it passes, fails or panics. Exits 1 when any must-be-zero figure is not zero or any
//! assertion failed.

#[path = "../../tests/support/mod.rs"]
mod support;

mod bed;
mod checks;
mod monitor;
mod proxy;
mod report;
mod scenarios;
mod workload;

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use report::Figures;
use scenarios::Plan;

/// The longest any one scenario may take before it is stopped and counted as failed.
const SCENARIO_LIMIT: Duration = Duration::from_secs(25 * 60);

struct Args {
    quick: bool,
    out: Option<std::path::PathBuf>,
    only: Option<Vec<String>>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        out: None,
        only: None,
    };
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--out" => args.out = Some(given.next().ok_or("--out needs a file")?.into()),
            "--only" => {
                let names = given.next().ok_or("--only needs scenario names")?;
                args.only = Some(names.split(',').map(str::to_owned).collect());
            }
            // `cargo bench` passes `--bench` to harness-less benchmarks.
            "--bench" => {}
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(problem) => {
            eprintln!("reliability: {problem}");
            return ExitCode::from(2);
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let Ok(runtime) = runtime else {
        eprintln!("reliability: cannot start the async runtime");
        return ExitCode::FAILURE;
    };
    let started = Instant::now();
    let results = runtime.block_on(run_all(&args));
    let text = report::render(&results, &header(&args, started.elapsed()));
    println!("{text}");
    if let Some(path) = &args.out
        && let Err(e) = std::fs::write(path, &text)
    {
        eprintln!("reliability: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if results.iter().all(Figures::passed) && !results.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run_all(args: &Args) -> Vec<Figures> {
    let plan = Plan { quick: args.quick };
    let mut results = Vec::new();
    for (name, scenario) in scenarios::all() {
        if args
            .only
            .as_ref()
            .is_some_and(|only| !only.iter().any(|o| o == name))
        {
            continue;
        }
        eprintln!("==> scenario {name}");
        let started = Instant::now();
        let mut task = tokio::spawn(scenario(plan));
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(SCENARIO_LIMIT, &mut task) => Some(outcome),
            _ = tokio::signal::ctrl_c() => None,
        };
        let figures = match outcome {
            Some(Ok(Ok(figures))) => figures,
            Some(Ok(Err(error))) => Figures::aborted(name, panic_text(error)),
            Some(Err(_)) | None => {
                // Aborting drops the scenario's world, which stops its processes and removes its
                // directories.
                task.abort();
                let _ = task.await;
                let why = if outcome.is_none() {
                    "interrupted (SIGINT)".to_owned()
                } else {
                    format!("did not finish within {SCENARIO_LIMIT:?}")
                };
                results.push(Figures::aborted(name, why));
                if outcome.is_none() {
                    return results;
                }
                continue;
            }
        };
        eprintln!(
            "<== scenario {name}: {} in {:.0} s",
            if figures.passed() { "pass" } else { "FAIL" },
            started.elapsed().as_secs_f64()
        );
        results.push(figures);
    }
    results
}

fn panic_text(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".to_owned()),
        Err(error) => error.to_string(),
    }
}

fn header(args: &Args, took: Duration) -> String {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / (1024.0 * 1024.0));
    format!(
        "# Reliability report\n\n\
         Generated by `scripts/reliability.sh{}` ({} form) on a machine with {cores} cores and \
         {memory_gib:.0} GiB of memory, shared with other builds; the whole run took {:.1} min. \
         Every scenario starts its own local control plane (real kube-apiserver, \
         controller-manager, scheduler, etcd; simulated nodes), dev frontend and executor.\n\n\
         Must be zero: lost, duplicate runs, leaked objects (Jobs, pods, Secrets, PVCs), lines \
         lost/dup. Max concurrency is sampled by the suite's own watch of the executor's Jobs. \
         Recovery is the longest time from a fault's end to the next Job created. Retried runs are \
         re-runs the fault forced (each shown in the job's record, with its own entries).\n",
        if args.quick { " --quick" } else { "" },
        if args.quick { "quick" } else { "full" },
        took.as_secs_f64() / 60.0
    )
}
