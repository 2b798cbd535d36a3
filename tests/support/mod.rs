//! End-to-end test support: a local control plane, the dev frontend and the real `executor` binary.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use dev_frontend::{DevFrontend, DockerStep, FrontendOptions, JobRecord, NewJob};
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{Pod, Secret},
};
use kube::{Api, api::ListParams};
use test_cluster::{ClusterOptions, NodeSpec, TestCluster};

pub mod deploy;
pub mod live_jobs;

/// The executor instance ID every test executor uses (its objects carry it as a label).
pub const INSTANCE: &str = "e2e-executor";

/// A cluster plus a frontend.
pub struct Env {
    pub cluster: TestCluster,
    pub frontend: DevFrontend,
    executors_started: std::sync::atomic::AtomicUsize,
}

impl Env {
    pub async fn start() -> Env {
        Self::start_with(ClusterOptions::default(), FrontendOptions::default()).await
    }

    pub async fn start_with(cluster: ClusterOptions, frontend: FrontendOptions) -> Env {
        let cluster = TestCluster::start(cluster)
            .await
            .expect("start the local control plane");
        let frontend = DevFrontend::start(frontend)
            .await
            .expect("start the dev frontend");
        Env {
            cluster,
            frontend,
            executors_started: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub fn nodes(names: &[&str]) -> ClusterOptions {
        ClusterOptions::with_nodes(names.iter().map(|n| NodeSpec::new(n)).collect())
    }

    /// The environment of an executor for this cluster and frontend; `extra` overrides.
    pub fn executor_env(&self, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = [
            ("PATH", std::env::var("PATH").unwrap_or_default()),
            ("HOME", std::env::var("HOME").unwrap_or_else(|_| "/root".into())),
            ("HOSTNAME", "e2e-host".to_string()),
            ("RUST_LOG", "kube_executor=debug,info".to_string()),
            ("EXECUTOR_FRONTEND_URL", self.frontend.url()),
            (
                "EXECUTOR_FRONTEND_PASSWORD",
                self.frontend.access_token().unwrap_or_default().to_string(),
            ),
            ("EXECUTOR_QUEUE_NAME", "batches".to_string()),
            ("EXECUTOR_INSTANCE_ID", INSTANCE.to_string()),
            (
                "EXECUTOR_KUBERNETES_CONFIG_PATH",
                self.cluster.kubeconfig_path().display().to_string(),
            ),
            ("EXECUTOR_KUBERNETES_NAMESPACE", "default".to_string()),
            ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY", "64Mi".to_string()),
            ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY", "2Gi".to_string()),
            ("EXECUTOR_QUEUE_POLL_INTERVAL", "200ms".to_string()),
            (
                "EXECUTOR_HEALTH_SERVER_ADDR",
                format!("127.0.0.1:{}", free_port()),
            ),
            (
                "KUBERNETES_JOB_STEP_IMAGE",
                "sourcegraph/batcheshelper:6.0.0".to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in extra {
            env.insert((*k).to_string(), (*v).to_string());
        }
        env
    }

    /// Starts the real `executor` binary with [`Env::executor_env`].
    pub fn spawn_executor(&self, extra: &[(&str, &str)]) -> Executor {
        let n = self
            .executors_started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let env = self.executor_env(extra);
        let log = self.cluster.dir().join(format!("executor-{n}.log"));
        let file = std::fs::File::create(&log).expect("create executor log file");
        let health: SocketAddr = env["EXECUTOR_HEALTH_SERVER_ADDR"].parse().expect("health addr");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_executor"))
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the executor binary");
        Executor {
            child,
            log,
            health,
            private_log: false,
        }
    }

    pub fn jobs_api(&self) -> Api<Job> {
        Api::namespaced(self.cluster.client(), "default")
    }

    pub fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.cluster.client(), "default")
    }

    /// Jobs, pods (terminating ones included) and Secrets carrying the test executor's labels.
    pub async fn our_objects(&self) -> (usize, usize, usize) {
        self.objects_matching(&format!("kube-executor.io/instance={INSTANCE}"))
            .await
    }

    /// Jobs, pods (terminating ones included) and Secrets matching a label selector.
    pub async fn objects_matching(&self, selector: &str) -> (usize, usize, usize) {
        self.objects_matching_in("default", selector).await
    }

    /// Jobs, pods (terminating ones included) and Secrets of a namespace matching a label selector.
    pub async fn objects_matching_in(&self, namespace: &str, selector: &str) -> (usize, usize, usize) {
        let params = ListParams::default().labels(selector);
        let client = self.cluster.client();
        let jobs = Api::<Job>::namespaced(client.clone(), namespace)
            .list(&params)
            .await
            .expect("list jobs")
            .items
            .len();
        // Terminating pods count too: their processes may still be running.
        let pods = Api::<Pod>::namespaced(client.clone(), namespace)
            .list(&params)
            .await
            .expect("list pods")
            .items
            .len();
        let secrets = Api::<Secret>::namespaced(client, namespace)
            .list(&params)
            .await
            .expect("list secrets")
            .items
            .len();
        (jobs, pods, secrets)
    }

    /// Waits until no Job, pod or Secret of the test executor remains (the garbage collector
    /// works asynchronously after a background delete).
    pub async fn wait_no_objects(&self, timeout: Duration) {
        self.wait_no_objects_matching(&format!("kube-executor.io/instance={INSTANCE}"), timeout)
            .await;
    }

    /// Waits until no Job, pod or Secret matches a label selector.
    pub async fn wait_no_objects_matching(&self, selector: &str, timeout: Duration) {
        self.wait_no_objects_in("default", selector, timeout).await;
    }

    /// Waits until no Job, pod or Secret of a namespace matches a label selector.
    pub async fn wait_no_objects_in(&self, namespace: &str, selector: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(100);
        loop {
            let found = self.objects_matching_in(namespace, selector).await;
            if found == (0, 0, 0) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "objects matching {selector} left behind after {timeout:?}: (jobs, pods, secrets) = {found:?}"
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// Waits until some execution log entry of the job contains `text` (output streams in while
    /// the step runs) and returns the record at that moment.
    pub async fn wait_for_output(&self, queue: &str, id: i64, text: &str, timeout: Duration) -> JobRecord {
        self.frontend
            .wait_for_job(queue, id, timeout, |j| {
                j.log_entries.iter().any(|e| e.out.contains(text))
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "job {queue}/{id} never printed {text:?}: {e}; record: {:#?}",
                    self.frontend.job(queue, id)
                )
            })
    }

    /// Waits for a job to reach a terminal state and returns it.
    pub async fn wait_terminal(&self, id: i64, timeout: Duration) -> JobRecord {
        self.frontend
            .wait_for_job("batches", id, timeout, |j| j.state.is_terminal())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "job {id} did not finish: {e}; record: {:#?}",
                    self.frontend.job("batches", id)
                )
            })
    }
}

/// A running `executor` process; killed when dropped (its log is printed if the test failed).
pub struct Executor {
    child: tokio::process::Child,
    pub log: PathBuf,
    pub health: SocketAddr,
    /// Set by tests whose executor log may hold a secret: it is then not printed on failure.
    pub private_log: bool,
}

impl Executor {
    pub fn pid(&self) -> i32 {
        self.child.id().map_or(0, |p| p as i32)
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY-free: sending a signal through the `kill` command keeps the tests free of unsafe code.
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Kills the executor and waits until it is gone: a job queued afterwards cannot be dequeued
    /// by it (a kill that lands while a dequeue is answered would leave that job with a dead
    /// executor until the frontend resets it).
    pub async fn kill_and_wait(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "executor did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                )
            })
            .expect("wait for executor")
    }

    /// The executor's peak resident set size so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.pid();
        status_kib(pid, "VmHWM").unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status of the executor"))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the executor's /readyz until it answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if http_status(self.health, "/readyz").await == Some(200) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "executor not ready within {timeout:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.private_log {
            let text = self.log_text();
            // The executor logs at debug in tests; what explains a failure is at info and above,
            // and the debug tail shows what it was doing last.
            let notable: Vec<&str> = text.lines().filter(|l| !l.contains(" DEBUG ")).collect();
            eprintln!("---- executor log, info and above ({}) ----", self.log.display());
            for line in &notable[notable.len().saturating_sub(150)..] {
                eprintln!("{line}");
            }
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("---- executor log tail ----");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = self.child.start_kill();
    }
}

/// A memory field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …), in KiB; `None` when the process
/// is gone or has no such field.
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// GET over plain HTTP/1.0; returns the status code.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path).await.map(|(status, _)| status)
}

/// GET over plain HTTP/1.0; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Whether a process exists and has not terminated (a zombie waiting to be reaped has).
pub fn process_running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the parenthesised command name, which may itself contain spaces.
            let after = stat.rsplit_once(')')?.1;
            after
                .split_whitespace()
                .next()
                .map(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A docker step running shell `commands`.
pub fn step(key: &str, commands: &[&str]) -> DockerStep {
    DockerStep {
        key: key.to_string(),
        image: "alpine:3".to_string(),
        commands: commands.iter().map(|c| c.to_string()).collect(),
        dir: ".".to_string(),
        env: vec![],
    }
}

pub fn job(steps: Vec<DockerStep>) -> NewJob {
    NewJob {
        queue: "batches".to_string(),
        docker_steps: steps,
        ..NewJob::default()
    }
}

/// A host directory a step can wait on, removed when dropped (steps run as host processes).
pub struct Gate {
    dir: PathBuf,
}

impl Gate {
    pub fn new() -> Gate {
        let dir = std::env::temp_dir().join(format!("ke-gate-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create gate dir");
        Gate { dir }
    }

    /// Shell that blocks until the gate is opened.
    pub fn wait_cmd(&self) -> String {
        format!("while [ ! -e {}/open ]; do sleep 0.1; done", self.dir.display())
    }

    pub fn open(&self) {
        std::fs::write(self.dir.join("open"), b"").expect("open gate");
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
