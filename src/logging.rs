//! Log output: the filter chosen by `SRC_LOG_LEVEL` (or `RUST_LOG`) and a JSON format that puts the
//! fields of every enclosing span, such as a job's `job_id` and `queue`, on each line.

use std::fmt;

use serde_json::{Map, Value};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    EnvFilter,
    fmt::{
        FmtContext, FormatEvent, FormattedFields,
        format::{JsonFields, Writer},
    },
    registry::LookupSpan,
};

/// The variable whose full filter syntax, when set, replaces the filter `SRC_LOG_LEVEL` gives.
pub const FINE_GRAINED_FILTER_VARIABLE: &str = "RUST_LOG";

/// The filter for a `SRC_LOG_LEVEL` directive (`debug`, `info`, `warn`, `error`) unless
/// `rust_log` (the value of `RUST_LOG`; empty means unset, as for every other variable) is given,
/// in which case that wins. A malformed `RUST_LOG` is an error naming the variable.
pub fn filter(level: &str, rust_log: Option<&str>) -> Result<EnvFilter, String> {
    match rust_log.map(str::trim).filter(|value| !value.is_empty()) {
        Some(directives) => EnvFilter::builder().parse(directives).map_err(|error| {
            format!("{FINE_GRAINED_FILTER_VARIABLE}: {directives:?} is not a log filter: {error}")
        }),
        None => Ok(EnvFilter::new(format!(
            "{},kube_executor={level}",
            dependency_level(level)
        ))),
    }
}

/// Dependencies log at most at warn unless the executor itself is at debug, so that a warn-level
/// executor is not drowned by its HTTP and Kubernetes clients.
fn dependency_level(level: &str) -> &str {
    if level == "debug" { "info" } else { "warn" }
}

/// One JSON object per line: `timestamp`, `level`, `target`, `message`, then the fields of the
/// enclosing spans from the outermost in, then the event's own fields (an inner name wins).
/// Spans must record their fields with [`JsonFields`], which the builder's `.json()` sets up.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlatJson;

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), jiff::Timestamp::now().to_string().into());
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("target".into(), metadata.target().into());
        for span in ctx.event_scope().into_iter().flat_map(|scope| scope.from_root()) {
            let extensions = span.extensions();
            let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                continue;
            };
            if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                line.extend(fields);
            }
        }
        event.record(&mut JsonVisitor(&mut line));
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Records an event's fields into the line's JSON object, keeping numbers and booleans typed.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::{Instrument, info, info_span};
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Collects everything the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn json_lines(run: impl FnOnce()) -> Vec<Map<String, Value>> {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .event_format(FlatJson)
            .with_writer(captured.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, run);
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("UTF-8");
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    #[test]
    fn json_lines_carry_the_fields_of_every_enclosing_span() {
        let lines = json_lines(|| {
            let job = info_span!("job", job_id = 7, queue = "batches");
            let _job = job.enter();
            let follower = info_span!("follow", container = "main");
            let _follower = follower.enter();
            info!(bytes = 12_u64, ok = true, "log entry sent");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert_eq!(line["job_id"], 7);
        assert_eq!(line["queue"], "batches");
        assert_eq!(line["container"], "main");
        assert_eq!(line["bytes"], 12);
        assert_eq!(line["ok"], true);
        assert_eq!(line["message"], "log entry sent");
        assert_eq!(line["level"], "INFO");
        assert!(
            line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line:?}"
        );
    }

    #[test]
    fn a_line_outside_any_span_has_only_its_own_fields() {
        let lines = json_lines(|| info!(queue = "codeintel", "dequeue failed"));
        assert_eq!(lines[0]["queue"], "codeintel");
        assert!(!lines[0].contains_key("job_id"), "{:?}", lines[0]);
    }

    #[tokio::test]
    async fn a_spawned_task_instrumented_with_the_job_span_carries_its_fields() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .event_format(FlatJson)
            .with_writer(captured.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let span = info_span!("job", job_id = 9, queue = "batches");
        let task = tokio::spawn(async { info!("following container log") }.instrument(span));
        task.await.expect("join");
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("UTF-8");
        let line: Map<String, Value> = serde_json::from_str(text.trim()).expect("one JSON object");
        assert_eq!(line["job_id"], 9);
        assert_eq!(line["queue"], "batches");
    }

    #[test]
    fn rust_log_wins_over_the_level_and_a_bad_one_names_the_variable() {
        assert!(filter("warn", None).is_ok());
        assert!(filter("warn", Some("")).is_ok(), "empty means unset");
        let fine = filter("warn", Some("kube_executor::job=trace")).expect("valid directives");
        assert!(fine.to_string().contains("kube_executor::job=trace"), "{fine}");
        let error = filter("warn", Some("kube_executor=loudest")).expect_err("not a level");
        assert!(
            error.starts_with("RUST_LOG: \"kube_executor=loudest\""),
            "{error}"
        );
    }

    #[test]
    fn dependencies_stay_quiet_unless_debugging() {
        let directives = |level: &str| {
            let text = filter(level, None).expect("filter").to_string();
            let mut parts: Vec<String> = text.split(',').map(str::to_owned).collect();
            parts.sort();
            parts
        };
        assert_eq!(directives("info"), ["kube_executor=info", "warn"]);
        assert_eq!(directives("debug"), ["info", "kube_executor=debug"]);
    }
}
