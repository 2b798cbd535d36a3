//! `test-cluster`: starts a local Kubernetes control plane with simulated nodes for manual use and scripts.

use std::process::ExitCode;

/// kube-client logs every non-2xx answer at error level, including the expected 500s from
/// `/readyz` while the API server starts.
const DEFAULT_LOG_FILTER: &str = "info,kube_client::client::builder=off";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match test_cluster::cli::parse(&args) {
        Ok(command) => test_cluster::cli::run(command).await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("test-cluster: {error}");
            ExitCode::FAILURE
        }
    }
}
