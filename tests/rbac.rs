//! The executor's Role is exactly what it needs: a full job succeeds as the chart's ServiceAccount,
//! and without any one of the Role's verbs the run fails with a permission error naming it.

mod support;

use std::time::Duration;

use dev_frontend::{DevFrontend, FrontendOptions, JobState};
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{PersistentVolumeClaim, Secret},
    rbac::v1::Role,
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
};
use support::{Env, INSTANCE, job, step};

/// Applies the repository's rbac/ manifests (the same rules as the chart's Role; scripts/check-deploy.sh
/// checks they agree) with kubectl, as an operator would.
fn apply_rbac(env: &Env) {
    let dir = format!("{}/rbac", env!("CARGO_MANIFEST_DIR"));
    let output = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(env.cluster.kubeconfig_path())
        .args(["apply", "--namespace", "default", "-k", &dir])
        .output()
        .expect("run kubectl");
    assert!(
        output.status.success(),
        "kubectl apply -k rbac failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Removes whatever a failed run left, as the admin.
async fn clean_up(env: &Env) {
    let params = ListParams::default().labels(&format!("kube-executor.io/instance={INSTANCE}"));
    let client = env.cluster.client();
    let dp = DeleteParams::background();
    let _ = Api::<Job>::namespaced(client.clone(), "default")
        .delete_collection(&dp, &params)
        .await;
    let _ = Api::<Secret>::namespaced(client.clone(), "default")
        .delete_collection(&dp, &params)
        .await;
    let _ = Api::<PersistentVolumeClaim>::namespaced(client, "default")
        .delete_collection(&dp, &params)
        .await;
    wait_all_gone(env, "clean-up").await;
}

/// Leaves a Secret and a PVC carrying the executor's labels but no owner, as a crash between
/// creating them and the Job would: the executor's startup sweep must remove them.
async fn plant_leftovers(env: &Env) {
    let client = env.cluster.client();
    let labels = serde_json::json!({
        "app.kubernetes.io/managed-by": "kube-executor",
        "kube-executor.io/instance": INSTANCE,
    });
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "sg-executor-job-batches-999-secrets", "labels": labels},
        "stringData": {"TOKEN": "stale"}
    }))
    .expect("secret fixture");
    let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "sg-executor-job-batches-999-pvc", "labels": labels},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .expect("pvc fixture");
    Api::<Secret>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &secret)
        .await
        .expect("plant a stray Secret");
    Api::<PersistentVolumeClaim>::namespaced(client, "default")
        .create(&PostParams::default(), &pvc)
        .await
        .expect("plant a stray PVC");
}

async fn our_pvcs(env: &Env) -> usize {
    let params = ListParams::default().labels(&format!("kube-executor.io/instance={INSTANCE}"));
    Api::<PersistentVolumeClaim>::namespaced(env.cluster.client(), "default")
        .list(&params)
        .await
        .expect("list PVCs")
        .items
        .len()
}

/// Waits until no Job, pod, Secret or PVC of the test executor is left after `what`.
async fn wait_all_gone(env: &Env, what: &str) {
    env.wait_no_objects(Duration::from_secs(60)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while our_pvcs(env).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "PVCs left after {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Everything a run produced that could hold a permission error.
struct RunResult {
    state: Option<JobState>,
    text: String,
    teardown_exit: Option<i64>,
}

/// Runs one job with the executor authenticated as the `executor` ServiceAccount. Returns once
/// the job is finished or the run shows `needle` (a permission error), whichever comes first.
async fn run_once(env: &Env, kubeconfig: &std::path::Path, needle: Option<&str>) -> RunResult {
    let frontend = DevFrontend::start(FrontendOptions::default())
        .await
        .expect("frontend");
    let id = frontend.enqueue(job(vec![step("work", &["echo rbac-run", "ls /job"])]));
    let extra = [
        ("EXECUTOR_FRONTEND_URL", frontend.url()),
        (
            "EXECUTOR_KUBERNETES_CONFIG_PATH",
            kubeconfig.display().to_string(),
        ),
        ("KUBERNETES_JOB_VOLUME_TYPE", "pvc".to_string()),
        ("KUBERNETES_JOB_VOLUME_SIZE", "1Gi".to_string()),
        ("KUBERNETES_JOB_SERVICE_ACCOUNT", "executor-job".to_string()),
        ("EXECUTOR_NUM_TOTAL_JOBS", "1".to_string()),
        // As the chart's Downward API sets them: the executor reads its own pod (get pods), which
        // here does not exist, so only the permission is exercised.
        ("POD_NAME", "kube-executor-rbac-test".to_string()),
        ("POD_NAMESPACE", "default".to_string()),
    ];
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut executor = env.spawn_executor(&extra);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let record = frontend.job("batches", id);
        let finished = record.as_ref().is_some_and(|r| r.state.is_terminal());
        let shown = needle.is_some_and(|n| executor.log_text().contains(n));
        if finished || shown || tokio::time::Instant::now() >= deadline {
            break;
        }
        let _ = frontend
            .wait_for_job("batches", id, Duration::from_millis(500), |r| {
                r.state.is_terminal()
            })
            .await;
    }
    executor.signal(15);
    executor.wait_exit(Duration::from_secs(60)).await;
    let record = frontend.job("batches", id);
    let mut text = executor.log_text();
    if let Some(r) = &record {
        text.push_str(r.error_message.as_deref().unwrap_or(""));
        for e in &r.log_entries {
            text.push_str(&e.out);
        }
    }
    RunResult {
        state: record.as_ref().map(|r| r.state),
        teardown_exit: record.as_ref().and_then(|r| {
            r.log_entries
                .iter()
                .find(|e| e.key == "teardown.kubernetes.job")
                .and_then(|e| e.exit_code)
        }),
        text,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_grants_exactly_what_a_full_job_needs() {
    let env = Env::start().await;
    apply_rbac(&env);
    let kubeconfig = env
        .cluster
        .service_account_kubeconfig("default", "executor")
        .await
        .expect("service account kubeconfig");
    let roles: Api<Role> = Api::namespaced(env.cluster.client(), "default");
    let original = roles.get("executor").await.expect("the Role was applied");

    plant_leftovers(&env).await;
    let full = run_once(&env, &kubeconfig, None).await;
    assert_eq!(full.state, Some(JobState::Completed), "{}", full.text);
    assert_eq!(full.teardown_exit, Some(0), "{}", full.text);
    assert!(
        !full.text.contains("forbidden"),
        "no permission error expected:\n{}",
        full.text
    );
    assert!(full.text.contains("stdout: rbac-run"), "{}", full.text);
    wait_all_gone(&env, "the full run").await;

    let rules = original.rules.clone().unwrap_or_default();
    let mut checked = 0;
    for (index, rule) in rules.iter().enumerate() {
        let resource = rule.resources.clone().unwrap_or_default().join(",");
        for verb in &rule.verbs {
            let mut reduced = roles.get("executor").await.expect("get Role");
            let mut reduced_rules = original.rules.clone().unwrap_or_default();
            reduced_rules[index].verbs.retain(|v| v != verb);
            if reduced_rules[index].verbs.is_empty() {
                // A rule needs at least one verb: removing its only verb removes the rule.
                reduced_rules.remove(index);
            }
            reduced.rules = Some(reduced_rules);
            roles
                .replace("executor", &PostParams::default(), &reduced)
                .await
                .expect("replace Role");
            let needle = format!("cannot {verb} resource \\\"{resource}\\\"");
            let plain_needle = format!("cannot {verb} resource \"{resource}\"");
            plant_leftovers(&env).await;
            let run = run_once(&env, &kubeconfig, Some(&plain_needle)).await;
            assert!(
                run.text.contains(&plain_needle) || run.text.contains(&needle),
                "without {verb} on {resource} the run must fail naming it; state {:?}, output:\n{}",
                run.state,
                run.text
            );
            assert_ne!(
                (run.state, run.teardown_exit),
                (Some(JobState::Completed), Some(0)),
                "without {verb} on {resource} the run must not look fully successful"
            );
            clean_up(&env).await;
            checked += 1;
        }
    }
    let mut restored = roles.get("executor").await.expect("get Role");
    restored.rules = original.rules.clone();
    roles
        .replace("executor", &PostParams::default(), &restored)
        .await
        .expect("restore Role");
    assert_eq!(checked, rules.iter().map(|r| r.verbs.len()).sum::<usize>());
    assert!(
        checked >= 15,
        "every verb of the Role was removed once ({checked})"
    );
}
