//! Where the cluster's programs are found, with a clear error when one is missing.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Overrides the cache root that holds `bin/kube-apiserver` and friends.
pub const CACHE_ENV: &str = "KUBE_EXECUTOR_CACHE";
/// Overrides the path of the node agent binary.
pub const NODE_AGENT_ENV: &str = "NODE_AGENT_BIN";

const DEFAULT_CACHE: &str = "/var/cache/kube-executor";
const ETCD: &str = "/usr/bin/etcd";
const INSTALL_HINT: &str = "run scripts/install-test-cluster.sh";
const NODE_AGENT_HINT: &str = "run `cargo build -p node-agent` (or set NODE_AGENT_BIN)";

/// Absolute paths of every program a cluster runs.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    pub etcd: PathBuf,
    pub api_server: PathBuf,
    pub controller_manager: PathBuf,
    pub scheduler: PathBuf,
    /// Only looked up when the cluster has nodes.
    pub node_agent: Option<PathBuf>,
}

impl Binaries {
    pub(crate) fn locate(need_node_agent: bool) -> Result<Self> {
        let cache = std::env::var_os(CACHE_ENV).map_or_else(|| PathBuf::from(DEFAULT_CACHE), PathBuf::from);
        let bin = cache.join("bin");
        Ok(Self {
            etcd: existing(
                "etcd",
                PathBuf::from(ETCD),
                "install the etcd-server package (scripts/install-test-cluster.sh does)",
            )?,
            api_server: existing("kube-apiserver", bin.join("kube-apiserver"), INSTALL_HINT)?,
            controller_manager: existing(
                "kube-controller-manager",
                bin.join("kube-controller-manager"),
                INSTALL_HINT,
            )?,
            scheduler: existing("kube-scheduler", bin.join("kube-scheduler"), INSTALL_HINT)?,
            node_agent: if need_node_agent {
                Some(node_agent()?)
            } else {
                None
            },
        })
    }
}

/// The node agent: `NODE_AGENT_BIN`, else next to the running executable or in its parent
/// directory (cargo puts test binaries in `target/<profile>/deps`, binaries one level up).
fn node_agent() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(NODE_AGENT_ENV) {
        return existing(
            "node-agent",
            PathBuf::from(path),
            "NODE_AGENT_BIN names no executable file",
        );
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let here = exe.parent().map(|dir| dir.join("node-agent"));
    let above = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("node-agent"));
    for candidate in [&here, &above].into_iter().flatten() {
        if is_executable(candidate) {
            return Ok(candidate.clone());
        }
    }
    // Name the place cargo would build it: one level up from test binaries in `deps`.
    let in_deps = exe
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|name| name == "deps");
    let expected = if in_deps { above } else { here };
    Err(Error::BinaryMissing {
        program: "node-agent",
        path: expected.unwrap_or_else(|| PathBuf::from("node-agent")),
        hint: NODE_AGENT_HINT,
    })
}

fn existing(program: &'static str, path: PathBuf, hint: &'static str) -> Result<PathBuf> {
    if is_executable(&path) {
        Ok(path)
    } else {
        Err(Error::BinaryMissing { program, path, hint })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
