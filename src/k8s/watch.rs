//! The shared, label-filtered watches of this executor's Pods and Jobs, kept in local stores.
//!
//! One watch per kind for the whole executor (never one per job): job tasks read their objects from
//! the stores and wake up on a change counter. The watches re-list on errors and on 410 Gone, and
//! strip managed fields so the stores stay small.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use k8s_openapi::{
    api::{batch::v1::Job, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
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
        let feed = |mark: fn(&mut (bool, bool), bool)| Feed {
            changes: changes_tx.clone(),
            synced: synced_tx.clone(),
            mark,
            metrics: metrics.clone(),
            stop: stop.clone(),
        };
        let (pods, pod_writer) = reflector::store::<Pod>();
        let pod_api = Api::<Pod>::namespaced(client.clone(), namespace);
        let pod_config = config.clone();
        let pod_watch = move || {
            watcher(pod_api.clone(), pod_config.clone()).modify(|pod| pod.managed_fields_mut().clear())
        };
        tracker.spawn(drive("pods", pod_watch, pod_writer, feed(|s, v| s.0 = v)));
        let (jobs, job_writer) = reflector::store::<Job>();
        let job_api = Api::<Job>::namespaced(client, namespace);
        let job_watch =
            move || watcher(job_api.clone(), config.clone()).modify(|job| job.managed_fields_mut().clear());
        tracker.spawn(drive("jobs", job_watch, job_writer, feed(|s, v| s.1 = v)));
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

    /// Every pod the Job `created` controls, as last seen.
    pub fn pods_of(&self, created: &CreatedJob) -> Vec<Arc<Pod>> {
        self.pods
            .state()
            .into_iter()
            .filter(|p| controlled_by(p, &created.uid))
            .collect()
    }

    /// The newest pod of the Job `created`. Pods are matched by their controller's UID, not by
    /// the `job-name` label: a terminating pod of an earlier Job of the same name (a re-dequeued
    /// job) must not be taken for this run's pod.
    pub fn pod_of(&self, created: &CreatedJob) -> Option<Arc<Pod>> {
        self.pods_of(created).into_iter().max_by(|a, b| {
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

/// The owner reference that controls `pod` (the API server allows at most one).
pub fn controller(pod: &Pod) -> Option<&OwnerReference> {
    pod.owner_references()
        .iter()
        .find(|owner| owner.controller == Some(true))
}

fn controlled_by(pod: &Pod, uid: &str) -> bool {
    controller(pod).is_some_and(|owner| owner.uid == uid)
}

/// Where one watch reports: the shared change counter and sync flags, metrics, and when to stop.
struct Feed {
    changes: Arc<watch::Sender<u64>>,
    synced: Arc<watch::Sender<(bool, bool)>>,
    mark: fn(&mut (bool, bool), bool),
    metrics: Metrics,
    stop: CancellationToken,
}

/// First wait before a failed watch is started again; doubled per consecutive failure.
const RESTART_DELAY: Duration = Duration::from_millis(500);
const RESTART_DELAY_MAX: Duration = Duration::from_secs(5);

/// Keeps `writer`'s store in line with the cluster, starting a fresh watcher from `start` after
/// every error.
///
/// NB: kube's watcher resumes a failed watch from its last resourceVersion without listing again,
/// so it never reports the end of a new initial list: the view would stay unsynced forever after an
/// API server outage, and objects deleted meanwhile could linger if the resumed watch skipped them.
/// A fresh watcher lists first; the store is replaced only once that list is complete, so job tasks
/// are judged from the fresh list, never from the cache the outage left behind.
async fn drive<K, S>(
    kind: &'static str,
    start: impl Fn() -> S,
    mut writer: reflector::store::Writer<K>,
    feed: Feed,
) where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
    S: futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut delay = RESTART_DELAY;
    loop {
        match watch_once(kind, start(), &mut writer, &feed).await {
            Ended::Stopped => return,
            Ended::Synced => delay = RESTART_DELAY,
            Ended::Failed => {}
        }
        tokio::select! {
            _ = feed.stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RESTART_DELAY_MAX);
    }
}

/// How one watcher ended.
enum Ended {
    Stopped,
    /// It failed after delivering a complete list.
    Synced,
    /// It failed before its list was complete.
    Failed,
}

/// Applies one watcher's events until it fails (the view is then unsynced) or the executor stops.
async fn watch_once<K, S>(
    kind: &'static str,
    stream: S,
    writer: &mut reflector::store::Writer<K>,
    feed: &Feed,
) -> Ended
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
    S: futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream);
    let mut listed = false;
    loop {
        let next = tokio::select! {
            _ = feed.stop.cancelled() => return Ended::Stopped,
            next = stream.next() => next,
        };
        let error = match next {
            Some(Ok(event)) => {
                writer.apply_watcher_event(&event);
                if matches!(event, watcher::Event::InitDone) {
                    debug!(kind, "watch synced");
                    listed = true;
                    feed.synced.send_modify(|s| (feed.mark)(s, true));
                }
                feed.changes.send_modify(|v| *v = v.wrapping_add(1));
                continue;
            }
            Some(Err(error)) => error.to_string(),
            None => "the watch stream ended".to_string(),
        };
        // Until a fresh list is complete, the store may be stale, so the view reports itself
        // unsynced: no job is dequeued on stale counts and no job is judged from it.
        feed.metrics.record(Event::WatchError);
        feed.metrics.record_watch_restart(kind);
        warn!(kind, %error, "watch failed; listing again");
        feed.synced.send_modify(|s| (feed.mark)(s, false));
        feed.changes.send_modify(|v| *v = v.wrapping_add(1));
        return if listed { Ended::Synced } else { Ended::Failed };
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    use super::*;
    use crate::k8s::testing;

    const JOB_NAME: &str = "sg-executor-job-batches-1";

    fn list_at(kind: &str, items: Vec<serde_json::Value>, resource_version: &str) -> serde_json::Value {
        serde_json::json!({
            "kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": resource_version}, "items": items,
        })
    }

    /// Answers the view's requests: the first Job list holds the job, its watch then breaks (the
    /// API server went away), and every later Job list no longer holds it (deleted meanwhile).
    /// Watches after the first are held open, as an idle API server does.
    async fn serve_job_deleted_during_outage(mut server: testing::ApiServer) {
        let job = serde_json::json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": JOB_NAME, "namespace": "default", "uid": "u1", "resourceVersion": "5"},
        });
        let (mut job_lists, mut job_watches, mut held) = (0, 0, Vec::new());
        loop {
            let call = server.next().await;
            let watching = call.param("watch") == Some("true");
            match (call.path.ends_with("/jobs"), watching) {
                (false, false) => call.answer(200, list_at("PodList", vec![], "10")),
                (true, false) => {
                    job_lists += 1;
                    let items = if job_lists == 1 { vec![job.clone()] } else { vec![] };
                    call.answer(200, list_at("JobList", items, "20"));
                }
                (true, true) if job_watches == 0 => {
                    job_watches += 1;
                    call.stream_lines(&[], true);
                }
                _ => held.push(call),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_deleted_while_the_watch_was_broken_is_judged_from_the_fresh_list() {
        let (client, server) = testing::client();
        let serving = tokio::spawn(serve_job_deleted_during_outage(server));
        let (tracker, stop) = (TaskTracker::new(), CancellationToken::new());
        let view = ClusterView::spawn(
            client,
            "default",
            "a=b",
            Metrics::for_tests(),
            &tracker,
            stop.clone(),
        );
        let created = CreatedJob {
            name: JOB_NAME.into(),
            uid: "u1".into(),
        };
        let mut changes = view.subscribe();
        let mut states = Vec::new();
        let judged_fresh = tokio::time::timeout(Duration::from_secs(600), async {
            loop {
                let state = (view.is_synced(), view.job(&created).is_some());
                if states.last() != Some(&state) {
                    states.push(state);
                }
                if state == (true, false) {
                    return;
                }
                changes.changed().await.expect("the watches run");
            }
        })
        .await;
        serving.abort();
        stop.cancel();
        assert!(
            judged_fresh.is_ok(),
            "synced again after the outage, without the deleted Job; (synced, job present) went {states:?}"
        );
        assert_eq!(
            states.first(),
            Some(&(false, false)),
            "unsynced until the first list"
        );
        assert!(
            states.iter().any(|(_, present)| *present),
            "the first list held the job: {states:?}"
        );
    }

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
