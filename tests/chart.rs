//! The Helm chart, deployed for real: its RBAC, ConfigMap, Secret and Deployment run the executor
//! in the local cluster with in-cluster credentials, and the Downward API wiring
//! (`pinToExecutorNode`) puts job pods on the executor's own node among several.

mod support;

use std::{path::PathBuf, process::Command, time::Duration};

use dev_frontend::{FrontendOptions, JobState};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use support::{Env, job, step};

fn helm() -> PathBuf {
    let cache = std::env::var("KUBE_EXECUTOR_CACHE").unwrap_or_else(|_| "/var/cache/kube-executor".into());
    let helm = PathBuf::from(cache).join("tools/bin/helm");
    assert!(
        helm.exists(),
        "{} is missing: run scripts/install-tools.sh",
        helm.display()
    );
    helm
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("run command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// A copy of the executor binary outside /tmp, removed when dropped.
struct StagedBinary {
    dir: PathBuf,
    path: PathBuf,
}

impl StagedBinary {
    fn new(source: &str) -> Self {
        let dir = PathBuf::from(format!("/var/tmp/kube-executor-chart-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create a staging directory in /var/tmp");
        let path = dir.join("executor");
        std::fs::copy(source, &path).expect("stage the executor binary");
        Self { dir, path }
    }
}

impl Drop for StagedBinary {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_deployment_pins_jobs_to_the_executor_node_through_the_downward_api() {
    let env = Env::start_with(
        Env::nodes(&["node-1", "node-2", "node-3"]),
        FrontendOptions::default(),
    )
    .await;
    let api_port = env
        .cluster
        .api_server_url()
        .rsplit(':')
        .next()
        .expect("API server port")
        .to_string();
    let health_port = support::free_port();
    let chart = format!("{}/helm/kube-executor", env!("CARGO_MANIFEST_DIR"));
    let values = env.cluster.dir().join("values.yaml");
    std::fs::write(
        &values,
        format!(
            r#"executor:
  frontendUrl: "{frontend}"
  frontendPassword: "{password}"
  queueName: batches
  maximumNumJobs: 2
  kubernetesJob:
    node:
      pinToExecutorNode: true
    resources:
      requests: {{memory: 64Mi}}
      limits: {{memory: 2Gi}}
  extraEnv:
    # In a real cluster the kubelet injects these for the kubernetes Service.
    - {{name: KUBERNETES_SERVICE_HOST, value: "127.0.0.1"}}
    - {{name: KUBERNETES_SERVICE_PORT, value: "{api_port}"}}
config:
  EXECUTOR_HEALTH_SERVER_ADDR: "127.0.0.1:{health_port}"
  EXECUTOR_QUEUE_POLL_INTERVAL: 200ms
nodeSelector:
  kubernetes.io/hostname: node-2
"#,
            frontend = env.frontend.url(),
            password = env.frontend.access_token().unwrap_or_default(),
        ),
    )
    .expect("write values");
    let rendered = run(Command::new(helm())
        .args(["template", "ke", &chart, "--namespace", "default", "-f"])
        .arg(&values));
    let manifest = env.cluster.dir().join("chart.yaml");
    std::fs::write(&manifest, rendered).expect("write manifest");
    run(Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(env.cluster.kubeconfig_path())
        .args(["apply", "--namespace", "default", "-f"])
        .arg(&manifest));

    // The image's entrypoint is /usr/local/bin/executor; the simulated node runs host binaries.
    let deployments: Api<Deployment> = Api::namespaced(env.cluster.client(), "default");
    let deployment = deployments
        .get("ke-kube-executor")
        .await
        .expect("the chart's Deployment");
    let container = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| s.containers[0].clone())
        .expect("a container");
    let wiring = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "EXECUTOR_KUBERNETES_NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.clone());
    assert_eq!(
        wiring.as_deref(),
        Some("spec.nodeName"),
        "the chart wires the Downward API"
    );
    // The chart mounts an emptyDir at /tmp, so the binary must not live there (a clone under /tmp
    // would hide it from the pod): stage a copy in /var/tmp.
    let staged = StagedBinary::new(env!("CARGO_BIN_EXE_executor"));
    let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [
        {"name": container.name, "command": [staged.path.display().to_string()]}
    ]}}}});
    deployments
        .patch(
            "ke-kube-executor",
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
        .expect("set the entrypoint");

    let gate = support::Gate::new();
    let id = env.frontend.enqueue(job(vec![step(
        "where",
        &["echo running on the executor node", &gate.wait_cmd()],
    )]));
    let started = env
        .frontend
        .wait_for_job("batches", id, Duration::from_secs(180), |j| {
            j.state.is_terminal()
                || j.log_entries
                    .iter()
                    .any(|e| e.out.contains("running on the executor node"))
        })
        .await
        .unwrap_or_else(|e| panic!("the job did not start: {e}"));
    assert!(
        !started.state.is_terminal(),
        "the job ended before it ran: {started:#?}"
    );
    let job_pods = env
        .pods_api()
        .list(&ListParams::default().labels(&format!("kube-executor.io/job-id={id}")))
        .await
        .expect("list job pods");
    let job_nodes: Vec<Option<String>> = job_pods
        .items
        .iter()
        .map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .collect();
    assert_eq!(
        job_nodes,
        vec![Some("node-2".to_string())],
        "the job pod runs on the executor's node"
    );
    gate.open();
    let record = env
        .frontend
        .wait_for_job("batches", id, Duration::from_secs(120), |j| j.state.is_terminal())
        .await
        .unwrap_or_else(|e| panic!("job did not finish: {e}"));
    assert_eq!(record.state, JobState::Completed, "{record:#?}");

    let pods: Api<Pod> = Api::namespaced(env.cluster.client(), "default");
    let executor_pods = pods
        .list(
            &ListParams::default()
                .labels("app.kubernetes.io/name=kube-executor,app.kubernetes.io/instance=ke"),
        )
        .await
        .expect("list executor pods");
    let executor_nodes: Vec<Option<String>> = executor_pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .collect();
    assert_eq!(executor_nodes, vec![Some("node-2".to_string())]);
    // The executor reported under its pod's name, and its job pod ran on its node.
    let executor = &env.frontend.executors()[0];
    assert!(
        executor.hostname.starts_with("ke-kube-executor-"),
        "{}",
        executor.hostname
    );
    let events = support::http_get(
        format!("127.0.0.1:{health_port}").parse().expect("addr"),
        "/metrics",
    )
    .await
    .expect("the executor's /metrics");
    assert_eq!(events.0, 200);
    assert!(
        events
            .1
            .contains("kube_executor_events_total{event=\"job_succeeded\"} 1"),
        "{}",
        events.1
    );
}
