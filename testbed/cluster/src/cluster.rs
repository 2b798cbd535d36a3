//! Starting, using and stopping one local cluster: etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler and the node agent, all on loopback in a private temp directory.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Node, ServiceAccount},
};
use kube::api::{Api, ListParams, PostParams};

use crate::{
    binary::Binaries,
    error::{Error, Result},
    kubeconfig,
    node::{ClusterOptions, NodeAgentConfig},
    pki::{self, Pki},
    port,
    process::{self, Component, Spawner},
};

const ETCD: &str = "etcd";
const API_SERVER: &str = "kube-apiserver";
const CONTROLLER_MANAGER: &str = "kube-controller-manager";
const SCHEDULER: &str = "kube-scheduler";
const NODE_AGENT: &str = "node-agent";

const API_SERVER_READY_TIMEOUT: Duration = Duration::from_secs(90);
const NODES_READY_TIMEOUT: Duration = Duration::from_secs(60);
const SERVICE_ACCOUNT_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Lifetime of tokens issued by [`TestCluster::service_account_kubeconfig`]; outlives any test.
const SERVICE_ACCOUNT_TOKEN_SECONDS: i64 = 24 * 60 * 60;

/// A running local cluster. Dropping it stops every process and removes its directory.
pub struct TestCluster {
    api_server_url: String,
    etcd_url: String,
    kubeconfig_path: PathBuf,
    client: kube::Client,
    node_names: Vec<String>,
    ca_pem: Vec<u8>,
    running: Running,
}

impl fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCluster")
            .field("api_server_url", &self.api_server_url)
            .field("dir", &self.running.dir)
            .field("node_names", &self.node_names)
            .finish_non_exhaustive()
    }
}

impl TestCluster {
    /// Starts a cluster and returns once the API server is ready, every node that is neither
    /// delayed nor marked not-ready is Ready, and the `default` ServiceAccount (with its token)
    /// exists in namespace `default`.
    ///
    /// # Errors
    /// A missing binary, a certificate step, or a component that exits or does not become ready in
    /// time; the latter carry the tail of that component's log. Everything started is cleaned up.
    pub async fn start(options: ClusterOptions) -> Result<TestCluster> {
        options.validate()?;
        let binaries = Binaries::locate(!options.nodes.is_empty())?;
        match Self::start_once(&options, &binaries).await {
            // Ports are reserved and released before the components bind them; another process
            // can take one in between, so a conflict earns one more attempt with fresh ports.
            Err(error) if error.is_port_conflict() => {
                tracing::warn!(%error, "port conflict while starting the cluster; retrying with new ports");
                Self::start_once(&options, &binaries).await
            }
            result => result,
        }
    }

    async fn start_once(options: &ClusterOptions, binaries: &Binaries) -> Result<TestCluster> {
        let mut running = Running::create()?;
        let dir = running.dir.clone();
        let pki = {
            let pki_dir = dir.join("pki");
            tokio::task::spawn_blocking(move || pki::generate(&pki_dir))
                .await
                .map_err(|e| Error::Certificate {
                    step: "running openssl",
                    detail: e.to_string(),
                })??
        };
        let [etcd_port, etcd_peer_port, api_port, node_port] = port::reserve::<4>()?;
        let api_server_url = format!("https://127.0.0.1:{api_port}");
        let admin_token = uuid::Uuid::new_v4().simple().to_string();
        let token_file = dir.join("tokens.csv");
        write_file(
            &token_file,
            format!("{admin_token},admin,admin,\"system:masters\"\n").as_bytes(),
        )?;
        let ca_pem = std::fs::read(&pki.ca_cert).map_err(|source| Error::File {
            action: "read",
            path: pki.ca_cert.clone(),
            source,
        })?;

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let etcd_peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        running.spawn(
            ETCD,
            &binaries.etcd,
            &[
                "--name=default".to_owned(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={etcd_peer_url}"),
                format!("--initial-advertise-peer-urls={etcd_peer_url}"),
                format!("--initial-cluster=default={etcd_peer_url}"),
            ],
        )?;
        running.spawn(
            API_SERVER,
            &binaries.api_server,
            &api_server_args(&pki, &etcd_url, api_port, &token_file, &audit_args(&dir)?),
        )?;

        let kubeconfig_path = dir.join("kubeconfig");
        kubeconfig::write(&kubeconfig_path, &api_server_url, &ca_pem, "admin", &admin_token)?;
        let client = kubeconfig::client_from_kubeconfig(&kubeconfig_path).await?;
        running
            .wait_for(
                "the API server's /readyz",
                API_SERVER,
                API_SERVER_READY_TIMEOUT,
                || api_server_ready(&client),
            )
            .await?;

        let kubeconfig_arg = format!("--kubeconfig={}", kubeconfig_path.display());
        running.spawn(
            CONTROLLER_MANAGER,
            &binaries.controller_manager,
            &[
                kubeconfig_arg.clone(),
                // Their own HTTPS endpoints (health, metrics) are not needed; 0 also keeps
                // parallel clusters from competing for ports.
                "--secure-port=0".to_owned(),
                "--port=0".to_owned(),
                "--leader-elect=false".to_owned(),
                "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle".to_owned(),
                format!(
                    "--service-account-private-key-file={}",
                    pki.service_account_key.display()
                ),
                format!("--root-ca-file={}", pki.ca_cert.display()),
                format!("--cluster-signing-cert-file={}", pki.ca_cert.display()),
                format!("--cluster-signing-key-file={}", pki.ca_key.display()),
                "--feature-gates=TTLAfterFinished=true".to_owned(),
            ],
        )?;
        running.spawn(
            SCHEDULER,
            &binaries.scheduler,
            &[
                kubeconfig_arg,
                // Their own HTTPS endpoints (health, metrics) are not needed; 0 also keeps
                // parallel clusters from competing for ports.
                "--secure-port=0".to_owned(),
                "--port=0".to_owned(),
                "--leader-elect=false".to_owned(),
            ],
        )?;

        if let Some(node_agent) = &binaries.node_agent {
            let nodes_file = dir.join("nodes.json");
            let config =
                serde_json::to_vec_pretty(&NodeAgentConfig::build(&options.nodes, options.log_stream_cut))
                    .map_err(Error::SerializeNodeConfig)?;
            write_file(&nodes_file, &config)?;
            running.spawn(
                NODE_AGENT,
                node_agent,
                &[
                    "--kubeconfig".to_owned(),
                    path_arg(&kubeconfig_path),
                    "--config".to_owned(),
                    path_arg(&nodes_file),
                    "--state-dir".to_owned(),
                    path_arg(&dir.join("node-agent")),
                    "--tls-cert".to_owned(),
                    path_arg(&pki.node_cert),
                    "--tls-key".to_owned(),
                    path_arg(&pki.node_key),
                    "--port".to_owned(),
                    node_port.to_string(),
                ],
            )?;
            let awaited: Vec<String> = options
                .nodes
                .iter()
                .filter(|n| n.awaited_at_startup())
                .map(|n| n.name.clone())
                .collect();
            let nodes: Api<Node> = Api::all(client.clone());
            running
                .wait_for(
                    &format!("nodes {awaited:?} to be Ready"),
                    NODE_AGENT,
                    NODES_READY_TIMEOUT,
                    || nodes_ready(&nodes, &awaited),
                )
                .await?;
        }

        // NB: in 1.20 the ServiceAccount admission plugin rejects pods until the `default`
        // ServiceAccount exists *and* the token controller has given it a token Secret.
        let service_accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        running
            .wait_for(
                "the default ServiceAccount and its token in namespace default",
                CONTROLLER_MANAGER,
                NODES_READY_TIMEOUT,
                || default_service_account_ready(&service_accounts),
            )
            .await?;

        tracing::info!(dir = %dir.display(), api_server = %api_server_url, "test cluster started");
        Ok(TestCluster {
            api_server_url,
            etcd_url,
            kubeconfig_path,
            client,
            node_names: options.nodes.iter().map(|n| n.name.clone()).collect(),
            ca_pem,
            running,
        })
    }

    /// A client authenticated as the admin (group `system:masters`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The admin kubeconfig file.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// `https://127.0.0.1:<port>`.
    pub fn api_server_url(&self) -> &str {
        &self.api_server_url
    }

    /// The cluster's private directory (certificates, etcd data, component logs under `logs/`).
    pub fn dir(&self) -> &Path {
        &self.running.dir
    }

    /// Names of all simulated nodes, in the order given.
    pub fn node_names(&self) -> Vec<String> {
        self.node_names.clone()
    }

    /// The API server's audit log (see [`AUDIT_LOG`]).
    pub fn audit_log_path(&self) -> PathBuf {
        self.running.dir.join(AUDIT_LOG)
    }

    /// Process id of the kube-apiserver, for tests that make it unreachable (SIGSTOP/SIGCONT).
    pub fn api_server_pid(&self) -> Option<u32> {
        self.running.pid_of(API_SERVER)
    }

    /// etcd's client URL (`http://127.0.0.1:<port>`); it also serves etcd's JSON gateway under `/v3/`.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// SIGKILLs the kube-apiserver: every request and watch fails until [`Self::start_api_server`].
    pub fn kill_api_server(&mut self) {
        self.running.kill(API_SERVER);
    }

    /// Starts a killed kube-apiserver again on the same port with the same certificates and etcd,
    /// returning once its `/readyz` passes.
    ///
    /// # Errors
    /// When it cannot be started again or does not become ready in time.
    pub async fn start_api_server(&mut self) -> Result<()> {
        self.running.respawn(API_SERVER)?;
        let client = self.client.clone();
        self.running
            .wait_for(
                "the restarted API server's /readyz",
                API_SERVER,
                API_SERVER_READY_TIMEOUT,
                || api_server_ready(&client),
            )
            .await
    }

    /// Process id of the node agent (which plays every node), if one runs.
    pub fn node_agent_pid(&self) -> Option<u32> {
        self.running.pid_of(NODE_AGENT)
    }

    /// SIGKILLs the node agent: its pods' status stops updating, their processes die and their
    /// log endpoints go away, like a kubelet whose machine lost power.
    pub fn kill_node_agent(&mut self) {
        self.running.kill(NODE_AGENT);
    }

    /// Starts the node agent again with its earlier configuration (it marks the pods the killed
    /// one had started as `Failed`, reason `NodeAgentRestarted`).
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn restart_node_agent(&mut self) -> Result<()> {
        self.running.respawn(NODE_AGENT)
    }

    /// Process ids of the cluster's components (etcd, control plane, node agent).
    pub fn process_ids(&self) -> Vec<u32> {
        self.running.components.iter().map(Component::pid).collect()
    }

    /// Writes a kubeconfig that authenticates as ServiceAccount `namespace/service_account`, so
    /// RBAC applies to it, and returns its path (inside [`Self::dir`]).
    ///
    /// The caller creates the ServiceAccount; this waits up to 30 s for it to appear, then asks the
    /// API server for a token (TokenRequest API) valid for a day.
    ///
    /// # Errors
    /// [`Error::ServiceAccountMissing`] when it never appears; [`Error::RequestToken`] when the
    /// API server refuses the token.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<PathBuf> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let deadline = Instant::now() + SERVICE_ACCOUNT_TIMEOUT;
        loop {
            match accounts.get_opt(service_account).await {
                Ok(Some(_)) => break,
                Ok(None) | Err(_) if Instant::now() < deadline => tokio::time::sleep(POLL_INTERVAL).await,
                Ok(None) | Err(_) => {
                    return Err(Error::ServiceAccountMissing {
                        namespace: namespace.to_owned(),
                        name: service_account.to_owned(),
                        waited: SERVICE_ACCOUNT_TIMEOUT,
                    });
                }
            }
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(SERVICE_ACCOUNT_TOKEN_SECONDS),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let issued = accounts
            .create_token_request(service_account, &PostParams::default(), &request)
            .await
            .map_err(|source| Error::RequestToken {
                namespace: namespace.to_owned(),
                name: service_account.to_owned(),
                source,
            })?;
        let token = issued
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::EmptyToken {
                namespace: namespace.to_owned(),
                name: service_account.to_owned(),
            })?;
        let path = self
            .dir()
            .join(format!("serviceaccount-{namespace}-{service_account}.kubeconfig"));
        let user = format!("system:serviceaccount:{namespace}:{service_account}");
        kubeconfig::write(&path, &self.api_server_url, &self.ca_pem, &user, &token)?;
        Ok(path)
    }

    /// Stops the node agent (which kills its containers), then the control plane, and removes the
    /// cluster's directory. Dropping the cluster does the same, blocking the current thread.
    pub async fn stop(self) {
        let mut running = self.running;
        // Stopping polls child processes with short sleeps; keep that off the async workers.
        // A panic there leaves `running` to its Drop, which retries the same cleanup.
        let _ = tokio::task::spawn_blocking(move || running.stop()).await;
    }
}

/// Where the API server writes its audit log: one JSON line per request as it is received.
pub const AUDIT_LOG: &str = "audit.log";

/// Audit flags for the API server, writing the policy next to the log: metadata only (never a
/// body, so never a Secret's value), one event per request, so a test can count the requests of
/// each client by its user agent.
fn audit_args(dir: &Path) -> Result<[String; 4]> {
    let policy = dir.join("audit-policy.yaml");
    write_file(
        &policy,
        b"apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [ResponseStarted, ResponseComplete, Panic]\nrules:\n- level: Metadata\n",
    )?;
    Ok([
        format!("--audit-policy-file={}", policy.display()),
        format!("--audit-log-path={}", dir.join(AUDIT_LOG).display()),
        "--audit-log-format=json".to_owned(),
        "--audit-log-maxsize=0".to_owned(),
    ])
}

fn api_server_args(pki: &Pki, etcd_url: &str, port: u16, token_file: &Path, audit: &[String]) -> Vec<String> {
    let mut args = vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".to_owned(),
        format!("--secure-port={port}"),
        format!("--tls-cert-file={}", pki.api_server_cert.display()),
        format!("--tls-private-key-file={}", pki.api_server_key.display()),
        format!("--client-ca-file={}", pki.ca_cert.display()),
        format!("--token-auth-file={}", token_file.display()),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
        format!(
            "--service-account-key-file={}",
            pki.service_account_public_key.display()
        ),
        format!(
            "--service-account-signing-key-file={}",
            pki.service_account_key.display()
        ),
        "--authorization-mode=Node,RBAC".to_owned(),
        "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
        "--allow-privileged=true".to_owned(),
        format!("--kubelet-certificate-authority={}", pki.ca_cert.display()),
        format!(
            "--kubelet-client-certificate={}",
            pki.kubelet_client_cert.display()
        ),
        format!("--kubelet-client-key={}", pki.kubelet_client_key.display()),
        "--kubelet-preferred-address-types=InternalIP,Hostname".to_owned(),
        "--feature-gates=TTLAfterFinished=true".to_owned(),
        "--profiling=false".to_owned(),
    ];
    args.extend_from_slice(audit);
    args
}

async fn api_server_ready(client: &kube::Client) -> bool {
    let Ok(request) = http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    client
        .request_text(request)
        .await
        .is_ok_and(|body| body.trim() == "ok")
}

async fn nodes_ready(nodes: &Api<Node>, awaited: &[String]) -> bool {
    let Ok(list) = nodes.list(&ListParams::default()).await else {
        return false;
    };
    awaited.iter().all(|name| {
        list.items.iter().any(|node| {
            node.metadata.name.as_deref() == Some(name.as_str())
                && node
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
    })
}

async fn default_service_account_ready(accounts: &Api<ServiceAccount>) -> bool {
    accounts
        .get_opt("default")
        .await
        .ok()
        .flatten()
        .is_some_and(|sa| sa.secrets.is_some_and(|secrets| !secrets.is_empty()))
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

fn write_file(path: &Path, contents: &[u8]) -> Result<()> {
    std::fs::write(path, contents).map_err(|source| Error::File {
        action: "write",
        path: path.to_owned(),
        source,
    })
}

// === impl Running ===

/// The directory and processes of a cluster; stopping or dropping it cleans both up.
struct Running {
    dir: PathBuf,
    components: Vec<Component>,
    /// How each component was started, so a fault test can start a killed one again.
    commands: Vec<(&'static str, PathBuf, Vec<String>)>,
    spawner: Spawner,
    stopped: bool,
}

impl Running {
    fn create() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("test-cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("logs")).map_err(|source| Error::File {
            action: "create directory",
            path: dir.clone(),
            source,
        })?;
        let running = Self {
            dir,
            components: Vec::new(),
            commands: Vec::new(),
            spawner: Spawner::start()?,
            stopped: false,
        };
        if running.dir.to_str().is_none() {
            return Err(Error::File {
                action: "use (the temp dir path must be UTF-8 for openssl arguments)",
                path: running.dir.clone(),
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            });
        }
        Ok(running)
    }

    fn spawn(&mut self, component: &'static str, program: &Path, args: &[String]) -> Result<()> {
        let log = self.dir.join("logs").join(format!("{component}.log"));
        let child = self.spawner.spawn(component, program, args, &log)?;
        self.components.push(child);
        self.commands.push((component, program.to_owned(), args.to_vec()));
        Ok(())
    }

    fn pid_of(&self, component: &str) -> Option<u32> {
        self.components
            .iter()
            .find(|c| c.name == component)
            .map(Component::pid)
    }

    /// SIGKILLs `component` and forgets it (its log stays).
    fn kill(&mut self, component: &str) {
        if let Some(index) = self.components.iter().position(|c| c.name == component) {
            let mut killed = self.components.remove(index);
            killed.kill();
        }
    }

    /// Starts `component` again with the program and arguments it was first started with.
    fn respawn(&mut self, component: &'static str) -> Result<()> {
        if self.pid_of(component).is_some() {
            return Err(Error::SpawnerUnavailable(format!("{component} is still running")));
        }
        let Some((_, program, args)) = self
            .commands
            .iter()
            .find(|(name, _, _)| *name == component)
            .cloned()
        else {
            return Err(Error::SpawnerUnavailable(format!(
                "{component} was never started"
            )));
        };
        let log = self.dir.join("logs").join(format!("{component}.log"));
        let child = self.spawner.spawn(component, &program, &args, &log)?;
        self.components.push(child);
        Ok(())
    }

    /// Polls `ready` until it holds, failing early when any component exits.
    async fn wait_for<F, Fut>(
        &mut self,
        what: &str,
        blamed: &str,
        timeout: Duration,
        mut ready: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            for component in &mut self.components {
                if let Some(status) = component.try_exit_status() {
                    return Err(component.exited_error(status));
                }
            }
            if ready().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log = self.dir.join("logs").join(format!("{blamed}.log"));
                return Err(Error::StartupTimeout {
                    what: what.to_owned(),
                    timeout,
                    log_tail: process::log_tail(&log),
                    log,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        process::stop_all(&mut self.components, NODE_AGENT);
        self.spawner.shut_down();
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), %error, "could not remove the cluster directory");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}
