//! Kubernetes side of the executor: object builders, the shared pod/job watch, logs and cleanup.

pub mod api_error;
pub mod failure;
pub mod job_spec;
pub mod labels;
pub mod logs;
pub mod objects;
pub mod pod_events;
pub mod preflight;
pub mod rate_limit;
pub mod request_metrics;
pub mod script;
pub mod strays;
#[cfg(test)]
pub(crate) mod testing;
pub mod watch;
