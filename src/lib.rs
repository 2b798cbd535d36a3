//! kube-executor: runs Sourcegraph executor queue jobs as Kubernetes Jobs.
//!
//! ```text
//! queue poll → slot → create Secret+Job → shared pod watch → follow logs → pod terminal
//!            → final log flush → delete Job → markComplete / markErrored / markFailed
//! ```
//!
//! `main.rs` only wires configuration and signals into [`run`].

pub mod config;
pub mod events;
pub mod health;
pub mod job;
pub mod k8s;
pub mod log_entry;
pub mod queue;
pub mod redact;
pub mod retry;
pub mod runner;
pub mod slots;
pub mod telemetry;

use std::{collections::HashSet, sync::Arc};

use kube::ResourceExt;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    config::Config,
    events::{Event, Events},
    job::{Deps, Registry},
    k8s::{labels, objects::Objects, watch::ClusterView},
    queue::client::{ClientOptions, QueueClient},
    runner::{FrontendStatus, Shutdown},
    slots::Slots,
    telemetry::SystemInfo,
};

/// Why the executor could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot load the Kubernetes client configuration: {0}")]
    KubeConfig(String),
    #[error("cannot set up the frontend client: {0}")]
    FrontendClient(#[from] queue::client::QueueError),
    #[error("cannot listen on EXECUTOR_HEALTH_SERVER_ADDR {addr}: {source}")]
    HealthServer {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("stopped by a signal before the frontend answered")]
    InterruptedAtStartup,
    #[error("the executor's Role does not allow looking for leftovers of an earlier process: {0}")]
    Forbidden(String),
    #[error("the executor's Kubernetes identity lacks permissions (fix its Role): {0}")]
    MissingPermissions(String),
}

/// Builds the Kubernetes client: EXECUTOR_KUBERNETES_CONFIG_PATH, else `$KUBECONFIG` /
/// `~/.kube/config`, else the in-cluster ServiceAccount.
///
/// # Errors
/// When no configuration can be loaded.
pub async fn kube_client(config: &Config) -> Result<kube::Client, RunError> {
    let kube_config = match &config.kubernetes.config_path {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| RunError::KubeConfig(format!("reading {path}: {e}")))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| RunError::KubeConfig(format!("{path}: {e}")))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| RunError::KubeConfig(e.to_string()))?,
    };
    kube::Client::try_from(kube_config).map_err(|e| RunError::KubeConfig(e.to_string()))
}

/// Runs the executor until `shutdown` has drained it (or EXECUTOR_NUM_TOTAL_JOBS /
/// EXECUTOR_MAX_ACTIVE_TIME end it).
///
/// # Errors
/// Startup failures only; job failures are reported to the frontend and never end the run.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), RunError> {
    let config = Arc::new(config);
    let executor_name = format!("{}-{}", config.hostname, uuid::Uuid::new_v4());
    let client = kube_client(&config).await?;
    let queue = QueueClient::new(ClientOptions {
        frontend_url: config.frontend_url.clone(),
        password: config.frontend_password.clone(),
        executor_name: executor_name.clone(),
        user_agent: format!("kube-executor/{}", telemetry::BUILD_VERSION),
    })?;
    let namespace = config.kubernetes.namespace.clone();
    let events = Events::default();
    let background = TaskTracker::new();
    let stop_background = CancellationToken::new();
    let view = ClusterView::spawn(
        client.clone(),
        &namespace,
        &labels::instance_selector(&config.instance_id),
        events.clone(),
        &background,
        stop_background.clone(),
    );
    let slots = Slots::new(config.maximum_num_jobs);
    background.spawn(track_cluster_jobs(
        view.clone(),
        slots.clone(),
        stop_background.clone(),
    ));

    let deps = Deps {
        config: config.clone(),
        queue,
        objects: Objects::new(client.clone(), &namespace, &config.instance_id),
        pods: kube::Api::namespaced(client.clone(), &namespace),
        view: view.clone(),
        events: events.clone(),
        registry: Registry::default(),
        executor_name: executor_name.clone(),
    };
    let system = SystemInfo::gather(runner::queue_label(&config.queues), slots.clone()).await;
    let frontend = FrontendStatus::default();
    let (health_addr, serve) = health::bind(
        config.health_server_addr,
        deps.clone(),
        system.clone(),
        frontend.clone(),
        stop_background.clone(),
    )
    .await
    .map_err(|source| RunError::HealthServer {
        addr: config.health_server_addr,
        source,
    })?;
    background.spawn(serve);
    info!(
        executor = %executor_name,
        instance = %config.instance_id,
        namespace = %namespace,
        health = %health_addr,
        version = telemetry::BUILD_VERSION,
        "executor starting"
    );

    let result = async {
        let needed = k8s::preflight::required(&config.kubernetes);
        match k8s::preflight::check(client.clone(), &namespace, &needed).await {
            k8s::preflight::Preflight::Allowed => {}
            k8s::preflight::Preflight::Missing(missing) => {
                return Err(RunError::MissingPermissions(k8s::preflight::describe(
                    &namespace, &missing,
                )));
            }
            // Some hardened clusters deny access reviews; the calls themselves will tell.
            k8s::preflight::Preflight::Unknown(error) => {
                warn!(%error, "cannot check the executor's permissions up front");
            }
        }
        runner::ping_until_answered(&deps, &system, &frontend, &shutdown.drain)
            .await
            .map_err(|()| RunError::InterruptedAtStartup)?;
        tokio::select! {
            _ = shutdown.drain.cancelled() => return Ok(()),
            _ = view.wait_synced() => {}
        }
        match deps.objects.sweep_leftovers(config.kubernetes.keep_jobs).await {
            Ok(0) => {}
            Ok(n) => {
                for _ in 0..n {
                    events.record(Event::LeftoverJobDeleted);
                }
                info!(deleted = n, "removed Jobs left by an earlier executor process");
            }
            Err(error) if k8s::api_error::is_forbidden(&error) => {
                return Err(RunError::Forbidden(error.to_string()));
            }
            Err(error) => warn!(%error, "could not look for Jobs left by an earlier executor process"),
        }
        background.spawn(runner::heartbeat_loop(
            deps.clone(),
            system.clone(),
            frontend.clone(),
            stop_background.clone(),
        ));
        let jobs = TaskTracker::new();
        runner::dequeue_loop(deps.clone(), slots.clone(), jobs.clone(), shutdown.clone()).await;
        runner::drain_jobs(&jobs, &shutdown, config.shutdown_grace_period, &deps.registry).await;
        Ok(())
    }
    .await;

    stop_background.cancel();
    background.close();
    background.wait().await;
    info!("executor stopped");
    result
}

/// Keeps the slot accounting in line with this executor's unfinished Jobs in the cluster.
async fn track_cluster_jobs(view: ClusterView, slots: Arc<Slots>, stop: CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = view.wait_synced() => {}
    }
    let mut changes = view.subscribe();
    loop {
        changes.borrow_and_update();
        if view.is_synced() {
            let unfinished: HashSet<String> = view
                .jobs()
                .iter()
                .filter(|job| !k8s::failure::job_finished(job))
                .map(|job| job.name_any())
                .collect();
            slots.set_cluster_jobs(unfinished);
        } else {
            // A watch is broken (e.g. forbidden, or the API server is away): dequeue nothing
            // until both have re-listed.
            slots.suspend();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}
