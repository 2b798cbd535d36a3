//! Container log followers: each started container's log is streamed into its execution log
//! entry, entries are added in pod order, and each entry is closed with the container's exit code.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use jiff::Timestamp;
use tokio::sync::{mpsc::UnboundedReceiver, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use crate::{
    context::Deps,
    k8s::{
        failure,
        logs::{self, ContainerProbe},
        watch::{ClusterView, CreatedJob},
    },
    log_entry::{EntrySink, LogEntryWriter},
    metrics::CommandOp,
    queue::{QueueError, client::JobHandle},
    redact::Redactor,
};

/// Lines taken from the channel at once; the channel is emptied before the stream is read again.
const LINES_PER_BATCH: usize = 1024;
/// How much of a log is read before its entry has been added (the frontend may be slow to answer).
const READ_AHEAD_BYTES: usize = 1024 * 1024;

/// A container whose log could not be read, so the job's output is incomplete.
#[derive(Debug)]
pub struct UnreadableLog {
    pub container: String,
    /// Why the log could not be read, as the follower said it.
    pub error: String,
}

impl UnreadableLog {
    /// The failure reason reported for the job.
    pub fn reason(&self) -> String {
        format!("could not read or record the container log: {}", self.error)
    }
}

/// Hands out turns for adding execution log entries, so entries are added in the order their
/// containers were found started even though each container is followed on its own task.
///
/// The frontend (and Sourcegraph's UI and batches backend) keeps entries in the order they were
/// added; two containers seen starting in one pod update must not race to add theirs.
#[derive(Default)]
pub struct EntryOrder {
    previous: Option<oneshot::Receiver<()>>,
}

impl EntryOrder {
    /// The next turn: it may add its entry once every earlier turn has added (or failed to add) its own.
    pub fn next_turn(&mut self) -> EntryTurn {
        let (done, next) = oneshot::channel();
        EntryTurn {
            after: self.previous.replace(next),
            done: Some(done),
        }
    }
}

/// One follower's place in [`EntryOrder`].
#[derive(Default)]
pub struct EntryTurn {
    after: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
}

impl EntryTurn {
    /// Waits until the previous entry was added; a previous follower that ended counts as done.
    async fn wait(&mut self) {
        if let Some(after) = self.after.take() {
            let _ = after.await;
        }
    }

    fn done(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

/// The entry one container's log goes into.
pub struct EntrySpec {
    pub key: String,
    pub command: Vec<String>,
    pub start_time: Timestamp,
}

/// Follows one container of a job pod; built by the supervisor when it sees the container start.
pub struct ContainerFollower {
    pub deps: Deps,
    pub handle: JobHandle,
    pub redactor: Redactor,
    pub job: CreatedJob,
    pub pod: String,
    pub container: String,
    pub entry: EntrySpec,
    pub turn: EntryTurn,
    /// Told once the log has been read to the end (dropped if the follower ends before): the
    /// final entry update needs nothing more from the pod, so the Job may be deleted meanwhile.
    pub log_read: Option<oneshot::Sender<()>>,
    pub stop: CancellationToken,
}

/// A container's log being read into a channel, line by line, by the `follow` future.
struct LogReading<'f, F> {
    follow: std::pin::Pin<&'f mut F>,
    lines: UnboundedReceiver<String>,
    /// Bytes the follower has put in the channel so far.
    read: Arc<AtomicUsize>,
    /// `follow` finished (the channel then ends after its last line).
    ended: bool,
    /// What made the log unreadable, when `follow` said so.
    problem: Option<UnreadableLog>,
}

impl<F> LogReading<'_, F> {
    /// Records that `follow` finished, and what it said of the log.
    fn end(&mut self, result: Result<(), UnreadableLog>) {
        self.ended = true;
        self.problem = result.err();
    }
}

impl ContainerFollower {
    /// Streams the container's log into its entry and closes the entry with the exit code.
    /// Returns what made the log unreadable, if anything did.
    pub async fn run(mut self) -> Option<UnreadableLog> {
        let mut turn = std::mem::take(&mut self.turn);
        let log_read = self.log_read.take();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        let read = Arc::new(AtomicUsize::new(0));
        let counter = read.clone();
        // The follower owns the only sender: the channel ends after its last line.
        let follow = self.follow_log(move |line| {
            counter.fetch_add(line.len() + 1, Ordering::Relaxed);
            let _ = tx.send(line.to_string());
        });
        let mut reading = LogReading {
            follow: std::pin::pin!(follow),
            lines,
            read,
            ended: false,
            problem: None,
        };
        let writer = match self.open_entry(&mut turn, &mut reading).await {
            Ok(writer) => writer,
            Err(error) => {
                error!(key = %self.entry.key, %error, "could not create the execution log entry");
                // The container's output cannot reach the frontend: the job must not pass as done.
                return Some(
                    self.unrecorded(format!("its execution log entry could not be created: {error}")),
                );
            }
        };
        debug!(key = %self.entry.key, container = %self.container, "following container log");
        let (writer, problem) = self.stream_into(writer, &mut reading).await;
        let exit_code = exit_code_of(&self.deps.view, &self.job, &self.container).unwrap_or(1);
        if let Some(log_read) = log_read {
            let _ = log_read.send(());
        }
        if let Err(error) = writer.finish(exit_code).await {
            error!(key = %self.entry.key, %error, "could not send the final log entry update");
            return problem
                .or_else(|| Some(self.unrecorded(format!("its final log entry update failed: {error}"))));
        }
        problem
    }

    /// Adds the entry in its turn, reading the log meanwhile up to [`READ_AHEAD_BYTES`]: a
    /// container first seen when it has already ended has its log opened while its entry is added.
    async fn open_entry<F>(
        &self,
        turn: &mut EntryTurn,
        reading: &mut LogReading<'_, F>,
    ) -> Result<LogEntryWriter, QueueError>
    where
        F: Future<Output = Result<(), UnreadableLog>>,
    {
        let sink = EntrySink {
            client: self.deps.queue.clone(),
            job: self.handle.clone(),
            redactor: self.redactor.clone(),
            max_bytes: self.deps.config.log_entry_max_bytes,
            metrics: self.deps.metrics.clone(),
        };
        let open = async {
            turn.wait().await;
            let opened =
                LogEntryWriter::open(sink, &self.entry.key, &self.entry.command, self.entry.start_time).await;
            // Whether or not it was added, the next container's entry may now be added.
            turn.done();
            opened
        };
        let mut open = std::pin::pin!(open);
        loop {
            let room = reading.read.load(Ordering::Relaxed) < READ_AHEAD_BYTES;
            tokio::select! {
                biased;
                opened = &mut open => return opened,
                result = &mut reading.follow, if !reading.ended && room => reading.end(result),
            }
        }
    }

    fn unrecorded(&self, error: String) -> UnreadableLog {
        UnreadableLog {
            container: self.container.clone(),
            error,
        }
    }

    /// Feeds every log line to `writer`, sending updates while the log grows, until the log ends.
    ///
    /// The stream is read only while nothing waits in the channel and no update is due, so what
    /// waits in memory is at most what one read of the stream brings; while an update is sent the
    /// stream is not read, and a fast writer in the pod meets the connection's back-pressure.
    async fn stream_into<F>(
        &self,
        mut writer: LogEntryWriter,
        reading: &mut LogReading<'_, F>,
    ) -> (LogEntryWriter, Option<UnreadableLog>)
    where
        F: Future<Output = Result<(), UnreadableLog>>,
    {
        let mut batch = Vec::new();
        loop {
            let wait = writer.next_flush_in().unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                biased;
                received = reading.lines.recv_many(&mut batch, LINES_PER_BATCH) => {
                    if received == 0 {
                        break;
                    }
                    for line in batch.drain(..) {
                        // The line plus the newline it ended with.
                        self.deps.metrics.record_log_output(line.len() + 1, 1);
                        writer.push_line(&line);
                    }
                }
                _ = tokio::time::sleep(wait) => writer.flush_if_due().await,
                result = &mut reading.follow, if !reading.ended => reading.end(result),
            }
        }
        let problem = reading.problem.take();
        if let Some(unreadable) = &problem {
            writer.push_line(&format!("[kube-executor] {}", unreadable.error));
        }
        (writer, problem)
    }

    /// Follows the log, calling `on_line` per line; only a forbidden log makes the output unreadable.
    async fn follow_log(&self, on_line: impl FnMut(&str) + Send) -> Result<(), UnreadableLog> {
        let probe = Probe {
            view: self.deps.view.clone(),
            job: self.job.clone(),
            container: self.container.clone(),
        };
        let source = logs::LogSource {
            pods: &self.deps.pods,
            pod: &self.pod,
            container: &self.container,
        };
        let started = std::time::Instant::now();
        let result = logs::follow(
            source,
            &probe,
            self.deps.view.subscribe(),
            &self.deps.metrics,
            &self.stop,
            on_line,
        )
        .await;
        self.deps
            .metrics
            .observe_command(CommandOp::PodLogs, started.elapsed(), result.is_ok());
        match result {
            Ok(()) => Ok(()),
            Err(error @ logs::FollowError::Forbidden(_)) => {
                error!(container = %self.container, %error, "cannot stream the container log; check the executor's Role");
                Err(UnreadableLog {
                    container: self.container.clone(),
                    error: error.to_string(),
                })
            }
            Err(error) => {
                debug!(container = %self.container, %error, "log follow ended early");
                Ok(())
            }
        }
    }
}

/// What the log follower asks about the container while it streams.
struct Probe {
    view: ClusterView,
    job: CreatedJob,
    container: String,
}

impl ContainerProbe for Probe {
    fn terminated(&self) -> bool {
        self.pod_gone() || exit_code_of(&self.view, &self.job, &self.container).is_some()
    }

    fn pod_gone(&self) -> bool {
        self.view.pod_of(&self.job).is_none()
    }
}

fn exit_code_of(view: &ClusterView, job: &CreatedJob, container: &str) -> Option<i32> {
    let pod = view.pod_of(job)?;
    failure::container_statuses(&pod)
        .find(|cs| cs.name == container)
        .and_then(|cs| cs.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::task::JoinSet;

    use super::*;

    #[tokio::test]
    async fn entry_turns_add_in_order_whichever_follower_runs_first() {
        let mut order = EntryOrder::default();
        let turns: Vec<EntryTurn> = (0..4).map(|_| order.next_turn()).collect();
        let added = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = JoinSet::new();
        // Spawned last-first: without the turns the last container would add its entry first.
        for (index, mut turn) in turns.into_iter().enumerate().rev() {
            let added = added.clone();
            tasks.spawn(async move {
                turn.wait().await;
                added.lock().expect("lock").push(index);
                turn.done();
            });
            tokio::task::yield_now().await;
        }
        while tasks.join_next().await.is_some() {}
        assert_eq!(*added.lock().expect("lock"), [0, 1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_that_ends_without_adding_does_not_block_the_next() {
        let mut order = EntryOrder::default();
        let first = order.next_turn();
        let mut second = order.next_turn();
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second.wait())
            .await
            .expect("the next turn is free once the earlier follower is gone");
    }
}
