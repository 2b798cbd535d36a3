//! End-to-end in headless Chromium: the status page shows a running job and both NFRs, and the frontend's Instances page shows the executor active.

mod support;

use std::{path::Path, time::Duration};

use dev_frontend::JobState;
use support::{Env, Gate, job, step};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Debian's Chromium, which `scripts/install-tools.sh` installs.
const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium on `url` with `args` and returns its stdout. The flags keep it off the
/// network (this machine refuses outside connections) and out of any shared profile.
async fn chromium(profile: &Path, url: &str, args: &[&str]) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/install-tools.sh"
    );
    let out = tokio::time::timeout(
        TIMEOUT,
        tokio::process::Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                &format!("--user-data-dir={}", profile.display()),
            ])
            .args(args)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finishes")
    .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The executor's `/nfr`, once a job pod's limits were measured.
async fn nfr_after_a_measurement(health: std::net::SocketAddr) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (status, body) = support::http_get(health, "/nfr").await.expect("/nfr answers");
        assert_eq!(status, 200, "{body}");
        let nfr: serde_json::Value = serde_json::from_str(&body).expect("/nfr is JSON");
        if nfr["ulimits"]["measured"].as_u64() >= Some(1) {
            return nfr;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no measurement within {TIMEOUT:?}: {nfr}"
        );
        // The measurement arrives with a watch event the test cannot subscribe to.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The running job's row, both NFR figures as `/nfr` gives them, the chart, and no password.
fn assert_page_shows(dom: &str, id: i64, nfr: &serde_json::Value, token: &str) {
    // Steps are init containers, so the pod is Pending while they run, as Kubernetes reports it.
    let job_row = format!(
        "<tr class=\"running-job\"><td>{id}</td><td>batches</td><td>sg-executor-job-batches-{id}</td>\
         <td>Pending</td><td>node-1</td><td>step-kubernetes-wait</td>"
    );
    assert!(
        dom.contains(&job_row),
        "no running job row {job_row:?} in:\n{dom}"
    );
    let percent = nfr["ulimits"]["percentCompliant"].as_f64().expect("a percentage");
    let restarts = nfr["podRestarts"]["total"].as_u64().expect("a restart count");
    for shown in [
        format!("<div class=\"big\" id=\"ulimits-percent\">{percent:.0}%</div>"),
        format!("<div class=\"big\" id=\"pod-restarts\">{restarts}</div>"),
        "<svg id=\"jobs-chart\"".to_string(),
    ] {
        assert!(dom.contains(&shown), "{shown:?} not on the page:\n{dom}");
    }
    assert!(!dom.contains(token), "the frontend password is on the page");
}

/// Saves the page as the test's screenshot artifact.
async fn save_screenshot(profile: &Path, page_url: &str) {
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifact dir");
    let screenshot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        profile,
        page_url,
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,1100",
            "--hide-scrollbars",
        ],
    )
    .await;
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    println!(
        "status page screenshot: {} ({} bytes)",
        screenshot.display(),
        png.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_running_job_and_both_nfrs_in_a_browser() {
    let env = Env::start().await;
    let gate = Gate::new();
    let scratch = Gate::new();
    let id = env
        .frontend
        .enqueue(job(vec![step("wait", &[&gate.wait_cmd(), "echo released"])]));
    let executor = env.spawn_executor(&[]);
    let gate_file = gate.path("open").display().to_string();
    env.wait_for_output("batches", id, &gate_file, TIMEOUT).await;
    let nfr = nfr_after_a_measurement(executor.health).await;

    let page_url = format!("http://{}/", executor.health);
    let dom = chromium(&scratch.path("profile"), &page_url, &["--dump-dom"]).await;
    assert_page_shows(&dom, id, &nfr, env.frontend.access_token().unwrap_or("?"));

    save_screenshot(&scratch.path("profile"), &page_url).await;

    let instances = chromium(
        &scratch.path("profile"),
        &format!("{}/site-admin/executors", env.frontend.url()),
        &["--dump-dom"],
    )
    .await;
    let record = env
        .frontend
        .executors()
        .into_iter()
        .next()
        .expect("the executor heartbeats");
    for shown in [
        "title=\"Active\"".to_string(),
        record.hostname.clone(),
        record.executor_version.clone(),
    ] {
        assert!(
            instances.contains(&shown),
            "{shown:?} not on the Instances page:\n{instances}"
        );
    }

    gate.open();
    let record = env.wait_terminal(id, TIMEOUT).await;
    assert_eq!(record.state, JobState::Completed, "{record:#?}");
    env.wait_no_objects(Duration::from_secs(30)).await;
}
