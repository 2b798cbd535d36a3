//! Follows a container's log through `pods/log?follow=true` and resumes after a broken stream
//! without losing or repeating lines.
//!
//! Lines are requested with timestamps. On reconnect the stream restarts at the last line's second
//! (`sinceTime` has second precision); lines older than the last one seen are dropped, and of the
//! lines carrying exactly the last timestamp as many are skipped as were already delivered.
//!
//! Job containers end their output with [`END_OF_OUTPUT_LINE`]: a stream that ends right after it
//! ended with the container, so one stream per container is enough even when the Pod watch
//! reports the exit after the stream ended.

use std::time::Duration;

use futures_util::{AsyncBufRead, AsyncBufReadExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::LogParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::api_error;
use crate::{events::Event, k8s::script::END_OF_OUTPUT_LINE, metrics::Metrics, retry};

/// Where to resume a log stream.
///
/// Within one stream every line is new (a log need not be in strict time order: stdout and
/// stderr are interleaved). On resume the stream restarts at the whole second of the newest line
/// delivered (`sinceTime` has second precision, inclusive), and exactly the lines already
/// delivered from that second on are skipped; they come first, in the same order.
#[derive(Debug, Default, Clone)]
pub struct Cursor {
    newest: Option<Timestamp>,
    /// Stamps of delivered lines no older than the newest line's whole second.
    recent: Vec<Timestamp>,
    skip: usize,
}

impl Cursor {
    /// Whether a line stamped `ts` is new; records it when it is.
    pub fn accept(&mut self, ts: Timestamp) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        if self.newest.is_none_or(|newest| ts > newest) {
            self.newest = Some(ts);
            let second = whole_second(ts);
            self.recent.retain(|t| *t >= second);
        }
        if self.newest.is_some_and(|newest| ts >= whole_second(newest)) {
            self.recent.push(ts);
        }
        true
    }

    /// Prepares for a new stream: returns the `sinceTime` to ask for.
    pub fn resume(&mut self) -> Option<Timestamp> {
        let since = whole_second(self.newest?);
        self.skip = self.recent.iter().filter(|t| **t >= since).count();
        Some(since)
    }
}

/// Lines on their way to the follower's callback: only new ones, with the end-of-output line held
/// back until a later line shows it was output rather than the end.
struct Delivery<F> {
    cursor: Cursor,
    /// The last line accepted was [`END_OF_OUTPUT_LINE`].
    end_held: bool,
    on_line: F,
}

impl<F: FnMut(&str)> Delivery<F> {
    fn new(on_line: F) -> Self {
        Self {
            cursor: Cursor::default(),
            end_held: false,
            on_line,
        }
    }

    fn line(&mut self, ts: Option<Timestamp>, text: &str, cut: bool) {
        if !ts.is_none_or(|ts| self.cursor.accept(ts)) {
            return;
        }
        if std::mem::take(&mut self.end_held) {
            (self.on_line)(END_OF_OUTPUT_LINE);
        }
        if !cut && text == END_OF_OUTPUT_LINE {
            self.end_held = true;
        } else {
            (self.on_line)(&Line::display(text, cut));
        }
    }
}

/// Rounded down: the API rounds sinceTime to the nearest second, and rounding up would lose lines.
fn whole_second(ts: Timestamp) -> Timestamp {
    Timestamp::from_second(ts.as_second()).unwrap_or(ts)
}

/// Splits `<RFC3339Nano timestamp> <text>`; a line without a parseable stamp is returned whole.
pub fn split_timestamp(line: &str) -> (Option<Timestamp>, &str) {
    if let Some((stamp, rest)) = line.split_once(' ')
        && let Ok(ts) = stamp.parse::<Timestamp>()
    {
        return (Some(ts), rest);
    }
    match line.parse::<Timestamp>() {
        Ok(ts) => (Some(ts), ""),
        Err(_) => (None, line),
    }
}

/// Why following a log stopped early.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("the pod is gone")]
    PodGone,
    /// The executor's Role does not allow reading logs; retrying cannot help.
    #[error("reading the container log is forbidden: {0}")]
    Forbidden(String),
}

/// What the follower needs to know about the container while it streams.
pub trait ContainerProbe: Send + Sync {
    /// The container has terminated (its final log is complete once the stream ends).
    fn terminated(&self) -> bool;
    /// The pod no longer exists.
    fn pod_gone(&self) -> bool;
}

/// Which container's log to follow.
#[derive(Clone, Copy)]
pub struct LogSource<'a> {
    pub pods: &'a Api<Pod>,
    pub pod: &'a str,
    pub container: &'a str,
}

/// Follows `container`'s log until the container has terminated and its log is read, calling
/// `on_line` for each new line (without the timestamp and newline).
///
/// # Cancel safety
/// Returns `Ok` when `stop` is cancelled; lines already delivered stay delivered.
pub async fn follow(
    source: LogSource<'_>,
    probe: &dyn ContainerProbe,
    mut changes: watch::Receiver<u64>,
    metrics: &Metrics,
    stop: &CancellationToken,
    on_line: impl FnMut(&str),
) -> Result<(), FollowError> {
    let LogSource { pods, pod, container } = source;
    let mut delivery = Delivery::new(on_line);
    let mut reconnect = retry::log_reconnects();
    // Failures to open in a row, so that a log that stays unreadable is reported now and then.
    let mut failures: u32 = 0;
    loop {
        let since_time = delivery.cursor.resume();
        let terminated_before_open = probe.terminated();
        let params = LogParams {
            container: Some(container.to_string()),
            follow: true,
            timestamps: true,
            since_time,
            ..LogParams::default()
        };
        let opened = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            opened = pods.log_stream(pod, &params) => opened,
        };
        let outcome = match opened {
            Ok(reader) => {
                failures = 0;
                reconnect.reset();
                match read_stream(reader, container, &mut delivery, stop).await {
                    StreamEnd::Stopped => return Ok(()),
                    StreamEnd::Clean => Outcome::Ended,
                    StreamEnd::Broken => Outcome::Broke,
                }
            }
            Err(error) => {
                open_failed(&error, container, probe, &mut failures)?;
                Outcome::NotOpened
            }
        };
        let ended = outcome == Outcome::Ended;
        if ended && (terminated_before_open || probe.terminated()) {
            return Ok(());
        }
        if ended && delivery.end_held && ended_with_the_container(probe, &mut changes, stop).await {
            return Ok(());
        }
        if probe.pod_gone() {
            return Err(FollowError::PodGone);
        }
        let pause = if ended {
            REOPEN_AFTER_CLEAN_END
        } else {
            reconnect.next_delay()
        };
        if !wait_before_reopening(ended, pause, probe, &mut changes, stop).await {
            return Ok(());
        }
        // A stream that ended only because the container did (the watch was late to say so) is
        // read to its end once more, but it did not break: only a broken stream, or one cut while
        // the container runs on, counts as resumed.
        if outcome == Outcome::Broke || (ended && !probe.terminated()) {
            metrics.record(Event::LogStreamResumed);
        }
    }
}

/// After a stream ended right after [`END_OF_OUTPUT_LINE`]: the program printed its last line, so
/// the container has exited and the watch will say so. Only a status that stays running (for
/// [`END_OF_OUTPUT_GRACE`]) means a cut stream, to be reopened; `true` when following is over.
async fn ended_with_the_container(
    probe: &dyn ContainerProbe,
    changes: &mut watch::Receiver<u64>,
    stop: &CancellationToken,
) -> bool {
    !wait_before_reopening(true, END_OF_OUTPUT_GRACE, probe, changes, stop).await || probe.terminated()
}

/// Pause before reopening a stream that ended while the container may still run. Such an end is
/// a cut connection (a proxy or node timeout), so live output must resume quickly; the pause only
/// keeps a follower whose watch lags behind the container's termination from reopening in a
/// tight loop.
const REOPEN_AFTER_CLEAN_END: Duration = Duration::from_millis(200);

/// How long a stream that ended after [`END_OF_OUTPUT_LINE`] waits for the watch to report the
/// container's exit before it is taken for a cut stream and reopened. The watch is usually a few
/// hundred milliseconds behind the stream; this leaves room for a loaded API server.
const END_OF_OUTPUT_GRACE: Duration = Duration::from_secs(10);

/// How one attempt at the log went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The stream was read to its end.
    Ended,
    /// The stream failed while being read.
    Broke,
    /// The stream could not be opened.
    NotOpened,
}

/// Waits for news about the container or the end of `pause`, so a stream that ended before the
/// watch reported the termination, or one that keeps failing, is not reopened in a tight loop.
/// After a stream `ended`, only the container's termination is news. Returns `false` when `stop`
/// was cancelled.
async fn wait_before_reopening(
    ended: bool,
    pause: Duration,
    probe: &dyn ContainerProbe,
    changes: &mut watch::Receiver<u64>,
    stop: &CancellationToken,
) -> bool {
    let mut deadline = std::pin::pin!(tokio::time::sleep(pause));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = &mut deadline => return true,
            changed = changes.changed() => {
                // A closed channel brings no more news: waiting on it would spin.
                if changed.is_err() || !ended || probe.terminated() {
                    return true;
                }
            }
        }
    }
}

/// What a failure to open the log means: the end of following (forbidden, pod gone) or, with
/// `Ok`, another try.
fn open_failed(
    error: &kube::Error,
    container: &str,
    probe: &dyn ContainerProbe,
    failures: &mut u32,
) -> Result<(), FollowError> {
    if api_error::is_forbidden(error) {
        return Err(FollowError::Forbidden(api_error::message(error)));
    }
    if api_error::is_not_found(error) {
        return if probe.pod_gone() {
            Err(FollowError::PodGone)
        } else {
            Ok(())
        };
    }
    // 400 "waiting to start" while the watch lags, or a transient API/node error.
    *failures += 1;
    if failures.is_multiple_of(10) {
        warn!(container, %error, failures, "cannot open the container log; retrying");
    } else {
        debug!(container, %error, "cannot open the container log; retrying");
    }
    Ok(())
}

/// How reading one opened log stream ended.
enum StreamEnd {
    /// `stop` was cancelled.
    Stopped,
    /// The server closed the stream: the container may have terminated, or the API server may
    /// have ended a long request.
    Clean,
    /// Reading failed mid-way.
    Broken,
}

/// Longest line kept, timestamp included. Output without newlines must not grow the follower's
/// memory (a step printing 150 MB on one line), and the entry cap only applies to whole lines.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// One line of a log stream, decoded.
#[derive(Debug, PartialEq, Eq)]
pub struct Line {
    /// The line without its newline (and without the `\r` of a `\r\n` ending).
    pub text: String,
    /// Bytes past [`MAX_LINE_BYTES`] were dropped.
    pub cut: bool,
}

impl Line {
    /// The text to record, marked when it was cut so the reader knows output is missing.
    fn display(text: &str, cut: bool) -> std::borrow::Cow<'_, str> {
        if cut {
            format!("{text} [kube-executor: line cut at {} bytes]", text.len()).into()
        } else {
            text.into()
        }
    }
}

/// Splits a byte stream into lines of at most `cap` bytes, dropping the rest of longer lines.
///
/// Bytes are decoded only once a line is complete, lossily: output that is not UTF-8 is still
/// output (shown with U+FFFD), never a reason to consider the stream broken.
#[derive(Debug)]
pub struct LineSplitter {
    cap: usize,
    pending: Vec<u8>,
    cut: bool,
}

impl LineSplitter {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            pending: Vec::new(),
            cut: false,
        }
    }

    /// Takes bytes of `input` up to and including the first newline; returns how many it took and
    /// the line they completed, if any. Keeps at most `cap` bytes whatever the input.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Line>) {
        let newline = input.iter().position(|b| *b == b'\n');
        let body = &input[..newline.unwrap_or(input.len())];
        let room = self.cap.saturating_sub(self.pending.len());
        if body.len() > room {
            self.cut = true;
        }
        self.pending.extend_from_slice(&body[..body.len().min(room)]);
        match newline {
            Some(at) => (at + 1, Some(self.take())),
            None => (input.len(), None),
        }
    }

    /// At the end of the stream: the unterminated last line, if there is one.
    pub fn finish(&mut self) -> Option<Line> {
        (!self.pending.is_empty() || self.cut).then(|| self.take())
    }

    fn take(&mut self) -> Line {
        let cut = std::mem::take(&mut self.cut);
        let end = if cut {
            // The cut may fall inside a character; a partial one would only show as U+FFFD.
            without_partial_char(&self.pending)
        } else {
            self.pending.len() - usize::from(self.pending.ends_with(b"\r"))
        };
        let text = String::from_utf8_lossy(&self.pending[..end]).into_owned();
        // The buffer is reused, so its size stays at most about `cap` for the whole stream.
        self.pending.clear();
        Line { text, cut }
    }
}

/// The length of `bytes` without a multi-byte UTF-8 character that is cut off at its end.
fn without_partial_char(bytes: &[u8]) -> usize {
    let len = bytes.len();
    // A character has at most 4 bytes: its lead byte is among the last 4.
    for back in 1..=len.min(4) {
        let byte = bytes[len - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte
        }
        let needed = match byte {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if needed > back { len - back } else { len };
    }
    len
}

/// The next line of `reader`, `None` at its end.
async fn next_line(
    reader: &mut std::pin::Pin<&mut impl AsyncBufRead>,
    splitter: &mut LineSplitter,
) -> std::io::Result<Option<Line>> {
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(splitter.finish());
        }
        let (used, line) = splitter.feed(chunk);
        reader.as_mut().consume(used);
        if line.is_some() {
            return Ok(line);
        }
    }
}

/// Delivers the new lines of one stream to `on_line` until it ends.
async fn read_stream(
    reader: impl AsyncBufRead,
    container: &str,
    delivery: &mut Delivery<impl FnMut(&str)>,
    stop: &CancellationToken,
) -> StreamEnd {
    let mut reader = std::pin::pin!(reader);
    // Per stream: a line left unfinished by a broken stream is read again whole after resuming.
    let mut splitter = LineSplitter::new(MAX_LINE_BYTES);
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return StreamEnd::Stopped,
            next = next_line(&mut reader, &mut splitter) => next,
        };
        match next {
            Ok(Some(line)) => {
                // The stamp starts the line, so a cut line keeps it.
                let (ts, text) = split_timestamp(&line.text);
                delivery.line(ts, text, line.cut);
            }
            Ok(None) => return StreamEnd::Clean,
            // Only reading can fail here: the content itself is never an error.
            Err(error) => {
                debug!(container, %error, "log stream broke");
                return StreamEnd::Broken;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("valid timestamp")
    }

    #[test]
    fn splits_stamped_lines() {
        let (t, text) = split_timestamp("2026-01-01T00:00:01.5Z hello world");
        assert_eq!(t, Some(ts("2026-01-01T00:00:01.5Z")));
        assert_eq!(text, "hello world");
        assert_eq!(split_timestamp("2026-01-01T00:00:01Z").1, "");
        assert_eq!(split_timestamp("no stamp here"), (None, "no stamp here"));
    }

    #[test]
    fn resume_skips_lines_already_delivered_even_with_equal_stamps() {
        let mut c = Cursor::default();
        assert_eq!(c.resume(), None);
        let a = ts("2026-01-01T00:00:01.1Z");
        let b = ts("2026-01-01T00:00:01.2Z");
        assert!(c.accept(a));
        assert!(c.accept(b));
        assert!(c.accept(b)); // two lines with the same stamp
        // Stream breaks; the new stream starts at the whole second.
        assert_eq!(c.resume(), Some(ts("2026-01-01T00:00:01Z")));
        assert!(!c.accept(a));
        assert!(!c.accept(b));
        assert!(!c.accept(b));
        assert!(c.accept(b), "a third line with the same stamp is new");
        assert!(c.accept(ts("2026-01-01T00:00:02Z")));
    }

    #[test]
    fn lines_out_of_time_order_within_a_stream_are_all_delivered() {
        let mut c = Cursor::default();
        assert!(c.accept(ts("2026-01-01T00:00:01.5Z")));
        assert!(
            c.accept(ts("2026-01-01T00:00:01.2Z")),
            "stderr line read earlier, appended later"
        );
        assert!(
            c.accept(ts("2026-01-01T00:00:00.9Z")),
            "even from the previous second"
        );
        // The resumed stream repeats the two lines of second 1 (in log order), then new ones.
        assert_eq!(c.resume(), Some(ts("2026-01-01T00:00:01Z")));
        assert!(!c.accept(ts("2026-01-01T00:00:01.5Z")));
        assert!(!c.accept(ts("2026-01-01T00:00:01.2Z")));
        assert!(c.accept(ts("2026-01-01T00:00:01.7Z")));
    }

    /// Splits `chunks` as one stream read would, chunk by chunk, with `cap`.
    fn split_all(cap: usize, chunks: &[&[u8]]) -> Vec<Line> {
        let mut splitter = LineSplitter::new(cap);
        let mut lines = Vec::new();
        for chunk in chunks {
            let mut rest = *chunk;
            while !rest.is_empty() {
                let (used, line) = splitter.feed(rest);
                rest = &rest[used..];
                lines.extend(line);
                assert!(splitter.pending.capacity() <= 2 * cap, "buffer grew past the cap");
            }
        }
        lines.extend(splitter.finish());
        lines
    }

    fn whole(text: &str) -> Line {
        Line {
            text: text.to_string(),
            cut: false,
        }
    }

    fn cut(text: &str) -> Line {
        Line {
            text: text.to_string(),
            cut: true,
        }
    }

    #[test]
    fn lines_are_split_across_chunks_and_the_unterminated_rest_ends_the_stream() {
        let lines = split_all(64, &[b"ab", b"c\nde", b"f\n\n", b"last"]);
        assert_eq!(lines, [whole("abc"), whole("def"), whole(""), whole("last")]);
        assert_eq!(split_all(64, &[b"one\n"]), [whole("one")]);
    }

    #[test]
    fn a_crlf_ending_is_a_line_end_and_a_lone_carriage_return_is_content() {
        assert_eq!(
            split_all(64, &[b"a\rb\r\n", b"c\r", b"\n"]),
            [whole("a\rb"), whole("c")]
        );
    }

    #[test]
    fn invalid_utf8_is_decoded_lossily() {
        let lines = split_all(64, &[b"caf\xe9\n", b"\xff\xfe ok\n", b"next\n"]);
        assert_eq!(
            lines,
            [whole("caf\u{FFFD}"), whole("\u{FFFD}\u{FFFD} ok"), whole("next")]
        );
    }

    #[test]
    fn a_line_over_the_cap_is_cut_and_dropped_to_its_newline_in_bounded_memory() {
        let big = vec![b'a'; 1000];
        let mut chunks: Vec<&[u8]> = vec![b"0123456789"; 1];
        chunks.extend(std::iter::repeat_n(big.as_slice(), 50));
        chunks.push(b"tail\nnext\n");
        assert_eq!(split_all(16, &chunks), [cut("0123456789aaaaaa"), whole("next")]);
        // Exactly at the cap is not cut.
        assert_eq!(split_all(4, &[b"abcd\n"]), [whole("abcd")]);
        // Cut without a newline before the end of the stream.
        assert_eq!(split_all(4, &[b"abcdef"]), [cut("abcd")]);
    }

    #[test]
    fn a_cut_never_leaves_half_a_character() {
        // "é" is 2 bytes, "€" 3 and "𝄞" 4; each straddles the cap here.
        assert_eq!(split_all(4, &["abcé\n".as_bytes()]), [cut("abc")]);
        assert_eq!(split_all(4, &["ab€\n".as_bytes()]), [cut("ab")]);
        assert_eq!(split_all(4, &["a𝄞z\n".as_bytes()]), [cut("a")]);
        assert_eq!(split_all(5, &["a𝄞z\n".as_bytes()]), [cut("a𝄞")]);
    }

    #[test]
    fn a_cut_line_is_marked_with_the_length_kept() {
        assert_eq!(
            Line::display("abc", true),
            "abc [kube-executor: line cut at 3 bytes]"
        );
        assert_eq!(Line::display("abc", false), "abc");
    }

    mod follow {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        };

        use super::*;
        use crate::k8s::testing::{self, ApiServer, Call};

        const LOG: &str = "GET /api/v1/namespaces/ns/pods/pod-1/log";

        #[derive(Default)]
        struct FakeContainer {
            terminated: AtomicBool,
            pod_gone: AtomicBool,
            /// Notified when the follower asks whether the pod is gone: it then decides how to go on.
            asked_pod_gone: tokio::sync::Notify,
        }

        impl ContainerProbe for FakeContainer {
            fn terminated(&self) -> bool {
                self.terminated.load(Ordering::SeqCst)
            }
            fn pod_gone(&self) -> bool {
                self.asked_pod_gone.notify_one();
                self.pod_gone.load(Ordering::SeqCst)
            }
        }

        struct Following<S = ApiServer> {
            server: S,
            container: Arc<FakeContainer>,
            metrics: Metrics,
            result: tokio::task::JoinHandle<(Result<(), FollowError>, Vec<String>)>,
            changes: watch::Sender<u64>,
        }

        /// Follows container `main` of `pod-1` in `ns` on its own task.
        fn start(container: FakeContainer) -> Following {
            start_on(testing::client(), container)
        }

        /// [`start`] with the client and server given.
        fn start_on<S>((client, server): (kube::Client, S), container: FakeContainer) -> Following<S> {
            let container = Arc::new(container);
            let metrics = Metrics::for_tests();
            // Kept open: a closed channel would end every pause at once.
            let (changes, receiver) = watch::channel(0);
            let result = tokio::spawn({
                let (container, metrics) = (container.clone(), metrics.clone());
                async move {
                    let pods: Api<Pod> = Api::namespaced(client, "ns");
                    let mut lines = Vec::new();
                    let stop = CancellationToken::new();
                    let probe: &FakeContainer = &container;
                    let source = LogSource {
                        pods: &pods,
                        pod: "pod-1",
                        container: "main",
                    };
                    let result = follow(source, probe, receiver, &metrics, &stop, |line| {
                        lines.push(line.to_string())
                    })
                    .await;
                    (result, lines)
                }
            });
            Following {
                server,
                container,
                metrics,
                result,
                changes,
            }
        }

        fn terminated() -> FakeContainer {
            FakeContainer {
                terminated: AtomicBool::new(true),
                ..FakeContainer::default()
            }
        }

        async fn expect_open(server: &mut ApiServer) -> Call {
            let call = server.expect(LOG).await;
            assert_eq!(call.param("container"), Some("main"));
            assert_eq!(call.param("follow"), Some("true"));
            assert_eq!(call.param("timestamps"), Some("true"));
            call
        }

        #[tokio::test(start_paused = true)]
        async fn a_broken_stream_resumes_at_the_last_lines_second_and_delivers_each_line_once() {
            let mut f = start(terminated());

            let call = expect_open(&mut f.server).await;
            assert_eq!(call.param("sinceTime"), None);
            let first = [
                "2026-01-01T00:00:00.900Z zero",
                "2026-01-01T00:00:01.100Z one",
                "2026-01-01T00:00:01.200Z two",
            ];
            call.stream_lines(&first, true);
            let broke = tokio::time::Instant::now();
            let call = expect_open(&mut f.server).await;
            assert!(
                broke.elapsed() >= Duration::from_millis(200),
                "reopened without a pause"
            );
            assert_eq!(call.param("sinceTime"), Some("2026-01-01T00:00:01Z"));
            let resumed = [
                "2026-01-01T00:00:01.100Z one",
                "2026-01-01T00:00:01.200Z two",
                "2026-01-01T00:00:01.200Z two again, same stamp",
                "2026-01-01T00:00:02Z three",
            ];
            call.stream_lines(&resumed, false);

            let (result, lines) = testing::finished(f.result).await;
            result.expect("the log was read to its end");
            assert_eq!(lines, ["zero", "one", "two", "two again, same stamp", "three"]);
            assert_eq!(f.metrics.event_count(Event::LogStreamResumed), 1);
            f.server.assert_no_more_calls().await;
        }

        /// A server answering log requests with raw bytes, which [`Call::stream_lines`] cannot
        /// send: a step's output need not be UTF-8.
        struct RawLogServer {
            handle: tower_test::mock::Handle<
                http::Request<kube::client::Body>,
                http::Response<testing::ScriptedBody>,
            >,
        }

        fn raw_client() -> (kube::Client, RawLogServer) {
            let (service, handle) = tower_test::mock::pair();
            (kube::Client::new(service, "default"), RawLogServer { handle })
        }

        impl RawLogServer {
            /// Answers the next request, a log open, with `chunks` and then the end of the stream.
            async fn stream_bytes(&mut self, chunks: &[&'static [u8]]) {
                let (request, reply) = self.handle.next_request().await.expect("a log request");
                assert_eq!(format!("{} {}", request.method(), request.uri().path()), LOG);
                let frames: Vec<Result<http_body::Frame<bytes::Bytes>, std::io::Error>> = chunks
                    .iter()
                    .map(|chunk| Ok(http_body::Frame::data(bytes::Bytes::from_static(chunk))))
                    .collect();
                let body = http_body_util::StreamBody::new(futures_util::StreamExt::boxed(
                    futures_util::stream::iter(frames),
                ));
                reply.send_response(
                    http::Response::builder()
                        .status(200)
                        .body(body)
                        .expect("valid response"),
                );
            }

            async fn assert_no_more_calls(mut self) {
                if let Some((request, _)) = self.handle.next_request().await {
                    panic!("unexpected request {} {}", request.method(), request.uri());
                }
            }
        }

        #[tokio::test(start_paused = true)]
        async fn invalid_utf8_is_content_not_a_broken_stream() {
            let mut f = start_on(raw_client(), terminated());

            f.server
                .stream_bytes(&[
                    b"2026-01-01T00:00:01Z caf\xe9\n",
                    b"2026-01-01T00:00:02Z \xff",
                    b"half\n2026-01-01T00:00:03Z next\n",
                ])
                .await;

            let (result, lines) = testing::finished(f.result).await;
            result.expect("the log was read to its end");
            assert_eq!(lines, ["caf\u{FFFD}", "\u{FFFD}half", "next"]);
            assert_eq!(f.metrics.event_count(Event::LogStreamResumed), 0);
            f.server.assert_no_more_calls().await;
        }

        #[tokio::test(start_paused = true)]
        async fn a_line_over_the_cap_is_cut_with_a_marker_and_the_next_line_arrives_whole() {
            let mut f = start(terminated());

            let stamp = "2026-01-01T00:00:01Z ";
            let long = format!("{stamp}{}", "a".repeat(3 * MAX_LINE_BYTES));
            expect_open(&mut f.server)
                .await
                .stream_lines(&[&long, "2026-01-01T00:00:02Z after"], false);

            let (result, lines) = testing::finished(f.result).await;
            result.expect("the log was read to its end");
            let kept = MAX_LINE_BYTES - stamp.len();
            assert_eq!(
                lines,
                [
                    format!("{} [kube-executor: line cut at {kept} bytes]", "a".repeat(kept)),
                    "after".to_string()
                ]
            );
            f.server.assert_no_more_calls().await;
        }

        #[tokio::test(start_paused = true)]
        async fn a_cut_line_keeps_its_stamp_so_a_resumed_stream_does_not_repeat_it() {
            let mut f = start(terminated());

            let long = format!("2026-01-01T00:00:01.5Z {}", "b".repeat(2 * MAX_LINE_BYTES));
            expect_open(&mut f.server).await.stream_lines(&[&long], true);
            let call = expect_open(&mut f.server).await;
            assert_eq!(call.param("sinceTime"), Some("2026-01-01T00:00:01Z"));
            call.stream_lines(&[&long, "2026-01-01T00:00:02Z after"], false);

            let (result, lines) = testing::finished(f.result).await;
            result.expect("the log was read to its end");
            assert_eq!(
                lines.len(),
                2,
                "{:?}",
                lines.iter().map(|l| l.len()).collect::<Vec<_>>()
            );
            assert!(lines[0].ends_with(" bytes]"), "the cut line is marked");
            assert_eq!(lines[1], "after");
            f.server.assert_no_more_calls().await;
        }

        #[tokio::test(start_paused = true)]
        async fn a_stream_that_ends_before_the_container_terminated_is_reopened() {
            let mut f = start(FakeContainer::default());

            expect_open(&mut f.server)
                .await
                .stream_lines(&["2026-01-01T00:00:01Z one"], false);
            let call = expect_open(&mut f.server).await;
            assert_eq!(call.param("sinceTime"), Some("2026-01-01T00:00:01Z"));
            f.container.terminated.store(true, Ordering::SeqCst);
            call.stream_lines(&["2026-01-01T00:00:01Z one", "2026-01-01T00:00:03Z two"], false);

            let (result, lines) = testing::finished(f.result).await;
            result.expect("the log was read to its end");
            assert_eq!(lines, ["one", "two"]);
            assert_eq!(
                f.metrics.event_count(Event::LogStreamResumed),
                1,
                "cut while the container ran on"
            );
            f.server.assert_no_more_calls().await;
        }

        #[tokio::test(start_paused = true)]
        async fn a_stream_that_ended_with_the_container_is_read_again_but_not_counted_as_resumed() {
            let mut f = start(FakeContainer::default());

            expect_open(&mut f.server)
                .await
                .stream_lines(&["2026-01-01T00:00:01Z last"], false);
            // The watch reports the termination only after the stream ended.
            f.container.asked_pod_gone.notified().await;
            f.container.terminated.store(true, Ordering::SeqCst);
            f.changes.send_modify(|n| *n += 1);
            let call = expect_open(&mut f.server).await;
            assert_eq!(call.param("sinceTime"), Some("2026-01-01T00:00:01Z"));
            call.stream_lines(&["2026-01-01T00:00:01Z last"], false);

            let (result, lines) = testing::finished(f.result).await;
            result.expect("the log was read to its end");
            assert_eq!(lines, ["last"]);
            assert_eq!(f.metrics.event_count(Event::LogStreamResumed), 0);
            f.server.assert_no_more_calls().await;
        }

        #[tokio::test(start_paused = true)]
        async fn a_stream_ending_with_the_end_of_output_line_is_read_once() {
            let mut f = start(FakeContainer::default());

            let end = format!("2026-01-01T00:00:01.5Z {END_OF_OUTPUT_LINE}");
            expect_open(&mut f.server)
                .await
                .stream_lines(&["2026-01-01T00:00:01Z last", &end], false);
            // The watch reports the exit a second (of paused time) after the stream ended: long
            // past the pause after which a stream without the line is opened again.
            tokio::time::sleep(Duration::from_secs(1)).await;
            f.container.terminated.store(true, Ordering::SeqCst);
            f.changes.send_modify(|n| *n += 1);

            let (result, lines) = testing::finished(f.result).await;
            result.expect("the log was read to its end");
            assert_eq!(lines, ["last"], "the end-of-output line is never shown");
            assert_eq!(f.metrics.event_count(Event::LogStreamResumed), 0);
            f.server.assert_no_more_calls().await;
        }

        #[tokio::test(start_paused = true)]
        async fn the_end_of_output_line_followed_by_more_output_is_output() {
            let mut f = start(terminated());

            let end = format!("2026-01-01T00:00:01Z {END_OF_OUTPUT_LINE}");
            expect_open(&mut f.server)
                .await
                .stream_lines(&[&end, "2026-01-01T00:00:02Z after"], false);

            let (result, lines) = testing::finished(f.result).await;
            result.expect("the log was read to its end");
            assert_eq!(lines, [END_OF_OUTPUT_LINE, "after"]);
            f.server.assert_no_more_calls().await;
        }

        #[tokio::test(start_paused = true)]
        async fn a_stream_cut_after_the_end_of_output_line_while_the_container_runs_on_is_reopened() {
            let mut f = start(FakeContainer::default());

            let end = format!("2026-01-01T00:00:01.5Z {END_OF_OUTPUT_LINE}");
            expect_open(&mut f.server)
                .await
                .stream_lines(&["2026-01-01T00:00:01Z one", &end], false);
            let ended = tokio::time::Instant::now();
            let call = expect_open(&mut f.server).await;
            assert!(
                ended.elapsed() >= END_OF_OUTPUT_GRACE,
                "reopened before the watch had its chance to report the exit"
            );
            assert_eq!(call.param("sinceTime"), Some("2026-01-01T00:00:01Z"));
            f.container.terminated.store(true, Ordering::SeqCst);
            call.stream_lines(
                &["2026-01-01T00:00:01Z one", &end, "2026-01-01T00:00:02Z late"],
                false,
            );

            let (result, lines) = testing::finished(f.result).await;
            result.expect("the log was read to its end");
            assert_eq!(lines, ["one", END_OF_OUTPUT_LINE, "late"]);
            f.server.assert_no_more_calls().await;
        }

        #[tokio::test(start_paused = true)]
        async fn forbidden_ends_the_follow_at_once() {
            let mut f = start(FakeContainer::default());

            expect_open(&mut f.server).await.fail(403, "Forbidden");

            let (result, lines) = testing::finished(f.result).await;
            let Err(FollowError::Forbidden(message)) = result else {
                panic!("expected Forbidden, got {result:?}");
            };
            assert_eq!(message, "scripted Forbidden");
            assert!(lines.is_empty());
            f.server.assert_no_more_calls().await;
        }

        #[tokio::test(start_paused = true)]
        async fn not_found_with_the_pod_gone_ends_with_pod_gone() {
            let mut f = start(FakeContainer {
                pod_gone: AtomicBool::new(true),
                ..FakeContainer::default()
            });

            expect_open(&mut f.server).await.fail(404, "NotFound");

            let (result, _) = testing::finished(f.result).await;
            assert!(matches!(result, Err(FollowError::PodGone)), "{result:?}");
            f.server.assert_no_more_calls().await;
        }

        #[tokio::test(start_paused = true)]
        async fn failed_opens_while_the_pod_exists_are_tried_again_with_growing_pauses() {
            let mut f = start(terminated());

            let mut call = expect_open(&mut f.server).await;
            let mut pauses = Vec::new();
            for (code, reason) in [
                (404, "NotFound"),
                (400, "BadRequest"),
                (500, "InternalError"),
                (404, "NotFound"),
            ] {
                call.fail(code, reason);
                let failed = tokio::time::Instant::now();
                call = expect_open(&mut f.server).await;
                pauses.push(failed.elapsed());
            }
            call.stream_lines(&["2026-01-01T00:00:01Z done"], false);

            let (result, lines) = testing::finished(f.result).await;
            result.expect("the log was read to its end");
            assert_eq!(lines, ["done"]);
            assert!(pauses[0] >= Duration::from_millis(200), "{pauses:?}");
            assert!(
                pauses.windows(2).all(|w| w[1] > w[0]),
                "pauses do not grow: {pauses:?}"
            );
            assert!(pauses.iter().all(|p| *p <= Duration::from_secs(5)), "{pauses:?}");
            f.server.assert_no_more_calls().await;
        }
    }
}
