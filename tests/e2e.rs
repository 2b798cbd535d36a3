//! End-to-end: the real `executor` binary against a real local control plane and the dev frontend.

mod support;

use std::time::{Duration, Instant};

use dev_frontend::{FrontendOptions, JobState, MarkKind};
use kube::api::ListParams;
use support::{Env, Gate, job, step};

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

fn entry<'a>(record: &'a dev_frontend::JobRecord, key: &str) -> &'a dev_frontend::LogEntryRecord {
    record
        .log_entries
        .iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("no log entry {key}; entries: {:#?}", record.log_entries))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_step_job_clones_through_the_git_route_and_shares_the_workspace() {
    let env = Env::start().await;
    let commit = env
        .frontend
        .create_repo(
            "github.com/acme/widgets",
            &[("README.md", "hello from the repository\n")],
        )
        .await
        .expect("create repository");
    let mut new_job = job(vec![
        step(
            "build",
            &[
                "echo built-by-step-one > ../artifact.txt",
                "echo \"secret is s3cr3t-value\"",
            ],
        ),
        step(
            "check",
            &["cat README.md ../artifact.txt", "git log --format=%H -1"],
        ),
    ]);
    new_job.repository_name = "github.com/acme/widgets".into();
    new_job.repository_directory = "repository".into();
    new_job.commit = commit.clone();
    new_job.docker_steps[0].dir = "repository".into();
    new_job.docker_steps[1].dir = "repository".into();
    new_job
        .redacted_values
        .insert("s3cr3t-value".into(), "${{ secrets.TOKEN }}".into());
    let id = env.frontend.enqueue(new_job);

    let mut executor = env.spawn_executor(&[]);
    let record = env.wait_terminal(id, JOB_TIMEOUT).await;
    assert_eq!(
        record.state,
        JobState::Completed,
        "{record:#?}\n{}",
        executor.log_text()
    );

    let keys: Vec<&str> = record.log_entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "setup.workspace",
            "step.kubernetes.build",
            "step.kubernetes.check",
            "main",
            "teardown.kubernetes.job",
            "teardown.fs"
        ]
    );
    for e in &record.log_entries {
        assert_eq!(e.exit_code, Some(0), "{e:#?}");
        assert!(e.out.lines().all(|l| l.starts_with("stdout: ")), "{e:#?}");
    }
    let check = entry(&record, "step.kubernetes.check");
    assert!(
        check.out.contains("stdout: hello from the repository"),
        "{}",
        check.out
    );
    assert!(check.out.contains("stdout: built-by-step-one"), "{}", check.out);
    assert!(check.out.contains(&format!("stdout: {commit}")), "{}", check.out);
    let build = entry(&record, "step.kubernetes.build");
    assert!(build.out.contains("${{ secrets.TOKEN }}"), "{}", build.out);
    assert!(
        !build.out.contains("s3cr3t-value"),
        "redacted value leaked: {}",
        build.out
    );
    assert_eq!(
        record.mark_calls.iter().map(|m| m.kind).collect::<Vec<_>>(),
        [MarkKind::Complete]
    );
    env.wait_no_objects(Duration::from_secs(30)).await;

    executor.signal(15);
    assert!(executor.wait_exit(Duration::from_secs(30)).await.success());
    let executors = env.frontend.executors();
    assert_eq!(executors.len(), 1);
    assert!(
        executors[0].hostname.starts_with("e2e-host-"),
        "{:?}",
        executors[0].hostname
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_arrive_while_a_step_still_runs() {
    let env = Env::start().await;
    let gate = Gate::new();
    let id = env.frontend.enqueue(job(vec![step(
        "slow",
        &["echo first-line", &gate.wait_cmd(), "echo second-line"],
    )]));
    let _executor = env.spawn_executor(&[]);
    let during = env
        .wait_for_output("batches", id, "first-line", JOB_TIMEOUT)
        .await;
    let live = entry(&during, "step.kubernetes.slow");
    assert_eq!(live.exit_code, None, "the step is still running");
    assert!(!live.out.contains("second-line"));
    gate.open();
    let record = env.wait_terminal(id, JOB_TIMEOUT).await;
    assert_eq!(record.state, JobState::Completed);
    let done = entry(&record, "step.kubernetes.slow");
    assert_eq!(
        done.out.lines().filter(|l| *l == "stdout: first-line").count(),
        1,
        "no duplicated lines: {}",
        done.out
    );
    assert!(done.out.contains("stdout: second-line"));
    assert!(done.update_count >= 2, "incremental updates expected: {done:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_never_exceeds_the_limit() {
    let env = Env::start().await;
    let ids: Vec<i64> = (0..6)
        .map(|i| {
            env.frontend
                .enqueue(job(vec![step("work", &[&format!("echo job-{i}"), "sleep 2"])]))
        })
        .collect();
    let _executor = env.spawn_executor(&[("EXECUTOR_MAXIMUM_NUM_JOBS", "2")]);
    let mut records = Vec::new();
    for id in &ids {
        records.push(env.wait_terminal(*id, Duration::from_secs(240)).await);
    }
    assert!(
        records.iter().all(|r| r.state == JobState::Completed),
        "{records:#?}"
    );
    // Sweep the processing intervals (dequeue → final mark) recorded by the frontend.
    let mut points: Vec<(jiff::Timestamp, i32)> = Vec::new();
    for r in &records {
        points.push((r.started_at.expect("started"), 1));
        points.push((r.finished_at.expect("finished"), -1));
    }
    points.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut max) = (0, 0);
    for (_, d) in points {
        now += d;
        max = max.max(now);
    }
    assert_eq!(max, 2, "at most (and, with 6 queued, exactly) 2 jobs ran at once");
    env.wait_no_objects(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_a_job_mid_step_stops_it_within_a_heartbeat() {
    let env = Env::start().await;
    let gate = Gate::new();
    let pid_file = gate.path("pid");
    let id = env.frontend.enqueue(job(vec![step(
        "forever",
        &[
            &format!("echo $$ > {}", pid_file.display()),
            "echo started",
            &gate.wait_cmd(),
        ],
    )]));
    let _executor = env.spawn_executor(&[]);
    env.wait_for_output("batches", id, "stdout: started", JOB_TIMEOUT)
        .await;
    let canceled_at = Instant::now();
    env.frontend.cancel("batches", id).expect("cancel");
    let record = env.wait_terminal(id, Duration::from_secs(30)).await;
    assert!(
        canceled_at.elapsed() < Duration::from_secs(15),
        "cancel took {:?}",
        canceled_at.elapsed()
    );
    assert_eq!(record.state, JobState::Failed, "{record:#?}");
    assert_eq!(record.mark_calls.last().map(|m| m.kind), Some(MarkKind::Failed));
    env.wait_no_objects(Duration::from_secs(30)).await;
    let pid = std::fs::read_to_string(&pid_file).expect("pid written");
    assert!(
        !support::process_running(pid.trim()),
        "the step process must be gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_job_fails_with_the_schedulers_reason_within_the_timeout() {
    let env = Env::start().await;
    let id = env.frontend.enqueue(job(vec![step("never", &["echo never"])]));
    let _executor = env.spawn_executor(&[
        ("EXECUTOR_KUBERNETES_NODE_SELECTOR", "disktype=nonexistent"),
        ("KUBERNETES_JOB_PENDING_TIMEOUT", "4s"),
    ]);
    let started = Instant::now();
    let record = env.wait_terminal(id, Duration::from_secs(60)).await;
    assert_eq!(record.state, JobState::Errored, "{record:#?}");
    let message = record.error_message.clone().unwrap_or_default();
    assert!(message.contains("could not be scheduled within 4s"), "{message}");
    assert!(
        message.contains("didn't match"),
        "scheduler reason expected: {message}"
    );
    assert!(
        message.starts_with("running command \"setup.workspace\": job sg-executor-job-batches-"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(45));
    env.wait_no_objects(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_image_fails_with_the_image_and_reason() {
    let env = Env::start().await;
    let mut bad = step("pull", &["echo unreachable"]);
    bad.image = "unpullable.invalid/does-not-exist:1".into();
    let id = env.frontend.enqueue(job(vec![bad]));
    let _executor = env.spawn_executor(&[("KUBERNETES_JOB_IMAGE_PULL_TIMEOUT", "3s")]);
    let record = env.wait_terminal(id, Duration::from_secs(60)).await;
    assert_eq!(record.state, JobState::Errored, "{record:#?}");
    let message = record.error_message.clone().unwrap_or_default();
    assert!(
        message.contains("unpullable.invalid/does-not-exist:1"),
        "{message}"
    );
    assert!(message.contains("could not be pulled"), "{message}");
    assert!(
        message.starts_with("running command \"step.kubernetes.pull\""),
        "{message}"
    );
    env.wait_no_objects(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_killed_mid_job_leaves_nothing_behind_and_the_job_finishes_once() {
    let env = Env::start_with(
        Env::nodes(&["node-1"]),
        FrontendOptions {
            stalled_after: Duration::from_secs(4),
            ..FrontendOptions::default()
        },
    )
    .await;
    let gate = Gate::new();
    let id = env.frontend.enqueue(job(vec![step(
        "gated",
        &["echo attempt", &gate.wait_cmd(), "echo finished"],
    )]));
    let mut first = env.spawn_executor(&[]);
    env.wait_for_output("batches", id, "stdout: attempt", JOB_TIMEOUT)
        .await;
    first.signal(9);
    first.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        env.our_objects().await.0,
        1,
        "the killed executor's Job is still there"
    );

    gate.open();
    let mut second = env.spawn_executor(&[]);
    let record = env.wait_terminal(id, Duration::from_secs(180)).await;
    assert_eq!(
        record.state,
        JobState::Completed,
        "{record:#?}\n{}",
        second.log_text()
    );
    assert!(
        record.num_resets >= 1,
        "the frontend re-queued the abandoned job: {record:#?}"
    );
    assert_eq!(
        record
            .mark_calls
            .iter()
            .filter(|m| m.kind == MarkKind::Complete)
            .count(),
        1,
        "finished exactly once: {:#?}",
        record.mark_calls
    );
    env.wait_no_objects(Duration::from_secs(30)).await;
    second.signal(15);
    assert!(second.wait_exit(Duration::from_secs(30)).await.success());
    assert!(
        second
            .log_text()
            .contains("removed Jobs left by an earlier executor process")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_running_jobs_and_dequeues_no_more() {
    let env = Env::start().await;
    let gate = Gate::new();
    let id = env
        .frontend
        .enqueue(job(vec![step("gated", &["echo running", &gate.wait_cmd()])]));
    let mut executor = env.spawn_executor(&[("EXECUTOR_MAXIMUM_NUM_JOBS", "2")]);
    env.wait_for_output("batches", id, "stdout: running", JOB_TIMEOUT)
        .await;
    executor.signal(15);
    let later = env.frontend.enqueue(job(vec![step("late", &["echo late"])]));
    // Heartbeats continue while draining: the job stays processing past the stall limit check.
    let heartbeats_before = env.frontend.executors()[0].last_seen_at;
    env.frontend
        .wait_for_job("batches", id, Duration::from_secs(30), |_| {
            env.frontend.executors()[0].last_seen_at > heartbeats_before
        })
        .await
        .expect("heartbeats continue during the drain");
    gate.open();
    let record = env.wait_terminal(id, JOB_TIMEOUT).await;
    assert_eq!(record.state, JobState::Completed, "{record:#?}");
    assert!(executor.wait_exit(Duration::from_secs(60)).await.success());
    assert_eq!(
        env.frontend.job("batches", later).map(|j| j.state),
        Some(JobState::Queued),
        "no dequeue after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_period_over_stops_and_requeues_running_jobs() {
    let env = Env::start().await;
    let gate = Gate::new();
    let id = env
        .frontend
        .enqueue(job(vec![step("gated", &["echo running", &gate.wait_cmd()])]));
    let mut executor = env.spawn_executor(&[("EXECUTOR_SHUTDOWN_GRACE_PERIOD", "2s")]);
    env.wait_for_output("batches", id, "stdout: running", JOB_TIMEOUT)
        .await;
    executor.signal(15);
    assert!(executor.wait_exit(Duration::from_secs(60)).await.success());
    let record = env.frontend.job("batches", id).expect("job record");
    assert_eq!(
        record.mark_calls.last().map(|m| m.kind),
        Some(MarkKind::Errored),
        "{record:#?}"
    );
    assert!(
        record
            .mark_calls
            .last()
            .and_then(|m| m.error_message.clone())
            .unwrap_or_default()
            .contains("executor shut down"),
        "{record:#?}"
    );
    env.wait_no_objects(Duration::from_secs(30)).await;
}

/// Waits until the executor's log has a line containing `text`; the log is a file the test can
/// only re-read.
async fn wait_for_log_line(executor: &support::Executor, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !executor.log_text().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no log line {text:?}:\n{}",
            executor.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `signal` to process `pid` (through `kill`, keeping the tests free of unsafe code).
fn signal_process(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_the_executor_promptly_with_the_api_server_and_frontend_gone() {
    let env = Env::start().await;
    let gate = Gate::new();
    let id = env
        .frontend
        .enqueue(job(vec![step("gated", &["echo running", &gate.wait_cmd()])]));
    let mut executor = env.spawn_executor(&[]);
    env.wait_for_output("batches", id, "stdout: running", JOB_TIMEOUT)
        .await;
    // A frozen API server accepts connections and never answers: the worst case for teardown.
    let api_server = env.cluster.api_server_pid().expect("the API server runs");
    signal_process(api_server, "-STOP");
    env.frontend.shutdown();
    executor.signal(15);
    // Two signals sent back to back can reach the handler as one: send the second once the
    // first was taken.
    wait_for_log_line(&executor, "signal received: no new jobs").await;
    executor.signal(15);
    let stopped = Instant::now();
    let status = executor.wait_exit(Duration::from_secs(60)).await;
    let took = stopped.elapsed();
    signal_process(api_server, "-CONT");
    assert!(
        status.code().is_some(),
        "exited by itself, not by a signal: {status:?}"
    );
    // FORCED_STOP_LIMIT (10 s) for the jobs, then at most 6 s for the background tasks.
    assert!(
        took < Duration::from_secs(25),
        "took {took:?} to exit after the second signal"
    );
    println!("exit {took:?} after the second signal with the API server and frontend gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_name_pinning_lands_on_the_named_node_in_both_modes() {
    let env = Env::start_with(
        Env::nodes(&["node-1", "node-2", "node-3"]),
        FrontendOptions::default(),
    )
    .await;
    let gate = Gate::new();
    for (mode, node) in [("affinity", "node-2"), ("nodeName", "node-3")] {
        let id = env
            .frontend
            .enqueue(job(vec![step("pinned", &["echo pinned", &gate.wait_cmd()])]));
        let mut executor = env.spawn_executor(&[
            ("EXECUTOR_KUBERNETES_NODE_NAME", node),
            ("EXECUTOR_KUBERNETES_NODE_PINNING", mode),
            ("EXECUTOR_NUM_TOTAL_JOBS", "1"),
        ]);
        env.wait_for_output("batches", id, "stdout: pinned", JOB_TIMEOUT)
            .await;
        let pods = env
            .pods_api()
            .list(&ListParams::default().labels(&format!("kube-executor.io/job-id={id}")))
            .await
            .expect("list pods");
        let placed: Vec<Option<String>> = pods
            .items
            .iter()
            .map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
            .collect();
        assert_eq!(placed, vec![Some(node.to_string())], "mode {mode}");
        gate.open();
        let record = env.wait_terminal(id, JOB_TIMEOUT).await;
        assert_eq!(record.state, JobState::Completed);
        assert!(
            executor.wait_exit(Duration::from_secs(60)).await.success(),
            "EXECUTOR_NUM_TOTAL_JOBS=1 ends the run"
        );
        std::fs::remove_file(gate.path("open")).expect("close the gate again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_steps_fail_at_once_with_the_fix_and_bad_config_exits_naming_variables() {
    let env = Env::start().await;
    let mut cli = job(vec![]);
    cli.cli_steps = vec![dev_frontend::CliStep {
        key: "batch-exec".into(),
        command: vec!["batch".into(), "exec".into()],
        dir: ".".into(),
        env: vec![],
    }];
    let id = env.frontend.enqueue(cli);
    let _executor = env.spawn_executor(&[]);
    let record = env.wait_terminal(id, Duration::from_secs(60)).await;
    assert_eq!(record.state, JobState::Failed);
    assert!(
        record
            .error_message
            .clone()
            .unwrap_or_default()
            .contains("native"),
        "{record:#?}"
    );
    assert_eq!(
        env.our_objects().await.0,
        0,
        "no Kubernetes objects for a cli-steps job"
    );

    let mut bad = env.spawn_executor(&[
        ("EXECUTOR_MAXIMUM_NUM_JOBS", "lots"),
        ("EXECUTOR_QUEUE_NAMES", "batches"),
        (
            "EXECUTOR_FRONTEND_PASSWORD",
            "a-password-that-must-never-be-printed",
        ),
    ]);
    let status = bad.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success());
    let log = bad.log_text();
    assert!(log.contains("EXECUTOR_MAXIMUM_NUM_JOBS"), "{log}");
    assert!(log.contains("EXECUTOR_QUEUE_NAME"), "{log}");
    assert!(!log.contains("a-password-that-must-never-be-printed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_queue_jobs_with_the_same_id_run_side_by_side() {
    let env = Env::start().await;
    let gate = Gate::new();
    let mut batches = job(vec![step("b", &["echo batches-job", &gate.wait_cmd()])]);
    batches.queue = "batches".into();
    let mut codeintel = job(vec![step("c", &["echo codeintel-job", &gate.wait_cmd()])]);
    codeintel.queue = "codeintel".into();
    let b = env.frontend.enqueue(batches);
    let c = env.frontend.enqueue(codeintel);
    assert_eq!(b, c, "ids are per queue: both jobs have the same id");
    let _executor = env.spawn_executor(&[
        ("EXECUTOR_QUEUE_NAME", ""),
        ("EXECUTOR_QUEUE_NAMES", "batches,codeintel"),
        ("EXECUTOR_MAXIMUM_NUM_JOBS", "2"),
    ]);
    for (queue, text) in [("batches", "batches-job"), ("codeintel", "codeintel-job")] {
        env.frontend
            .wait_for_job(queue, b, JOB_TIMEOUT, |j| {
                j.log_entries
                    .iter()
                    .any(|e| e.out.contains(&format!("stdout: {text}")))
            })
            .await
            .expect("both running at once");
    }
    let names: Vec<String> = env
        .jobs_api()
        .list(&ListParams::default().labels(&format!("kube-executor.io/instance={}", support::INSTANCE)))
        .await
        .expect("list jobs")
        .items
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect();
    assert!(
        names.contains(&format!("sg-executor-job-batches-{b}")),
        "{names:?}"
    );
    assert!(
        names.contains(&format!("sg-executor-job-codeintel-{b}")),
        "{names:?}"
    );
    // The multi-queue heartbeat reports both running jobs as `<id>-<queue>`, with telemetry.
    let both = [format!("{b}-batches"), format!("{b}-codeintel")];
    env.frontend
        .wait_for_job("batches", b, JOB_TIMEOUT, |_| {
            env.frontend
                .executors()
                .first()
                .is_some_and(|e| both.iter().all(|id| e.last_job_ids.contains(id)))
        })
        .await
        .expect("a heartbeat listing both jobs");
    let executor = &env.frontend.executors()[0];
    assert_eq!(
        executor.queue_names,
        vec!["batches".to_string(), "codeintel".to_string()]
    );
    assert_eq!(executor.executor_version, "0.0.0+dev");
    assert_eq!(
        (executor.os.as_str(), executor.architecture.as_str()),
        ("linux", "amd64")
    );
    assert!(!executor.git_version.is_empty());
    assert!(
        executor
            .prometheus_metrics
            .contains("src_executor_processor_handlers{queue=\"batches_codeintel\"} 2"),
        "{}",
        executor.prometheus_metrics
    );
    gate.open();
    for queue in ["batches", "codeintel"] {
        let record = env
            .frontend
            .wait_for_job(queue, b, JOB_TIMEOUT, |j| j.state.is_terminal())
            .await
            .expect("finished");
        assert_eq!(record.state, JobState::Completed, "{record:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_log_is_capped_with_a_notice_and_the_job_still_succeeds() {
    let env = Env::start().await;
    let id = env.frontend.enqueue(job(vec![step(
        "noisy",
        &[
            "i=0; while [ $i -lt 3000 ]; do echo \"line $i of a very chatty build step\"; i=$((i+1)); done",
            "echo after-the-flood",
        ],
    )]));
    let _executor = env.spawn_executor(&[("EXECUTOR_LOG_ENTRY_MAX_BYTES", "8192")]);
    let record = env.wait_terminal(id, JOB_TIMEOUT).await;
    assert_eq!(record.state, JobState::Completed, "{record:#?}");
    let noisy = entry(&record, "step.kubernetes.noisy");
    assert!(
        noisy.out.len() <= 8192,
        "capped at 8192 bytes, got {}",
        noisy.out.len()
    );
    assert!(noisy.out.contains("output truncated"), "{}", noisy.out);
    assert!(noisy.out.contains("stdout: line 0 of a very chatty build step"));
    assert_eq!(noisy.exit_code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_executors_in_one_namespace_never_touch_each_others_jobs() {
    let env = Env::start().await;
    let gate = Gate::new();
    let id = env
        .frontend
        .enqueue(job(vec![step("mine", &["echo owned-by-a", &gate.wait_cmd()])]));
    let mut a = env.spawn_executor(&[("EXECUTOR_INSTANCE_ID", "executor-a")]);
    env.wait_for_output("batches", id, "stdout: owned-by-a", JOB_TIMEOUT)
        .await;
    let params = ListParams::default().labels("kube-executor.io/instance=executor-a");
    assert_eq!(env.jobs_api().list(&params).await.expect("list").items.len(), 1);

    // B starts (and sweeps its own leftovers) while A's job runs; then B is restarted hard.
    let mut b = env.spawn_executor(&[("EXECUTOR_INSTANCE_ID", "executor-b")]);
    b.wait_ready(Duration::from_secs(60)).await;
    b.signal(9);
    b.wait_exit(Duration::from_secs(10)).await;
    let mut b = env.spawn_executor(&[("EXECUTOR_INSTANCE_ID", "executor-b")]);
    b.wait_ready(Duration::from_secs(60)).await;
    assert_eq!(
        env.jobs_api().list(&params).await.expect("list").items.len(),
        1,
        "executor-b must leave executor-a's Job alone"
    );
    gate.open();
    let record = env.wait_terminal(id, JOB_TIMEOUT).await;
    assert_eq!(record.state, JobState::Completed, "{record:#?}");
    assert!(
        record
            .executor
            .as_deref()
            .is_some_and(|e| e.starts_with("e2e-host-"))
    );
    for executor in [&mut a, &mut b] {
        executor.signal(15);
        assert!(executor.wait_exit(Duration::from_secs(30)).await.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_frontend_no_longer_knows_is_stopped_without_a_report() {
    // The frontend resets jobs whose heartbeat is older than 2 s; heartbeats come every 5 s, so
    // the running job is taken away and `knownIds` stops listing it.
    let env = Env::start_with(
        Env::nodes(&["node-1"]),
        FrontendOptions {
            stalled_after: Duration::from_secs(2),
            ..FrontendOptions::default()
        },
    )
    .await;
    let gate = Gate::new();
    let id = env
        .frontend
        .enqueue(job(vec![step("orphaned", &["echo running", &gate.wait_cmd()])]));
    let executor = env.spawn_executor(&[]);
    // Three reset cycles take about 90 s alone and over 180 s beside another test's cluster on
    // two cores.
    let record = env
        .frontend
        .wait_for_job("batches", id, Duration::from_secs(420), |j| {
            j.state == JobState::Failed
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the frontend gives up after three resets: {e}\n{:#?}",
                env.frontend.job("batches", id)
            )
        });
    assert!(record.num_resets >= 3, "{record:#?}");
    // The executor stopped each abandoned run itself and never reported one as done.
    assert!(record.mark_calls.is_empty(), "{:#?}", record.mark_calls);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, metrics) = support::http_get(executor.health, "/metrics")
            .await
            .unwrap_or_default();
        if status == 200 && metrics.contains("event=\"job_abandoned\"") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no job_abandoned event:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.wait_no_objects(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_report_liveness_readiness_and_metrics() {
    let env = Env::start().await;
    // Readiness needs the frontend: point the executor at a port where nothing listens first.
    let closed = format!("http://127.0.0.1:{}", support::free_port());
    let mut waiting = env.spawn_executor(&[("EXECUTOR_FRONTEND_URL", &closed)]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while support::http_status(waiting.health, "/healthz").await != Some(200) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no /healthz:\n{}",
            waiting.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = support::http_get(waiting.health, "/readyz")
        .await
        .expect("readyz");
    assert_eq!(status, 503);
    assert!(body.contains("frontend"), "{body}");
    waiting.signal(15);
    assert_eq!(
        waiting.wait_exit(Duration::from_secs(30)).await.code(),
        Some(1),
        "interrupted at startup"
    );

    let executor = env.spawn_executor(&[]);
    executor.wait_ready(Duration::from_secs(60)).await;
    let (status, page) = support::http_get(executor.health, "/")
        .await
        .expect("status page");
    assert_eq!(status, 200);
    assert!(
        page.contains("e2e-executor") && page.contains("<div class=\"big\" id=\"slots\">0 of 1</div>"),
        "{page}"
    );
    assert!(
        !page.contains(env.frontend.access_token().unwrap_or("?")),
        "no secret on the page"
    );
    let (status, metrics) = support::http_get(executor.health, "/metrics")
        .await
        .expect("metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("src_executor_processor_handlers{queue=\"batches\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("kube_executor_build_info{"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_log_streams_resume_without_loss_or_duplication() {
    // The node agent cuts every follow stream after 700 ms, like a flaky node connection.
    let env = Env::start_with(
        Env::nodes(&["node-1"]).with_log_stream_cut(Duration::from_millis(700)),
        FrontendOptions::default(),
    )
    .await;
    let id = env.frontend.enqueue(job(vec![step(
        "chatty",
        &["i=0; while [ $i -lt 40 ]; do echo \"n-$i\"; i=$((i+1)); sleep 0.1; done"],
    )]));
    let executor = env.spawn_executor(&[]);
    let record = env.wait_terminal(id, JOB_TIMEOUT).await;
    assert_eq!(record.state, JobState::Completed, "{record:#?}");
    let printed: Vec<&str> = entry(&record, "step.kubernetes.chatty")
        .out
        .lines()
        .filter(|l| l.starts_with("stdout: n-"))
        .collect();
    let expected: Vec<String> = (0..40).map(|i| format!("stdout: n-{i}")).collect();
    assert_eq!(printed, expected, "every line exactly once, in order");
    let (_, metrics) = support::http_get(executor.health, "/metrics")
        .await
        .expect("metrics");
    let resumed: u64 = metrics
        .lines()
        .find(|l| l.contains("event=\"log_stream_resumed\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        resumed >= 3,
        "the 4 s step outlived several 700 ms streams; resumed {resumed} times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_many_fast_multi_step_jobs_are_added_in_pod_order() {
    const JOBS: usize = 20;
    const STEPS: usize = 5;
    let env = Env::start().await;
    let ids: Vec<i64> = (0..JOBS)
        .map(|_| {
            let steps = (0..STEPS).map(|s| step(&format!("s{s}"), &["true"])).collect();
            env.frontend.enqueue(job(steps))
        })
        .collect();
    let mut executor = env.spawn_executor(&[("EXECUTOR_MAXIMUM_NUM_JOBS", "5")]);
    let mut expected = vec!["setup.workspace".to_string()];
    expected.extend((0..STEPS).map(|s| format!("step.kubernetes.s{s}")));
    expected.extend(["main", "teardown.kubernetes.job", "teardown.fs"].map(String::from));
    for id in ids {
        let record = env.wait_terminal(id, Duration::from_secs(300)).await;
        assert_eq!(
            record.state,
            JobState::Completed,
            "{record:#?}\n{}",
            executor.log_text()
        );
        let keys: Vec<&str> = record.log_entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, expected, "job {id}");
    }
    env.wait_no_objects(Duration::from_secs(60)).await;
    executor.signal(15);
    assert!(executor.wait_exit(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_stdout_and_stderr_keep_the_order_the_step_wrote_them() {
    const ROUNDS: usize = 40;
    let env = Env::start().await;
    let id = env.frontend.enqueue(job(vec![step(
        "mixed",
        &[&format!(
            "for i in $(seq 1 {ROUNDS}); do echo out-$i; echo err-$i >&2; done"
        )],
    )]));
    let executor = env.spawn_executor(&[]);
    let record = env.wait_terminal(id, JOB_TIMEOUT).await;
    assert_eq!(
        record.state,
        JobState::Completed,
        "{record:#?}\n{}",
        executor.log_text()
    );
    let out = &entry(&record, "step.kubernetes.mixed").out;
    let seen: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("stdout: "))
        .filter(|l| l.contains("out-") || l.contains("err-"))
        .collect();
    let expected: Vec<String> = (1..=ROUNDS)
        .flat_map(|i| {
            [
                format!("+ echo out-{i}"),
                format!("out-{i}"),
                format!("+ echo err-{i}"),
                format!("err-{i}"),
            ]
        })
        .collect();
    assert_eq!(seen, expected, "entry:\n{out}");
}

/// `pods/log` requests the API server has served, from its own metrics.
async fn log_requests_served(client: &kube::Client) -> u64 {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a valid request");
    let metrics = client
        .request_text(request)
        .await
        .expect("the API server's metrics");
    metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{") && l.contains("subresource=\"log\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_container_log_is_read_with_one_stream() {
    let env = Env::start().await;
    let steps = ["one", "two", "three"]
        .iter()
        .map(|key| step(key, &[&format!("echo {key}-output")]))
        .collect();
    let id = env.frontend.enqueue(job(steps));
    let before = log_requests_served(&env.cluster.client()).await;
    let executor = env.spawn_executor(&[]);
    let record = env.wait_terminal(id, JOB_TIMEOUT).await;
    assert_eq!(record.state, JobState::Completed, "{record:#?}");
    for key in ["one", "two", "three"] {
        let out = &entry(&record, &format!("step.kubernetes.{key}")).out;
        assert!(out.contains(&format!("stdout: {key}-output")), "{out}");
        assert!(
            !out.contains("end of output"),
            "the end-of-output line is not shown: {out}"
        );
    }
    // setup-workspace, the three steps and main: the stream of each ends with the container, and
    // the end-of-output line saves the second request that would rule out a cut stream.
    let served = log_requests_served(&env.cluster.client()).await - before;
    assert_eq!(
        served,
        5,
        "pods/log requests for 5 containers\n{}",
        executor.log_text()
    );
}
