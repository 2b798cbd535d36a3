//! The Helm chart, deployed for real: its RBAC, ConfigMap, Secret and Deployment run the executor
//! in the local cluster with in-cluster credentials, and the Downward API wiring
//! (`pinToExecutorNode`) puts job pods on the executor's own node among several; Sourcegraph's
//! executors example overlay, pointed at our Kustomize component, runs jobs in its own namespace.

mod support;

use std::time::Duration;

use dev_frontend::{FrontendOptions, JobState};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{Api, api::ListParams};
use support::{
    Env,
    deploy::{StagedBinary, deploy_chart, in_cluster_values},
    job, step,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_deployment_pins_jobs_to_the_executor_node_through_the_downward_api() {
    let env = Env::start_with(
        Env::nodes(&["node-1", "node-2", "node-3"]),
        FrontendOptions::default(),
    )
    .await;
    let health_port = support::free_port();
    let values = r#"executor:
  maximumNumJobs: 2
  kubernetesJob:
    node:
      pinToExecutorNode: true
nodeSelector:
  kubernetes.io/hostname: node-2
"#;
    let staged = StagedBinary::new();
    deploy_chart(
        &env,
        "ke",
        &[
            &in_cluster_values(&env, &format!("127.0.0.1:{health_port}")),
            values,
        ],
        "Deployment/ke-kube-executor",
        &staged,
    );

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

/// Sourcegraph's executors example overlay with our component leaves EXECUTOR_KUBERNETES_NAMESPACE
/// empty: the executor runs its Jobs in its own pod's namespace, which the overlay creates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sourcegraph_shaped_overlay_runs_jobs_in_the_overlays_namespace() {
    const NAMESPACE: &str = "executor-sourcegraph";
    let env = Env::start().await;
    let dir = env.cluster.dir().join("deploy-sourcegraph-overlay");
    std::fs::create_dir_all(&dir).expect("create the overlay directory");
    // Only what a user fills in and what the simulated nodes need; nothing about the namespace.
    let extra = support::deploy::overlay_patches(&env, "Deployment/executor", &[]);
    let staged = StagedBinary::new();
    support::deploy::apply_kustomization(
        &env,
        &dir,
        &[support::deploy::repo_path_from(
            &dir,
            "kustomize/examples/sourcegraph-executors",
        )],
        "Deployment/executor",
        &staged,
        &extra,
    );

    let gate = support::Gate::new();
    let id = env
        .frontend
        .enqueue(job(vec![step("hold", &["echo holding", &gate.wait_cmd()])]));
    env.wait_for_output("batches", id, "holding", Duration::from_secs(180))
        .await;
    let selector = format!("kube-executor.io/job-id={id}");
    let jobs_in = |namespace: &str| {
        let api: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(env.cluster.client(), namespace);
        let params = ListParams::default().labels(&selector);
        async move { api.list(&params).await.expect("list jobs").items.len() }
    };
    assert_eq!(
        jobs_in(NAMESPACE).await,
        1,
        "the Job is in the overlay's namespace"
    );
    assert_eq!(jobs_in("default").await, 0);
    gate.open();
    let record = env.wait_terminal(id, Duration::from_secs(120)).await;
    assert_eq!(record.state, JobState::Completed, "{record:#?}");
}
