//! Scenarios 1 and 2: the kube-apiserver killed and restarted mid-run (with a Job deleted straight
//! from etcd while it is down), and watches expired by an etcd compaction.

use std::time::{Duration, Instant};

use base64::Engine;
use dev_frontend::FrontendOptions;
use serde_json::{Value, json};

use super::Plan;
use crate::{
    bed::{Bed, Setup},
    report::Figures,
    workload::Kind,
};

/// How long the API server stays down.
const DOWN_FOR: Duration = Duration::from_secs(10);

pub async fn api_server_restart(plan: &Plan) -> Figures {
    let mut bed = Bed::start(
        "1. kube-apiserver killed and restarted",
        Setup {
            // The job whose Job is deleted during the outage is errored once, then runs again.
            frontend: FrontendOptions {
                max_failures: 2,
                ..FrontendOptions::default()
            },
            ..Setup::new(4)
        },
    )
    .await;
    bed.enqueue(plan.jobs(12), plan.shape(), |_| Kind::Numbered);
    bed.wait_running(2, plan.wait()).await;
    let victim = running_job(&bed);

    let killed = Instant::now();
    bed.env.cluster.kill_api_server();
    let deleted = delete_job_in_etcd(bed.env.cluster.etcd_url(), victim).await;
    bed.allow_retry(victim);
    tokio::time::sleep(DOWN_FOR).await;
    // The fault ends when the API server is started again; recovery includes its start-up.
    bed.fault_ended(
        &format!("kube-apiserver SIGKILLed, down {DOWN_FOR:?}, restarted on the same port"),
        Instant::now(),
    );
    bed.env
        .cluster
        .start_api_server()
        .await
        .expect("restart the API server");
    let back = Instant::now();
    match deleted {
        Ok(()) => bed.figures.faults.push(format!(
            "the Job of running job {victim} and its pod deleted from etcd while the API server was down"
        )),
        Err(e) => bed
            .figures
            .problems
            .push(format!("could not delete job {victim}'s Job in etcd: {e}")),
    }
    expect_readiness_dip(&mut bed, killed, back).await;
    let figures = bed.finish(plan.finish()).await;
    expect_retried(figures, victim)
}

pub async fn watches_expired(plan: &Plan) -> Figures {
    let mut bed = Bed::start("2. watches expired (410 Gone)", Setup::new(4)).await;
    let etcd = bed.env.cluster.etcd_url().to_owned();
    let mut old_version = None;
    for round in 0..2 {
        // Fresh jobs each round, so some are running when the watches expire.
        bed.enqueue(plan.jobs(12), plan.shape(), |_| Kind::Numbered);
        bed.wait_running(2, plan.wait()).await;
        if old_version.is_none() {
            old_version = jobs_resource_version(&bed).await;
        }
        match compact(&etcd).await {
            Ok(revision) => bed
                .figures
                .faults
                .push(format!("etcd compacted to revision {revision}")),
            Err(e) => bed
                .figures
                .problems
                .push(format!("compaction {round} failed: {e}")),
        }
        // Dropping every watch connection makes each client resume from a compacted version.
        let cut = Instant::now();
        bed.env.cluster.kill_api_server();
        bed.fault_ended(
            "every watch connection cut (API server killed and started again at once)",
            Instant::now(),
        );
        bed.env
            .cluster
            .start_api_server()
            .await
            .expect("restart the API server");
        expect_readiness_dip(&mut bed, cut, Instant::now()).await;
    }
    match old_version {
        Some(version) => match watch_status(&bed, &version).await {
            Some(410) => bed.figures.notes.push(format!(
                "a watch from resourceVersion {version} (before the compactions) is answered 410 Gone"
            )),
            other => bed.figures.problems.push(format!(
                "a watch from the compacted version got {other:?}, not 410"
            )),
        },
        None => bed
            .figures
            .problems
            .push("could not read the Jobs' resourceVersion".into()),
    }
    bed.finish(plan.finish()).await
}

/// The id of a job whose step is running.
fn running_job(bed: &Bed) -> i64 {
    bed.env
        .frontend
        .jobs()
        .into_iter()
        .find(|r| !r.state.is_terminal() && r.log_entries.iter().any(|e| e.key.starts_with("step.")))
        .map(|r| r.id)
        .expect("a running job")
}

/// /readyz must have failed while the API server was away and pass again soon after.
async fn expect_readiness_dip(bed: &mut Bed, from: Instant, to: Instant) {
    // The readiness poller runs every 250 ms; one more answer shows the state after `to`.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if to - from >= Duration::from_secs(2) && !bed.ready.failed_between(from, to + Duration::from_secs(5)) {
        bed.figures
            .problems
            .push("/readyz kept passing while the API server was down".into());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !bed.ready.ready_now() {
        if Instant::now() > deadline {
            bed.figures
                .problems
                .push("/readyz did not pass within 60 s of the API server's return".into());
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The victim must have been retried (its first run errored because its Job vanished) and the
/// retry must have completed it.
fn expect_retried(mut figures: Figures, victim: i64) -> Figures {
    if figures.retried == 0 {
        figures.problems.push(format!(
            "job {victim}, whose Job vanished while the API server was down, was not run again"
        ));
    }
    figures
}

async fn etcd_post(etcd: &str, path: &str, body: Value) -> Result<Value, String> {
    let response = reqwest::Client::new()
        .post(format!("{etcd}{path}"))
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let value: Value = response.json().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(value)
    } else {
        Err(format!("{status}: {value}"))
    }
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Deletes the Job of queue job `id` and its pods from etcd, as a cascading delete during the
/// outage would have left them (the API server and its watchers never see it happen).
async fn delete_job_in_etcd(etcd: &str, id: i64) -> Result<(), String> {
    let name = format!("sg-executor-job-batches-{id}");
    let job = format!("/registry/jobs/default/{name}");
    let answer = etcd_post(etcd, "/v3/kv/deleterange", json!({"key": b64(&job)})).await?;
    if answer["deleted"].as_str() != Some("1") {
        return Err(format!("etcd deleted no Job: {answer}"));
    }
    // Every key starting with the pods' prefix: the range ends where the prefix's last byte + 1 starts.
    let pods = format!("/registry/pods/default/{name}-");
    let end = format!("/registry/pods/default/{name}.");
    etcd_post(
        etcd,
        "/v3/kv/deleterange",
        json!({"key": b64(&pods), "range_end": b64(&end)}),
    )
    .await?;
    Ok(())
}

/// Compacts etcd's history up to its current revision; returns that revision.
async fn compact(etcd: &str) -> Result<String, String> {
    let range = etcd_post(etcd, "/v3/kv/range", json!({"key": b64("/"), "limit": 1})).await?;
    let revision = range["header"]["revision"]
        .as_str()
        .ok_or_else(|| format!("no revision in {range}"))?
        .to_owned();
    etcd_post(
        etcd,
        "/v3/kv/compaction",
        json!({"revision": revision, "physical": true}),
    )
    .await?;
    Ok(revision)
}

async fn jobs_resource_version(bed: &Bed) -> Option<String> {
    let list = bed
        .env
        .jobs_api()
        .list_metadata(&kube::api::ListParams::default())
        .await
        .ok()?;
    list.metadata.resource_version
}

/// The status a watch of Jobs from `version` ends with: 410 when that version is gone.
async fn watch_status(bed: &Bed, version: &str) -> Option<u16> {
    use futures_util::StreamExt;
    let params = kube::api::WatchParams::default().timeout(5);
    let stream = bed.env.jobs_api().watch(&params, version).await;
    let mut stream = match stream {
        Ok(stream) => stream.boxed(),
        Err(kube::Error::Api(status)) => return Some(status.code),
        Err(_) => return None,
    };
    while let Some(event) = stream.next().await {
        if let Ok(kube::api::WatchEvent::Error(status)) = event {
            return Some(status.code);
        }
    }
    Some(200)
}
