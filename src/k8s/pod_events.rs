//! Reads the Kubernetes Events of a pod already judged stuck, for what its status does not say: a
//! cluster autoscaler's verdict on an unschedulable pod and the runtime's image-pull message.
//!
//! One filtered list per stuck pod, never a watch or a poll of every pod: Events are read only
//! when [`Verdict::ReadPodEvents`](super::failure::Verdict::ReadPodEvents) asks for them.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use jiff::Timestamp;
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{Event, Pod},
};
use kube::{Api, api::ListParams};
use tracing::{debug, warn};

use super::failure::{Timeouts, Tracker, Verdict};

/// The reason cluster-autoscaler gives when it is adding a node for the pod.
pub const SCALING_UP: &str = "TriggeredScaleUp";
/// The reason cluster-autoscaler gives when no node group it manages would fit the pod.
pub const WILL_NOT_SCALE_UP: &str = "NotTriggerScaleUp";
/// The reason the kubelet gives to a failed image pull (and to other container failures).
const KUBELET_FAILED: &str = "Failed";

/// What the cluster autoscaler last said about the pod, with its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Autoscaler {
    ScalingUp(String),
    WillNotScaleUp(String),
}

/// What a pod's Events say that its status does not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodEvents {
    /// The latest autoscaler verdict; `None` when no autoscaler spoke about the pod.
    pub autoscaler: Option<Autoscaler>,
    /// Per container, the message of its latest failed pull (`Failed to pull image "x": ...`).
    pub pull_failures: HashMap<String, String>,
}

/// How long one read of a pod's Events may take; a slower API server counts as unreadable Events.
const READ_LIMIT: Duration = Duration::from_secs(10);

/// A job's [`Tracker`] with the Events reads it asks for once the pod is judged stuck.
pub struct StuckPodJudge {
    tracker: Tracker,
    events: Api<Event>,
}

impl StuckPodJudge {
    /// Judges with `tracker`, reading Events from `events` (the job namespace's).
    pub fn new(tracker: Tracker, events: Api<Event>) -> Self {
        Self { tracker, events }
    }

    /// [`Tracker::evaluate`], with the pod's Events read first when the tracker asks for them;
    /// never returns [`Verdict::ReadPodEvents`].
    pub async fn evaluate(
        &mut self,
        now: Instant,
        timeouts: &Timeouts,
        job: Option<&Job>,
        pod: Option<&Pod>,
    ) -> Verdict {
        let verdict = self.tracker.evaluate(now, timeouts, job, pod);
        if verdict != Verdict::ReadPodEvents {
            return verdict;
        }
        let events = self.read_for(pod).await;
        self.tracker.note_pod_events(now, events);
        match self.tracker.evaluate(now, timeouts, job, pod) {
            // Events just noted are fresh, so this cannot happen; never read in a loop regardless.
            Verdict::ReadPodEvents => Verdict::Waiting {
                recheck_in: Some(READ_LIMIT),
            },
            other => other,
        }
    }

    /// The Events of `pod`; `None` (logged) when they cannot be read.
    async fn read_for(&self, pod: Option<&Pod>) -> Option<PodEvents> {
        let uid = pod.and_then(|pod| pod.metadata.uid.as_deref())?;
        match tokio::time::timeout(READ_LIMIT, read(&self.events, uid)).await {
            Ok(Ok(events)) => {
                debug!(?events, "read the stuck pod's events");
                Some(events)
            }
            Ok(Err(error)) => {
                warn!(%error, "cannot read the stuck pod's events; judging without them");
                None
            }
            Err(_) => {
                warn!("the stuck pod's events took too long to read; judging without them");
                None
            }
        }
    }
}

/// Lists the Events whose involved object is the pod with `pod_uid`.
///
/// # Errors
/// When the API server does not answer the list.
pub async fn read(events: &Api<Event>, pod_uid: &str) -> Result<PodEvents, kube::Error> {
    let params = ListParams::default().fields(&format!("involvedObject.uid={pod_uid}"));
    let list = events.list(&params).await?;
    Ok(summarize(&list.items))
}

/// The latest autoscaler verdict and pull failures among `events`, judged by when each last
/// happened (Events are aggregated: a repeated one keeps its name and moves its last timestamp).
pub fn summarize(events: &[Event]) -> PodEvents {
    let mut by_time: Vec<&Event> = events.iter().collect();
    by_time.sort_by_key(|event| last_seen(event));
    let mut summary = PodEvents::default();
    for event in by_time {
        let message = event.message.clone().unwrap_or_default();
        match event.reason.as_deref() {
            Some(SCALING_UP) => summary.autoscaler = Some(Autoscaler::ScalingUp(message)),
            Some(WILL_NOT_SCALE_UP) => summary.autoscaler = Some(Autoscaler::WillNotScaleUp(message)),
            Some(KUBELET_FAILED) if message.contains("pull") => {
                if let Some(container) = container_of(event) {
                    summary.pull_failures.insert(container, message);
                }
            }
            _ => {}
        }
    }
    summary
}

/// When the event last happened, from the newest field the reporter may have set.
fn last_seen(event: &Event) -> Option<Timestamp> {
    event
        .series
        .as_ref()
        .and_then(|series| series.last_observed_time.as_ref())
        .map(|time| time.0)
        .or_else(|| event.last_timestamp.as_ref().map(|time| time.0))
        .or_else(|| event.event_time.as_ref().map(|time| time.0))
        .or_else(|| event.first_timestamp.as_ref().map(|time| time.0))
        .or_else(|| event.metadata.creation_timestamp.as_ref().map(|time| time.0))
}

/// The container an event is about: the kubelet names it in `fieldPath`, as in
/// `spec.initContainers{setup-workspace}` or `spec.containers{main}`.
fn container_of(event: &Event) -> Option<String> {
    let path = event.involved_object.field_path.as_deref()?;
    let (_, rest) = path.split_once('{')?;
    let (name, _) = rest.split_once('}')?;
    Some(name.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::k8s::testing;

    fn event(reason: &str, message: &str, last: &str, field_path: Option<&str>) -> Value {
        json!({
            "metadata": {"name": format!("pod-1.{reason}{last}"), "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "pod-1", "uid": "uid-1", "fieldPath": field_path},
            "reason": reason, "message": message, "lastTimestamp": last,
            "source": {"component": if reason.contains("ScaleUp") { "cluster-autoscaler" } else { "kubelet" }},
        })
    }

    fn events(items: Vec<Value>) -> Vec<Event> {
        serde_json::from_value(Value::Array(items)).expect("valid Event fixtures")
    }

    #[test]
    fn the_latest_autoscaler_verdict_wins_whatever_the_list_order() {
        let summary = summarize(&events(vec![
            event(
                WILL_NOT_SCALE_UP,
                "pod didn't trigger scale-up",
                "2026-01-01T00:02:00Z",
                None,
            ),
            event(
                SCALING_UP,
                "pod triggered scale-up: [{pool-a 1->2 (max: 5)}]",
                "2026-01-01T00:01:00Z",
                None,
            ),
        ]));
        assert_eq!(
            summary.autoscaler,
            Some(Autoscaler::WillNotScaleUp("pod didn't trigger scale-up".into()))
        );
        let summary = summarize(&events(vec![
            event(
                WILL_NOT_SCALE_UP,
                "pod didn't trigger scale-up",
                "2026-01-01T00:01:00Z",
                None,
            ),
            event(SCALING_UP, "pod triggered scale-up", "2026-01-01T00:02:00Z", None),
        ]));
        assert_eq!(
            summary.autoscaler,
            Some(Autoscaler::ScalingUp("pod triggered scale-up".into()))
        );
    }

    #[test]
    fn pull_failures_are_kept_per_container_and_other_events_ignored() {
        let summary = summarize(&events(vec![
            event(
                "Scheduled",
                "Successfully assigned default/pod-1",
                "2026-01-01T00:00:00Z",
                None,
            ),
            event(
                KUBELET_FAILED,
                "Failed to pull image \"x\": rpc error: code = NotFound desc = not found",
                "2026-01-01T00:00:05Z",
                Some("spec.initContainers{setup-workspace}"),
            ),
            event(
                KUBELET_FAILED,
                "Error: ErrImagePull",
                "2026-01-01T00:00:06Z",
                Some("spec.containers{main}"),
            ),
        ]));
        assert_eq!(summary.autoscaler, None);
        assert_eq!(
            summary.pull_failures.get("setup-workspace").map(String::as_str),
            Some("Failed to pull image \"x\": rpc error: code = NotFound desc = not found")
        );
        assert!(!summary.pull_failures.contains_key("main"), "{summary:?}");
    }

    mod judge {
        use super::*;
        use crate::k8s::testing::ApiServer;

        const T: Timeouts = Timeouts {
            pending: Duration::from_secs(600),
            unschedulable: Duration::from_secs(60),
            image_pull: Duration::from_secs(60),
            pod_creation: Duration::from_secs(30),
        };
        const SCHEDULER: &str =
            "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.";

        fn job() -> Job {
            serde_json::from_value(json!({"metadata": {"name": "sg-executor-job-batches-1"}}))
                .expect("job fixture")
        }

        fn unschedulable_pod() -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "pod-1", "uid": "uid-1"},
                "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                    "reason": "Unschedulable", "message": SCHEDULER}]}}))
            .expect("pod fixture")
        }

        fn pulling_pod(reason: &str, message: &str) -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "pod-1", "uid": "uid-1"},
                "status": {"phase": "Pending", "initContainerStatuses": [{"name": "setup-workspace",
                    "image": "registry.example/missing:1", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": message}}}]}}))
            .expect("pod fixture")
        }

        fn start() -> (StuckPodJudge, ApiServer, Instant) {
            let (client, server) = testing::client();
            let now = Instant::now();
            (
                StuckPodJudge::new(Tracker::new(now), Api::namespaced(client, "default")),
                server,
                now,
            )
        }

        /// Evaluates at `at`, failing the test if the judge reads Events.
        async fn without_reading(judge: &mut StuckPodJudge, at: Instant, pod: &Pod) -> Verdict {
            let job = job();
            tokio::time::timeout(
                Duration::from_secs(3600),
                judge.evaluate(at, &T, Some(&job), Some(pod)),
            )
            .await
            .expect("judged without reading Events")
        }

        /// Evaluates at `at`, answering the one Events list it must make with `answer`.
        async fn reading(
            judge: &mut StuckPodJudge,
            server: &mut ApiServer,
            at: Instant,
            pod: &Pod,
            answer: Result<Vec<Value>, u16>,
        ) -> Verdict {
            let serve = async {
                let call = server.expect("GET /api/v1/namespaces/default/events").await;
                assert_eq!(call.param("fieldSelector"), Some("involvedObject.uid=uid-1"));
                match answer {
                    Ok(items) => call.answer(200, testing::list("EventList", items)),
                    Err(code) => call.fail(code, "Forbidden"),
                }
            };
            let job = job();
            let (verdict, ()) = tokio::join!(judge.evaluate(at, &T, Some(&job), Some(pod)), serve);
            verdict
        }

        fn failure_text(verdict: Verdict) -> String {
            match verdict {
                Verdict::Failed(failure) => failure.reason,
                other => panic!("expected a failure, got {other:?}"),
            }
        }

        #[tokio::test(start_paused = true)]
        async fn with_no_autoscaler_an_unschedulable_pod_fails_after_the_short_wait() {
            let (mut judge, mut server, t0) = start();
            let pod = unschedulable_pod();
            assert_eq!(
                without_reading(&mut judge, t0, &pod).await,
                Verdict::Waiting {
                    recheck_in: Some(T.unschedulable)
                }
            );
            let scheduler_event = event("FailedScheduling", SCHEDULER, "2026-01-01T00:00:00Z", None);
            let verdict = reading(
                &mut judge,
                &mut server,
                t0 + T.unschedulable,
                &pod,
                Ok(vec![scheduler_event]),
            )
            .await;
            let text = failure_text(verdict);
            assert!(text.contains(SCHEDULER), "{text}");
            assert!(text.contains("no cluster autoscaler is adding a node for it (waited 1m, KUBERNETES_JOB_UNSCHEDULABLE_TIMEOUT)"), "{text}");
        }

        #[tokio::test(start_paused = true)]
        async fn triggered_scale_up_keeps_waiting_until_the_autoscaler_gives_up() {
            let (mut judge, mut server, t0) = start();
            let pod = unschedulable_pod();
            without_reading(&mut judge, t0, &pod).await;
            let scaling = event(
                SCALING_UP,
                "pod triggered scale-up: [{pool-a 1->2 (max: 3)}]",
                "2026-01-01T00:01:00Z",
                None,
            );
            let verdict = reading(
                &mut judge,
                &mut server,
                t0 + T.unschedulable,
                &pod,
                Ok(vec![scaling.clone()]),
            )
            .await;
            assert_eq!(
                verdict,
                Verdict::Waiting {
                    recheck_in: Some(T.unschedulable)
                }
            );
            // Within one short wait of the last read, nothing is read again.
            let halfway = t0 + T.unschedulable + T.unschedulable / 2;
            assert_eq!(
                without_reading(&mut judge, halfway, &pod).await,
                Verdict::Waiting {
                    recheck_in: Some(T.unschedulable / 2)
                }
            );
            let gave_up = event(
                WILL_NOT_SCALE_UP,
                "pod didn't trigger scale-up: 1 max node group size reached",
                "2026-01-01T00:02:00Z",
                None,
            );
            let verdict = reading(
                &mut judge,
                &mut server,
                t0 + T.unschedulable * 2,
                &pod,
                Ok(vec![scaling, gave_up]),
            )
            .await;
            let text = failure_text(verdict);
            assert!(text.contains(SCHEDULER), "{text}");
            assert!(
                text.ends_with(
                    "; cluster-autoscaler: pod didn't trigger scale-up: 1 max node group size reached"
                ),
                "{text}"
            );
        }

        #[tokio::test(start_paused = true)]
        async fn a_scale_up_that_never_lands_fails_at_the_pending_timeout() {
            let (mut judge, mut server, t0) = start();
            let pod = unschedulable_pod();
            without_reading(&mut judge, t0, &pod).await;
            let scaling = event(
                SCALING_UP,
                "pod triggered scale-up: [{pool-a 1->2 (max: 3)}]",
                "2026-01-01T00:01:00Z",
                None,
            );
            let mut at = t0 + T.unschedulable;
            while at < t0 + T.pending {
                let verdict = reading(&mut judge, &mut server, at, &pod, Ok(vec![scaling.clone()])).await;
                assert!(matches!(verdict, Verdict::Waiting { .. }), "{verdict:?}");
                at += T.unschedulable;
            }
            let text = failure_text(without_reading(&mut judge, t0 + T.pending, &pod).await);
            assert!(
                text.starts_with(&format!("the pod could not be scheduled within 10m: {SCHEDULER}")),
                "{text}"
            );
            assert!(
                text.contains("cluster-autoscaler was scaling up: pod triggered scale-up"),
                "{text}"
            );
        }

        #[tokio::test(start_paused = true)]
        async fn unreadable_events_leave_the_decision_to_the_pending_timeout() {
            let (mut judge, mut server, t0) = start();
            let pod = unschedulable_pod();
            without_reading(&mut judge, t0, &pod).await;
            let verdict = reading(&mut judge, &mut server, t0 + T.unschedulable, &pod, Err(403)).await;
            assert_eq!(
                verdict,
                Verdict::Waiting {
                    recheck_in: Some(T.unschedulable)
                }
            );
        }

        #[tokio::test(start_paused = true)]
        async fn a_pull_seen_only_in_back_off_is_explained_by_the_kubelets_event() {
            let (mut judge, mut server, t0) = start();
            let pod = pulling_pod(
                "ImagePullBackOff",
                "Back-off pulling image \"registry.example/missing:1\"",
            );
            without_reading(&mut judge, t0, &pod).await;
            let runtime = "Failed to pull image \"registry.example/missing:1\": rpc error: code = NotFound desc = \
                           failed to pull and unpack image \"registry.example/missing:1\": not found";
            let failed = event(
                KUBELET_FAILED,
                runtime,
                "2026-01-01T00:00:05Z",
                Some("spec.initContainers{setup-workspace}"),
            );
            let verdict = reading(&mut judge, &mut server, t0 + T.image_pull, &pod, Ok(vec![failed])).await;
            let text = failure_text(verdict);
            assert!(
                text.starts_with("image \"registry.example/missing:1\" could not be pulled within 1m"),
                "{text}"
            );
            assert!(text.ends_with(runtime), "{text}");
        }

        #[tokio::test(start_paused = true)]
        async fn a_pull_error_seen_in_the_status_needs_no_events() {
            let (mut judge, _server, t0) = start();
            let runtime = "rpc error: code = NotFound desc = registry.example/missing:1: not found";
            without_reading(&mut judge, t0, &pulling_pod("ErrImagePull", runtime)).await;
            let back_off = pulling_pod(
                "ImagePullBackOff",
                "Back-off pulling image \"registry.example/missing:1\"",
            );
            let text = failure_text(without_reading(&mut judge, t0 + T.image_pull, &back_off).await);
            assert!(text.contains("(ImagePullBackOff)"), "{text}");
            assert!(
                text.ends_with(runtime),
                "the runtime's message survives the back-off: {text}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn events_are_listed_for_the_one_pod_by_uid() {
        let (client, mut server) = testing::client();
        let api: Api<Event> = Api::namespaced(client, "default");
        let task = tokio::spawn(async move { read(&api, "uid-1").await });
        let call = server.expect("GET /api/v1/namespaces/default/events").await;
        assert_eq!(call.param("fieldSelector"), Some("involvedObject.uid=uid-1"));
        assert_eq!(call.param("watch"), None);
        call.answer(
            200,
            testing::list(
                "EventList",
                vec![event(
                    SCALING_UP,
                    "pod triggered scale-up",
                    "2026-01-01T00:00:00Z",
                    None,
                )],
            ),
        );
        let summary = testing::finished(task).await.expect("listed");
        assert_eq!(
            summary.autoscaler,
            Some(Autoscaler::ScalingUp("pod triggered scale-up".into()))
        );
    }
}
