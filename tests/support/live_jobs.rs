//! The Jobs a watch shows alive, per executor instance, with the most seen at once: shared by the
//! scale-out test, the cost bench and the reliability suite, each saying what "alive" means.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use kube::{Resource, runtime::watcher};

/// The label naming the executor instance a Job belongs to.
pub const INSTANCE_LABEL: &str = "kube-executor.io/instance";

/// The executor instance an object (a Job or a job pod) belongs to, from its label.
pub fn instance_of<K: Resource>(object: &K) -> Option<String> {
    object.meta().labels.as_ref()?.get(INSTANCE_LABEL).cloned()
}

/// Live Jobs as a watch's events show them; a re-list replaces the ones it does not list, so a
/// Job deleted while the watch was down stops counting.
pub struct LiveJobs {
    alive: fn(&Job) -> bool,
    /// UID → instance of every Job alive when last seen.
    live: BTreeMap<String, String>,
    /// What a re-list in progress has listed alive so far.
    relisted: Option<BTreeMap<String, String>>,
    max_per_instance: BTreeMap<String, usize>,
    max_total: usize,
}

impl Default for LiveJobs {
    /// Counts the Jobs not being deleted.
    fn default() -> Self {
        LiveJobs::new(LiveJobs::not_deleting)
    }
}

impl LiveJobs {
    /// Counts the Jobs for which `alive` holds.
    pub fn new(alive: fn(&Job) -> bool) -> Self {
        LiveJobs {
            alive,
            live: BTreeMap::new(),
            relisted: None,
            max_per_instance: BTreeMap::new(),
            max_total: 0,
        }
    }

    /// A Job not being deleted.
    pub fn not_deleting(job: &Job) -> bool {
        job.meta().deletion_timestamp.is_none()
    }

    pub fn apply(&mut self, event: &watcher::Event<Job>) {
        match event {
            watcher::Event::Apply(job) => {
                if let Some((uid, instance)) = self.alive_entry(job) {
                    self.live.insert(uid, instance);
                } else if let Some(uid) = &job.meta().uid {
                    self.live.remove(uid);
                }
            }
            watcher::Event::Delete(job) => {
                if let Some(uid) = &job.meta().uid {
                    self.live.remove(uid);
                }
            }
            watcher::Event::Init => self.relisted = Some(BTreeMap::new()),
            watcher::Event::InitApply(job) => {
                if let Some((uid, instance)) = self.alive_entry(job)
                    && let Some(relisted) = self.relisted.as_mut()
                {
                    relisted.insert(uid, instance);
                }
            }
            watcher::Event::InitDone => self.live = self.relisted.take().unwrap_or_default(),
        }
        self.count();
    }

    /// The most live Jobs seen at once, per instance.
    pub fn max_per_instance(&self) -> &BTreeMap<String, usize> {
        &self.max_per_instance
    }

    /// The most live Jobs seen at once, all instances together.
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// The most per instance since the last call; counting starts again from what is alive now.
    pub fn take_max_per_instance(&mut self) -> BTreeMap<String, usize> {
        let max = std::mem::take(&mut self.max_per_instance);
        self.max_total = 0;
        self.count();
        max
    }

    fn alive_entry(&self, job: &Job) -> Option<(String, String)> {
        if !(self.alive)(job) {
            return None;
        }
        Some((job.meta().uid.clone()?, instance_of(job)?))
    }

    fn count(&mut self) {
        let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
        for instance in self.live.values() {
            *counts.entry(instance).or_default() += 1;
        }
        for (instance, count) in counts {
            let most = self.max_per_instance.entry(instance.clone()).or_default();
            *most = (*most).max(count);
        }
        self.max_total = self.max_total.max(self.live.len());
    }
}
