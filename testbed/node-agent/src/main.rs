//! node-agent: plays the kubelet for simulated nodes of a local control plane, running containers as
//! host processes.

mod admission;
mod agent;
mod cgroup;
mod config;
mod container;
mod env;
mod image;
mod logs;
mod node;
mod pods;
mod pvc;
mod quantity;
mod server;
mod spawn;
mod status;
mod volumes;

use std::{process::ExitCode, sync::Arc};

use kube::{Client, config::KubeConfigOptions};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::{agent::Agent, config::Args};

/// Fatal startup failures.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("loading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("building API client: {0}")]
    Client(#[source] kube::Error),
    #[error("creating state dir {path}: {source}")]
    StateDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error("registering node: {0}")]
    Node(#[from] node::NodeError),
    #[error("installing signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("node-agent: {error}\n{}", config::USAGE);
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("node-agent: cannot start runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(args));
    // Dropping the runtime ends its worker threads; PDEATHSIG then reaps any stragglers.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "node-agent failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), StartError> {
    let (nodes, faults) = config::load_nodes(&args.nodes_file)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig =
        kube::config::Kubeconfig::read_from(&args.kubeconfig).map_err(|source| StartError::Kubeconfig {
            path: args.kubeconfig.display().to_string(),
            source,
        })?;
    let client_config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| StartError::Kubeconfig {
            path: args.kubeconfig.display().to_string(),
            source,
        })?;
    let client = Client::try_from(client_config).map_err(StartError::Client)?;
    std::fs::create_dir_all(args.state_dir.join("pods")).map_err(|source| StartError::StateDir {
        path: args.state_dir.display().to_string(),
        source,
    })?;
    let state_dir = std::fs::canonicalize(&args.state_dir).map_err(|source| StartError::StateDir {
        path: args.state_dir.display().to_string(),
        source,
    })?;
    let acceptor = server::tls_acceptor(&args.tls_cert, &args.tls_key)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(StartError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(StartError::Signal)?;

    let agent = Arc::new(Agent {
        client: client.clone(),
        state_dir: state_dir.clone(),
        logs: Arc::default(),
        cgroups: cgroup::Cgroups::detect(),
        processes: Default::default(),
    });
    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(server::serve(
        args.port,
        acceptor,
        server::router(agent.logs.clone(), faults.log_stream_cut),
        cancel.clone(),
    ));

    let result = async {
        let started = jiff::Timestamp::now();
        for node_config in &nodes {
            node::register(&client, node_config, args.port, started).await?;
            tracing::info!(node = %node_config.name, "node registered");
            let allocatable = node_config.allocatable()?;
            let pods = pods::NodePods::new(agent.clone(), node_config.clone(), allocatable);
            let cancel_pods = cancel.clone();
            tasks.spawn(async move {
                pods.run(cancel_pods).await;
                Ok(())
            });
            let (client, config, cancel) = (client.clone(), node_config.clone(), cancel.clone());
            tasks.spawn(async move {
                node::heartbeat(client, config, args.port, started, cancel).await;
                Ok(())
            });
        }
        let (client_a, dir, cancel_a) = (client.clone(), state_dir.clone(), cancel.clone());
        tasks.spawn(async move {
            pvc::provision(client_a, dir, cancel_a).await;
            Ok(())
        });
        let (client_b, cancel_b) = (client.clone(), cancel.clone());
        tasks.spawn(async move {
            pvc::reclaim(client_b, cancel_b).await;
            Ok(())
        });
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = interrupt.recv() => tracing::info!("SIGINT received; shutting down"),
            Some(joined) = tasks.join_next() => {
                if let Ok(Err(error)) = joined {
                    return Err(StartError::Server(error));
                }
                tracing::warn!("a background task ended unexpectedly; shutting down");
            }
        }
        Ok(())
    }
    .await;

    cancel.cancel();
    agent.processes.kill_all();
    if let Some(cgroups) = &agent.cgroups {
        cgroups.cleanup();
    }
    tasks.abort_all();
    result
}
