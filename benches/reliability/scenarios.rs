//! The fault scenarios and the sizes they run at in the full and the quick form.

mod control_plane;
mod executor;
mod frontend;
mod nodes;
mod streams;

use std::{future::Future, pin::Pin, time::Duration};

use crate::{report::Figures, workload::Shape};

/// The run's form.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub quick: bool,
}

impl Plan {
    /// Jobs per stream: `full` in the full form, half of it in the quick one.
    pub fn jobs(&self, full: usize) -> usize {
        if self.quick { full.div_ceil(2).max(4) } else { full }
    }

    /// Each numbered step prints this many lines per stream.
    pub fn shape(&self) -> Shape {
        Shape {
            lines: if self.quick { 20 } else { 40 },
            pause_ms: 100,
        }
    }

    /// A fault's duration: `full`, or half of it in the quick form.
    pub fn fault_time(&self, full: Duration) -> Duration {
        if self.quick { full / 2 } else { full }
    }

    /// The longest wait for jobs to be running.
    pub fn wait(&self) -> Duration {
        Duration::from_secs(180)
    }

    /// The longest wait for a scenario's jobs to finish after its faults.
    pub fn finish(&self) -> Duration {
        Duration::from_secs(if self.quick { 300 } else { 900 })
    }
}

type Scenario = fn(Plan) -> Pin<Box<dyn Future<Output = Figures> + Send>>;

/// Every scenario with its name, in the order the issue lists them.
pub fn all() -> Vec<(&'static str, Scenario)> {
    vec![
        ("api-server-restart", |p| {
            Box::pin(async move { control_plane::api_server_restart(&p).await })
        }),
        ("watches-expired", |p| {
            Box::pin(async move { control_plane::watches_expired(&p).await })
        }),
        ("frontend-faults", |p| {
            Box::pin(async move { frontend::frontend_faults(&p).await })
        }),
        ("executor-killed", |p| {
            Box::pin(async move { executor::executor_killed(&p).await })
        }),
        ("executor-terminated", |p| {
            Box::pin(async move { executor::executor_terminated(&p).await })
        }),
        ("pods-and-nodes", |p| {
            Box::pin(async move { nodes::pods_and_nodes(&p).await })
        }),
        ("hostile-payloads", |p| {
            Box::pin(async move { streams::hostile_payloads(&p).await })
        }),
        ("soak", |p| Box::pin(async move { streams::soak(&p).await })),
    ]
}
