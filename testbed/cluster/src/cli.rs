//! The `test-cluster` command: run a cluster in the foreground (`up`), stop it from elsewhere
//! (`down`) and print its environment (`env`).
#![allow(unsafe_code)] // NB: signalling the `up` process needs libc::kill.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tokio::signal::unix::{SignalKind, signal};

use crate::{ClusterOptions, NodeSpec, TestCluster};

const USAGE: &str = "usage:
  test-cluster up [--dir DIR] [--nodes N] [--node-label NODE:KEY=VALUE]...
  test-cluster down --dir DIR
  test-cluster env --dir DIR";

const PID_FILE: &str = "test-cluster.pid";
const ENV_FILE: &str = "env";
const KUBECONFIG_FILE: &str = "kubeconfig";
const DOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Start a cluster and keep it running until SIGTERM/SIGINT.
    Up {
        dir: Option<PathBuf>,
        nodes: Vec<NodeSpec>,
    },
    /// Stop the `up` running for DIR.
    Down { dir: PathBuf },
    /// Print DIR's env file.
    Env { dir: PathBuf },
}

/// Why the command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The arguments were wrong.
    #[error("{0}\n{USAGE}")]
    Usage(String),
    /// The cluster did not start.
    #[error(transparent)]
    Start(#[from] crate::Error),
    /// A file in DIR could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The pid file names no running `test-cluster up`.
    #[error("no running `test-cluster up` for {}: {reason}", dir.display())]
    NotRunning { dir: PathBuf, reason: String },
    /// `up` did not exit in time after SIGTERM.
    #[error("test-cluster up (pid {pid}) still running {timeout:?} after SIGTERM")]
    StillRunning { pid: i32, timeout: Duration },
    /// Signal handlers could not be installed.
    #[error("could not install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, CliError> {
    let (verb, rest) = args
        .split_first()
        .ok_or_else(|| CliError::Usage("missing command".to_owned()))?;
    let mut dir = None;
    let mut node_count: usize = 1;
    let mut labels: Vec<(String, String, String)> = Vec::new();
    let mut rest = rest.iter();
    while let Some(flag) = rest.next() {
        let mut value = || {
            rest.next()
                .cloned()
                .ok_or_else(|| CliError::Usage(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--nodes" if verb == "up" => {
                let text = value()?;
                node_count = text
                    .parse()
                    .map_err(|_| CliError::Usage(format!("--nodes wants a number, got {text:?}")))?;
            }
            "--node-label" if verb == "up" => labels.push(parse_node_label(&value()?)?),
            other => {
                return Err(CliError::Usage(format!(
                    "unknown argument {other:?} for {verb:?}"
                )));
            }
        }
    }
    let need_dir =
        |dir: Option<PathBuf>| dir.ok_or_else(|| CliError::Usage(format!("{verb} needs --dir DIR")));
    match verb.as_str() {
        "up" => {
            let mut nodes: Vec<NodeSpec> = (1..=node_count)
                .map(|i| NodeSpec::new(&format!("node-{i}")))
                .collect();
            for (node, key, value) in labels {
                let spec = nodes.iter_mut().find(|n| n.name == node).ok_or_else(|| {
                    CliError::Usage(format!(
                        "--node-label names {node:?}, but nodes are node-1..node-{node_count}"
                    ))
                })?;
                spec.labels.insert(key, value);
            }
            Ok(Command::Up { dir, nodes })
        }
        "down" => Ok(Command::Down { dir: need_dir(dir)? }),
        "env" => Ok(Command::Env { dir: need_dir(dir)? }),
        other => Err(CliError::Usage(format!("unknown command {other:?}"))),
    }
}

fn parse_node_label(text: &str) -> Result<(String, String, String), CliError> {
    let bad = || CliError::Usage(format!("--node-label wants NODE:KEY=VALUE, got {text:?}"));
    let (node, label) = text.split_once(':').ok_or_else(bad)?;
    let (key, value) = label.split_once('=').ok_or_else(bad)?;
    if node.is_empty() || key.is_empty() {
        return Err(bad());
    }
    Ok((node.to_owned(), key.to_owned(), value.to_owned()))
}

/// Runs a parsed command.
pub async fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Up { dir, nodes } => up(dir, nodes).await,
        Command::Down { dir } => down(&dir).await,
        Command::Env { dir } => {
            let path = dir.join(ENV_FILE);
            let text = std::fs::read_to_string(&path).map_err(|source| CliError::File {
                action: "read",
                path,
                source,
            })?;
            print!("{text}");
            Ok(())
        }
    }
}

async fn up(dir: Option<PathBuf>, nodes: Vec<NodeSpec>) -> Result<(), CliError> {
    let mut terminate = signal(SignalKind::terminate()).map_err(CliError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(CliError::Signals)?;
    let cluster = tokio::select! {
        started = TestCluster::start(ClusterOptions::with_nodes(nodes)) => started?,
        // Dropping the half-started cluster cleans it up.
        _ = terminate.recv() => return Ok(()),
        _ = interrupt.recv() => return Ok(()),
    };
    let dir = dir.unwrap_or_else(|| cluster.dir().to_owned());
    let written = write_state(&dir, &cluster);
    if let Err(error) = written {
        cluster.stop().await;
        return Err(error);
    }
    let env = std::fs::read_to_string(dir.join(ENV_FILE)).unwrap_or_default();
    print!("{env}");
    tracing::info!(dir = %dir.display(), "cluster is up; SIGTERM or SIGINT (or `test-cluster down`) stops it");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("stopping the cluster");
    cluster.stop().await;
    for name in [PID_FILE, ENV_FILE, KUBECONFIG_FILE] {
        // The cluster's own dir is already gone when no --dir was given.
        let _ = std::fs::remove_file(dir.join(name));
    }
    Ok(())
}

fn write_state(dir: &Path, cluster: &TestCluster) -> Result<(), CliError> {
    let file_error = |action, path: &Path| {
        let path = path.to_owned();
        move |source| CliError::File { action, path, source }
    };
    std::fs::create_dir_all(dir).map_err(file_error("create directory", dir))?;
    let kubeconfig = dir.join(KUBECONFIG_FILE);
    if kubeconfig != cluster.kubeconfig_path() {
        std::fs::copy(cluster.kubeconfig_path(), &kubeconfig).map_err(file_error("write", &kubeconfig))?;
    }
    let env = format!(
        "export KUBECONFIG={}\nexport TEST_CLUSTER_API_SERVER={}\nexport TEST_CLUSTER_DIR={}\n",
        shell_quote(&kubeconfig.display().to_string()),
        shell_quote(cluster.api_server_url()),
        shell_quote(&cluster.dir().display().to_string()),
    );
    let env_path = dir.join(ENV_FILE);
    std::fs::write(&env_path, env).map_err(file_error("write", &env_path))?;
    let pid_path = dir.join(PID_FILE);
    std::fs::write(&pid_path, format!("{}\n", std::process::id())).map_err(file_error("write", &pid_path))
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

async fn down(dir: &Path) -> Result<(), CliError> {
    let not_running = |reason: String| CliError::NotRunning {
        dir: dir.to_owned(),
        reason,
    };
    let pid_path = dir.join(PID_FILE);
    let text = std::fs::read_to_string(&pid_path)
        .map_err(|e| not_running(format!("cannot read {}: {e}", pid_path.display())))?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| not_running(format!("{} holds no pid", pid_path.display())))?;
    // Guard against a stale pid file whose pid now belongs to an unrelated process.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let is_up = cmdline.split(|b| *b == 0).any(|arg| arg == b"up")
        && String::from_utf8_lossy(&cmdline).contains("test-cluster");
    if !is_up {
        return Err(not_running(format!(
            "pid {pid} is not a running `test-cluster up`"
        )));
    }
    send_signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + DOWN_TIMEOUT;
    while process_exists(pid) {
        if Instant::now() >= deadline {
            return Err(CliError::StillRunning {
                pid,
                timeout: DOWN_TIMEOUT,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn send_signal(pid: i32, signal: libc::c_int) -> bool {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Whether `pid` is still running; a zombie has exited and only waits for its parent to reap it.
fn process_exists(pid: i32) -> bool {
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false);
    !zombie && send_signal(pid, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn up_builds_numbered_nodes_with_their_labels() {
        let parsed = parse(&args("up --nodes 2 --node-label node-2:disk=ssd --dir /tmp/x"));
        let Ok(Command::Up { dir, nodes }) = parsed else {
            panic!("unexpected parse result {parsed:?}")
        };
        assert_eq!(dir, Some(PathBuf::from("/tmp/x")));
        assert_eq!(
            nodes,
            vec![
                NodeSpec::new("node-1"),
                NodeSpec::new("node-2").with_label("disk", "ssd")
            ]
        );
    }

    #[test]
    fn bad_arguments_name_what_was_wrong() {
        let message = |text: &str| {
            parse(&args(text))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(message("down").contains("down needs --dir DIR"));
        assert!(message("up --nodes two").contains("--nodes wants a number, got \"two\""));
        assert!(message("up --node-label node-3:a=b").contains("node-1..node-1"));
        assert!(message("up --node-label nolabel").contains("NODE:KEY=VALUE"));
        assert!(message("env --nodes 2").contains("unknown argument \"--nodes\""));
        assert!(message("sideways").contains("unknown command"));
        assert!(message("").contains("missing command"));
    }
}
