//! Countable job-lifecycle events: what `kube_executor_events_total` counts and the status page lists.

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
    /// A pod whose Job no longer exists was deleted.
    StrayPodDeleted,
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
    /// Every event, in the order the status page lists them.
    pub const ALL: [Event; 17] = [
        Event::JobDequeued,
        Event::JobCreated,
        Event::JobSucceeded,
        Event::JobStepFailed,
        Event::JobInfrastructureFailed,
        Event::JobPermanentlyFailed,
        Event::JobCanceled,
        Event::JobAbandoned,
        Event::JobInterruptedByShutdown,
        Event::JobTimedOut,
        Event::LeftoverJobDeleted,
        Event::StrayPodDeleted,
        Event::LogStreamResumed,
        Event::LogEntryTruncated,
        Event::WatchError,
        Event::FrontendError,
        Event::PodRestart,
    ];

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
            Event::StrayPodDeleted => "stray_pod_deleted",
            Event::LogStreamResumed => "log_stream_resumed",
            Event::LogEntryTruncated => "log_entry_truncated",
            Event::WatchError => "watch_error",
            Event::FrontendError => "frontend_error",
            Event::PodRestart => "pod_restart",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_is_listed_once_with_its_own_label() {
        let labels: std::collections::BTreeSet<&str> = Event::ALL.iter().map(|e| e.label()).collect();
        assert_eq!(labels.len(), Event::ALL.len());
    }
}
