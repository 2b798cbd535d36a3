//! Command-line arguments and the NODES.json node list.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

use crate::quantity;

/// Bad command line or node configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("missing required argument {0}")]
    MissingArgument(&'static str),
    #[error("argument {0} needs a value")]
    MissingValue(String),
    #[error("unknown argument {0:?}")]
    UnknownArgument(String),
    #[error("--port must be a TCP port number, got {0:?}")]
    InvalidPort(String),
    #[error("cannot read node config {path}: {source}")]
    ReadNodes { path: PathBuf, source: std::io::Error },
    #[error("node config {path} is not valid: {source}")]
    ParseNodes {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("node config lists no nodes")]
    NoNodes,
    #[error("node {node}: field {field} has an invalid quantity {value:?}")]
    InvalidNodeQuantity {
        node: String,
        field: &'static str,
        value: String,
    },
    #[error("node name {0:?} is listed twice or is empty")]
    BadNodeName(String),
}

/// Parsed command line.
#[derive(Debug, Clone)]
pub struct Args {
    pub kubeconfig: PathBuf,
    pub nodes_file: PathBuf,
    pub state_dir: PathBuf,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub port: u16,
}

/// Usage text printed on argument errors.
pub const USAGE: &str = "usage: node-agent --kubeconfig PATH --config NODES.json --state-dir DIR \
--tls-cert CERT.pem --tls-key KEY.pem --port PORT";

impl Args {
    /// Parses `--name value` / `--name=value` pairs (the program name must already be skipped).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, ConfigError> {
        let mut values: BTreeMap<String, String> = BTreeMap::new();
        let mut iter = args.into_iter();
        while let Some(arg) = iter.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name.to_string(), Some(value.to_string())),
                None => (arg.clone(), None),
            };
            if !matches!(
                name.as_str(),
                "--kubeconfig" | "--config" | "--state-dir" | "--tls-cert" | "--tls-key" | "--port"
            ) {
                return Err(ConfigError::UnknownArgument(arg));
            }
            let value = match inline {
                Some(value) => value,
                None => iter
                    .next()
                    .ok_or_else(|| ConfigError::MissingValue(name.clone()))?,
            };
            values.insert(name, value);
        }
        let mut take = |name: &'static str| values.remove(name).ok_or(ConfigError::MissingArgument(name));
        let kubeconfig = take("--kubeconfig")?.into();
        let nodes_file = take("--config")?.into();
        let state_dir = take("--state-dir")?.into();
        let tls_cert = take("--tls-cert")?.into();
        let tls_key = take("--tls-key")?.into();
        let port_text = take("--port")?;
        let port = port_text
            .parse()
            .map_err(|_| ConfigError::InvalidPort(port_text))?;
        Ok(Self {
            kubeconfig,
            nodes_file,
            state_dir,
            tls_cert,
            tls_key,
            port,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NodesFile {
    nodes: Vec<NodeConfig>,
    /// Fault knob for the whole agent: every `follow` log stream is cut after this many
    /// milliseconds, as a flaky node connection would (clients must resume).
    #[serde(default)]
    log_stream_cut_ms: Option<u64>,
}

/// Faults that apply to the whole agent rather than to one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentFaults {
    pub log_stream_cut: Option<std::time::Duration>,
}

/// One simulated node, as written in NODES.json.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default = "default_cpu")]
    pub cpu: String,
    #[serde(default = "default_memory")]
    pub memory: String,
    #[serde(default = "default_pods")]
    pub pods: u32,
    #[serde(default)]
    pub nofile_limit: Option<u64>,
    #[serde(default)]
    pub not_ready: bool,
    #[serde(default)]
    pub start_delay_ms: u64,
    #[serde(default)]
    pub unpullable_images: Vec<String>,
}

fn default_cpu() -> String {
    "4".into()
}

fn default_memory() -> String {
    "16Gi".into()
}

fn default_pods() -> u32 {
    110
}

/// What a node can admit, in the units admission works with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocatable {
    pub millicores: i64,
    pub memory_bytes: i64,
    pub pods: i64,
}

impl NodeConfig {
    /// The node's allocatable resources.
    pub fn allocatable(&self) -> Result<Allocatable, ConfigError> {
        let invalid = |field: &'static str, value: &str| ConfigError::InvalidNodeQuantity {
            node: self.name.clone(),
            field,
            value: value.to_string(),
        };
        Ok(Allocatable {
            millicores: quantity::millicores(&self.cpu).map_err(|_| invalid("cpu", &self.cpu))?,
            memory_bytes: quantity::units(&self.memory).map_err(|_| invalid("memory", &self.memory))?,
            pods: i64::from(self.pods),
        })
    }
}

/// Reads and validates NODES.json.
pub fn load_nodes(path: &std::path::Path) -> Result<(Vec<NodeConfig>, AgentFaults), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadNodes {
        path: path.into(),
        source,
    })?;
    parse_file(&text).map_err(|error| match error {
        ConfigError::ParseNodes { source, .. } => ConfigError::ParseNodes {
            path: path.into(),
            source,
        },
        other => other,
    })
}

#[cfg(test)]
fn parse_nodes(text: &str) -> Result<Vec<NodeConfig>, ConfigError> {
    parse_file(text).map(|(nodes, _)| nodes)
}

fn parse_file(text: &str) -> Result<(Vec<NodeConfig>, AgentFaults), ConfigError> {
    let file: NodesFile = serde_json::from_str(text).map_err(|source| ConfigError::ParseNodes {
        path: PathBuf::new(),
        source,
    })?;
    if file.nodes.is_empty() {
        return Err(ConfigError::NoNodes);
    }
    let mut seen = std::collections::BTreeSet::new();
    for node in &file.nodes {
        if node.name.is_empty() || !seen.insert(node.name.clone()) {
            return Err(ConfigError::BadNodeName(node.name.clone()));
        }
        node.allocatable()?;
    }
    let faults = AgentFaults {
        log_stream_cut: file.log_stream_cut_ms.map(std::time::Duration::from_millis),
    };
    Ok((file.nodes, faults))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cli_accepts_both_value_styles() {
        let args = Args::parse(strings(&[
            "--kubeconfig",
            "/k",
            "--config=/n.json",
            "--state-dir",
            "/s",
            "--tls-cert",
            "/c",
            "--tls-key",
            "/key",
            "--port",
            "10250",
        ]))
        .expect("complete command line parses");
        assert_eq!(args.port, 10250);
        assert_eq!(args.nodes_file, PathBuf::from("/n.json"));
    }

    #[test]
    fn cli_names_what_is_wrong() {
        let missing = Args::parse(strings(&["--kubeconfig", "/k"])).expect_err("incomplete");
        assert!(matches!(missing, ConfigError::MissingArgument("--config")));
        let unknown = Args::parse(strings(&["--verbose"])).expect_err("unknown flag");
        assert!(matches!(unknown, ConfigError::UnknownArgument(flag) if flag == "--verbose"));
    }

    #[test]
    fn nodes_get_defaults() {
        let nodes = parse_nodes(
            r#"{"nodes":[{"name":"node-1"},{"name":"node-2","cpu":"2","notReady":true,"nofileLimit":null}]}"#,
        )
        .expect("valid nodes file");
        assert_eq!(
            nodes[0].allocatable().expect("valid"),
            Allocatable {
                millicores: 4000,
                memory_bytes: 16 << 30,
                pods: 110
            }
        );
        assert!(nodes[1].not_ready);
        assert_eq!(nodes[1].allocatable().expect("valid").millicores, 2000);
    }

    #[test]
    fn bad_nodes_are_rejected() {
        assert!(matches!(
            parse_nodes(r#"{"nodes":[]}"#),
            Err(ConfigError::NoNodes)
        ));
        assert!(matches!(
            parse_nodes(r#"{"nodes":[{"name":"a","cpu":"lots"}]}"#),
            Err(ConfigError::InvalidNodeQuantity { field: "cpu", .. })
        ));
        assert!(matches!(
            parse_nodes(r#"{"nodes":[{"name":"a"},{"name":"a"}]}"#),
            Err(ConfigError::BadNodeName(_))
        ));
    }
}
