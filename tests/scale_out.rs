//! Several executors deployed for real, from the Helm chart and from the Kustomize examples: a
//! StatefulSet of 3 and a DaemonSet on 5 nodes each run 300 queued jobs exactly once, a watch of the
//! cluster never sees an executor instance with more live Jobs than its slots, DaemonSet executors
//! run their jobs on their own node, and force-deleting one executor's pod mid-run loses no job (the
//! frontend re-queues its jobs for the others) and leaves nothing behind (its Jobs are owned by its
//! pod).

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use dev_frontend::{FrontendOptions, JobRecord, JobState, MarkKind};
use futures_util::StreamExt;
use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{
    Api, Resource, ResourceExt,
    api::DeleteParams,
    runtime::{WatchStreamExt, watcher},
};
use support::{
    Env,
    deploy::{
        StagedBinary, apply_kustomization, deploy_chart, in_cluster_values, overlay_patches, repo_path_from,
    },
    job,
    live_jobs::{LiveJobs, instance_of},
    step,
};

const JOBS: usize = 300;
const JOB_LABEL: &str = "app.kubernetes.io/managed-by=kube-executor";

const FIVE_NODES: [&str; 5] = ["node-1", "node-2", "node-3", "node-4", "node-5"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_of_three_runs_each_job_once_within_its_slots_and_survives_losing_a_replica() {
    let started = Instant::now();
    let env = Env::start_with(Env::nodes(&["node-1", "node-2", "node-3"]), frontend_options()).await;
    let shape = Shape {
        executors: 3,
        slots: 4,
        namespace: "default",
        workload: "StatefulSet/ke-kube-executor",
        deploy: Deploy::Chart {
            values: "replicaCount: 3\nexecutor:\n  maximumNumJobs: 4\n",
        },
    };
    let outcome = run_jobs_losing_one_executor(&env, &shape).await;
    outcome.assert_replicas_named_after_their_pods("ke-kube-executor", 3);
    outcome.report("statefulset", started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_on_five_nodes_runs_each_executors_jobs_on_its_node_and_survives_losing_one() {
    let started = Instant::now();
    let env = Env::start_with(Env::nodes(&FIVE_NODES), frontend_options()).await;
    let shape = Shape {
        executors: FIVE_NODES.len(),
        slots: 3,
        namespace: "default",
        workload: "DaemonSet/ke-kube-executor",
        deploy: Deploy::Chart {
            values: "mode: daemonset\nexecutor:\n  maximumNumJobs: 3\n",
        },
    };
    let outcome = run_jobs_losing_one_executor(&env, &shape).await;
    outcome.assert_jobs_on_their_executors_nodes(FIVE_NODES.len());
    outcome.report("daemonset", started);
}

/// The Kustomize StatefulSet example (namespace `sourcegraph`), with only what a user fills in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kustomize_statefulset_example_runs_each_job_once_and_survives_losing_a_replica() {
    let started = Instant::now();
    let env = Env::start_with(Env::nodes(&["node-1", "node-2", "node-3"]), frontend_options()).await;
    let shape = Shape {
        executors: 3,
        slots: 4,
        namespace: "sourcegraph",
        workload: "StatefulSet/executor",
        deploy: Deploy::Kustomize {
            example: "kustomize/examples/statefulset",
        },
    };
    let outcome = run_jobs_losing_one_executor(&env, &shape).await;
    outcome.assert_replicas_named_after_their_pods("executor", 3);
    outcome.report("kustomize statefulset", started);
}

/// The Kustomize DaemonSet example (namespace `sourcegraph`), with only what a user fills in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kustomize_daemonset_example_runs_each_executors_jobs_on_its_node_and_survives_losing_one() {
    let started = Instant::now();
    let env = Env::start_with(Env::nodes(&FIVE_NODES), frontend_options()).await;
    let shape = Shape {
        executors: FIVE_NODES.len(),
        slots: 3,
        namespace: "sourcegraph",
        workload: "DaemonSet/executor",
        deploy: Deploy::Kustomize {
            example: "kustomize/examples/daemonset",
        },
    };
    let outcome = run_jobs_losing_one_executor(&env, &shape).await;
    outcome.assert_jobs_on_their_executors_nodes(FIVE_NODES.len());
    outcome.report("kustomize daemonset", started);
}

/// How the executors are deployed for one test.
struct Shape {
    executors: usize,
    /// EXECUTOR_MAXIMUM_NUM_JOBS of each executor.
    slots: usize,
    /// Where the executors and their Jobs run.
    namespace: &'static str,
    /// The executors' workload, as `Kind/name`.
    workload: &'static str,
    deploy: Deploy,
}

enum Deploy {
    /// The chart as release `ke` in namespace default, with these values on top of
    /// [`in_cluster_values`].
    Chart { values: &'static str },
    /// An example overlay of the repository, applied unchanged but for [`overlay_patches`].
    Kustomize { example: &'static str },
}

impl Shape {
    fn deploy(&self, env: &Env, staged: &StagedBinary) {
        match &self.deploy {
            Deploy::Chart { values } => deploy_chart(
                env,
                "ke",
                &[&in_cluster_values(env, "127.0.0.1:0"), *values],
                self.workload,
                staged,
            ),
            Deploy::Kustomize { example } => {
                create_namespace(env, self.namespace);
                let dir = env.cluster.dir().join("deploy-kustomize");
                std::fs::create_dir_all(&dir).expect("create the kustomization directory");
                let slots = self.slots.to_string();
                let config = [("EXECUTOR_MAXIMUM_NUM_JOBS", slots.as_str())];
                let extra = overlay_patches(env, self.workload, &config);
                apply_kustomization(
                    env,
                    &dir,
                    &[repo_path_from(&dir, example)],
                    self.workload,
                    staged,
                    &extra,
                );
            }
        }
    }
}

/// The example overlays deploy into a namespace they expect to exist, as Sourcegraph's does.
fn create_namespace(env: &Env, namespace: &str) {
    support::deploy::run(
        std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(env.cluster.kubeconfig_path())
            .args(["create", "namespace", namespace]),
    );
}

/// The figures of one run.
struct Outcome {
    census: Census,
    jobs: Vec<JobRecord>,
    /// Jobs the lost executor was running when its pod was deleted.
    interrupted: Vec<i64>,
    slots: usize,
}

impl Outcome {
    fn report(&self, name: &str, started: Instant) {
        let reset = self.jobs.iter().filter(|j| j.num_resets > 0).count();
        eprintln!(
            "{name}: {} jobs completed once each in {:?}; {} interrupted by the pod deletion, {reset} \
             re-queued and retried; most live Jobs per instance (slots {}): {:?}",
            self.jobs.len(),
            started.elapsed(),
            self.interrupted.len(),
            self.slots,
            self.census.live.max_per_instance(),
        );
    }
}

fn frontend_options() -> FrontendOptions {
    FrontendOptions {
        // Well above the executors' 5 s heartbeat, so only a lost executor's jobs are re-queued.
        stalled_after: Duration::from_secs(12),
        ..FrontendOptions::default()
    }
}

/// Deploys the shape, queues [`JOBS`] jobs, force-deletes one executor pod once a fifth of them are
/// done, and checks what holds for every shape: each job completed exactly once, the lost
/// executor's jobs were retried, no instance exceeded its slots, nothing was left behind.
async fn run_jobs_losing_one_executor(env: &Env, shape: &Shape) -> Outcome {
    let staged = StagedBinary::new();
    let watch = CensusWatch::start(env, shape.namespace);
    shape.deploy(env, &staged);
    env.frontend
        .wait_for_executors(Duration::from_secs(180), |seen| seen.len() >= shape.executors)
        .await
        .unwrap_or_else(|| {
            panic!(
                "{} executors never heartbeat: {:?}",
                shape.executors,
                env.frontend.executors()
            )
        });
    // One trivial step each; the second of sleep keeps a few jobs in flight on every executor, so
    // the deleted pod is surely running some.
    let ids: Vec<i64> = (0..JOBS)
        .map(|i| {
            env.frontend
                .enqueue(job(vec![step("work", &[&format!("echo job-{i}"), "sleep 1"])]))
        })
        .collect();
    wait_jobs(env, Duration::from_secs(600), |jobs| completed(jobs) >= JOBS / 5).await;
    let (victim, interrupted) = delete_busiest_executor_pod(env, shape.namespace).await;
    let jobs = wait_jobs(env, Duration::from_secs(900), |jobs| {
        jobs.iter().all(|j| j.state.is_terminal())
    })
    .await;
    wait_owned_objects_gone(env, shape.namespace, &victim, Duration::from_secs(120)).await;
    env.wait_no_objects_in(shape.namespace, JOB_LABEL, Duration::from_secs(120))
        .await;
    let outcome = Outcome {
        census: watch.stop(),
        jobs,
        interrupted,
        slots: shape.slots,
    };
    assert_eq!(outcome.jobs.len(), ids.len());
    outcome.assert_each_completed_once_and_lost_jobs_retried();
    outcome.assert_within_slots();
    outcome
}

impl Outcome {
    fn assert_each_completed_once_and_lost_jobs_retried(&self) {
        for record in &self.jobs {
            let completions = record
                .mark_calls
                .iter()
                .filter(|m| m.kind == MarkKind::Complete && m.status == 204)
                .count();
            assert!(
                record.state == JobState::Completed && completions == 1,
                "job {} did not complete exactly once: {record:#?}",
                record.id
            );
        }
        let retried = self
            .jobs
            .iter()
            .filter(|j| self.interrupted.contains(&j.id) && j.num_resets > 0)
            .count();
        assert!(
            retried > 0,
            "none of the lost executor's jobs {:?} was retried",
            self.interrupted
        );
    }

    /// Each replica was an instance named after its pod (`<set>-0`, …), and the replacement of the
    /// deleted one kept its name.
    fn assert_replicas_named_after_their_pods(&self, set: &str, replicas: usize) {
        let instances: BTreeSet<&String> = self.census.live.max_per_instance().keys().collect();
        let expected: Vec<String> = (0..replicas).map(|i| format!("{set}-{i}")).collect();
        assert_eq!(
            instances,
            expected.iter().collect(),
            "each replica is an instance named after its pod, and the replacement kept its name"
        );
    }

    /// Every job pod ran on its executor's node, and every node's executor ran jobs.
    fn assert_jobs_on_their_executors_nodes(&self, nodes: usize) {
        let census = &self.census;
        for (instance, node) in &census.job_nodes {
            assert_eq!(
                census.executor_nodes.get(instance),
                Some(node),
                "a job pod of executor {instance} ran on {node}, not on its executor's node"
            );
        }
        let nodes_with_jobs: BTreeSet<&String> = census.job_nodes.iter().map(|(_, node)| node).collect();
        assert_eq!(nodes_with_jobs.len(), nodes, "every node's executor ran jobs");
    }

    fn assert_within_slots(&self) {
        for (instance, most) in self.census.live.max_per_instance() {
            assert!(
                *most <= self.slots,
                "instance {instance} had {most} live Jobs, more than its {} slots",
                self.slots
            );
        }
    }
}

fn completed(jobs: &[JobRecord]) -> usize {
    jobs.iter().filter(|j| j.state == JobState::Completed).count()
}

/// Waits, on the frontend's changes, until `done` holds for its jobs.
async fn wait_jobs(env: &Env, timeout: Duration, done: impl Fn(&[JobRecord]) -> bool) -> Vec<JobRecord> {
    match env.frontend.wait_for_jobs(timeout, done).await {
        Ok(jobs) => jobs,
        Err(error) => {
            let states: BTreeMap<&str, usize> =
                env.frontend.jobs().iter().fold(BTreeMap::new(), |mut count, j| {
                    *count.entry(j.state.as_str()).or_default() += 1;
                    count
                });
            panic!("{error}: {states:?}")
        }
    }
}

/// A deleted executor pod: its name and UID.
struct Victim {
    name: String,
    uid: String,
}

/// Force-deletes (grace period 0, as when a node is lost) the executor pod running the most jobs,
/// once one runs at least two; returns it and the ids of the jobs it was running.
async fn delete_busiest_executor_pod(env: &Env, namespace: &str) -> (Victim, Vec<i64>) {
    let jobs = wait_jobs(env, Duration::from_secs(120), |jobs| {
        busiest_executor(jobs).is_some_and(|(_, running)| running.len() >= 2)
    })
    .await;
    let (name, running) = busiest_executor(&jobs).expect("an executor running two jobs");
    let pods: Api<Pod> = Api::namespaced(env.cluster.client(), namespace);
    let pod = pods.get(&name).await.expect("the busiest executor's pod");
    let victim = Victim {
        name,
        uid: pod.meta().uid.clone().expect("a pod UID"),
    };
    pods.delete(&victim.name, &DeleteParams::default().grace_period(0))
        .await
        .expect("force-delete the executor pod");
    (victim, running)
}

/// The executor pod processing the most jobs, and their ids. Executor names are
/// `<hostname>-<uuid>`, and the hostname is the pod's name.
fn busiest_executor(jobs: &[JobRecord]) -> Option<(String, Vec<i64>)> {
    let mut by_pod: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for job in jobs.iter().filter(|j| j.state == JobState::Processing) {
        let pod = job.executor.as_deref().and_then(|name| {
            let (pod, id) = name.split_at_checked(name.len().checked_sub(37)?)?;
            (id.starts_with('-') && uuid::Uuid::parse_str(&id[1..]).is_ok()).then(|| pod.to_string())
        });
        if let Some(pod) = pod {
            by_pod.entry(pod).or_default().push(job.id);
        }
    }
    by_pod.into_iter().max_by_key(|(_, running)| running.len())
}

/// Waits, on a watch of the Jobs, until none owned by the deleted executor pod remains (garbage
/// collection).
async fn wait_owned_objects_gone(env: &Env, namespace: &str, victim: &Victim, timeout: Duration) {
    let owned_by_victim = |job: &Job| job.owner_references().iter().any(|o| o.uid == victim.uid);
    let jobs: Api<Job> = Api::namespaced(env.cluster.client(), namespace);
    let events = watcher(jobs, watcher::Config::default().labels(JOB_LABEL)).default_backoff();
    let mut events = std::pin::pin!(events);
    let (mut owned, mut relisted, mut synced) = (BTreeSet::new(), BTreeSet::new(), false);
    let gone = async {
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => relisted.clear(),
                Ok(watcher::Event::InitApply(job)) if owned_by_victim(&job) => {
                    relisted.insert(job.name_any());
                }
                Ok(watcher::Event::InitDone) => {
                    owned = std::mem::take(&mut relisted);
                    synced = true;
                }
                Ok(watcher::Event::Apply(job)) if owned_by_victim(&job) => {
                    owned.insert(job.name_any());
                }
                Ok(watcher::Event::Delete(job)) => {
                    owned.remove(&job.name_any());
                }
                // Other Jobs, and errors the backoff retries (a restarted watch relists).
                _ => {}
            }
            if synced && owned.is_empty() {
                return;
            }
        }
    };
    if tokio::time::timeout(timeout, gone).await.is_err() {
        panic!(
            "Jobs owned by the deleted pod {} remain after {timeout:?}: {owned:?}",
            victim.name
        );
    }
}

/// What watches of the namespace's Jobs and pods saw.
#[derive(Default)]
struct Census {
    /// Live (not deleting) Jobs per instance, and the most at once.
    live: LiveJobs,
    /// (instance, node) of every job pod bound to a node.
    job_nodes: BTreeSet<(String, String)>,
    /// Executor pod name (= its instance) -> its node.
    executor_nodes: BTreeMap<String, String>,
}

impl Census {
    fn on_job(&mut self, event: watcher::Event<Job>) {
        self.live.apply(&event);
    }

    fn on_pod(&mut self, event: watcher::Event<Pod>) {
        let (watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event else {
            return;
        };
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return;
        };
        if let Some(instance) = instance_of(&pod) {
            self.job_nodes.insert((instance, node));
        } else if pod.labels().get("app.kubernetes.io/name").map(String::as_str) == Some("kube-executor") {
            self.executor_nodes.insert(pod.name_any(), node);
        }
    }
}

/// Watches of a namespace's Jobs and pods feeding a [`Census`]; stopped by
/// [`CensusWatch::stop`] or on drop.
struct CensusWatch {
    census: Arc<Mutex<Census>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl CensusWatch {
    fn start(env: &Env, namespace: &str) -> Self {
        let census = Arc::new(Mutex::new(Census::default()));
        let (jobs, pods): (Api<Job>, Api<Pod>) = (
            Api::namespaced(env.cluster.client(), namespace),
            Api::namespaced(env.cluster.client(), namespace),
        );
        let jobs = watcher(jobs, watcher::Config::default().labels(JOB_LABEL)).default_backoff();
        let pods = watcher(pods, watcher::Config::default()).default_backoff();
        let tasks = vec![
            tokio::spawn(feed(jobs, census.clone(), Census::on_job)),
            tokio::spawn(feed(pods, census.clone(), Census::on_pod)),
        ];
        Self { census, tasks }
    }

    fn stop(self) -> Census {
        for task in &self.tasks {
            task.abort();
        }
        std::mem::take(&mut *self.census.lock().expect("census lock"))
    }
}

impl Drop for CensusWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn feed<K>(
    stream: impl futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    census: Arc<Mutex<Census>>,
    apply: fn(&mut Census, watcher::Event<K>),
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        // Errors are retried by the backoff; a restarted watch relists.
        if let Ok(event) = event {
            apply(&mut census.lock().expect("census lock"), event);
        }
    }
}
