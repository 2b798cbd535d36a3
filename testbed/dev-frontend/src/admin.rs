//! The unauthenticated `/dev/` JSON API that tests and the demo use to drive the frontend.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, de::DeserializeOwned};

use crate::{
    Error,
    model::{KNOWN_QUEUES, NewJob},
    server::{ApiError, Shared},
    store::CancelError,
};

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/dev/jobs", post(create_job).get(list_jobs))
        .route("/dev/jobs/{queue}/{id}", get(show_job))
        .route("/dev/jobs/{queue}/{id}/cancel", post(cancel_job))
        .route("/dev/executors", get(list_executors))
        .route("/dev/repos", post(create_repo))
        .route("/dev/files", post(add_file))
        .route("/dev/requests", get(list_requests))
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::Json(StatusCode::BAD_REQUEST, message.into())
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| bad_request(format!("invalid request body: {error}")))
}

fn parse_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| bad_request(format!("job id {id:?} is not an integer")))
}

async fn create_job(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Response, ApiError> {
    let job: NewJob = parse(&body)?;
    if !KNOWN_QUEUES.contains(&job.queue.as_str()) {
        return Err(bad_request(format!(
            "unknown queue {:?}: known queues are {KNOWN_QUEUES:?}",
            job.queue
        )));
    }
    let id = shared.write(|store| store.enqueue(job));
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response())
}

async fn list_jobs(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.read(|store| store.jobs())).into_response()
}

async fn show_job(
    State(shared): State<Arc<Shared>>,
    Path((queue, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    shared
        .read(|store| store.job(&queue, id))
        .map(|job| Json(job).into_response())
        .ok_or_else(|| ApiError::Json(StatusCode::NOT_FOUND, format!("job {queue}/{id} not found")))
}

async fn cancel_job(
    State(shared): State<Arc<Shared>>,
    Path((queue, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match shared.write(|store| store.cancel(&queue, id)) {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(CancelError::NotFound) => Err(ApiError::Json(
            StatusCode::NOT_FOUND,
            format!("job {queue}/{id} not found"),
        )),
        Err(CancelError::AlreadyFinished(state)) => Err(ApiError::Json(
            StatusCode::CONFLICT,
            format!("job {queue}/{id} is already {}", state.as_str()),
        )),
    }
}

async fn list_executors(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.read(|store| store.executors())).into_response()
}

async fn list_requests(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.read(|store| store.requests())).into_response()
}

#[derive(Deserialize)]
struct CreateRepoRequest {
    name: String,
    #[serde(default)]
    files: BTreeMap<String, String>,
    /// Symbolic links to commit: path → target.
    #[serde(default)]
    links: BTreeMap<String, String>,
}

async fn create_repo(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Response, ApiError> {
    let request: CreateRepoRequest = parse(&body)?;
    match crate::git::create_repo(&shared, &request.name, &request.files, &request.links).await {
        Ok(commit) => {
            Ok((StatusCode::CREATED, Json(serde_json::json!({ "commit": commit }))).into_response())
        }
        Err(error @ (Error::InvalidRepoName { .. } | Error::InvalidRepoFile { .. })) => {
            Err(bad_request(error.to_string()))
        }
        Err(error) => Err(ApiError::internal(error.to_string())),
    }
}

#[derive(Deserialize)]
struct AddFileRequest {
    bucket: String,
    key: String,
    #[serde(default)]
    content: String,
}

async fn add_file(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Response, ApiError> {
    let request: AddFileRequest = parse(&body)?;
    if request.bucket.is_empty() || request.key.is_empty() {
        return Err(bad_request("bucket and key must not be empty"));
    }
    shared.write(|store| store.add_file(&request.bucket, &request.key, request.content.into_bytes()));
    Ok(StatusCode::NO_CONTENT.into_response())
}
