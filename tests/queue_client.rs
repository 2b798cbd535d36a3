//! The queue client against the dev frontend, and its retry behaviour against a scripted local server.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use dev_frontend::{DevFrontend, FrontendOptions, JobState, NewJob};
use jiff::Timestamp;
use kube_executor::queue::{
    ClientOptions, JobHandle, MarkOutcome, QueueClient, QueueError, RetryPolicy, RunKey,
    types::{
        DequeueRequest, ExecutionLogEntry, HeartbeatRequestMulti, HeartbeatRequestV1, Job, QueueJobIds,
        Secret, Telemetry,
    },
};

const USER_AGENT: &str = "kube-executor/test";

fn client_for(url: &str, password: &str, executor_name: &str) -> QueueClient {
    QueueClient::new(ClientOptions {
        frontend_url: url.to_owned(),
        password: Secret::new(password.to_owned()),
        executor_name: executor_name.to_owned(),
        user_agent: USER_AGENT.to_owned(),
    })
    .expect("valid client options")
    .with_reporting_retry(fast_retry())
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy::new(
        Duration::from_millis(5),
        Duration::from_millis(20),
        Duration::from_secs(5),
    )
}

async fn frontend() -> DevFrontend {
    DevFrontend::start(FrontendOptions::default())
        .await
        .expect("dev frontend starts")
}

fn client(frontend: &DevFrontend, executor_name: &str) -> QueueClient {
    let password = frontend
        .access_token()
        .expect("default options set an access token");
    client_for(&frontend.url(), password, executor_name)
}

fn telemetry() -> Telemetry {
    Telemetry {
        os: "linux".to_owned(),
        architecture: "amd64".to_owned(),
        executor_version: "0.0.0+dev".to_owned(),
        ..Telemetry::default()
    }
}

fn single_heartbeat(client: &QueueClient, job_ids: Option<Vec<i64>>) -> HeartbeatRequestV1 {
    HeartbeatRequestV1 {
        version: "V2".to_owned(),
        executor_name: client.executor_name().to_owned(),
        job_ids,
        telemetry: telemetry(),
    }
}

fn multi_heartbeat(client: &QueueClient, job_ids_by_queue: Vec<QueueJobIds>) -> HeartbeatRequestMulti {
    HeartbeatRequestMulti {
        version: "V2".to_owned(),
        executor_name: client.executor_name().to_owned(),
        queue_names: vec!["batches".to_owned(), "codeintel".to_owned()],
        job_ids_by_queue,
        telemetry: telemetry(),
    }
}

fn dequeue_request(client: &QueueClient, queues: &[&str]) -> DequeueRequest {
    DequeueRequest {
        queues: queues.iter().map(|q| (*q).to_owned()).collect(),
        executor_name: client.executor_name().to_owned(),
        version: "0.0.0+dev".to_owned(),
        num_cpus: 2,
        memory: "4G".to_owned(),
        disk_space: String::new(),
    }
}

fn simple_job(queue: &str) -> NewJob {
    NewJob {
        queue: queue.to_owned(),
        repository_name: "github.com/org/repo".to_owned(),
        commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        docker_steps: vec![dev_frontend::DockerStep {
            key: "step.0".to_owned(),
            image: "alpine:3".to_owned(),
            commands: vec!["echo hi".to_owned()],
            dir: ".".to_owned(),
            env: vec![],
        }],
        ..NewJob::default()
    }
}

/// Heartbeats (so job routes accept the executor), queues a job on `queue` and dequeues it through
/// the single-queue route.
async fn dequeued_job(frontend: &DevFrontend, client: &QueueClient, queue: &str) -> (Job, JobHandle) {
    client
        .heartbeat_single(queue, &single_heartbeat(client, None))
        .await
        .expect("heartbeat accepted");
    let id = frontend.enqueue(simple_job(queue));
    let job = client
        .dequeue(Some(queue), &dequeue_request(client, &[]))
        .await
        .expect("dequeue succeeds")
        .expect("a job is queued");
    assert_eq!(job.id, id);
    let handle = JobHandle::new(&RunKey::single(job.id, queue), job.token.clone());
    (job, handle)
}

fn log_entry(out: &str, exit_code: Option<i32>, duration_ms: Option<i64>) -> ExecutionLogEntry {
    ExecutionLogEntry {
        key: "step.kubernetes.step.0".to_owned(),
        command: vec!["/bin/sh".to_owned(), "-c".to_owned(), "echo hi".to_owned()],
        start_time: "2024-05-01T10:00:00.123456789Z"
            .parse::<Timestamp>()
            .expect("valid timestamp"),
        exit_code,
        out: out.to_owned(),
        duration_ms,
    }
}

#[tokio::test]
async fn single_queue_heartbeat_and_dequeue_of_a_v2_job() {
    let frontend = frontend().await;
    let client = client(&frontend, "exec-single");
    let response = client
        .heartbeat_single("batches", &single_heartbeat(&client, None))
        .await
        .expect("heartbeat accepted");
    assert!(
        response.known_ids.is_empty() && response.cancel_ids.is_empty(),
        "{response:?}"
    );
    let executors = frontend.executors();
    let me = executors
        .iter()
        .find(|e| e.hostname == "exec-single")
        .expect("heartbeat recorded the executor");
    assert_eq!(me.queue_name.as_deref(), Some("batches"));
    assert_eq!(
        (me.os.as_str(), me.executor_version.as_str()),
        ("linux", "0.0.0+dev")
    );

    // Nothing queued yet: 204.
    let nothing = client
        .dequeue(Some("batches"), &dequeue_request(&client, &[]))
        .await
        .expect("dequeue succeeds");
    assert!(nothing.is_none());

    let mut new_job = simple_job("batches");
    new_job.repository_directory = "repository".to_owned();
    new_job.fetch_tags = true;
    new_job.shallow_clone = true;
    new_job.sparse_checkout = vec!["src/*".to_owned()];
    new_job.files = BTreeMap::from([
        (
            "input.json".to_owned(),
            dev_frontend::JobFile {
                content: Some("{\"steps\":[]}".to_owned()),
                ..Default::default()
            },
        ),
        (
            "workspace-files/a.py".to_owned(),
            dev_frontend::JobFile {
                bucket: Some("batch-changes".to_owned()),
                key: Some("spec/file".to_owned()),
                modified_at: Some("2024-05-01T10:00:00Z".to_owned()),
                ..Default::default()
            },
        ),
    ]);
    new_job.redacted_values = BTreeMap::from([("s3cr3t".to_owned(), "${{ secrets.X }}".to_owned())]);
    new_job.docker_auth_config = Some(serde_json::json!({"auths": {"r.example": {"auth": "dTpw"}}}));
    let id = frontend.enqueue(new_job);

    let job = client
        .dequeue(Some("batches"), &dequeue_request(&client, &[]))
        .await
        .expect("dequeue succeeds")
        .expect("the queued job");
    assert_eq!(job.version, 2);
    assert_eq!(job.id, id);
    assert_eq!(job.token.expose().len(), 40, "job tokens are 40 hex characters");
    assert!(job.token.expose().chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(job.queue, "", "single-queue dequeues do not name the queue");
    assert_eq!(job.repository_name, "github.com/org/repo");
    assert_eq!(job.repository_directory, "repository");
    assert_eq!(job.commit, "0123456789abcdef0123456789abcdef01234567");
    assert!(job.fetch_tags && job.shallow_clone);
    assert_eq!(job.sparse_checkout, vec!["src/*".to_owned()]);
    assert_eq!(
        job.files["input.json"].content.as_deref(),
        Some(&b"{\"steps\":[]}"[..])
    );
    assert_eq!(
        job.files["workspace-files/a.py"].bucket.as_deref(),
        Some("batch-changes")
    );
    assert_eq!(
        job.files["workspace-files/a.py"].key.as_deref(),
        Some("spec/file")
    );
    assert_eq!(job.docker_steps.len(), 1);
    assert_eq!(job.docker_steps[0].image, "alpine:3");
    assert_eq!(job.docker_steps[0].commands, vec!["echo hi".to_owned()]);
    assert_eq!(job.redacted_values.expose()["s3cr3t"], "${{ secrets.X }}");
    assert_eq!(
        job.docker_auth_config
            .as_ref()
            .map(|c| c.expose()["auths"]["r.example"]["auth"].clone()),
        Some(serde_json::json!("dTpw"))
    );
    let record = frontend.job("batches", id).expect("job exists");
    assert_eq!(record.state, JobState::Processing);
    assert_eq!(record.executor.as_deref(), Some("exec-single"));
    assert_eq!(record.payload_version, Some(2));

    let handle = JobHandle::new(&RunKey::single(job.id, "batches"), job.token.clone());
    assert_eq!(handle.queue, "batches");
    let response = client
        .heartbeat_single("batches", &single_heartbeat(&client, Some(vec![id])))
        .await
        .expect("heartbeat accepted");
    assert_eq!(response.known_ids, vec![id.to_string()]);

    let paths: Vec<(String, u16)> = frontend
        .requests()
        .into_iter()
        .map(|r| (r.path, r.status))
        .collect();
    assert!(
        paths.contains(&("/.executors/queue/batches/dequeue".to_owned(), 204)),
        "{paths:?}"
    );
    assert!(
        paths.contains(&("/.executors/queue/batches/dequeue".to_owned(), 200)),
        "{paths:?}"
    );
}

#[tokio::test]
async fn multi_queue_heartbeat_and_dequeue() {
    let frontend = frontend().await;
    let client = client(&frontend, "exec-multi");
    client
        .heartbeat_multi(&multi_heartbeat(&client, vec![]))
        .await
        .expect("heartbeat accepted");
    let me = frontend
        .executors()
        .into_iter()
        .find(|e| e.hostname == "exec-multi")
        .expect("heartbeat recorded the executor");
    assert_eq!(me.queue_names, vec!["batches".to_owned(), "codeintel".to_owned()]);

    let nothing = client
        .dequeue(None, &dequeue_request(&client, &["batches", "codeintel"]))
        .await
        .expect("dequeue succeeds");
    assert!(nothing.is_none());

    let id = frontend.enqueue(simple_job("codeintel"));
    let job = client
        .dequeue(None, &dequeue_request(&client, &["batches", "codeintel"]))
        .await
        .expect("dequeue succeeds")
        .expect("the queued job");
    assert_eq!((job.id, job.version, job.queue.as_str()), (id, 2, "codeintel"));

    let response = client
        .heartbeat_multi(&multi_heartbeat(
            &client,
            vec![QueueJobIds {
                queue_name: "codeintel".to_owned(),
                job_ids: vec![id.to_string()],
            }],
        ))
        .await
        .expect("heartbeat accepted");
    assert_eq!(response.known_ids, vec![format!("{id}-codeintel")]);
    assert!(response.cancel_ids.is_empty());
}

#[tokio::test]
async fn log_entries_are_added_and_updated() {
    let frontend = frontend().await;
    let client = client(&frontend, "exec-logs");
    let (job, handle) = dequeued_job(&frontend, &client, "batches").await;

    let entry_id = client
        .add_execution_log_entry(&handle, &log_entry("stdout: starting\n", None, None))
        .await
        .expect("entry added");
    let second_id = client
        .add_execution_log_entry(&handle, &log_entry("", None, None))
        .await
        .expect("second entry added");
    assert_ne!(entry_id, second_id);

    let record = frontend.job("batches", job.id).expect("job exists");
    let stored = record
        .log_entries
        .iter()
        .find(|e| e.id == entry_id)
        .expect("entry stored");
    assert_eq!(stored.out, "stdout: starting\n");
    assert_eq!(stored.exit_code, None);
    assert_eq!(stored.update_count, 0);
    assert_eq!(stored.executor_name, "exec-logs");

    client
        .update_execution_log_entry(
            &handle,
            entry_id,
            &log_entry("stdout: starting\nstdout: done\n", Some(3), Some(1250)),
        )
        .await
        .expect("entry updated");
    let record = frontend.job("batches", job.id).expect("job exists");
    let stored = record
        .log_entries
        .iter()
        .find(|e| e.id == entry_id)
        .expect("entry stored");
    assert_eq!(stored.key, "step.kubernetes.step.0");
    assert_eq!(stored.command, vec!["/bin/sh", "-c", "echo hi"]);
    assert_eq!(stored.out, "stdout: starting\nstdout: done\n");
    assert_eq!(
        (stored.exit_code, stored.duration_ms, stored.update_count),
        (Some(3), Some(1250), 1)
    );
    assert_eq!(record.log_entries.len(), 2, "no duplicates");

    // A token only works for the job it was issued for.
    let stranger = JobHandle {
        id: job.id + 1000,
        ..handle.clone()
    };
    let err = client
        .add_execution_log_entry(&stranger, &log_entry("x", None, None))
        .await
        .expect_err("token belongs to another job");
    assert_eq!(err.status(), Some(403), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn mark_complete_is_recorded_once() {
    let frontend = frontend().await;
    let client = client(&frontend, "exec-mark");
    let (job, handle) = dequeued_job(&frontend, &client, "batches").await;

    let outcome = client.mark_complete(&handle).await.expect("mark accepted");
    assert_eq!(outcome, MarkOutcome::Recorded);
    let record = frontend.job("batches", job.id).expect("job exists");
    assert_eq!(record.state, JobState::Completed);

    // The frontend revokes the job token on the first mark, so a repeat with it is unauthorized.
    let err = client.mark_complete(&handle).await.expect_err("token revoked");
    assert_eq!(err.status(), Some(401), "{err}");
    assert!(!err.is_transient());
    assert!(!err.to_string().contains(job.token.expose().as_str()), "{err}");

    // Old-style authentication reaches the handler, which no longer considers the job ours.
    let legacy = JobHandle {
        token: Secret::new(String::new()),
        ..handle.clone()
    };
    assert_eq!(
        client.mark_complete(&legacy).await.expect("answered"),
        MarkOutcome::NotOwned
    );
    let statuses: Vec<u16> = frontend
        .job("batches", job.id)
        .expect("job exists")
        .mark_calls
        .iter()
        .map(|m| m.status)
        .collect();
    assert_eq!(statuses, vec![204, 404]);
}

#[tokio::test]
async fn marks_from_another_executor_are_not_owned() {
    let frontend = frontend().await;
    let owner = client(&frontend, "exec-owner");
    let other = client(&frontend, "exec-other");
    let (job, handle) = dequeued_job(&frontend, &owner, "batches").await;
    other
        .heartbeat_single("batches", &single_heartbeat(&other, None))
        .await
        .expect("heartbeat accepted");

    let outcome = other.mark_failed(&handle, "not mine").await.expect("answered");
    assert_eq!(outcome, MarkOutcome::NotOwned);
    assert_eq!(
        frontend.job("batches", job.id).expect("job exists").state,
        JobState::Processing
    );

    let outcome = owner
        .mark_failed(&handle, "step 0 failed")
        .await
        .expect("answered");
    assert_eq!(outcome, MarkOutcome::Recorded);
    let record = frontend.job("batches", job.id).expect("job exists");
    assert_eq!(record.state, JobState::Failed);
    assert_eq!(record.error_message.as_deref(), Some("step 0 failed"));
}

#[tokio::test]
async fn mark_errored_records_the_message() {
    let frontend = frontend().await;
    let client = client(&frontend, "exec-errored");
    let (job, handle) = dequeued_job(&frontend, &client, "codeintel").await;
    let outcome = client
        .mark_errored(&handle, "pod evicted")
        .await
        .expect("answered");
    assert_eq!(outcome, MarkOutcome::Recorded);
    let record = frontend.job("codeintel", job.id).expect("job exists");
    assert_eq!(record.state, JobState::Errored);
    assert_eq!(record.error_message.as_deref(), Some("pod evicted"));
    assert_eq!(record.num_failures, 1);
}

#[tokio::test]
async fn workspace_files_are_downloaded() {
    let frontend = frontend().await;
    let client = client(&frontend, "exec-files");
    let content: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    frontend.add_file("batch-changes", "spec-1/file-1", &content);
    let (_job, handle) = dequeued_job(&frontend, &client, "batches").await;

    let downloaded = client
        .get_file(&handle, "batch-changes", "spec-1/file-1", content.len())
        .await
        .expect("file served");
    assert_eq!(downloaded, content);

    let err = client
        .get_file(&handle, "batch-changes", "spec-1/file-1", content.len() - 1)
        .await
        .expect_err("one byte over the limit");
    assert!(matches!(err, QueueError::TooLarge { limit: 69_999, .. }), "{err}");
    assert!(!err.is_transient());

    let err = client
        .get_file(&handle, "batch-changes", "spec-1/missing", 1024)
        .await
        .expect_err("no such file");
    assert_eq!(err.status(), Some(404), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn wrong_password_is_a_permanent_error_that_hides_the_password() {
    let frontend = frontend().await;
    let wrong = "wrong-password-must-not-leak";
    let client = client_for(&frontend.url(), wrong, "exec-wrong");
    let err = client
        .heartbeat_single("batches", &single_heartbeat(&client, None))
        .await
        .expect_err("wrong password");
    assert!(matches!(err, QueueError::Status { status: 401, .. }), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(err.metric_label(), "unauthorized");
    for text in [err.to_string(), format!("{err:?}"), format!("{client:?}")] {
        assert!(!text.contains(wrong), "{text}");
    }
    let err = client
        .dequeue(Some("batches"), &dequeue_request(&client, &[]))
        .await
        .expect_err("wrong password");
    assert_eq!(err.status(), Some(401));
    assert!(frontend.executors().is_empty(), "nothing was accepted");
}

// === scripted server for retry behaviour ===

/// What the scripted server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    action: String,
    authorization: String,
    job_id: String,
    executor_name: String,
    content_type: String,
    user_agent: String,
    body: serde_json::Value,
}

#[derive(Default)]
struct Script {
    /// Per action, the answers to give in order; afterwards the action's success answer.
    answers: BTreeMap<String, VecDeque<u16>>,
    seen: Vec<Seen>,
}

/// A local HTTP server under the path prefix `/sg` that answers job routes from a script.
struct ScriptedServer {
    url: String,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedServer {
    async fn start(answers: &[(&str, &[u16])]) -> ScriptedServer {
        let script = Arc::new(Mutex::new(Script {
            answers: answers
                .iter()
                .map(|(action, codes)| ((*action).to_owned(), codes.iter().copied().collect()))
                .collect(),
            seen: Vec::new(),
        }));
        let app = Router::new()
            .route("/sg/.executors/queue/{queue}/{action}", post(scripted_answer))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            // The server ends when the test aborts the task.
            let _ = axum::serve(listener, app).await;
        });
        ScriptedServer {
            url: format!("http://{addr}/sg/"),
            script,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.script.lock().expect("script lock").seen.clone()
    }
}

async fn scripted_answer(
    State(script): State<Arc<Mutex<Script>>>,
    Path((queue, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut script = script.lock().expect("script lock");
    script.seen.push(Seen {
        action: format!("{queue}/{action}"),
        authorization: header("authorization"),
        job_id: header("x-sourcegraph-job-id"),
        executor_name: header("x-sourcegraph-executor-name"),
        content_type: header("content-type"),
        user_agent: header("user-agent"),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    });
    let scripted = script.answers.get_mut(&action).and_then(VecDeque::pop_front);
    match scripted {
        Some(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, "{\"error\":\"scripted failure\"}").into_response()
        }
        None if action == "addExecutionLogEntry" => (StatusCode::OK, "17").into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

fn scripted_job() -> JobHandle {
    JobHandle {
        id: 42,
        queue: "batches".to_owned(),
        token: Secret::new("0123456789abcdef0123456789abcdef01234567".to_owned()),
    }
}

#[tokio::test]
async fn mark_complete_retries_through_unavailable_answers() {
    let server = ScriptedServer::start(&[("markComplete", &[503, 503])]).await;
    let client = client_for(&server.url, "pw", "exec-retry");
    let outcome = client
        .mark_complete(&scripted_job())
        .await
        .expect("succeeds after retries");
    assert_eq!(outcome, MarkOutcome::Recorded);

    let seen = server.seen();
    assert_eq!(seen.len(), 3, "two 503s then success: {seen:?}");
    for request in &seen {
        assert_eq!(request.action, "batches/markComplete");
        assert_eq!(
            request.authorization,
            "Bearer 0123456789abcdef0123456789abcdef01234567"
        );
        assert_eq!(request.job_id, "42");
        assert_eq!(request.executor_name, "exec-retry");
        assert_eq!(request.content_type, "application/json");
        assert_eq!(request.user_agent, USER_AGENT);
        assert_eq!(
            request.body,
            serde_json::json!({"executorName": "exec-retry", "jobId": 42})
        );
    }
}

#[tokio::test]
async fn retries_stop_at_permanent_errors_and_the_deadline() {
    let server = ScriptedServer::start(&[("markFailed", &[503, 400]), ("markErrored", &[503; 1000])]).await;
    let client = client_for(&server.url, "pw", "exec-retry").with_reporting_retry(RetryPolicy::new(
        Duration::from_millis(5),
        Duration::from_millis(10),
        Duration::from_millis(200),
    ));
    let err = client
        .mark_failed(&scripted_job(), "boom")
        .await
        .expect_err("400 is permanent");
    assert_eq!(err.status(), Some(400), "{err}");
    assert!(err.to_string().contains("scripted failure"), "{err}");

    let err = client
        .mark_errored(&scripted_job(), "boom")
        .await
        .expect_err("always unavailable");
    assert_eq!(err.status(), Some(503), "{err}");

    let seen = server.seen();
    let count = |action: &str| seen.iter().filter(|s| s.action == action).count();
    assert_eq!(count("batches/markFailed"), 2);
    let errored = count("batches/markErrored");
    assert!(
        (2..1000).contains(&errored),
        "gave up after the deadline, {errored} attempts"
    );
    let body = &seen
        .iter()
        .find(|s| s.action == "batches/markErrored")
        .expect("seen")
        .body;
    assert_eq!(body["errorMessage"], "boom");
}

#[tokio::test]
async fn log_entry_adds_are_resent_only_when_surely_unprocessed() {
    let server = ScriptedServer::start(&[
        ("addExecutionLogEntry", &[503, 500]),
        ("updateExecutionLogEntry", &[500]),
    ])
    .await;
    let client = client_for(&server.url, "pw", "exec-retry");
    let entry = log_entry("out", None, None);

    // 503 is resent; the 500 that follows may have stored the entry, so it is returned.
    let err = client
        .add_execution_log_entry(&scripted_job(), &entry)
        .await
        .expect_err("500 is not resent");
    assert_eq!(err.status(), Some(500), "{err}");
    // Updates are idempotent, so a 500 is retried.
    client
        .update_execution_log_entry(&scripted_job(), 17, &entry)
        .await
        .expect("update succeeds after a retry");
    // The script is exhausted: the add now succeeds and returns the server's entry id.
    let entry_id = client
        .add_execution_log_entry(&scripted_job(), &entry)
        .await
        .expect("added");
    assert_eq!(entry_id, 17);

    let actions: Vec<String> = server.seen().into_iter().map(|s| s.action).collect();
    assert_eq!(
        actions,
        vec![
            "batches/addExecutionLogEntry",
            "batches/addExecutionLogEntry",
            "batches/updateExecutionLogEntry",
            "batches/updateExecutionLogEntry",
            "batches/addExecutionLogEntry",
        ]
    );
    let update = &server.seen()[2].body;
    assert_eq!(update["entryId"], 17);
    assert_eq!(update["jobId"], 42);
    assert_eq!(update["out"], "out");
}

#[tokio::test]
async fn heartbeats_and_dequeues_are_not_retried() {
    let server = ScriptedServer::start(&[("heartbeat", &[503]), ("dequeue", &[503])]).await;
    let client = client_for(&server.url, "pw", "exec-retry");
    let err = client
        .heartbeat_single("batches", &single_heartbeat(&client, None))
        .await
        .expect_err("503");
    assert!(err.is_transient(), "{err}");
    let err = client
        .dequeue(Some("batches"), &dequeue_request(&client, &[]))
        .await
        .expect_err("503");
    assert_eq!(err.status(), Some(503));
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].authorization, "token-executor pw");
    assert_eq!(seen[0].job_id, "", "queue routes carry no job headers");
}

#[tokio::test]
async fn an_unreadable_dequeued_job_is_handed_back_by_identity() {
    // A payload with invalid base64 file content: the job is ours on the frontend, so the client
    // must return enough to mark it failed instead of dropping it.
    let app = Router::new().route(
        "/.executors/queue/batches/dequeue",
        post(|| async {
            (
                StatusCode::OK,
                r#"{"version":2,"id":41,"token":"tok-41","files":{"input.json":{"content":"!!not base64!!"}}}"#,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let client = client_for(&url, "pw-unreadable-0123456789", "exec-1");
    let err = client
        .dequeue(Some("batches"), &dequeue_request(&client, &[]))
        .await
        .expect_err("the payload cannot be decoded");
    match err {
        QueueError::UnreadableJob { job, reason } => {
            assert_eq!(job.id, 41);
            assert_eq!(job.queue, "batches");
            assert_eq!(job.token.expose(), "tok-41");
            assert!(reason.contains("input.json"), "{reason}");
        }
        other => panic!("expected UnreadableJob, got {other:?}"),
    }
    server.abort();
}

/// Serves `GET /files/endless` as a body that never ends, `chunked` or with a huge announced
/// length, and counts the bytes it handed out.
async fn endless_file_server(
    announce_length: bool,
) -> (String, Arc<std::sync::atomic::AtomicUsize>, ScopedTask) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let app = Router::new().route(
        "/sg/.executors/files/{bucket}/{*key}",
        axum::routing::get(move || {
            let counter = counter.clone();
            async move {
                let endless = futures_util::stream::repeat_with(move || {
                    counter.fetch_add(CHUNK.len(), Ordering::Relaxed);
                    Ok::<_, std::convert::Infallible>(Bytes::from_static(&CHUNK))
                });
                let mut response = axum::body::Body::from_stream(endless).into_response();
                if announce_length {
                    response.headers_mut().insert(
                        axum::http::header::CONTENT_LENGTH,
                        axum::http::HeaderValue::from_static("1099511627776"),
                    );
                }
                response
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a local port");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/sg/"), served, ScopedTask(task))
}

/// Aborts its task when dropped.
struct ScopedTask(tokio::task::JoinHandle<()>);

impl Drop for ScopedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test]
async fn an_endless_file_download_stops_at_the_limit() {
    const LIMIT: usize = 1024 * 1024;
    for announce_length in [false, true] {
        let (url, served, _server) = endless_file_server(announce_length).await;
        let client = client_for(&url, "password", "exec-endless");
        let job = scripted_job();
        let download = client.get_file(&job, "batch-changes", "endless", LIMIT);
        // Without the limit the download would never end: the time bound only turns a hang
        // into a failure.
        let err = tokio::time::timeout(Duration::from_secs(60), download)
            .await
            .expect("the download ends")
            .expect_err("larger than the limit");
        let QueueError::TooLarge { limit, declared, .. } = &err else {
            panic!("not TooLarge: {err}");
        };
        assert_eq!(*limit, LIMIT);
        if announce_length {
            assert_eq!(*declared, Some(1_099_511_627_776));
            assert!(err.to_string().contains("announced 1099511627776 bytes"), "{err}");
        } else {
            assert_eq!(*declared, None);
        }
        assert!(!err.is_transient(), "never retried: {err}");
        let served = served.load(std::sync::atomic::Ordering::Relaxed);
        println!("endless file, length announced: {announce_length}: the server handed out {served} bytes");
    }
}
