//! Node registration (labels, addresses, capacity, Ready condition, not-ready taint removal) and heartbeats.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;

const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// Failed to register or update a Node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("creating node {node} failed: {source}")]
    Create { node: String, source: kube::Error },
    #[error("reading node {node} failed: {source}")]
    Read { node: String, source: kube::Error },
    #[error("updating node {node} failed: {source}")]
    Update { node: String, source: kube::Error },
    #[error("updating status of node {node} failed: {source}")]
    Status { node: String, source: kube::Error },
}

fn labels(config: &NodeConfig) -> Value {
    let mut labels = serde_json::Map::new();
    for (key, value) in &config.labels {
        labels.insert(key.clone(), json!(value));
    }
    labels.insert("kubernetes.io/hostname".into(), json!(config.name));
    labels.insert("kubernetes.io/os".into(), json!("linux"));
    labels.insert("kubernetes.io/arch".into(), json!("amd64"));
    labels.insert("beta.kubernetes.io/os".into(), json!("linux"));
    labels.insert("beta.kubernetes.io/arch".into(), json!("amd64"));
    Value::Object(labels)
}

fn conditions(config: &NodeConfig, now: &str, started: &str) -> Value {
    let pressure = |kind: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": "False", "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": started})
    };
    let ready = if config.not_ready {
        json!({"type": "Ready", "status": "False", "reason": "KubeletNotReady",
               "message": "node configured as not ready", "lastHeartbeatTime": now, "lastTransitionTime": started})
    } else {
        json!({"type": "Ready", "status": "True", "reason": "KubeletReady",
               "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": started})
    };
    json!([
        pressure(
            "MemoryPressure",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        pressure(
            "DiskPressure",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        pressure(
            "PIDPressure",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        ready,
    ])
}

// NB: the Hostname address is 127.0.0.1 rather than the node name: the API server prefers Hostname when
// proxying to the node, and node names do not resolve here (the serving cert has IP SAN 127.0.0.1).
fn status(config: &NodeConfig, port: u16, now: &str, started: &str) -> Value {
    let resources = json!({
        "cpu": config.cpu, "memory": config.memory, "pods": config.pods.to_string(),
        "ephemeral-storage": "100Gi",
    });
    json!({
        "capacity": resources,
        "allocatable": resources,
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "nodeInfo": {
            "machineID": "node-agent", "systemUUID": config.name, "bootID": format!("node-agent-{}", std::process::id()),
            "kernelVersion": "node-agent", "osImage": "node-agent simulated node", "containerRuntimeVersion": "node-agent://0.1.0",
            "kubeletVersion": "v1.20.2", "kubeProxyVersion": "v1.20.2", "operatingSystem": "linux", "architecture": "amd64",
        },
        "conditions": conditions(config, now, started),
    })
}

/// Creates or updates the Node, sets its status and fixes the not-ready taint.
pub async fn register(
    client: &Client,
    config: &NodeConfig,
    port: u16,
    started: Timestamp,
) -> Result<(), NodeError> {
    let api: Api<Node> = Api::all(client.clone());
    let node_name = config.name.clone();
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": config.name, "labels": labels(config)},
    }))
    .map_err(|e| NodeError::Create {
        node: node_name.clone(),
        source: kube::Error::SerdeError(e),
    })?;
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => tracing::info!(node = %config.name, "node created"),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            api.patch(
                &config.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": labels(config)}})),
            )
            .await
            .map_err(|source| NodeError::Update {
                node: node_name.clone(),
                source,
            })?;
            tracing::info!(node = %config.name, "node existed, labels updated");
        }
        Err(source) => {
            return Err(NodeError::Create {
                node: node_name,
                source,
            });
        }
    }
    let now = Timestamp::now().to_string();
    let started = started.to_string();
    api.patch_status(
        &config.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status(config, port, &now, &started)})),
    )
    .await
    .map_err(|source| NodeError::Status {
        node: node_name.clone(),
        source,
    })?;
    fix_taints(&api, config).await
}

/// Removes the not-ready taint the API server adds at creation (kept for a node configured not ready).
async fn fix_taints(api: &Api<Node>, config: &NodeConfig) -> Result<(), NodeError> {
    let node = api.get(&config.name).await.map_err(|source| NodeError::Read {
        node: config.name.clone(),
        source,
    })?;
    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
    let mut kept: Vec<_> = taints
        .iter()
        .filter(|t| t.key != NOT_READY_TAINT)
        .cloned()
        .collect();
    if config.not_ready {
        kept.push(k8s_openapi::api::core::v1::Taint {
            key: NOT_READY_TAINT.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
    }
    let unchanged = kept.len() == taints.len()
        && kept
            .iter()
            .all(|t| taints.iter().any(|o| o.key == t.key && o.effect == t.effect));
    if unchanged {
        return Ok(());
    }
    api.patch(
        &config.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"taints": kept}})),
    )
    .await
    .map_err(|source| NodeError::Update {
        node: config.name.clone(),
        source,
    })?;
    Ok(())
}

/// Refreshes the conditions' heartbeat time every ~10 s until cancelled; re-registers if the Node vanished.
pub async fn heartbeat(
    client: Client,
    config: NodeConfig,
    port: u16,
    started: Timestamp,
    cancel: CancellationToken,
) {
    let api: Api<Node> = Api::all(client.clone());
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
        }
        let now = Timestamp::now().to_string();
        let patch = json!({"status": {"conditions": conditions(&config, &now, &started.to_string())}});
        match api
            .patch_status(&config.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => tracing::debug!(node = %config.name, "heartbeat"),
            Err(kube::Error::Api(status)) if status.code == 404 => {
                tracing::warn!(node = %config.name, "node disappeared, registering again");
                if let Err(error) = register(&client, &config, port, started).await {
                    tracing::warn!(%error, "re-registration failed");
                }
            }
            Err(error) => tracing::warn!(node = %config.name, %error, "heartbeat failed"),
        }
    }
}
