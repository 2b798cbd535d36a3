//! Per-node pod handling: the pod watch, admission, one worker per pod (init containers, containers,
//! status writes, activeDeadlineSeconds, deletion) and the policy for pods left by an earlier agent.
//!
//! Flow of one pod: watch event → admission → volumes → init containers in order → containers
//! concurrently → terminal phase → (on deletionTimestamp) kill with grace → clean up → delete.
//!
//! Pods found bound to the node that this process never ran but that already have a `startTime`
//! were started by an earlier agent process whose container processes are gone: they are marked
//! Failed with reason `NodeAgentRestarted`. Pods without a `startTime` were never started and run.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, PodCondition};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    admission::{self, Requests},
    agent::Agent,
    config::{Allocatable, NodeConfig},
    container::{PodRun, Slot},
    status::{ContainerView, PodView, Terminal, Termination},
    volumes,
};

const VOLUME_RETRY: Duration = Duration::from_secs(2);
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

struct Entry {
    updates: watch::Sender<Option<Pod>>,
    requests: Requests,
    finished: Arc<AtomicBool>,
}

/// One simulated node's pod handling.
pub struct NodePods {
    agent: Arc<Agent>,
    node: Arc<NodeConfig>,
    allocatable: Allocatable,
    entries: Mutex<HashMap<String, Entry>>,
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn pod_api(agent: &Agent, pod: &Pod) -> Api<Pod> {
    Api::namespaced(
        agent.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    )
}

impl NodePods {
    pub fn new(agent: Arc<Agent>, node: NodeConfig, allocatable: Allocatable) -> Arc<Self> {
        Arc::new(Self {
            agent,
            node: Arc::new(node),
            allocatable,
            entries: Mutex::new(HashMap::new()),
        })
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Watches the node's pods until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let api: Api<Pod> = Api::all(self.agent.client.clone());
        let config = watcher::Config::default().fields(&format!("spec.nodeName={}", self.node.name));
        let stream = watcher(api, config).default_backoff();
        let mut stream = std::pin::pin!(stream);
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => return,
                event = stream.next() => event,
            };
            match event {
                Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => self.on_apply(pod),
                Some(Ok(watcher::Event::Delete(pod))) => self.on_delete(&pod),
                Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
                Some(Err(error)) => {
                    tracing::warn!(node = %self.node.name, %error, "pod watch failed; retrying")
                }
                None => return,
            }
        }
    }

    fn on_delete(&self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if let Some(entry) = self.entries().get(&uid) {
            entry.updates.send_replace(None);
        }
    }

    fn on_apply(self: &Arc<Self>, pod: Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if let Some(entry) = self.entries().get(&uid) {
            entry.updates.send_replace(Some(pod));
            return;
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            let agent = self.agent.clone();
            tokio::spawn(async move { finish_deletion(&agent, &pod).await });
            return;
        }
        if is_terminal(&pod) {
            return;
        }
        if pod.status.as_ref().and_then(|s| s.start_time.as_ref()).is_some() {
            tracing::warn!(pod = %name, "pod was started by an earlier agent process; marking it failed");
            let agent = self.agent.clone();
            tokio::spawn(async move {
                let message = "the node agent restarted and the pod's processes are gone".to_string();
                fail_pod(&agent, &pod, "NodeAgentRestarted", &message).await;
            });
            return;
        }
        let requests = admission::pod_requests(&pod);
        let running: Vec<Requests> = self
            .entries()
            .values()
            .filter(|e| !e.finished.load(Ordering::SeqCst))
            .map(|e| e.requests)
            .collect();
        if let Err(rejection) = admission::admit(&requests, &running, &self.allocatable) {
            tracing::info!(pod = %name, reason = %rejection.reason, "pod rejected by admission");
            let agent = self.agent.clone();
            tokio::spawn(async move { fail_pod(&agent, &pod, &rejection.reason, &rejection.message).await });
            return;
        }
        let (updates, receiver) = watch::channel(Some(pod.clone()));
        let finished = Arc::new(AtomicBool::new(false));
        self.entries().insert(
            uid.clone(),
            Entry {
                updates,
                requests,
                finished: finished.clone(),
            },
        );
        let this = self.clone();
        tokio::spawn(async move {
            this.pod_worker(pod, receiver, finished).await;
            this.entries().remove(&uid);
        });
    }

    async fn pod_worker(
        &self,
        pod: Pod,
        mut updates: watch::Receiver<Option<Pod>>,
        finished: Arc<AtomicBool>,
    ) {
        let stop = CancellationToken::new();
        let run = run_pod(self.agent.clone(), self.node.clone(), pod.clone(), stop.clone());
        let mut run = std::pin::pin!(run);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut running = true;
        loop {
            tokio::select! {
                () = &mut run, if running => {
                    running = false;
                    finished.store(true, Ordering::SeqCst);
                }
                changed = updates.changed() => {
                    let latest = if changed.is_ok() { updates.borrow_and_update().clone() } else { None };
                    let grace = match &latest {
                        None => Some(Duration::ZERO),
                        Some(p) if p.metadata.deletion_timestamp.is_some() => Some(
                            p.metadata.deletion_grace_period_seconds
                                .map_or(DEFAULT_GRACE, |s| Duration::from_secs(s.max(0) as u64)),
                        ),
                        Some(_) => None,
                    };
                    let Some(grace) = grace else { continue };
                    tracing::info!(pod = ?pod.metadata.name, grace_seconds = grace.as_secs(), "pod deleted; stopping");
                    stop.cancel();
                    // NB: the runners must keep being polled while terminating: they reap the processes.
                    if running {
                        tokio::join!(self.agent.processes.terminate_pod(&uid, grace), run.as_mut());
                    } else {
                        self.agent.processes.terminate_pod(&uid, grace).await;
                    }
                    finished.store(true, Ordering::SeqCst);
                    finish_deletion(&self.agent, latest.as_ref().unwrap_or(&pod)).await;
                    return;
                }
            }
        }
    }
}

/// Removes the pod's directory and logs, then deletes the pod object with grace period 0.
async fn finish_deletion(agent: &Agent, pod: &Pod) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    if !uid.is_empty() {
        let dir = agent.pod_dir(&uid);
        if let Err(error) = tokio::fs::remove_dir_all(&dir).await
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%error, dir = %dir.display(), "cannot remove pod directory");
        }
    }
    agent.logs.remove_pod(&namespace, &name, &uid);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match pod_api(agent, pod).delete(&name, &params).await {
        Ok(_) => tracing::info!(pod = %name, "pod deleted"),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
        Err(error) => tracing::warn!(pod = %name, %error, "deleting pod failed"),
    }
}

/// Sets a pod that never ran here to Failed.
async fn fail_pod(agent: &Agent, pod: &Pod, reason: &str, message: &str) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut status = json!({"phase": "Failed", "reason": reason, "message": message});
    if pod.status.as_ref().and_then(|s| s.start_time.as_ref()).is_none() {
        status["startTime"] = json!(Timestamp::now().to_string());
    }
    // Containers an earlier agent reported as running or waiting are gone: report them terminated.
    let now = Timestamp::now().to_string();
    for field in ["initContainerStatuses", "containerStatuses"] {
        let existing = pod
            .status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
            .and_then(|v| v.get(field).cloned());
        if let Some(serde_json::Value::Array(mut statuses)) = existing {
            for container in &mut statuses {
                if container.pointer("/state/terminated").is_none() {
                    let started = container
                        .pointer("/state/running/startedAt")
                        .cloned()
                        .unwrap_or(json!(now));
                    container["state"] = json!({"terminated": {
                        "exitCode": 137, "reason": reason, "message": message,
                        "startedAt": started, "finishedAt": now,
                    }});
                    container["ready"] = json!(false);
                    container["started"] = json!(false);
                }
            }
            status[field] = serde_json::Value::Array(statuses);
        }
    }
    if let Some(serde_json::Value::Array(conditions)) = pod
        .status
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok())
        .and_then(|v| v.get("conditions").cloned())
    {
        let conditions: Vec<_> = conditions
            .into_iter()
            .map(|mut c| {
                if matches!(
                    c.get("type").and_then(|t| t.as_str()),
                    Some("Ready" | "ContainersReady")
                ) {
                    c["status"] = json!("False");
                    c["reason"] = json!(reason);
                    c["lastTransitionTime"] = json!(now);
                }
                c
            })
            .collect();
        status["conditions"] = serde_json::Value::Array(conditions);
    }
    if let Err(error) = pod_api(agent, pod)
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
    {
        tracing::warn!(pod = %name, %error, "marking pod failed did not work");
    }
}

enum Written {
    /// Written, or given up on after [`STATUS_GIVE_UP`].
    Yes,
    Superseded,
    PodGone,
}

/// First and longest wait between attempts to write a status the API server did not take.
const STATUS_RETRY: Duration = Duration::from_millis(200);
const STATUS_RETRY_MAX: Duration = Duration::from_secs(2);
/// How long one status is retried before the agent gives up on it.
const STATUS_GIVE_UP: Duration = Duration::from_secs(300);

/// Writes one status, retrying until the API server takes it (a kubelet keeps syncing a pod's
/// status through an API server outage; giving up would leave the pod's last state unreported
/// forever) or a newer view of the pod arrives.
async fn write_status(
    api: &Api<Pod>,
    name: &str,
    value: &serde_json::Value,
    view: &mut watch::Receiver<PodView>,
) -> Written {
    let mut delay = STATUS_RETRY;
    let mut view_open = true;
    let give_up = tokio::time::Instant::now() + STATUS_GIVE_UP;
    loop {
        if tokio::time::Instant::now() >= give_up {
            tracing::warn!(pod = %name, "status write failed for {STATUS_GIVE_UP:?}; giving up on it");
            return Written::Yes;
        }
        let patch = Patch::Merge(json!({"status": value}));
        match api.patch_status(name, &PatchParams::default(), &patch).await {
            Ok(_) => return Written::Yes,
            Err(kube::Error::Api(status)) if status.code == 404 => return Written::PodGone,
            Err(error) => tracing::warn!(pod = %name, %error, "status write failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            changed = view.changed(), if view_open => match changed {
                Ok(()) => return Written::Superseded,
                // The pod's processes are done; this is its last status, so keep trying it.
                Err(_) => view_open = false,
            },
        }
        delay = (delay * 2).min(STATUS_RETRY_MAX);
    }
}

/// Writes the pod status whenever the view changes; ends after the last change once the view is dropped.
async fn write_statuses(api: Api<Pod>, name: String, mut view: watch::Receiver<PodView>) {
    let mut conditions: Vec<PodCondition> = Vec::new();
    let mut last_written: Option<serde_json::Value> = None;
    loop {
        let current = view.borrow_and_update().clone();
        let status = current.to_status(&conditions, Timestamp::now());
        match serde_json::to_value(&status) {
            Ok(value) if last_written.as_ref() != Some(&value) => {
                match write_status(&api, &name, &value, &mut view).await {
                    Written::Yes => {
                        conditions = status.conditions.unwrap_or_default();
                        last_written = Some(value);
                    }
                    // A newer view replaces this one; write that instead.
                    Written::Superseded => continue,
                    Written::PodGone => return,
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(pod = %name, %error, "cannot serialise pod status"),
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}

/// Runs a pod to its terminal phase (or until `stop` when it is deleted).
async fn run_pod(agent: Arc<Agent>, node: Arc<NodeConfig>, pod: Pod, stop: CancellationToken) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let Some(spec) = pod.spec.clone() else { return };
    let start_time = Timestamp::now();
    let init_views: Vec<ContainerView> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ContainerView::waiting(&c.name, c.image.as_deref().unwrap_or_default(), "PodInitializing"))
        .collect();
    let main_reason = if init_views.is_empty() {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let main_views: Vec<ContainerView> = spec
        .containers
        .iter()
        .map(|c| ContainerView::waiting(&c.name, c.image.as_deref().unwrap_or_default(), main_reason))
        .collect();
    let initialized = init_views.is_empty();
    let (view, view_rx) = watch::channel(PodView {
        start_time,
        init: init_views,
        main: main_views,
        initialized,
        terminal: None,
    });
    let container_names: Vec<String> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .map(|c| c.name.clone())
        .collect();
    agent.logs.register_pod(&namespace, &name, &uid, &container_names);
    let writer = tokio::spawn(write_statuses(pod_api(&agent, &pod), name.clone(), view_rx));
    let pod_dir: PathBuf = agent.pod_dir(&uid);
    let mut run = PodRun {
        agent: agent.clone(),
        node,
        pod: Arc::new(pod.clone()),
        uid: uid.clone(),
        namespace,
        name: name.clone(),
        pod_dir: pod_dir.clone(),
        view,
        stop: stop.clone(),
        volumes: HashMap::new(),
    };
    tracing::info!(pod = %name, "starting pod");
    let deadline = spec
        .active_deadline_seconds
        .map(|s| Duration::from_secs(s.max(0) as u64));
    let grace = spec
        .termination_grace_period_seconds
        .map_or(DEFAULT_GRACE, |s| Duration::from_secs(s.max(0) as u64));
    let outcome = {
        let work = run_containers(&mut run);
        let mut work = std::pin::pin!(work);
        let deadline_hit = async {
            match deadline {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            outcome = &mut work => outcome,
            () = deadline_hit => {
                tracing::info!(pod = %name, "active deadline exceeded; killing the pod");
                stop.cancel();
                // NB: the runners must keep being polled while terminating: they reap the processes.
                tokio::join!(agent.processes.terminate_pod(&uid, grace), work);
                Some(Terminal {
                    phase: "Failed",
                    reason: Some("DeadlineExceeded".into()),
                    message: Some("Pod was active on the node longer than the specified deadline".into()),
                })
            }
        }
    };
    if let Some(terminal) = outcome {
        tracing::info!(pod = %name, phase = terminal.phase, "pod finished");
        run.view.send_modify(|v| v.terminal = Some(terminal));
    }
    drop(run);
    let _ = writer.await;
}

/// Volumes, init containers in order, then all containers; `None` when stopped by deletion.
async fn run_containers(run: &mut PodRun) -> Option<Terminal> {
    let spec = run.pod.spec.clone()?;
    loop {
        match volumes::prepare(&run.agent.client, &run.pod, &run.pod_dir, &run.agent.state_dir).await {
            Ok(paths) => {
                run.volumes = paths;
                break;
            }
            Err(error) => {
                tracing::info!(pod = %run.name, %error, "volumes not ready");
                let message = error.to_string();
                run.view.send_modify(|v| {
                    let waiting = if v.init.is_empty() {
                        &mut v.main
                    } else {
                        &mut v.init
                    };
                    if let Some(first) = waiting.first_mut() {
                        first.state = crate::status::Current::Waiting {
                            reason: "ContainerCreating".into(),
                            message: Some(message.clone()),
                        };
                    }
                });
                tokio::select! {
                    () = run.stop.cancelled() => return None,
                    () = tokio::time::sleep(VOLUME_RETRY) => {}
                }
            }
        }
    }
    let run = &*run;
    for index in 0..spec.init_containers.as_ref().map_or(0, Vec::len) {
        let termination = run.run_container(Slot { init: true, index }).await?;
        if termination.exit_code != 0 {
            return Some(Terminal {
                phase: "Failed",
                reason: None,
                message: None,
            });
        }
    }
    run.view.send_modify(|v| {
        v.initialized = true;
        for c in &mut v.main {
            c.state = crate::status::Current::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            };
        }
    });
    let runners = (0..spec.containers.len()).map(|index| run.run_container(Slot { init: false, index }));
    let results = futures_util::future::join_all(runners).await;
    let terminations: Vec<Termination> = results.into_iter().collect::<Option<_>>()?;
    if terminations.iter().all(|t| t.exit_code == 0) {
        Some(Terminal {
            phase: "Succeeded",
            reason: None,
            message: None,
        })
    } else {
        Some(Terminal {
            phase: "Failed",
            reason: None,
            message: None,
        })
    }
}
