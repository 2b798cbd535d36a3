//! One container's lifecycle as a host process: image check, configuration, start, log capture, exit,
//! termination message, OOM detection and restarts according to the pod's restartPolicy.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use tokio::{io::AsyncReadExt, sync::watch};
use tokio_util::sync::CancellationToken;

use crate::{
    agent::Agent,
    config::NodeConfig,
    env::{self, Sources},
    image::{self, PullOutcome},
    logs::{LineSplitter, LogBuffer, Stream},
    quantity,
    spawn::{self, BindMount, LaunchSpec},
    status::{Current, PodView, Termination},
    volumes,
};

const CONFIG_RETRY: Duration = Duration::from_secs(2);
const PULL_ERROR_DURATION: Duration = Duration::from_secs(3);
const MAX_BACKOFF: Duration = Duration::from_secs(20);
const DEFAULT_TERMINATION_PATH: &str = "/dev/termination-log";
const MAX_TERMINATION_MESSAGE: usize = 4096;

/// Everything a pod's container runners share.
pub struct PodRun {
    pub agent: Arc<Agent>,
    pub node: Arc<NodeConfig>,
    pub pod: Arc<Pod>,
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub pod_dir: PathBuf,
    pub view: watch::Sender<PodView>,
    pub stop: CancellationToken,
    pub volumes: HashMap<String, PathBuf>,
}

/// Which container of the pod a runner drives.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub init: bool,
    pub index: usize,
}

/// Why a container could not be started yet.
#[derive(Debug, thiserror::Error)]
enum PrepareError {
    /// Missing Secret/ConfigMap or key: `CreateContainerConfigError`, retried.
    #[error("{0}")]
    Config(String),
    /// Unrunnable container definition: `CreateContainerError`, retried.
    #[error("{0}")]
    Create(String),
}

impl PodRun {
    fn container(&self, slot: Slot) -> Option<&Container> {
        let spec = self.pod.spec.as_ref()?;
        if slot.init {
            spec.init_containers.as_ref()?.get(slot.index)
        } else {
            spec.containers.get(slot.index)
        }
    }

    fn update(&self, slot: Slot, change: impl FnOnce(&mut crate::status::ContainerView)) {
        self.view.send_modify(|view| {
            if let Some(container) = view.container_mut(slot.init, slot.index) {
                change(container);
            }
        });
    }

    fn set_waiting(&self, slot: Slot, reason: &str, message: Option<String>) {
        if let Some(container) = self.container(slot) {
            self.agent
                .logs
                .set_waiting_reason(&self.namespace, &self.name, &container.name, reason);
        }
        self.update(slot, |c| {
            c.state = Current::Waiting {
                reason: reason.to_string(),
                message,
            }
        });
    }

    /// Sleeps unless the pod is stopping; returns false when stopped.
    async fn pause(&self, duration: Duration) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            () = tokio::time::sleep(duration) => true,
        }
    }

    fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    /// Runs the container, restarting it as the policy says; returns the last termination, or `None`
    /// if the pod was stopped before the container finished for good.
    pub async fn run_container(&self, slot: Slot) -> Option<Termination> {
        let mut backoff = Duration::from_secs(1);
        let mut instance = 0u32;
        loop {
            let termination = self.run_once(slot, instance).await?;
            instance += 1;
            self.update(slot, |c| c.state = Current::Terminated(termination.clone()));
            let restart = match self.restart_policy() {
                "Never" => false,
                "OnFailure" => termination.exit_code != 0,
                _ => !slot.init || termination.exit_code != 0,
            };
            if !restart || self.stop.is_cancelled() {
                return Some(termination);
            }
            let name = self.container(slot).map(|c| c.name.clone()).unwrap_or_default();
            let message = format!(
                "back-off {}s restarting failed container={name} pod={}_{}({})",
                backoff.as_secs(),
                self.name,
                self.namespace,
                self.uid
            );
            self.update(slot, |c| {
                c.last = Some(termination.clone());
                c.restart_count += 1;
                c.state = Current::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(message),
                };
            });
            if !self.pause(backoff).await {
                return Some(termination);
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One start of the container. `None` when the pod stopped before the process could start.
    async fn run_once(&self, slot: Slot, instance: u32) -> Option<Termination> {
        let container = self.container(slot)?.clone();
        let image = container.image.clone().unwrap_or_default();
        match image::pull_outcome(&image, &self.node.unpullable_images) {
            PullOutcome::Present => {}
            PullOutcome::InvalidName(message) => {
                self.set_waiting(slot, "InvalidImageName", Some(message));
                self.stop.cancelled().await;
                return None;
            }
            PullOutcome::PullFails => {
                let mut backoff = Duration::from_secs(5);
                loop {
                    self.set_waiting(slot, "ErrImagePull", Some(image::pull_error_message(&image)));
                    if !self.pause(PULL_ERROR_DURATION).await {
                        return None;
                    }
                    self.set_waiting(
                        slot,
                        "ImagePullBackOff",
                        Some(format!("Back-off pulling image \"{image}\"")),
                    );
                    if !self.pause(backoff).await {
                        return None;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let instance_dir = self
            .pod_dir
            .join("containers")
            .join(&container.name)
            .join(instance.to_string());
        let termination_file = instance_dir.join("termination-log");
        let spec = loop {
            if self.stop.is_cancelled() {
                return None;
            }
            match self.prepare(&container, &termination_file).await {
                Ok(spec) => break spec,
                Err(PrepareError::Config(message)) => {
                    self.set_waiting(slot, "CreateContainerConfigError", Some(message));
                }
                Err(PrepareError::Create(message)) => {
                    self.set_waiting(slot, "CreateContainerError", Some(message));
                }
            }
            if !self.pause(CONFIG_RETRY).await {
                return None;
            }
        };
        self.set_waiting(slot, "ContainerCreating", None);
        if self.node.start_delay_ms > 0 && !self.pause(Duration::from_millis(self.node.start_delay_ms)).await
        {
            return None;
        }
        if self.stop.is_cancelled() {
            return None;
        }
        Some(
            self.execute(slot, &container, spec, &instance_dir, &termination_file)
                .await,
        )
    }

    /// Resolves environment, command and mounts.
    async fn prepare(
        &self,
        container: &Container,
        termination_file: &Path,
    ) -> Result<LaunchSpec, PrepareError> {
        let (secret_names, config_map_names) = env::referenced_sources(container);
        let mut sources = Sources::default();
        let fetch_error = |e: volumes::VolumeError| PrepareError::Config(e.to_string());
        for name in secret_names {
            let data = volumes::fetch_secret(&self.agent.client, &self.namespace, &name, "env")
                .await
                .map_err(fetch_error)?;
            sources.secrets.insert(name, data);
        }
        for name in config_map_names {
            let data = volumes::fetch_config_map(&self.agent.client, &self.namespace, &name, "env")
                .await
                .map_err(fetch_error)?;
            let text: Option<BTreeMap<String, String>> = data.map(|d| {
                d.into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect()
            });
            sources.config_maps.insert(name, text);
        }
        let env = env::resolve_env(&self.pod, container, &sources)
            .map_err(|e| PrepareError::Config(e.to_string()))?;
        let mut argv: Vec<String> = container
            .command
            .iter()
            .flatten()
            .chain(container.args.iter().flatten())
            .map(|arg| env::expand(arg, &env))
            .collect();
        if argv.is_empty() {
            return Err(PrepareError::Create(
                "failed to generate container spec: no command specified (images have no entrypoint on this node)"
                    .into(),
            ));
        }
        let program = argv.remove(0);
        let mut mounts = volumes::container_mounts(container, &self.volumes, &env)
            .map_err(|e| PrepareError::Create(e.to_string()))?;
        if let Some(parent) = termination_file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| PrepareError::Create(e.to_string()))?;
        }
        std::fs::write(termination_file, b"").map_err(|e| PrepareError::Create(e.to_string()))?;
        let target = container
            .termination_message_path
            .clone()
            .unwrap_or_else(|| DEFAULT_TERMINATION_PATH.into());
        mounts.push(BindMount {
            source: termination_file.to_path_buf(),
            target: target.into(),
            read_only: false,
        });
        Ok(LaunchSpec {
            program,
            args: argv,
            env,
            mounts,
            working_dir: container
                .working_dir
                .clone()
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
            nofile_limit: self.node.nofile_limit,
            cgroup_procs: None,
        })
    }

    /// Starts the process and follows it to its exit.
    async fn execute(
        &self,
        slot: Slot,
        container: &Container,
        mut spec: LaunchSpec,
        instance_dir: &Path,
        termination_file: &Path,
    ) -> Termination {
        let container_id = format!("node-agent://{}", uuid::Uuid::new_v4().simple());
        let log = LogBuffer::new(Some(instance_dir.join("container.log")));
        self.agent
            .logs
            .start_instance(&self.namespace, &self.name, &container.name, log.clone());
        let memory_limit = container
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .and_then(|q| quantity::units(&q.0).ok());
        let cgroup = self.agent.cgroups.as_ref().and_then(|cgroups| {
            let name = format!(
                "{}-{}",
                self.uid,
                container_id.trim_start_matches("node-agent://")
            );
            match cgroups.create_container(&name, memory_limit) {
                Ok(cgroup) => Some(cgroup),
                Err(error) => {
                    tracing::warn!(%error, container = %container.name, "cannot create container cgroup");
                    None
                }
            }
        });
        spec.cgroup_procs = cgroup.as_ref().map(|c| c.procs_file());
        let started_at = Timestamp::now();
        let mut child = match spawn::spawn(&spec) {
            Ok(child) => child,
            Err(error) => {
                log.finish();
                if let Some(cgroup) = cgroup {
                    let _ = tokio::task::spawn_blocking(move || cgroup.remove()).await;
                }
                let message = format!(
                    "failed to create containerd task: OCI runtime create failed: exec: \"{}\": {error}",
                    spec.program
                );
                tracing::info!(pod = %self.name, container = %container.name, %message, "container failed to start");
                return Termination {
                    exit_code: 128,
                    signal: None,
                    reason: "StartError".into(),
                    message: Some(message),
                    started_at,
                    finished_at: Timestamp::now(),
                    container_id: Some(container_id),
                };
            }
        };
        let pgid = child.id().unwrap_or_default();
        self.agent.processes.insert(pgid, &self.uid);
        if self.stop.is_cancelled() {
            // The pod began stopping while this process was starting; nobody else will signal it.
            spawn::signal_group(pgid, libc::SIGKILL);
        }
        tracing::info!(pod = %self.name, container = %container.name, pid = pgid, "container started");
        self.update(slot, |c| {
            c.container_id = Some(container_id.clone());
            c.state = Current::Running { started_at };
        });
        let readers = [
            child
                .stdout
                .take()
                .map(|pipe| tokio::spawn(capture(pipe, Stream::Stdout, log.clone()))),
            child
                .stderr
                .take()
                .map(|pipe| tokio::spawn(capture(pipe, Stream::Stderr, log.clone()))),
        ];
        let exit = child.wait().await;
        // The container's other processes die with it, as they would with its PID namespace.
        spawn::signal_group(pgid, libc::SIGKILL);
        self.agent.processes.remove(pgid);
        for reader in readers.into_iter().flatten() {
            // NB: a daemonised grandchild outside the group could hold the pipe open forever.
            let abort = reader.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), reader)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        log.finish();
        let finished_at = Timestamp::now();
        let oom_killed = match cgroup {
            Some(cgroup) => {
                let killed = cgroup.oom_killed();
                let _ = tokio::task::spawn_blocking(move || cgroup.remove()).await;
                killed
            }
            None => false,
        };
        let (exit_code, signal) = match &exit {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                match (status.code(), status.signal()) {
                    (Some(code), _) => (code, None),
                    (None, Some(signal)) => (128 + signal, Some(signal)),
                    (None, None) => (255, None),
                }
            }
            Err(_) => (255, None),
        };
        let (exit_code, reason) = if oom_killed {
            (137, "OOMKilled")
        } else if exit_code == 0 {
            (0, "Completed")
        } else {
            (exit_code, "Error")
        };
        let mut message = read_termination_message(termination_file);
        let fallback = container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        if message.is_empty() && fallback && exit_code != 0 {
            message = tail_of_log(&log);
        }
        tracing::info!(pod = %self.name, container = %container.name, exit_code, reason, "container exited");
        Termination {
            exit_code,
            signal,
            reason: reason.into(),
            message: Some(message).filter(|m| !m.is_empty()),
            started_at,
            finished_at,
            container_id: Some(container_id),
        }
    }
}

/// Copies one pipe into the log until end of stream.
async fn capture(mut pipe: impl tokio::io::AsyncRead + Unpin, stream: Stream, log: Arc<LogBuffer>) {
    let mut splitter = LineSplitter::new(stream);
    let mut buffer = vec![0u8; 8192];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                for line in splitter.feed(&buffer[..read], Timestamp::now()) {
                    log.push(line);
                }
            }
        }
    }
    if let Some(line) = splitter.finish(Timestamp::now()) {
        log.push(line);
    }
}

fn read_termination_message(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let bytes = &bytes[..bytes.len().min(MAX_TERMINATION_MESSAGE)];
    String::from_utf8_lossy(bytes).into_owned()
}

/// Last 80 lines / 2048 bytes of the log, as the kubelet uses for FallbackToLogsOnError.
fn tail_of_log(log: &LogBuffer) -> String {
    let lines = log.snapshot();
    let start = lines.len().saturating_sub(80);
    let mut text = String::new();
    for line in &lines[start..] {
        text.push_str(&String::from_utf8_lossy(&line.content));
        text.push('\n');
    }
    let cut = text.len().saturating_sub(2048);
    let cut = (cut..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[cut..].to_string()
}
