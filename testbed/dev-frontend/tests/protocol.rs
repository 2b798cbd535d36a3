//! Protocol tests: a real reqwest client (and real git) against a running dev frontend.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Once,
    time::Duration,
};

use base64::Engine as _;
use dev_frontend::{DevFrontend, FrontendOptions, JobFile, JobState, MarkKind, NewJob};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// Owns a temporary directory for git work trees; removed even when a test panics.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("creating a test temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Harness {
    frontend: DevFrontend,
    http: reqwest::Client,
}

/// The workspace's reqwest build leaves choosing a TLS crypto provider to the application.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

async fn start_with(opts: FrontendOptions) -> Harness {
    install_crypto_provider();
    let frontend = DevFrontend::start(opts).await.expect("starting the dev frontend");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("building the HTTP client");
    Harness { frontend, http }
}

async fn start() -> Harness {
    start_with(FrontendOptions::default()).await
}

fn batches_job(repo: &str) -> NewJob {
    NewJob {
        queue: "batches".into(),
        repository_name: repo.into(),
        ..NewJob::default()
    }
}

/// A response reduced to what the assertions look at.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body {:?} is not JSON: {e}", self.body))
    }
}

impl Harness {
    fn general_auth(&self) -> String {
        format!(
            "token-executor {}",
            self.frontend
                .access_token()
                .expect("an access token is configured")
        )
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<String>,
    ) -> Answer {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.frontend.url()));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.header("Content-Type", "application/json").body(body);
        }
        let response = request.send().await.expect("sending the request");
        let status = response.status();
        let body = response.text().await.expect("reading the response body");
        Answer { status, body }
    }

    /// POST with the general access token.
    async fn post_general(&self, path: &str, body: Value) -> Answer {
        let auth = self.general_auth();
        self.send(
            Method::POST,
            path,
            &[("Authorization", auth)],
            Some(body.to_string()),
        )
        .await
    }

    async fn heartbeat(&self, queue: &str, executor: &str, job_ids: Value) -> Value {
        let body = json!({
            "executorName": executor, "jobIds": job_ids, "os": "linux", "architecture": "amd64",
            "executorVersion": "6.0.0", "gitVersion": "2.45.2",
            "prometheusMetrics": "# TYPE up gauge\nup 1\n",
        });
        let answer = self
            .post_general(&format!("/.executors/queue/{queue}/heartbeat"), body)
            .await;
        assert_eq!(answer.status, StatusCode::OK, "heartbeat failed: {}", answer.body);
        answer.json()
    }

    /// Single-queue dequeue with a v2-capable version; `None` on 204.
    async fn dequeue(&self, queue: &str, executor: &str) -> Option<Value> {
        let body = json!({ "executorName": executor, "version": "6.0.0" });
        let answer = self
            .post_general(&format!("/.executors/queue/{queue}/dequeue"), body)
            .await;
        match answer.status {
            StatusCode::OK => Some(answer.json()),
            StatusCode::NO_CONTENT => None,
            other => panic!("dequeue answered {other}: {}", answer.body),
        }
    }

    /// POST to a job route with job-token headers.
    async fn job_call(&self, queue: &str, action: &str, headers: &[(&str, String)], body: Value) -> Answer {
        self.send(
            Method::POST,
            &format!("/.executors/queue/{queue}/{action}"),
            headers,
            Some(body.to_string()),
        )
        .await
    }
}

fn job_headers(token: &str, job_id: i64, executor: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Authorization", format!("Bearer {token}")),
        ("X-Sourcegraph-Job-ID", job_id.to_string()),
        ("X-Sourcegraph-Executor-Name", executor.to_owned()),
    ]
}

fn token_of(job: &Value) -> String {
    job["token"]
        .as_str()
        .expect("dequeued job has a token")
        .to_owned()
}

fn log_entry(job_id: i64, executor: &str, out: &str) -> Value {
    json!({
        "executorName": executor, "jobId": job_id, "key": "step.kubernetes.step.0",
        "command": ["/bin/sh", "-c", "echo hi"], "startTime": "2024-05-01T10:00:00Z", "out": out,
    })
}

// === dequeue ===

#[tokio::test]
async fn dequeue_answers_204_when_the_queue_is_empty() {
    let harness = start().await;
    assert_eq!(harness.dequeue("batches", "exec-a").await, None);
    let multi = harness
        .post_general(
            "/.executors/queue/dequeue",
            json!({"executorName": "exec-a", "queues": ["batches", "codeintel"]}),
        )
        .await;
    assert_eq!(multi.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn dequeue_payload_version_follows_the_executor_version() {
    let harness = start().await;
    let mut job = batches_job("github.com/org/repo");
    job.files.insert(
        "input.json".into(),
        JobFile {
            content: Some("hello".into()),
            ..JobFile::default()
        },
    );
    job.files.insert(
        "workspace-files/a.py".into(),
        JobFile {
            bucket: Some("batch-changes".into()),
            key: Some("spec/a".into()),
            ..JobFile::default()
        },
    );
    job.docker_auth_config = Some(json!({"auths": {"registry.example.com": {"auth": "dTpw"}}}));
    let first = harness.frontend.enqueue(job.clone());
    let second = harness.frontend.enqueue(job);
    assert_eq!((first, second), (1, 2), "ids increase per queue from 1");

    let v2 = harness
        .dequeue("batches", "exec-a")
        .await
        .expect("a job for the v2 executor");
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["id"], 1);
    assert_eq!(
        v2["files"]["input.json"]["content"],
        base64::engine::general_purpose::STANDARD.encode("hello")
    );
    assert_eq!(v2["files"]["input.json"]["modifiedAt"], "0001-01-01T00:00:00Z");
    assert_eq!(v2["files"]["workspace-files/a.py"]["bucket"], "batch-changes");
    assert!(v2["files"]["workspace-files/a.py"].get("content").is_none());
    assert_eq!(
        v2["dockerAuthConfig"]["auths"]["registry.example.com"]["auth"],
        "dTpw"
    );
    assert!(
        v2.get("queue").is_none(),
        "single-queue dequeue must not set queue"
    );
    let token = token_of(&v2);
    assert_eq!(token.len(), 40);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));

    let v1 = harness
        .post_general(
            "/.executors/queue/batches/dequeue",
            json!({"executorName": "exec-old", "version": ""}),
        )
        .await
        .json();
    assert!(v1.get("version").is_none());
    assert!(v1.get("dockerAuthConfig").is_none());
    assert_eq!(v1["files"]["input.json"]["content"], "hello");
    assert_ne!(token_of(&v1), token, "every dequeue issues its own token");

    let record = harness.frontend.job("batches", 1).expect("job 1 exists");
    assert_eq!(record.state, JobState::Processing);
    assert_eq!(record.executor.as_deref(), Some("exec-a"));
    assert_eq!(record.payload_version, Some(2));
    assert!(record.started_at.is_some());
    assert_eq!(
        harness.frontend.job("batches", 2).and_then(|j| j.payload_version),
        Some(1)
    );
}

#[tokio::test]
async fn multi_queue_dequeue_sets_the_queue_and_validates_names() {
    let harness = start().await;
    harness.frontend.enqueue(NewJob {
        queue: "codeintel".into(),
        ..NewJob::default()
    });
    let answer = harness
        .post_general(
            "/.executors/queue/dequeue",
            json!({"executorName": "exec-m", "version": "6.0.0", "queues": ["batches", "codeintel"]}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["queue"], "codeintel");

    let invalid = harness
        .post_general(
            "/.executors/queue/dequeue",
            json!({"executorName": "exec-m", "queues": ["batches", "nope"]}),
        )
        .await;
    assert_eq!(invalid.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        invalid.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("nope")),
        "{}",
        invalid.body
    );
    let unknown_path = harness
        .post_general("/.executors/queue/nope/dequeue", json!({"executorName": "e"}))
        .await;
    assert_eq!(unknown_path.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn dequeue_rejects_bad_versions_names_and_json() {
    let harness = start().await;
    harness.frontend.enqueue(batches_job("r"));
    let bad_version = harness
        .post_general(
            "/.executors/queue/batches/dequeue",
            json!({"executorName": "e", "version": "not-a-version"}),
        )
        .await;
    assert_eq!(bad_version.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        bad_version.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("not-a-version"))
    );

    let no_name = harness
        .post_general("/.executors/queue/batches/dequeue", json!({"version": "6.0.0"}))
        .await;
    assert_eq!(no_name.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        no_name.json(),
        json!({"error": "worker hostname cannot be empty"})
    );

    let auth = harness.general_auth();
    let malformed = harness
        .send(
            Method::POST,
            "/.executors/queue/batches/dequeue",
            &[("Authorization", auth)],
            Some("{nope".into()),
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert!(
        malformed.body.starts_with("Failed to unmarshal payload: "),
        "{}",
        malformed.body
    );
    assert_eq!(
        harness.frontend.job("batches", 1).map(|j| j.state),
        Some(JobState::Queued)
    );
}

// === authentication ===

#[tokio::test]
async fn general_token_failures_answer_401() {
    let harness = start().await;
    let path = "/.executors/queue/batches/dequeue";
    let body = || Some(json!({"executorName": "e"}).to_string());
    let no_header = harness.send(Method::POST, path, &[], body()).await;
    assert_eq!(no_header.status, StatusCode::UNAUTHORIZED);
    let token = harness.frontend.access_token().unwrap_or_default().to_owned();
    let wrong_scheme = harness
        .send(
            Method::POST,
            path,
            &[("Authorization", format!("Bearer {token}"))],
            body(),
        )
        .await;
    assert_eq!(wrong_scheme.status, StatusCode::UNAUTHORIZED);
    let malformed = harness
        .send(
            Method::POST,
            path,
            &[("Authorization", "token-executor".into())],
            body(),
        )
        .await;
    assert_eq!(malformed.status, StatusCode::UNAUTHORIZED);
    let wrong = harness
        .send(
            Method::POST,
            path,
            &[("Authorization", "token-executor wrong".into())],
            body(),
        )
        .await;
    assert_eq!(
        (wrong.status, wrong.body.as_str()),
        (StatusCode::UNAUTHORIZED, "")
    );
    assert!(!no_header.body.contains(&token) && !wrong_scheme.body.contains(&token));

    let ok = harness
        .send(
            Method::GET,
            "/.executors/test/auth",
            &[("Authorization", harness.general_auth())],
            None,
        )
        .await;
    assert_eq!((ok.status, ok.body.as_str()), (StatusCode::OK, "ok"));
    let denied = harness
        .send(Method::GET, "/.executors/test/auth", &[], None)
        .await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn missing_access_token_configuration_answers_500() {
    let harness = start_with(FrontendOptions {
        access_token: None,
        ..FrontendOptions::default()
    })
    .await;
    let answer = harness
        .send(
            Method::POST,
            "/.executors/queue/batches/dequeue",
            &[("Authorization", "token-executor anything".into())],
            Some(json!({"executorName": "e"}).to_string()),
        )
        .await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        answer
            .body
            .contains("Executors are not configured on this instance")
    );
}

#[tokio::test]
async fn job_token_failures_are_distinguished() {
    let harness = start().await;
    harness.frontend.enqueue(batches_job("r"));
    harness.frontend.enqueue(batches_job("r"));
    harness.frontend.enqueue(NewJob {
        queue: "codeintel".into(),
        ..NewJob::default()
    });
    harness.heartbeat("batches", "exec-a", Value::Null).await;
    let job1 = token_of(&harness.dequeue("batches", "exec-a").await.expect("batches job 1"));
    harness.dequeue("batches", "exec-a").await.expect("batches job 2");
    let codeintel1 = token_of(
        &harness
            .dequeue("codeintel", "exec-a")
            .await
            .expect("codeintel job 1"),
    );
    let entry = log_entry(1, "exec-a", "");

    let mut no_job_id = job_headers(&job1, 1, "exec-a");
    no_job_id.retain(|(name, _)| *name != "X-Sourcegraph-Job-ID");
    let answer = harness
        .job_call("batches", "addExecutionLogEntry", &no_job_id, entry.clone())
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let mut bad_job_id = job_headers(&job1, 1, "exec-a");
    bad_job_id[1].1 = "one".into();
    let answer = harness
        .job_call("batches", "addExecutionLogEntry", &bad_job_id, entry.clone())
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);

    let mut no_name = job_headers(&job1, 1, "exec-a");
    no_name.pop();
    let answer = harness
        .job_call("batches", "addExecutionLogEntry", &no_name, entry.clone())
        .await;
    assert_eq!(
        (answer.status, answer.body.trim()),
        (StatusCode::BAD_REQUEST, "worker hostname cannot be empty")
    );

    let unknown = job_headers(&"0".repeat(40), 1, "exec-a");
    let answer = harness
        .job_call("batches", "addExecutionLogEntry", &unknown, entry.clone())
        .await;
    assert_eq!(
        (answer.status, answer.body.trim()),
        (StatusCode::UNAUTHORIZED, "invalid token")
    );

    let other_job = job_headers(&job1, 2, "exec-a");
    let answer = harness
        .job_call("batches", "addExecutionLogEntry", &other_job, entry.clone())
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);

    let other_queue = job_headers(&codeintel1, 1, "exec-a");
    let answer = harness
        .job_call("batches", "addExecutionLogEntry", &other_queue, entry.clone())
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);

    let stranger = job_headers(&job1, 1, "exec-never-heartbeated");
    let answer = harness
        .job_call("batches", "addExecutionLogEntry", &stranger, entry.clone())
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    let legacy_wrong = [
        ("Authorization", "token-executor not-the-token".to_owned()),
        ("X-Sourcegraph-Job-ID", "1".to_owned()),
        ("X-Sourcegraph-Executor-Name", "exec-a".to_owned()),
    ];
    let answer = harness
        .job_call("batches", "addExecutionLogEntry", &legacy_wrong, entry.clone())
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    let legacy_right = [("Authorization", harness.general_auth())];
    let answer = harness
        .job_call("batches", "addExecutionLogEntry", &legacy_right, entry.clone())
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    let answer = harness
        .job_call(
            "batches",
            "addExecutionLogEntry",
            &job_headers(&job1, 1, "exec-a"),
            entry,
        )
        .await;
    assert_eq!((answer.status, answer.json()), (StatusCode::OK, json!(2)));
}

// === heartbeats ===

#[tokio::test]
async fn single_queue_heartbeats_report_known_and_cancel_ids() {
    let harness = start().await;
    harness.frontend.enqueue(batches_job("r"));
    harness.frontend.enqueue(batches_job("r"));
    let first = harness.heartbeat("batches", "exec-a", Value::Null).await;
    assert_eq!(first, json!({"knownIds": [], "cancelIds": []}));
    harness.dequeue("batches", "exec-a").await.expect("job 1");

    let answer = harness.heartbeat("batches", "exec-a", json!([1, "2", 99])).await;
    assert_eq!(
        answer,
        json!({"knownIds": ["1"], "cancelIds": []}),
        "job 2 is queued and 99 unknown"
    );
    let foreign = harness.heartbeat("batches", "exec-b", json!([1])).await;
    assert_eq!(
        foreign["knownIds"],
        json!([]),
        "jobs of another executor are not known"
    );

    harness
        .frontend
        .cancel("batches", 1)
        .expect("cancel the processing job");
    let answer = harness.heartbeat("batches", "exec-a", json!([1.0])).await;
    assert_eq!(answer, json!({"knownIds": ["1"], "cancelIds": ["1"]}));

    harness
        .frontend
        .cancel("batches", 2)
        .expect("cancel the queued job");
    let queued = harness.frontend.job("batches", 2).expect("job 2");
    assert_eq!(
        queued.state,
        JobState::Failed,
        "canceling a queued job fails it at once"
    );

    let executor = harness
        .frontend
        .executors()
        .into_iter()
        .find(|e| e.hostname == "exec-a")
        .expect("exec-a");
    assert_eq!(executor.queue_name.as_deref(), Some("batches"));
    assert_eq!(
        (executor.os.as_str(), executor.git_version.as_str()),
        ("linux", "2.45.2")
    );
    assert_eq!(executor.prometheus_metrics, "# TYPE up gauge\nup 1\n");
    assert_eq!(executor.last_job_ids, vec!["1".to_owned()]);
    assert_eq!(executor.heartbeat_count, 3);

    let bad = harness
        .post_general("/.executors/queue/batches/heartbeat", json!({"executorName": ""}))
        .await;
    assert_eq!(bad.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn multi_queue_heartbeats_use_qualified_ids() {
    let harness = start().await;
    harness.frontend.enqueue(NewJob {
        queue: "codeintel".into(),
        ..NewJob::default()
    });
    let register = json!({"executorName": "exec-m", "queueNames": ["batches", "codeintel"]});
    assert_eq!(
        harness
            .post_general("/.executors/queue/heartbeat", register)
            .await
            .status,
        StatusCode::OK
    );
    let job = harness
        .post_general(
            "/.executors/queue/dequeue",
            json!({"executorName": "exec-m", "version": "6.0.0", "queues": ["batches", "codeintel"]}),
        )
        .await
        .json();
    assert_eq!(job["queue"], "codeintel");

    let beat = json!({
        "executorName": "exec-m", "queueNames": ["batches", "codeintel"],
        "jobIdsByQueue": [{"queueName": "codeintel", "jobIds": ["1", "7"]}],
        "executorVersion": "6.0.0", "prometheusMetrics": "m 1\n",
    });
    let answer = harness.post_general("/.executors/queue/heartbeat", beat).await;
    assert_eq!(
        answer.json(),
        json!({"knownIds": ["1-codeintel"], "cancelIds": []})
    );
    harness.frontend.cancel("codeintel", 1).expect("cancel");
    let beat = json!({
        "executorName": "exec-m", "queueNames": ["codeintel"],
        "jobIdsByQueue": [{"queueName": "codeintel", "jobIds": ["1"]}],
    });
    assert_eq!(
        harness
            .post_general("/.executors/queue/heartbeat", beat)
            .await
            .json(),
        json!({"knownIds": ["1-codeintel"], "cancelIds": ["1-codeintel"]})
    );

    let no_queues = harness
        .post_general("/.executors/queue/heartbeat", json!({"executorName": "exec-m"}))
        .await;
    assert_eq!(no_queues.status, StatusCode::INTERNAL_SERVER_ERROR);
    let outside = json!({
        "executorName": "exec-m", "queueNames": ["batches"],
        "jobIdsByQueue": [{"queueName": "codeintel", "jobIds": ["1"]}],
    });
    assert_eq!(
        harness
            .post_general("/.executors/queue/heartbeat", outside)
            .await
            .status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let record = harness
        .frontend
        .executors()
        .into_iter()
        .find(|e| e.hostname == "exec-m")
        .expect("exec-m");
    assert_eq!(record.queue_names, vec!["codeintel".to_owned()]);
    assert_eq!(record.last_job_ids, vec!["1-codeintel".to_owned()]);
}

// === log entries and mark calls ===

#[tokio::test]
async fn log_entries_are_added_and_updated_incrementally() {
    let harness = start().await;
    harness.frontend.enqueue(batches_job("r"));
    harness.heartbeat("batches", "exec-a", Value::Null).await;
    let token = token_of(&harness.dequeue("batches", "exec-a").await.expect("job"));
    let headers = job_headers(&token, 1, "exec-a");

    let added = harness
        .job_call(
            "batches",
            "addExecutionLogEntry",
            &headers,
            log_entry(1, "exec-a", ""),
        )
        .await;
    assert_eq!((added.status, added.json()), (StatusCode::OK, json!(1)));
    for (count, out) in ["stdout: one\n", "stdout: one\nstdout: two\n"].iter().enumerate() {
        let mut update = log_entry(1, "exec-a", out);
        update["entryId"] = json!(1);
        if count == 1 {
            update["exitCode"] = json!(0);
            update["durationMs"] = json!(1200);
        }
        let answer = harness
            .job_call("batches", "updateExecutionLogEntry", &headers, update)
            .await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.body);
    }
    let job = harness.frontend.job("batches", 1).expect("job");
    let entry = &job.log_entries[0];
    assert_eq!(
        (entry.id, entry.update_count, entry.exit_code, entry.duration_ms),
        (1, 2, Some(0), Some(1200))
    );
    assert_eq!(entry.out, "stdout: one\nstdout: two\n");
    assert!(entry.first_update_at.is_some() && entry.first_update_at <= entry.last_update_at);

    let mut unknown_entry = log_entry(1, "exec-a", "x");
    unknown_entry["entryId"] = json!(9);
    let answer = harness
        .job_call("batches", "updateExecutionLogEntry", &headers, unknown_entry)
        .await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    let not_owner = harness
        .job_call(
            "batches",
            "addExecutionLogEntry",
            &headers,
            log_entry(1, "exec-z", ""),
        )
        .await;
    assert_eq!(
        (not_owner.status, not_owner.json()),
        (StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "unknown job"}))
    );
    let malformed = harness
        .send(
            Method::POST,
            "/.executors/queue/batches/addExecutionLogEntry",
            &headers,
            Some("[".into()),
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn mark_calls_finish_jobs_and_revoke_tokens() {
    let harness = start_with(FrontendOptions {
        max_failures: 2,
        ..FrontendOptions::default()
    })
    .await;
    for _ in 0..3 {
        harness.frontend.enqueue(batches_job("r"));
    }
    harness.heartbeat("batches", "exec-a", Value::Null).await;
    let tokens: Vec<String> = {
        let mut tokens = Vec::new();
        for _ in 0..3 {
            tokens.push(token_of(
                &harness.dequeue("batches", "exec-a").await.expect("job"),
            ));
        }
        tokens
    };
    let mark = |id: i64, message: Option<&str>| json!({"executorName": "exec-a", "jobId": id, "errorMessage": message});

    let wrong_owner = json!({"executorName": "exec-b", "jobId": 1});
    let answer = harness
        .job_call(
            "batches",
            "markComplete",
            &job_headers(&tokens[0], 1, "exec-a"),
            wrong_owner,
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let answer = harness
        .job_call(
            "batches",
            "markComplete",
            &job_headers(&tokens[0], 1, "exec-a"),
            mark(1, None),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    let again = harness
        .job_call(
            "batches",
            "markComplete",
            &job_headers(&tokens[0], 1, "exec-a"),
            mark(1, None),
        )
        .await;
    assert_eq!(
        again.status,
        StatusCode::UNAUTHORIZED,
        "the token is deleted by the mark call"
    );
    let legacy = [("Authorization", harness.general_auth())];
    let unknown = harness
        .job_call("batches", "markComplete", &legacy, mark(99, None))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    let failed = mark(2, Some("step 1 failed"));
    assert_eq!(
        harness
            .job_call(
                "batches",
                "markFailed",
                &job_headers(&tokens[1], 2, "exec-a"),
                failed
            )
            .await
            .status,
        StatusCode::NO_CONTENT
    );

    let errored = mark(3, Some("transient"));
    assert_eq!(
        harness
            .job_call(
                "batches",
                "markErrored",
                &job_headers(&tokens[2], 3, "exec-a"),
                errored.clone()
            )
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let retried = harness.frontend.job("batches", 3).expect("job 3");
    assert_eq!(
        (retried.state, retried.num_failures),
        (JobState::Queued, 1),
        "below maxFailures it is retried"
    );
    let retry_token = token_of(&harness.dequeue("batches", "exec-a").await.expect("job 3 again"));
    assert_eq!(
        harness
            .job_call(
                "batches",
                "markErrored",
                &job_headers(&retry_token, 3, "exec-a"),
                errored
            )
            .await
            .status,
        StatusCode::NO_CONTENT
    );

    let completed = harness.frontend.job("batches", 1).expect("job 1");
    assert_eq!(completed.state, JobState::Completed);
    assert!(completed.finished_at.is_some());
    let statuses: Vec<(MarkKind, u16)> = completed.mark_calls.iter().map(|m| (m.kind, m.status)).collect();
    assert_eq!(
        statuses,
        vec![(MarkKind::Complete, 404), (MarkKind::Complete, 204)]
    );
    let failed = harness.frontend.job("batches", 2).expect("job 2");
    assert_eq!(
        (failed.state, failed.error_message.as_deref()),
        (JobState::Failed, Some("step 1 failed"))
    );
    let errored = harness.frontend.job("batches", 3).expect("job 3");
    assert_eq!((errored.state, errored.num_failures), (JobState::Errored, 2));
    assert_eq!(errored.error_message.as_deref(), Some("transient"));
}

// === resetter ===

#[tokio::test]
async fn stalled_jobs_are_requeued_and_fail_after_three_resets() {
    let harness = start_with(FrontendOptions {
        stalled_after: Duration::from_secs(1),
        ..FrontendOptions::default()
    })
    .await;
    harness.frontend.enqueue(batches_job("r"));
    harness.heartbeat("batches", "exec-a", Value::Null).await;
    for resets in 1..=3u32 {
        let token = token_of(
            &harness
                .dequeue("batches", "exec-a")
                .await
                .expect("the job is queued"),
        );
        let requeued = harness
            .frontend
            .wait_for_job("batches", 1, WAIT, |job| {
                job.state == JobState::Queued && job.num_resets == resets
            })
            .await
            .expect("the resetter re-queues the stalled job");
        assert_eq!(requeued.num_dequeues, resets);
        let stale = harness
            .job_call(
                "batches",
                "markComplete",
                &job_headers(&token, 1, "exec-a"),
                json!({}),
            )
            .await;
        assert_eq!(
            stale.status,
            StatusCode::UNAUTHORIZED,
            "a reset revokes the token"
        );
    }
    harness
        .dequeue("batches", "exec-a")
        .await
        .expect("the fourth attempt");
    let failed = harness
        .frontend
        .wait_for_job("batches", 1, WAIT, |job| job.state.is_terminal())
        .await
        .expect("the job fails after three resets");
    assert_eq!((failed.state, failed.num_resets), (JobState::Failed, 3));
    assert!(
        failed
            .error_message
            .as_deref()
            .is_some_and(|m| m.contains("reset too many times"))
    );
}

#[tokio::test]
async fn heartbeating_for_a_job_keeps_it_processing() {
    let harness = start_with(FrontendOptions {
        stalled_after: Duration::from_secs(1),
        ..FrontendOptions::default()
    })
    .await;
    harness.frontend.enqueue(batches_job("r"));
    harness.heartbeat("batches", "exec-a", Value::Null).await;
    harness.dequeue("batches", "exec-a").await.expect("job");
    let keep_alive = async {
        loop {
            harness.heartbeat("batches", "exec-a", json!([1])).await;
            // Pacing like an executor's heartbeat interval, not synchronisation.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    // The assertion is that the deadline (three stall periods) passes without the job leaving processing.
    let watch = harness
        .frontend
        .wait_for_job("batches", 1, Duration::from_secs(3), |job| {
            job.state != JobState::Processing
        });
    let outcome = tokio::select! {
        outcome = watch => outcome,
        () = keep_alive => unreachable!("the heartbeat loop never ends"),
    };
    assert!(
        outcome.is_err(),
        "the job left processing although it was heartbeated: {outcome:?}"
    );
    assert_eq!(harness.frontend.job("batches", 1).map(|j| j.num_resets), Some(0));
}

// === files ===

#[tokio::test]
async fn files_are_served_to_batches_job_tokens() {
    let harness = start().await;
    harness
        .frontend
        .add_file("batch-changes", "spec1/file1", b"print('hi')\n");
    harness.frontend.enqueue(batches_job("r"));
    harness.frontend.enqueue(NewJob {
        queue: "codeintel".into(),
        ..NewJob::default()
    });
    harness.heartbeat("batches", "exec-a", Value::Null).await;
    let batches = token_of(&harness.dequeue("batches", "exec-a").await.expect("batches job"));
    let codeintel = token_of(
        &harness
            .dequeue("codeintel", "exec-a")
            .await
            .expect("codeintel job"),
    );
    let headers = job_headers(&batches, 1, "exec-a");

    let got = harness
        .send(
            Method::GET,
            "/.executors/files/batch-changes/spec1/file1",
            &headers,
            None,
        )
        .await;
    assert_eq!((got.status, got.body.as_str()), (StatusCode::OK, "print('hi')\n"));
    let head = harness
        .send(
            Method::HEAD,
            "/.executors/files/batch-changes/spec1/file1",
            &headers,
            None,
        )
        .await;
    assert_eq!((head.status, head.body.as_str()), (StatusCode::OK, ""));
    let missing = harness
        .send(
            Method::HEAD,
            "/.executors/files/batch-changes/spec1/nope",
            &headers,
            None,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let wrong_queue = job_headers(&codeintel, 1, "exec-a");
    let denied = harness
        .send(
            Method::GET,
            "/.executors/files/batch-changes/spec1/file1",
            &wrong_queue,
            None,
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
}

// === git ===

/// Runs git isolated from user configuration; returns (success, stderr).
async fn git(args: &[&str], cwd: &Path, extra_env: &[(&str, &str)]) -> (bool, String) {
    let output = tokio::process::Command::new("git")
        .args(args)
        .current_dir(cwd)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .envs(extra_env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("running git");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn auth_config(token: &str, job_id: i64, executor: &str) -> Vec<String> {
    job_headers(token, job_id, executor)
        .into_iter()
        .flat_map(|(name, value)| ["-c".to_owned(), format!("http.extraHeader={name}: {value}")])
        .collect()
}

#[tokio::test]
async fn git_clone_and_fetch_by_sha_work_with_the_job_token() {
    let harness = start().await;
    let repo = "github.com/org/repo";
    let commit = harness
        .frontend
        .create_repo(repo, &[("README.md", "# demo\n"), ("src/main.sh", "echo hi\n")])
        .await
        .expect("creating the repository");
    assert_eq!(commit.len(), 40);
    harness
        .frontend
        .create_repo("github.com/org/other", &[("x", "y")])
        .await
        .expect("second repo");
    harness.frontend.enqueue(NewJob {
        commit: commit.clone(),
        ..batches_job(repo)
    });
    harness.heartbeat("batches", "exec-git", Value::Null).await;
    let token = token_of(&harness.dequeue("batches", "exec-git").await.expect("job"));
    let config = auth_config(&token, 1, "exec-git");
    let config: Vec<&str> = config.iter().map(String::as_str).collect();
    let remote = format!("{}/.executors/git/{repo}", harness.frontend.url());
    let work = TempDir::new("dev-frontend-git-test");

    let clone_dir = work.0.join("clone");
    let clone_path = clone_dir.to_string_lossy().into_owned();
    let clone_args = [
        &config[..],
        &["-c", "protocol.version=2", "clone", "-q", &remote, &clone_path],
    ]
    .concat();
    let (cloned, stderr) = git(&clone_args, &work.0, &[("GIT_TRACE_PACKET", "1")]).await;
    assert!(cloned, "git clone failed: {stderr}");
    assert!(
        stderr.contains("version 2"),
        "protocol v2 was not negotiated: {stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(clone_dir.join("src/main.sh"))
            .ok()
            .as_deref(),
        Some("echo hi\n")
    );

    // The executor's way: init, add the remote, fetch exactly the commit shallowly, check it out.
    let fetch_dir = work.0.join("fetch");
    std::fs::create_dir_all(&fetch_dir).expect("creating the fetch dir");
    assert!(git(&["init", "-q"], &fetch_dir, &[]).await.0);
    assert!(
        git(&["remote", "add", "origin", &remote], &fetch_dir, &[])
            .await
            .0
    );
    let fetch_args = [&config[..], &["fetch", "-q", "--depth=1", "origin", &commit]].concat();
    let (fetched, stderr) = git(&fetch_args, &fetch_dir, &[]).await;
    assert!(fetched, "git fetch by SHA failed: {stderr}");
    assert!(git(&["checkout", "-q", &commit], &fetch_dir, &[]).await.0);
    assert_eq!(
        std::fs::read_to_string(fetch_dir.join("README.md"))
            .ok()
            .as_deref(),
        Some("# demo\n")
    );

    let other_remote = format!("{}/.executors/git/github.com/org/other", harness.frontend.url());
    let other_path = work.0.join("other").to_string_lossy().into_owned();
    let other_args = [&config[..], &["clone", "-q", &other_remote, &other_path]].concat();
    let (other_cloned, stderr) = git(&other_args, &work.0, &[]).await;
    assert!(
        !other_cloned && stderr.contains("403"),
        "another repository's clone must be refused: {stderr}"
    );

    let requests = harness.frontend.requests();
    let upload_packs: Vec<_> = requests
        .iter()
        .filter(|r| r.path.ends_with("/git-upload-pack"))
        .collect();
    assert!(!upload_packs.is_empty());
    assert!(
        upload_packs
            .iter()
            .all(|r| r.executor_name.as_deref() == Some("exec-git"))
    );
    assert!(
        requests
            .iter()
            .any(|r| r.path == "/.executors/git/github.com/org/other/info/refs" && r.status == 403)
    );
    let logged = serde_json::to_string(&requests).expect("serializing requests");
    assert!(
        !logged.contains(&token),
        "the request log must never contain tokens"
    );
}

// === pages and admin API ===

fn executor_item<'a>(page: &'a str, hostname: &str) -> &'a str {
    page.split("<li class=\"executor\">")
        .find(|item| item.contains(&format!("<strong class=\"hostname\">{hostname}</strong>")))
        .unwrap_or_else(|| panic!("no executor {hostname} on the page"))
}

#[tokio::test]
async fn instances_page_shows_versions_and_the_outdated_badge_rule() {
    let harness = start().await;
    for (name, version) in [
        ("exec-old", "5.9.0"),
        ("exec-same", "6.0.0"),
        ("exec-dev", "0.0.0+dev"),
        ("exec-new", "6.2.1"),
    ] {
        let body = json!({
            "executorName": name, "os": "linux", "architecture": "amd64", "executorVersion": version,
            "gitVersion": "2.45.2", "srcCliVersion": "",
        });
        assert_eq!(
            harness
                .post_general("/.executors/queue/codeintel/heartbeat", body)
                .await
                .status,
            StatusCode::OK
        );
    }
    let sneaky = json!({"executorName": "exec-<b>x</b>", "executorVersion": "6.0.0"});
    harness
        .post_general("/.executors/queue/batches/heartbeat", sneaky)
        .await;

    let redirect = harness.send(Method::GET, "/", &[], None).await;
    assert!(redirect.status.is_redirection());
    let page = harness
        .send(Method::GET, "/site-admin/executors", &[], None)
        .await;
    assert_eq!(page.status, StatusCode::OK);
    let page = page.body;

    let old = executor_item(&page, "exec-old");
    assert!(
        old.contains("dot active") && old.contains("badge outdated"),
        "{old}"
    );
    assert!(old.contains("<span class=\"badge queue\">codeintel</span>"));
    assert!(old.contains("last seen ") && old.contains("seconds ago"));
    for detail in [
        "<dd>linux</dd>",
        "<dd>amd64</dd>",
        "<dd>5.9.0</dd>",
        "<dd>2.45.2</dd>",
        "<dt>src-cli version</dt><dd>n/a</dd>",
    ] {
        assert!(old.contains(detail), "missing {detail} in {old}");
    }
    let same = executor_item(&page, "exec-same");
    assert!(!same.contains("badge outdated") && !same.contains("badge ahead"));
    let dev = executor_item(&page, "exec-dev");
    assert!(
        !dev.contains("badge outdated") && !dev.contains("badge ahead"),
        "dev versions get no badge"
    );
    assert!(executor_item(&page, "exec-new").contains("badge ahead"));
    assert!(
        page.contains("exec-&lt;b&gt;x&lt;/b&gt;") && !page.contains("<b>x</b>"),
        "hostnames are escaped"
    );
    assert!(!page.contains(harness.frontend.access_token().unwrap_or("unset")));
}

#[tokio::test]
async fn job_page_and_admin_api_show_log_entries() {
    let harness = start().await;
    let created = harness
        .send(
            Method::POST,
            "/dev/jobs",
            &[],
            Some(json!({"queue": "batches", "repositoryName": "r"}).to_string()),
        )
        .await;
    assert_eq!(created.json(), json!({"id": 1}));
    let rejected = harness
        .send(
            Method::POST,
            "/dev/jobs",
            &[],
            Some(json!({"queue": "nope"}).to_string()),
        )
        .await;
    assert_eq!(rejected.status, StatusCode::BAD_REQUEST);

    harness.heartbeat("batches", "exec-a", Value::Null).await;
    let token = token_of(&harness.dequeue("batches", "exec-a").await.expect("job"));
    let entry = log_entry(1, "exec-a", "stdout: <script>alert(1)</script>\n");
    harness
        .job_call(
            "batches",
            "addExecutionLogEntry",
            &job_headers(&token, 1, "exec-a"),
            entry,
        )
        .await;

    let page = harness.send(Method::GET, "/jobs/batches/1", &[], None).await.body;
    assert!(
        page.contains("http-equiv=\"refresh\""),
        "a running job's page refreshes itself"
    );
    assert!(page.contains("processing") && page.contains("step.kubernetes.step.0"));
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !page.contains("<script>alert"));
    assert!(!page.contains(&token));
    let list = harness.send(Method::GET, "/jobs", &[], None).await.body;
    assert!(list.contains("href=\"/jobs/batches/1\""));

    let record = harness
        .send(Method::GET, "/dev/jobs/batches/1", &[], None)
        .await
        .json();
    assert_eq!(record["state"], "processing");
    assert_eq!(record["logEntries"][0]["updateCount"], 0);
    assert!(!record.to_string().contains(&token));
    let cancel = harness
        .send(Method::POST, "/dev/jobs/batches/1/cancel", &[], None)
        .await;
    assert_eq!(cancel.status, StatusCode::NO_CONTENT);
    assert_eq!(
        harness.frontend.job("batches", 1).map(|j| j.cancel_requested),
        Some(true)
    );
    let executors = harness
        .send(Method::GET, "/dev/executors", &[], None)
        .await
        .json();
    assert_eq!(executors[0]["hostname"], "exec-a");
    let requests = harness.send(Method::GET, "/dev/requests", &[], None).await.json();
    let dequeue = requests
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|r| r["path"] == "/.executors/queue/batches/dequeue")
        })
        .expect("the dequeue is logged");
    assert_eq!(
        (dequeue["status"].as_u64(), dequeue["executorName"].as_str()),
        (Some(200), Some("exec-a"))
    );
}

#[tokio::test]
async fn cli_clients_talk_to_a_running_frontend() {
    let harness = start().await;
    let work = TempDir::new("dev-frontend-cli-test");
    let job_file = work.0.join("job.json");
    std::fs::write(
        &job_file,
        json!({"queue": "codeintel", "repositoryName": "github.com/a/b"}).to_string(),
    )
    .expect("writing the job file");
    let source = work.0.join("repo");
    std::fs::create_dir_all(source.join("sub")).expect("creating the repo dir");
    std::fs::write(source.join("sub/file.txt"), "content\n").expect("writing a repo file");
    let binary = env!("CARGO_BIN_EXE_dev-frontend");
    let url = harness.frontend.url();
    let run = |args: Vec<String>| async move {
        let output = tokio::process::Command::new(binary)
            .args(&args)
            .output()
            .await
            .expect("running the CLI");
        assert!(
            output.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let path = job_file.to_string_lossy().into_owned();
    let id = run(vec![
        "enqueue".into(),
        "--url".into(),
        url.clone(),
        "--file".into(),
        path,
    ])
    .await;
    assert_eq!(id, "1");
    let shown = run(vec![
        "show".into(),
        "--url".into(),
        url.clone(),
        "--queue".into(),
        "codeintel".into(),
        "--id".into(),
        "1".into(),
    ])
    .await;
    let shown: Value = serde_json::from_str(&shown).expect("show prints JSON");
    assert_eq!(shown["repositoryName"], "github.com/a/b");
    run(vec![
        "cancel".into(),
        "--url".into(),
        url.clone(),
        "--queue".into(),
        "codeintel".into(),
        "--id".into(),
        "1".into(),
    ])
    .await;
    assert_eq!(
        harness.frontend.job("codeintel", 1).map(|j| j.state),
        Some(JobState::Failed)
    );
    let dir = source.to_string_lossy().into_owned();
    let commit = run(vec![
        "create-repo".into(),
        "--url".into(),
        url,
        "--name".into(),
        "github.com/a/b".into(),
        "--dir".into(),
        dir,
    ])
    .await;
    let same = harness
        .frontend
        .create_repo("github.com/a/b", &[("sub/file.txt", "content\n")])
        .await
        .expect("repo");
    assert_eq!(commit, same, "the same files give the same commit");
}

#[tokio::test]
async fn git_fetch_of_many_commits_sends_a_gzip_body_that_is_understood() {
    let harness = start().await;
    let repo = "github.com/org/many";
    let mut commits = Vec::new();
    // git compresses request bodies above 1 KiB; 30 wants of ~55 bytes each cross that line.
    for index in 0..30 {
        let content = format!("revision {index}\n");
        commits.push(
            harness
                .frontend
                .create_repo(repo, &[("rev.txt", &content)])
                .await
                .expect("commit"),
        );
    }
    harness.frontend.enqueue(batches_job(repo));
    harness.heartbeat("batches", "exec-git", Value::Null).await;
    let token = token_of(&harness.dequeue("batches", "exec-git").await.expect("job"));
    let config = auth_config(&token, 1, "exec-git");
    let work = TempDir::new("dev-frontend-gzip-test");
    assert!(git(&["init", "-q"], &work.0, &[]).await.0);
    let remote = format!("{}/.executors/git/{repo}", harness.frontend.url());
    assert!(git(&["remote", "add", "origin", &remote], &work.0, &[]).await.0);
    let mut args: Vec<&str> = config.iter().map(String::as_str).collect();
    args.extend(["fetch", "-q", "origin"]);
    args.extend(commits.iter().map(String::as_str));
    let (fetched, stderr) = git(
        &args,
        &work.0,
        &[("GIT_TRACE_CURL", "1"), ("GIT_TRACE_CURL_NO_DATA", "1")],
    )
    .await;
    assert!(fetched, "fetching {} commits failed: {stderr}", commits.len());
    assert!(
        stderr.contains("Content-Encoding: gzip"),
        "git did not compress the request: {stderr}"
    );
    for commit in &commits {
        assert!(
            git(&["cat-file", "-e", commit], &work.0, &[]).await.0,
            "commit {commit} was not fetched"
        );
    }
}
