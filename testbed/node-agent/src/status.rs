//! The agent's model of a pod's runtime state and its translation into a Kubernetes `PodStatus`.

use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus, PodCondition, PodIP, PodStatus,
    },
    apimachinery::pkg::apis::meta::v1::Time,
};

use crate::env::LOOPBACK_IP;

/// How a container instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub container_id: Option<String>,
}

/// The current state of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Current {
    Waiting { reason: String, message: Option<String> },
    Running { started_at: Timestamp },
    Terminated(Termination),
}

/// One container as the agent tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub state: Current,
    pub last: Option<Termination>,
    pub restart_count: i32,
    pub container_id: Option<String>,
}

impl ContainerView {
    pub fn waiting(name: &str, image: &str, reason: &str) -> Self {
        Self {
            name: name.to_string(),
            image: image.to_string(),
            state: Current::Waiting {
                reason: reason.to_string(),
                message: None,
            },
            last: None,
            restart_count: 0,
            container_id: None,
        }
    }

    fn has_started(&self) -> bool {
        !matches!(self.state, Current::Waiting { .. }) || self.last.is_some()
    }

    fn is_ready(&self) -> bool {
        matches!(self.state, Current::Running { .. })
    }

    fn to_status(&self) -> ContainerStatus {
        let terminated = |t: &Termination| ContainerStateTerminated {
            exit_code: t.exit_code,
            signal: t.signal,
            reason: Some(t.reason.clone()),
            message: t.message.clone().filter(|m| !m.is_empty()),
            started_at: Some(Time(t.started_at)),
            finished_at: Some(Time(t.finished_at)),
            container_id: t.container_id.clone(),
        };
        let state = match &self.state {
            Current::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            Current::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(*started_at)),
                }),
                ..Default::default()
            },
            Current::Terminated(t) => ContainerState {
                terminated: Some(terminated(t)),
                ..Default::default()
            },
        };
        let known_image = !matches!(&self.state, Current::Waiting { reason, .. }
            if matches!(reason.as_str(), "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName"));
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: if known_image {
                format!("node-agent://{}", self.image)
            } else {
                String::new()
            },
            container_id: self.container_id.clone(),
            ready: self.is_ready(),
            started: Some(self.is_ready()),
            restart_count: self.restart_count,
            state: Some(state),
            last_state: Some(
                self.last
                    .as_ref()
                    .map(|t| ContainerState {
                        terminated: Some(terminated(t)),
                        ..Default::default()
                    })
                    .unwrap_or_default(),
            ),
            ..Default::default()
        }
    }
}

/// A pod's final outcome, set explicitly by the pod runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminal {
    pub phase: &'static str,
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// The agent's model of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub start_time: Timestamp,
    pub init: Vec<ContainerView>,
    pub main: Vec<ContainerView>,
    pub initialized: bool,
    pub terminal: Option<Terminal>,
}

impl PodView {
    /// Pending until initialised and every container started once; Running after; terminal when told.
    pub fn phase(&self) -> &'static str {
        if let Some(terminal) = &self.terminal {
            return terminal.phase;
        }
        if self.initialized && self.main.iter().all(ContainerView::has_started) {
            "Running"
        } else {
            "Pending"
        }
    }

    /// The container with this name and kind.
    pub fn container_mut(&mut self, init: bool, index: usize) -> Option<&mut ContainerView> {
        if init {
            self.init.get_mut(index)
        } else {
            self.main.get_mut(index)
        }
    }

    /// Builds the status, keeping `lastTransitionTime` of conditions whose status did not change.
    pub fn to_status(&self, previous: &[PodCondition], now: Timestamp) -> PodStatus {
        let condition = |kind: &str, ok: bool, reason: Option<String>, message: Option<String>| {
            let status = if ok { "True" } else { "False" };
            let transition = previous
                .iter()
                .find(|c| c.type_ == kind && c.status == status)
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            PodCondition {
                type_: kind.to_string(),
                status: status.to_string(),
                reason: if ok { None } else { reason },
                message: if ok { None } else { message },
                last_transition_time: Some(transition),
                last_probe_time: None,
                observed_generation: None,
            }
        };
        let names =
            |list: &[&ContainerView]| list.iter().map(|c| c.name.clone()).collect::<Vec<_>>().join(" ");
        let incomplete: Vec<&ContainerView> = self
            .init
            .iter()
            .filter(|c| !matches!(&c.state, Current::Terminated(t) if t.exit_code == 0))
            .collect();
        let unready: Vec<&ContainerView> = self.main.iter().filter(|c| !c.is_ready()).collect();
        let completed = self.terminal.as_ref().is_some_and(|t| t.phase == "Succeeded");
        let ready_reason = if completed {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        };
        let unready_message = Some(format!("containers with unready status: [{}]", names(&unready)));
        let conditions = vec![
            condition(
                "Initialized",
                self.initialized,
                Some(
                    if completed {
                        "PodCompleted"
                    } else {
                        "ContainersNotInitialized"
                    }
                    .to_string(),
                ),
                Some(format!(
                    "containers with incomplete status: [{}]",
                    names(&incomplete)
                )),
            ),
            condition(
                "Ready",
                unready.is_empty(),
                Some(ready_reason.into()),
                unready_message.clone(),
            ),
            condition(
                "ContainersReady",
                unready.is_empty(),
                Some(ready_reason.into()),
                unready_message,
            ),
            condition("PodScheduled", true, None, None),
        ];
        PodStatus {
            phase: Some(self.phase().to_string()),
            reason: self.terminal.as_ref().and_then(|t| t.reason.clone()),
            message: self.terminal.as_ref().and_then(|t| t.message.clone()),
            host_ip: Some(LOOPBACK_IP.into()),
            pod_ip: Some(LOOPBACK_IP.into()),
            pod_ips: Some(vec![PodIP {
                ip: LOOPBACK_IP.into(),
            }]),
            start_time: Some(Time(self.start_time)),
            conditions: Some(conditions),
            init_container_statuses: (!self.init.is_empty())
                .then(|| self.init.iter().map(ContainerView::to_status).collect()),
            container_statuses: Some(self.main.iter().map(ContainerView::to_status).collect()),
            qos_class: None,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("test timestamp literal is valid")
    }

    fn view() -> PodView {
        PodView {
            start_time: at("2026-01-01T00:00:00Z"),
            init: vec![ContainerView::waiting("setup", "busybox", "PodInitializing")],
            main: vec![ContainerView::waiting("app", "busybox", "PodInitializing")],
            initialized: false,
            terminal: None,
        }
    }

    #[test]
    fn phases_follow_container_progress() {
        let mut pod = view();
        assert_eq!(pod.phase(), "Pending");
        pod.initialized = true;
        assert_eq!(pod.phase(), "Pending");
        pod.main[0].state = Current::Running {
            started_at: at("2026-01-01T00:00:01Z"),
        };
        assert_eq!(pod.phase(), "Running");
        pod.terminal = Some(Terminal {
            phase: "Succeeded",
            reason: None,
            message: None,
        });
        assert_eq!(pod.phase(), "Succeeded");
    }

    #[test]
    fn status_reports_conditions_and_terminations() {
        let mut pod = view();
        let now = at("2026-01-01T00:00:05Z");
        let first = pod.to_status(&[], now);
        let init = first
            .conditions
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.type_ == "Initialized"))
            .cloned();
        let init = init.expect("Initialized condition present");
        assert_eq!(init.status, "False");
        assert_eq!(
            init.message.as_deref(),
            Some("containers with incomplete status: [setup]")
        );
        pod.initialized = true;
        pod.init[0].state = Current::Terminated(Termination {
            exit_code: 0,
            signal: None,
            reason: "Completed".into(),
            message: Some("done".into()),
            started_at: at("2026-01-01T00:00:01Z"),
            finished_at: at("2026-01-01T00:00:02Z"),
            container_id: Some("node-agent://x".into()),
        });
        let later = at("2026-01-01T00:00:09Z");
        let second = pod.to_status(first.conditions.as_deref().unwrap_or_default(), later);
        let conditions = second.conditions.clone().unwrap_or_default();
        let init = conditions
            .iter()
            .find(|c| c.type_ == "Initialized")
            .expect("present");
        assert_eq!(init.status, "True");
        assert_eq!(init.last_transition_time, Some(Time(later)));
        let scheduled = conditions
            .iter()
            .find(|c| c.type_ == "PodScheduled")
            .expect("present");
        assert_eq!(
            scheduled.last_transition_time,
            Some(Time(now)),
            "unchanged conditions keep their time"
        );
        let terminated = second
            .init_container_statuses
            .as_ref()
            .and_then(|s| s[0].state.clone());
        let terminated = terminated.and_then(|s| s.terminated).expect("terminated state");
        assert_eq!(terminated.reason.as_deref(), Some("Completed"));
        assert_eq!(terminated.message.as_deref(), Some("done"));
        assert_eq!(second.pod_ip.as_deref(), Some("127.0.0.1"));
    }
}
