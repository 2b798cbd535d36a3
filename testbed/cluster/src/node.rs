//! Descriptions of the simulated nodes and their translation into the node agent's configuration file.

use std::{collections::BTreeMap, collections::BTreeSet, time::Duration};

use serde::Serialize;

use crate::error::{Error, Result};

/// One simulated node, played by the node agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Node name; also the value of its `kubernetes.io/hostname` label.
    pub name: String,
    /// Extra labels on the Node object.
    pub labels: BTreeMap<String, String>,
    /// CPU capacity as a Kubernetes quantity.
    pub cpu: String,
    /// Memory capacity as a Kubernetes quantity.
    pub memory: String,
    /// Pod capacity.
    pub pods: u32,
    /// `RLIMIT_NOFILE` for the node's container processes; `None` keeps the agent's own limit.
    pub nofile_limit: Option<u64>,
    /// The node registers but never reports Ready.
    pub not_ready: bool,
    /// How long after the agent starts the node registers.
    pub start_delay: Duration,
    /// Images this node fails to pull (besides those under `unpullable.invalid/`).
    pub unpullable_images: Vec<String>,
}

impl NodeSpec {
    /// A node with 4 CPUs, 16Gi of memory and room for 110 pods.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            labels: BTreeMap::new(),
            cpu: "4".to_owned(),
            memory: "16Gi".to_owned(),
            pods: 110,
            nofile_limit: None,
            not_ready: false,
            start_delay: Duration::ZERO,
            unpullable_images: Vec::new(),
        }
    }

    /// Adds a label to the Node object.
    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets the CPU capacity (a Kubernetes quantity such as `"2"` or `"500m"`).
    pub fn with_cpu(mut self, cpu: &str) -> Self {
        cpu.clone_into(&mut self.cpu);
        self
    }

    /// Sets the memory capacity (a Kubernetes quantity such as `"8Gi"`).
    pub fn with_memory(mut self, memory: &str) -> Self {
        memory.clone_into(&mut self.memory);
        self
    }

    /// Sets the pod capacity.
    pub fn with_pods(mut self, pods: u32) -> Self {
        self.pods = pods;
        self
    }

    /// Makes the node register without ever becoming Ready.
    pub fn not_ready(mut self) -> Self {
        self.not_ready = true;
        self
    }

    /// Sets `RLIMIT_NOFILE` for the node's container processes.
    pub fn with_nofile_limit(mut self, limit: u64) -> Self {
        self.nofile_limit = Some(limit);
        self
    }

    /// Delays the node's registration after the agent starts.
    pub fn with_start_delay(mut self, delay: Duration) -> Self {
        self.start_delay = delay;
        self
    }

    /// Makes this node fail to pull the given image.
    pub fn with_unpullable_image(mut self, image: &str) -> Self {
        self.unpullable_images.push(image.to_owned());
        self
    }

    /// Whether [`crate::TestCluster::start`] waits for this node to be Ready before returning.
    ///
    /// Nodes that are meant to be late or never Ready are not waited for, so tests can observe
    /// the cluster before they arrive.
    pub(crate) fn awaited_at_startup(&self) -> bool {
        !self.not_ready && self.start_delay.is_zero()
    }
}

/// What cluster to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// The simulated nodes. With no nodes, no node agent is started (control plane only).
    pub nodes: Vec<NodeSpec>,
    /// Fault knob: the node agent cuts every `follow` log stream after this long.
    pub log_stream_cut: Option<Duration>,
}

impl Default for ClusterOptions {
    /// One node called `node-1`.
    fn default() -> Self {
        Self {
            nodes: vec![NodeSpec::new("node-1")],
            log_stream_cut: None,
        }
    }
}

impl ClusterOptions {
    /// Cluster with the given nodes.
    pub fn with_nodes(nodes: Vec<NodeSpec>) -> Self {
        Self {
            nodes,
            log_stream_cut: None,
        }
    }

    /// Makes the node agent cut every `follow` log stream after `cut` (a flaky node connection).
    pub fn with_log_stream_cut(mut self, cut: Duration) -> Self {
        self.log_stream_cut = Some(cut);
        self
    }

    /// Rejects node lists that the API server or the node agent cannot run.
    pub(crate) fn validate(&self) -> Result<()> {
        let mut seen = BTreeSet::new();
        for node in &self.nodes {
            if !is_dns_subdomain(&node.name) {
                return Err(Error::InvalidNodes(format!(
                    "node name {:?} is not a lowercase DNS subdomain",
                    node.name
                )));
            }
            if !seen.insert(node.name.as_str()) {
                return Err(Error::InvalidNodes(format!(
                    "node name {:?} appears twice",
                    node.name
                )));
            }
        }
        Ok(())
    }
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The node agent's `--config` file.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeAgentConfig<'a> {
    nodes: Vec<NodeAgentNode<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_stream_cut_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeAgentNode<'a> {
    name: &'a str,
    labels: &'a BTreeMap<String, String>,
    cpu: &'a str,
    memory: &'a str,
    pods: u32,
    nofile_limit: Option<u64>,
    not_ready: bool,
    start_delay_ms: u64,
    unpullable_images: &'a [String],
}

impl<'a> NodeAgentConfig<'a> {
    pub(crate) fn build(nodes: &'a [NodeSpec], log_stream_cut: Option<Duration>) -> Self {
        let nodes = nodes
            .iter()
            .map(|node| NodeAgentNode {
                name: &node.name,
                labels: &node.labels,
                cpu: &node.cpu,
                memory: &node.memory,
                pods: node.pods,
                nofile_limit: node.nofile_limit,
                not_ready: node.not_ready,
                start_delay_ms: u64::try_from(node.start_delay.as_millis()).unwrap_or(u64::MAX),
                unpullable_images: &node.unpullable_images,
            })
            .collect();
        Self {
            nodes,
            log_stream_cut_ms: log_stream_cut.map(|cut| u64::try_from(cut.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_agent_config_uses_the_agents_camel_case_field_names() {
        let nodes = vec![
            NodeSpec::new("node-1")
                .with_label("disk", "ssd")
                .with_nofile_limit(1024)
                .with_start_delay(Duration::from_millis(1500))
                .with_unpullable_image("registry.example/broken:1")
                .not_ready(),
        ];
        let json = serde_json::to_value(NodeAgentConfig::build(&nodes, None)).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"nodes": [{
                "name": "node-1", "labels": {"disk": "ssd"}, "cpu": "4", "memory": "16Gi", "pods": 110,
                "nofileLimit": 1024, "notReady": true, "startDelayMs": 1500,
                "unpullableImages": ["registry.example/broken:1"]
            }]})
        );
    }

    #[test]
    fn duplicate_and_malformed_node_names_are_rejected() {
        let duplicate = ClusterOptions::with_nodes(vec![NodeSpec::new("a"), NodeSpec::new("a")]);
        assert!(matches!(duplicate.validate(), Err(Error::InvalidNodes(m)) if m.contains("twice")));
        let upper = ClusterOptions::with_nodes(vec![NodeSpec::new("Node-1")]);
        assert!(matches!(upper.validate(), Err(Error::InvalidNodes(m)) if m.contains("Node-1")));
        assert!(ClusterOptions::default().validate().is_ok());
    }

    #[test]
    fn late_and_unready_nodes_are_not_awaited() {
        assert!(NodeSpec::new("a").awaited_at_startup());
        assert!(!NodeSpec::new("a").not_ready().awaited_at_startup());
        assert!(
            !NodeSpec::new("a")
                .with_start_delay(Duration::from_secs(1))
                .awaited_at_startup()
        );
    }
}
