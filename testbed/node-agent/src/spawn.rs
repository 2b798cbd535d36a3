//! Starting container processes: own process group, parent-death signal, private mount namespace with
//! bind mounts, working directory, rlimits and cgroup placement, all set up in the forked child.
#![allow(unsafe_code)]

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Component, Path, PathBuf},
    process::Stdio,
};

/// First descriptor number the child uses to hold mount sources open.
const FIRST_SOURCE_FD: libc::c_int = 200;

/// One bind mount inside the container's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Everything needed to start one container process.
#[derive(Debug, Clone, Default)]
pub struct LaunchSpec {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Applied in order; parents must come before nested targets.
    pub mounts: Vec<BindMount>,
    pub working_dir: Option<PathBuf>,
    pub nofile_limit: Option<u64>,
    /// `cgroup.procs` of the container's cgroup; the child moves itself there before exec.
    pub cgroup_procs: Option<PathBuf>,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {} contains NUL", path.display()),
        )
    })
}

/// All leading directories of an absolute path, shortest first ("/a/b" → "/a", "/a/b").
fn prefixes(path: &Path) -> io::Result<Vec<CString>> {
    let mut current = PathBuf::from("/");
    let mut out = Vec::new();
    for component in path.components() {
        if let Component::Normal(part) = component {
            current.push(part);
            out.push(c_path(&current)?);
        }
    }
    Ok(out)
}

struct PreparedMount {
    source: CString,
    /// Where the child keeps the source open (`/proc/self/fd/<source_fd>`), so the source stays
    /// reachable after an earlier mount covers its path: a volume mounted at /tmp would otherwise
    /// hide every per-pod volume directory under /tmp.
    source_fd: libc::c_int,
    source_fd_path: CString,
    target: CString,
    /// Directories to create before binding (for a file target: its parents).
    directories: Vec<CString>,
    file_target: bool,
    read_only: bool,
}

struct ChildPlan {
    parent_pid: libc::pid_t,
    mounts: Vec<PreparedMount>,
    working_dir: Option<(Vec<CString>, CString)>,
    nofile_limit: Option<u64>,
    cgroup_procs: Option<CString>,
}

impl ChildPlan {
    fn prepare(spec: &LaunchSpec) -> io::Result<Self> {
        let mut mounts = Vec::new();
        for mount in &spec.mounts {
            let file_target = mount.source.metadata().map(|m| !m.is_dir())?;
            let directories = if file_target {
                mount
                    .target
                    .parent()
                    .map(prefixes)
                    .transpose()?
                    .unwrap_or_default()
            } else {
                prefixes(&mount.target)?
            };
            // Numbers chosen here because the forked child cannot allocate; close-on-exec, so the
            // container never sees them.
            let source_fd = FIRST_SOURCE_FD + libc::c_int::try_from(mounts.len()).unwrap_or(0);
            mounts.push(PreparedMount {
                source: c_path(&mount.source)?,
                source_fd,
                source_fd_path: c_path(Path::new(&format!("/proc/self/fd/{source_fd}")))?,
                target: c_path(&mount.target)?,
                directories,
                file_target,
                read_only: mount.read_only,
            });
        }
        let working_dir = spec
            .working_dir
            .as_ref()
            .map(|dir| Ok::<_, io::Error>((prefixes(dir)?, c_path(dir)?)))
            .transpose()?;
        Ok(Self {
            parent_pid: std::process::id() as libc::pid_t,
            mounts,
            working_dir,
            nofile_limit: spec.nofile_limit,
            cgroup_procs: spec.cgroup_procs.as_deref().map(c_path).transpose()?,
        })
    }

    /// Runs in the forked child before exec: only async-signal-safe calls, no allocation.
    fn apply(&self) -> io::Result<()> {
        fn check(result: libc::c_int) -> io::Result<()> {
            if result == -1 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
        // SAFETY (whole function): plain syscalls on pointers to CStrings owned by `self`, which
        // lives until exec; no allocation happens here.
        unsafe {
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            // NB: the parent may have died between fork and prctl; then nobody would kill us later.
            if libc::getppid() != self.parent_pid {
                return Err(io::Error::other("node agent exited during container start"));
            }
            if let Some(procs) = &self.cgroup_procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                check(fd)?;
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if !self.mounts.is_empty() || self.working_dir.is_some() {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
            }
            // NB: opened in the new namespace (a mount of another namespace cannot be bound) and
            // before any mount, so no source is hidden yet.
            for mount in &self.mounts {
                let fd = libc::open(mount.source.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                check(fd)?;
                if fd != mount.source_fd {
                    check(libc::dup3(fd, mount.source_fd, libc::O_CLOEXEC))?;
                    libc::close(fd);
                }
            }
            for mount in &self.mounts {
                for directory in &mount.directories {
                    libc::mkdir(directory.as_ptr(), 0o755);
                }
                if mount.file_target {
                    let fd = libc::open(
                        mount.target.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                        0o644,
                    );
                    if fd >= 0 {
                        libc::close(fd);
                    }
                }
                check(libc::mount(
                    mount.source_fd_path.as_ptr(),
                    mount.target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                if mount.read_only {
                    check(libc::mount(
                        std::ptr::null(),
                        mount.target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    ))?;
                }
            }
            if let Some((directories, dir)) = &self.working_dir {
                for directory in directories {
                    libc::mkdir(directory.as_ptr(), 0o755);
                }
                check(libc::chdir(dir.as_ptr()))?;
            }
            // Last: a low limit must not stop the descriptors above from being opened.
            if let Some(limit) = self.nofile_limit {
                let rlimit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                check(libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit))?;
            }
        }
        Ok(())
    }
}

/// Starts the process with piped stdout/stderr and stdin from /dev/null.
///
/// NB: must be called from a long-lived thread (a runtime worker), because PDEATHSIG fires when
/// the forking thread exits.
pub fn spawn(spec: &LaunchSpec) -> io::Result<tokio::process::Child> {
    let plan = ChildPlan::prepare(spec)?;
    let mut command = tokio::process::Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: `apply` only makes async-signal-safe syscalls and does not allocate.
    unsafe {
        command.pre_exec(move || plan.apply());
    }
    command.spawn()
}

/// Sends `signal` to a whole process group; a group that is already gone is not an error.
pub fn signal_group(pgid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) with a negative pid addresses a process group and has no memory effects.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), signal);
    }
}

/// Sends `signal` to one process.
pub fn signal_process(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory effects.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_cover_every_level() {
        let got = prefixes(Path::new("/a/b/c")).expect("plain path");
        let got: Vec<&str> = got.iter().map(|c| c.to_str().expect("ascii")).collect();
        assert_eq!(got, vec!["/a", "/a/b", "/a/b/c"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn spawned_process_gets_env_and_own_process_group() {
        let spec = LaunchSpec {
            program: "sh".into(),
            args: vec!["-c".into(), "echo $GREETING; ps -o pgid= -p $$".into()],
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("GREETING".into(), "hello".into()),
            ],
            ..Default::default()
        };
        let child = spawn(&spec).expect("sh starts");
        let pid = child.id().expect("running child has a pid");
        let output = child.wait_with_output().await.expect("sh finishes");
        let text = String::from_utf8_lossy(&output.stdout);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("hello"));
        if let Some(pgid) = lines.next() {
            assert_eq!(pgid.trim(), pid.to_string());
        }
    }
}
