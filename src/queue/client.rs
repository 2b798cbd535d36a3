//! HTTP client for the frontend's executor queue routes: heartbeats, dequeue, log entries, mark calls, files.

use std::{error::Error as StdError, fmt, sync::Arc, time::Duration};

use reqwest::{
    Method, StatusCode, Url,
    header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue},
};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    run_key::RunKey,
    types::{
        AddExecutionLogEntryRequest, DequeueRequest, ExecutionLogEntry, HeartbeatRequestMulti,
        HeartbeatRequestV1, HeartbeatResponse, Job, MarkRequest, Secret, UpdateExecutionLogEntryRequest,
    },
};
use crate::{
    metrics::{Metrics, QueueOp},
    retry::{RetryPolicy, retry_transient, retry_when},
};

/// Limit for one request/response exchange on the queue routes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit for establishing a connection (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Workspace files can be large, so downloads get longer than the other calls.
const FILE_TIMEOUT: Duration = Duration::from_secs(300);
/// How much of an error response body ends up in a [`QueueError::Status`].
const ERROR_BODY_MAX_CHARS: usize = 512;
/// How much of an error response body is read at all.
const ERROR_BODY_MAX_BYTES: usize = 64 * 1024;

const JOB_ID_HEADER: HeaderName = HeaderName::from_static("x-sourcegraph-job-id");
const EXECUTOR_NAME_HEADER: HeaderName = HeaderName::from_static("x-sourcegraph-executor-name");

/// What the client needs to talk to the frontend.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `EXECUTOR_FRONTEND_URL`; may carry a path prefix (`https://host/sg`).
    pub frontend_url: String,
    /// `EXECUTOR_FRONTEND_PASSWORD`, sent as `Authorization: token-executor <password>`.
    pub password: Secret<String>,
    /// Name under which this executor heartbeats and owns jobs.
    pub executor_name: String,
    /// `User-Agent` of every request, e.g. `kube-executor/0.1.0`.
    pub user_agent: String,
}

/// Where a job's routes live and how they authenticate.
#[derive(Debug, Clone)]
pub struct JobHandle {
    pub id: i64,
    /// `job.queue` if set, else the single configured queue.
    pub queue: String,
    /// The job token from the dequeue response; empty on very old frontends.
    pub token: Secret<String>,
}

impl JobHandle {
    /// The routes of the job `key`, authenticated with its job token.
    pub fn new(key: &RunKey, token: Secret<String>) -> Self {
        Self {
            id: key.id,
            queue: key.queue.clone(),
            token,
        }
    }
}

/// What the frontend did with a `markComplete` / `markErrored` / `markFailed` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkOutcome {
    /// The frontend recorded the final state.
    Recorded,
    /// 404: the frontend no longer considers the job ours or processing (it was reset, cancelled
    /// or finished elsewhere). Log it; retrying cannot help.
    NotOwned,
}

/// A failed frontend call. Never contains the password or a job token.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{op}: cannot connect to the frontend: {}", error_chain(source))]
    Connect {
        op: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{op}: the frontend did not answer in time: {}", error_chain(source))]
    Timeout {
        op: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// The connection failed after the request may have reached the frontend.
    #[error("{op}: request to the frontend failed: {}", error_chain(source))]
    Transport {
        op: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{op}: the frontend answered HTTP {status}{}", body_suffix(body))]
    Status {
        op: &'static str,
        status: u16,
        /// The response body, truncated, with any secret this client knows replaced.
        body: String,
    },
    /// `reason` never quotes the response: a job payload can hold secrets no redactor knows yet.
    #[error("{op}: cannot decode the frontend's response: {reason}")]
    Decode { op: &'static str, reason: String },
    /// A downloaded file would not fit the room left for it; nothing past `limit` was read.
    #[error("{op}: the file is larger than the {limit} bytes left for it{}", declared_size(*.declared))]
    TooLarge {
        op: &'static str,
        limit: usize,
        /// The size the frontend announced (`Content-Length`), when it did.
        declared: Option<u64>,
    },
    /// A dequeued job whose payload cannot be read: it is ours on the frontend now, so it must
    /// be reported (failed) rather than dropped.
    #[error("dequeue: job {} has a payload that cannot be read: {reason}", .job.id)]
    UnreadableJob { job: JobHandle, reason: String },
    #[error("{op}: cannot encode the request body: {source}")]
    Encode {
        op: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid frontend URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("{op}: invalid {what} {value:?}: {reason}")]
    InvalidRouteSegment {
        op: &'static str,
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    /// A credential or name contains characters that cannot go into an HTTP header.
    #[error("{op}: the {header} header value contains characters not allowed in HTTP headers")]
    InvalidHeader { op: &'static str, header: &'static str },
    #[error("cannot build the HTTP client: {}", error_chain(source))]
    BuildClient {
        #[source]
        source: reqwest::Error,
    },
}

impl QueueError {
    fn decode(op: &'static str, source: &serde_json::Error) -> Self {
        Self::Decode {
            op,
            reason: super::types::payload_error_reason(source),
        }
    }

    /// Whether trying again later may succeed: connection problems, timeouts, 408, 429 and 5xx
    /// (Sourcegraph reports its own handler errors as 500).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Timeout { .. } | Self::Transport { .. } => true,
            Self::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            Self::Decode { .. }
            | Self::TooLarge { .. }
            | Self::UnreadableJob { .. }
            | Self::Encode { .. }
            | Self::InvalidUrl { .. }
            | Self::InvalidRouteSegment { .. }
            | Self::InvalidHeader { .. }
            | Self::BuildClient { .. } => false,
        }
    }

    /// Whether the frontend surely did not act on the request, so sending it again cannot apply it
    /// twice: no connection was made, or the frontend (or a proxy in front of it) refused it as
    /// overloaded or unavailable.
    pub fn request_surely_unprocessed(&self) -> bool {
        match self {
            Self::Connect { .. } => true,
            Self::Status { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            _ => false,
        }
    }

    /// A short, fixed label for counting failures by kind.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Timeout { .. } => "timeout",
            Self::Transport { .. } => "transport",
            Self::Status { status, .. } => match status {
                401 | 403 => "unauthorized",
                404 => "not_found",
                429 => "rate_limited",
                400..=499 => "client_error",
                500..=599 => "server_error",
                _ => "unexpected_status",
            },
            Self::Decode { .. } | Self::UnreadableJob { .. } => "decode",
            Self::TooLarge { .. } => "too_large",
            Self::Encode { .. } => "encode",
            Self::InvalidUrl { .. } | Self::InvalidRouteSegment { .. } => "invalid_url",
            Self::InvalidHeader { .. } => "invalid_header",
            Self::BuildClient { .. } => "build_client",
        }
    }

    /// The HTTP status the frontend answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn from_reqwest(op: &'static str, source: reqwest::Error) -> Self {
        // A connect timeout is both; report it as a connect error because the request was not sent.
        if source.is_connect() {
            Self::Connect { op, source }
        } else if source.is_timeout() {
            Self::Timeout { op, source }
        } else {
            Self::Transport { op, source }
        }
    }
}

fn body_suffix(body: &str) -> String {
    if body.is_empty() {
        " with an empty body".to_owned()
    } else {
        format!(": {body}")
    }
}

/// `outer: inner: innermost`, because reqwest's own message omits the cause (e.g. "connection refused").
fn error_chain(err: &dyn StdError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Client for the frontend's `/.executors/` routes.
///
/// Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct QueueClient {
    inner: Arc<Inner>,
    /// Retries of log entry, mark and file calls.
    reporting_retry: RetryPolicy,
    /// Where every call is counted and timed (`src_apiworker_apiclient_*`), when set.
    metrics: Option<Metrics>,
}

struct Inner {
    http: reqwest::Client,
    /// The frontend URL; routes are appended to its path.
    base: Url,
    password: Secret<String>,
    executor_name: String,
}

impl fmt::Debug for QueueClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueClient")
            .field("frontend_url", &self.inner.base.as_str())
            .field("executor_name", &self.inner.executor_name)
            .field("reporting_retry", &self.reporting_retry)
            .finish_non_exhaustive()
    }
}

/// How a request authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    /// The shared executor password (queue routes).
    Executor,
    /// The job's own token (job routes, files).
    Job(&'a JobHandle),
}

impl QueueClient {
    /// Checks the options and builds the HTTP client.
    ///
    /// # Errors
    /// [`QueueError::InvalidUrl`] when `frontend_url` is not an absolute http(s) URL without
    /// credentials, query or fragment; [`QueueError::InvalidHeader`] when the password, executor name
    /// or user agent cannot be sent in a header; [`QueueError::BuildClient`] if TLS setup fails.
    pub fn new(opts: ClientOptions) -> Result<Self, QueueError> {
        let base = parse_frontend_url(&opts.frontend_url)?;
        let op = "new client";
        header_value(
            op,
            "Authorization",
            &format!("token-executor {}", opts.password.expose()),
        )?;
        header_value(op, "X-Sourcegraph-Executor-Name", &opts.executor_name)?;
        header_value(op, "User-Agent", &opts.user_agent)?;
        install_tls_provider();
        let http = reqwest::Client::builder()
            .user_agent(opts.user_agent)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // A redirect would turn a POST into a GET and may drop auth; report it instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|source| QueueError::BuildClient { source })?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                password: opts.password,
                executor_name: opts.executor_name,
            }),
            reporting_retry: RetryPolicy::reporting(),
            metrics: None,
        })
    }

    /// Counts and times every call in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Runs `call`, counting it under `op` with its time, retries included.
    async fn observed<T>(
        &self,
        op: QueueOp,
        call: impl Future<Output = Result<T, QueueError>>,
    ) -> Result<T, QueueError> {
        let started = std::time::Instant::now();
        let result = call.await;
        if let Some(metrics) = &self.metrics {
            metrics.observe_queue_call(op, started.elapsed(), result.is_ok());
        }
        result
    }

    /// Replaces [`RetryPolicy::reporting`] as the retry policy of log entry, mark and file calls.
    pub fn with_reporting_retry(mut self, policy: RetryPolicy) -> Self {
        self.reporting_retry = policy;
        self
    }

    /// The name this executor reports in heartbeats and job requests.
    pub fn executor_name(&self) -> &str {
        &self.inner.executor_name
    }

    /// Single-queue heartbeat: `POST /.executors/queue/<queue>/heartbeat`. Not retried; the
    /// heartbeat loop tries again on its next tick.
    pub async fn heartbeat_single(
        &self,
        queue: &str,
        req: &HeartbeatRequestV1,
    ) -> Result<HeartbeatResponse, QueueError> {
        self.observed(QueueOp::Heartbeat, async {
            let op = "heartbeat";
            let url = self.route(
                op,
                &[".executors", "queue"],
                &[("queue name", queue)],
                &["heartbeat"],
            )?;
            self.post_for_json(op, url, req).await
        })
        .await
    }

    /// Multi-queue heartbeat: `POST /.executors/queue/heartbeat`. Not retried.
    pub async fn heartbeat_multi(
        &self,
        req: &HeartbeatRequestMulti,
    ) -> Result<HeartbeatResponse, QueueError> {
        self.observed(QueueOp::Heartbeat, async {
            let op = "heartbeat";
            let url = self.route(op, &[".executors", "queue", "heartbeat"], &[], &[])?;
            self.post_for_json(op, url, req).await
        })
        .await
    }

    /// POSTs `body` on a queue route with the executor token and decodes a 200 answer.
    async fn post_for_json<B: Serialize, T: DeserializeOwned>(
        &self,
        op: &'static str,
        url: Url,
        body: &B,
    ) -> Result<T, QueueError> {
        let response = self
            .send(op, Method::POST, url, Auth::Executor, Some(body), None)
            .await?;
        let response = self
            .check_status(op, response, &[StatusCode::OK], Auth::Executor)
            .await?;
        decode_json(op, response).await
    }

    /// Asks for a job: `POST /.executors/queue/<queue>/dequeue`, or the multi-queue route
    /// `/.executors/queue/dequeue` when `queue` is `None`. `Ok(None)` when there is nothing to do
    /// (204). Not retried: the dequeue loop backs off itself.
    pub async fn dequeue(
        &self,
        queue: Option<&str>,
        req: &DequeueRequest,
    ) -> Result<Option<Job>, QueueError> {
        self.observed(QueueOp::Dequeue, async {
            let op = "dequeue";
            let url = match queue {
                Some(queue) => self.route(
                    op,
                    &[".executors", "queue"],
                    &[("queue name", queue)],
                    &["dequeue"],
                )?,
                None => self.route(op, &[".executors", "queue", "dequeue"], &[], &[])?,
            };
            let response = self
                .send(op, Method::POST, url, Auth::Executor, Some(req), None)
                .await?;
            let response = self
                .check_status(
                    op,
                    response,
                    &[StatusCode::OK, StatusCode::NO_CONTENT],
                    Auth::Executor,
                )
                .await?;
            if response.status() == StatusCode::NO_CONTENT {
                return Ok(None);
            }
            let bytes = response
                .bytes()
                .await
                .map_err(|err| QueueError::from_reqwest(op, err))?;
            match serde_json::from_slice::<Job>(&bytes) {
                Ok(job) => Ok(Some(job)),
                Err(source) => {
                    // The frontend now considers the job ours: if at least its identity can be read,
                    // hand it back so it can be marked failed with the reason instead of hanging
                    // until the frontend's resetter gives up on it.
                    #[derive(serde::Deserialize)]
                    struct Identity {
                        id: i64,
                        #[serde(default)]
                        token: String,
                        #[serde(default)]
                        queue: String,
                    }
                    match serde_json::from_slice::<Identity>(&bytes) {
                        Ok(identity) => Err(QueueError::UnreadableJob {
                            job: JobHandle {
                                id: identity.id,
                                queue: if identity.queue.is_empty() {
                                    queue.unwrap_or_default().to_string()
                                } else {
                                    identity.queue
                                },
                                token: Secret::new(identity.token),
                            },
                            reason: super::types::payload_error_reason(&source),
                        }),
                        Err(_) => Err(QueueError::decode(op, &source)),
                    }
                }
            }
        })
        .await
    }

    /// Creates a log entry for the job and returns its ID.
    ///
    /// Retried only while the frontend surely has not stored the entry (see
    /// [`QueueError::request_surely_unprocessed`]): a blind retry could store it twice.
    pub async fn add_execution_log_entry(
        &self,
        job: &JobHandle,
        entry: &ExecutionLogEntry,
    ) -> Result<i64, QueueError> {
        self.observed(QueueOp::AddExecutionLogEntry, async {
            let op = "addExecutionLogEntry";
            let url = self.job_route(op, job, "addExecutionLogEntry")?;
            let body = AddExecutionLogEntryRequest {
                executor_name: self.executor_name(),
                job_id: job.id,
                entry,
            };
            retry_when(
                op,
                self.reporting_retry,
                QueueError::request_surely_unprocessed,
                || async {
                    let response = self
                        .send(op, Method::POST, url.clone(), Auth::Job(job), Some(&body), None)
                        .await?;
                    let response = self
                        .check_status(op, response, &[StatusCode::OK], Auth::Job(job))
                        .await?;
                    decode_json(op, response).await
                },
            )
            .await
        })
        .await
    }

    /// Replaces a log entry with `entry` (the whole entry, not a delta), retrying transient failures
    /// (repeating an update is harmless).
    pub async fn update_execution_log_entry(
        &self,
        job: &JobHandle,
        entry_id: i64,
        entry: &ExecutionLogEntry,
    ) -> Result<(), QueueError> {
        self.observed(QueueOp::UpdateExecutionLogEntry, async {
            let op = "updateExecutionLogEntry";
            let url = self.job_route(op, job, "updateExecutionLogEntry")?;
            let body = UpdateExecutionLogEntryRequest {
                executor_name: self.executor_name(),
                job_id: job.id,
                entry_id,
                entry,
            };
            retry_transient(op, self.reporting_retry, || async {
                let response = self
                    .send(op, Method::POST, url.clone(), Auth::Job(job), Some(&body), None)
                    .await?;
                self.check_status(
                    op,
                    response,
                    &[StatusCode::OK, StatusCode::NO_CONTENT],
                    Auth::Job(job),
                )
                .await
                .map(drop)
            })
            .await
        })
        .await
    }

    /// Reports success (`markComplete`), retrying transient failures.
    pub async fn mark_complete(&self, job: &JobHandle) -> Result<MarkOutcome, QueueError> {
        self.observed(QueueOp::MarkComplete, self.mark("markComplete", job, None))
            .await
    }

    /// Reports a failure the frontend may retry (`markErrored`), retrying transient failures.
    pub async fn mark_errored(&self, job: &JobHandle, message: &str) -> Result<MarkOutcome, QueueError> {
        self.observed(QueueOp::MarkErrored, self.mark("markErrored", job, Some(message)))
            .await
    }

    /// Reports a final failure (`markFailed`), retrying transient failures.
    pub async fn mark_failed(&self, job: &JobHandle, message: &str) -> Result<MarkOutcome, QueueError> {
        self.observed(QueueOp::MarkFailed, self.mark("markFailed", job, Some(message)))
            .await
    }

    /// Downloads a workspace file: `GET /.executors/files/<bucket>/<key>`, retrying transient
    /// failures. `key` may contain `/` separators.
    ///
    /// At most `limit` bytes are read: a file announced or found to be larger ends the download
    /// with [`QueueError::TooLarge`] as soon as that is known, so a huge file never sits in memory.
    pub async fn get_file(
        &self,
        job: &JobHandle,
        bucket: &str,
        key: &str,
        limit: usize,
    ) -> Result<Vec<u8>, QueueError> {
        let op = "getFile";
        let mut dynamic = vec![("bucket", bucket)];
        dynamic.extend(key.split('/').map(|segment| ("file key segment", segment)));
        let url = self.route(op, &[".executors", "files"], &dynamic, &[])?;
        let started = std::time::Instant::now();
        let result = retry_transient(op, self.reporting_retry, || async {
            let response = self
                .send::<()>(
                    op,
                    Method::GET,
                    url.clone(),
                    Auth::Job(job),
                    None,
                    Some(FILE_TIMEOUT),
                )
                .await?;
            let response = self
                .check_status(op, response, &[StatusCode::OK], Auth::Job(job))
                .await?;
            read_at_most(op, response, limit).await
        })
        .await;
        if let Some(metrics) = &self.metrics {
            metrics.observe_file_get(started.elapsed(), result.is_ok());
        }
        result
    }

    async fn mark(
        &self,
        op: &'static str,
        job: &JobHandle,
        error_message: Option<&str>,
    ) -> Result<MarkOutcome, QueueError> {
        let url = self.job_route(op, job, op)?;
        let body = MarkRequest {
            executor_name: self.executor_name(),
            job_id: job.id,
            error_message,
        };
        retry_transient(op, self.reporting_retry, || async {
            let response = self
                .send(op, Method::POST, url.clone(), Auth::Job(job), Some(&body), None)
                .await?;
            if response.status() == StatusCode::NOT_FOUND {
                return Ok(MarkOutcome::NotOwned);
            }
            self.check_status(
                op,
                response,
                &[StatusCode::OK, StatusCode::NO_CONTENT],
                Auth::Job(job),
            )
            .await
            .map(|_| MarkOutcome::Recorded)
        })
        .await
    }

    /// `/.executors/queue/<job queue>/<endpoint>`.
    fn job_route(
        &self,
        op: &'static str,
        job: &JobHandle,
        endpoint: &'static str,
    ) -> Result<Url, QueueError> {
        self.route(
            op,
            &[".executors", "queue"],
            &[("queue name", &job.queue)],
            &[endpoint],
        )
    }

    /// Appends `fixed_prefix`, the checked `dynamic` segments, then `fixed_suffix` to the
    /// frontend URL's path, percent-encoding each segment.
    fn route(
        &self,
        op: &'static str,
        fixed_prefix: &[&str],
        dynamic: &[(&'static str, &str)],
        fixed_suffix: &[&str],
    ) -> Result<Url, QueueError> {
        for (what, value) in dynamic {
            check_segment(op, what, value)?;
        }
        Ok(join_route(
            &self.inner.base,
            fixed_prefix
                .iter()
                .copied()
                .chain(dynamic.iter().map(|(_, value)| *value))
                .chain(fixed_suffix.iter().copied()),
        ))
    }

    async fn send<B: Serialize + ?Sized>(
        &self,
        op: &'static str,
        method: Method,
        url: Url,
        auth: Auth<'_>,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, QueueError> {
        let mut request = self.inner.http.request(method, url);
        match auth {
            Auth::Executor => {
                request = request.header(AUTHORIZATION, self.executor_authorization(op)?);
            }
            Auth::Job(job) => {
                let authorization = if job.token.expose().is_empty() {
                    // Frontends that predate job tokens accept the executor password here.
                    self.executor_authorization(op)?
                } else {
                    sensitive_header_value(op, "Authorization", &format!("Bearer {}", job.token.expose()))?
                };
                request = request
                    .header(AUTHORIZATION, authorization)
                    .header(JOB_ID_HEADER, HeaderValue::from(job.id))
                    .header(
                        EXECUTOR_NAME_HEADER,
                        header_value(op, "X-Sourcegraph-Executor-Name", &self.inner.executor_name)?,
                    );
            }
        }
        if let Some(body) = body {
            let bytes = serde_json::to_vec(body).map_err(|source| QueueError::Encode { op, source })?;
            request = request
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(bytes);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request
            .send()
            .await
            .map_err(|err| QueueError::from_reqwest(op, err))?;
        tracing::debug!(op, status = response.status().as_u16(), "frontend answered");
        Ok(response)
    }

    fn executor_authorization(&self, op: &'static str) -> Result<HeaderValue, QueueError> {
        sensitive_header_value(
            op,
            "Authorization",
            &format!("token-executor {}", self.inner.password.expose()),
        )
    }

    /// Passes the response through if its status is one of `accepted`; otherwise reads (part of)
    /// the body into a [`QueueError::Status`] with known secrets blanked out.
    async fn check_status(
        &self,
        op: &'static str,
        response: reqwest::Response,
        accepted: &[StatusCode],
        auth: Auth<'_>,
    ) -> Result<reqwest::Response, QueueError> {
        let status = response.status();
        if accepted.contains(&status) {
            return Ok(response);
        }
        let raw = read_prefix(response, ERROR_BODY_MAX_BYTES).await;
        let mut secrets = vec![self.inner.password.expose().as_str()];
        if let Auth::Job(job) = auth {
            secrets.push(job.token.expose().as_str());
        }
        Err(QueueError::Status {
            op,
            status: status.as_u16(),
            body: sanitize_body(&String::from_utf8_lossy(&raw), &secrets),
        })
    }
}

/// Installs ring as the process's TLS crypto provider unless one is installed already: reqwest is
/// built without a provider of its own and would otherwise panic on the first client build.
fn install_tls_provider() {
    // An error only means another provider was installed first; reqwest uses whichever is there.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn parse_frontend_url(raw: &str) -> Result<Url, QueueError> {
    parse_http_url(raw.trim_end_matches('/')).map_err(|error| match error {
        // Such credentials would show in error messages; the password has its own setting.
        HttpUrlError::UserInfo => QueueError::InvalidUrl {
            url: "[redacted: the URL contains credentials]".to_owned(),
            reason: "it must not contain credentials; set EXECUTOR_FRONTEND_PASSWORD instead".to_owned(),
        },
        HttpUrlError::Invalid(reason) => QueueError::InvalidUrl {
            url: raw.to_owned(),
            reason,
        },
    })
}

/// Why [`parse_http_url`] rejected a URL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HttpUrlError {
    /// The URL has `user[:password]@`; the caller must not quote it.
    UserInfo,
    Invalid(String),
}

/// The one check of the frontend's and the node exporters' URLs: `http(s)://host[:port][/path]`,
/// host a DNS name, an IPv4 address or a bracketed IPv6 address, no credentials, query or fragment.
///
/// NB: the `url` crate silently drops tabs and newlines, trims spaces and accepts `http:host`;
/// those are rejected here so that the URL used is the one written.
pub(crate) fn parse_http_url(text: &str) -> Result<Url, HttpUrlError> {
    let invalid = |reason: &str| Err(HttpUrlError::Invalid(reason.to_owned()));
    let Some((_, rest)) = text.split_once("://") else {
        return invalid("it is a relative URL: no scheme:// prefix");
    };
    let authority = &rest[..rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len())];
    // Checked before parsing so that no later message quotes a URL with a password in it.
    if authority.contains('@') {
        return Err(HttpUrlError::UserInfo);
    }
    let url = Url::parse(text).map_err(|error| HttpUrlError::Invalid(url_error_reason(error)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return invalid("the scheme must be http or https");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(HttpUrlError::UserInfo);
    }
    if url.cannot_be_a_base() || url.host_str().is_none_or(str::is_empty) {
        return invalid("it has no host");
    }
    // The raw host, as the `url` crate would turn non-ASCII names into punycode.
    if !authority.is_ascii()
        || url.domain().is_some_and(|domain| {
            !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        })
    {
        return invalid("the host may only contain letters, digits, '-', '_' and '.'");
    }
    if url.port() == Some(0) || authority.ends_with(':') {
        return invalid("the port must be a number from 1 to 65535");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return invalid("it must not have a query or fragment");
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid("it contains whitespace");
    }
    Ok(url)
}

/// The reasons of [`parse_http_url`], in the words its callers' users know.
fn url_error_reason(error: url::ParseError) -> String {
    match error {
        url::ParseError::EmptyHost => "it has no host".to_owned(),
        url::ParseError::InvalidPort => "the port must be a number from 1 to 65535".to_owned(),
        url::ParseError::InvalidIpv6Address => "the bracketed host is not an IPv6 address".to_owned(),
        url::ParseError::InvalidDomainCharacter | url::ParseError::IdnaError => {
            "the host may only contain letters, digits, '-', '_' and '.'".to_owned()
        }
        other => other.to_string(),
    }
}

/// `base` with `segments` appended to its path (after any path prefix), each percent-encoded.
fn join_route<'a>(base: &Url, segments: impl IntoIterator<Item = &'a str>) -> Url {
    let mut url = base.clone();
    // `parse_frontend_url` rejected URLs that cannot be a base, so the path is always editable.
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

fn check_segment(op: &'static str, what: &'static str, value: &str) -> Result<(), QueueError> {
    let reason = if value.is_empty() {
        "it is empty"
    } else if value == "." || value == ".." {
        "it is a relative path segment"
    } else {
        return Ok(());
    };
    Err(QueueError::InvalidRouteSegment {
        op,
        what,
        value: value.to_owned(),
        reason,
    })
}

fn header_value(op: &'static str, header: &'static str, value: &str) -> Result<HeaderValue, QueueError> {
    HeaderValue::from_str(value).map_err(|_| QueueError::InvalidHeader { op, header })
}

/// A header value that `Debug` output of requests shows as "Sensitive".
fn sensitive_header_value(
    op: &'static str,
    header: &'static str,
    value: &str,
) -> Result<HeaderValue, QueueError> {
    let mut value = header_value(op, header, value)?;
    value.set_sensitive(true);
    Ok(value)
}

async fn decode_json<T: DeserializeOwned>(
    op: &'static str,
    response: reqwest::Response,
) -> Result<T, QueueError> {
    let bytes = response
        .bytes()
        .await
        .map_err(|err| QueueError::from_reqwest(op, err))?;
    serde_json::from_slice(&bytes).map_err(|source| QueueError::decode(op, &source))
}

/// The whole body, or [`QueueError::TooLarge`] as soon as it is known to pass `limit` bytes.
async fn read_at_most(
    op: &'static str,
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, QueueError> {
    let declared = response.content_length();
    let too_large = || QueueError::TooLarge { op, limit, declared };
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(declared.map_or(0, |length| length as usize));
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| QueueError::from_reqwest(op, err))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn declared_size(declared: Option<u64>) -> String {
    declared.map_or_else(String::new, |bytes| {
        format!(" (the frontend announced {bytes} bytes)")
    })
}

/// Reads at most `limit` bytes of the body; a body that fails midway keeps what arrived.
async fn read_prefix(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())]),
            Ok(None) | Err(_) => break,
        }
    }
    body
}

/// Blanks out `secrets`, then trims and truncates to [`ERROR_BODY_MAX_CHARS`] characters.
/// Secrets go first so truncation cannot leave part of one behind.
fn sanitize_body(body: &str, secrets: &[&str]) -> String {
    let mut text = body.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "[redacted]");
    }
    let text = text.trim();
    match text.char_indices().nth(ERROR_BODY_MAX_CHARS) {
        Some((cut, _)) => format!("{}… (truncated)", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(url: &str) -> ClientOptions {
        ClientOptions {
            frontend_url: url.to_owned(),
            password: Secret::new("hunter2-password".to_owned()),
            executor_name: "exec-1".to_owned(),
            user_agent: "kube-executor/test".to_owned(),
        }
    }

    fn client(url: &str) -> QueueClient {
        QueueClient::new(options(url)).expect("valid options")
    }

    fn status(status: u16) -> QueueError {
        QueueError::Status {
            op: "test",
            status,
            body: String::new(),
        }
    }

    #[test]
    fn routes_keep_the_frontend_path_prefix() {
        for base in ["http://h/sg", "http://h/sg/"] {
            let c = client(base);
            let url = c
                .route(
                    "t",
                    &[".executors", "queue"],
                    &[("queue name", "batches")],
                    &["heartbeat"],
                )
                .expect("valid route");
            assert_eq!(url.as_str(), "http://h/sg/.executors/queue/batches/heartbeat");
        }
        let c = client("https://sourcegraph.example.com");
        let url = c
            .route("t", &[".executors", "queue", "dequeue"], &[], &[])
            .expect("valid route");
        assert_eq!(
            url.as_str(),
            "https://sourcegraph.example.com/.executors/queue/dequeue"
        );
    }

    #[test]
    fn job_routes_use_the_job_queue() {
        let c = client("http://h:8080/a/b");
        let job = JobHandle {
            id: 3,
            queue: "codeintel".to_owned(),
            token: Secret::new("t".to_owned()),
        };
        let url = c.job_route("t", &job, "markComplete").expect("valid route");
        assert_eq!(
            url.as_str(),
            "http://h:8080/a/b/.executors/queue/codeintel/markComplete"
        );
    }

    #[test]
    fn dynamic_segments_are_encoded_and_checked() {
        let c = client("http://h");
        let url = c
            .route(
                "t",
                &[".executors", "files"],
                &[("bucket", "b c"), ("key", "x%y")],
                &[],
            )
            .expect("valid route");
        assert_eq!(url.as_str(), "http://h/.executors/files/b%20c/x%25y");
        let url = c
            .route(
                "t",
                &[".executors", "queue"],
                &[("queue name", "a/b")],
                &["dequeue"],
            )
            .expect("valid route");
        assert_eq!(url.as_str(), "http://h/.executors/queue/a%2Fb/dequeue");
        for bad in ["", ".", ".."] {
            let err = c
                .route(
                    "t",
                    &[".executors", "queue"],
                    &[("queue name", bad)],
                    &["dequeue"],
                )
                .expect_err("must be rejected");
            assert!(
                matches!(
                    err,
                    QueueError::InvalidRouteSegment {
                        what: "queue name",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn frontend_url_is_validated() {
        for (url, needle) in [
            ("not a url", "relative URL"),
            ("ftp://h", "scheme"),
            ("http://h/?x=1", "query"),
            ("http://h/#top", "fragment"),
        ] {
            let err = QueueClient::new(options(url)).expect_err(url);
            assert!(matches!(err, QueueError::InvalidUrl { .. }), "{err}");
            assert!(err.to_string().contains(needle), "{url}: {err}");
        }
        let err = QueueClient::new(options("https://admin:topsecret@h")).expect_err("credentials");
        assert!(!err.to_string().contains("topsecret"), "{err}");
        assert!(err.to_string().contains("credentials"), "{err}");
    }

    #[test]
    fn https_client_builds_with_the_ring_provider() {
        let c = client("https://sourcegraph.example.com/");
        assert_eq!(c.executor_name(), "exec-1");
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn header_unsafe_values_are_rejected_without_echoing_them() {
        let mut opts = options("http://h");
        opts.password = Secret::new("line\nbreak-secret".to_owned());
        let err = QueueClient::new(opts).expect_err("newline in password");
        assert!(
            matches!(
                err,
                QueueError::InvalidHeader {
                    header: "Authorization",
                    ..
                }
            ),
            "{err}"
        );
        assert!(!err.to_string().contains("break-secret"), "{err}");
    }

    #[test]
    fn transient_classification() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(status(code).is_transient(), "{code}");
        }
        for code in [301, 400, 401, 403, 404, 409, 422] {
            assert!(!status(code).is_transient(), "{code}");
        }
        let decode = QueueError::decode(
            "t",
            &serde_json::from_str::<i64>("\"hunter2\"").expect_err("not a number"),
        );
        assert_eq!(
            decode.to_string(),
            "t: cannot decode the frontend's response: invalid type: string, expected i64 at line 1 column 9"
        );
        assert!(!decode.is_transient());
        assert_eq!(decode.status(), None);
        assert_eq!(status(503).status(), Some(503));
        assert_eq!(
            status(401).to_string(),
            "test: the frontend answered HTTP 401 with an empty body"
        );
    }

    #[test]
    fn only_surely_unprocessed_requests_may_be_resent() {
        for code in [429, 502, 503, 504] {
            assert!(status(code).request_surely_unprocessed(), "{code}");
        }
        // A 500 comes from Sourcegraph's handler itself, which may have written before failing.
        for code in [500, 400, 401, 408] {
            assert!(!status(code).request_surely_unprocessed(), "{code}");
        }
    }

    #[test]
    fn metric_labels_are_bounded() {
        assert_eq!(status(401).metric_label(), "unauthorized");
        assert_eq!(status(403).metric_label(), "unauthorized");
        assert_eq!(status(404).metric_label(), "not_found");
        assert_eq!(status(429).metric_label(), "rate_limited");
        assert_eq!(status(418).metric_label(), "client_error");
        assert_eq!(status(503).metric_label(), "server_error");
        assert_eq!(status(302).metric_label(), "unexpected_status");
    }

    #[tokio::test]
    async fn refused_connections_are_connect_errors() {
        // Bind then drop a listener to get a local port that refuses connections.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let port = listener.local_addr().expect("local address").port();
        drop(listener);
        let c = client(&format!("http://127.0.0.1:{port}"));
        let err = c
            .heartbeat_multi(&HeartbeatRequestMulti {
                version: String::new(),
                executor_name: "exec-1".to_owned(),
                queue_names: vec!["batches".to_owned()],
                job_ids_by_queue: vec![],
                telemetry: Default::default(),
            })
            .await
            .expect_err("nothing listens");
        assert!(matches!(err, QueueError::Connect { .. }), "{err:?}");
        assert!(err.is_transient() && err.request_surely_unprocessed());
        assert_eq!(err.metric_label(), "connect");
        let text = err.to_string();
        assert!(
            text.contains("heartbeat") && text.to_lowercase().contains("refused"),
            "{text}"
        );
        assert!(
            !text.contains("hunter2") && !format!("{err:?}").contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn error_bodies_are_scrubbed_and_truncated() {
        let body = format!("  token abc123token and pw hunter2 {}  ", "x".repeat(2000));
        let clean = sanitize_body(&body, &["abc123token", "hunter2", ""]);
        assert!(
            !clean.contains("abc123token") && !clean.contains("hunter2"),
            "{clean}"
        );
        assert!(clean.starts_with("token [redacted] and pw [redacted]"), "{clean}");
        assert!(clean.ends_with("… (truncated)"));
        assert_eq!(
            clean.chars().count(),
            ERROR_BODY_MAX_CHARS + "… (truncated)".chars().count()
        );
        // Multi-byte characters are never split.
        let short = sanitize_body(&"é".repeat(600), &[]);
        assert!(short.starts_with(&"é".repeat(ERROR_BODY_MAX_CHARS)));
        assert_eq!(
            sanitize_body("{\"error\":\"unknown job\"}\n", &[]),
            "{\"error\":\"unknown job\"}"
        );
    }

    /// Moved from the configuration's own URL check, which this one replaces.
    #[test]
    fn http_url_rules() {
        for text in [
            "http://sourcegraph-frontend",
            "https://sg.example.com/",
            "http://10.0.0.5:3080/prefix/",
            "http://[::1]:3080",
            "HTTPS://Sg.Example.com",
        ] {
            assert!(parse_http_url(text).is_ok(), "{text}");
        }
        for text in [
            "http://[::1",
            "http://[nothost]:80",
            "http://[::1]x",
            "http://host:",
            "http://host:0",
        ] {
            assert!(parse_http_url(text).is_err(), "{text}");
        }
        for text in [
            "http:host",
            " http://h",
            "http://h/a\tb",
            "http://h/a b",
            "http://1.2.3.999",
            "http://bücher.example",
        ] {
            assert!(parse_http_url(text).is_err(), "{text:?}");
        }
        assert_eq!(
            parse_http_url("https://admin:secret@h:99999"),
            Err(HttpUrlError::UserInfo)
        );
    }
}
