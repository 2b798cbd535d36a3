//! Child processes of a cluster: spawned from one long-lived thread so that `PR_SET_PDEATHSIG`
//! kills them when the test process dies, and stopped in order when the cluster stops.
#![allow(unsafe_code)] // NB: pre_exec, prctl, setpgid and kill have no safe wrappers in std.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::error::{Error, Result};

type SpawnReply = mpsc::Sender<std::io::Result<Child>>;

/// A thread that forks every child of one cluster.
///
/// NB: Linux delivers `PR_SET_PDEATHSIG` when the *thread* that forked the child exits, not the
/// process. Tokio's blocking and worker threads come and go, so children are forked here, on a
/// thread that lives until the cluster has reaped them all.
#[derive(Debug)]
pub(crate) struct Spawner {
    requests: Option<mpsc::Sender<(Command, SpawnReply)>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    pub(crate) fn start() -> Result<Self> {
        let (requests, inbox) = mpsc::channel::<(Command, SpawnReply)>();
        let thread = std::thread::Builder::new()
            .name("test-cluster-spawner".to_owned())
            .spawn(move || {
                for (mut command, reply) in inbox {
                    // The requester may have given up; the child is then killed by its pdeathsig
                    // once this thread ends, so the send result does not matter.
                    let _ = reply.send(command.spawn());
                }
            })
            .map_err(|e| Error::SpawnerUnavailable(e.to_string()))?;
        Ok(Self {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Starts `program` as `component`, its stdout and stderr appended to `log`.
    pub(crate) fn spawn(
        &self,
        component: &'static str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Component> {
        let open_log = || {
            File::options()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|source| Error::File {
                    action: "open log",
                    path: log.to_owned(),
                    source,
                })
        };
        let stdout = open_log()?;
        let stderr = open_log()?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec and only calls async-signal-safe libc
        // functions (prctl, getppid, _exit).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl; then nobody would kill us.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let (reply, answer) = mpsc::channel();
        self.requests
            .as_ref()
            .ok_or_else(|| Error::SpawnerUnavailable("already shut down".to_owned()))?
            .send((command, reply))
            .map_err(|_| Error::SpawnerUnavailable("thread ended".to_owned()))?;
        let child = answer
            .recv()
            .map_err(|_| Error::SpawnerUnavailable("thread ended without answering".to_owned()))?
            .map_err(|source| Error::SpawnComponent {
                component,
                program: program.to_owned(),
                source,
            })?;
        Ok(Component {
            name: component,
            child,
            log: log.to_owned(),
        })
    }

    /// Ends the thread; call only once every child has been reaped.
    pub(crate) fn shut_down(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            // A panic on the spawner thread would already have failed the spawn that caused it.
            let _ = thread.join();
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// One running control-plane or node process, leader of its own process group.
#[derive(Debug)]
pub(crate) struct Component {
    pub name: &'static str,
    child: Child,
    pub log: PathBuf,
}

impl Component {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has ended (reaping it).
    pub(crate) fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILLs the component's whole process group and reaps it: an abrupt crash, for fault tests.
    pub(crate) fn kill(&mut self) {
        self.signal_group(libc::SIGKILL);
        self.wait_until(Instant::now() + Duration::from_secs(10));
    }

    /// The error to report when this component ended during startup.
    pub(crate) fn exited_error(&self, status: ExitStatus) -> Error {
        Error::ComponentExited {
            component: self.name,
            status: status.to_string(),
            log: self.log.clone(),
            log_tail: log_tail(&self.log),
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    fn signal_group(&self, signal: libc::c_int) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: as above; a negative pid addresses the process group this child leads.
        unsafe {
            libc::kill(-pid, signal);
        }
    }

    /// Waits for the process to exit until `deadline`; true when it has.
    fn wait_until(&mut self, deadline: Instant) -> bool {
        loop {
            if self.try_exit_status().is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asks the process to exit, unless it already has.
    fn terminate(&mut self) {
        if self.try_exit_status().is_none() {
            self.signal(libc::SIGTERM);
        }
    }

    /// Waits until `deadline` for the process to exit, then SIGKILLs its group; reaps it and kills
    /// what is left of its group (the pgid stays valid while members live).
    fn finish(&mut self, deadline: Instant) {
        if !self.wait_until(deadline) {
            self.signal_group(libc::SIGKILL);
            self.wait_until(Instant::now() + Duration::from_secs(10));
        }
        self.signal_group(libc::SIGKILL);
    }
}

/// Grace the node agent gets to kill its containers and exit.
const NODE_AGENT_GRACE: Duration = Duration::from_secs(15);
/// Grace the control-plane components get to exit.
const CONTROL_PLANE_GRACE: Duration = Duration::from_secs(5);

/// Stops the components: the node agent first (it kills its containers), then the rest together.
pub(crate) fn stop_all(components: &mut Vec<Component>, node_agent: &str) {
    if let Some(agent) = components.iter_mut().find(|c| c.name == node_agent) {
        agent.terminate();
        agent.finish(Instant::now() + NODE_AGENT_GRACE);
    }
    for component in components.iter_mut().rev() {
        component.terminate();
    }
    let deadline = Instant::now() + CONTROL_PLANE_GRACE;
    for component in components.iter_mut().rev() {
        component.finish(deadline);
    }
    components.clear();
}

const LOG_TAIL_BYTES: u64 = 4096;

/// The last few kilobytes of a log file, for error messages.
pub(crate) fn log_tail(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = length.saturating_sub(LOG_TAIL_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    // Drop a partial first line when the tail starts mid-file.
    let text = if start > 0 {
        text.split_once('\n').map_or(&*text, |(_, rest)| rest)
    } else {
        &text
    };
    let text = text.trim_end();
    if text.is_empty() {
        "(the log is empty)".to_owned()
    } else {
        text.to_owned()
    }
}
