//! Errors of the cluster launcher, one variant per thing that can fail while starting or using a cluster.

use std::{io, path::PathBuf, time::Duration};

/// Result alias for the cluster launcher.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while starting, using or stopping a test cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program the cluster needs is not installed where it is looked for.
    #[error("{program} not found at {}: {hint}", path.display())]
    BinaryMissing {
        program: &'static str,
        path: PathBuf,
        hint: &'static str,
    },

    /// The node list handed to [`crate::TestCluster::start`] cannot be run.
    #[error("invalid node list: {0}")]
    InvalidNodes(String),

    /// No free loopback port could be reserved.
    #[error("could not reserve a free loopback port")]
    ReservePort(#[source] io::Error),

    /// A file or directory of the cluster could not be created, written or read.
    #[error("{action} {}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An `openssl` invocation failed while generating the cluster's keys and certificates.
    #[error("openssl failed while {step}: {detail}")]
    Certificate { step: &'static str, detail: String },

    /// The dedicated spawning thread could not be started or has gone away.
    #[error("the process spawning thread is unavailable: {0}")]
    SpawnerUnavailable(String),

    /// A component process could not be started.
    #[error("could not start {component} ({})", program.display())]
    SpawnComponent {
        component: &'static str,
        program: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A component exited while the cluster was starting.
    #[error("{component} exited during startup ({status}); last lines of {}:\n{log_tail}", log.display())]
    ComponentExited {
        component: &'static str,
        status: String,
        log: PathBuf,
        log_tail: String,
    },

    /// Something the cluster waits for at startup did not happen in time.
    #[error("timed out after {timeout:?} waiting for {what}; last lines of {}:\n{log_tail}", log.display())]
    StartupTimeout {
        what: String,
        timeout: Duration,
        log: PathBuf,
        log_tail: String,
    },

    /// A kubeconfig could not be turned into a client configuration.
    #[error("could not load kubeconfig {}", path.display())]
    LoadKubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },

    /// A Kubernetes client could not be built.
    #[error("could not build a Kubernetes client")]
    BuildClient(#[source] kube::Error),

    /// A kubeconfig could not be serialised.
    #[error("could not serialise kubeconfig")]
    SerializeKubeconfig(#[source] serde_json::Error),

    /// The node agent's configuration could not be serialised.
    #[error("could not serialise the node agent configuration")]
    SerializeNodeConfig(#[source] serde_json::Error),

    /// The ServiceAccount never appeared.
    #[error("ServiceAccount {namespace}/{name} does not exist (waited {waited:?}); create it first")]
    ServiceAccountMissing {
        namespace: String,
        name: String,
        waited: Duration,
    },

    /// The API server refused to issue a token for the ServiceAccount.
    #[error("could not request a token for ServiceAccount {namespace}/{name}")]
    RequestToken {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    /// The API server answered a token request without a token.
    #[error("the token request for ServiceAccount {namespace}/{name} returned no token")]
    EmptyToken { namespace: String, name: String },
}

impl Error {
    /// Whether a startup failure came from a port another process took between reservation and use.
    pub fn is_port_conflict(&self) -> bool {
        let tail = match self {
            Error::ComponentExited { log_tail, .. } | Error::StartupTimeout { log_tail, .. } => log_tail,
            _ => return false,
        };
        tail.contains("address already in use") || tail.contains("bind: address")
    }
}
