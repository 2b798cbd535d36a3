//! A Sourcegraph-compatible executor queue frontend kept entirely in memory, for end-to-end tests
//! and demos of executors.
//!
//! It speaks the executor protocol under `/.executors/` (dequeue, heartbeats, log entries, mark
//! calls, files, git smart HTTP) including its failure answers, re-queues jobs whose executor stops
//! heartbeating, and offers a `/dev/` JSON API plus HTML pages to drive and watch it:
//!
//! ```text
//! POST /dev/jobs → queued → dequeue (token issued) → processing → heartbeats / log entries
//!                → markComplete | markFailed | markErrored (re-queued below maxFailures)
//!                ↘ no heartbeat for `stalled_after` → queued again (failed after 3 resets)
//! ```

mod admin;
mod auth;
pub mod cli;
pub mod client;
mod git;
pub mod model;
mod pages;
mod protocol;
mod server;
mod store;
mod tempdir;
mod version;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::model::{
    CliStep, DockerStep, ExecutorRecord, JobFile, JobRecord, JobState, LogEntryRecord, MarkKind, MarkRecord,
    NewJob, RequestRecord,
};
use crate::{server::Shared, store::CancelError, tempdir::TempDir};

/// Access token used when the options do not say otherwise.
pub const DEFAULT_ACCESS_TOKEN: &str = "devfrontend-access-token-0123456789";

/// Failures of the dev frontend's library API and CLI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding the listener on {addr} failed: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("creating the repositories directory {path} failed: {source}")]
    ReposDir { path: PathBuf, source: std::io::Error },
    #[error("creating a temporary directory failed: {source}")]
    TempDir { source: std::io::Error },
    #[error("invalid repository name {name:?}: {reason}")]
    InvalidRepoName { name: String, reason: String },
    #[error("invalid repository file path {path:?}: {reason}")]
    InvalidRepoFile { path: String, reason: String },
    #[error("writing repository file {path:?} failed: {source}")]
    WriteRepoFile { path: String, source: std::io::Error },
    #[error("starting git failed: {source}")]
    GitSpawn { source: std::io::Error },
    #[error("`{command}` failed: {stderr}")]
    GitCommand { command: String, stderr: String },
    #[error("git http-backend was started without its stdio pipes")]
    GitPipes,
    #[error("reading the CGI response of git http-backend failed: {source}")]
    CgiRead { source: std::io::Error },
    #[error("git http-backend sent a malformed CGI header line {line:?}")]
    CgiHeader { line: String },
    #[error("job {queue}/{id} not found")]
    JobNotFound { queue: String, id: i64 },
    #[error("job {queue}/{id} is already {state}")]
    JobFinished {
        queue: String,
        id: i64,
        state: &'static str,
    },
    #[error("timed out after {timeout:?} waiting for job {queue}/{id} (last state: {last_state})")]
    WaitTimedOut {
        queue: String,
        id: i64,
        timeout: Duration,
        last_state: String,
    },
    #[error("the frontend shut down while waiting for job {queue}/{id}")]
    FrontendStopped { queue: String, id: i64 },
    #[error("the jobs did not reach the awaited state within {timeout:?}")]
    WaitAllTimedOut { timeout: Duration },
    #[error("the frontend stopped while waiting for its jobs")]
    FrontendStoppedAll,
    #[error("{0}")]
    Cli(#[from] cli::CliError),
}

/// How a [`DevFrontend`] behaves.
#[derive(Debug, Clone)]
pub struct FrontendOptions {
    /// `executors.accessToken`; `None` makes the queue routes answer 500 ("not configured").
    pub access_token: Option<String>,
    /// A processing job that its executor has not listed in a heartbeat for this long (counted from
    /// the dequeue until the first such heartbeat) is re-queued by the resetter, as the real
    /// frontend tracks `last_heartbeat_at` per job.
    pub stalled_after: Duration,
    /// How many `markErrored` calls a job may receive before it stays errored; with the default
    /// of 1 errored jobs are never retried.
    pub max_failures: u32,
    /// The instance version the Instances page compares executor versions against.
    pub instance_version: String,
    /// Where bare repositories live; `None` uses a temporary directory removed on drop.
    pub repos_dir: Option<PathBuf>,
}

impl Default for FrontendOptions {
    fn default() -> FrontendOptions {
        FrontendOptions {
            access_token: Some(DEFAULT_ACCESS_TOKEN.to_owned()),
            stalled_after: Duration::from_secs(25),
            max_failures: 1,
            instance_version: "6.0.0".to_owned(),
            repos_dir: None,
        }
    }
}

/// A running frontend. Dropping it stops the server and the resetter and removes temporary
/// directories it created.
pub struct DevFrontend {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// Held only so the temporary repositories directory lives as long as the server.
    _temp_repos_dir: Option<TempDir>,
}

impl DevFrontend {
    /// Starts serving on `127.0.0.1` at a free port.
    ///
    /// # Errors
    /// Fails when the repositories directory cannot be created or the listener cannot bind.
    pub async fn start(opts: FrontendOptions) -> Result<DevFrontend, Error> {
        DevFrontend::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), opts).await
    }

    /// Starts serving on `addr` (port 0 picks a free port).
    ///
    /// # Errors
    /// Fails when the repositories directory cannot be created or the listener cannot bind.
    pub async fn start_on(addr: SocketAddr, opts: FrontendOptions) -> Result<DevFrontend, Error> {
        let (repos_dir, temp_repos_dir) = match opts.repos_dir {
            Some(path) => {
                std::fs::create_dir_all(&path).map_err(|source| Error::ReposDir {
                    path: path.clone(),
                    source,
                })?;
                (path, None)
            }
            None => {
                let temp = TempDir::new("dev-frontend-repos").map_err(|source| Error::TempDir { source })?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        // git http-backend needs an absolute GIT_PROJECT_ROOT.
        let repos_dir = std::fs::canonicalize(&repos_dir).map_err(|source| Error::ReposDir {
            path: repos_dir.clone(),
            source,
        })?;
        let shared = Arc::new(Shared::new(
            opts.access_token,
            opts.stalled_after,
            opts.max_failures,
            opts.instance_version,
            repos_dir,
        ));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let shutdown = CancellationToken::new();
        let app = server::router(shared.clone());
        let server_shutdown = shutdown.clone();
        let serve = tokio::spawn(async move {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(server_shutdown.cancelled_owned())
                .await;
            if let Err(error) = result {
                tracing::error!(%error, "dev frontend server stopped");
            }
        });
        let resetter = tokio::spawn(server::run_resetter(shared.clone(), shutdown.clone()));
        tracing::info!(%addr, "dev frontend listening");
        Ok(DevFrontend {
            shared,
            addr,
            shutdown,
            tasks: vec![serve, resetter],
            _temp_repos_dir: temp_repos_dir,
        })
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The socket address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configured general access token.
    pub fn access_token(&self) -> Option<&str> {
        self.shared.access_token.as_deref()
    }

    /// Queues a job (same as `POST /dev/jobs`) and returns its per-queue id. Jobs on queues other
    /// than `batches`/`codeintel` are kept but can never be dequeued.
    pub fn enqueue(&self, job: NewJob) -> i64 {
        self.shared.write(|store| store.enqueue(job))
    }

    /// The record of one job, `None` if no such job was enqueued.
    pub fn job(&self, queue: &str, id: i64) -> Option<JobRecord> {
        self.shared.read(|store| store.job(queue, id))
    }

    /// All job records, ordered by queue and id.
    pub fn jobs(&self) -> Vec<JobRecord> {
        self.shared.read(|store| store.jobs())
    }

    /// Flags a processing job for cancellation (it shows up in `cancelIds` of its executor's next
    /// heartbeat); a queued job is failed at once.
    ///
    /// # Errors
    /// [`Error::JobNotFound`], or [`Error::JobFinished`] for a job in a final state.
    pub fn cancel(&self, queue: &str, id: i64) -> Result<(), Error> {
        self.shared
            .write(|store| store.cancel(queue, id))
            .map_err(|error| match error {
                CancelError::NotFound => Error::JobNotFound {
                    queue: queue.to_owned(),
                    id,
                },
                CancelError::AlreadyFinished(state) => Error::JobFinished {
                    queue: queue.to_owned(),
                    id,
                    state: state.as_str(),
                },
            })
    }

    /// Heartbeat records, most recently first seen first.
    pub fn executors(&self) -> Vec<ExecutorRecord> {
        self.shared.read(|store| store.executors())
    }

    /// Recent `/.executors/` requests, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.read(|store| store.requests())
    }

    /// Creates (or replaces the `main` branch of) repository `name` with `files` in a single commit
    /// and returns the commit SHA. The same files always give the same SHA.
    ///
    /// # Errors
    /// Invalid names or paths, or a failing git command.
    pub async fn create_repo(&self, name: &str, files: &[(&str, &str)]) -> Result<String, Error> {
        self.create_repo_with_links(name, files, &[]).await
    }

    /// [`Self::create_repo`], also committing the symbolic `links` (path, target).
    ///
    /// # Errors
    /// Invalid names or paths, or a failing git command.
    pub async fn create_repo_with_links(
        &self,
        name: &str,
        files: &[(&str, &str)],
        links: &[(&str, &str)],
    ) -> Result<String, Error> {
        let owned = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(path, value)| ((*path).to_owned(), (*value).to_owned()))
                .collect()
        };
        git::create_repo(&self.shared, name, &owned(files), &owned(links)).await
    }

    /// Stores a file served at `/.executors/files/<bucket>/<key>`.
    pub fn add_file(&self, bucket: &str, key: &str, content: &[u8]) {
        self.shared
            .write(|store| store.add_file(bucket, key, content.to_vec()));
    }

    /// Waits until `pred` holds for the executors seen so far (as [`Self::executors`] lists them),
    /// re-checking on every state change; `None` when `timeout` passes first.
    pub async fn wait_for_executors(
        &self,
        timeout: Duration,
        pred: impl Fn(&[ExecutorRecord]) -> bool,
    ) -> Option<Vec<ExecutorRecord>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.subscribe();
        loop {
            changes.borrow_and_update();
            let executors = self.executors();
            if pred(&executors) {
                return Some(executors);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Waits until `pred` holds for the job, re-checking on every state change of the frontend.
    ///
    /// # Errors
    /// [`Error::WaitTimedOut`] (with the last seen state) when `timeout` passes first.
    pub async fn wait_for_job(
        &self,
        queue: &str,
        id: i64,
        timeout: Duration,
        pred: impl Fn(&JobRecord) -> bool,
    ) -> Result<JobRecord, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.subscribe();
        loop {
            changes.borrow_and_update();
            let current = self.job(queue, id);
            if let Some(job) = current.as_ref().filter(|job| pred(job)) {
                return Ok(job.clone());
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(Error::FrontendStopped {
                        queue: queue.to_owned(),
                        id,
                    });
                }
                Err(_) => {
                    let last_state =
                        current.map_or_else(|| "not found".to_owned(), |job| job.state.as_str().to_owned());
                    return Err(Error::WaitTimedOut {
                        queue: queue.to_owned(),
                        id,
                        timeout,
                        last_state,
                    });
                }
            }
        }
    }

    /// Waits until `pred` holds for all jobs (of every queue), checking after each change the
    /// frontend records, and returns them at that moment.
    ///
    /// # Errors
    /// [`Error::WaitAllTimedOut`] when `timeout` passes first; [`Error::FrontendStoppedAll`] when
    /// the frontend stops.
    pub async fn wait_for_jobs(
        &self,
        timeout: Duration,
        pred: impl Fn(&[JobRecord]) -> bool,
    ) -> Result<Vec<JobRecord>, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.subscribe();
        loop {
            changes.borrow_and_update();
            let jobs = self.jobs();
            if pred(&jobs) {
                return Ok(jobs);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::FrontendStoppedAll),
                Err(_) => return Err(Error::WaitAllTimedOut { timeout }),
            }
        }
    }

    /// Stops serving now; also done by `Drop`.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for DevFrontend {
    fn drop(&mut self) {
        self.shutdown();
    }
}
