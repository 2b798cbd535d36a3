//! End-to-end: `/metrics` and the heartbeat's `prometheusMetrics` parse with Go's text parser (promtool) and count what the jobs did.

mod support;

use std::{collections::BTreeMap, path::PathBuf, process::Stdio, time::Duration};

use dev_frontend::JobState;
use support::{Env, Executor, job, step};
use tokio::io::AsyncWriteExt as _;

const TIMEOUT: Duration = Duration::from_secs(120);

/// `scripts/install-tools.sh` puts promtool here (the test script runs it first).
fn promtool() -> PathBuf {
    let cache = std::env::var("KUBE_EXECUTOR_CACHE").unwrap_or_else(|_| "/var/cache/kube-executor".into());
    let path = PathBuf::from(cache).join("tools/bin/promtool");
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-tools.sh",
        path.display()
    );
    path
}

/// Fails unless promtool, which parses with Go's `expfmt` as Sourcegraph's frontend does,
/// accepts `text` without a parse or lint problem.
async fn assert_go_parses(what: &str, text: &str) {
    let mut child = tokio::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    let mut stdin = child.stdin.take().expect("promtool stdin");
    stdin.write_all(text.as_bytes()).await.expect("write to promtool");
    drop(stdin);
    let out = child.wait_with_output().await.expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool rejects the {what}:\n{}{}\n--- text:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Families by name with their declared type, and samples by `name{labels}` (labels as written).
struct Exposition {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, f64>,
}

impl Exposition {
    fn parse(text: &str) -> Self {
        let mut types = BTreeMap::new();
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                types.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (series, value) = line.rsplit_once(' ').expect("sample value");
                samples.insert(series.to_string(), value.parse().expect("numeric value"));
            }
        }
        Self { types, samples }
    }

    fn value(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no sample {series}; samples: {:#?}", self.samples.keys()))
    }

    fn assert_type(&self, family: &str, kind: &str) {
        assert_eq!(
            self.types.get(family).map(String::as_str),
            Some(kind),
            "type of {family}"
        );
    }
}

async fn scrape(executor: &Executor) -> String {
    let (status, text) = support::http_get(executor.health, "/metrics")
        .await
        .expect("the executor's /metrics");
    assert_eq!(status, 200, "{text}");
    text
}

/// The metrics the executor sent in its latest heartbeat, once it has sent one after `since`
/// heartbeats.
async fn heartbeat_metrics_after(env: &Env, since: u64) -> String {
    env.frontend
        .wait_for_executors(TIMEOUT, |executors| {
            executors
                .iter()
                .any(|e| e.heartbeat_count > since && !e.prometheus_metrics.is_empty())
        })
        .await
        .expect("a heartbeat with metrics within the timeout")
        .into_iter()
        .find(|e| e.heartbeat_count > since)
        .map(|e| e.prometheus_metrics)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_gos_parser_and_count_each_job() {
    let env = Env::start().await;
    let ok = env.frontend.enqueue(job(vec![
        step("one", &["echo a", "echo b"]),
        step("two", &["echo c"]),
    ]));
    let failing = env.frontend.enqueue(job(vec![step("fails", &["exit 3"])]));
    let hungry = env.frontend.enqueue(job(vec![step(
        "hungry",
        &["python3 -c 'blocks = [bytearray(16 * 1024 * 1024) for _ in range(64)]; print(len(blocks))'"],
    )]));
    let executor = env.spawn_executor(&[
        ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY", "64Mi"),
        ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY", "128Mi"),
    ]);
    for (id, state) in [
        (ok, JobState::Completed),
        (failing, JobState::Errored),
        (hungry, JobState::Errored),
    ] {
        let record = env.wait_terminal(id, TIMEOUT).await;
        assert_eq!(record.state, state, "{record:#?}");
    }
    env.wait_no_objects(Duration::from_secs(30)).await;
    let heartbeats_so_far = env
        .frontend
        .executors()
        .iter()
        .map(|e| e.heartbeat_count)
        .max()
        .unwrap_or(0);

    let text = scrape(&executor).await;
    assert_go_parses("/metrics text", &text).await;
    let m = Exposition::parse(&text);
    assert_jobs_counted(&m);
    assert_calls_counted(&m);

    let heartbeat = heartbeat_metrics_after(&env, heartbeats_so_far).await;
    assert_go_parses("heartbeat's prometheusMetrics", &heartbeat).await;
    let sent = Exposition::parse(&heartbeat);
    sent.assert_type("src_executor_processor_total", "counter");
    assert_eq!(
        sent.value("src_executor_processor_total{op=\"Handle\",queue=\"batches\"}"),
        3.0
    );
}

/// The three jobs' handler runs and outcomes, with the families' types.
fn assert_jobs_counted(m: &Exposition) {
    for (family, kind) in [
        ("src_executor_processor_total", "counter"),
        ("src_executor_processor_duration_seconds", "histogram"),
        ("src_apiworker_apiclient_queue_total", "counter"),
        ("src_apiworker_apiclient_queue_duration_seconds", "histogram"),
        ("src_apiworker_command_duration_seconds", "histogram"),
        ("kube_executor_kubernetes_requests_total", "counter"),
        ("kube_executor_pod_pending_seconds", "histogram"),
    ] {
        m.assert_type(family, kind);
    }
    let handle = "{op=\"Handle\",queue=\"batches\"}";
    assert_eq!(m.value(&format!("src_executor_processor_total{handle}")), 3.0);
    assert_eq!(
        m.value(&format!("src_executor_processor_errors_total{handle}")),
        2.0
    );
    let outcome = |outcome: &str, reason: &str| {
        m.value(&format!(
            "kube_executor_job_outcomes_total{{outcome=\"{outcome}\",queue=\"batches\",reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(outcome("completed", "succeeded"), 1.0);
    assert_eq!(outcome("errored", "step_failed"), 1.0);
    assert_eq!(outcome("errored", "oom_killed"), 1.0);
}

/// The frontend calls, runtime operations and Kubernetes requests of the three jobs.
fn assert_calls_counted(m: &Exposition) {
    let queue_calls = |op: &str| m.value(&format!("src_apiworker_apiclient_queue_total{{op=\"{op}\"}}"));
    assert_eq!(queue_calls("MarkComplete"), 1.0);
    assert_eq!(queue_calls("MarkErrored"), 2.0);
    assert!(queue_calls("Dequeue") >= 3.0);
    assert!(queue_calls("Heartbeat") >= 1.0);
    // One entry per container that ran (setup, steps, and main after success: 4 + 2 + 2), then
    // the two teardown entries of each job.
    assert_eq!(queue_calls("AddExecutionLogEntry"), 8.0 + 3.0 * 2.0);
    let command = |op: &str| m.value(&format!("src_apiworker_command_total{{op=\"{op}\"}}"));
    assert_eq!(command("kubernetes.job.create"), 3.0);
    assert_eq!(command("kubernetes.job.delete"), 3.0);
    assert_eq!(command("kubernetes.pod.wait"), 3.0);
    assert!(command("kubernetes.pod.logs") >= 8.0);
    // Each job creates its Secret and its Job once: API requests per job.
    let requests = |verb: &str, resource: &str, code: &str| {
        m.value(&format!(
            "kube_executor_kubernetes_requests_total{{code=\"{code}\",resource=\"{resource}\",verb=\"{verb}\"}}"
        ))
    };
    assert_eq!(requests("create", "jobs", "201"), 3.0);
    assert_eq!(requests("create", "secrets", "201"), 3.0);
    assert!(requests("get", "pods/log", "200") >= 8.0);
    assert!(m.value("kube_executor_log_lines_total") >= 3.0);
    assert_eq!(
        m.value("kube_executor_pod_pending_seconds_count{queue=\"batches\"}"),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unschedulable_job_is_counted_by_its_reason() {
    let env = Env::start().await;
    let id = env.frontend.enqueue(job(vec![step("never", &["echo never"])]));
    let executor = env.spawn_executor(&[
        ("EXECUTOR_KUBERNETES_NODE_SELECTOR", "disktype=nonexistent"),
        ("KUBERNETES_JOB_PENDING_TIMEOUT", "4s"),
    ]);
    let record = env.wait_terminal(id, TIMEOUT).await;
    assert_eq!(record.state, JobState::Errored, "{record:#?}");
    env.wait_no_objects(Duration::from_secs(30)).await;
    let text = scrape(&executor).await;
    assert_go_parses("/metrics text", &text).await;
    let m = Exposition::parse(&text);
    assert_eq!(
        m.value(
            "kube_executor_job_outcomes_total{outcome=\"errored\",queue=\"batches\",reason=\"unschedulable\"}"
        ),
        1.0
    );
    assert_eq!(
        m.value("src_executor_processor_errors_total{op=\"Handle\",queue=\"batches\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_client_limit_paces_the_dequeues_and_every_job_completes() {
    let env = Env::start().await;
    let ids: Vec<i64> = (0..3)
        .map(|n| {
            env.frontend
                .enqueue(job(vec![step("paced", &[&format!("echo paced-{n}")])]))
        })
        .collect();
    // A bucket of two: a job is dequeued only while one token is free, and the start-up requests
    // (access reviews, lists, watches) have just used the bucket up.
    let executor = env.spawn_executor(&[
        ("EXECUTOR_KUBERNETES_CLIENT_QPS", "20"),
        ("EXECUTOR_KUBERNETES_CLIENT_BURST", "2"),
        ("EXECUTOR_MAXIMUM_NUM_JOBS", "3"),
    ]);
    for id in ids {
        let record = env.wait_terminal(id, TIMEOUT).await;
        assert_eq!(record.state, JobState::Completed, "{record:#?}");
    }
    env.wait_no_objects(Duration::from_secs(30)).await;
    let text = scrape(&executor).await;
    assert_go_parses("/metrics text", &text).await;
    let m = Exposition::parse(&text);
    m.assert_type("kube_executor_dequeue_paced_seconds_total", "counter");
    let paced = m.value("kube_executor_dequeue_paced_seconds_total");
    assert!(
        paced > 0.0,
        "the dequeue loop never waited for the client's limit: {paced}"
    );
    assert!(m.value("kube_executor_kubernetes_rate_limited_seconds_total") > 0.0);
}
