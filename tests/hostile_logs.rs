//! End-to-end: step output that is hostile to a line reader (no newlines, invalid UTF-8, carriage returns) reaches the entry intact and bounded.

mod support;

use std::time::Duration;

use dev_frontend::{JobRecord, JobState, LogEntryRecord};
use support::{Env, Executor, job, step};

const JOB_TIMEOUT: Duration = Duration::from_secs(180);

/// Peak resident memory the executor may reach while following 150 MB on one line: a reader that
/// buffers the whole line needs more than the line itself.
const PEAK_RSS_LIMIT_KIB: u64 = 150 * 1024;

fn entry<'a>(record: &'a JobRecord, key: &str) -> &'a LogEntryRecord {
    record
        .log_entries
        .iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("no log entry {key}; entries: {:#?}", record.log_entries))
}

/// How often the executor resumed a broken log stream (0 when it never did).
async fn streams_resumed(executor: &Executor) -> u64 {
    let (status, metrics) = support::http_get(executor.health, "/metrics")
        .await
        .expect("the executor's /metrics");
    assert_eq!(status, 200, "{metrics}");
    metrics
        .lines()
        .find(|l| l.contains("event=\"log_stream_resumed\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn completed(record: &JobRecord, executor: &Executor) {
    assert_eq!(
        record.state,
        JobState::Completed,
        "{record:#?}\n{}",
        executor.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_150_mb_line_is_cut_in_bounded_memory_and_the_next_line_arrives() {
    let env = Env::start().await;
    let id = env.frontend.enqueue(job(vec![step(
        "flood",
        &["head -c 150000000 /dev/zero | tr '\\0' a", "echo", "echo after"],
    )]));
    let executor = env.spawn_executor(&[]);
    let record = env.wait_terminal(id, JOB_TIMEOUT).await;
    completed(&record, &executor);
    let peak = executor.peak_rss_kib();
    println!("executor peak RSS (VmHWM) after a 150 MB line: {} KiB", peak);

    let out = &entry(&record, "step.kubernetes.flood").out;
    let lines: Vec<&str> = out.lines().collect();
    let flood = lines
        .iter()
        .find(|l| l.starts_with("stdout: aaaa"))
        .unwrap_or_else(|| panic!("no flood line in {} bytes of output", out.len()));
    assert!(
        flood.ends_with(" bytes]") && flood.contains(" [kube-executor: line cut at "),
        "the cut line is marked: ...{}",
        &flood[flood.len().saturating_sub(80)..]
    );
    assert!(
        flood.len() <= 64 * 1024 + 100,
        "cut near the cap: {} bytes",
        flood.len()
    );
    assert!(
        lines.contains(&"stdout: after"),
        "{:?}",
        &lines[lines.len().saturating_sub(5)..]
    );
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "the executor's peak RSS {peak} KiB reached {PEAK_RSS_LIMIT_KIB} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_keeps_the_log_without_resuming_the_stream() {
    let env = Env::start().await;
    let id = env
        .frontend
        .enqueue(job(vec![step("latin1", &["printf 'caf\\xe9\\n'", "echo next"])]));
    let executor = env.spawn_executor(&[]);
    let record = env.wait_terminal(id, JOB_TIMEOUT).await;
    completed(&record, &executor);

    let out = &entry(&record, "step.kubernetes.latin1").out;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"stdout: caf\u{FFFD}"), "{lines:#?}");
    assert!(lines.contains(&"stdout: next"), "{lines:#?}");
    assert_eq!(
        streams_resumed(&executor).await,
        0,
        "bad bytes are not a broken stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carriage_return_segments_each_get_the_stdout_prefix() {
    let env = Env::start().await;
    let id = env
        .frontend
        .enqueue(job(vec![step("progress", &["printf 'a\\rb\\rc\\n'"])]));
    let executor = env.spawn_executor(&[]);
    let record = env.wait_terminal(id, JOB_TIMEOUT).await;
    completed(&record, &executor);

    let out = &entry(&record, "step.kubernetes.progress").out;
    let lines: Vec<&str> = out.lines().collect();
    let expected = ["stdout: a", "stdout: b", "stdout: c"];
    assert!(
        lines.windows(3).any(|w| w == expected),
        "expected {expected:?} in {lines:#?}"
    );
    assert!(
        !out.contains('\r'),
        "no carriage return left inside a line: {out:?}"
    );
}
