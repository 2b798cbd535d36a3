//! End-to-end: secrets that span lines or hold quotes stay hidden under `set -x`, in step output,
//! in termination messages and in the executor's own log.

mod support;

use std::time::Duration;

use dev_frontend::{JobRecord, JobState};
use support::{Env, Executor, job, step};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A fake PEM block: its armour lines are not secret (see `redact`), its body lines are.
const PEM: &str = "-----BEGIN FAKE KEY-----\nMIIBfakeLINEone+/=\nzzFAKElineTWO==\n-----END FAKE KEY-----";
const PEM_SHOWN: &str = "[REDACTED_PEM]";
const QUOTED: &str = "pa'ss wörd$x";
const QUOTED_SHOWN: &str = "[REDACTED_QUOTED]";

/// Text that shows a secret leaked: the secrets whole, each body line of the PEM, the quoted
/// secret as bash traces it, and the tail every traced form of it shares.
const LEAKS: &[&str] = &[
    PEM,
    "MIIBfakeLINEone+/=",
    "zzFAKElineTWO==",
    QUOTED,
    r"pa'\''ss wörd$x",
    "wörd$x",
    r"w\303\266rd$x",
];

/// A job whose step sees both secrets in its environment and runs `commands` under `set -x`.
fn secret_job(commands: &[&str]) -> dev_frontend::NewJob {
    let mut step = step("hostile", commands);
    step.env = vec![format!("SECRET_PEM={PEM}"), format!("SECRET_Q={QUOTED}")];
    let mut job = job(vec![step]);
    job.redacted_values = [
        (PEM.to_string(), PEM_SHOWN.to_string()),
        (QUOTED.to_string(), QUOTED_SHOWN.to_string()),
    ]
    .into();
    job
}

/// Waits for the job to end without printing its record on timeout (it may hold a secret).
async fn wait_terminal_quietly(env: &Env, id: i64) -> JobRecord {
    match env
        .frontend
        .wait_for_job("batches", id, TIMEOUT, |j| j.state.is_terminal())
        .await
    {
        Ok(record) => record,
        Err(_) => panic!("job {id} did not finish in time"),
    }
}

/// Every text about the job that left the executor, named for the failure message.
fn outputs(record: &JobRecord, executor: &Executor) -> Vec<(String, String)> {
    let mut texts = Vec::new();
    for entry in &record.log_entries {
        texts.push((format!("log entry {} output", entry.key), entry.out.clone()));
        texts.push((
            format!("log entry {} command", entry.key),
            entry.command.join(" "),
        ));
    }
    for (n, mark) in record.mark_calls.iter().enumerate() {
        texts.push((
            format!("mark call {n}"),
            mark.error_message.clone().unwrap_or_default(),
        ));
    }
    texts.push((
        "record error message".into(),
        record.error_message.clone().unwrap_or_default(),
    ));
    texts.push(("executor log".into(), executor.log_text()));
    texts
}

/// Fails, naming only where and which leak pattern (by index), if any secret form shows.
fn assert_no_leak(record: &JobRecord, executor: &Executor) {
    for (place, text) in outputs(record, executor) {
        for (n, leak) in LEAKS.iter().enumerate() {
            assert!(!text.contains(leak), "{place} shows secret form #{n} of LEAKS");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traced_multi_line_and_quoted_secrets_never_show() {
    let env = Env::start().await;
    let id = env.frontend.enqueue(secret_job(&[
        r#"echo "$SECRET_PEM""#,
        r#"echo "$SECRET_Q""#,
        r#"printf '%s\n' "$SECRET_Q" "$SECRET_PEM""#,
        r#"copy="$SECRET_Q"; key="$SECRET_PEM""#,
        r#"f=$(mktemp); printf '%s\n' "$SECRET_PEM" "$SECRET_Q" > "$f"; cat "$f"; rm -f "$f""#,
    ]));
    let mut executor = env.spawn_executor(&[]);
    executor.private_log = true;
    let record = wait_terminal_quietly(&env, id).await;
    assert_eq!(
        record.state,
        JobState::Completed,
        "the step was expected to succeed"
    );
    assert_no_leak(&record, &executor);
    let out: String = record.log_entries.iter().map(|e| e.out.as_str()).collect();
    // The step really printed both secrets (now stand-ins), traced and as output.
    assert!(out.contains(PEM_SHOWN), "no redacted PEM line in the output");
    assert!(
        out.contains(&format!("'{QUOTED_SHOWN}'")),
        "no redacted trace of the quoted secret"
    );
    assert!(
        out.contains(&format!("stdout: {QUOTED_SHOWN}")),
        "no redacted output line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_the_termination_message_is_redacted_in_the_mark() {
    let env = Env::start().await;
    let id = env.frontend.enqueue(secret_job(&[
        r#"printf '%s\n%s\n' "$SECRET_Q" "$SECRET_PEM" > /dev/termination-log; exit 1"#,
    ]));
    let mut executor = env.spawn_executor(&[]);
    executor.private_log = true;
    let record = wait_terminal_quietly(&env, id).await;
    assert_ne!(record.state, JobState::Completed, "the step was expected to fail");
    assert_no_leak(&record, &executor);
    let mut marked = record
        .mark_calls
        .iter()
        .filter_map(|m| m.error_message.as_deref());
    assert!(
        marked.any(|m| m.contains(QUOTED_SHOWN)),
        "no mark message carries the stand-in of the termination message"
    );
    assert!(
        executor.log_text().contains(QUOTED_SHOWN),
        "the executor's log does not carry the redacted failure message"
    );
}
