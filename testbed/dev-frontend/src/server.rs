//! Shared server state, the HTTP router, the request log and the stalled-job resetter.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get, post},
};
use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{admin, git, model::RequestRecord, pages, protocol, store::Store};

/// Log entries carry whole step outputs, so allow far more than axum's 2 MiB default.
const BODY_LIMIT_BYTES: usize = 64 * 1024 * 1024;

/// State shared by every handler and the resetter.
pub(crate) struct Shared {
    // NB: a std mutex on purpose: every critical section is short and never spans an `.await`.
    store: Mutex<Store>,
    /// Bumped on every state change so waiters re-check their condition instead of sleeping.
    changes: watch::Sender<u64>,
    pub(crate) access_token: Option<String>,
    pub(crate) stalled_after: Duration,
    pub(crate) max_failures: u32,
    pub(crate) instance_version: String,
    /// Absolute path that holds the bare repositories `<name>.git`.
    pub(crate) repos_dir: PathBuf,
    /// Serialises repository creation so two writers never push to one bare repo at once.
    pub(crate) repo_creation: tokio::sync::Mutex<()>,
}

impl Shared {
    pub(crate) fn new(
        access_token: Option<String>,
        stalled_after: Duration,
        max_failures: u32,
        instance_version: String,
        repos_dir: PathBuf,
    ) -> Shared {
        Shared {
            store: Mutex::new(Store::default()),
            changes: watch::Sender::new(0),
            access_token,
            stalled_after,
            max_failures,
            instance_version,
            repos_dir,
            repo_creation: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves plain data behind that is still usable for tests.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the store without signalling a change.
    pub(crate) fn read<R>(&self, read: impl FnOnce(&Store) -> R) -> R {
        read(&self.lock())
    }

    /// Mutates the store and wakes everyone waiting for a change.
    pub(crate) fn write<R>(&self, write: impl FnOnce(&mut Store) -> R) -> R {
        let result = write(&mut self.lock());
        self.notify();
        result
    }

    fn notify(&self) {
        self.changes
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// Mutates without waking waiters, for bookkeeping nobody waits on or for no-op sweeps.
    fn write_quietly<R>(&self, write: impl FnOnce(&mut Store) -> R) -> R {
        write(&mut self.lock())
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// An error answer shaped like the frontend's: plain text (possibly empty) or `{"error": ...}`.
#[derive(Debug)]
pub(crate) enum ApiError {
    Text(StatusCode, String),
    Json(StatusCode, String),
}

impl ApiError {
    /// A handler failure: the frontend answers those with 500 and a JSON error.
    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        ApiError::Json(StatusCode::INTERNAL_SERVER_ERROR, message.into())
    }

    pub(crate) fn text(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError::Text(status, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Text(status, message) if message.is_empty() => status.into_response(),
            ApiError::Text(status, message) => (status, format!("{message}\n")).into_response(),
            ApiError::Json(status, message) => {
                (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
            }
        }
    }
}

/// Response extension through which handlers tell the request log which executor called, when
/// the name came in the body rather than the `X-Sourcegraph-Executor-Name` header.
#[derive(Clone)]
pub(crate) struct ExecutorNameSeen(pub(crate) String);

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/.executors/queue/dequeue", post(protocol::dequeue_multi))
        .route("/.executors/queue/heartbeat", post(protocol::heartbeat_multi))
        .route("/.executors/queue/{queue}/{action}", post(protocol::queue_action))
        .route("/.executors/files/{bucket}/{*key}", get(protocol::file))
        .route("/.executors/test/auth", get(protocol::test_auth))
        .route("/.executors/git/{*path}", any(git::serve))
        .merge(admin::routes())
        .merge(pages::routes())
        .layer(middleware::from_fn_with_state(shared.clone(), record_request))
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .with_state(shared)
}

/// Remembers protocol requests (`/.executors/...`) without any header values besides the executor name.
async fn record_request(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let at = Timestamp::now();
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let header_executor = request
        .headers()
        .get("X-Sourcegraph-Executor-Name")
        .and_then(|value| value.to_str().ok())
        .filter(|name| !name.is_empty())
        .map(str::to_owned);
    let response = next.run(request).await;
    if path.starts_with("/.executors/") {
        let executor_name = header_executor.or_else(|| {
            response
                .extensions()
                .get::<ExecutorNameSeen>()
                .map(|seen| seen.0.clone())
        });
        let status = response.status().as_u16();
        tracing::debug!(%method, %path, status, executor = ?executor_name, "handled protocol request");
        shared.write_quietly(|store| {
            store.record_request(RequestRecord {
                at,
                method,
                path,
                status,
                executor_name,
            })
        });
    }
    response
}

/// Periodically re-queues (or fails) processing jobs whose executor stopped heartbeating for them.
pub(crate) async fn run_resetter(shared: Arc<Shared>, shutdown: CancellationToken) {
    // Check several times per stall period so short test periods are honoured promptly.
    let interval = (shared.stalled_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let stalled_after = SignedDuration::try_from(shared.stalled_after).unwrap_or(SignedDuration::MAX);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let outcome = shared.write_quietly(|store| store.reset_stalled(Timestamp::now(), stalled_after));
        if outcome.requeued.is_empty() && outcome.failed.is_empty() {
            continue;
        }
        shared.notify();
        for (queue, id) in &outcome.requeued {
            tracing::info!(%queue, job_id = id, "re-queued stalled job");
        }
        for (queue, id) in &outcome.failed {
            tracing::info!(%queue, job_id = id, "failed job that stalled too often");
        }
    }
}
