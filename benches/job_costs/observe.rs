//! The bench's own view of the cluster: when each job's Kubernetes Job first appeared and when its
//! pod was first seen `Succeeded`, and how many Jobs were alive at once, per executor instance.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use futures_util::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{
    Api, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::watch;

use crate::support::live_jobs::LiveJobs;

/// Label every job object carries, the executor's and the floor client's alike.
pub const JOB_ID_LABEL: &str = "kube-executor.io/job-id";

#[derive(Default)]
struct Seen {
    job_created: BTreeMap<i64, Timestamp>,
    pod_succeeded: BTreeMap<i64, Timestamp>,
    /// Live (not deleting) Jobs per instance, and the most seen at once.
    live: LiveJobs,
}

/// Watches Jobs and pods with a job-id label on tasks of its own until dropped.
pub struct Observer {
    seen: Arc<Mutex<Seen>>,
    changes: watch::Receiver<u64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Observer {
    pub fn start(client: kube::Client) -> Observer {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (notify, changes) = watch::channel(0u64);
        let notify = Arc::new(notify);
        let config = watcher::Config::default().labels(JOB_ID_LABEL);
        let jobs = watcher(Api::<Job>::namespaced(client.clone(), "default"), config.clone());
        let pods = watcher(Api::<Pod>::namespaced(client, "default"), config);
        let job_task = tokio::spawn({
            let (seen, notify) = (seen.clone(), notify.clone());
            async move {
                let mut events = std::pin::pin!(jobs.default_backoff());
                while let Some(event) = events.next().await {
                    if let Ok(event) = event {
                        on_job_event(&seen, event);
                        notify.send_modify(|n| *n += 1);
                    }
                }
            }
        });
        let pod_task = tokio::spawn({
            let seen = seen.clone();
            async move {
                let mut pods = std::pin::pin!(pods.default_backoff().applied_objects());
                while let Some(pod) = pods.next().await {
                    if let Ok(pod) = pod {
                        on_pod(&seen, &pod);
                        notify.send_modify(|n| *n += 1);
                    }
                }
            }
        });
        Observer {
            seen,
            changes,
            tasks: vec![job_task, pod_task],
        }
    }

    pub fn job_created(&self, id: i64) -> Option<Timestamp> {
        self.lock().job_created.get(&id).copied()
    }

    pub fn pod_succeeded(&self, id: i64) -> Option<Timestamp> {
        self.lock().pod_succeeded.get(&id).copied()
    }

    /// Waits until job `id`'s pod was seen `Succeeded`, and returns when that was.
    pub async fn wait_succeeded(&self, id: i64) -> Timestamp {
        let mut changes = self.changes.clone();
        loop {
            if let Some(at) = self.pod_succeeded(id) {
                return at;
            }
            changes
                .changed()
                .await
                .expect("the observer runs as long as the bench");
        }
    }

    /// The most Jobs alive at once per instance since the last reset, and resets the count.
    pub fn take_max_live(&self) -> BTreeMap<String, usize> {
        self.lock().live.take_max_per_instance()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().expect("observer state")
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn job_id(labels: &BTreeMap<String, String>) -> Option<i64> {
    labels.get(JOB_ID_LABEL)?.parse().ok()
}

fn on_job_event(seen: &Mutex<Seen>, event: watcher::Event<Job>) {
    let mut seen = seen.lock().expect("observer state");
    if let watcher::Event::Apply(job) | watcher::Event::InitApply(job) = &event
        && let Some(id) = job_id(job.labels())
    {
        seen.job_created.entry(id).or_insert_with(Timestamp::now);
    }
    seen.live.apply(&event);
}

fn on_pod(seen: &Mutex<Seen>, pod: &Pod) {
    let succeeded = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded");
    if let (true, Some(id)) = (succeeded, job_id(pod.labels())) {
        let now = Timestamp::now();
        seen.lock()
            .expect("observer state")
            .pod_succeeded
            .entry(id)
            .or_insert(now);
    }
}
