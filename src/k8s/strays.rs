//! Removing this instance's pods that no Job controls any more, so nothing of the executor's outlives its Job.
//!
//! Kubernetes' garbage collector normally removes a Job's pods with it. Two ways leave one behind:
//! a Job deleted with `--cascade=orphan` (the collector strips the pods' owner reference and keeps
//! them running), and a controller-manager that comes back from an API outage with a stale cache
//! and recreates a pod for a Job that no longer exists. Such a pod holds a node's resources, and
//! nobody reports it. Every job pod carries this instance's labels, and this instance's Jobs are all
//! in the shared view, so a pod whose controlling Job is not among them is a stray.
//!
//! The pods of a Job this executor deleted itself are the garbage collector's: they get a longer
//! grace ([`HANDED_OVER_GRACE`]), because a busy collector can take more than [`STRAY_GRACE`] and
//! deleting them here would cost two calls per job for nothing. A pod created after that delete
//! (by a controller-manager with a stale cache) has a new UID and keeps the short grace.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Preconditions},
};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    api_error,
    watch::{self, ClusterView},
};
use crate::{events::Event, metrics::Metrics};

/// How long a pod must stay uncontrolled before it is removed: the garbage collector deletes the
/// pods of a Job deleted in the foreground or background within moments, so only a pod nobody
/// else will remove is left to the executor (and its delete call is never spent on every job).
pub const STRAY_GRACE: Duration = Duration::from_secs(20);

/// How long the pods of a Job this executor deleted are left to the garbage collector.
pub const HANDED_OVER_GRACE: Duration = Duration::from_secs(300);

/// How often the view is looked over; the look costs no API call.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// One pod no Job of this instance controls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrayPod {
    pub name: String,
    pub uid: String,
    /// The Job the pod names as its controller, if it still names one: (name, uid).
    pub controller: Option<(String, String)>,
}

/// The pods whose Job this executor deleted, by UID, with when: shared by the job tasks that
/// delete and the stray sweeper that waits longer for them.
#[derive(Debug, Clone, Default)]
pub struct HandedOver {
    pods: Arc<Mutex<HashMap<String, Instant>>>,
}

impl HandedOver {
    /// Records that the collector is to remove `pods`, whose Job was just deleted.
    pub fn hand_over(&self, pods: &[Arc<Pod>], now: Instant) {
        let mut handed = self.lock();
        for uid in pods.iter().filter_map(|pod| pod.metadata.uid.clone()) {
            handed.insert(uid, now);
        }
    }

    /// Forgets hand-overs older than [`HANDED_OVER_GRACE`], which keeps the record as small as
    /// a few minutes of jobs.
    fn forget_expired(&self, now: Instant) {
        self.lock()
            .retain(|_, at| now.duration_since(*at) < HANDED_OVER_GRACE);
    }

    /// How long the stray `uid` is given before it is removed here.
    fn grace_for(&self, uid: &str, now: Instant) -> Duration {
        let handed = self.lock().get(uid).copied();
        if handed.is_some_and(|at| now.duration_since(at) < HANDED_OVER_GRACE) {
            HANDED_OVER_GRACE
        } else {
            STRAY_GRACE
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // NB: no code panics while holding the lock, so a poisoned map is still consistent.
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Which uncontrolled pods have been so for how long.
#[derive(Debug, Default)]
pub struct StrayWatch {
    first_seen: HashMap<String, Instant>,
    handed_over: HandedOver,
}

impl StrayWatch {
    /// A watch that gives the pods in `handed_over` to the collector for longer.
    pub fn new(handed_over: HandedOver) -> Self {
        Self {
            first_seen: HashMap::new(),
            handed_over,
        }
    }

    /// The pods among `pods` that no Job in `jobs` controls, that are not already being deleted,
    /// and that have been so for their grace ([`STRAY_GRACE`], or [`HANDED_OVER_GRACE`] for a
    /// pod handed over) before `now`.
    pub fn due(&mut self, pods: &[Arc<Pod>], jobs: &[Arc<Job>], now: Instant) -> Vec<StrayPod> {
        let live: HashSet<&str> = jobs
            .iter()
            .filter_map(|job| job.metadata.uid.as_deref())
            .collect();
        let strays: Vec<StrayPod> = pods
            .iter()
            .filter(|pod| pod.metadata.deletion_timestamp.is_none())
            .filter_map(|pod| uncontrolled(pod, &live))
            .collect();
        let current: HashSet<&str> = strays.iter().map(|s| s.uid.as_str()).collect();
        self.first_seen.retain(|uid, _| current.contains(uid.as_str()));
        self.handed_over.forget_expired(now);
        strays
            .into_iter()
            .filter(|stray| {
                let since = *self.first_seen.entry(stray.uid.clone()).or_insert(now);
                now.duration_since(since) >= self.handed_over.grace_for(&stray.uid, now)
            })
            .collect()
    }
}

/// `pod` as a stray, unless its controller is one of the `live` Job UIDs.
fn uncontrolled(pod: &Pod, live: &HashSet<&str>) -> Option<StrayPod> {
    let uid = pod.metadata.uid.clone()?;
    let controller = watch::controller(pod).filter(|owner| owner.kind == "Job");
    if controller.is_some_and(|owner| live.contains(owner.uid.as_str())) {
        return None;
    }
    Some(StrayPod {
        name: pod.name_any(),
        uid,
        controller: controller.map(|owner| (owner.name.clone(), owner.uid.clone())),
    })
}

/// Looks over the view every few seconds and deletes the pods that stayed strays for their
/// grace ([`STRAY_GRACE`], or [`HANDED_OVER_GRACE`] for a pod handed over), until `stop`.
pub async fn remove_stray_pods(
    view: ClusterView,
    handed_over: HandedOver,
    pods: Api<Pod>,
    jobs: Api<Job>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut watch = StrayWatch::new(handed_over);
    let mut pace = tokio::time::interval(CHECK_EVERY);
    pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = pace.tick() => {}
        }
        // A broken watch may hold a stale list: judge nothing from it.
        if !view.is_synced() {
            continue;
        }
        for stray in watch.due(&view.pods(), &view.jobs(), Instant::now()) {
            remove(&pods, &jobs, &stray, &metrics).await;
        }
    }
}

/// Deletes `stray` once a live read agrees its Job is gone; any failure is left to the next look.
async fn remove(pods: &Api<Pod>, jobs: &Api<Job>, stray: &StrayPod, metrics: &Metrics) {
    match controller_exists(jobs, stray).await {
        Ok(false) => {}
        Ok(true) => return,
        Err(error) => {
            warn!(pod = %stray.name, %error, "could not check whether a pod's Job still exists");
            return;
        }
    }
    // The UID precondition makes sure only the pod judged here is deleted.
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(stray.uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match pods.delete(&stray.name, &params).await {
        Ok(_) => {
            metrics.record(Event::StrayPodDeleted);
            let job = stray
                .controller
                .as_ref()
                .map_or("none", |(name, _)| name.as_str());
            info!(pod = %stray.name, controller = job, "deleted a pod whose Job no longer exists");
        }
        Err(error) if api_error::is_not_found(&error) || api_error::is_conflict(&error) => {}
        Err(error) => warn!(pod = %stray.name, %error, "could not delete a pod whose Job no longer exists"),
    }
}

/// Whether the Job `stray` names as its controller exists with that UID, read from the API server
/// (the view's Job watch may simply not have delivered a brand-new Job yet).
async fn controller_exists(jobs: &Api<Job>, stray: &StrayPod) -> Result<bool, kube::Error> {
    let Some((name, uid)) = &stray.controller else {
        return Ok(false);
    };
    match jobs.get_opt(name).await? {
        Some(job) => Ok(job.metadata.uid.as_deref() == Some(uid.as_str())),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

    use super::*;

    fn job(uid: &str) -> Arc<Job> {
        Arc::new(Job {
            metadata: ObjectMeta {
                name: Some("sg-executor-job-batches-1".into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            ..Job::default()
        })
    }

    fn pod(uid: &str, controller_uid: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("pod-{uid}")),
                uid: Some(uid.into()),
                owner_references: controller_uid.map(|owner| {
                    vec![OwnerReference {
                        api_version: "batch/v1".into(),
                        kind: "Job".into(),
                        name: "sg-executor-job-batches-1".into(),
                        uid: owner.into(),
                        controller: Some(true),
                        ..OwnerReference::default()
                    }]
                }),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    fn names(strays: &[StrayPod]) -> Vec<&str> {
        strays.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn a_pod_of_a_job_in_the_view_is_never_a_stray() {
        let mut watch = StrayWatch::default();
        let t0 = Instant::now();
        let pods = [Arc::new(pod("p1", Some("j1")))];
        assert!(watch.due(&pods, &[job("j1")], t0).is_empty());
        assert!(watch.due(&pods, &[job("j1")], t0 + STRAY_GRACE * 3).is_empty());
    }

    #[test]
    fn a_pod_whose_job_is_gone_is_due_only_after_the_grace() {
        let mut watch = StrayWatch::default();
        let t0 = Instant::now();
        // A Job of the same name but another UID is a later run's, not this pod's.
        let jobs = [job("j2")];
        let pods = [Arc::new(pod("p1", Some("j1")))];
        assert!(watch.due(&pods, &jobs, t0).is_empty());
        assert!(watch.due(&pods, &jobs, t0 + STRAY_GRACE / 2).is_empty());
        let due = watch.due(&pods, &jobs, t0 + STRAY_GRACE);
        assert_eq!(
            due,
            vec![StrayPod {
                name: "pod-p1".into(),
                uid: "p1".into(),
                controller: Some(("sg-executor-job-batches-1".into(), "j1".into())),
            }]
        );
    }

    #[test]
    fn an_orphaned_pod_without_an_owner_is_a_stray() {
        let mut watch = StrayWatch::default();
        let t0 = Instant::now();
        let pods = [Arc::new(pod("p1", None)), Arc::new(pod("p2", Some("j1")))];
        watch.due(&pods, &[job("j1")], t0);
        let due = watch.due(&pods, &[job("j1")], t0 + STRAY_GRACE);
        assert_eq!(names(&due), ["pod-p1"]);
        assert_eq!(due[0].controller, None);
    }

    #[test]
    fn a_pod_already_being_deleted_is_left_to_that_deletion() {
        let mut watch = StrayWatch::default();
        let t0 = Instant::now();
        let mut deleting = pod("p1", Some("gone"));
        deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        let pods = [Arc::new(deleting)];
        watch.due(&pods, &[], t0);
        assert!(watch.due(&pods, &[], t0 + STRAY_GRACE).is_empty());
    }

    #[test]
    fn a_pod_handed_to_the_collector_is_due_only_after_the_longer_grace() {
        let handed_over = HandedOver::default();
        let mut watch = StrayWatch::new(handed_over.clone());
        let t0 = Instant::now();
        let handed = Arc::new(pod("p1", Some("j1")));
        handed_over.hand_over(std::slice::from_ref(&handed), t0);
        // Recreated after the delete, from a stale cache: a new UID, the short grace.
        let pods = [handed, Arc::new(pod("p2", Some("j1")))];
        watch.due(&pods, &[], t0);
        assert_eq!(names(&watch.due(&pods, &[], t0 + STRAY_GRACE)), ["pod-p2"]);
        assert_eq!(
            names(&watch.due(&pods, &[], t0 + HANDED_OVER_GRACE)),
            ["pod-p1", "pod-p2"]
        );
    }

    #[test]
    fn a_hand_over_is_forgotten_after_the_longer_grace() {
        let handed_over = HandedOver::default();
        let t0 = Instant::now();
        handed_over.hand_over(&[Arc::new(pod("p1", Some("j1")))], t0);
        assert_eq!(handed_over.grace_for("p1", t0), HANDED_OVER_GRACE);
        assert_eq!(handed_over.grace_for("p1", t0 + HANDED_OVER_GRACE), STRAY_GRACE);
        // A look at the view after the grace drops the record.
        StrayWatch::new(handed_over.clone()).due(&[], &[], t0 + HANDED_OVER_GRACE);
        assert!(handed_over.lock().is_empty());
    }

    #[test]
    fn a_pod_whose_job_shows_up_again_starts_its_grace_afresh() {
        let mut watch = StrayWatch::default();
        let t0 = Instant::now();
        let pods = [Arc::new(pod("p1", Some("j1")))];
        // The pod watch delivered the pod before the Job watch delivered its Job.
        watch.due(&pods, &[], t0);
        watch.due(&pods, &[job("j1")], t0 + STRAY_GRACE / 2);
        assert!(watch.due(&pods, &[], t0 + STRAY_GRACE).is_empty());
        assert_eq!(names(&watch.due(&pods, &[], t0 + STRAY_GRACE * 2)), ["pod-p1"]);
    }
}
