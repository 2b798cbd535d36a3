//! The `dev-frontend` command line: `serve` plus small clients of the `/dev/` API.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    DevFrontend, Error, FrontendOptions,
    client::{self, ClientError},
};

/// Environment variable read by `serve` when `--access-token` is not given.
pub const ACCESS_TOKEN_ENV: &str = "DEV_FRONTEND_ACCESS_TOKEN";

pub const USAGE: &str = "\
usage:
  dev-frontend serve [--addr 127.0.0.1:3080] [--access-token T | env DEV_FRONTEND_ACCESS_TOKEN]
                     [--stalled-after 25s] [--max-failures 1] [--repos-dir DIR] [--instance-version 6.0.0]
  dev-frontend enqueue --url URL --file job.json        prints the new job id
  dev-frontend cancel --url URL --queue Q --id N
  dev-frontend show --url URL [--queue Q --id N]        prints JSON (all jobs, or one)
  dev-frontend create-repo --url URL --name NAME --dir DIR   commits the files of DIR, prints the SHA";

/// Bad command lines and failed client calls.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}\n\n{USAGE}")]
    Usage(String),
    #[error("invalid value {value:?} for {flag}: {reason}")]
    InvalidFlag {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("reading {path} failed: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("{path} is not UTF-8 text; repositories are created from text files only")]
    NotText { path: PathBuf },
    #[error(transparent)]
    Request(#[from] ClientError),
    #[error("the frontend answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("unexpected response body: {0}")]
    UnexpectedBody(String),
    #[error("waiting for a shutdown signal failed: {0}")]
    Signal(std::io::Error),
}

/// Flags as `--name value` or `--name=value`.
struct Flags {
    values: HashMap<String, String>,
}

impl Flags {
    fn parse(args: &[String], allowed: &[&str]) -> Result<Flags, CliError> {
        let mut values = HashMap::new();
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(CliError::Usage(format!("unexpected argument {arg:?}")));
            };
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (name.to_owned(), value.to_owned()),
                None => {
                    let value = rest
                        .next()
                        .ok_or_else(|| CliError::Usage(format!("--{flag} needs a value")))?;
                    (flag.to_owned(), value.clone())
                }
            };
            if !allowed.contains(&name.as_str()) {
                return Err(CliError::Usage(format!("unknown flag --{name}")));
            }
            values.insert(name, value);
        }
        Ok(Flags { values })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn require(&self, name: &str) -> Result<&str, CliError> {
        self.get(name)
            .ok_or_else(|| CliError::Usage(format!("--{name} is required")))
    }
}

/// Parses `25s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// Runs the command line (without the program name).
///
/// # Errors
/// Usage errors and failures of the chosen command.
pub async fn run(args: &[String]) -> Result<(), Error> {
    let Some((command, rest)) = args.split_first() else {
        return Err(CliError::Usage("missing command".to_owned()).into());
    };
    match command.as_str() {
        "serve" => serve(rest).await,
        "enqueue" => enqueue(rest).await,
        "cancel" => cancel(rest).await,
        "show" => show(rest).await,
        "create-repo" => create_repo(rest).await,
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(CliError::Usage(format!("unknown command {other:?}")).into()),
    }
}

async fn serve(args: &[String]) -> Result<(), Error> {
    let flags = Flags::parse(
        args,
        &[
            "addr",
            "access-token",
            "stalled-after",
            "max-failures",
            "repos-dir",
            "instance-version",
        ],
    )?;
    let addr_text = flags.get("addr").unwrap_or("127.0.0.1:3080");
    let addr: SocketAddr = addr_text.parse().map_err(|_| CliError::InvalidFlag {
        flag: "--addr",
        value: addr_text.to_owned(),
        reason: "expected host:port with an IP address".to_owned(),
    })?;
    let mut opts = FrontendOptions::default();
    if let Some(token) = flags
        .get("access-token")
        .map(str::to_owned)
        .or_else(|| std::env::var(ACCESS_TOKEN_ENV).ok())
    {
        opts.access_token = Some(token).filter(|token| !token.is_empty());
    }
    if let Some(text) = flags.get("stalled-after") {
        opts.stalled_after = parse_duration(text).ok_or_else(|| CliError::InvalidFlag {
            flag: "--stalled-after",
            value: text.to_owned(),
            reason: "expected a duration like 25s, 500ms or 2m".to_owned(),
        })?;
    }
    if let Some(text) = flags.get("max-failures") {
        opts.max_failures = text.parse().map_err(|_| CliError::InvalidFlag {
            flag: "--max-failures",
            value: text.to_owned(),
            reason: "expected a non-negative integer".to_owned(),
        })?;
    }
    if let Some(dir) = flags.get("repos-dir") {
        opts.repos_dir = Some(PathBuf::from(dir));
    }
    if let Some(version) = flags.get("instance-version") {
        opts.instance_version = version.to_owned();
    }
    let token_configured = opts.access_token.is_some();
    let frontend = DevFrontend::start_on(addr, opts).await?;
    println!("dev frontend listening on {}", frontend.url());
    println!("  executor instances: {}/site-admin/executors", frontend.url());
    println!("  jobs:               {}/jobs", frontend.url());
    if !token_configured {
        println!("  no access token configured: executor routes answer 500");
    }
    wait_for_shutdown_signal().await?;
    frontend.shutdown();
    Ok(())
}

async fn wait_for_shutdown_signal() -> Result<(), CliError> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(CliError::Signal)?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.map_err(CliError::Signal),
        _ = terminate.recv() => Ok(()),
    }
}

/// Calls the API and insists on a 2xx answer.
async fn call(url: &str, method: &str, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>, CliError> {
    let response = client::request(url, method, path, body).await?;
    if !(200..300).contains(&response.status) {
        return Err(CliError::Status {
            status: response.status,
            body: String::from_utf8_lossy(&response.body).trim().to_owned(),
        });
    }
    Ok(response.body)
}

fn read_file(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

async fn enqueue(args: &[String]) -> Result<(), Error> {
    let flags = Flags::parse(args, &["url", "file"])?;
    let job = read_file(Path::new(flags.require("file")?))?;
    let answer = call(flags.require("url")?, "POST", "/dev/jobs", Some(&job)).await?;
    let parsed: serde_json::Value = serde_json::from_slice(&answer)
        .map_err(|_| CliError::UnexpectedBody(String::from_utf8_lossy(&answer).into_owned()))?;
    let id = parsed
        .get("id")
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| CliError::UnexpectedBody(parsed.to_string()))?;
    println!("{id}");
    Ok(())
}

async fn cancel(args: &[String]) -> Result<(), Error> {
    let flags = Flags::parse(args, &["url", "queue", "id"])?;
    let path = format!(
        "/dev/jobs/{}/{}/cancel",
        flags.require("queue")?,
        flags.require("id")?
    );
    call(flags.require("url")?, "POST", &path, None).await?;
    Ok(())
}

async fn show(args: &[String]) -> Result<(), Error> {
    let flags = Flags::parse(args, &["url", "queue", "id"])?;
    let path = match (flags.get("queue"), flags.get("id")) {
        (Some(queue), Some(id)) => format!("/dev/jobs/{queue}/{id}"),
        (None, None) => "/dev/jobs".to_owned(),
        _ => return Err(CliError::Usage("--queue and --id go together".to_owned()).into()),
    };
    let answer = call(flags.require("url")?, "GET", &path, None).await?;
    let parsed: serde_json::Value = serde_json::from_slice(&answer)
        .map_err(|_| CliError::UnexpectedBody(String::from_utf8_lossy(&answer).into_owned()))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&parsed).unwrap_or_else(|_| parsed.to_string())
    );
    Ok(())
}

/// Collects the text files under `dir` (skipping `.git`) keyed by their `/`-separated relative path.
fn collect_files(root: &Path, dir: &Path, files: &mut BTreeMap<String, String>) -> Result<(), CliError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CliError::ReadFile {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| CliError::ReadFile {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        if entry.file_name() == ".git" {
            continue;
        }
        if path.is_dir() {
            collect_files(root, &path, files)?;
            continue;
        }
        let content =
            String::from_utf8(read_file(&path)?).map_err(|_| CliError::NotText { path: path.clone() })?;
        let relative = path.strip_prefix(root).unwrap_or(&path);
        let key: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        files.insert(key.join("/"), content);
    }
    Ok(())
}

async fn create_repo(args: &[String]) -> Result<(), Error> {
    let flags = Flags::parse(args, &["url", "name", "dir"])?;
    let dir = PathBuf::from(flags.require("dir")?);
    let mut files = BTreeMap::new();
    collect_files(&dir, &dir, &mut files)?;
    let body = serde_json::json!({ "name": flags.require("name")?, "files": files }).to_string();
    let answer = call(flags.require("url")?, "POST", "/dev/repos", Some(body.as_bytes())).await?;
    let parsed: serde_json::Value = serde_json::from_slice(&answer)
        .map_err(|_| CliError::UnexpectedBody(String::from_utf8_lossy(&answer).into_owned()))?;
    let commit = parsed
        .get("commit")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| CliError::UnexpectedBody(parsed.to_string()))?;
    println!("{commit}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_common_units() {
        assert_eq!(parse_duration("25s"), Some(Duration::from_secs(25)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5d"), None);
    }

    #[test]
    fn flags_reject_unknown_names_and_missing_values() {
        let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(Flags::parse(&args(&["--url", "http://x"]), &["url"]).is_ok());
        assert!(Flags::parse(&args(&["--url=http://x"]), &["url"]).is_ok());
        assert!(Flags::parse(&args(&["--nope", "1"]), &["url"]).is_err());
        assert!(Flags::parse(&args(&["--url"]), &["url"]).is_err());
    }
}
