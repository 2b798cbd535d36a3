//! Handlers of the executor queue protocol: dequeue, heartbeat, log entries, mark calls, files and
//! the token test route.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    auth::{self, JobScope},
    model::{KNOWN_QUEUES, MarkKind},
    server::{ApiError, ExecutorNameSeen, Shared},
    store::{HeartbeatQueues, LogEntryError, LogEntryFields, Telemetry},
    version,
};

/// Decodes a request body; malformed JSON gets the frontend's 400 text answer.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        ApiError::text(
            StatusCode::BAD_REQUEST,
            format!("Failed to unmarshal payload: {error}"),
        )
    })
}

fn require_executor_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        Err(ApiError::internal("worker hostname cannot be empty"))
    } else {
        Ok(())
    }
}

fn is_known_queue(queue: &str) -> bool {
    KNOWN_QUEUES.contains(&queue)
}

fn validate_queue_names(queues: &[String]) -> Result<(), ApiError> {
    let invalid: Vec<&str> = queues
        .iter()
        .map(String::as_str)
        .filter(|q| !is_known_queue(q))
        .collect();
    if invalid.is_empty() {
        Ok(())
    } else {
        Err(ApiError::internal(format!(
            "invalid queue name(s) {invalid:?}: known queues are {KNOWN_QUEUES:?}"
        )))
    }
}

/// Attaches the executor name for the request log.
fn with_executor(mut response: Response, executor: &str) -> Response {
    if !executor.is_empty() {
        response
            .extensions_mut()
            .insert(ExecutorNameSeen(executor.to_owned()));
    }
    response
}

fn unknown_route() -> Response {
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

// === dequeue ===

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DequeueRequest {
    #[serde(default)]
    queues: Vec<String>,
    #[serde(default)]
    executor_name: String,
    #[serde(default)]
    version: String,
}

/// `POST /.executors/queue/dequeue`
pub(crate) async fn dequeue_multi(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    dequeue(&shared, &headers, &body, None)
}

fn dequeue(shared: &Shared, headers: &HeaderMap, body: &[u8], path_queue: Option<&str>) -> Response {
    let mut executor = String::new();
    let result = (|| -> Result<Response, ApiError> {
        auth::check_general(shared, headers)?;
        let request: DequeueRequest = parse_body(body)?;
        executor = request.executor_name.clone();
        require_executor_name(&request.executor_name)?;
        let v2_payload = version::supports_v2_payload(&request.version).map_err(ApiError::internal)?;
        let queues = match path_queue {
            Some(queue) => vec![queue.to_owned()],
            None => {
                if request.queues.is_empty() {
                    return Err(ApiError::internal("queues must be set for multi-queue dequeue"));
                }
                validate_queue_names(&request.queues)?;
                request.queues
            }
        };
        let multi_queue = path_queue.is_none();
        let payload =
            shared.write(|store| store.dequeue(&queues, &request.executor_name, v2_payload, multi_queue));
        Ok(match payload {
            Some(payload) => Json(payload).into_response(),
            None => StatusCode::NO_CONTENT.into_response(),
        })
    })();
    with_executor(result.unwrap_or_else(IntoResponse::into_response), &executor)
}

// === heartbeat ===

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TelemetryWire {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    docker_version: String,
    #[serde(default)]
    executor_version: String,
    #[serde(default)]
    git_version: String,
    #[serde(default)]
    ignite_version: String,
    #[serde(default)]
    src_cli_version: String,
    #[serde(default)]
    prometheus_metrics: String,
}

impl From<TelemetryWire> for Telemetry {
    fn from(wire: TelemetryWire) -> Telemetry {
        Telemetry {
            os: wire.os,
            architecture: wire.architecture,
            docker_version: wire.docker_version,
            executor_version: wire.executor_version,
            git_version: wire.git_version,
            ignite_version: wire.ignite_version,
            src_cli_version: wire.src_cli_version,
            prometheus_metrics: wire.prometheus_metrics,
        }
    }
}

/// Job ids of single-queue heartbeats arrive as ints, floats or strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum LooseJobId {
    Int(i64),
    Float(f64),
    Text(String),
}

impl LooseJobId {
    fn parse(&self) -> Result<i64, ApiError> {
        match self {
            LooseJobId::Int(id) => Ok(*id),
            LooseJobId::Float(id) if id.fract() == 0.0 => Ok(*id as i64),
            LooseJobId::Float(id) => Err(ApiError::internal(format!("job id {id} is not an integer"))),
            LooseJobId::Text(text) => text
                .parse()
                .map_err(|_| ApiError::internal(format!("job id {text:?} is not an integer"))),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeartbeatV1Request {
    #[serde(default)]
    executor_name: String,
    #[serde(default)]
    job_ids: Option<Vec<LooseJobId>>,
    #[serde(flatten)]
    telemetry: TelemetryWire,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueueJobIds {
    queue_name: String,
    #[serde(default)]
    job_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeartbeatRequest {
    #[serde(default)]
    executor_name: String,
    #[serde(default)]
    queue_names: Vec<String>,
    #[serde(default)]
    job_ids_by_queue: Vec<QueueJobIds>,
    #[serde(flatten)]
    telemetry: TelemetryWire,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct HeartbeatResponse {
    known_ids: Vec<String>,
    cancel_ids: Vec<String>,
}

fn heartbeat_single(shared: &Shared, headers: &HeaderMap, body: &[u8], queue: &str) -> Response {
    let mut executor = String::new();
    let result = (|| -> Result<Response, ApiError> {
        auth::check_general(shared, headers)?;
        let request: HeartbeatV1Request = parse_body(body)?;
        executor = request.executor_name.clone();
        require_executor_name(&request.executor_name)?;
        let ids = request
            .job_ids
            .unwrap_or_default()
            .iter()
            .map(LooseJobId::parse)
            .collect::<Result<Vec<i64>, ApiError>>()?;
        let reported: Vec<(String, i64)> = ids.iter().map(|id| (queue.to_owned(), *id)).collect();
        let raw = ids.iter().map(i64::to_string).collect();
        let answer = shared.write(|store| {
            store.heartbeat(
                &request.executor_name,
                HeartbeatQueues::Single(queue.to_owned()),
                request.telemetry.into(),
                &reported,
                raw,
            )
        });
        let plain = |ids: Vec<(String, i64)>| ids.into_iter().map(|(_, id)| id.to_string()).collect();
        Ok(Json(HeartbeatResponse {
            known_ids: plain(answer.known),
            cancel_ids: plain(answer.cancel),
        })
        .into_response())
    })();
    with_executor(result.unwrap_or_else(IntoResponse::into_response), &executor)
}

/// `POST /.executors/queue/heartbeat`
pub(crate) async fn heartbeat_multi(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut executor = String::new();
    let result = (|| -> Result<Response, ApiError> {
        auth::check_general(&shared, &headers)?;
        let request: HeartbeatRequest = parse_body(&body)?;
        executor = request.executor_name.clone();
        require_executor_name(&request.executor_name)?;
        if request.queue_names.is_empty() {
            return Err(ApiError::internal(
                "queueNames must be set for multi-queue heartbeats",
            ));
        }
        validate_queue_names(&request.queue_names)?;
        let mut reported = Vec::new();
        let mut raw = Vec::new();
        for group in &request.job_ids_by_queue {
            if !request.queue_names.contains(&group.queue_name) {
                return Err(ApiError::internal(format!(
                    "job ids reported for queue {:?} which is not in queueNames",
                    group.queue_name
                )));
            }
            for id in &group.job_ids {
                let parsed = id.parse::<i64>().map_err(|_| {
                    ApiError::internal(format!(
                        "job id {id:?} of queue {:?} is not an integer",
                        group.queue_name
                    ))
                })?;
                reported.push((group.queue_name.clone(), parsed));
                raw.push(format!("{parsed}-{}", group.queue_name));
            }
        }
        let answer = shared.write(|store| {
            store.heartbeat(
                &request.executor_name,
                HeartbeatQueues::Multi(request.queue_names.clone()),
                request.telemetry.into(),
                &reported,
                raw,
            )
        });
        let qualified = |ids: Vec<(String, i64)>| {
            ids.into_iter()
                .map(|(queue, id)| format!("{id}-{queue}"))
                .collect()
        };
        Ok(Json(HeartbeatResponse {
            known_ids: qualified(answer.known),
            cancel_ids: qualified(answer.cancel),
        })
        .into_response())
    })();
    with_executor(result.unwrap_or_else(IntoResponse::into_response), &executor)
}

// === job routes ===

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogEntryWire {
    #[serde(default)]
    key: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    start_time: Option<String>,
    #[serde(default)]
    exit_code: Option<i64>,
    #[serde(default)]
    out: Option<String>,
    #[serde(default)]
    duration_ms: Option<i64>,
}

impl From<LogEntryWire> for LogEntryFields {
    fn from(wire: LogEntryWire) -> LogEntryFields {
        LogEntryFields {
            key: wire.key,
            command: wire.command,
            start_time: wire.start_time,
            exit_code: wire.exit_code,
            out: wire.out.unwrap_or_default(),
            duration_ms: wire.duration_ms,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddLogEntryRequest {
    #[serde(default)]
    executor_name: String,
    job_id: i64,
    #[serde(flatten)]
    entry: LogEntryWire,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateLogEntryRequest {
    #[serde(default)]
    executor_name: String,
    job_id: i64,
    entry_id: i64,
    #[serde(flatten)]
    entry: LogEntryWire,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MarkRequest {
    #[serde(default)]
    executor_name: String,
    job_id: i64,
    #[serde(default)]
    error_message: Option<String>,
}

fn log_entry_error(error: LogEntryError) -> ApiError {
    match error {
        LogEntryError::UnknownJob => ApiError::internal("unknown job"),
        LogEntryError::UnknownEntry => ApiError::internal("unknown execution log entry"),
    }
}

/// `POST /.executors/queue/<queue>/<action>`: the per-queue routes.
pub(crate) async fn queue_action(
    State(shared): State<Arc<Shared>>,
    Path((queue, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Like the real router, per-queue routes exist only for the queues the instance serves.
    if !is_known_queue(&queue) {
        return unknown_route();
    }
    match action.as_str() {
        "dequeue" => dequeue(&shared, &headers, &body, Some(&queue)),
        "heartbeat" => heartbeat_single(&shared, &headers, &body, &queue),
        "addExecutionLogEntry"
        | "updateExecutionLogEntry"
        | "markComplete"
        | "markErrored"
        | "markFailed" => {
            job_route(&shared, &headers, &body, &queue, &action).unwrap_or_else(IntoResponse::into_response)
        }
        _ => unknown_route(),
    }
}

fn job_route(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    queue: &str,
    action: &str,
) -> Result<Response, ApiError> {
    auth::check_job(shared, headers, JobScope::Queue(queue))?;
    match action {
        "addExecutionLogEntry" => {
            let request: AddLogEntryRequest = parse_body(body)?;
            require_executor_name(&request.executor_name)?;
            let entry_id = shared
                .write(|store| {
                    store.add_log_entry(
                        queue,
                        request.job_id,
                        &request.executor_name,
                        request.entry.into(),
                    )
                })
                .map_err(log_entry_error)?;
            Ok(Json(entry_id).into_response())
        }
        "updateExecutionLogEntry" => {
            let request: UpdateLogEntryRequest = parse_body(body)?;
            require_executor_name(&request.executor_name)?;
            shared
                .write(|store| {
                    store.update_log_entry(
                        queue,
                        request.job_id,
                        &request.executor_name,
                        request.entry_id,
                        request.entry.into(),
                    )
                })
                .map_err(log_entry_error)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => {
            let kind = match action {
                "markComplete" => MarkKind::Complete,
                "markErrored" => MarkKind::Errored,
                _ => MarkKind::Failed,
            };
            let request: MarkRequest = parse_body(body)?;
            require_executor_name(&request.executor_name)?;
            let accepted = shared.write(|store| {
                store.mark(
                    queue,
                    request.job_id,
                    &request.executor_name,
                    kind,
                    request.error_message,
                    shared.max_failures,
                )
            });
            if accepted {
                Ok(StatusCode::NO_CONTENT.into_response())
            } else {
                Err(ApiError::text(StatusCode::NOT_FOUND, "unknown job"))
            }
        }
    }
}

// === files and token test ===

/// `GET`/`HEAD /.executors/files/<bucket>/<key...>`
pub(crate) async fn file(
    State(shared): State<Arc<Shared>>,
    Path((bucket, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(error) = auth::check_job(&shared, &headers, JobScope::Files { bucket: &bucket }) {
        return error.into_response();
    }
    match shared.read(|store| store.file(&bucket, &key)) {
        Some(content) => ([(CONTENT_TYPE, "application/octet-stream")], content).into_response(),
        None => (StatusCode::NOT_FOUND, "file not found\n").into_response(),
    }
}

/// `GET /.executors/test/auth`: lets `executor validate` check its access token.
pub(crate) async fn test_auth(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    match auth::check_general(&shared, &headers) {
        Ok(()) => "ok".into_response(),
        Err(error) => error.into_response(),
    }
}
