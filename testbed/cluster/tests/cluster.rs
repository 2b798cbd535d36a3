//! Proofs that the test bed behaves like a real cluster: each test starts its own control plane and
//! node agent and drives it through the Kubernetes API the way kubectl would.
//!
//! Needs the control-plane binaries (`scripts/install-test-cluster.sh`) and the node agent
//! (`cargo build -p node-agent`); a missing one fails the test with that instruction.

use std::{
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use futures_util::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::{
    batch::v1::{Job, JobSpec},
    core::v1::{
        Affinity, Container, EmptyDirVolumeSource, NodeAffinity, NodeSelector, NodeSelectorRequirement,
        NodeSelectorTerm, Pod, PodSpec, PodTemplateSpec, ServiceAccount, Volume, VolumeMount,
    },
    rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use kube::api::{Api, DeleteParams, ListParams, LogParams, ObjectMeta, PostParams};
use test_cluster::{ClusterOptions, NodeSpec, TestCluster};
use tokio::sync::Semaphore;

/// Long enough for a loaded 2-core machine; every wait returns as soon as its condition holds.
const WAIT: Duration = Duration::from_secs(60);
const NAMESPACE: &str = "default";

/// Each cluster runs four Go servers and etcd; on a 2-core machine more than a few at once starve
/// each other past their startup deadlines. Tests still overlap, so clusters do run side by side.
static CLUSTER_SLOTS: Semaphore = Semaphore::const_new(3);

async fn start(options: ClusterOptions) -> (TestCluster, tokio::sync::SemaphorePermit<'static>) {
    // The semaphore is never closed.
    let permit = CLUSTER_SLOTS
        .acquire()
        .await
        .expect("cluster slots semaphore closed");
    let cluster = TestCluster::start(options)
        .await
        .unwrap_or_else(|e| panic!("cluster did not start: {e}"));
    (cluster, permit)
}

/// Polls `check` until it yields a value; after [`WAIT`] panics with `what` and the cluster's state.
async fn wait_for<T, F, Fut>(cluster: &TestCluster, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {WAIT:?} waiting for {what}\n{}",
                explain(cluster).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pods' statuses and the node agent's last log lines, for failure messages.
async fn explain(cluster: &TestCluster) -> String {
    let pods: Api<Pod> = Api::all(cluster.client());
    let statuses = match pods.list(&ListParams::default()).await {
        Ok(list) => list
            .items
            .iter()
            .map(|pod| {
                let status = serde_json::to_string(&pod.status).unwrap_or_default();
                format!(
                    "pod {}: {status}",
                    pod.metadata.name.as_deref().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(error) => format!("listing pods failed: {error}"),
    };
    let agent_log = std::fs::read_to_string(cluster.dir().join("logs/node-agent.log")).unwrap_or_default();
    let agent_tail: Vec<&str> = agent_log.lines().rev().take(30).collect();
    let agent_tail: Vec<&str> = agent_tail.into_iter().rev().collect();
    format!("{statuses}\nnode-agent log tail:\n{}", agent_tail.join("\n"))
}

fn container(name: &str, script: &str) -> Container {
    Container {
        name: name.to_owned(),
        image: Some("busybox:1.36".to_owned()),
        command: Some(vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()]),
        ..Container::default()
    }
}

fn pod_spec(containers: Vec<Container>) -> PodSpec {
    PodSpec {
        containers,
        restart_policy: Some("Never".to_owned()),
        ..PodSpec::default()
    }
}

fn job(name: &str, spec: PodSpec) -> Job {
    Job {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            template: PodTemplateSpec {
                metadata: None,
                spec: Some(spec),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

async fn create_job(cluster: &TestCluster, job: &Job) -> Api<Job> {
    let jobs: Api<Job> = Api::namespaced(cluster.client(), NAMESPACE);
    jobs.create(&PostParams::default(), job)
        .await
        .unwrap_or_else(|e| panic!("creating the Job failed: {e}"));
    jobs
}

fn job_condition(job: &Job, type_: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

async fn wait_for_job_condition(cluster: &TestCluster, jobs: &Api<Job>, name: &str, type_: &str) -> Job {
    wait_for(cluster, &format!("Job {name} condition {type_}"), || async {
        jobs.get(name).await.ok().filter(|job| job_condition(job, type_))
    })
    .await
}

/// The single pod of Job `name`, once `accept` likes it.
async fn wait_for_job_pod(
    cluster: &TestCluster,
    name: &str,
    what: &str,
    accept: impl Fn(&Pod) -> bool,
) -> Pod {
    let pods: Api<Pod> = Api::namespaced(cluster.client(), NAMESPACE);
    let selector = ListParams::default().labels(&format!("job-name={name}"));
    wait_for(cluster, &format!("pod of Job {name} {what}"), || async {
        pods.list(&selector)
            .await
            .ok()?
            .items
            .into_iter()
            .find(|pod| accept(pod))
    })
    .await
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn main_exit_code(pod: &Pod) -> Option<i32> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "main")?
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

fn main_is_running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "main"))
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

/// Whether `pid` is a live process (a zombie has finished running and counts as gone).
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// Live processes whose command line mentions `needle`.
fn processes_mentioning(needle: &Path) -> Vec<(u32, String)> {
    let needle = needle.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id() && process_alive(*pid))
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&needle).then_some((pid, cmdline))
        })
        .collect()
}

/// Starts a Job whose container records its pid in a file and sleeps; returns that pid.
async fn start_sleeping_job(cluster: &TestCluster, name: &str) -> (Api<Job>, u32) {
    let pid_file = cluster.dir().join(format!("{name}.pid"));
    // `$$$$` is Kubernetes' escape for the shell's `$$` (the command is subject to `$(VAR)` expansion).
    let script = format!(
        "echo $$$$ > {}.tmp && mv {0}.tmp {0} && exec sleep 600",
        pid_file.display()
    );
    let jobs = create_job(cluster, &job(name, pod_spec(vec![container("main", &script)]))).await;
    let pid = wait_for(
        cluster,
        &format!("{} to hold the container's pid", pid_file.display()),
        || async {
            std::fs::read_to_string(&pid_file)
                .ok()?
                .trim()
                .parse::<u32>()
                .ok()
        },
    )
    .await;
    assert!(
        process_alive(pid),
        "the container process {pid} should be running"
    );
    (jobs, pid)
}

#[tokio::test]
async fn job_runs_on_a_simulated_node_and_completes() {
    let (cluster, _slot) = start(ClusterOptions::default()).await;
    let jobs = create_job(
        &cluster,
        &job("hello", pod_spec(vec![container("main", "echo hello")])),
    )
    .await;

    let done = wait_for_job_condition(&cluster, &jobs, "hello", "Complete").await;
    assert_eq!(done.status.and_then(|s| s.succeeded), Some(1));
    let pod = wait_for_job_pod(&cluster, "hello", "Succeeded", |p| phase(p) == "Succeeded").await;
    assert_eq!(main_exit_code(&pod), Some(0));
    assert_eq!(pod.spec.and_then(|s| s.node_name).as_deref(), Some("node-1"));
    cluster.stop().await;
}

#[tokio::test]
async fn logs_stream_with_follow_while_the_container_runs() {
    let (cluster, _slot) = start(ClusterOptions::default()).await;
    let go_file = cluster.dir().join("go");
    let script = format!(
        "echo first line; while [ ! -e {} ]; do sleep 0.05; done; echo second line",
        go_file.display()
    );
    create_job(
        &cluster,
        &job("follow", pod_spec(vec![container("main", &script)])),
    )
    .await;
    let pod = wait_for_job_pod(&cluster, "follow", "running", main_is_running).await;
    let pod_name = pod.metadata.name.unwrap_or_default();

    let pods: Api<Pod> = Api::namespaced(cluster.client(), NAMESPACE);
    let params = LogParams {
        container: Some("main".to_owned()),
        follow: true,
        ..LogParams::default()
    };
    let stream = pods
        .log_stream(&pod_name, &params)
        .await
        .unwrap_or_else(|e| panic!("log stream: {e}"));
    let mut lines = stream.lines();

    let first = tokio::time::timeout(WAIT, lines.next()).await;
    assert!(
        matches!(&first, Ok(Some(Ok(line))) if line == "first line"),
        "expected the first line before the container may continue, got {first:?}"
    );
    assert!(
        !go_file.exists(),
        "the container must still be waiting while the first line arrives"
    );
    std::fs::write(&go_file, b"").unwrap_or_else(|e| panic!("creating {}: {e}", go_file.display()));

    let second = tokio::time::timeout(WAIT, lines.next()).await;
    assert!(
        matches!(&second, Ok(Some(Ok(line))) if line == "second line"),
        "got {second:?}"
    );
    let end = tokio::time::timeout(WAIT, lines.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "the follow stream should end when the container exits, got {end:?}"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn deleting_a_running_job_kills_its_processes() {
    let (cluster, _slot) = start(ClusterOptions::default()).await;
    let (jobs, pid) = start_sleeping_job(&cluster, "sleeper").await;

    jobs.delete("sleeper", &DeleteParams::background())
        .await
        .unwrap_or_else(|e| panic!("delete Job: {e}"));
    wait_for(&cluster, &format!("container process {pid} to end"), || async {
        (!process_alive(pid)).then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(cluster.client(), NAMESPACE);
    wait_for(&cluster, "the Job's pod to be deleted", || async {
        let listed = pods
            .list(&ListParams::default().labels("job-name=sleeper"))
            .await
            .ok()?;
        listed.items.is_empty().then_some(())
    })
    .await;
    cluster.stop().await;
}

fn unschedulable_reason(pod: &Pod) -> Option<String> {
    let condition = pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| {
        c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
    })?;
    condition.message.clone()
}

#[tokio::test]
async fn unmatched_node_selector_or_affinity_leaves_the_pod_pending_with_the_schedulers_reason() {
    let (cluster, _slot) = start(ClusterOptions::default()).await;
    let mut by_selector = pod_spec(vec![container("main", "echo never")]);
    by_selector.node_selector = Some(BTreeMap::from([(
        "disktype".to_owned(),
        "nonexistent".to_owned(),
    )]));
    let mut by_affinity = pod_spec(vec![container("main", "echo never")]);
    by_affinity.affinity = Some(Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: "kubernetes.io/hostname".to_owned(),
                        operator: "In".to_owned(),
                        values: Some(vec!["node-9".to_owned()]),
                    }]),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    });
    create_job(&cluster, &job("by-selector", by_selector)).await;
    create_job(&cluster, &job("by-affinity", by_affinity)).await;

    for name in ["by-selector", "by-affinity"] {
        let pod = wait_for_job_pod(&cluster, name, "marked Unschedulable", |p| {
            unschedulable_reason(p).is_some()
        })
        .await;
        let message = unschedulable_reason(&pod).unwrap_or_default();
        assert!(
            message.contains("node(s) didn't match"),
            "{name}: unexpected scheduler message {message:?}"
        );
        assert_eq!(phase(&pod), "Pending", "{name}");
        assert_eq!(
            pod.spec.and_then(|s| s.node_name),
            None,
            "{name} must not be bound"
        );
    }
    cluster.stop().await;
}

#[tokio::test]
async fn failing_command_fails_the_pod_with_its_exit_code_and_the_job() {
    let (cluster, _slot) = start(ClusterOptions::default()).await;
    let jobs = create_job(
        &cluster,
        &job("fails", pod_spec(vec![container("main", "echo bad >&2; exit 3")])),
    )
    .await;

    let failed = wait_for_job_condition(&cluster, &jobs, "fails", "Failed").await;
    assert_eq!(failed.status.and_then(|s| s.failed), Some(1));
    let pod = wait_for_job_pod(&cluster, "fails", "Failed", |p| phase(p) == "Failed").await;
    assert_eq!(main_exit_code(&pod), Some(3));
    cluster.stop().await;
}

#[tokio::test]
async fn empty_dir_written_by_an_init_container_is_read_by_the_next_container() {
    let (cluster, _slot) = start(ClusterOptions::default()).await;
    // The mount point lives in the cluster directory so nothing is left on the host; the host
    // directory itself must stay empty, proving the containers saw the pod's emptyDir instead.
    let mount_path = cluster.dir().join("scratch");
    std::fs::create_dir_all(&mount_path).unwrap_or_else(|e| panic!("creating {}: {e}", mount_path.display()));
    let mount = VolumeMount {
        name: "scratch".to_owned(),
        mount_path: mount_path.display().to_string(),
        ..VolumeMount::default()
    };
    let mut writer = container(
        "writer",
        &format!("echo handed-over > {}/note", mount_path.display()),
    );
    writer.volume_mounts = Some(vec![mount.clone()]);
    let mut reader = container("main", &format!("cat {}/note", mount_path.display()));
    reader.volume_mounts = Some(vec![mount]);
    let mut spec = pod_spec(vec![reader]);
    spec.init_containers = Some(vec![writer]);
    spec.volumes = Some(vec![Volume {
        name: "scratch".to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }]);
    let jobs = create_job(&cluster, &job("scratch", spec)).await;

    wait_for_job_condition(&cluster, &jobs, "scratch", "Complete").await;
    let pod = wait_for_job_pod(&cluster, "scratch", "Succeeded", |p| phase(p) == "Succeeded").await;
    let pods: Api<Pod> = Api::namespaced(cluster.client(), NAMESPACE);
    let params = LogParams {
        container: Some("main".to_owned()),
        ..LogParams::default()
    };
    let logs = pods
        .logs(&pod.metadata.name.unwrap_or_default(), &params)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(logs.trim(), "handed-over");
    assert!(
        !mount_path.join("note").exists(),
        "the note must be in the emptyDir, not the host directory"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn hostname_node_selector_pins_the_pod_to_node_2() {
    let (cluster, _slot) = start(ClusterOptions::with_nodes(vec![
        NodeSpec::new("node-1"),
        NodeSpec::new("node-2"),
    ]))
    .await;
    assert_eq!(cluster.node_names(), ["node-1", "node-2"]);
    let mut spec = pod_spec(vec![container("main", "echo pinned")]);
    spec.node_selector = Some(BTreeMap::from([(
        "kubernetes.io/hostname".to_owned(),
        "node-2".to_owned(),
    )]));
    let jobs = create_job(&cluster, &job("pinned", spec)).await;

    wait_for_job_condition(&cluster, &jobs, "pinned", "Complete").await;
    let pod = wait_for_job_pod(&cluster, "pinned", "Succeeded", |p| phase(p) == "Succeeded").await;
    assert_eq!(pod.spec.and_then(|s| s.node_name).as_deref(), Some("node-2"));
    cluster.stop().await;
}

#[tokio::test]
async fn service_account_kubeconfig_is_forbidden_until_rbac_grants_access() {
    let (cluster, _slot) = start(ClusterOptions::with_nodes(Vec::new())).await;
    let admin = cluster.client();
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("reader".to_owned()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), NAMESPACE)
        .create(&PostParams::default(), &account)
        .await
        .unwrap_or_else(|e| panic!("create ServiceAccount: {e}"));

    let path = cluster
        .service_account_kubeconfig(NAMESPACE, "reader")
        .await
        .unwrap_or_else(|e| panic!("service_account_kubeconfig: {e}"));
    let reader = test_cluster::client_from_kubeconfig(&path)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pods: Api<Pod> = Api::namespaced(reader, NAMESPACE);
    match pods.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "expected Forbidden, got {status:?}");
            assert!(
                status.message.contains("system:serviceaccount:default:reader"),
                "{}",
                status.message
            );
        }
        other => panic!("listing pods without a Role should be forbidden, got {other:?}"),
    }

    let role = Role {
        metadata: ObjectMeta {
            name: Some("pod-reader".to_owned()),
            ..ObjectMeta::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["pods".to_owned()]),
            verbs: vec!["get".to_owned(), "list".to_owned()],
            ..PolicyRule::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("reader-reads-pods".to_owned()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: "pod-reader".to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: "reader".to_owned(),
            namespace: Some(NAMESPACE.to_owned()),
            ..Subject::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), NAMESPACE)
        .create(&PostParams::default(), &role)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Api::<RoleBinding>::namespaced(admin, NAMESPACE)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // The RBAC authorizer reads Roles from an informer, so the grant takes effect shortly after.
    wait_for(&cluster, "the RoleBinding to allow listing pods", || async {
        pods.list(&ListParams::default()).await.ok()
    })
    .await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(pods.into_client(), NAMESPACE);
    assert!(
        matches!(secrets.list(&ListParams::default()).await, Err(kube::Error::Api(s)) if s.code == 403),
        "the Role grants pods only"
    );
    cluster.stop().await;
}

/// Asserts nothing of a stopped cluster is left: its directory, its components, its containers.
fn assert_nothing_left(dir: &Path, component_pids: &[u32], container_pid: u32) {
    assert!(
        !dir.exists(),
        "the cluster directory {} should be gone",
        dir.display()
    );
    let alive: Vec<u32> = component_pids
        .iter()
        .copied()
        .filter(|pid| process_alive(*pid))
        .collect();
    assert!(alive.is_empty(), "component processes still alive: {alive:?}");
    assert!(
        !process_alive(container_pid),
        "container process {container_pid} still alive"
    );
    let leftovers = processes_mentioning(dir);
    assert!(
        leftovers.is_empty(),
        "processes still mention the cluster directory: {leftovers:?}"
    );
}

#[tokio::test]
async fn stop_leaves_no_process_and_no_directory() {
    let (cluster, _slot) = start(ClusterOptions::default()).await;
    let (_jobs, container_pid) = start_sleeping_job(&cluster, "outlives").await;
    let dir: PathBuf = cluster.dir().to_owned();
    let component_pids = cluster.process_ids();
    assert_eq!(
        component_pids.len(),
        5,
        "etcd, apiserver, controller-manager, scheduler, node agent"
    );

    cluster.stop().await;
    assert_nothing_left(&dir, &component_pids, container_pid);
}

#[tokio::test]
async fn drop_leaves_no_process_and_no_directory() {
    let (cluster, _slot) = start(ClusterOptions::default()).await;
    let (_jobs, container_pid) = start_sleeping_job(&cluster, "outlives").await;
    let dir: PathBuf = cluster.dir().to_owned();
    let component_pids = cluster.process_ids();

    drop(cluster);
    assert_nothing_left(&dir, &component_pids, container_pid);
}

#[tokio::test]
async fn several_clusters_run_side_by_side() {
    let ((first, _first_slot), (second, _second_slot)) = tokio::join!(
        start(ClusterOptions::with_nodes(Vec::new())),
        start(ClusterOptions::with_nodes(Vec::new()))
    );
    assert_ne!(first.api_server_url(), second.api_server_url());
    let namespace = |name: &str| k8s_openapi::api::core::v1::Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Default::default()
    };
    let first_namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(first.client());
    first_namespaces
        .create(&PostParams::default(), &namespace("only-in-first"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let second_namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(second.client());
    assert!(
        second_namespaces
            .get_opt("only-in-first")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none()
    );
    tokio::join!(first.stop(), second.stop());
}

/// `DIR/up.log`, for the `up` process's diagnostics.
fn up_log_file(state: &Path) -> std::fs::File {
    std::fs::create_dir_all(state).unwrap_or_else(|e| panic!("creating {}: {e}", state.display()));
    std::fs::File::create(state.join("up.log")).unwrap_or_else(|e| panic!("creating up.log: {e}"))
}

/// Removes a directory the test created, also when the test panics.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn command_line_up_serves_a_cluster_until_down() {
    let _slot = CLUSTER_SLOTS
        .acquire()
        .await
        .expect("cluster slots semaphore closed");
    let state = RemoveOnDrop(std::env::temp_dir().join(format!("test-cluster-cli-{}", std::process::id())));
    let state = &state.0;
    let mut up = tokio::process::Command::new(env!("CARGO_BIN_EXE_test-cluster"))
        .args(["up", "--nodes", "1", "--node-label", "node-1:disk=ssd", "--dir"])
        .arg(state)
        .stdout(std::process::Stdio::null())
        .stderr(up_log_file(state))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn test-cluster up: {e}"));

    let deadline = Instant::now() + WAIT;
    let env = loop {
        if let Ok(env) = std::fs::read_to_string(state.join("env")) {
            break env;
        }
        assert!(
            Instant::now() < deadline,
            "test-cluster up wrote no env file within {WAIT:?}"
        );
        assert!(
            up.try_wait().is_ok_and(|s| s.is_none()),
            "test-cluster up exited early"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        env.contains(&format!(
            "export KUBECONFIG='{}'",
            state.join("kubeconfig").display()
        )),
        "{env}"
    );
    let client = test_cluster::client_from_kubeconfig(&state.join("kubeconfig"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let node = Api::<k8s_openapi::api::core::v1::Node>::all(client)
        .get("node-1")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        node.metadata
            .labels
            .and_then(|l| l.get("disk").cloned())
            .as_deref(),
        Some("ssd")
    );

    let down = tokio::process::Command::new(env!("CARGO_BIN_EXE_test-cluster"))
        .args(["down", "--dir"])
        .arg(state)
        .status()
        .await
        .unwrap_or_else(|e| panic!("run test-cluster down: {e}"));
    assert!(down.success());
    let up_status = tokio::time::timeout(WAIT, up.wait()).await;
    assert!(
        matches!(up_status, Ok(Ok(s)) if s.success()),
        "up should exit cleanly, got {up_status:?}"
    );
    assert!(!state.join("env").exists() && !state.join("test-cluster.pid").exists());
}

#[tokio::test]
async fn missing_control_plane_binaries_name_the_install_script() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_test-cluster"))
        .args(["up", "--nodes", "0"])
        .env("KUBE_EXECUTOR_CACHE", "/nonexistent/kube-executor-cache")
        .output()
        .await
        .unwrap_or_else(|e| panic!("run test-cluster: {e}"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/kube-executor-cache/bin/kube-apiserver")
            && stderr.contains("run scripts/install-test-cluster.sh"),
        "{stderr}"
    );
}

#[tokio::test]
async fn missing_node_agent_is_reported_before_anything_starts() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_test-cluster"))
        .args(["up"])
        .env("NODE_AGENT_BIN", "/nonexistent/node-agent")
        .output()
        .await
        .unwrap_or_else(|e| panic!("run test-cluster: {e}"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("node-agent not found at /nonexistent/node-agent"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_component_exiting_at_startup_is_reported_with_its_log_and_cleaned_up() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_test-cluster"))
        .args(["up"])
        .env("NODE_AGENT_BIN", "/bin/false")
        .output()
        .await
        .unwrap_or_else(|e| panic!("run test-cluster: {e}"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("node-agent exited during startup (exit status: 1)"),
        "{stderr}"
    );
    let log = stderr
        .split_whitespace()
        .find(|word| word.ends_with("/logs/node-agent.log:"))
        .unwrap_or_else(|| panic!("the error names no log file: {stderr}"));
    let dir = Path::new(log.trim_end_matches("/logs/node-agent.log:"));
    assert!(dir.starts_with(std::env::temp_dir()), "{}", dir.display());
    assert!(
        !dir.exists(),
        "the failed cluster's directory {} should be removed",
        dir.display()
    );
    let leftovers = processes_mentioning(dir);
    assert!(
        leftovers.is_empty(),
        "processes of the failed cluster remain: {leftovers:?}"
    );
}
