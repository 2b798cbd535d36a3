//! Deploying the Helm chart or a Kustomize overlay into the local cluster as a user would: rendered by
//! the real tools, applied with kubectl, the executor pods running a staged copy of the test binary
//! with in-cluster credentials.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use super::Env;

/// The helm binary that scripts/install-tools.sh installs.
pub fn helm() -> PathBuf {
    let cache = std::env::var("KUBE_EXECUTOR_CACHE").unwrap_or_else(|_| "/var/cache/kube-executor".into());
    let helm = PathBuf::from(cache).join("tools/bin/helm");
    assert!(
        helm.exists(),
        "{} is missing: run scripts/install-tools.sh",
        helm.display()
    );
    helm
}

/// Runs a command to success and returns its stdout.
pub fn run(command: &mut Command) -> String {
    let output = command.output().expect("run command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// A copy of the executor binary outside /tmp, removed when dropped: the chart mounts an emptyDir
/// at /tmp, which would hide a binary there from the pod.
pub struct StagedBinary {
    dir: PathBuf,
    pub path: PathBuf,
}

impl StagedBinary {
    pub fn new() -> Self {
        let dir = PathBuf::from(format!("/var/tmp/kube-executor-chart-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create a staging directory in /var/tmp");
        let path = dir.join("executor");
        std::fs::copy(env!("CARGO_BIN_EXE_executor"), &path).expect("stage the executor binary");
        Self { dir, path }
    }
}

impl Drop for StagedBinary {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Values every in-cluster test deployment of the chart needs: the dev frontend, small job pods,
/// and the API server address that a real kubelet would inject for the kubernetes Service.
pub fn in_cluster_values(env: &Env, health_addr: &str) -> String {
    let api_port = api_server_port(env);
    format!(
        r#"executor:
  frontendUrl: "{frontend}"
  frontendPassword: "{password}"
  queueName: batches
  kubernetesJob:
    resources:
      requests: {{memory: 64Mi}}
      limits: {{memory: 2Gi}}
  extraEnv:
    - {{name: KUBERNETES_SERVICE_HOST, value: "127.0.0.1"}}
    - {{name: KUBERNETES_SERVICE_PORT, value: "{api_port}"}}
config:
  EXECUTOR_HEALTH_SERVER_ADDR: "{health_addr}"
  EXECUTOR_QUEUE_POLL_INTERVAL: 200ms
"#,
        frontend = env.frontend.url(),
        password = env.frontend.access_token().unwrap_or_default(),
    )
}

/// What a user of an example overlay fills in (the frontend's URL and password) and what the
/// simulated nodes need (small job pods, the API server's address a real kubelet would inject, a
/// free health port), plus `config` entries, as the tail of a kustomization for
/// [`apply_kustomization`]'s `extra`: more `patches` and the `executor-secret` generator.
pub fn overlay_patches(env: &Env, workload: &str, config: &[(&str, &str)]) -> String {
    let (kind, name) = workload.split_once('/').expect("workload as Kind/name");
    let config: String = config
        .iter()
        .map(|(key, value)| format!("        {key}: \"{value}\"\n"))
        .collect();
    format!(
        r#"  - patch: |-
      apiVersion: v1
      kind: ConfigMap
      metadata: {{name: executor-config}}
      data:
        EXECUTOR_FRONTEND_URL: "{frontend}"
        EXECUTOR_HEALTH_SERVER_ADDR: "127.0.0.1:0"
        EXECUTOR_QUEUE_POLL_INTERVAL: 200ms
        EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY: 64Mi
        EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY: 2Gi
{config}  - target: {{kind: {kind}, name: {name}}}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: KUBERNETES_SERVICE_HOST, value: "127.0.0.1"}}
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: KUBERNETES_SERVICE_PORT, value: "{api_port}"}}
secretGenerator:
  - name: executor-secret
    behavior: replace
    literals:
      - password={password}
"#,
        frontend = env.frontend.url(),
        api_port = api_server_port(env),
        password = env.frontend.access_token().unwrap_or_default(),
    )
}

/// Renders the chart as release `release` in namespace default with the values files (later ones
/// win), and applies it with the executor workload's entrypoint set to the staged binary.
pub fn deploy_chart(env: &Env, release: &str, values: &[&str], workload: &str, staged: &StagedBinary) {
    let dir = env.cluster.dir().join(format!("deploy-{release}"));
    std::fs::create_dir_all(&dir).expect("create the deploy directory");
    let mut helm = Command::new(helm());
    helm.args([
        "template",
        release,
        &format!("{}/helm/kube-executor", env!("CARGO_MANIFEST_DIR")),
    ])
    .args(["--namespace", "default"]);
    for (i, text) in values.iter().enumerate() {
        let path = dir.join(format!("values-{i}.yaml"));
        std::fs::write(&path, text).expect("write values");
        helm.arg("-f").arg(path);
    }
    std::fs::write(dir.join("chart.yaml"), run(&mut helm)).expect("write the rendered chart");
    apply_kustomization(env, &dir, &["chart.yaml".to_string()], workload, staged, "");
}

/// Applies a kustomization of `resources` (paths relative to `dir`) plus `extra` (YAML appended to
/// the kustomization, e.g. more patches), with the executor workload's entrypoint set to the staged
/// binary: the image's entrypoint is /usr/local/bin/executor, and the simulated nodes run host
/// binaries.
pub fn apply_kustomization(
    env: &Env,
    dir: &Path,
    resources: &[String],
    workload: &str,
    staged: &StagedBinary,
    extra: &str,
) {
    let (kind, name) = workload.split_once('/').expect("workload as Kind/name");
    let kustomization = format!(
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: {resources:?}
patches:
  - target: {{kind: {kind}, name: {name}}}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/command
        value: ["{binary}"]
{extra}"#,
        binary = staged.path.display(),
    );
    std::fs::write(dir.join("kustomization.yaml"), kustomization).expect("write the kustomization");
    let mut rendered = run(Command::new("kubectl").arg("kustomize").arg(dir));
    if !server_has_api_version(env, "policy/v1") {
        // The chart picks policy/v1beta1 when helm reads the cluster's API versions (and so would
        // an operator of an older cluster editing the component), but the chart's kubeVersion
        // (>= 1.21) keeps helm from rendering against this older control plane.
        rendered = rendered.replace("apiVersion: policy/v1\n", "apiVersion: policy/v1beta1\n");
    }
    let manifest = dir.join("rendered.yaml");
    std::fs::write(&manifest, rendered).expect("write the rendered kustomization");
    run(Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(env.cluster.kubeconfig_path())
        .args(["apply", "-f"])
        .arg(&manifest));
}

fn server_has_api_version(env: &Env, version: &str) -> bool {
    run(Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(env.cluster.kubeconfig_path())
        .arg("api-versions"))
    .lines()
    .any(|line| line == version)
}

/// A path of the repository as seen from `dir`, for kustomization resources (kustomize takes no
/// absolute ones).
pub fn repo_path_from(dir: &Path, repo_relative: &str) -> String {
    let up = "../".repeat(dir.components().count().saturating_sub(1));
    format!(
        "{up}{}/{repo_relative}",
        env!("CARGO_MANIFEST_DIR").trim_start_matches('/')
    )
}

/// The API server's port, which a real kubelet would pass as KUBERNETES_SERVICE_PORT.
pub fn api_server_port(env: &Env) -> String {
    env.cluster
        .api_server_url()
        .rsplit(':')
        .next()
        .expect("API server port")
        .to_string()
}
