//! kube-executor: runs Sourcegraph executor queue jobs as Kubernetes Jobs.
//!
//! ```text
//! main.rs ─ config::Config::from_env ─ run
//!   run ─ Executor::assemble (clients, k8s::watch::ClusterView, slots) ─ health::bind
//!       ─ Executor::serve: k8s::preflight ─ runner::ping_until_answered ─ sweep leftovers
//!           ├─ runner::heartbeat_loop   every 5 s: running RunKeys → cancelIds / knownIds → job::registry
//!           └─ runner::dequeue_loop     slot → dequeue → RunKey → job::run (one task per job)
//!   job::run ─ registry ─ fetch files ─ k8s::job_spec (objects) ─ k8s::objects::create
//!            ─ job::supervise (shared pod watch, k8s::failure verdicts)
//!                 └─ job::follow, one per container: k8s::logs → log_entry (entries in pod order)
//!            ─ job::report: delete the Job (while the final entry updates go) ─ teardown entries
//!                 ─ markComplete / markErrored / markFailed
//!   nfr ─ restarts and ulimits of job pods (shared pod watch) and the executor's own pod → /nfr
//! ```
//!
//! `context::Deps` is what the loops, the job tasks and the health server share; `queue` speaks
//! the frontend's protocol and `retry` is the one place that knows the backoff library.

pub mod config;
mod context;
mod events;
mod health;
mod history;
mod job;
mod k8s;
mod log_entry;
mod logging;
mod metrics;
mod nfr;
pub mod queue;
mod redact;
mod retry;
mod runner;
mod slots;
mod status_page;
mod telemetry;

/// The objects of one job, for tools that must create exactly what the executor creates (the
/// per-job cost benchmark's floor client).
pub use k8s::job_spec::{JobContext, JobObjects, WorkspaceFile, build_job_objects};

pub use runner::Shutdown;
pub use telemetry::{BUILD_VERSION, init_logging};

use std::{collections::HashSet, sync::Arc};

use kube::ResourceExt;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    config::Config,
    context::Deps,
    events::Event,
    history::History,
    job::registry::Registry,
    k8s::{labels, objects::Objects, strays::HandedOver, watch::ClusterView},
    metrics::Metrics,
    nfr::Nfr,
    queue::client::{ClientOptions, QueueClient},
    runner::FrontendStatus,
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
    #[error("cannot set up the metrics: {0}")]
    Metrics(String),
}

/// Builds the Kubernetes client: EXECUTOR_KUBERNETES_CONFIG_PATH, else `$KUBECONFIG` /
/// `~/.kube/config`, else the in-cluster ServiceAccount. Returns it with its rate limit's headroom.
///
/// # Errors
/// When no configuration can be loaded.
pub async fn kube_client(
    config: &Config,
    metrics: &Metrics,
) -> Result<(kube::Client, k8s::rate_limit::Headroom), RunError> {
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
    let mut kube_config = kube_config;
    // Audit logs and API priority and fairness see which client sent a request by its agent.
    if let Ok(agent) = http::HeaderValue::from_str(&format!("kube-executor/{}", telemetry::BUILD_VERSION)) {
        kube_config.headers.push((http::header::USER_AGENT, agent));
    }
    let builder = kube::client::ClientBuilder::try_from(kube_config)
        .map_err(|e| RunError::KubeConfig(e.to_string()))?;
    let rate_limit = k8s::rate_limit::ClientRateLimitLayer::new(
        config.kubernetes.client_qps,
        config.kubernetes.client_burst,
        metrics.clone(),
    );
    let client = builder
        .with_layer(&k8s::request_metrics::RequestMetricsLayer {
            metrics: metrics.clone(),
        })
        .with_layer(&rate_limit)
        .build();
    Ok((client, rate_limit.headroom()))
}

/// How long the background tasks (watches, heartbeats, health server) get to stop at exit.
const BACKGROUND_STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(6);

/// Runs the executor until `shutdown` has drained it (or EXECUTOR_NUM_TOTAL_JOBS /
/// EXECUTOR_MAX_ACTIVE_TIME end it).
///
/// # Errors
/// Startup failures only; job failures are reported to the frontend and never end the run.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), RunError> {
    let background = Background::default();
    let executor = Executor::assemble(Arc::new(config), &background).await?;
    let (health_addr, serve) = health::bind(
        executor.deps.config.health_server_addr,
        executor.deps.clone(),
        executor.system.clone(),
        executor.frontend.clone(),
        background.stop.clone(),
    )
    .await
    .map_err(|source| RunError::HealthServer {
        addr: executor.deps.config.health_server_addr,
        source,
    })?;
    background.tasks.spawn(serve);
    info!(
        executor = %executor.deps.executor_name,
        instance = %executor.deps.config.instance_id,
        namespace = %executor.deps.config.kubernetes.namespace,
        namespace_from = executor.deps.config.kubernetes.namespace_source.describe(),
        health = %health_addr,
        version = telemetry::BUILD_VERSION,
        "executor starting"
    );
    let result = executor.serve(&background, &shutdown).await;
    background.stop.cancel();
    background.tasks.close();
    // The health server gives requests 5 s; a watch or heartbeat stuck on an unreachable peer
    // must not hold the exit.
    if tokio::time::timeout(BACKGROUND_STOP_LIMIT, background.tasks.wait())
        .await
        .is_err()
    {
        warn!("background tasks did not stop in time; exiting anyway");
    }
    info!("executor stopped");
    result
}

/// Tasks that live as long as the executor (watches, slot tracking, heartbeats, health server).
#[derive(Default)]
struct Background {
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// A started executor: its shared context and what the loops and the health server report.
struct Executor {
    deps: Deps,
    client: kube::Client,
    slots: Arc<Slots>,
    system: SystemInfo,
    frontend: FrontendStatus,
}

impl Executor {
    /// Builds the clients, starts the shared watches and the slot tracking.
    async fn assemble(config: Arc<Config>, background: &Background) -> Result<Self, RunError> {
        let executor_name = format!("{}-{}", config.hostname, uuid::Uuid::new_v4());
        let queue_label = runner::queue_label(&config.queues);
        let metrics = Metrics::new(&queue_label, &config.reported_version)
            .map_err(|e| RunError::Metrics(e.to_string()))?;
        let (client, kube_headroom) = kube_client(&config, &metrics).await?;
        let queue = QueueClient::new(ClientOptions {
            frontend_url: config.frontend_url.clone(),
            password: config.frontend_password.clone(),
            executor_name: executor_name.clone(),
            user_agent: format!("kube-executor/{}", telemetry::BUILD_VERSION),
        })?
        .with_metrics(metrics.clone());
        let namespace = config.kubernetes.namespace.clone();
        let view = ClusterView::spawn(
            client.clone(),
            &namespace,
            &labels::instance_selector(&config.instance_id),
            metrics.clone(),
            &background.tasks,
            background.stop.clone(),
        );
        let slots = Slots::new(config.maximum_num_jobs);
        background.tasks.spawn(track_cluster_jobs(
            view.clone(),
            slots.clone(),
            background.stop.clone(),
        ));
        let system = SystemInfo::gather(slots.clone()).await;
        let nfr = start_nfr(&config, &client, &view, background);
        let deps = Deps {
            objects: Objects::new(client.clone(), &namespace, &config.instance_id),
            pods: kube::Api::namespaced(client.clone(), &namespace),
            config,
            queue,
            view,
            handed_over: HandedOver::default(),
            kube_headroom,
            metrics,
            nfr,
            registry: Registry::default(),
            history: History::default(),
            executor_name,
        };
        Ok(Self {
            deps,
            client,
            slots,
            system,
            frontend: FrontendStatus::default(),
        })
    }

    /// Checks permissions, waits for the frontend and the watches, sweeps leftovers, then runs the
    /// heartbeat and dequeue loops until drained.
    async fn serve(&self, background: &Background, shutdown: &Shutdown) -> Result<(), RunError> {
        self.check_permissions().await?;
        runner::ping_until_answered(&self.deps, &self.system, &self.frontend, &shutdown.drain)
            .await
            .map_err(|()| RunError::InterruptedAtStartup)?;
        tokio::select! {
            _ = shutdown.drain.cancelled() => return Ok(()),
            _ = self.deps.view.wait_synced() => {}
        }
        self.sweep_leftovers().await?;
        background.tasks.spawn(k8s::strays::remove_stray_pods(
            self.deps.view.clone(),
            self.deps.handed_over.clone(),
            self.deps.pods.clone(),
            kube::Api::namespaced(self.client.clone(), &self.deps.config.kubernetes.namespace),
            self.deps.metrics.clone(),
            background.stop.clone(),
        ));
        background.tasks.spawn(runner::heartbeat_loop(
            self.deps.clone(),
            self.system.clone(),
            self.frontend.clone(),
            background.stop.clone(),
        ));
        let jobs = TaskTracker::new();
        runner::dequeue_loop(
            self.deps.clone(),
            self.slots.clone(),
            jobs.clone(),
            shutdown.clone(),
        )
        .await;
        let grace = self.deps.config.shutdown_grace_period;
        runner::drain_jobs(&jobs, shutdown, grace, &self.deps.registry).await;
        Ok(())
    }

    /// Asks the API server for every permission the configuration needs, before any job runs.
    async fn check_permissions(&self) -> Result<(), RunError> {
        let namespace = &self.deps.config.kubernetes.namespace;
        let mut needed = k8s::preflight::required(&self.deps.config.kubernetes);
        if self.deps.config.pod_name.is_some() && self.deps.config.own_pod_namespace() == namespace {
            needed.push(k8s::preflight::GET_OWN_POD);
        }
        match k8s::preflight::check(self.client.clone(), namespace, &needed).await {
            k8s::preflight::Preflight::Allowed => Ok(()),
            k8s::preflight::Preflight::Missing(missing) => Err(RunError::MissingPermissions(
                k8s::preflight::describe(namespace, &missing),
            )),
            // Some hardened clusters deny access reviews; the calls themselves will tell.
            k8s::preflight::Preflight::Unknown(error) => {
                warn!(%error, "cannot check the executor's permissions up front");
                Ok(())
            }
        }
    }

    /// Deletes what an earlier process of this instance left; the frontend re-queues its jobs.
    async fn sweep_leftovers(&self) -> Result<(), RunError> {
        match self
            .deps
            .objects
            .sweep_leftovers(self.deps.config.kubernetes.keep_jobs)
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                for _ in 0..n {
                    self.deps.metrics.record(Event::LeftoverJobDeleted);
                }
                info!(deleted = n, "removed Jobs left by an earlier executor process");
            }
            Err(error) if k8s::api_error::is_forbidden(&error) => {
                return Err(RunError::Forbidden(error.to_string()));
            }
            Err(error) => warn!(%error, "could not look for Jobs left by an earlier executor process"),
        }
        Ok(())
    }
}

/// Starts measuring the NFRs: job pods from the shared watch, and the executor's own pod when the
/// Downward API names it (POD_NAME, in POD_NAMESPACE or else the jobs namespace).
fn start_nfr(config: &Config, client: &kube::Client, view: &ClusterView, background: &Background) -> Nfr {
    let nfr = Nfr::new(
        nfr::LimitFigures {
            nofile: config.recommended_ulimit_nofile,
            nproc: config.recommended_ulimit_nproc,
        },
        jiff::Timestamp::now(),
    );
    background.tasks.spawn(nfr::observe_job_pods(
        view.clone(),
        nfr.clone(),
        background.stop.clone(),
    ));
    if let Some(pod_name) = &config.pod_name {
        let namespace = config.own_pod_namespace();
        background.tasks.spawn(nfr::observe_executor_pod(
            kube::Api::namespaced(client.clone(), namespace),
            pod_name.clone(),
            nfr.clone(),
            runner::HEARTBEAT_INTERVAL,
            background.stop.clone(),
        ));
    }
    nfr
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
