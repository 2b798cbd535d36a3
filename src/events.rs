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

    /// How often `event` happened.
    pub fn count(&self, event: Event) -> u64 {
        self.lock().events.get(&event).copied().unwrap_or(0)
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

    /// Jobs being handled right now.
    pub fn running(&self) -> u64 {
        self.lock().running
    }

    /// All event counts, by label.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.lock().events.iter().map(|(e, n)| (e.label(), *n)).collect()
    }

    /// Prometheus text exposition, with Sourcegraph's executor metric names where they exist.
    /// `queue` is the queue label: the queue name, or the sorted names joined with `_`.
    pub fn render_prometheus(&self, queue: &str, slots_max: usize, slots_used: usize) -> String {
        use std::fmt::Write as _;
        let c = self.lock();
        let q = escape(queue);
        let mut out = String::new();
        let _ = writeln!(out, "# HELP src_executor_processor_total Job handler executions.");
        let _ = writeln!(out, "# TYPE src_executor_processor_total counter");
        let _ = writeln!(
            out,
            "src_executor_processor_total{{queue=\"{q}\",op=\"Handle\"}} {}",
            c.handled
        );
        let _ = writeln!(
            out,
            "# HELP src_executor_processor_errors_total Job handler executions that failed."
        );
        let _ = writeln!(out, "# TYPE src_executor_processor_errors_total counter");
        let _ = writeln!(
            out,
            "src_executor_processor_errors_total{{queue=\"{q}\",op=\"Handle\"}} {}",
            c.handled_errors
        );
        let _ = writeln!(
            out,
            "# HELP src_executor_processor_duration_seconds Job handler duration."
        );
        let _ = writeln!(out, "# TYPE src_executor_processor_duration_seconds histogram");
        for (bound, n) in DURATION_BUCKETS.iter().zip(c.duration_buckets.iter()) {
            let _ = writeln!(
                out,
                "src_executor_processor_duration_seconds_bucket{{queue=\"{q}\",op=\"Handle\",le=\"{bound}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "src_executor_processor_duration_seconds_bucket{{queue=\"{q}\",op=\"Handle\",le=\"+Inf\"}} {}",
            c.handled
        );
        let _ = writeln!(
            out,
            "src_executor_processor_duration_seconds_sum{{queue=\"{q}\",op=\"Handle\"}} {}",
            c.duration_sum
        );
        let _ = writeln!(
            out,
            "src_executor_processor_duration_seconds_count{{queue=\"{q}\",op=\"Handle\"}} {}",
            c.handled
        );
        let _ = writeln!(out, "# HELP src_executor_processor_handlers Jobs being handled.");
        let _ = writeln!(out, "# TYPE src_executor_processor_handlers gauge");
        let _ = writeln!(
            out,
            "src_executor_processor_handlers{{queue=\"{q}\"}} {}",
            c.running
        );
        let _ = writeln!(
            out,
            "# HELP kube_executor_slots Job slots (EXECUTOR_MAXIMUM_NUM_JOBS) and slots in use."
        );
        let _ = writeln!(out, "# TYPE kube_executor_slots gauge");
        let _ = writeln!(
            out,
            "kube_executor_slots{{queue=\"{q}\",state=\"total\"}} {slots_max}"
        );
        let _ = writeln!(
            out,
            "kube_executor_slots{{queue=\"{q}\",state=\"used\"}} {slots_used}"
        );
        let _ = writeln!(out, "# HELP kube_executor_events_total Job lifecycle events.");
        let _ = writeln!(out, "# TYPE kube_executor_events_total counter");
        for (event, n) in &c.events {
            let _ = writeln!(
                out,
                "kube_executor_events_total{{queue=\"{q}\",event=\"{}\"}} {n}",
                event.label()
            );
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // NB: counters stay meaningful even if a holder panicked; never held across an await.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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
        assert_eq!(events.count(Event::JobDequeued), 2);
        let text = events.render_prometheus("batches", 4, 1);
        assert!(text.contains("src_executor_processor_total{queue=\"batches\",op=\"Handle\"} 1"));
        assert!(text.contains("src_executor_processor_errors_total{queue=\"batches\",op=\"Handle\"} 1"));
        assert!(text.contains("le=\"30\"} 0"));
        assert!(text.contains("le=\"60\"} 1"));
        assert!(text.contains("kube_executor_events_total{queue=\"batches\",event=\"job_dequeued\"} 2"));
        assert!(text.contains("kube_executor_slots{queue=\"batches\",state=\"used\"} 1"));
    }
}
