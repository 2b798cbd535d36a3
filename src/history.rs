//! What the status page shows of jobs that ended: the last few with their outcome, and counts per minute for the chart.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use jiff::Timestamp;

use crate::queue::RunKey;

/// Finished jobs kept for the status page.
const RECENT_JOBS: usize = 20;
/// Minutes the chart covers.
pub const CHART_MINUTES: usize = 60;

/// One job that ended.
#[derive(Debug, Clone)]
pub struct FinishedJob {
    pub key: RunKey,
    pub job_name: String,
    /// How it was reported (`completed`, `errored`, `failed`, `not_reported`).
    pub reported_as: &'static str,
    /// Why, as a fixed label (`succeeded`, `step_failed`, `oom_killed`...).
    pub reason: &'static str,
    /// The failure message, already redacted; `None` for a success.
    pub message: Option<String>,
    pub finished_at: Timestamp,
    pub duration: Duration,
}

/// Jobs that ended in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteCounts {
    /// Unix minute (seconds / 60).
    pub minute: i64,
    pub succeeded: u32,
    pub unsuccessful: u32,
}

/// Shared history; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct History {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    recent: VecDeque<FinishedJob>,
    minutes: VecDeque<MinuteCounts>,
}

impl History {
    pub fn record(&self, job: FinishedJob) {
        let minute = job.finished_at.as_second().div_euclid(60);
        let succeeded = job.reason == "succeeded";
        let mut inner = self.lock();
        match inner.minutes.back_mut() {
            Some(last) if last.minute == minute => add(last, succeeded),
            _ => {
                let mut counts = MinuteCounts {
                    minute,
                    ..MinuteCounts::default()
                };
                add(&mut counts, succeeded);
                inner.minutes.push_back(counts);
            }
        }
        while inner
            .minutes
            .front()
            .is_some_and(|first| first.minute <= minute - CHART_MINUTES as i64)
        {
            inner.minutes.pop_front();
        }
        inner.recent.push_front(job);
        inner.recent.truncate(RECENT_JOBS);
    }

    /// The last jobs that ended, newest first.
    pub fn recent(&self) -> Vec<FinishedJob> {
        self.lock().recent.iter().cloned().collect()
    }

    /// One entry per minute of the [`CHART_MINUTES`] ending at `now`, oldest first (zeros included).
    pub fn per_minute(&self, now: Timestamp) -> Vec<MinuteCounts> {
        let current = now.as_second().div_euclid(60);
        let inner = self.lock();
        (current - CHART_MINUTES as i64 + 1..=current)
            .map(|minute| {
                inner
                    .minutes
                    .iter()
                    .find(|counts| counts.minute == minute)
                    .copied()
                    .unwrap_or(MinuteCounts {
                        minute,
                        ..MinuteCounts::default()
                    })
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // NB: never held across an await; plain data stays usable after a panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn add(counts: &mut MinuteCounts, succeeded: bool) {
    if succeeded {
        counts.succeeded += 1;
    } else {
        counts.unsuccessful += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(id: i64, at: i64, reason: &'static str) -> FinishedJob {
        FinishedJob {
            key: RunKey::single(id, "batches"),
            job_name: format!("job-{id}"),
            reported_as: "completed",
            reason,
            message: None,
            finished_at: Timestamp::from_second(at).expect("valid time"),
            duration: Duration::from_secs(1),
        }
    }

    #[test]
    fn keeps_the_newest_jobs_and_counts_per_minute() {
        let history = History::default();
        for id in 0..25 {
            history.record(finished(
                id,
                600 + id,
                if id % 5 == 0 { "step_failed" } else { "succeeded" },
            ));
        }
        history.record(finished(99, 600 + 60 * 3, "oom_killed"));
        let recent = history.recent();
        assert_eq!(recent.len(), RECENT_JOBS);
        assert_eq!(recent[0].key.id, 99);
        let now = Timestamp::from_second(600 + 60 * 3 + 5).expect("valid time");
        let minutes = history.per_minute(now);
        assert_eq!(minutes.len(), CHART_MINUTES);
        let last = minutes[CHART_MINUTES - 1];
        assert_eq!((last.succeeded, last.unsuccessful), (0, 1));
        let first_minute = minutes[CHART_MINUTES - 4];
        assert_eq!((first_minute.succeeded, first_minute.unsuccessful), (20, 5));
    }

    #[test]
    fn minutes_older_than_the_chart_are_dropped() {
        let history = History::default();
        history.record(finished(1, 0, "succeeded"));
        history.record(finished(2, 60 * CHART_MINUTES as i64, "succeeded"));
        let now = Timestamp::from_second(60 * CHART_MINUTES as i64).expect("valid time");
        let total: u32 = history.per_minute(now).iter().map(|m| m.succeeded).sum();
        assert_eq!(total, 1);
        assert_eq!(history.lock().minutes.len(), 1);
    }
}
