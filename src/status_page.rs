//! The status page at `/`: one self-contained, self-refreshing HTML page of what the executor is doing (no external assets, no secrets).

use std::fmt::Write as _;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

use crate::{
    config::QueueSelection,
    context::Deps,
    history::{FinishedJob, MinuteCounts},
    k8s::{failure, labels},
    nfr,
    telemetry::{BUILD_VERSION, SystemInfo},
};

/// Seconds between the page's own reloads.
const REFRESH_SECONDS: u32 = 5;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2125}\
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse}td,th{border:1px solid #d0d7de;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f6f8fa}.ok{color:#1a7f37}.bad{color:#cf222e}.muted{color:#57606a}\
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #d0d7de;border-radius:6px;padding:.6em 1em;min-width:14em}\
.big{font-size:1.6em;font-weight:600}";

/// What the page is made from at one moment.
pub struct PageInput<'a> {
    pub deps: &'a Deps,
    pub system: &'a SystemInfo,
    pub frontend_answered: bool,
    pub now: Timestamp,
}

/// The whole page.
pub fn render(input: &PageInput<'_>) -> String {
    let nfr = input.deps.nfr.snapshot(input.now);
    let recent = input.deps.history.recent();
    let chart = input.deps.history.per_minute(input.now);
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>kube-executor {name}</title>\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\"><style>{STYLE}</style></head><body>\
         {header}{cards}<h2>Running jobs</h2>{running}<h2>Jobs finished per minute (last hour)</h2>{chart}\
         <h2>Last finished jobs</h2>{recent}{nfr}<h2>Events</h2>{events}\
         <p class=\"muted\">Refreshes every {REFRESH_SECONDS} s · <a href=\"/metrics\">/metrics</a> · \
         <a href=\"/nfr\">/nfr</a> · rendered {now}</p></body></html>",
        name = escape(&input.deps.executor_name),
        header = header(input),
        cards = cards(input, &nfr),
        running = running_jobs(input),
        chart = chart_svg(&chart),
        recent = finished_jobs(&recent),
        nfr = nfr_section(&nfr),
        events = events(input.deps),
        now = input.now.strftime("%Y-%m-%d %H:%M:%S UTC"),
    )
}

fn header(input: &PageInput<'_>) -> String {
    let (deps, system) = (input.deps, input.system);
    let cfg = &deps.config;
    let queues = match &cfg.queues {
        QueueSelection::Single(queue) => queue.clone(),
        QueueSelection::Multi(queues) => queues.join(", "),
    };
    let state = |good: bool, yes: &str, no: &str| {
        if good {
            format!("<span class=\"ok\">{yes}</span>")
        } else {
            format!("<span class=\"bad\">{no}</span>")
        }
    };
    format!(
        "<h1>kube-executor <span class=\"muted\">{name}</span></h1>\
         <p>Build {BUILD_VERSION}, reports version {reported}; git {git}; {os}/{arch}. Instance {instance}.</p>\
         <p>Frontend {frontend}: {fe}. Cluster (namespace {ns}): {cluster}. Queues: {queues}.</p>",
        name = escape(&deps.executor_name),
        reported = escape(&cfg.reported_version),
        git = escape(&system.git_version),
        os = escape(&system.os),
        arch = escape(&system.architecture),
        instance = escape(&cfg.instance_id),
        frontend = escape(&cfg.frontend_url),
        fe = state(input.frontend_answered, "answering", "not answered yet"),
        ns = escape(&cfg.kubernetes.namespace),
        cluster = state(deps.view.is_synced(), "watches synced", "watches syncing"),
        queues = escape(&queues),
    )
}

fn cards(input: &PageInput<'_>, nfr: &nfr::Snapshot) -> String {
    let slots = &input.system.slots;
    let percent = nfr
        .ulimits
        .percent_compliant
        .map_or_else(|| "—".to_string(), |p| format!("{p:.0}%"));
    format!(
        "<div class=\"cards\">\
         <div class=\"card\"><div class=\"muted\">Slots used</div><div class=\"big\" id=\"slots\">{used} of {max}</div></div>\
         <div class=\"card\"><div class=\"muted\">Pod restarts</div><div class=\"big\" id=\"pod-restarts\">{restarts}</div>\
         <div class=\"muted\">{recent} in the last hour</div></div>\
         <div class=\"card\"><div class=\"muted\">Job pods meeting the recommended ulimits</div>\
         <div class=\"big\" id=\"ulimits-percent\">{percent}</div>\
         <div class=\"muted\">{compliant} of {measured} measured; at least {nofile} open files, {nproc} processes</div></div>\
         </div>",
        used = slots.running(),
        max = slots.max(),
        restarts = nfr.pod_restarts.total,
        recent = nfr.pod_restarts.recent,
        compliant = nfr.ulimits.compliant,
        measured = nfr.ulimits.measured,
        nofile = nfr.ulimits.recommended.nofile,
        nproc = nfr.ulimits.recommended.nproc,
    )
}

fn running_jobs(input: &PageInput<'_>) -> String {
    let deps = input.deps;
    let mut rows = String::new();
    for (key, running) in deps.registry.all() {
        let pod = running.created().and_then(|created| deps.view.pod_of(&created));
        let (phase, node, step) = pod.as_deref().map_or_else(
            || ("not created yet".to_string(), String::new(), String::new()),
            pod_summary,
        );
        let elapsed = input.now.duration_since(running.started_at).as_secs().max(0);
        let _ = write!(
            rows,
            "<tr class=\"running-job\"><td>{id}</td><td>{queue}</td><td>{job}</td><td>{phase}</td>\
             <td>{node}</td><td>{step}</td><td>{elapsed} s</td></tr>",
            id = key.id,
            queue = escape(&key.queue),
            job = escape(&labels::job_name(&key.queue, key.id)),
            phase = escape(&phase),
            node = escape(&node),
            step = escape(&step),
        );
    }
    if rows.is_empty() {
        return "<p class=\"muted\">None.</p>".to_string();
    }
    format!(
        "<table><tr><th>ID</th><th>Queue</th><th>Kubernetes Job</th><th>Pod phase</th><th>Node</th>\
         <th>Current step</th><th>Elapsed</th></tr>{rows}</table>"
    )
}

/// Phase, node and the container running now (or the first one not finished).
fn pod_summary(pod: &Pod) -> (String, String, String) {
    let phase = pod
        .status
        .as_ref()
        .and_then(|status| status.phase.clone())
        .unwrap_or_else(|| "Pending".to_string());
    let node = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.node_name.clone())
        .unwrap_or_default();
    let step = failure::container_statuses(pod)
        .find(|cs| cs.state.as_ref().is_none_or(|state| state.terminated.is_none()))
        .map(|cs| cs.name.clone())
        .unwrap_or_default();
    (phase, node, step)
}

fn finished_jobs(jobs: &[FinishedJob]) -> String {
    if jobs.is_empty() {
        return "<p class=\"muted\">None yet.</p>".to_string();
    }
    let mut rows = String::new();
    for job in jobs {
        let class = if job.reason == "succeeded" { "ok" } else { "bad" };
        let _ = write!(
            rows,
            "<tr><td>{id}</td><td>{queue}</td><td>{name}</td><td class=\"{class}\">{reported} ({reason})</td>\
             <td>{message}</td><td>{finished}</td><td>{secs:.1} s</td></tr>",
            id = job.key.id,
            queue = escape(&job.key.queue),
            name = escape(&job.job_name),
            reported = job.reported_as,
            reason = job.reason,
            message = escape(job.message.as_deref().unwrap_or("")),
            finished = job.finished_at.strftime("%H:%M:%S"),
            secs = job.duration.as_secs_f64(),
        );
    }
    format!(
        "<table><tr><th>ID</th><th>Queue</th><th>Kubernetes Job</th><th>Outcome (cause)</th><th>Message</th>\
         <th>Finished (UTC)</th><th>Took</th></tr>{rows}</table>"
    )
}

/// Stacked bars per minute: succeeded (green) under unsuccessful (red), as inline SVG.
fn chart_svg(minutes: &[MinuteCounts]) -> String {
    const WIDTH: usize = 8;
    const HEIGHT: u32 = 80;
    let peak = minutes
        .iter()
        .map(|m| m.succeeded + m.unsuccessful)
        .max()
        .unwrap_or(0);
    let mut bars = String::new();
    for (i, minute) in minutes.iter().enumerate() {
        if minute.succeeded + minute.unsuccessful == 0 {
            continue;
        }
        let x = i * WIDTH;
        let good = minute.succeeded * HEIGHT / peak;
        let bad = minute.unsuccessful * HEIGHT / peak;
        let _ = write!(
            bars,
            "<rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{good}\" fill=\"#37b24d\"/>\
             <rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{bad}\" fill=\"#e03131\"/>",
            HEIGHT - good,
            WIDTH - 1,
            HEIGHT - good - bad,
            WIDTH - 1,
        );
    }
    let total: u32 = minutes.iter().map(|m| m.succeeded + m.unsuccessful).sum();
    format!(
        "<svg id=\"jobs-chart\" width=\"{}\" height=\"{HEIGHT}\" role=\"img\" aria-label=\"{total} jobs finished in the last hour\" \
         style=\"border-bottom:1px solid #d0d7de\">{bars}</svg>\
         <p class=\"muted\">{total} jobs in the last hour (peak {peak} a minute); green succeeded, red did not.</p>",
        minutes.len() * WIDTH,
    )
}

/// Both NFRs with their thresholds.
pub fn nfr_section(snapshot: &nfr::Snapshot) -> String {
    let r = &snapshot.pod_restarts;
    let u = &snapshot.ulimits;
    let executor = r.executor.map_or_else(
        || "unknown (no POD_NAME, or its pod cannot be read)".to_string(),
        |n| n.to_string(),
    );
    let percent = u
        .percent_compliant
        .map_or_else(|| "not measured yet".to_string(), |p| format!("{p}%"));
    format!(
        "<h2>NFRs</h2><table id=\"nfr\">\
         <tr><th>Pod restarts</th><td>{total} total: {jobs} in job pods, {executor} in this executor's pod; \
         {recent} in the last {window} s</td></tr>\
         <tr><th>Ulimits</th><td>{compliant} of {measured} measured job pods compliant ({percent}); \
         recommended at least {nofile} open files and {nproc} processes; \
         short of it: open files {nofile_failures}, processes {nproc_failures}</td></tr></table>\
         <p class=\"muted\">As of {updated} (JSON on <a href=\"/nfr\">/nfr</a>).</p>",
        total = r.total,
        jobs = r.jobs,
        recent = r.recent,
        window = r.recent_window_seconds,
        compliant = u.compliant,
        measured = u.measured,
        nofile = u.recommended.nofile,
        nproc = u.recommended.nproc,
        nofile_failures = u.failures.nofile,
        nproc_failures = u.failures.nproc,
        updated = snapshot.updated_at,
    )
}

fn events(deps: &Deps) -> String {
    let rows: String = deps
        .metrics
        .event_counts()
        .into_iter()
        .map(|(event, count)| format!("<tr><td>{}</td><td>{count}</td></tr>", escape(event)))
        .collect();
    if rows.is_empty() {
        return "<p class=\"muted\">None yet.</p>".to_string();
    }
    format!("<table><tr><th>Event</th><th>Count</th></tr>{rows}</table>")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_scales_bars_to_the_busiest_minute() {
        let minutes = [
            MinuteCounts {
                minute: 1,
                succeeded: 2,
                unsuccessful: 2,
            },
            MinuteCounts {
                minute: 2,
                succeeded: 1,
                unsuccessful: 0,
            },
        ];
        let svg = chart_svg(&minutes);
        assert!(
            svg.contains("<rect x=\"0\" y=\"40\" width=\"7\" height=\"40\" fill=\"#37b24d\"/>"),
            "{svg}"
        );
        assert!(
            svg.contains("<rect x=\"0\" y=\"0\" width=\"7\" height=\"40\" fill=\"#e03131\"/>"),
            "{svg}"
        );
        assert!(
            svg.contains("<rect x=\"8\" y=\"60\" width=\"7\" height=\"20\""),
            "{svg}"
        );
        assert!(svg.contains("5 jobs in the last hour (peak 4 a minute)"), "{svg}");
    }

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(escape("<b a=\"1\">&"), "&lt;b a=&quot;1&quot;&gt;&amp;");
    }
}
