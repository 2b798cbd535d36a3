//! Scenario 3: the frontend answers 500 and 503, hangs, loses the answers to log uploads and to
//! marks it applied, and recovers; the fault proxy between the executor and the dev frontend does it.

use std::time::{Duration, Instant};

use dev_frontend::FrontendOptions;

use super::Plan;
use crate::{
    bed::{Bed, Setup},
    proxy::Fault,
    report::Figures,
    workload::Kind,
};

const LOG_ROUTES: &[&str] = &["/addExecutionLogEntry", "/updateExecutionLogEntry"];
/// `/readyz` fails after the frontend has been silent this long (two heartbeats and a second).
const FRONTEND_SILENCE_LIMIT: Duration = Duration::from_secs(11);
/// The longest a fault on some routes waits for a request to meet it.
const ROUTE_FAULT_LIMIT: Duration = Duration::from_secs(60);
const MARK_ROUTES: &[&str] = &["/markComplete", "/markErrored", "/markFailed"];

pub async fn frontend_faults(plan: &Plan) -> Figures {
    let mut bed = Bed::start(
        "3. frontend 500/503, hanging, lost answers",
        Setup {
            proxy: true,
            // A log entry the frontend may or may not have created is not sent again, so its job is
            // errored and runs again; that retry is what the fault forces.
            frontend: FrontendOptions {
                max_failures: 3,
                ..FrontendOptions::default()
            },
            ..Setup::new(4)
        },
    )
    .await;
    for phase in phases(plan) {
        // Fresh jobs each phase, so some are running (uploading, about to be marked) when it starts.
        bed.enqueue(plan.jobs(6), plan.shape(), |_| Kind::Numbered);
        bed.wait_running(2, plan.wait()).await;
        let forces_retry = matches!(
            phase.fault,
            Fault::Status(500) | Fault::Hang | Fault::ForwardThenDrop
        );
        if forces_retry {
            bed.allow_retry_of_unfinished();
        }
        let started = Instant::now();
        run_phase(&mut bed, &phase).await;
        if forces_retry {
            bed.allow_retry_of_unfinished();
        }
        if phase.fault == Fault::Hang
            && phase.duration > FRONTEND_SILENCE_LIMIT + Duration::from_secs(3)
            && !bed.ready.failed_between(started, Instant::now())
        {
            bed.figures.problems.push(format!(
                "/readyz kept passing while the frontend hung for {:?}",
                phase.duration
            ));
        }
    }
    let faulted = bed.proxy.as_ref().map_or(0, |p| p.faulted());
    bed.figures.notes.push(format!("{faulted} requests met a fault"));
    bed.finish(plan.finish()).await
}

/// One fault on the way to the frontend.
struct Phase {
    fault: Fault,
    routes: &'static [&'static str],
    duration: Duration,
    what: &'static str,
}

fn phases(plan: &Plan) -> Vec<Phase> {
    let short = plan.fault_time(Duration::from_secs(10));
    let phase = |fault, routes, duration, what| Phase {
        fault,
        routes,
        duration,
        what,
    };
    vec![
        phase(Fault::Status(500), &[], short, "every request answered 500"),
        phase(Fault::Status(503), &[], short, "every request answered 503"),
        phase(
            Fault::Hang,
            &[],
            plan.fault_time(Duration::from_secs(30)),
            "every request held unanswered",
        ),
        phase(
            Fault::ForwardThenDrop,
            LOG_ROUTES,
            short,
            "log uploads applied, then their answers lost (connection closed)",
        ),
        phase(
            Fault::ForwardThenStatus(503),
            MARK_ROUTES,
            short,
            "marks applied, then answered 503",
        ),
    ]
}

async fn run_phase(bed: &mut Bed, phase: &Phase) {
    let (fault, routes, duration, what) = (phase.fault, phase.routes, phase.duration, phase.what);
    let Some(proxy) = &bed.proxy else { return };
    let before = proxy.faulted();
    proxy.set(fault, routes);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    // A fault on some routes lasts until a request has met it (marks come only as jobs end).
    while !routes.is_empty() && proxy.faulted() == before && started.elapsed() < ROUTE_FAULT_LIMIT {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.set(Fault::Pass, &[]);
    let met = proxy.faulted() - before;
    bed.fault_ended(
        &format!("{what} for {duration:?} ({met} requests)"),
        Instant::now(),
    );
    if met == 0 {
        bed.figures
            .problems
            .push(format!("no request met the fault \"{what}\""));
    }
}
