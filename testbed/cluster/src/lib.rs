//! Test infrastructure: a real local Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler) with simulated nodes played by `node-agent`.
//!
//! ```text
//! temp dir → certificates (openssl) → etcd → kube-apiserver → /readyz → admin kubeconfig
//!          → controller-manager + scheduler → node-agent → nodes Ready + default ServiceAccount
//! ```
//!
//! Every process runs in its own process group and dies with the test process
//! (`PR_SET_PDEATHSIG`); stopping or dropping a [`TestCluster`] ends them and removes its directory.

mod binary;
pub mod cli;
mod cluster;
mod error;
mod kubeconfig;
mod node;
mod pki;
mod port;
mod process;

pub use binary::{CACHE_ENV, NODE_AGENT_ENV};
pub use cluster::TestCluster;
pub use error::{Error, Result};
pub use kubeconfig::client_from_kubeconfig;
pub use node::{ClusterOptions, NodeSpec};
