//! Per-container memory cgroups (v2 at /sys/fs/cgroup, or the v1 memory hierarchy) for memory limits and
//! OOM-kill detection.

use std::{
    io,
    path::{Path, PathBuf},
};

const V2_ROOT: &str = "/sys/fs/cgroup";
const V1_MEMORY_ROOT: &str = "/sys/fs/cgroup/memory";
const AGENT_PREFIX: &str = "node-agent-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V2,
    V1,
}

/// This agent's cgroup, parent of all container cgroups.
#[derive(Debug)]
pub struct Cgroups {
    version: Version,
    agent_dir: PathBuf,
}

/// The cgroup of one container instance.
#[derive(Debug)]
pub struct ContainerCgroup {
    version: Version,
    dir: PathBuf,
}

impl Cgroups {
    /// Sets up the agent cgroup if a writable memory controller exists; `None` (logged) otherwise.
    pub fn detect() -> Option<Cgroups> {
        let agent_name = format!("{AGENT_PREFIX}{}", std::process::id());
        let v2 = Path::new(V2_ROOT);
        let result = if std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "memory"))
        {
            remove_stale(v2);
            Self::setup_v2(v2, &agent_name)
        } else if Path::new(V1_MEMORY_ROOT).join("memory.limit_in_bytes").exists() {
            remove_stale(Path::new(V1_MEMORY_ROOT));
            let agent_dir = Path::new(V1_MEMORY_ROOT).join(&agent_name);
            std::fs::create_dir(&agent_dir).map(|()| Cgroups {
                version: Version::V1,
                agent_dir,
            })
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no cgroup memory controller",
            ))
        };
        match result {
            Ok(cgroups) => {
                tracing::info!(dir = %cgroups.agent_dir.display(), version = ?cgroups.version, "memory cgroups enabled");
                Some(cgroups)
            }
            Err(error) => {
                tracing::warn!(%error, "memory cgroups unavailable: no memory limits and no OOMKilled detection");
                None
            }
        }
    }

    fn setup_v2(root: &Path, agent_name: &str) -> io::Result<Cgroups> {
        // The root may not delegate memory yet; enabling is idempotent.
        let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory");
        let agent_dir = root.join(agent_name);
        std::fs::create_dir(&agent_dir)?;
        if let Err(error) = std::fs::write(agent_dir.join("cgroup.subtree_control"), "+memory") {
            let _ = std::fs::remove_dir(&agent_dir);
            return Err(error);
        }
        Ok(Cgroups {
            version: Version::V2,
            agent_dir,
        })
    }

    /// Creates a cgroup for one container instance with an optional memory limit in bytes.
    pub fn create_container(&self, name: &str, memory_limit: Option<i64>) -> io::Result<ContainerCgroup> {
        let dir = self.agent_dir.join(name);
        std::fs::create_dir(&dir)?;
        let cgroup = ContainerCgroup {
            version: self.version,
            dir,
        };
        if let Some(limit) = memory_limit.filter(|limit| *limit > 0) {
            let limit = limit.to_string();
            match self.version {
                Version::V2 => {
                    std::fs::write(cgroup.dir.join("memory.max"), &limit)?;
                    let _ = std::fs::write(cgroup.dir.join("memory.swap.max"), "0");
                }
                Version::V1 => {
                    std::fs::write(cgroup.dir.join("memory.limit_in_bytes"), &limit)?;
                    let _ = std::fs::write(cgroup.dir.join("memory.memsw.limit_in_bytes"), &limit);
                    let _ = std::fs::write(cgroup.dir.join("memory.swappiness"), "0");
                }
            }
        }
        Ok(cgroup)
    }

    /// Removes every container cgroup and the agent cgroup (killing anything left inside).
    pub fn cleanup(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.agent_dir) {
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    ContainerCgroup {
                        version: self.version,
                        dir: entry.path(),
                    }
                    .remove();
                }
            }
        }
        if let Err(error) = remove_cgroup_dir(&self.agent_dir) {
            tracing::warn!(dir = %self.agent_dir.display(), %error, "could not remove agent cgroup");
        }
    }
}

impl ContainerCgroup {
    /// The file a process writes to join this cgroup.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Whether the kernel OOM-killed a process in this cgroup.
    pub fn oom_killed(&self) -> bool {
        let file = match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        std::fs::read_to_string(self.dir.join(file)).is_ok_and(|text| {
            text.lines().any(|line| {
                line.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
        })
    }

    /// Kills what is left inside and removes the cgroup.
    pub fn remove(self) {
        if let Err(error) = remove_cgroup_dir(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), %error, "could not remove container cgroup");
        }
    }
}

/// Kills remaining members, then removes the directory, retrying briefly while the kernel reaps them.
fn remove_cgroup_dir(dir: &Path) -> io::Result<()> {
    let mut last_error = None;
    for _ in 0..40 {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|line| line.trim().parse::<u32>().ok()) {
                crate::spawn::signal_process(pid, libc::SIGKILL);
            }
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => last_error = Some(error),
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("cgroup still busy")))
}

/// Removes cgroups left by agents that no longer run (e.g. after SIGKILL).
fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(AGENT_PREFIX) else {
            continue;
        };
        if agent_alive(pid) {
            continue;
        }
        if let Ok(children) = std::fs::read_dir(entry.path()) {
            for child in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = remove_cgroup_dir(&child.path());
            }
        }
        let _ = remove_cgroup_dir(&entry.path());
    }
}

/// Whether `pid` is a live node-agent process. NB: /proc/<n> also resolves thread ids, and pids are
/// reused, so check the thread-group id and the command name.
fn agent_alive(pid: &str) -> bool {
    let Ok(status) = std::fs::read_to_string(Path::new("/proc").join(pid).join("status")) else {
        return false;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    field("Tgid:") == pid && field("Name:").starts_with("node-agent")
}
