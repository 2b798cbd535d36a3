//! The shared, label-filtered watches of this executor's Pods and Jobs, kept in local stores.
//!
//! One watch per kind for the whole executor (never one per job): job tasks read their objects from
//! the stores and wake up on a change counter. The watches re-list on errors and on 410 Gone, and
//! strip managed fields so the stores stay small.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, warn};

use crate::events::{Event, Events};

/// A live, read-only view of this executor's Pods and Jobs.
#[derive(Clone)]
pub struct ClusterView {
    namespace: String,
    pods: Store<Pod>,
    jobs: Store<Job>,
    changes: watch::Receiver<u64>,
    synced: watch::Receiver<(bool, bool)>,
}

impl ClusterView {
    /// Starts both watches on `tracker`; they stop when `stop` is cancelled.
    pub fn spawn(
        client: Client,
        namespace: &str,
        label_selector: &str,
        events: Events,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let (changes_tx, changes) = watch::channel(0u64);
        let (synced_tx, synced) = watch::channel((false, false));
        let changes_tx = Arc::new(changes_tx);
        let synced_tx = Arc::new(synced_tx);
        let config = watcher::Config::default().labels(label_selector);

        let (pods, pod_writer) = reflector::store::<Pod>();
        let pod_stream = watcher(Api::<Pod>::namespaced(client.clone(), namespace), config.clone())
            .default_backoff()
            .modify(|pod| pod.managed_fields_mut().clear())
            .reflect(pod_writer);
        tracker.spawn(drive(
            "pods",
            pod_stream,
            changes_tx.clone(),
            synced_tx.clone(),
            |s, v| s.0 = v,
            events.clone(),
            stop.clone(),
        ));

        let (jobs, job_writer) = reflector::store::<Job>();
        let job_stream = watcher(Api::<Job>::namespaced(client, namespace), config)
            .default_backoff()
            .modify(|job| job.managed_fields_mut().clear())
            .reflect(job_writer);
        tracker.spawn(drive(
            "jobs",
            job_stream,
            changes_tx,
            synced_tx,
            |s, v| s.1 = v,
            events,
            stop,
        ));

        Self {
            namespace: namespace.to_string(),
            pods,
            jobs,
            changes,
            synced,
        }
    }

    /// A receiver that changes whenever any watched Pod or Job changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// True once both watches have delivered their initial list.
    pub fn is_synced(&self) -> bool {
        let (pods, jobs) = *self.synced.borrow();
        pods && jobs
    }

    /// Waits until both watches have delivered their initial list.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.clone();
        // NB: the sender lives as long as the watch tasks; if they end, so does the wait.
        let _ = rx.wait_for(|(pods, jobs)| *pods && *jobs).await;
    }

    /// The Job named `name`, as last seen.
    pub fn job(&self, name: &str) -> Option<Arc<Job>> {
        self.jobs.get(&ObjectRef::new(name).within(&self.namespace))
    }

    /// All of this executor's Jobs, as last seen.
    pub fn jobs(&self) -> Vec<Arc<Job>> {
        self.jobs.state()
    }

    /// The newest pod of the Job named `job_name`.
    pub fn pod_for_job(&self, job_name: &str) -> Option<Arc<Pod>> {
        self.pods
            .state()
            .into_iter()
            .filter(|p| p.labels().get("job-name").map(String::as_str) == Some(job_name))
            .max_by(|a, b| {
                a.meta()
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .cmp(&b.meta().creation_timestamp.as_ref().map(|t| t.0))
            })
    }
}

async fn drive<S, K>(
    kind: &'static str,
    stream: S,
    changes: Arc<watch::Sender<u64>>,
    synced: Arc<watch::Sender<(bool, bool)>>,
    mark: fn(&mut (bool, bool), bool),
    events: Events,
    stop: CancellationToken,
) where
    S: futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            next = stream.next() => next,
        };
        match next {
            Some(Ok(event)) => {
                if matches!(event, watcher::Event::InitDone) {
                    debug!(kind, "watch synced");
                    synced.send_modify(|s| mark(s, true));
                }
                changes.send_modify(|v| *v = v.wrapping_add(1));
            }
            Some(Err(error)) => {
                // The watcher re-establishes itself (re-listing after 410 Gone), with back-off from
                // `default_backoff`. Until it has delivered a fresh list, the store may be stale, so
                // the view reports itself unsynced: no job is dequeued on stale counts.
                events.record(Event::WatchError);
                warn!(kind, %error, "watch failed; re-establishing");
                synced.send_modify(|s| mark(s, false));
                changes.send_modify(|v| *v = v.wrapping_add(1));
            }
            None => break,
        }
    }
}
