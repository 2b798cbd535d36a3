//! Container log storage (CRI line format, RFC3339Nano receive timestamps) and the kubelet's log query filters.

use std::{
    collections::HashMap,
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
};

use jiff::Timestamp;
use tokio::sync::watch;

/// Longest chunk stored as one entry; longer output without a newline is split into partial entries,
/// as CRI runtimes do.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One stored log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub received: Timestamp,
    pub stream: Stream,
    /// Text without the trailing newline.
    pub content: Vec<u8>,
    /// A chunk of a longer line; the kubelet does not add a newline after it.
    pub partial: bool,
}

impl LogLine {
    /// The line in the CRI log file format: `<RFC3339Nano> <stream> <P|F> <content>`.
    pub fn to_cri(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} {} ",
            rfc3339_nano(self.received),
            self.stream.as_str(),
            if self.partial { "P" } else { "F" }
        )
        .into_bytes();
        out.extend_from_slice(&self.content);
        out.push(b'\n');
        out
    }

    /// The bytes a `containerLogs` reader sees for this line.
    fn render(&self, timestamps: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.content.len() + 40);
        if timestamps {
            out.extend_from_slice(rfc3339_nano(self.received).as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&self.content);
        if !self.partial {
            out.push(b'\n');
        }
        out
    }
}

/// Formats like Go's `time.RFC3339Nano` (UTC, trailing zeros of the fraction trimmed).
pub fn rfc3339_nano(at: Timestamp) -> String {
    let seconds = at.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = at.subsec_nanosecond();
    if nanos == 0 {
        return format!("{seconds}Z");
    }
    let fraction = format!("{nanos:09}");
    format!("{seconds}.{}Z", fraction.trim_end_matches('0'))
}

/// Progress of a log, published to followers so they wake without polling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogProgress {
    pub lines: usize,
    pub finished: bool,
}

/// The log of one container instance (one start of a container).
#[derive(Debug)]
pub struct LogBuffer {
    lines: Mutex<Vec<LogLine>>,
    progress: watch::Sender<LogProgress>,
    file: Mutex<Option<std::fs::File>>,
}

impl LogBuffer {
    /// A new, empty log, mirrored in CRI format to `file` when given.
    pub fn new(file: Option<PathBuf>) -> Arc<Self> {
        let file = file.and_then(|path| {
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .ok()
        });
        Arc::new(Self {
            lines: Mutex::new(Vec::new()),
            progress: watch::Sender::new(LogProgress::default()),
            file: Mutex::new(file),
        })
    }

    fn lock_lines(&self) -> MutexGuard<'_, Vec<LogLine>> {
        // A poisoned lock only means a panic elsewhere while pushing; the data is still usable.
        self.lines.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends one entry and wakes followers.
    ///
    /// stdout and stderr are read by separate tasks, so a line can arrive here after one read
    /// later on the other stream; like a kubelet's log file, the buffer stays in time order by
    /// never letting a line be older than the one before it.
    pub fn push(&self, mut line: LogLine) {
        let count = {
            let mut lines = self.lock_lines();
            if let Some(last) = lines.last()
                && line.received < last.received
            {
                line.received = last.received;
            }
            if let Some(file) = self.file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                let _ = file.write_all(&line.to_cri());
            }
            lines.push(line);
            lines.len()
        };
        self.progress.send_modify(|progress| progress.lines = count);
    }

    /// Marks the instance as exited: followers end after the last line.
    pub fn finish(&self) {
        self.progress.send_modify(|progress| progress.finished = true);
    }

    /// A snapshot of all entries.
    pub fn snapshot(&self) -> Vec<LogLine> {
        self.lock_lines().clone()
    }

    fn lines_from(&self, start: usize) -> Vec<LogLine> {
        let lines = self.lock_lines();
        lines.get(start..).map(<[LogLine]>::to_vec).unwrap_or_default()
    }

    /// Subscribes to progress updates.
    pub fn subscribe(&self) -> watch::Receiver<LogProgress> {
        self.progress.subscribe()
    }
}

/// Splits a pipe's output into entries: complete lines, 16 KiB partial chunks, and a final
/// unterminated line at end of stream.
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    /// Feeds bytes read from the pipe; returns the entries completed by them.
    pub fn feed(&mut self, bytes: &[u8], now: Timestamp) -> Vec<LogLine> {
        let mut out = Vec::new();
        for &byte in bytes {
            if byte == b'\n' {
                out.push(self.take(now, false));
            } else {
                self.pending.push(byte);
                if self.pending.len() >= MAX_LINE_BYTES {
                    out.push(self.take(now, true));
                }
            }
        }
        out
    }

    /// The unterminated rest at end of stream, delivered as a full line like CRI runtimes do.
    pub fn finish(&mut self, now: Timestamp) -> Option<LogLine> {
        (!self.pending.is_empty()).then(|| self.take(now, false))
    }

    fn take(&mut self, now: Timestamp, partial: bool) -> LogLine {
        LogLine {
            received: now,
            stream: self.stream,
            content: std::mem::take(&mut self.pending),
            partial,
        }
    }
}

/// The `containerLogs` query parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    pub follow: bool,
    pub timestamps: bool,
    pub since: Option<Timestamp>,
    pub tail_lines: Option<usize>,
    pub limit_bytes: Option<usize>,
    pub previous: bool,
}

/// A query parameter that could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid value {value:?} for query parameter {name}")]
pub struct InvalidLogQuery {
    pub name: &'static str,
    pub value: String,
}

impl LogQuery {
    /// Parses the query parameters; `now` resolves `sinceSeconds`.
    pub fn parse(params: &HashMap<String, String>, now: Timestamp) -> Result<Self, InvalidLogQuery> {
        fn flag(params: &HashMap<String, String>, name: &'static str) -> Result<bool, InvalidLogQuery> {
            match params.get(name).map(String::as_str) {
                None | Some("") | Some("false") | Some("0") => Ok(false),
                Some("true") | Some("1") => Ok(true),
                Some(other) => Err(InvalidLogQuery {
                    name,
                    value: other.to_string(),
                }),
            }
        }
        fn number(
            params: &HashMap<String, String>,
            name: &'static str,
        ) -> Result<Option<i64>, InvalidLogQuery> {
            params
                .get(name)
                .map(|value| {
                    value.parse::<i64>().map_err(|_| InvalidLogQuery {
                        name,
                        value: value.clone(),
                    })
                })
                .transpose()
        }
        let since_time = params
            .get("sinceTime")
            .map(|value| {
                value.parse::<Timestamp>().map_err(|_| InvalidLogQuery {
                    name: "sinceTime",
                    value: value.clone(),
                })
            })
            .transpose()?;
        let since_seconds = number(params, "sinceSeconds")?
            .map(|seconds| now - jiff::SignedDuration::from_secs(seconds.max(0)));
        Ok(Self {
            follow: flag(params, "follow")?,
            timestamps: flag(params, "timestamps")?,
            since: since_time.or(since_seconds),
            tail_lines: number(params, "tailLines")?.map(|n| n.max(0) as usize),
            limit_bytes: number(params, "limitBytes")?
                .filter(|n| *n > 0)
                .map(|n| n as usize),
            previous: flag(params, "previous")?,
        })
    }
}

/// Applies `tailLines` (first, over the whole log, as the kubelet does), then `sinceTime`.
pub fn select_lines(lines: &[LogLine], query: &LogQuery) -> Vec<LogLine> {
    let start = query
        .tail_lines
        .map_or(0, |tail| lines.len().saturating_sub(tail));
    lines[start..]
        .iter()
        .filter(|line| query.since.is_none_or(|since| line.received >= since))
        .cloned()
        .collect()
}

/// Tracks the `limitBytes` budget across the whole response.
#[derive(Debug)]
pub struct ByteBudget {
    remaining: Option<usize>,
}

impl ByteBudget {
    pub fn new(limit: Option<usize>) -> Self {
        Self { remaining: limit }
    }

    /// Renders `lines`, truncated to the remaining budget.
    pub fn render(&mut self, lines: &[LogLine], timestamps: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for line in lines {
            if self.exhausted() {
                break;
            }
            let mut rendered = line.render(timestamps);
            if let Some(remaining) = self.remaining.as_mut() {
                rendered.truncate(*remaining);
                *remaining -= rendered.len();
            }
            out.extend_from_slice(&rendered);
        }
        out
    }

    pub fn exhausted(&self) -> bool {
        self.remaining == Some(0)
    }
}

/// Follows a log instance: yields rendered chunks, the existing selection first, then new lines as they
/// arrive, ending once the instance finished and everything was sent (or the byte budget ran out).
pub fn follow_stream(
    log: Arc<LogBuffer>,
    query: LogQuery,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::convert::Infallible>> + Send {
    struct FollowState {
        log: Arc<LogBuffer>,
        query: LogQuery,
        budget: ByteBudget,
        progress: watch::Receiver<LogProgress>,
        cursor: Option<usize>,
        done: bool,
    }
    let progress = log.subscribe();
    let state = FollowState {
        budget: ByteBudget::new(query.limit_bytes),
        log,
        query,
        progress,
        cursor: None,
        done: false,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if state.done || state.budget.exhausted() {
                return None;
            }
            // Mark the current progress as seen before reading, so no push between read and wait is lost.
            let progress = *state.progress.borrow_and_update();
            let chunk = match state.cursor {
                None => {
                    let all = state.log.snapshot();
                    state.cursor = Some(all.len());
                    let selected = select_lines(&all, &state.query);
                    state.budget.render(&selected, state.query.timestamps)
                }
                Some(cursor) => {
                    let fresh = state.log.lines_from(cursor);
                    state.cursor = Some(cursor + fresh.len());
                    let selected: Vec<LogLine> = fresh
                        .into_iter()
                        .filter(|line| state.query.since.is_none_or(|since| line.received >= since))
                        .collect();
                    state.budget.render(&selected, state.query.timestamps)
                }
            };
            if progress.finished && state.cursor.is_some_and(|cursor| cursor >= progress.lines) {
                state.done = true;
            }
            if !chunk.is_empty() {
                return Some((Ok(chunk), state));
            }
            if state.done {
                return None;
            }
            if state.progress.changed().await.is_err() {
                return None;
            }
        }
    })
}

/// Logs of one container across restarts.
#[derive(Debug, Default)]
pub struct ContainerLogs {
    pub current: Option<Arc<LogBuffer>>,
    pub previous: Option<Arc<LogBuffer>>,
    /// Why the container has not started yet (shown when there is no instance).
    pub waiting_reason: Option<String>,
}

/// Logs of every pod on this agent, keyed by namespace and pod name.
#[derive(Debug, Default)]
pub struct LogRegistry {
    pods: Mutex<HashMap<(String, String), PodLogs>>,
}

#[derive(Debug, Default)]
struct PodLogs {
    uid: String,
    containers: HashMap<String, ContainerLogs>,
}

/// Why a log request cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogLookupError {
    #[error("pod \"{namespace}/{pod}\" not found on this node")]
    PodNotFound { namespace: String, pod: String },
    #[error("container \"{container}\" not found in pod \"{namespace}/{pod}\"")]
    ContainerNotFound {
        namespace: String,
        pod: String,
        container: String,
    },
    #[error("container \"{container}\" in pod \"{pod}\" is waiting to start: {reason}")]
    WaitingToStart {
        pod: String,
        container: String,
        reason: String,
    },
    #[error("previous terminated container \"{container}\" in pod \"{pod}\" not found")]
    NoPrevious { pod: String, container: String },
}

impl LogRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), PodLogs>> {
        self.pods.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a pod's containers (all waiting), replacing an older pod of the same name.
    pub fn register_pod(&self, namespace: &str, pod: &str, uid: &str, containers: &[String]) {
        let entry = PodLogs {
            uid: uid.to_string(),
            containers: containers
                .iter()
                .map(|name| {
                    (
                        name.clone(),
                        ContainerLogs {
                            waiting_reason: Some("ContainerCreating".into()),
                            ..Default::default()
                        },
                    )
                })
                .collect(),
        };
        self.lock()
            .insert((namespace.to_string(), pod.to_string()), entry);
    }

    /// Forgets a pod (only if it is still the same pod instance).
    pub fn remove_pod(&self, namespace: &str, pod: &str, uid: &str) {
        let mut pods = self.lock();
        let key = (namespace.to_string(), pod.to_string());
        if pods.get(&key).is_some_and(|entry| entry.uid == uid) {
            pods.remove(&key);
        }
    }

    /// Records a new instance of a container; the old one becomes `previous`.
    pub fn start_instance(&self, namespace: &str, pod: &str, container: &str, log: Arc<LogBuffer>) {
        let mut pods = self.lock();
        if let Some(entry) = pods.get_mut(&(namespace.to_string(), pod.to_string())) {
            let logs = entry.containers.entry(container.to_string()).or_default();
            logs.previous = logs.current.replace(log);
            logs.waiting_reason = None;
        }
    }

    /// Records why a container that has never run is waiting.
    pub fn set_waiting_reason(&self, namespace: &str, pod: &str, container: &str, reason: &str) {
        let mut pods = self.lock();
        if let Some(entry) = pods.get_mut(&(namespace.to_string(), pod.to_string())) {
            let logs = entry.containers.entry(container.to_string()).or_default();
            logs.waiting_reason = Some(reason.to_string());
        }
    }

    /// Finds the log instance a request asks for.
    pub fn lookup(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        previous: bool,
    ) -> Result<Arc<LogBuffer>, LogLookupError> {
        let pods = self.lock();
        let entry = pods
            .get(&(namespace.to_string(), pod.to_string()))
            .ok_or_else(|| LogLookupError::PodNotFound {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
            })?;
        let logs = entry
            .containers
            .get(container)
            .ok_or_else(|| LogLookupError::ContainerNotFound {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                container: container.to_string(),
            })?;
        if previous {
            return logs.previous.clone().ok_or_else(|| LogLookupError::NoPrevious {
                pod: pod.to_string(),
                container: container.to_string(),
            });
        }
        logs.current
            .clone()
            .ok_or_else(|| LogLookupError::WaitingToStart {
                pod: pod.to_string(),
                container: container.to_string(),
                reason: logs
                    .waiting_reason
                    .clone()
                    .unwrap_or_else(|| "ContainerCreating".into()),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("test timestamp literal is valid")
    }

    fn line(ts: &str, text: &str) -> LogLine {
        LogLine {
            received: at(ts),
            stream: Stream::Stdout,
            content: text.as_bytes().to_vec(),
            partial: false,
        }
    }

    #[test]
    fn timestamps_format_like_go_rfc3339nano() {
        assert_eq!(
            rfc3339_nano(at("2026-01-01T00:00:00.123456789Z")),
            "2026-01-01T00:00:00.123456789Z"
        );
        assert_eq!(
            rfc3339_nano(at("2026-01-01T00:00:00.120Z")),
            "2026-01-01T00:00:00.12Z"
        );
        assert_eq!(rfc3339_nano(at("2026-01-01T00:00:00Z")), "2026-01-01T00:00:00Z");
    }

    #[test]
    fn cri_format_marks_partial_lines() {
        let mut entry = line("2026-01-01T00:00:00.5Z", "hello");
        assert_eq!(entry.to_cri(), b"2026-01-01T00:00:00.5Z stdout F hello\n");
        entry.partial = true;
        entry.stream = Stream::Stderr;
        assert_eq!(entry.to_cri(), b"2026-01-01T00:00:00.5Z stderr P hello\n");
    }

    #[test]
    fn splitter_keeps_unterminated_rest_for_the_end() {
        let now = at("2026-01-01T00:00:00Z");
        let mut splitter = LineSplitter::new(Stream::Stdout);
        let first = splitter.feed(b"one\ntw", now);
        assert_eq!(
            first.iter().map(|l| l.content.clone()).collect::<Vec<_>>(),
            vec![b"one".to_vec()]
        );
        assert!(splitter.feed(b"o", now).is_empty());
        let rest = splitter.finish(now).expect("unterminated text is delivered");
        assert_eq!(rest.content, b"two");
        assert!(!rest.partial);
        assert!(splitter.finish(now).is_none());
    }

    #[test]
    fn splitter_cuts_long_lines_into_partial_chunks() {
        let now = at("2026-01-01T00:00:00Z");
        let mut splitter = LineSplitter::new(Stream::Stdout);
        let mut input = vec![b'x'; MAX_LINE_BYTES + 3];
        input.push(b'\n');
        let out = splitter.feed(&input, now);
        assert_eq!(out.len(), 2);
        assert!(out[0].partial);
        assert_eq!(out[0].content.len(), MAX_LINE_BYTES);
        assert!(!out[1].partial);
        assert_eq!(out[1].content.len(), 3);
    }

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn query_parsing_accepts_kubelet_parameters() {
        let now = at("2026-01-01T00:01:00Z");
        let query = LogQuery::parse(
            &params(&[
                ("follow", "true"),
                ("timestamps", "true"),
                ("tailLines", "2"),
                ("limitBytes", "10"),
            ]),
            now,
        )
        .expect("valid query");
        assert!(query.follow && query.timestamps && !query.previous);
        assert_eq!(query.tail_lines, Some(2));
        assert_eq!(query.limit_bytes, Some(10));
        let since = LogQuery::parse(&params(&[("sinceSeconds", "30")]), now).expect("valid query");
        assert_eq!(since.since, Some(at("2026-01-01T00:00:30Z")));
        let bad = LogQuery::parse(&params(&[("tailLines", "many")]), now);
        assert_eq!(
            bad,
            Err(InvalidLogQuery {
                name: "tailLines",
                value: "many".into()
            })
        );
    }

    #[test]
    fn tail_then_since_then_limit() {
        let lines = vec![
            line("2026-01-01T00:00:01Z", "a"),
            line("2026-01-01T00:00:02Z", "bb"),
            line("2026-01-01T00:00:03Z", "ccc"),
        ];
        let tail = LogQuery {
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(
            ByteBudget::new(None).render(&select_lines(&lines, &tail), false),
            b"bb\nccc\n"
        );
        let since = LogQuery {
            since: Some(at("2026-01-01T00:00:02Z")),
            ..Default::default()
        };
        assert_eq!(
            ByteBudget::new(None).render(&select_lines(&lines, &since), false),
            b"bb\nccc\n"
        );
        let both = LogQuery {
            tail_lines: Some(1),
            since: Some(at("2026-01-01T00:00:02Z")),
            ..Default::default()
        };
        assert_eq!(
            ByteBudget::new(None).render(&select_lines(&lines, &both), false),
            b"ccc\n"
        );
        let mut budget = ByteBudget::new(Some(4));
        assert_eq!(budget.render(&lines, false), b"a\nbb");
        assert!(budget.exhausted());
        assert_eq!(
            ByteBudget::new(None).render(&lines[..1], true),
            b"2026-01-01T00:00:01Z a\n".to_vec()
        );
    }

    #[tokio::test]
    async fn follow_delivers_new_lines_and_ends_when_finished() {
        let log = LogBuffer::new(None);
        log.push(line("2026-01-01T00:00:01Z", "first"));
        let mut stream = Box::pin(follow_stream(
            log.clone(),
            LogQuery {
                follow: true,
                ..Default::default()
            },
        ));
        assert_eq!(stream.next().await, Some(Ok(b"first\n".to_vec())));
        let writer = log.clone();
        let producer = tokio::spawn(async move {
            writer.push(line("2026-01-01T00:00:02Z", "second"));
            writer.finish();
        });
        let mut rest = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            rest.extend(chunk);
        }
        producer.await.expect("producer task completes");
        assert_eq!(rest, b"second\n");
    }

    #[test]
    fn registry_reports_missing_pods_and_containers() {
        let registry = LogRegistry::default();
        registry.register_pod("ns", "p", "uid-1", &["c".to_string()]);
        assert!(matches!(
            registry.lookup("ns", "q", "c", false),
            Err(LogLookupError::PodNotFound { .. })
        ));
        assert!(matches!(
            registry.lookup("ns", "p", "d", false),
            Err(LogLookupError::ContainerNotFound { .. })
        ));
        assert!(matches!(
            registry.lookup("ns", "p", "c", false),
            Err(LogLookupError::WaitingToStart { .. })
        ));
        let first = LogBuffer::new(None);
        registry.start_instance("ns", "p", "c", first.clone());
        registry.start_instance("ns", "p", "c", LogBuffer::new(None));
        let previous = registry
            .lookup("ns", "p", "c", true)
            .expect("previous instance kept");
        assert!(Arc::ptr_eq(&previous, &first));
        registry.remove_pod("ns", "p", "other-uid");
        assert!(registry.lookup("ns", "p", "c", false).is_ok());
        registry.remove_pod("ns", "p", "uid-1");
        assert!(registry.lookup("ns", "p", "c", false).is_err());
    }
}
