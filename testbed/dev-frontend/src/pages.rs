//! HTML pages for people: the Executors > Instances page, the jobs list and a job page whose log
//! entries refresh while the job runs.

use std::{fmt::Write as _, sync::Arc};

use axum::{
    Router,
    extract::{Path, State},
    http::StatusCode,
    response::{Html, IntoResponse, Redirect, Response},
    routing::get,
};
use jiff::Timestamp;

use crate::{
    model::{ExecutorRecord, JobRecord},
    server::Shared,
    version::{self, Compatibility},
};

/// An executor seen within this window is active: three missed 5 s heartbeats make it inactive.
const ACTIVE_WINDOW_SECONDS: i64 = 15;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/site-admin/executors") }))
        .route("/site-admin/executors", get(instances))
        .route("/jobs", get(jobs))
        .route("/jobs/{queue}/{id}", get(job))
}

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
nav a{margin-right:1em}\
.badge{display:inline-block;padding:0 .5em;border-radius:.8em;background:#e6ebf2;font-size:.85em;margin-left:.4em}\
.badge.outdated{background:#fbe3c0}.badge.ahead{background:#f8d0d0}\
.dot{display:inline-block;width:.7em;height:.7em;border-radius:50%;margin-right:.4em}\
.dot.active{background:#37b24d}.dot.inactive{background:#adb5bd}\
li.executor{list-style:none;border-bottom:1px solid #ddd;padding:.6em 0}\
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}\
pre{background:#f4f4f4;padding:.6em;overflow:auto;max-height:30em}\
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left}\
.alert{background:#fff4e6;border:1px solid #ffc078;padding:.4em .6em;margin:.4em 0}";

fn page(title: &str, refresh_seconds: Option<u32>, body: &str) -> Html<String> {
    let refresh = refresh_seconds
        .map(|seconds| format!("<meta http-equiv=\"refresh\" content=\"{seconds}\">"))
        .unwrap_or_default();
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}<title>{title}</title>\
         <style>{STYLE}</style></head><body><nav><a href=\"/site-admin/executors\">Executor instances</a>\
         <a href=\"/jobs\">Jobs</a></nav>\n{body}</body></html>\n",
        title = escape(title),
    ))
}

/// "3 seconds ago"-style distance from `then` to `now`.
fn relative_time(then: Timestamp, now: Timestamp) -> String {
    let seconds = now.duration_since(then).as_secs().max(0);
    let (amount, unit) = match seconds {
        0..60 => (seconds, "second"),
        60..3600 => (seconds / 60, "minute"),
        3600..86400 => (seconds / 3600, "hour"),
        _ => (seconds / 86400, "day"),
    };
    let plural = if amount == 1 { "" } else { "s" };
    format!("{amount} {unit}{plural} ago")
}

fn or_na(value: &str) -> String {
    if value.is_empty() {
        "n/a".to_owned()
    } else {
        escape(value)
    }
}

fn executor_item(executor: &ExecutorRecord, instance_version: &str, now: Timestamp) -> String {
    let active = now.duration_since(executor.last_seen_at).as_secs() < ACTIVE_WINDOW_SECONDS;
    let mut item = String::from("<li class=\"executor\">");
    if active {
        item.push_str("<span class=\"dot active\" title=\"Active\"></span>");
    } else {
        item.push_str(
            "<span class=\"dot inactive\" title=\"This executor missed at least three heartbeats.\"></span>",
        );
    }
    let _ = write!(
        item,
        "<strong class=\"hostname\">{}</strong>",
        escape(&executor.hostname)
    );
    let queues: Vec<&String> = executor.queue_name.iter().chain(&executor.queue_names).collect();
    for queue in queues {
        let _ = write!(item, "<span class=\"badge queue\">{}</span>", escape(queue));
    }
    // Like the real page, compatibility is only judged for executors that are online.
    let compatibility = if active {
        version::compatibility(&executor.executor_version, instance_version)
    } else {
        None
    };
    match compatibility {
        Some(Compatibility::Outdated) => {
            item.push_str("<span class=\"badge outdated\">Outdated</span>");
        }
        Some(Compatibility::VersionAhead) => {
            item.push_str("<span class=\"badge ahead\">Version ahead</span>");
        }
        Some(Compatibility::UpToDate) | None => {}
    }
    let _ = write!(
        item,
        " <span class=\"last-seen\" title=\"{}\">last seen {}</span>",
        executor.last_seen_at,
        relative_time(executor.last_seen_at, now)
    );
    match compatibility {
        Some(Compatibility::Outdated) => {
            let _ = write!(
                item,
                "<div class=\"alert\">{} is outdated. Please upgrade this executor to match the version of \
                 your Sourcegraph instance ({}).</div>",
                escape(&executor.hostname),
                escape(instance_version)
            );
        }
        Some(Compatibility::VersionAhead) => {
            let _ = write!(
                item,
                "<div class=\"alert\">Your Sourcegraph instance ({}) is out of date relative to executor {}. \
                 Please upgrade the instance or downgrade this executor.</div>",
                escape(instance_version),
                escape(&executor.hostname)
            );
        }
        Some(Compatibility::UpToDate) | None => {}
    }
    let details = [
        ("OS", executor.os.as_str()),
        ("Architecture", &executor.architecture),
        ("Executor version", &executor.executor_version),
        ("Docker version", &executor.docker_version),
        ("Git version", &executor.git_version),
        ("Ignite version", &executor.ignite_version),
        ("src-cli version", &executor.src_cli_version),
    ];
    item.push_str("<details><summary>Details</summary><dl>");
    for (label, value) in details {
        let _ = write!(item, "<dt>{label}</dt><dd>{}</dd>", or_na(value));
    }
    let _ = write!(item, "<dt>First seen at</dt><dd>{}</dd>", executor.first_seen_at);
    item.push_str("</dl></details></li>\n");
    item
}

async fn instances(State(shared): State<Arc<Shared>>) -> Html<String> {
    let executors = shared.read(|store| store.executors());
    let now = Timestamp::now();
    let mut body = String::from("<h1>Executor instances</h1>\n");
    let _ = writeln!(
        body,
        "<p>Instance version: <span class=\"instance-version\">{}</span></p>",
        escape(&shared.instance_version)
    );
    if executors.is_empty() {
        body.push_str("<p class=\"empty\">No executors found.</p>\n");
    } else {
        body.push_str("<ul class=\"executors\">\n");
        for executor in &executors {
            body.push_str(&executor_item(executor, &shared.instance_version, now));
        }
        body.push_str("</ul>\n");
    }
    page("Executor instances", Some(5), &body)
}

async fn jobs(State(shared): State<Arc<Shared>>) -> Html<String> {
    let jobs = shared.read(|store| store.jobs());
    let mut body = String::from(
        "<h1>Jobs</h1>\n<table><thead><tr><th>Queue</th><th>ID</th><th>Repository</th><th>State</th>\
         <th>Executor</th><th>Error</th></tr></thead><tbody>\n",
    );
    for job in &jobs {
        let _ = writeln!(
            body,
            "<tr><td>{queue}</td><td><a href=\"/jobs/{queue}/{id}\">{id}</a></td><td>{repo}</td>\
             <td class=\"state\">{state}</td><td>{executor}</td><td>{error}</td></tr>",
            queue = escape(&job.queue),
            id = job.id,
            repo = escape(&job.repository_name),
            state = job.state.as_str(),
            executor = escape(job.executor.as_deref().unwrap_or("")),
            error = escape(job.error_message.as_deref().unwrap_or("")),
        );
    }
    body.push_str("</tbody></table>\n");
    page("Jobs", Some(2), &body)
}

fn job_body(job: &JobRecord) -> String {
    let mut body = format!("<h1>Job {} #{}</h1>\n<dl>", escape(&job.queue), job.id);
    let optional_time =
        |time: Option<Timestamp>| time.map(|t| t.to_string()).unwrap_or_else(|| "n/a".to_owned());
    let facts = [
        ("State", job.state.as_str().to_owned()),
        ("Repository", or_na(&job.repository_name)),
        ("Commit", or_na(&job.commit)),
        ("Executor", or_na(job.executor.as_deref().unwrap_or(""))),
        ("Error message", or_na(job.error_message.as_deref().unwrap_or(""))),
        ("Resets", job.num_resets.to_string()),
        ("Failures", job.num_failures.to_string()),
        ("Cancel requested", job.cancel_requested.to_string()),
        ("Queued at", job.queued_at.to_string()),
        ("Started at", optional_time(job.started_at)),
        ("Finished at", optional_time(job.finished_at)),
    ];
    for (label, value) in facts {
        let _ = write!(
            body,
            "<dt>{label}</dt><dd class=\"{}\">{value}</dd>",
            label.to_lowercase().replace(' ', "-")
        );
    }
    body.push_str("</dl>\n<h2>Execution log</h2>\n");
    if job.log_entries.is_empty() {
        body.push_str("<p class=\"empty\">No log entries yet.</p>\n");
    }
    for entry in &job.log_entries {
        let exit_code = entry
            .exit_code
            .map(|code| code.to_string())
            .unwrap_or_else(|| "running".to_owned());
        let duration = entry
            .duration_ms
            .map(|ms| format!("{ms} ms"))
            .unwrap_or_else(|| "n/a".to_owned());
        let _ = writeln!(
            body,
            "<section class=\"log-entry\"><h3>{key}</h3><dl><dt>Command</dt><dd><code>{command}</code></dd>\
             <dt>Exit code</dt><dd>{exit_code}</dd><dt>Duration</dt><dd>{duration}</dd>\
             <dt>Updates</dt><dd>{updates}</dd></dl><pre>{out}</pre></section>",
            key = escape(&entry.key),
            command = escape(&entry.command.join(" ")),
            updates = entry.update_count,
            out = escape(&entry.out),
        );
    }
    body
}

async fn job(State(shared): State<Arc<Shared>>, Path((queue, id)): Path<(String, String)>) -> Response {
    let record = id
        .parse::<i64>()
        .ok()
        .and_then(|id| shared.read(|store| store.job(&queue, id)));
    match record {
        Some(job) => {
            let refresh = (!job.state.is_terminal()).then_some(2);
            page(
                &format!("Job {} #{}", job.queue, job.id),
                refresh,
                &job_body(&job),
            )
            .into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            page("Job not found", None, "<h1>Job not found</h1>\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape("<a href='x'>\"&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&quot;&amp;&quot;&lt;/a&gt;"
        );
    }

    #[test]
    fn relative_time_picks_a_readable_unit() {
        let now = Timestamp::now();
        let ago = |seconds: i64| relative_time(now - jiff::SignedDuration::from_secs(seconds), now);
        assert_eq!(ago(1), "1 second ago");
        assert_eq!(ago(42), "42 seconds ago");
        assert_eq!(ago(150), "2 minutes ago");
        assert_eq!(ago(7200), "2 hours ago");
    }
}
