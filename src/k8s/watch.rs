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

use crate::{events::Event, metrics::Metrics};

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
        metrics: Metrics,
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
            metrics.clone(),
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
            metrics,
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

    /// The Job `created`, as last seen; `None` once it is gone, even if a Job of the same name
    /// (an earlier or later run of the same queue job) exists.
    pub fn job(&self, created: &CreatedJob) -> Option<Arc<Job>> {
        self.jobs
            .get(&ObjectRef::new(&created.name).within(&self.namespace))
            .filter(|job| job.metadata.uid.as_deref() == Some(created.uid.as_str()))
    }

    /// All of this executor's pods, as last seen.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.pods.state()
    }

    /// All of this executor's Jobs, as last seen.
    pub fn jobs(&self) -> Vec<Arc<Job>> {
        self.jobs.state()
    }

    /// The newest pod of the Job `created`. Pods are matched by their controller's UID, not by
    /// the `job-name` label: a terminating pod of an earlier Job of the same name (a re-dequeued
    /// job) must not be taken for this run's pod.
    pub fn pod_of(&self, created: &CreatedJob) -> Option<Arc<Pod>> {
        self.pods
            .state()
            .into_iter()
            .filter(|p| controlled_by(p, &created.uid))
            .max_by(|a, b| {
                a.meta()
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .cmp(&b.meta().creation_timestamp.as_ref().map(|t| t.0))
            })
    }
}

/// A Job this executor created: its name and the UID the API server gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedJob {
    pub name: String,
    pub uid: String,
}

fn controlled_by(pod: &Pod, uid: &str) -> bool {
    pod.owner_references()
        .iter()
        .any(|owner| owner.controller == Some(true) && owner.uid == uid)
}

async fn drive<S, K>(
    kind: &'static str,
    stream: S,
    changes: Arc<watch::Sender<u64>>,
    synced: Arc<watch::Sender<(bool, bool)>>,
    mark: fn(&mut (bool, bool), bool),
    metrics: Metrics,
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
                metrics.record(Event::WatchError);
                metrics.record_watch_restart(kind);
                warn!(kind, %error, "watch failed; re-establishing");
                synced.send_modify(|s| mark(s, false));
                changes.send_modify(|v| *v = v.wrapping_add(1));
            }
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    use super::*;

    fn pod_owned_by(uid: &str, controller: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                labels: Some([("job-name".to_string(), "sg-executor-job-batches-1".to_string())].into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "Job".into(),
                    name: "sg-executor-job-batches-1".into(),
                    uid: uid.into(),
                    controller: Some(controller),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[test]
    fn a_pod_of_an_earlier_job_with_the_same_name_is_not_this_runs_pod() {
        assert!(controlled_by(&pod_owned_by("uid-2", true), "uid-2"));
        assert!(
            !controlled_by(&pod_owned_by("uid-1", true), "uid-2"),
            "same job-name label, earlier Job"
        );
        assert!(
            !controlled_by(&pod_owned_by("uid-2", false), "uid-2"),
            "not its controller"
        );
    }
}
