//! Scenarios 4 and 5: the executor SIGKILLed mid-job and restarted, and SIGTERMed with jobs running.

use std::time::{Duration, Instant};

use dev_frontend::FrontendOptions;

use super::Plan;
use crate::{
    bed::{Bed, Setup},
    report::Figures,
    workload::{Kind, Shape},
};

/// Grace the SIGTERM scenario gives running jobs: shorter than their steps, so they are cut.
const GRACE: Duration = Duration::from_secs(3);

pub async fn executor_killed(plan: &Plan) -> Figures {
    let mut bed = Bed::start(
        "4. executor SIGKILLed mid-job, restarted",
        Setup {
            // The resetter re-queues the killed executor's jobs once their heartbeats stop; the
            // threshold is above two heartbeat intervals (5 s), so a live executor's newly
            // dequeued jobs are never taken for stalled.
            frontend: FrontendOptions {
                stalled_after: Duration::from_secs(12),
                ..FrontendOptions::default()
            },
            ..Setup::new(4)
        },
    )
    .await;
    bed.enqueue(plan.jobs(12), plan.shape(), |_| Kind::Numbered);
    bed.wait_running(3, plan.wait()).await;
    let interrupted = bed.allow_retry_of_unfinished();
    let status = bed.end_executor(9, Duration::from_secs(10)).await;
    let left = bed.env.our_objects().await.0;
    bed.restart_executor();
    bed.fault_ended(
        &format!(
            "executor SIGKILLed ({status}) with {interrupted} jobs started, {left} Jobs left; restarted"
        ),
        Instant::now(),
    );
    let figures = bed.finish(plan.finish()).await;
    expect_some_retry(figures, "killed")
}

pub async fn executor_terminated(plan: &Plan) -> Figures {
    let mut bed = Bed::start(
        "5. SIGTERM with jobs running",
        Setup {
            // Jobs cut by the grace period are errored once, then run again.
            frontend: FrontendOptions {
                max_failures: 2,
                ..FrontendOptions::default()
            },
            executor_env: vec![("EXECUTOR_SHUTDOWN_GRACE_PERIOD", format!("{}s", GRACE.as_secs()))],
            ..Setup::new(4)
        },
    )
    .await;
    // Steps longer than the grace, so the running ones must be stopped and errored for retry.
    let long = Shape {
        lines: plan.shape().lines,
        pause_ms: 300,
    };
    bed.enqueue(plan.jobs(8), long, |_| Kind::Numbered);
    bed.wait_running(3, plan.wait()).await;
    let interrupted = bed.allow_retry_of_unfinished();
    let signalled = Instant::now();
    let status = bed.end_executor(15, GRACE + Duration::from_secs(60)).await;
    let drained_in = signalled.elapsed();
    if !status.success() {
        bed.figures
            .problems
            .push(format!("the executor's SIGTERM exit was {status}"));
    }
    bed.figures.notes.push(format!(
        "drained and exited in {:.1} s (grace {GRACE:?}), {status}",
        drained_in.as_secs_f64()
    ));
    let left = bed.env.our_objects().await;
    if left != (0, 0, 0) {
        bed.figures.notes.push(format!(
            "right after the exit, (Jobs, pods, Secrets) = {left:?} were still being deleted"
        ));
    }
    bed.restart_executor();
    bed.fault_ended(
        &format!("SIGTERM with {interrupted} jobs started (grace {GRACE:?}); a new executor started"),
        Instant::now(),
    );
    let figures = bed.finish(plan.finish()).await;
    expect_some_retry(figures, "cut by the grace period")
}

fn expect_some_retry(mut figures: Figures, how: &str) -> Figures {
    if figures.retried == 0 {
        figures
            .problems
            .push(format!("no job {how} mid-run was run again"));
    }
    figures
}
