//! The `executor` binary: reads the environment, installs signal handling and runs the executor.

use std::process::ExitCode;

use kube_executor::{RunError, Shutdown, config::Config};

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None | Some("run") => {}
        Some("version" | "--version") => {
            println!("kube-executor {}", kube_executor::BUILD_VERSION);
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!(
                "executor: unknown command {other:?}; usage: executor [run|version] (configured by environment variables)"
            );
            return ExitCode::from(2);
        }
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("executor: {error}");
            return ExitCode::from(1);
        }
    };
    if let Err(error) = kube_executor::init_logging(&config) {
        eprintln!("executor: {error}");
        return ExitCode::from(1);
    }
    // Both HTTP clients use rustls; pick its crypto provider once for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("executor: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let shutdown = Shutdown::default();
    runtime.spawn(handle_signals(shutdown.clone()));
    let result = runtime.block_on(kube_executor::run(config, shutdown));
    // Blocking work still running (a DNS lookup to an unreachable resolver) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(RunError::InterruptedAtStartup) => {
            tracing::warn!("stopped before the frontend answered");
            ExitCode::from(1)
        }
        Err(error) => {
            tracing::error!(%error, "executor failed");
            eprintln!("executor: {error}");
            ExitCode::from(1)
        }
    }
}

/// First SIGTERM/SIGINT/SIGHUP drains (no new jobs, running ones finish); a second one stops
/// running jobs at once (the exit then follows within a bounded time); a third exits on the spot.
async fn handle_signals(shutdown: Shutdown) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    for n in 0.. {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {}
        }
        if n == 0 {
            tracing::info!("signal received: no new jobs; running jobs may finish (send again to stop them)");
            shutdown.drain.cancel();
        } else if n == 1 {
            tracing::info!("second signal: stopping running jobs (send again to exit at once)");
            shutdown.force.cancel();
        } else {
            tracing::warn!("third signal: exiting without waiting for running jobs");
            std::process::exit(1);
        }
    }
}
