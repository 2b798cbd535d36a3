//! The jobs this process is running, by run key, and why one is being stopped from outside.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use jiff::Timestamp;

use crate::{k8s::watch::CreatedJob, queue::RunKey};

/// Why a running job is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The frontend asked (heartbeat `cancelIds`).
    Canceled,
    /// The frontend no longer knows the job (heartbeat `knownIds`): its result cannot be reported.
    Abandoned,
    /// The executor is shutting down and the grace period is over.
    Shutdown,
}

/// A running job as the heartbeat sees it.
#[derive(Debug)]
pub struct RunningJob {
    stop: CancellationToken,
    reason: Mutex<Option<StopReason>>,
    /// Consecutive heartbeats that included this job but whose `knownIds` did not.
    missing_from_known: Mutex<u32>,
    /// When this run began (the status page shows the elapsed time).
    pub started_at: Timestamp,
    /// The Kubernetes Job, once created.
    created: Mutex<Option<CreatedJob>>,
}

impl RunningJob {
    /// Asks the job to stop; the first reason wins.
    pub fn stop(&self, reason: StopReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        drop(r);
        self.stop.cancel();
    }

    /// Why the job was asked to stop, if it was.
    pub fn reason(&self) -> Option<StopReason> {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers the Job this run created, so its pod can be found.
    pub fn set_created(&self, job: CreatedJob) {
        *self.created.lock().unwrap_or_else(|p| p.into_inner()) = Some(job);
    }

    /// The Job this run created, once it has.
    pub fn created(&self) -> Option<CreatedJob> {
        self.created.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records one heartbeat answer about the job; returns how many answers in a row left it out
    /// of `knownIds` (0 when this one knew it).
    pub fn note_known(&self, known: bool) -> u32 {
        let mut missing = self.missing_from_known.lock().unwrap_or_else(|p| p.into_inner());
        *missing = if known { 0 } else { *missing + 1 };
        *missing
    }
}

/// The jobs this process is running.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    inner: Arc<Mutex<HashMap<RunKey, Arc<RunningJob>>>>,
    removed: Arc<tokio::sync::Notify>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RunKey, Arc<RunningJob>>> {
        // NB: never held across an await.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a job; `None` if one with the same key is already running.
    pub fn insert(&self, key: &RunKey, stop: CancellationToken) -> Option<Arc<RunningJob>> {
        let mut jobs = self.lock();
        if jobs.contains_key(key) {
            return None;
        }
        let job = Arc::new(RunningJob {
            stop,
            reason: Mutex::new(None),
            missing_from_known: Mutex::new(0),
            started_at: Timestamp::now(),
            created: Mutex::new(None),
        });
        jobs.insert(key.clone(), job.clone());
        Some(job)
    }

    /// Forgets a finished job and wakes anyone waiting to replace it.
    pub fn remove(&self, key: &RunKey) {
        self.lock().remove(key);
        self.removed.notify_waiters();
    }

    /// Registers a job, first stopping an older run of the same key: the frontend hands out a job
    /// we still run only after it re-queued the job, so that run's result could not be recorded.
    /// `None` if the older run does not end within `limit`.
    pub async fn insert_replacing(
        &self,
        key: &RunKey,
        stop: CancellationToken,
        limit: Duration,
    ) -> Option<Arc<RunningJob>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let removed = self.removed.notified();
            if let Some(job) = self.insert(key, stop.clone()) {
                return Some(job);
            }
            if let Some(old) = self.get(key) {
                old.stop(StopReason::Abandoned);
            }
            if tokio::time::timeout_at(deadline, removed).await.is_err() {
                return None;
            }
        }
    }

    /// Snapshot of the running jobs, ordered by key.
    pub fn all(&self) -> Vec<(RunKey, Arc<RunningJob>)> {
        let mut all: Vec<_> = self.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    pub fn get(&self, key: &RunKey) -> Option<Arc<RunningJob>> {
        self.lock().get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_reassigned_job_stops_the_stale_run_before_registering() {
        let registry = Registry::default();
        let key = RunKey::single(7, "batches");
        let old = registry
            .insert(&key, CancellationToken::new())
            .expect("first run");
        let finishing = {
            let (registry, old, key) = (registry.clone(), old.clone(), key.clone());
            tokio::spawn(async move {
                old.stop.cancelled().await;
                registry.remove(&key);
            })
        };
        let new = registry
            .insert_replacing(&key, CancellationToken::new(), Duration::from_secs(5))
            .await
            .expect("the stale run ended");
        assert_eq!(old.reason(), Some(StopReason::Abandoned));
        assert!(!Arc::ptr_eq(&old, &new));
        finishing.await.expect("join");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_run_that_does_not_stop_is_given_up_after_the_limit() {
        let registry = Registry::default();
        let key = RunKey::single(7, "batches");
        let _old = registry
            .insert(&key, CancellationToken::new())
            .expect("first run");
        let started = tokio::time::Instant::now();
        let new = registry
            .insert_replacing(&key, CancellationToken::new(), Duration::from_secs(120))
            .await;
        assert!(new.is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(120));
    }

    #[test]
    fn registry_rejects_duplicates_and_stop_keeps_first_reason() {
        let registry = Registry::default();
        let key = RunKey::multi(1, "batches");
        let job = registry
            .insert(&key, CancellationToken::new())
            .expect("first insert");
        assert!(registry.insert(&key, CancellationToken::new()).is_none());
        assert!(
            registry
                .insert(&RunKey::multi(1, "codeintel"), CancellationToken::new())
                .is_some(),
            "the same id in another queue is another job"
        );
        job.stop(StopReason::Canceled);
        job.stop(StopReason::Shutdown);
        assert_eq!(job.reason(), Some(StopReason::Canceled));
        assert!(job.stop.is_cancelled());
    }

    #[test]
    fn missing_from_known_counts_consecutive_answers() {
        let job = Registry::default()
            .insert(&RunKey::single(1, "batches"), CancellationToken::new())
            .expect("insert");
        assert_eq!(job.note_known(false), 1);
        assert_eq!(job.note_known(false), 2);
        assert_eq!(job.note_known(true), 0);
        assert_eq!(job.note_known(false), 1);
    }
}
