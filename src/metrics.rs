//! The executor's Prometheus metrics: Sourcegraph's executor families, the Kubernetes-specific ones, and their text exposition (format 0.0.4).
//!
//! The same text is served on `/metrics` and sent in every heartbeat's `prometheusMetrics`, where
//! the frontend parses it with Go's `expfmt` text parser. That parser reads the 0.0.4 format only:
//! OpenMetrics output (`# EOF`, counters declared without `_total`) would reach Sourcegraph as
//! untyped series, so the exposition is the `prometheus` crate's text encoder.

use std::{sync::Arc, time::Duration};

use prometheus::{
    Counter, Encoder as _, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{events::Event, nfr};

/// Buckets of Sourcegraph's `src_executor_processor_duration_seconds`.
const PROCESSOR_DURATION_BUCKETS: [f64; 11] = [
    30.0, 60.0, 150.0, 300.0, 450.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];
/// Buckets of Sourcegraph's operation metrics (`src_apiworker_*`), Prometheus' defaults.
const OPERATION_DURATION_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets of the waits a job spends before its pod runs: seconds to many minutes.
const WAIT_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// A frontend call of `src_apiworker_apiclient_queue_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOp {
    Dequeue,
    MarkComplete,
    MarkErrored,
    MarkFailed,
    Heartbeat,
    AddExecutionLogEntry,
    UpdateExecutionLogEntry,
}

impl QueueOp {
    fn label(self) -> &'static str {
        match self {
            Self::Dequeue => "Dequeue",
            Self::MarkComplete => "MarkComplete",
            Self::MarkErrored => "MarkErrored",
            Self::MarkFailed => "MarkFailed",
            Self::Heartbeat => "Heartbeat",
            Self::AddExecutionLogEntry => "AddExecutionLogEntry",
            Self::UpdateExecutionLogEntry => "UpdateExecutionLogEntry",
        }
    }
}

/// A runtime operation of `src_apiworker_command_*`, named as Sourcegraph's Kubernetes runtime names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandOp {
    JobCreate,
    JobDelete,
    PodLogs,
    PodWait,
}

impl CommandOp {
    fn label(self) -> &'static str {
        match self {
            Self::JobCreate => "kubernetes.job.create",
            Self::JobDelete => "kubernetes.job.delete",
            Self::PodLogs => "kubernetes.pod.logs",
            Self::PodWait => "kubernetes.pod.wait",
        }
    }
}

/// Sourcegraph's rate/errors/duration triple of one operation family, by `op`.
#[derive(Debug, Clone)]
struct Operations {
    total: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
}

impl Operations {
    fn new(registry: &Registry, family: &str, what: &str) -> prometheus::Result<Self> {
        let name = |suffix: &str| format!("src_{family}_{suffix}");
        Ok(Self {
            total: counter(
                registry,
                &name("total"),
                &format!("Total number of {what}."),
                &["op"],
            )?,
            errors: counter(
                registry,
                &name("errors_total"),
                &format!("Number of {what} that failed."),
                &["op"],
            )?,
            duration: histogram(
                registry,
                &name("duration_seconds"),
                &format!("Time spent on {what}."),
                &OPERATION_DURATION_BUCKETS,
                &["op"],
            )?,
        })
    }

    fn observe(&self, op: &str, elapsed: Duration, ok: bool) {
        self.total.with_label_values(&[op]).inc();
        if !ok {
            self.errors.with_label_values(&[op]).inc();
        }
        self.duration
            .with_label_values(&[op])
            .observe(elapsed.as_secs_f64());
    }
}

/// Every metric of one executor; cheap to clone, shared by all tasks.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Families>,
}

struct Families {
    registry: Registry,
    queue_label: String,
    processor_total: IntCounterVec,
    processor_errors: IntCounterVec,
    processor_duration: HistogramVec,
    processor_handlers: IntGaugeVec,
    queue_calls: Operations,
    file_calls: Operations,
    commands: Operations,
    slots: IntGaugeVec,
    dequeue_to_job_created: HistogramVec,
    pending_before_running: HistogramVec,
    outcomes: IntCounterVec,
    log_bytes: IntCounter,
    log_lines: IntCounter,
    kubernetes_requests: IntCounterVec,
    rate_limited: Counter,
    dequeue_paced: Counter,
    watch_restarts: IntCounterVec,
    events: IntCounterVec,
    build_info: IntGaugeVec,
    nfr: NfrFamilies,
}

/// The two operational NFRs, set from their snapshot at each rendering.
struct NfrFamilies {
    restarts: IntCounterVec,
    restarts_recent: IntGauge,
    ulimit_measured: IntGauge,
    ulimit_compliant: IntGauge,
    /// No sample before the first measurement (the figure is undefined then, not 0).
    ulimit_percent: GaugeVec,
    ulimit_failures: IntCounterVec,
    ulimit_recommended: IntGaugeVec,
}

impl NfrFamilies {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            restarts: counter(
                registry,
                "kube_executor_pod_restarts_total",
                "Container restarts observed in job pods and in the executor's own pod.",
                &["source"],
            )?,
            restarts_recent: plain_gauge(
                registry,
                "kube_executor_pod_restarts_recent",
                "Container restarts observed within the last hour.",
            )?,
            ulimit_measured: plain_gauge(
                registry,
                "kube_executor_ulimit_pods_measured",
                "Job pods whose soft limits were measured.",
            )?,
            ulimit_compliant: plain_gauge(
                registry,
                "kube_executor_ulimit_pods_compliant",
                "Measured job pods whose soft limits all reach the recommended minimums.",
            )?,
            ulimit_percent: {
                let metric = GaugeVec::new(
                    Opts::new(
                        "kube_executor_ulimit_percent_compliant",
                        "Percentage of measured job pods whose soft limits comply.",
                    ),
                    &[],
                )?;
                registry.register(Box::new(metric.clone()))?;
                metric
            },
            ulimit_failures: counter(
                registry,
                "kube_executor_ulimit_failures_total",
                "Measured job pods whose soft limit fell short of the recommended minimum.",
                &["limit"],
            )?,
            ulimit_recommended: gauge(
                registry,
                "kube_executor_ulimit_recommended",
                "Recommended minimum soft limits (EXECUTOR_RECOMMENDED_ULIMIT_*).",
                &["limit"],
            )?,
        })
    }

    fn set(&self, snapshot: &nfr::Snapshot) {
        let (restarts, ulimits) = (&snapshot.pod_restarts, &snapshot.ulimits);
        raise_to(&self.restarts.with_label_values(&["jobs"]), restarts.jobs);
        if let Some(executor) = restarts.executor {
            raise_to(&self.restarts.with_label_values(&["executor"]), executor);
        }
        self.restarts_recent.set(restarts.recent as i64);
        self.ulimit_measured.set(ulimits.measured as i64);
        self.ulimit_compliant.set(ulimits.compliant as i64);
        match ulimits.percent_compliant {
            Some(percent) => self.ulimit_percent.with_label_values::<&str>(&[]).set(percent),
            None => self.ulimit_percent.reset(),
        }
        for (limit, failures, recommended) in [
            ("nofile", ulimits.failures.nofile, ulimits.recommended.nofile),
            ("nproc", ulimits.failures.nproc, ulimits.recommended.nproc),
        ] {
            raise_to(&self.ulimit_failures.with_label_values(&[limit]), failures);
            self.ulimit_recommended
                .with_label_values(&[limit])
                .set(recommended as i64);
        }
    }
}

/// Brings a counter up to a total counted elsewhere (totals only grow).
fn raise_to(counter: &IntCounter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

impl Metrics {
    /// The metrics of an executor serving `queue_label` (the queue name, or the sorted names
    /// joined with `_` in multi-queue mode, as Sourcegraph labels them).
    ///
    /// # Errors
    /// Only on an invalid or clashing metric definition below, which the unit tests rule out.
    pub fn new(queue_label: &str, reported_version: &str) -> prometheus::Result<Self> {
        Ok(Self {
            inner: Arc::new(Families::new(queue_label, reported_version)?),
        })
    }

    /// Counts one occurrence of a lifecycle event.
    pub fn record(&self, event: Event) {
        self.inner.events.with_label_values(&[event.label()]).inc();
    }

    /// Lifecycle event counts by label, leaving out the ones that never happened.
    pub fn event_counts(&self) -> Vec<(&'static str, u64)> {
        Event::ALL
            .iter()
            .map(|event| (event.label(), self.event_count(*event)))
            .filter(|(_, count)| *count > 0)
            .collect()
    }

    /// How often `event` happened.
    pub fn event_count(&self, event: Event) -> u64 {
        self.inner.events.with_label_values(&[event.label()]).get()
    }

    /// Metrics for a unit test.
    #[cfg(test)]
    pub fn for_tests() -> Self {
        Self::new("test", "test").expect("the metric definitions are valid")
    }

    /// Seconds the Kubernetes client held requests back, for a unit test.
    #[cfg(test)]
    pub fn rate_limited_seconds(&self) -> f64 {
        self.inner.rate_limited.get()
    }

    /// A job handler started.
    pub fn handler_started(&self) {
        self.handlers().inc();
    }

    /// A job handler ended after `duration`; `errored` when the job did not succeed.
    pub fn handler_finished(&self, duration: Duration, errored: bool) {
        let f = &self.inner;
        let labels = [f.queue_label.as_str(), "Handle"];
        self.handlers().dec();
        f.processor_total.with_label_values(&labels).inc();
        if errored {
            f.processor_errors.with_label_values(&labels).inc();
        }
        f.processor_duration
            .with_label_values(&labels)
            .observe(duration.as_secs_f64());
    }

    pub fn observe_queue_call(&self, op: QueueOp, elapsed: Duration, ok: bool) {
        self.inner.queue_calls.observe(op.label(), elapsed, ok);
    }

    /// A workspace file download (`op` Get, as Sourcegraph's files client names it).
    pub fn observe_file_get(&self, elapsed: Duration, ok: bool) {
        self.inner.file_calls.observe("Get", elapsed, ok);
    }

    pub fn observe_command(&self, op: CommandOp, elapsed: Duration, ok: bool) {
        self.inner.commands.observe(op.label(), elapsed, ok);
    }

    pub fn observe_dequeue_to_job_created(&self, elapsed: Duration) {
        let f = &self.inner;
        f.dequeue_to_job_created
            .with_label_values(&[f.queue_label.as_str()])
            .observe(elapsed.as_secs_f64());
    }

    /// Time from the Job's creation until its pod's first container ran.
    pub fn observe_pending_before_running(&self, elapsed: Duration) {
        let f = &self.inner;
        f.pending_before_running
            .with_label_values(&[f.queue_label.as_str()])
            .observe(elapsed.as_secs_f64());
    }

    /// A job ended: `outcome` is how it was reported, `reason` why (fixed labels only).
    pub fn record_outcome(&self, outcome: &str, reason: &str) {
        let f = &self.inner;
        f.outcomes
            .with_label_values(&[f.queue_label.as_str(), outcome, reason])
            .inc();
    }

    /// Output forwarded into execution log entries.
    pub fn record_log_output(&self, bytes: usize, lines: usize) {
        self.inner.log_bytes.inc_by(bytes as u64);
        self.inner.log_lines.inc_by(lines as u64);
    }

    /// One Kubernetes API request; `code` is the HTTP status, or `error` without an answer.
    pub fn record_kubernetes_request(&self, verb: &str, resource: &str, code: &str) {
        self.inner
            .kubernetes_requests
            .with_label_values(&[verb, resource, code])
            .inc();
    }

    /// The Kubernetes client held its next request back for `held` to keep to its rate limit.
    pub fn record_rate_limited(&self, held: Duration) {
        self.inner.rate_limited.inc_by(held.as_secs_f64());
    }

    /// The dequeue loop waited `held` for the Kubernetes client's rate limit to have room for a job.
    pub fn record_dequeue_paced(&self, held: Duration) {
        self.inner.dequeue_paced.inc_by(held.as_secs_f64());
    }

    /// A watch of `resource` failed and was started again.
    pub fn record_watch_restart(&self, resource: &str) {
        self.inner.watch_restarts.with_label_values(&[resource]).inc();
    }

    /// The exposition, with the slot gauges set to `used` of `total` and the NFRs to `nfr`.
    pub fn render(&self, total_slots: usize, used_slots: usize, nfr: &nfr::Snapshot) -> String {
        let f = &self.inner;
        f.nfr.set(nfr);
        let queue = f.queue_label.as_str();
        f.slots
            .with_label_values(&[queue, "total"])
            .set(total_slots as i64);
        f.slots.with_label_values(&[queue, "used"]).set(used_slots as i64);
        let mut text = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&f.registry.gather(), &mut text) {
            tracing::warn!(%error, "metrics could not be encoded");
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    fn handlers(&self) -> prometheus::IntGauge {
        let f = &self.inner;
        f.processor_handlers.with_label_values(&[f.queue_label.as_str()])
    }
}

impl Families {
    fn new(queue_label: &str, reported_version: &str) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let queue_op = &["queue", "op"];
        let families = Self {
            processor_total: counter(
                &registry,
                "src_executor_processor_total",
                "Job handler executions.",
                queue_op,
            )?,
            processor_errors: counter(
                &registry,
                "src_executor_processor_errors_total",
                "Job handler executions that did not succeed.",
                queue_op,
            )?,
            processor_duration: histogram(
                &registry,
                "src_executor_processor_duration_seconds",
                "Time spent handling a job.",
                &PROCESSOR_DURATION_BUCKETS,
                queue_op,
            )?,
            processor_handlers: gauge(
                &registry,
                "src_executor_processor_handlers",
                "Jobs being handled.",
                &["queue"],
            )?,
            queue_calls: Operations::new(&registry, "apiworker_apiclient_queue", "queue client calls")?,
            file_calls: Operations::new(&registry, "apiworker_apiclient_files", "files client calls")?,
            commands: Operations::new(&registry, "apiworker_command", "runtime operations")?,
            slots: gauge(
                &registry,
                "kube_executor_slots",
                "Job slots (EXECUTOR_MAXIMUM_NUM_JOBS) and slots in use.",
                &["queue", "state"],
            )?,
            dequeue_to_job_created: histogram(
                &registry,
                "kube_executor_dequeue_to_job_created_seconds",
                "Time from dequeuing a job to its Kubernetes Job being created.",
                &WAIT_BUCKETS,
                &["queue"],
            )?,
            pending_before_running: histogram(
                &registry,
                "kube_executor_pod_pending_seconds",
                "Time from a Job's creation until its pod's first container ran.",
                &WAIT_BUCKETS,
                &["queue"],
            )?,
            outcomes: counter(
                &registry,
                "kube_executor_job_outcomes_total",
                "Finished jobs by how they were reported and why.",
                &["queue", "outcome", "reason"],
            )?,
            log_bytes: plain_counter(
                &registry,
                "kube_executor_log_bytes_total",
                "Bytes of container output forwarded into execution log entries.",
            )?,
            log_lines: plain_counter(
                &registry,
                "kube_executor_log_lines_total",
                "Lines of container output forwarded into execution log entries.",
            )?,
            kubernetes_requests: counter(
                &registry,
                "kube_executor_kubernetes_requests_total",
                "Kubernetes API requests by verb, resource and HTTP status.",
                &["verb", "resource", "code"],
            )?,
            rate_limited: float_counter(
                &registry,
                "kube_executor_kubernetes_rate_limited_seconds_total",
                "Seconds the Kubernetes client held requests back for its client-side rate limit \
                 (EXECUTOR_KUBERNETES_CLIENT_QPS and _BURST); requests queue behind the one held.",
            )?,
            dequeue_paced: float_counter(
                &registry,
                "kube_executor_dequeue_paced_seconds_total",
                "Seconds the dequeue loop waited, with a free slot, until half the Kubernetes client's \
                 rate-limit burst was free again, so running jobs' log streams and deletes are not \
                 queued behind new jobs' creates.",
            )?,
            watch_restarts: counter(
                &registry,
                "kube_executor_watch_restarts_total",
                "Kubernetes watches that failed and were started again.",
                &["resource"],
            )?,
            events: counter(
                &registry,
                "kube_executor_events_total",
                "Job lifecycle events.",
                &["event"],
            )?,
            build_info: gauge(
                &registry,
                "kube_executor_build_info",
                "The executor's build version and the version it reports.",
                &["version", "reported_version"],
            )?,
            nfr: NfrFamilies::new(&registry)?,
            queue_label: queue_label.to_string(),
            registry,
        };
        families
            .build_info
            .with_label_values(&[crate::telemetry::BUILD_VERSION, reported_version])
            .set(1);
        // Series that exist from the start show 0 instead of being absent until first used, so
        // rates and dashboards work before the first job.
        let handle = [queue_label, "Handle"];
        families.processor_total.with_label_values(&handle);
        families.processor_errors.with_label_values(&handle);
        families.processor_handlers.with_label_values(&[queue_label]);
        for event in Event::ALL {
            families.events.with_label_values(&[event.label()]);
        }
        Ok(families)
    }
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn plain_counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let metric = IntCounter::new(name, help)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn float_counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<Counter> {
    let metric = Counter::new(name, help)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn plain_gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let metric = IntGauge::new(name, help)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    let metric = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sourcegraph_families_typed_in_text_format_0_0_4() {
        let metrics = Metrics::new("batches", "6.0.0").expect("valid definitions");
        metrics.handler_started();
        metrics.handler_finished(Duration::from_secs(45), true);
        metrics.observe_queue_call(QueueOp::Dequeue, Duration::from_millis(20), true);
        metrics.observe_command(CommandOp::JobCreate, Duration::from_millis(200), false);
        metrics.record(Event::JobDequeued);
        metrics.record_outcome("errored", "step_failed");
        let now = jiff::Timestamp::now();
        let nfr = nfr::Nfr::new(
            nfr::LimitFigures {
                nofile: 65536,
                nproc: 4096,
            },
            now,
        );
        let text = metrics.render(4, 1, &nfr.snapshot(now));
        for expected in [
            "# TYPE src_executor_processor_total counter\n",
            "src_executor_processor_total{op=\"Handle\",queue=\"batches\"} 1\n",
            "src_executor_processor_errors_total{op=\"Handle\",queue=\"batches\"} 1\n",
            "# TYPE src_executor_processor_duration_seconds histogram\n",
            "src_executor_processor_duration_seconds_bucket{op=\"Handle\",queue=\"batches\",le=\"30\"} 0\n",
            "src_executor_processor_duration_seconds_bucket{op=\"Handle\",queue=\"batches\",le=\"60\"} 1\n",
            "src_executor_processor_handlers{queue=\"batches\"} 0\n",
            "src_apiworker_apiclient_queue_total{op=\"Dequeue\"} 1\n",
            "src_apiworker_apiclient_queue_duration_seconds_bucket{op=\"Dequeue\",le=\"0.025\"} 1\n",
            "src_apiworker_command_errors_total{op=\"kubernetes.job.create\"} 1\n",
            "kube_executor_slots{queue=\"batches\",state=\"used\"} 1\n",
            "kube_executor_events_total{event=\"job_dequeued\"} 1\n",
            "kube_executor_job_outcomes_total{outcome=\"errored\",queue=\"batches\",reason=\"step_failed\"} 1\n",
            "kube_executor_build_info{reported_version=\"6.0.0\",version=\"",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
        }
        assert!(!text.contains("# EOF"), "OpenMetrics, not 0.0.4:\n{text}");
        let fresh = Metrics::new("batches", "6.0.0").expect("valid definitions");
        let text = fresh.render(1, 0, &nfr.snapshot(now));
        for expected in [
            "src_executor_processor_total{op=\"Handle\",queue=\"batches\"} 0\n",
            "src_executor_processor_handlers{queue=\"batches\"} 0\n",
            "kube_executor_events_total{event=\"job_succeeded\"} 0\n",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing before any job:\n{text}"
            );
        }
        assert_eq!(metrics.event_counts(), [("job_dequeued", 1)]);
    }
}
