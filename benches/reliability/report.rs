//! Each scenario's figures and the report table the suite prints and writes to docs/reliability.md.

use std::time::{Duration, Instant};

use crate::checks::Tally;

/// What one scenario measured.
#[derive(Debug, Default)]
pub struct Figures {
    pub name: &'static str,
    pub jobs: usize,
    pub faults: Vec<String>,
    pub fault_ends: Vec<Instant>,
    pub lost: usize,
    pub duplicates: usize,
    pub leaked: usize,
    pub lines_wrong: usize,
    pub retried: usize,
    pub crashes: usize,
    pub limit: usize,
    pub max_concurrency: usize,
    pub recovery: Option<Duration>,
    pub peak_rss_kib: u64,
    /// Extra measurements worth a line under the table (e.g. the soak's slopes).
    pub notes: Vec<String>,
    /// Failed assertions; any makes the suite fail.
    pub problems: Vec<String>,
}

impl Figures {
    pub fn new(name: &'static str) -> Figures {
        Figures {
            name,
            ..Figures::default()
        }
    }

    pub fn absorb(&mut self, tally: Tally, jobs: usize, leaked: usize) {
        self.jobs = jobs;
        self.lost = tally.lost;
        self.duplicates = tally.duplicates;
        self.lines_wrong = tally.lines_wrong;
        self.retried = tally.retried;
        self.leaked = leaked;
        self.problems.extend(tally.problems);
    }

    /// A scenario that panicked: its figures are unknown, and it failed.
    pub fn aborted(name: &'static str, why: String) -> Figures {
        let mut figures = Figures::new(name);
        figures.problems.push(format!("the scenario aborted: {why}"));
        figures
    }

    /// Whether every must-be-zero figure is zero and every assertion held.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.leaked == 0
            && self.lines_wrong == 0
            && self.crashes == 0
            && self.max_concurrency <= self.limit
            && self.problems.is_empty()
    }
}

/// The Markdown report: a table, then notes and problems per scenario.
pub fn render(all: &[Figures], header: &str) -> String {
    let mut out = String::new();
    out.push_str(header);
    out.push_str(
        "\n| scenario | result | jobs | faults | lost | duplicate runs | leaked objects | lines lost/dup | \
         retried runs | max concurrency (limit) | recovery | peak RSS |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for f in all {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} |\n",
            f.name,
            if f.passed() { "pass" } else { "FAIL" },
            f.jobs,
            f.faults.len(),
            f.lost,
            f.duplicates,
            f.leaked,
            f.lines_wrong,
            f.retried,
            f.max_concurrency,
            f.limit,
            f.recovery
                .map_or_else(|| "-".to_string(), |d| format!("{:.1} s", d.as_secs_f64())),
            if f.peak_rss_kib == 0 {
                "-".to_string()
            } else {
                format!("{:.1} MiB", f.peak_rss_kib as f64 / 1024.0)
            },
        ));
    }
    for f in all {
        out.push_str(&format!("\n### {}\n\n", f.name));
        for fault in &f.faults {
            out.push_str(&format!("- fault: {fault}\n"));
        }
        for note in &f.notes {
            out.push_str(&format!("- {note}\n"));
        }
        for problem in &f.problems {
            out.push_str(&format!(
                "- **problem**: {}\n",
                shortened(problem).replace('\n', "\n  ")
            ));
        }
    }
    out
}

/// A problem's text cut to a readable length (some quote a whole log entry).
fn shortened(problem: &str) -> String {
    const LIMIT: usize = 1500;
    match problem.char_indices().nth(LIMIT) {
        Some((at, _)) => format!("{}… (cut)", &problem[..at]),
        None => problem.to_owned(),
    }
}
