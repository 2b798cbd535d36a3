//! Kubelet-style admission: does a pod's resource request fit next to the pods already running on the node?

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::{config::Allocatable, quantity};

/// Resource requests of one pod, in admission units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    pub millicores: i64,
    pub memory_bytes: i64,
}

impl std::ops::Add for Requests {
    type Output = Requests;
    fn add(self, other: Requests) -> Requests {
        Requests {
            millicores: self.millicores + other.millicores,
            memory_bytes: self.memory_bytes + other.memory_bytes,
        }
    }
}

fn container_requests(container: &Container) -> Requests {
    let resources = container.resources.as_ref();
    // The API server defaults requests to limits when only limits are given; mirror that for safety.
    let pick = |name: &str| {
        resources
            .and_then(|r| r.requests.as_ref().and_then(|q| q.get(name)))
            .or_else(|| resources.and_then(|r| r.limits.as_ref().and_then(|q| q.get(name))))
            .map(|q| q.0.clone())
    };
    Requests {
        millicores: pick("cpu")
            .and_then(|q| quantity::millicores(&q).ok())
            .unwrap_or(0),
        memory_bytes: pick("memory").and_then(|q| quantity::units(&q).ok()).unwrap_or(0),
    }
}

/// Effective requests: max(sum of containers, largest init container) plus pod overhead.
pub fn pod_requests(pod: &Pod) -> Requests {
    let Some(spec) = pod.spec.as_ref() else {
        return Requests::default();
    };
    let sum = spec
        .containers
        .iter()
        .map(container_requests)
        .fold(Requests::default(), |a, b| a + b);
    let init_max = spec
        .init_containers
        .iter()
        .flatten()
        .map(container_requests)
        .fold(Requests::default(), |a, b| Requests {
            millicores: a.millicores.max(b.millicores),
            memory_bytes: a.memory_bytes.max(b.memory_bytes),
        });
    let overhead = spec
        .overhead
        .as_ref()
        .map_or(Requests::default(), |overhead| Requests {
            millicores: overhead
                .get("cpu")
                .and_then(|q| quantity::millicores(&q.0).ok())
                .unwrap_or(0),
            memory_bytes: overhead
                .get("memory")
                .and_then(|q| quantity::units(&q.0).ok())
                .unwrap_or(0),
        });
    Requests {
        millicores: sum.millicores.max(init_max.millicores),
        memory_bytes: sum.memory_bytes.max(init_max.memory_bytes),
    } + overhead
}

/// A pod the node refuses: phase Failed with this reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub message: String,
}

/// Checks `pod` against the node, given the requests of the pods already admitted and not terminated.
pub fn admit(pod: &Requests, running: &[Requests], allocatable: &Allocatable) -> Result<(), Rejection> {
    let used = running.iter().copied().fold(Requests::default(), |a, b| a + b);
    let checks = [
        ("pods", 1, running.len() as i64, allocatable.pods),
        ("cpu", pod.millicores, used.millicores, allocatable.millicores),
        (
            "memory",
            pod.memory_bytes,
            used.memory_bytes,
            allocatable.memory_bytes,
        ),
    ];
    for (resource, requested, used, capacity) in checks {
        if requested > 0 && requested + used > capacity {
            return Err(Rejection {
                reason: format!("OutOf{resource}"),
                message: format!(
                    "Pod Node didn't have enough resource: {resource}, requested: {requested}, used: {used}, capacity: {capacity}"
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).expect("test pod is valid")
    }

    const NODE: Allocatable = Allocatable {
        millicores: 2000,
        memory_bytes: 1 << 30,
        pods: 2,
    };

    #[test]
    fn requests_take_the_larger_of_containers_and_init_containers() {
        let requests = pod_requests(&pod(json!({
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1500m", "memory": "64Mi"}}}],
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "100Mi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "250m"}}},
            ]
        })));
        assert_eq!(
            requests,
            Requests {
                millicores: 1500,
                memory_bytes: 100 << 20
            }
        );
    }

    #[test]
    fn too_much_cpu_is_rejected_like_the_kubelet() {
        let big = Requests {
            millicores: 4000,
            memory_bytes: 0,
        };
        let rejection = admit(&big, &[], &NODE).expect_err("does not fit");
        assert_eq!(rejection.reason, "OutOfcpu");
        assert_eq!(
            rejection.message,
            "Pod Node didn't have enough resource: cpu, requested: 4000, used: 0, capacity: 2000"
        );
    }

    #[test]
    fn used_resources_count() {
        let half = Requests {
            millicores: 0,
            memory_bytes: 600 << 20,
        };
        assert!(admit(&half, &[], &NODE).is_ok());
        let rejection = admit(&half, &[half], &NODE).expect_err("memory exhausted");
        assert_eq!(rejection.reason, "OutOfmemory");
        let none = Requests::default();
        let rejection = admit(&none, &[none, none], &NODE).expect_err("pod count exhausted");
        assert_eq!(rejection.reason, "OutOfpods");
        assert!(
            rejection
                .message
                .ends_with("pods, requested: 1, used: 2, capacity: 2")
        );
    }
}
