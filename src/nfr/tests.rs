//! Unit tests of the NFR figures: the measurement line, compliance, restarts and their window.

use super::*;

const RECOMMENDED: LimitFigures = LimitFigures {
    nofile: 65536,
    nproc: 4096,
};

fn at(text: &str) -> Timestamp {
    text.parse().expect("a valid timestamp")
}

/// A pod created at `created` whose containers have the given (name, restartCount, last
/// termination) and whose setup container ended with `setup_message`.
fn pod(
    uid: &str,
    created: &str,
    containers: &[(&str, i32, Option<&str>)],
    setup_message: Option<&str>,
) -> Arc<Pod> {
    let statuses: Vec<serde_json::Value> = containers
        .iter()
        .map(|(name, restarts, last)| {
            serde_json::json!({
                "name": name, "image": "i", "imageID": "", "ready": false, "restartCount": restarts,
                "state": {"running": {}},
                "lastState": last.map_or(serde_json::json!({}), |finished| serde_json::json!(
                    {"terminated": {"exitCode": 1, "finishedAt": finished}}
                )),
            })
        })
        .collect();
    let setup = setup_message.map(|message| {
        serde_json::json!([{
            "name": SETUP_CONTAINER, "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "message": message}}
        }])
    });
    let value = serde_json::json!({
        "metadata": {"name": uid, "uid": uid, "creationTimestamp": created},
        "status": {"containerStatuses": statuses, "initContainerStatuses": setup},
    });
    Arc::new(serde_json::from_value(value).expect("a pod"))
}

#[test]
fn the_measurement_line_is_read_with_unlimited_and_unknown_values() {
    assert_eq!(
        parse_ulimits("kube-executor-ulimits nofile=65536 nproc=unlimited\n"),
        Some(Ulimits {
            nofile: Some(Limit::Value(65536)),
            nproc: Some(Limit::Unlimited)
        })
    );
    assert_eq!(
        parse_ulimits("other text\nkube-executor-ulimits nofile=1024 nproc=unknown"),
        Some(Ulimits {
            nofile: Some(Limit::Value(1024)),
            nproc: None
        })
    );
    assert_eq!(parse_ulimits("kube-executor-ulimits nofile=unknown nproc="), None);
    assert_eq!(parse_ulimits("kube-executor-ulimitsX nofile=1"), None);
    assert_eq!(parse_ulimits("the step exited"), None);
}

#[test]
fn a_pod_complies_when_every_measured_limit_reaches_its_minimum() {
    let measured = |nofile, nproc| Ulimits { nofile, nproc };
    let none = LimitFigures::default();
    let v = |n| Some(Limit::Value(n));
    assert_eq!(shortfalls(measured(v(65536), v(4096)), RECOMMENDED), none);
    assert_eq!(
        shortfalls(measured(Some(Limit::Unlimited), None), RECOMMENDED),
        none,
        "unlimited and unmeasured never fall short"
    );
    assert_eq!(
        shortfalls(measured(v(1024), v(100)), RECOMMENDED),
        LimitFigures { nofile: 1, nproc: 1 }
    );
}

#[test]
fn percent_compliant_is_null_before_the_first_measurement_and_counts_each_pod_once() {
    let now = at("2025-01-01T10:00:00Z");
    let nfr = Nfr::new(RECOMMENDED, now);
    let snapshot = nfr.snapshot(now);
    assert_eq!(snapshot.ulimits.percent_compliant, None);
    let json = serde_json::to_value(&snapshot).expect("serializes");
    assert_eq!(json["ulimits"]["percentCompliant"], serde_json::Value::Null);
    assert_eq!(json["ulimits"]["recommended"]["nofile"], 65536);
    assert_eq!(json["updatedAt"], "2025-01-01T10:00:00Z");

    let created = "2025-01-01T10:00:01Z";
    let pods = [
        pod(
            "low",
            created,
            &[],
            Some("kube-executor-ulimits nofile=1024 nproc=unlimited"),
        ),
        pod(
            "high",
            created,
            &[],
            Some("kube-executor-ulimits nofile=1048576 nproc=8192"),
        ),
        pod(
            "odd",
            created,
            &[],
            Some("kube-executor-ulimits nofile=70000 nproc=100"),
        ),
        pod("running", created, &[], None),
    ];
    nfr.observe_job_pods(&pods, now);
    nfr.observe_job_pods(&pods, now);
    let u = nfr.snapshot(now).ulimits;
    assert_eq!((u.measured, u.compliant), (3, 1));
    assert_eq!(u.percent_compliant, Some(33.33));
    assert_eq!(u.failures, LimitFigures { nofile: 1, nproc: 1 });
}

#[test]
fn restarts_count_increments_once_and_leave_the_window_after_an_hour() {
    let start = at("2025-01-01T10:00:00Z");
    let nfr = Nfr::new(RECOMMENDED, start);
    let created = "2025-01-01T10:00:01Z";
    nfr.observe_job_pods(&[pod("a", created, &[("main", 0, None)], None)], start);
    let later = at("2025-01-01T10:10:00Z");
    nfr.observe_job_pods(&[pod("a", created, &[("main", 2, None)], None)], later);
    nfr.observe_job_pods(&[pod("a", created, &[("main", 2, None)], None)], later);
    let r = nfr.snapshot(later).pod_restarts;
    assert_eq!((r.total, r.jobs, r.executor, r.recent), (2, 2, None, 2));
    // Gone from the watch: forgotten, but still counted.
    nfr.observe_job_pods(&[], later);
    let after_window = at("2025-01-01T11:10:01Z");
    let r = nfr.snapshot(after_window).pod_restarts;
    assert_eq!((r.total, r.recent), (2, 0));
}

#[test]
fn restarts_before_this_process_are_history_except_each_containers_latest() {
    let start = at("2025-01-01T10:00:00Z");
    let nfr = Nfr::new(RECOMMENDED, start);
    let own = pod(
        "executor",
        "2024-12-01T00:00:00Z",
        &[
            ("executor", 5, Some("2025-01-01T09:59:50Z")),
            ("sidecar", 1, Some("2024-12-02T00:00:00Z")),
        ],
        None,
    );
    nfr.observe_executor_pod(&own, start);
    let r = nfr.snapshot(start).pod_restarts;
    assert_eq!((r.total, r.jobs, r.executor, r.recent), (6, 0, Some(6), 1));
    // A restart seen later is recent.
    let later = at("2025-01-01T10:05:00Z");
    let own = pod(
        "executor",
        "2024-12-01T00:00:00Z",
        &[("executor", 5, None), ("sidecar", 2, None)],
        None,
    );
    nfr.observe_executor_pod(&own, later);
    let r = nfr.snapshot(later).pod_restarts;
    assert_eq!((r.total, r.executor, r.recent), (7, Some(7), 2));
}

#[test]
fn metrics_carry_both_nfrs_and_omit_the_percentage_before_a_measurement() {
    let now = at("2025-01-01T10:00:00Z");
    let nfr = Nfr::new(RECOMMENDED, now);
    let metrics = crate::metrics::Metrics::for_tests();
    let text = metrics.render(1, 0, &nfr.snapshot(now));
    assert!(
        text.contains("kube_executor_pod_restarts_total{source=\"jobs\"} 0\n"),
        "{text}"
    );
    assert!(!text.contains("source=\"executor\""), "{text}");
    assert!(text.contains("kube_executor_ulimit_pods_measured 0\n"), "{text}");
    assert!(!text.contains("kube_executor_ulimit_percent_compliant"), "{text}");
    let pods = [pod(
        "low",
        "2025-01-01T10:00:01Z",
        &[],
        Some("kube-executor-ulimits nofile=1024 nproc=unlimited"),
    )];
    nfr.observe_job_pods(&pods, now);
    let text = metrics.render(1, 0, &nfr.snapshot(now));
    assert!(
        text.contains("kube_executor_ulimit_percent_compliant 0\n"),
        "{text}"
    );
    assert!(
        text.contains("kube_executor_ulimit_failures_total{limit=\"nofile\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("kube_executor_ulimit_recommended{limit=\"nproc\"} 4096\n"),
        "{text}"
    );
}
