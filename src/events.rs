//! Countable job-lifecycle events and the figures derived from them (Prometheus text, heartbeats).
//!
//! Every step of a job's life records an [`Event`]; metrics, the status page and tests read the
//! counts, so new figures are derived here rather than threaded through the job code.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

/// Something that happened that is worth counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    /// A job was dequeued from the frontend.
    JobDequeued,
    /// A job's Kubernetes Job was created.
    JobCreated,
    /// A job succeeded and was marked complete.
    JobSucceeded,
    /// A job's step failed.
    JobStepFailed,
    /// The cluster could not run a job (scheduling, pull, eviction, deadline...).
    JobInfrastructureFailed,
    /// A job failed for a reason retrying cannot fix.
    JobPermanentlyFailed,
    /// A job was canceled through the frontend.
    JobCanceled,
    /// The frontend no longer knew a running job; it was stopped.
    JobAbandoned,
    /// A running job was stopped by executor shutdown.
    JobInterruptedByShutdown,
    /// A job ran longer than EXECUTOR_MAXIMUM_RUNTIME_PER_JOB.
    JobTimedOut,
    /// A Job left by an earlier process was deleted at startup.
    LeftoverJobDeleted,
    /// A container log stream broke and was resumed.
    LogStreamResumed,
    /// A log entry reached its size cap.
    LogEntryTruncated,
    /// A Kubernetes watch failed and was re-established.
    WatchError,
    /// A dequeue or heartbeat call to the frontend failed.
    FrontendError,
    /// A job pod's container restarted.
    PodRestart,
}

impl Event {
    /// The label value used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Event::JobDequeued => "job_dequeued",
            Event::JobCreated => "job_created",
            Event::JobSucceeded => "job_succeeded",
            Event::JobStepFailed => "job_step_failed",
            Event::JobInfrastructureFailed => "job_infrastructure_failed",
            Event::JobPermanentlyFailed => "job_permanently_failed",
            Event::JobCanceled => "job_canceled",
            Event::JobAbandoned => "job_abandoned",
            Event::JobInterruptedByShutdown => "job_interrupted_by_shutdown",
            Event::JobTimedOut => "job_timed_out",
            Event::LeftoverJobDeleted => "leftover_job_deleted",
            Event::LogStreamResumed => "log_stream_resumed",
            Event::LogEntryTruncated => "log_entry_truncated",
            Event::WatchError => "watch_error",
            Event::FrontendError => "frontend_error",
            Event::PodRestart => "pod_restart",
        }
    }
}

/// Histogram buckets of Sourcegraph's `src_executor_processor_duration_seconds`.
const DURATION_BUCKETS: [f64; 11] = [
    30.0, 60.0, 150.0, 300.0, 450.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

/// Shared event counters; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Events {
    inner: Arc<Mutex<Counts>>,
}

#[derive(Debug, Default)]
struct Counts {
    events: BTreeMap<Event, u64>,
    handled: u64,
    handled_errors: u64,
    duration_buckets: [u64; DURATION_BUCKETS.len()],
    duration_sum: f64,
    running: u64,
}

impl Events {
    /// Counts one occurrence of `event`.
    pub fn record(&self, event: Event) {
        *self.lock().events.entry(event).or_default() += 1;
    }

    /// A job handler started.
    pub fn handler_started(&self) {
        self.lock().running += 1;
    }

    /// A job handler ended after `duration`; `errored` when it did not succeed.
    pub fn handler_finished(&self, duration: Duration, errored: bool) {
        let mut c = self.lock();
        c.running = c.running.saturating_sub(1);
        c.handled += 1;
        if errored {
            c.handled_errors += 1;
        }
        let secs = duration.as_secs_f64();
        c.duration_sum += secs;
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                c.duration_buckets[i] += 1;
            }
        }
    }

    /// All event counts, by label.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.lock().events.iter().map(|(e, n)| (e.label(), *n)).collect()
    }

    /// Prometheus text exposition, with Sourcegraph's executor metric names where they exist.
    /// `queue` is the queue label: the queue name, or the sorted names joined with `_`.
    pub fn render_prometheus(&self, queue: &str, slots_max: usize, slots_used: usize) -> String {
        let c = self.lock();
        let q = format!("queue=\"{}\"", escape(queue));
        let handle = format!("{q},op=\"Handle\"");
        let mut out = Exposition::default();
        out.family(
            "src_executor_processor_total",
            "counter",
            "Job handler executions.",
        );
        out.sample("src_executor_processor_total", &handle, c.handled);
        out.family(
            "src_executor_processor_errors_total",
            "counter",
            "Job handler executions that failed.",
        );
        out.sample("src_executor_processor_errors_total", &handle, c.handled_errors);
        let duration = "src_executor_processor_duration_seconds";
        out.family(duration, "histogram", "Job handler duration.");
        let bucket = format!("{duration}_bucket");
        for (bound, n) in DURATION_BUCKETS.iter().zip(c.duration_buckets.iter()) {
            out.sample(&bucket, &format!("{handle},le=\"{bound}\""), n);
        }
        out.sample(&bucket, &format!("{handle},le=\"+Inf\""), c.handled);
        out.sample(&format!("{duration}_sum"), &handle, c.duration_sum);
        out.sample(&format!("{duration}_count"), &handle, c.handled);
        out.family("src_executor_processor_handlers", "gauge", "Jobs being handled.");
        out.sample("src_executor_processor_handlers", &q, c.running);
        out.family(
            "kube_executor_slots",
            "gauge",
            "Job slots (EXECUTOR_MAXIMUM_NUM_JOBS) and slots in use.",
        );
        out.sample("kube_executor_slots", &format!("{q},state=\"total\""), slots_max);
        out.sample("kube_executor_slots", &format!("{q},state=\"used\""), slots_used);
        out.family("kube_executor_events_total", "counter", "Job lifecycle events.");
        for (event, n) in &c.events {
            let labels = format!("{q},event=\"{}\"", event.label());
            out.sample("kube_executor_events_total", &labels, n);
        }
        out.text
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // NB: counters stay meaningful even if a holder panicked; never held across an await.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Prometheus text format 0.0.4, one family header and sample line at a time.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.text
            .push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        self.text.push_str(&format!("{name}{{{labels}}} {value}\n"));
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders_sourcegraph_names() {
        let events = Events::default();
        events.record(Event::JobDequeued);
        events.record(Event::JobDequeued);
        events.handler_started();
        events.handler_finished(Duration::from_secs(45), true);
        assert_eq!(events.snapshot().get("job_dequeued"), Some(&2));
        let text = events.render_prometheus("batches", 4, 1);
        assert!(text.contains("src_executor_processor_total{queue=\"batches\",op=\"Handle\"} 1"));
        assert!(text.contains("src_executor_processor_errors_total{queue=\"batches\",op=\"Handle\"} 1"));
        assert!(text.contains("le=\"30\"} 0"));
        assert!(text.contains("le=\"60\"} 1"));
        assert!(text.contains("kube_executor_events_total{queue=\"batches\",event=\"job_dequeued\"} 2"));
        assert!(text.contains("kube_executor_slots{queue=\"batches\",state=\"used\"} 1"));
    }
}
