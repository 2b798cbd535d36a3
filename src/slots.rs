//! Job slots: `EXECUTOR_MAXIMUM_NUM_JOBS` counted against this executor's unfinished Jobs in the
//! cluster as well as the jobs this process is handling.
//!
//! A slot is taken *before* dequeuing and handed to the job task, so the executor never dequeues a
//! job it cannot start. Jobs left in the cluster by a previous process keep counting until they
//! finish or are deleted, so a restarted executor never exceeds the limit.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use tokio::sync::Notify;

/// The slot accounting shared by the dequeue loop, the job tasks and the Job watch.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    state: Mutex<SlotState>,
    freed: Notify,
}

#[derive(Debug, Default)]
struct SlotState {
    /// Slots taken for a dequeue whose job is not known yet.
    anonymous: usize,
    /// Job names this process is handling.
    held: HashSet<String>,
    /// This executor's unfinished Jobs in the cluster; `None` until the Job watch has synced.
    cluster: Option<HashSet<String>>,
}

impl SlotState {
    fn used(&self) -> usize {
        let cluster_only = self
            .cluster
            .as_ref()
            .map_or(0, |c| c.iter().filter(|n| !self.held.contains(*n)).count());
        self.anonymous + self.held.len() + cluster_only
    }

    fn running(&self) -> usize {
        self.used() - self.anonymous
    }
}

/// One taken slot; dropping it gives the slot back.
#[derive(Debug)]
pub struct SlotPermit {
    slots: Arc<Slots>,
    job_name: Option<String>,
}

impl Slots {
    /// Creates the accounting for at most `max` concurrent jobs.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            state: Mutex::new(SlotState::default()),
            freed: Notify::new(),
        })
    }

    /// The configured maximum.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Slots in use (held by this process, reserved for a dequeue or taken by unfinished Jobs
    /// found in the cluster): what [`Slots::acquire`] counts.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.lock().used()
    }

    /// Slots taken by jobs, leaving out those reserved for a dequeue still in flight: what the
    /// status page and `src_executor_processor_handlers` report, since an idle executor is always
    /// mid-dequeue and would otherwise read as busy.
    pub fn running(&self) -> usize {
        self.lock().running()
    }

    /// Waits for a free slot. Returns only after the Job watch has synced, so Jobs of a previous
    /// process are counted before the first dequeue.
    ///
    /// # Cancel safety
    /// Cancel safe: a slot is taken only in the same poll that returns it.
    pub async fn acquire(self: &Arc<Self>) -> SlotPermit {
        loop {
            let freed = self.freed.notified();
            {
                let mut state = self.lock();
                if state.cluster.is_some() && state.used() < self.max {
                    state.anonymous += 1;
                    return SlotPermit {
                        slots: self.clone(),
                        job_name: None,
                    };
                }
            }
            freed.await;
        }
    }

    /// Forgets the cluster's Jobs until the next [`Slots::set_cluster_jobs`]: while the Job watch
    /// is broken its counts may be stale, so no slot is handed out.
    pub fn suspend(&self) {
        self.lock().cluster = None;
    }

    /// Replaces the set of this executor's unfinished Jobs seen in the cluster.
    pub fn set_cluster_jobs(&self, unfinished: HashSet<String>) {
        self.lock().cluster = Some(unfinished);
        self.freed.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // NB: the lock is never held across an await and no code panics while holding it, so a
        // poisoned lock still holds consistent counts.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SlotPermit {
    /// Ties the slot to the Job it runs, so the cluster's copy of that Job is not counted twice.
    pub fn assign(&mut self, job_name: &str) {
        let mut state = self.slots.lock();
        if self.job_name.is_none() {
            state.anonymous = state.anonymous.saturating_sub(1);
        } else if let Some(old) = &self.job_name {
            state.held.remove(old);
        }
        state.held.insert(job_name.to_string());
        self.job_name = Some(job_name.to_string());
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        {
            let mut state = self.slots.lock();
            match &self.job_name {
                None => state.anonymous = state.anonymous.saturating_sub(1),
                Some(name) => {
                    state.held.remove(name);
                }
            }
        }
        self.slots.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn no_slot_before_the_cluster_is_known() {
        let slots = Slots::new(1);
        let waiting = tokio::time::timeout(Duration::from_secs(5), slots.acquire()).await;
        assert!(waiting.is_err(), "must wait for the Job watch");
        slots.set_cluster_jobs(HashSet::new());
        let permit = tokio::time::timeout(Duration::from_secs(5), slots.acquire()).await;
        assert!(permit.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn leftover_jobs_count_until_they_are_gone() {
        let slots = Slots::new(2);
        slots.set_cluster_jobs(HashSet::from(["old-1".to_string(), "old-2".to_string()]));
        assert_eq!(slots.used(), 2);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), slots.acquire())
                .await
                .is_err()
        );
        slots.set_cluster_jobs(HashSet::from(["old-1".to_string()]));
        let mut permit = slots.acquire().await;
        assert_eq!(slots.used(), 2);
        // The cluster's copy of our own Job is not counted twice.
        permit.assign("new-1");
        slots.set_cluster_jobs(HashSet::from(["old-1".to_string(), "new-1".to_string()]));
        assert_eq!(slots.used(), 2);
        drop(permit);
        assert_eq!(slots.used(), 2, "our Job still exists in the cluster");
        slots.set_cluster_jobs(HashSet::from(["old-1".to_string()]));
        assert_eq!(slots.used(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_reserved_for_a_dequeue_is_used_but_not_running() {
        let slots = Slots::new(1);
        slots.set_cluster_jobs(HashSet::new());
        let mut permit = slots.acquire().await;
        assert_eq!((slots.used(), slots.running()), (1, 0));
        permit.assign("job-1");
        assert_eq!((slots.used(), slots.running()), (1, 1));
        drop(permit);
        assert_eq!((slots.used(), slots.running()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_permit_wakes_a_waiter() {
        let slots = Slots::new(1);
        slots.set_cluster_jobs(HashSet::new());
        let permit = slots.acquire().await;
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(permit);
        let second = tokio::time::timeout(Duration::from_secs(1), waiter).await;
        assert!(matches!(second, Ok(Ok(_))));
    }
}
