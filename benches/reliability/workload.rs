//! The jobs a scenario streams through the executor and what each one must end as.

use dev_frontend::{JobState, NewJob};

use crate::support::{job, step};

/// Marker that starts every numbered line, so shell traces (`+ echo …`) never count as output.
pub const MARK: &str = "L";

/// The kinds of job in a stream, each with the terminal state it must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Two steps, each printing numbered lines to stdout and stderr; completes.
    Numbered,
    /// The second step exits 3 after its lines; errored.
    FailingStep,
    /// A step allocating past the memory limit; errored (OOMKilled).
    Oom,
    /// A numbered job the harness cancels while it runs; failed.
    Cancel,
    /// A payload the executor must refuse before creating anything; failed.
    Hostile,
    /// A job streamed while every node is tainted, so no node takes its pod; errored with the
    /// scheduler's reason once the unschedulable wait is over.
    Unschedulable,
}

impl Kind {
    pub fn expected(self) -> JobState {
        match self {
            Kind::Numbered => JobState::Completed,
            Kind::FailingStep | Kind::Oom | Kind::Unschedulable => JobState::Errored,
            Kind::Cancel | Kind::Hostile => JobState::Failed,
        }
    }

    /// Whether its steps print numbered lines the suite checks.
    pub fn prints_numbered_lines(self) -> bool {
        matches!(self, Kind::Numbered | Kind::FailingStep)
    }
}

/// How many lines each numbered step prints per stream and how long it sleeps between them.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub lines: usize,
    pub pause_ms: u32,
}

/// A job the suite enqueued.
#[derive(Debug, Clone, Copy)]
pub struct Launched {
    pub id: i64,
    pub kind: Kind,
    /// Lines each numbered step prints per stream.
    pub lines: usize,
    /// The scenario's fault may force this job to run again.
    pub may_retry: bool,
}

/// The names of a numbered job's steps.
pub const STEPS: [&str; 2] = ["one", "two"];

/// Shell printing `lines` numbered stdout and stderr lines for step `name`.
fn numbered_commands(name: &str, shape: Shape) -> String {
    let pause = f64::from(shape.pause_ms) / 1000.0;
    format!(
        "for i in $(seq 1 {lines}); do echo \"{MARK} {name} out $i\"; echo \"{MARK} {name} err $i\" >&2; \
         sleep {pause}; done",
        lines = shape.lines
    )
}

/// A job of `kind`.
pub fn build(kind: Kind, shape: Shape, index: usize) -> NewJob {
    match kind {
        Kind::Numbered => job(STEPS
            .iter()
            .map(|name| step(name, &[&numbered_commands(name, shape)]))
            .collect()),
        // Slow enough that the cancel always comes while it runs.
        Kind::Cancel => job(vec![step(
            STEPS[0],
            &[&numbered_commands(
                STEPS[0],
                Shape {
                    lines: 120,
                    pause_ms: 500,
                },
            )],
        )]),
        Kind::FailingStep => job(vec![
            step(STEPS[0], &[&numbered_commands(STEPS[0], shape)]),
            step(STEPS[1], &[&numbered_commands(STEPS[1], shape), "exit 3"]),
        ]),
        Kind::Oom => job(vec![step(
            "hungry",
            &["python3 -c 'blocks = [bytearray(16 * 1024 * 1024) for _ in range(64)]; print(len(blocks))'"],
        )]),
        Kind::Hostile => hostile(index),
        Kind::Unschedulable => job(vec![step("unplaced", &["echo never"])]),
    }
}

/// Payloads the executor must refuse: shell and option injection, hostile file names.
fn hostile(index: usize) -> NewJob {
    let mut bad = job(vec![step("run", &["echo should-not-run"])]);
    bad.repository_name = "github.com/acme/widgets".into();
    match index % 4 {
        0 => bad.commit = "$(touch /tmp/kube-executor-reliability-injected)".into(),
        1 => bad.commit = "--upload-pack=touch /tmp/kube-executor-reliability-injected".into(),
        2 => {
            bad.repository_name = String::new();
            bad.files.insert("nextIndex.sh".into(), file("helper"));
        }
        _ => {
            bad.repository_name = String::new();
            bad.files.insert("a".into(), file("a"));
            bad.files.insert("a/b".into(), file("b"));
        }
    }
    bad
}

fn file(content: &str) -> dev_frontend::JobFile {
    dev_frontend::JobFile {
        content: Some(content.into()),
        ..dev_frontend::JobFile::default()
    }
}

/// The kind of the `index`th job of a mixed stream (the soak): mostly successes, then a failing
/// step, an OOM and a cancel in every ten.
pub fn mixed(index: usize) -> Kind {
    match index % 10 {
        3 => Kind::FailingStep,
        6 => Kind::Oom,
        8 => Kind::Cancel,
        _ => Kind::Numbered,
    }
}
