//! End-to-end: the executor's own log honours SRC_LOG_LEVEL and SRC_LOG_FORMAT, and in JSON every
//! line about a job names the job's id and queue.

mod support;

use std::time::Duration;

use dev_frontend::JobState;
use serde_json::{Map, Value};
use support::{Env, job, step};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Every line of a JSON log, parsed; panics naming the first line that is not one JSON object.
fn json_lines(text: &str) -> Vec<Map<String, Value>> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(object)) => object,
            _ => panic!("not one JSON object per line: {line}"),
        })
        .collect()
}

/// Polls the executor's log until `done` holds for its lines: the last lines of a job are written
/// just after the frontend records its end.
async fn wait_for_log(executor: &support::Executor, done: impl Fn(&[Map<String, Value>]) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = executor.log_text();
        if done(&json_lines(&text)) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "log never complete:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn has_message(lines: &[Map<String, Value>], message: &str) -> bool {
    lines
        .iter()
        .any(|line| line.get("message").and_then(Value::as_str) == Some(message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_put_the_job_id_and_queue_on_every_line_about_a_job() {
    let env = Env::start().await;
    let id = env.frontend.enqueue(job(vec![step("hello", &["echo hello"])]));
    // RUST_LOG empty counts as unset, so SRC_LOG_LEVEL chooses the filter.
    let executor = env.spawn_executor(&[
        ("RUST_LOG", ""),
        ("SRC_LOG_LEVEL", "dbug"),
        ("SRC_LOG_FORMAT", "json"),
    ]);
    let record = env.wait_terminal(id, TIMEOUT).await;
    assert_eq!(record.state, JobState::Completed, "{record:#?}");
    let text = wait_for_log(&executor, |lines| has_message(lines, "job finished")).await;
    let lines = json_lines(&text);
    let job_name = format!("sg-executor-job-batches-{id}");
    let about_the_job: Vec<&Map<String, Value>> = lines
        .iter()
        .filter(|line| {
            serde_json::to_string(line).is_ok_and(|l| l.contains(&job_name)) || line.contains_key("job_id")
        })
        .collect();
    for line in &about_the_job {
        assert_eq!(line.get("job_id"), Some(&Value::from(id)), "{line:?}");
        assert_eq!(line.get("queue"), Some(&Value::from("batches")), "{line:?}");
    }
    let messages: Vec<&str> = about_the_job
        .iter()
        .filter_map(|line| line.get("message").and_then(Value::as_str))
        .collect();
    // From the job task itself, from the dequeue loop, and from a spawned log follower.
    for expected in [
        "dequeued a job",
        "job started",
        "Kubernetes Job created",
        "following container log",
        "job finished",
    ] {
        assert!(
            messages.contains(&expected),
            "no {expected:?} line about the job in {messages:?}"
        );
    }
    assert!(
        lines
            .iter()
            .all(|line| line.contains_key("level") && line.contains_key("timestamp"))
    );
    assert!(
        lines
            .iter()
            .any(|line| line.get("level") == Some(&Value::from("DEBUG"))),
        "dbug logs debug lines"
    );
}

/// Needs no cluster: settings are checked before the executor contacts anything.
#[test]
fn bad_log_settings_stop_the_executor_at_startup_naming_the_variable() {
    for (name, value, expected) in [
        (
            "SRC_LOG_FORMAT",
            "xml",
            "SRC_LOG_FORMAT: \"xml\" is not a log format",
        ),
        (
            "SRC_LOG_LEVEL",
            "loud",
            "SRC_LOG_LEVEL: \"loud\" is not a log level",
        ),
        (
            "RUST_LOG",
            "kube_executor=loudest",
            "RUST_LOG: \"kube_executor=loudest\" is not a log filter",
        ),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_executor"))
            .env_clear()
            .env("EXECUTOR_FRONTEND_URL", "http://127.0.0.1:9")
            .env(
                "EXECUTOR_FRONTEND_PASSWORD",
                "a-password-that-must-never-be-printed",
            )
            .env("EXECUTOR_QUEUE_NAME", "batches")
            .env(name, value)
            .output()
            .expect("run the executor binary");
        let log = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}={value}: {log}");
        assert!(log.contains(expected), "{name}={value}: {log}");
        assert!(!log.contains("panicked"), "{log}");
        assert!(!log.contains("a-password-that-must-never-be-printed"), "{log}");
    }
}
