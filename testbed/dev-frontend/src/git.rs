//! Git side of the frontend: creating bare repositories from files and serving them over smart
//! HTTP (protocol v2 included) by running `git http-backend` as a CGI program.

use std::{
    collections::BTreeMap,
    path::{Component, Path as FsPath},
    process::Stdio,
    sync::Arc,
};

use axum::{
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
};
use futures_util::StreamExt as _;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    process::Command,
};
use tokio_util::io::ReaderStream;

use crate::{
    Error,
    auth::{self, JobScope},
    server::Shared,
    tempdir::TempDir,
};

/// Commits get a fixed identity and date so the same files always give the same commit SHA.
const COMMIT_IDENTITY: [(&str, &str); 6] = [
    ("GIT_AUTHOR_NAME", "Dev Frontend"),
    ("GIT_AUTHOR_EMAIL", "dev-frontend@example.invalid"),
    ("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z"),
    ("GIT_COMMITTER_NAME", "Dev Frontend"),
    ("GIT_COMMITTER_EMAIL", "dev-frontend@example.invalid"),
    ("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z"),
];

/// A CGI header block larger than this is not something `git http-backend` produces.
const MAX_CGI_HEADER_LINES: usize = 64;

/// Keeps the user's and the system's git configuration out of every git we run.
fn isolated_git() -> Command {
    let mut command = Command::new("git");
    command
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .kill_on_drop(true);
    command
}

async fn run_git(args: &[&str], cwd: Option<&FsPath>) -> Result<String, Error> {
    let mut command = isolated_git();
    command.args(args).envs(COMMIT_IDENTITY).stdin(Stdio::null());
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let output = command
        .output()
        .await
        .map_err(|source| Error::GitSpawn { source })?;
    if !output.status.success() {
        return Err(Error::GitCommand {
            command: format!("git {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Repository names are path-like (`github.com/org/repo`); each component must be a plain name.
pub(crate) fn validate_repo_name(name: &str) -> Result<(), Error> {
    let invalid = |reason: &str| {
        Err(Error::InvalidRepoName {
            name: name.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if name.is_empty() || name.len() > 255 {
        return invalid("must have 1 to 255 characters");
    }
    for component in name.split('/') {
        if component.is_empty() {
            return invalid("must not contain empty path components");
        }
        if component.starts_with('.') || component.starts_with('-') {
            return invalid("path components must not start with '.' or '-'");
        }
        if !component
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return invalid("only ASCII letters, digits, '-', '_', '.' and '/' are allowed");
        }
    }
    Ok(())
}

fn validate_file_path(path: &str) -> Result<(), Error> {
    let invalid = |reason: &str| {
        Err(Error::InvalidRepoFile {
            path: path.to_owned(),
            reason: reason.to_owned(),
        })
    };
    let parsed = FsPath::new(path);
    if path.is_empty() || !parsed.components().all(|c| matches!(c, Component::Normal(_))) {
        return invalid("must be a relative path without '.' or '..' components");
    }
    if parsed
        .components()
        .next()
        .is_some_and(|c| c.as_os_str() == ".git")
    {
        return invalid("must not be inside .git");
    }
    Ok(())
}

/// Creates the parent directories of `at`, then runs `write` (a file or a link for `path`).
async fn write_entry(
    path: &str,
    at: &FsPath,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> Result<(), Error> {
    let failed = |source| Error::WriteRepoFile {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = at.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(failed)?;
    }
    write.await.map_err(failed)
}

/// Commits `files` and the symbolic `links` (path → target) in a fresh work tree and
/// force-pushes the commit to `main` of the bare repository `<root>/<name>.git` (created on
/// first use). Returns the commit SHA.
pub(crate) async fn create_repo(
    shared: &Shared,
    name: &str,
    files: &BTreeMap<String, String>,
    links: &BTreeMap<String, String>,
) -> Result<String, Error> {
    validate_repo_name(name)?;
    for path in files.keys().chain(links.keys()) {
        validate_file_path(path)?;
    }
    let _exclusive = shared.repo_creation.lock().await;
    let work = TempDir::new("dev-frontend-work").map_err(|source| Error::TempDir { source })?;
    let work_path = work.path().to_string_lossy().into_owned();
    run_git(&["init", "-q", "-b", "main", &work_path], None).await?;
    for (path, content) in files {
        let target = work.path().join(path);
        write_entry(path, &target, tokio::fs::write(&target, content)).await?;
    }
    for (path, link_target) in links {
        let link = work.path().join(path);
        write_entry(path, &link, tokio::fs::symlink(link_target, &link)).await?;
    }
    run_git(&["add", "-A"], Some(work.path())).await?;
    run_git(
        &[
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            &format!("Contents of {name}"),
        ],
        Some(work.path()),
    )
    .await?;
    let commit = run_git(&["rev-parse", "HEAD"], Some(work.path())).await?;

    let bare = shared.repos_dir.join(format!("{name}.git"));
    let bare_path = bare.to_string_lossy().into_owned();
    if !bare.exists() {
        run_git(&["init", "-q", "--bare", "-b", "main", &bare_path], None).await?;
        // Executors fetch by commit SHA (`git fetch origin <sha>`), which needs these.
        for (key, value) in [
            ("uploadpack.allowReachableSHA1InWant", "true"),
            ("uploadpack.allowAnySHA1InWant", "true"),
            ("uploadpack.allowFilter", "true"),
            ("http.receivepack", "false"),
        ] {
            run_git(&["config", key, value], Some(&bare)).await?;
        }
    }
    run_git(
        &["push", "-q", "--force", &bare_path, "HEAD:refs/heads/main"],
        Some(work.path()),
    )
    .await?;
    Ok(commit)
}

/// `/.executors/git/<repo>/info/refs` and `/.executors/git/<repo>/git-upload-pack`.
pub(crate) async fn serve(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (repo, endpoint, allowed_method) = if let Some(repo) = path.strip_suffix("/info/refs") {
        (repo, "info/refs", Method::GET)
    } else if let Some(repo) = path.strip_suffix("/git-upload-pack") {
        (repo, "git-upload-pack", Method::POST)
    } else {
        return (
            StatusCode::NOT_FOUND,
            "only info/refs and git-upload-pack are served\n",
        )
            .into_response();
    };
    if method != allowed_method {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    if let Err(error) = auth::check_job(&shared, &headers, JobScope::Git { repo }) {
        return error.into_response();
    }
    if validate_repo_name(repo).is_err() || !shared.repos_dir.join(format!("{repo}.git")).is_dir() {
        return (StatusCode::NOT_FOUND, format!("repository {repo:?} not found\n")).into_response();
    }
    match run_http_backend(&shared, repo, endpoint, &method, &uri, &headers, body).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(%repo, %error, "git http-backend failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "git http-backend failed\n").into_response()
        }
    }
}

async fn run_http_backend(
    shared: &Shared,
    repo: &str,
    endpoint: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    };
    let mut command = isolated_git();
    command
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", &shared.repos_dir)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", format!("/{repo}.git/{endpoint}"))
        .env("QUERY_STRING", uri.query().unwrap_or(""))
        .env("REQUEST_METHOD", method.as_str())
        .env("CONTENT_TYPE", header("content-type"))
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REMOTE_ADDR", "127.0.0.1")
        // The body is streamed until EOF, so no length is announced.
        .env_remove("CONTENT_LENGTH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let protocol = header("git-protocol");
    if !protocol.is_empty() {
        // Protocol v2 is negotiated through this header; git reads either spelling.
        command
            .env("GIT_PROTOCOL", protocol)
            .env("HTTP_GIT_PROTOCOL", protocol);
    }
    let encoding = header("content-encoding");
    if !encoding.is_empty() {
        command.env("HTTP_CONTENT_ENCODING", encoding);
    }
    let mut child = command.spawn().map_err(|source| Error::GitSpawn { source })?;
    let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        // All three were configured as pipes above.
        return Err(Error::GitPipes);
    };

    tokio::spawn(async move {
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let Ok(chunk) = chunk else { break };
            if stdin.write_all(&chunk).await.is_err() {
                break;
            }
        }
        // Dropping stdin signals EOF to the backend.
    });
    let repo_name = repo.to_owned();
    tokio::spawn(async move {
        let mut diagnostics = String::new();
        let _ = stderr.read_to_string(&mut diagnostics).await;
        let status = child.wait().await;
        if !diagnostics.trim().is_empty() {
            tracing::debug!(repo = %repo_name, ?status, stderr = %diagnostics.trim(), "git http-backend diagnostics");
        }
    });

    let mut reader = BufReader::new(stdout);
    let mut status = StatusCode::OK;
    let mut response_headers = HeaderMap::new();
    let mut line = String::new();
    for _ in 0..MAX_CGI_HEADER_LINES {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .await
            .map_err(|source| Error::CgiRead { source })?;
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if read == 0 || trimmed.is_empty() {
            break;
        }
        let Some((name, value)) = trimmed.split_once(':') else {
            return Err(Error::CgiHeader {
                line: trimmed.to_owned(),
            });
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next().and_then(|code| code.parse::<u16>().ok());
            status = code
                .and_then(|code| StatusCode::from_u16(code).ok())
                .ok_or_else(|| Error::CgiHeader {
                    line: trimmed.to_owned(),
                })?;
        } else if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            response_headers.append(name, value);
        }
    }
    if !response_headers.contains_key(CONTENT_TYPE) {
        response_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    }
    let mut response = Response::new(Body::from_stream(ReaderStream::new(reader)));
    *response.status_mut() = status;
    *response.headers_mut() = response_headers;
    Ok(response)
}
