//! What every part of a running executor shares: configuration, clients, the cluster view, events,
//! the NFR figures and the registry of running jobs.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use crate::{
    config::Config,
    history::History,
    job::registry::Registry,
    k8s::{objects::Objects, rate_limit::Headroom, strays::HandedOver, watch::ClusterView},
    metrics::Metrics,
    nfr::Nfr,
    queue::client::QueueClient,
};

/// Everything the loops, the job tasks and the health server need; cheap to clone.
#[derive(Clone)]
pub struct Deps {
    pub config: Arc<Config>,
    pub queue: QueueClient,
    pub objects: Objects,
    pub pods: Api<Pod>,
    pub view: ClusterView,
    /// The pods of the Jobs this executor deleted, left to the garbage collector for longer.
    pub handed_over: HandedOver,
    /// The Kubernetes client's free rate-limit tokens: a job is dequeued only when it can start.
    pub kube_headroom: Headroom,
    pub metrics: Metrics,
    pub nfr: Nfr,
    pub registry: Registry,
    /// Jobs that ended, for the status page.
    pub history: History,
    pub executor_name: String,
}
