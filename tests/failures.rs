//! End-to-end: each way a job pod can fail ends the job promptly with a reason a person can act on.

mod support;

use std::time::Duration;

use dev_frontend::JobState;
use kube::api::{DeleteParams, ListParams};
use support::{Env, Gate, job, step};
use test_cluster::{ClusterOptions, NodeSpec};

const TIMEOUT: Duration = Duration::from_secs(120);

fn error_of(record: &dev_frontend::JobRecord) -> String {
    record.error_message.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_over_its_memory_limit_is_reported_as_oom_killed() {
    let env = Env::start().await;
    let id = env.frontend.enqueue(job(vec![step(
        "hungry",
        &["python3 -c 'blocks = [bytearray(16 * 1024 * 1024) for _ in range(64)]; print(len(blocks))'"],
    )]));
    let _executor = env.spawn_executor(&[
        ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY", "64Mi"),
        ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY", "128Mi"),
    ]);
    let record = env.wait_terminal(id, TIMEOUT).await;
    assert_eq!(record.state, JobState::Errored, "{record:#?}");
    let message = error_of(&record);
    assert!(message.contains("OOMKilled"), "{message}");
    assert!(
        message.starts_with("running command \"step.kubernetes.hungry\""),
        "{message}"
    );
    env.wait_no_objects(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_deadline_fails_with_the_deadline() {
    let env = Env::start().await;
    let gate = Gate::new();
    let id = env
        .frontend
        .enqueue(job(vec![step("endless", &["echo working", &gate.wait_cmd()])]));
    let _executor = env.spawn_executor(&[("KUBERNETES_JOB_DEADLINE", "4")]);
    let record = env.wait_terminal(id, TIMEOUT).await;
    assert_eq!(record.state, JobState::Errored, "{record:#?}");
    let message = error_of(&record);
    assert!(message.contains("deadline of 4s"), "{message}");
    assert!(message.contains("KUBERNETES_JOB_DEADLINE"), "{message}");
    let entry = record
        .log_entries
        .iter()
        .find(|e| e.key == "step.kubernetes.endless")
        .expect("the step's entry");
    assert!(entry.out.contains("stdout: working"), "{entry:#?}");
    env.wait_no_objects(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_the_node_cannot_admit_fails_with_the_kubelets_reason() {
    let env = Env::start_with(
        ClusterOptions::with_nodes(vec![NodeSpec::new("small").with_cpu("2")]),
        Default::default(),
    )
    .await;
    let id = env.frontend.enqueue(job(vec![step("big", &["echo never"])]));
    // spec.nodeName bypasses the scheduler, so the node itself refuses the pod.
    let _executor = env.spawn_executor(&[
        ("EXECUTOR_KUBERNETES_NODE_NAME", "small"),
        ("EXECUTOR_KUBERNETES_NODE_PINNING", "nodeName"),
        ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU", "8"),
    ]);
    let record = env.wait_terminal(id, TIMEOUT).await;
    assert_eq!(record.state, JobState::Errored, "{record:#?}");
    let message = error_of(&record);
    assert!(
        message.contains("the node rejected the pod (OutOfcpu)"),
        "{message}"
    );
    env.wait_no_objects(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_by_someone_else_fails_the_job_at_once() {
    let env = Env::start().await;
    let gate = Gate::new();
    let id = env
        .frontend
        .enqueue(job(vec![step("victim", &["echo alive", &gate.wait_cmd()])]));
    let _executor = env.spawn_executor(&[]);
    env.wait_for_output("batches", id, "stdout: alive", TIMEOUT).await;
    let pods = env
        .pods_api()
        .list(&ListParams::default().labels(&format!("kube-executor.io/job-id={id}")))
        .await
        .expect("list pods");
    let name = pods.items[0].metadata.name.clone().expect("pod name");
    env.pods_api()
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete the pod as an operator would");
    let record = env.wait_terminal(id, Duration::from_secs(60)).await;
    assert_eq!(record.state, JobState::Errored, "{record:#?}");
    assert!(error_of(&record).contains("deleted"), "{}", error_of(&record));
    env.wait_no_objects(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_deleted_with_its_pod_orphaned_leaves_no_pod_or_secret_behind() {
    let env = Env::start().await;
    let gate = Gate::new();
    let id = env
        .frontend
        .enqueue(job(vec![step("orphaned", &["echo alive", &gate.wait_cmd()])]));
    let _executor = env.spawn_executor(&[]);
    env.wait_for_output("batches", id, "stdout: alive", TIMEOUT).await;
    let name = format!("sg-executor-job-batches-{id}");
    env.jobs_api()
        .delete(
            &name,
            &DeleteParams {
                propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
                ..DeleteParams::default()
            },
        )
        .await
        .expect("delete the Job as `kubectl delete job --cascade=orphan` would");
    let record = env.wait_terminal(id, Duration::from_secs(60)).await;
    assert_eq!(record.state, JobState::Errored, "{record:#?}");
    // Whichever the view shows first: the Job gone, or its pod no longer controlled by it.
    assert!(
        error_of(&record).contains("was deleted before it finished"),
        "{}",
        error_of(&record)
    );
    // The garbage collector strips the owner references and keeps the pod running (its step
    // waits on a gate that never opens) and the Secret: the executor removes both, the pod once
    // it has stayed without a Job for 20 s.
    env.wait_no_objects(Duration::from_secs(20 + 60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_executors_pod_garbage_collects_its_jobs() {
    let env = Env::start().await;
    // The executor runs as a host process here; this pod stands in for its own (Downward API).
    let stand_in: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "executor-stand-in"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "idle", "image": "alpine:3", "command": ["/bin/sh", "-c", "exit 0"]}]
        }
    }))
    .expect("pod fixture");
    let stand_in = env
        .pods_api()
        .create(&kube::api::PostParams::default(), &stand_in)
        .await
        .expect("create the stand-in pod");
    let uid = stand_in.metadata.uid.clone().expect("a uid");
    let gate = Gate::new();
    let id = env
        .frontend
        .enqueue(job(vec![step("owned", &["echo alive", &gate.wait_cmd()])]));
    let _executor = env.spawn_executor(&[
        ("POD_NAME", "executor-stand-in"),
        ("POD_NAMESPACE", "default"),
        ("POD_UID", &uid),
    ]);
    env.wait_for_output("batches", id, "stdout: alive", TIMEOUT).await;
    let jobs = env
        .jobs_api()
        .list(&ListParams::default().labels(&format!("kube-executor.io/job-id={id}")))
        .await
        .expect("list Jobs");
    let owners = jobs.items[0]
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    assert!(
        owners.iter().any(|o| o.kind == "Pod" && o.uid == uid),
        "the Job is owned by the executor's pod: {owners:?}"
    );
    env.pods_api()
        .delete("executor-stand-in", &DeleteParams::default())
        .await
        .expect("delete the executor's pod, as a scale-down would");
    // The garbage collector deletes the Job (and with it the pod and the Secret); the running
    // executor sees its Job go.
    let record = env.wait_terminal(id, Duration::from_secs(90)).await;
    assert_eq!(record.state, JobState::Errored, "{record:#?}");
    assert!(
        error_of(&record).contains("the Kubernetes Job was deleted before it finished"),
        "{}",
        error_of(&record)
    );
    env.wait_no_objects(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unschedulable_job_with_no_autoscaler_fails_after_the_short_wait_with_the_schedulers_message() {
    let env = Env::start().await;
    let id = env.frontend.enqueue(job(vec![step("never", &["echo never"])]));
    // The pending timeout stays at its 10 minutes: only the short wait may end this job.
    let _executor = env.spawn_executor(&[
        ("EXECUTOR_KUBERNETES_NODE_SELECTOR", "disktype=nonexistent"),
        ("KUBERNETES_JOB_UNSCHEDULABLE_TIMEOUT", "3s"),
    ]);
    let started = std::time::Instant::now();
    let record = env.wait_terminal(id, TIMEOUT).await;
    // The executor's startup and the scheduler's first attempt come on top of the 3s wait.
    assert!(
        started.elapsed() < Duration::from_secs(3 + 30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(record.state, JobState::Errored, "{record:#?}");
    let message = error_of(&record);
    assert!(
        message.contains(
            "the pod could not be scheduled and no cluster autoscaler is adding a node for it \
             (waited 3s, KUBERNETES_JOB_UNSCHEDULABLE_TIMEOUT): 0/"
        ),
        "{message}"
    );
    assert!(
        message.contains("didn't match"),
        "the scheduler's message: {message}"
    );
    assert!(
        message.starts_with("running command \"setup.workspace\""),
        "{message}"
    );
    env.wait_no_objects(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_pull_failure_names_the_image_and_the_runtimes_reason() {
    let env = Env::start().await;
    let mut bad = step("pull", &["echo unreachable"]);
    bad.image = "unpullable.invalid/missing:1".into();
    let id = env.frontend.enqueue(job(vec![bad]));
    // Longer than the node's ErrImagePull phase: the job fails in ImagePullBackOff, whose own
    // message ("Back-off pulling image") no longer says why.
    let _executor = env.spawn_executor(&[("KUBERNETES_JOB_IMAGE_PULL_TIMEOUT", "5s")]);
    let record = env.wait_terminal(id, TIMEOUT).await;
    assert_eq!(record.state, JobState::Errored, "{record:#?}");
    let message = error_of(&record);
    assert!(
        message.contains("image \"unpullable.invalid/missing:1\" could not be pulled within 5s"),
        "{message}"
    );
    assert!(
        message.contains(
            "rpc error: code = Unknown desc = failed to pull and unpack image \"unpullable.invalid/missing:1\""
        ) && message.contains("pull access denied"),
        "the runtime's reason: {message}"
    );
    assert!(
        message.starts_with("running command \"step.kubernetes.pull\""),
        "{message}"
    );
    env.wait_no_objects(Duration::from_secs(30)).await;
}
