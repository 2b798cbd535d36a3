//! End-to-end, through a fault-injecting proxy in front of the dev frontend: a container's output that cannot be recorded fails the job instead of completing it with that output missing.

mod support;

#[path = "../benches/reliability/proxy.rs"]
#[allow(dead_code)]
mod proxy;

use std::time::Duration;

use dev_frontend::JobState;
use proxy::{Fault, FaultProxy};
use support::{Env, job, step};

const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_entry_the_frontend_fails_to_create_errors_the_job_instead_of_completing_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = Env::start().await;
    let proxy = FaultProxy::start(env.frontend.url())
        .await
        .expect("start the fault proxy");
    // A 500 may mean the entry was added, so the executor must not add it again; the output it
    // would have held is then lost.
    proxy.set(Fault::Status(500), &["/addExecutionLogEntry"]);
    let id = env.frontend.enqueue(job(vec![step("quiet", &["echo printed"])]));
    let url = proxy.url();
    let executor = env.spawn_executor(&[("EXECUTOR_FRONTEND_URL", &url)]);

    let record = env.wait_terminal(id, TIMEOUT).await;
    assert_eq!(
        record.state,
        JobState::Errored,
        "retryable, not completed: {record:#?}\n{}",
        executor.log_text()
    );
    let message = record.error_message.clone().unwrap_or_default();
    assert!(
        message.contains("could not read or record the container log")
            && message.contains("execution log entry could not be created")
            && message.contains("HTTP 500"),
        "{message}"
    );
    assert!(proxy.faulted() >= 1, "the fault was met");
    assert!(record.log_entries.is_empty(), "{:#?}", record.log_entries);
    env.wait_no_objects(Duration::from_secs(60)).await;
}
