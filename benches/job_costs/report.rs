//! The bench's figures, their targets, and the report: a table on stdout, `bench.md` and the
//! plot `bench.svg`.

use std::{fmt::Write as _, path::PathBuf};

use crate::audit::{self, Counts};

/// Containers of the bench's trivial job: setup, one step, main.
const CONTAINERS_PER_JOB: f64 = 3.0;
/// Resources a job's own calls touch; the rest (access reviews at start-up) are start-up costs.
const JOB_RESOURCES: [&str; 4] = ["jobs", "secrets", "persistentvolumeclaims", "pods"];

pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|s| s.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50, p95 and p99 in milliseconds.
#[derive(Clone, Copy)]
pub struct Spread {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Spread {
    fn of(samples: &[f64]) -> Spread {
        Spread {
            p50: percentile(samples, 50.0),
            p95: percentile(samples, 95.0),
            p99: percentile(samples, 99.0),
        }
    }
}

pub struct Overheads {
    pub dequeue_to_created: Spread,
    pub succeeded_to_marked: Spread,
    /// Where Succeeded → markComplete went, one spread per [`STAGES`] entry.
    pub stages: [Spread; STAGES.len()],
}

/// The stages of Succeeded → markComplete, as the frontend saw the job's calls arrive.
pub const STAGES: [&str; 5] = [
    "Succeeded → every step entry closed",
    "→ teardown.kubernetes.job entry added",
    "→ teardown.fs entry added",
    "→ markComplete",
    "the teardown's deletes (the entry's duration)",
];

impl Overheads {
    pub fn from_samples(
        to_created: Vec<f64>,
        to_marked: Vec<f64>,
        stages: [Vec<f64>; STAGES.len()],
    ) -> Overheads {
        Overheads {
            dequeue_to_created: Spread::of(&to_created),
            succeeded_to_marked: Spread::of(&to_marked),
            stages: stages.map(|samples| Spread::of(&samples)),
        }
    }
}

pub struct Round {
    pub label: String,
    pub concurrency: usize,
    pub replicas: usize,
    pub jobs: usize,
    pub completed: usize,
    pub overheads: Overheads,
    pub requests: Counts,
    pub jobs_per_minute: f64,
    pub executor_cpu_seconds: f64,
    pub cluster_cpu_seconds: f64,
    pub executor_peak_rss_kib: u64,
    pub max_live_per_instance: usize,
}

impl Round {
    fn per_job(&self, count: u64) -> f64 {
        count as f64 / self.jobs as f64
    }

    /// Object calls on the job's own resources, per job.
    fn job_object_calls(&self) -> f64 {
        let calls: u64 = self
            .requests
            .iter()
            .filter(|(key, _)| {
                let mut words = key.split(' ');
                let verb = words.next().unwrap_or_default();
                let resource = words.next().unwrap_or_default();
                !matches!(verb, "watch" | "list") && JOB_RESOURCES.contains(&resource)
            })
            .map(|(_, n)| n)
            .sum();
        self.per_job(calls)
    }
}

pub struct Streaming {
    pub concurrency: usize,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    pub ramp_seconds: f64,
    pub completed: usize,
}

pub struct LogLatency {
    pub lines: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub floor_p50_ms: f64,
    pub floor_p99_ms: f64,
}

pub struct LogThroughput {
    pub mib: f64,
    pub executor_mib_per_s: f64,
    pub floor_mib_per_s: f64,
    pub executor_cpu_seconds_per_mib: f64,
}

pub struct Results {
    pub quick: bool,
    pub nodes: usize,
    pub floor: Option<Round>,
    /// The floor's and the executor's rounds of one job at a time.
    pub unloaded: Vec<Round>,
    pub idle_rss_kib: u64,
    pub levels: Vec<Round>,
    pub log_latency: Option<LogLatency>,
    pub log_throughput: Option<LogThroughput>,
    pub streaming: Vec<Streaming>,
}

impl Results {
    /// Every round of trivial jobs in report order: the floor, one job at a time, then the levels.
    fn trivial_rounds(&self) -> impl Iterator<Item = &Round> {
        self.floor.iter().chain(&self.unloaded).chain(&self.levels)
    }

    pub fn new(quick: bool, nodes: usize) -> Results {
        Results {
            quick,
            nodes,
            floor: None,
            unloaded: Vec::new(),
            idle_rss_kib: 0,
            levels: Vec::new(),
            log_latency: None,
            log_throughput: None,
            streaming: Vec::new(),
        }
    }
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

/// A target's verdict: met or not, and the figure against the target.
type Verdict = (bool, String);

/// Checks the targets; returns a line per target with its verdict.
fn verdicts(results: &Results) -> Vec<Verdict> {
    let mut out = Vec::new();
    overhead_verdicts(results, &mut out);
    for round in &results.levels {
        round_verdicts(round, &mut out);
    }
    log_and_memory_verdicts(results, &mut out);
    out
}

/// The executor's overheads at the lowest concurrency against the floor's.
fn overhead_verdicts(results: &Results, out: &mut Vec<Verdict>) {
    let mut check = |ok: bool, text: String| out.push((ok, text));
    if let (Some(floor), Some(first)) = (&results.floor, results.levels.first()) {
        let (e, f) = (
            first.overheads.dequeue_to_created,
            floor.overheads.dequeue_to_created,
        );
        for (name, ev, fv) in [
            ("p50", e.p50, f.p50),
            ("p95", e.p95, f.p95),
            ("p99", e.p99, f.p99),
        ] {
            check(
                ev <= 1.5 * fv,
                format!(
                    "dequeue → Job created {name} at concurrency {}: {ev:.1} ms, {:.2}× the floor's {fv:.1} ms (target ≤ 1.5×)",
                    first.concurrency,
                    ev / fv
                ),
            );
        }
        let (e, f) = (
            first.overheads.succeeded_to_marked,
            floor.overheads.succeeded_to_marked,
        );
        check(
            e.p99 <= 1.5 * f.p99,
            format!(
                "pod Succeeded → markComplete p99 at concurrency {}: {:.1} ms, {:.2}× the floor's {:.1} ms (target ≤ 1.5×)",
                first.concurrency,
                e.p99,
                e.p99 / f.p99,
                f.p99
            ),
        );
    }
    unloaded_verdict(results, out);
}

/// The absolute Succeeded → markComplete target, where no other job loads the machine: at
/// concurrency 10 the control plane and ten jobs' containers share the 2 CPUs, and the floor's own
/// p99 is several times 50 ms.
fn unloaded_verdict(results: &Results, out: &mut Vec<Verdict>) {
    let executor = results.unloaded.iter().find(|r| r.replicas > 0);
    let floor = results.unloaded.iter().find(|r| r.replicas == 0);
    if let (Some(executor), Some(floor)) = (executor, floor) {
        let (e, f) = (
            executor.overheads.succeeded_to_marked,
            floor.overheads.succeeded_to_marked,
        );
        out.push((
            e.p99 <= 50.0,
            format!(
                "pod Succeeded → markComplete p99, one job at a time: {:.1} ms (target ≤ 50 ms; the floor's {:.1} ms)",
                e.p99, f.p99
            ),
        ));
    }
}

/// Requests, completions and slots of one round.
fn round_verdicts(round: &Round, out: &mut Vec<Verdict>) {
    let mut check = |ok: bool, text: String| out.push((ok, text));
    let classes = audit::classify(&round.requests);
    let objects = round.job_object_calls();
    let streams = round.per_job(classes.log_streams);
    let watches = round.per_job(classes.watches);
    check(
        objects <= 4.0,
        format!(
            "{} at {}: {objects:.2} object calls per job (target ≤ 4)",
            round.label, round.concurrency
        ),
    );
    check(
        streams <= CONTAINERS_PER_JOB,
        format!(
            "{} at {}: {:.2} log streams per container (target 1)",
            round.label,
            round.concurrency,
            streams / CONTAINERS_PER_JOB
        ),
    );
    check(
        watches < 0.1,
        format!(
            "{} at {}: {watches:.3} watches per job, shared by all jobs (target < 0.1)",
            round.label, round.concurrency
        ),
    );
    check(
        round.completed == round.jobs,
        format!(
            "{} at {}: {} of {} jobs completed",
            round.label, round.concurrency, round.completed, round.jobs
        ),
    );
    let slots = round.concurrency.div_ceil(round.replicas.max(1));
    check(
        round.max_live_per_instance <= slots,
        format!(
            "{} at {}: at most {} live Jobs per instance seen (slots {slots})",
            round.label, round.concurrency, round.max_live_per_instance
        ),
    );
}

fn log_and_memory_verdicts(results: &Results, out: &mut Vec<Verdict>) {
    let mut check = |ok: bool, text: String| out.push((ok, text));
    if let Some(latency) = &results.log_latency {
        check(
            latency.p99_ms < 1500.0,
            format!("log latency p99: {:.0} ms (target < 1,500 ms)", latency.p99_ms),
        );
    }
    if let Some(throughput) = &results.log_throughput {
        let mb_per_s = throughput.executor_mib_per_s * 1.048_576;
        check(
            mb_per_s >= 10.0,
            format!("one job's log throughput: {mb_per_s:.1} MB/s (target ≥ 10 MB/s)"),
        );
    }
    check(
        mb(results.idle_rss_kib) <= 20.0,
        format!("idle RSS: {:.1} MB (target ≤ 20 MB)", mb(results.idle_rss_kib)),
    );
    for (concurrency, limit) in [(100, 60.0), (500, 200.0)] {
        if let Some(s) = results.streaming.iter().find(|s| s.concurrency == concurrency) {
            check(
                mb(s.rss_kib) <= limit,
                format!(
                    "RSS with {concurrency} jobs streaming: {:.1} MB (target ≤ {limit} MB)",
                    mb(s.rss_kib)
                ),
            );
        }
    }
}

/// Prints the report, writes it with its plot, and returns the targets missed.
pub fn write(results: &Results) -> Vec<String> {
    let verdicts = verdicts(results);
    let text = markdown(results, &verdicts);
    println!("{text}");
    let dir = std::env::var("BENCH_REPORT_DIR").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("create the report directory");
    std::fs::write(dir.join("bench.md"), &text).expect("write bench.md");
    std::fs::write(dir.join("bench.svg"), crate::report::plot(results)).expect("write bench.svg");
    println!("report: {}", dir.join("bench.md").display());
    verdicts
        .into_iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, text)| text)
        .collect()
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{cpus} CPUs ({model}), {:.1} GiB of memory",
        memory as f64 / 1024.0 / 1024.0
    )
}

fn markdown(results: &Results, verdicts: &[Verdict]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# kube-executor: what each job costs\n");
    let _ = writeln!(
        md,
        "Generated by `scripts/bench.sh{}` on {}, {} simulated nodes, at {}. Every figure was measured in this run; the floor is a minimal client making the same calls (dequeue, create the Secret and the Job, two teardown entries, delete, markComplete). Requests are counted from the API server's audit log by user agent.\n",
        if results.quick { " --quick" } else { "" },
        machine(),
        results.nodes,
        jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(md, "![requests, memory and latency by concurrency](bench.svg)\n");
    let _ = writeln!(md, "## Targets\n");
    for (ok, text) in verdicts {
        let _ = writeln!(md, "- {} {text}", if *ok { "met:" } else { "**MISSED:**" });
    }
    rounds_table(&mut md, results);
    stages_table(&mut md, results);
    requests_table(&mut md, results);
    logs_and_memory(&mut md, results);
    paper_estimate(&mut md, results);
    md
}

fn rounds_table(md: &mut String, results: &Results) {
    let _ = writeln!(md, "\n## Rounds of trivial jobs (one `true` step)\n");
    let _ = writeln!(
        md,
        "| round | concurrency | jobs | dequeue → Job created p50 / p95 / p99 ms | Succeeded → markComplete p50 / p95 / p99 ms | jobs/min | executor CPU s | control plane + node agent CPU s | executor peak RSS MB | most live Jobs per instance |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for round in results.trivial_rounds() {
        let (c, m) = (
            round.overheads.dequeue_to_created,
            round.overheads.succeeded_to_marked,
        );
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {} |",
            round.label,
            round.concurrency,
            round.jobs,
            c.p50,
            c.p95,
            c.p99,
            m.p50,
            m.p95,
            m.p99,
            round.jobs_per_minute,
            round.executor_cpu_seconds,
            round.cluster_cpu_seconds,
            mb(round.executor_peak_rss_kib),
            round.max_live_per_instance
        );
    }
    let _ = writeln!(
        md,
        "\nWhat bounds throughput: the CPU columns. The machine has {} CPUs for the control plane, the node agent's containers, the frontend and the executor together.",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
}

/// Succeeded → markComplete stage by stage, from the times the frontend received each call.
fn stages_table(md: &mut String, results: &Results) {
    let _ = writeln!(md, "\n## Where Succeeded → markComplete goes (p50 / p99 ms)\n");
    let _ = writeln!(md, "| round | concurrency | {} |", STAGES.join(" | "));
    let _ = writeln!(md, "|---|---|{}", "---|".repeat(STAGES.len()));
    for round in results.trivial_rounds() {
        let cells: Vec<String> = round
            .overheads
            .stages
            .iter()
            .map(|s| match s.p50.is_nan() {
                true => "–".to_string(),
                false => format!("{:.1} / {:.1}", s.p50, s.p99),
            })
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            round.label,
            round.concurrency,
            cells.join(" | ")
        );
    }
    let _ = writeln!(
        md,
        "\nEach stage runs from the previous one's call arriving at the frontend; the floor client adds no step entries, and adds its teardown entries before its deletes."
    );
}

fn requests_table(md: &mut String, results: &Results) {
    let _ = writeln!(md, "\n## Kubernetes requests per job (API server audit log)\n");
    let _ = writeln!(
        md,
        "| round | concurrency | object calls on job resources | log streams per container | watches | start-up lists and access reviews | all requests by verb and resource (per job) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for round in &results.levels {
        let classes = audit::classify(&round.requests);
        let all: Vec<String> = round
            .requests
            .iter()
            .map(|(key, n)| format!("{key} {:.3}", round.per_job(*n)))
            .collect();
        let start_up = round.per_job(classes.lists + classes.object_calls) - round.job_object_calls();
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.2} | {:.3} | {start_up:.3} | {} |",
            round.label,
            round.concurrency,
            round.job_object_calls(),
            round.per_job(classes.log_streams) / CONTAINERS_PER_JOB,
            round.per_job(classes.watches),
            all.join(", ")
        );
    }
    let _ = writeln!(
        md,
        "\nEach round starts its executors afresh, so its start-up requests (the permission preflight's access reviews, the leftover sweep's lists, the two watches' lists) are shared by only that round's jobs."
    );
}

fn logs_and_memory(md: &mut String, results: &Results) {
    let _ = writeln!(md, "\n## Logs and memory\n");
    if let Some(l) = &results.log_latency {
        let _ = writeln!(
            md,
            "- Log latency, printed in the pod → in the frontend, {} lines: p50 {:.0} ms, p99 {:.0} ms; a minimal follower of the same log: p50 {:.0} ms, p99 {:.0} ms. The executor sends an entry at most about once a second while it grows.",
            l.lines, l.p50_ms, l.p99_ms, l.floor_p50_ms, l.floor_p99_ms
        );
    }
    if let Some(t) = &results.log_throughput {
        let _ = writeln!(
            md,
            "- One job printing {:.0} MiB of 128-byte lines: the executor read it at {:.1} MiB/s, a minimal follower of the same log at {:.1} MiB/s (both from the first line's stamp); executor CPU {:.3} s per MiB.",
            t.mib, t.executor_mib_per_s, t.floor_mib_per_s, t.executor_cpu_seconds_per_mib
        );
    }
    let _ = writeln!(
        md,
        "- Executor RSS idle (ready, watches synced): {:.1} MB.",
        mb(results.idle_rss_kib)
    );
    for s in &results.streaming {
        let _ = writeln!(
            md,
            "- {} jobs streaming a line a second, all followed at once (reached in {:.0} s): RSS {:.1} MB ({:.0} KiB per job above idle), peak {:.1} MB; {} of {} completed.",
            s.concurrency,
            s.ramp_seconds,
            mb(s.rss_kib),
            s.rss_kib.saturating_sub(results.idle_rss_kib) as f64 / s.concurrency as f64,
            mb(s.peak_rss_kib),
            s.completed,
            s.concurrency
        );
    }
}

fn paper_estimate(md: &mut String, results: &Results) {
    let Some(round) = results
        .levels
        .iter()
        .filter(|r| r.replicas == 1)
        .max_by_key(|r| r.concurrency)
    else {
        return;
    };
    let classes = audit::classify(&round.requests);
    let objects = round.job_object_calls();
    let streams = round.per_job(classes.log_streams);
    let per_job_kib = results
        .streaming
        .iter()
        .max_by_key(|s| s.concurrency)
        .map_or(0.0, |s| {
            s.rss_kib.saturating_sub(results.idle_rss_kib) as f64 / s.concurrency as f64
        });
    let _ = writeln!(md, "\n## On paper: 10,000 concurrent jobs over 200 nodes\n");
    let _ = writeln!(
        md,
        "From the per-job costs measured at concurrency {} ({objects:.2} object calls and {streams:.2} log streams per job, no per-job watch), with jobs of 10 minutes on average (1,000 jobs a minute, 16.7 a second):\n",
        round.concurrency
    );
    let _ = writeln!(
        md,
        "- object calls: {:.0} a second; log streams opened: {:.0} a second; 10,000 log streams open at any time (one per running container);",
        16.7 * objects,
        16.7 * streams
    );
    let per_second = 16.7 * (objects + streams);
    let qps: f64 = kube_executor::config::default_of("EXECUTOR_KUBERNETES_CLIENT_QPS")
        .and_then(|qps| qps.parse().ok())
        .unwrap_or(f64::NAN);
    let _ = writeln!(
        md,
        "- client-side limit: {per_second:.0} requests a second in all, so at least {} executors at the default EXECUTOR_KUBERNETES_CLIENT_QPS of {qps} (one per node asks {:.1} a second each);",
        (per_second / qps).ceil(),
        per_second / 200.0
    );
    let _ = writeln!(
        md,
        "- watches: 2 per executor (Jobs and Pods, label-filtered), e.g. 400 with one executor per node — each receives only its own jobs' events;"
    );
    let _ = writeln!(
        md,
        "- executor memory: {per_job_kib:.0} KiB per followed job measured, so about {:.0} MB per executor at 50 jobs per node.",
        mb(results.idle_rss_kib) + 50.0 * per_job_kib * 1024.0 / 1e6
    );
}

/// Three panels by concurrency: requests per job, executor memory per job, overhead p99.
pub fn plot(results: &Results) -> String {
    let single: Vec<&Round> = results.levels.iter().filter(|r| r.replicas == 1).collect();
    let requests: Vec<(f64, f64)> = single
        .iter()
        .map(|r| {
            (
                r.concurrency as f64,
                r.requests.values().sum::<u64>() as f64 / r.jobs as f64,
            )
        })
        .collect();
    let memory: Vec<(f64, f64)> = results
        .streaming
        .iter()
        .map(|s| {
            (
                s.concurrency as f64,
                s.rss_kib.saturating_sub(results.idle_rss_kib) as f64 / s.concurrency as f64,
            )
        })
        .collect();
    let latency: Vec<(f64, f64)> = single
        .iter()
        .map(|r| (r.concurrency as f64, r.overheads.dequeue_to_created.p99))
        .collect();
    let panels = [
        ("Kubernetes requests per job", requests),
        ("executor KiB per streaming job", memory),
        ("dequeue → Job created p99, ms", latency),
    ];
    let mut svg = String::from(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="960" height="300" font-family="sans-serif" font-size="12">"#,
    );
    for (index, (title, points)) in panels.iter().enumerate() {
        panel(&mut svg, 20.0 + index as f64 * 320.0, title, points);
    }
    svg.push_str("</svg>\n");
    svg
}

fn panel(svg: &mut String, left: f64, title: &str, points: &[(f64, f64)]) {
    let (width, height, top) = (260.0, 200.0, 50.0);
    let max_y = points
        .iter()
        .map(|p| p.1)
        .filter(|y| y.is_finite())
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.15;
    let xs: Vec<f64> = points.iter().map(|p| p.0.ln()).collect();
    let (min_x, max_x) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let x_of = |x: f64| {
        left + 30.0
            + if max_x > min_x {
                (x.ln() - min_x) / (max_x - min_x) * (width - 40.0)
            } else {
                (width - 40.0) / 2.0
            }
    };
    let y_of = |y: f64| top + height - y / max_y * height;
    let _ = write!(
        svg,
        r#"<text x="{left}" y="30" font-weight="bold">{title}</text><line x1="{}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{}" y1="{top}" x2="{}" y2="{}" stroke="black"/>"#,
        left + 20.0,
        top + height,
        left + width,
        top + height,
        left + 20.0,
        left + 20.0,
        top + height
    );
    let path: Vec<String> = points
        .iter()
        .filter(|p| p.1.is_finite())
        .map(|(x, y)| format!("{:.1},{:.1}", x_of(*x), y_of(*y)))
        .collect();
    let _ = write!(
        svg,
        r#"<polyline fill="none" stroke="steelblue" stroke-width="2" points="{}"/>"#,
        path.join(" ")
    );
    for (x, y) in points.iter().filter(|p| p.1.is_finite()) {
        let _ = write!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="steelblue"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{y:.1}</text><text x="{:.1}" y="{}" text-anchor="middle">{x}</text>"#,
            x_of(*x),
            y_of(*y),
            x_of(*x),
            y_of(*y) - 8.0,
            x_of(*x),
            top + height + 16.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">concurrent jobs</text>"#,
        left + width / 2.0,
        top + height + 34.0
    );
}
