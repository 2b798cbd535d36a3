//! The identity of a running job as the frontend's heartbeats name it: its id and its queue.

use std::fmt;

/// A dequeued job's id and queue, resolved once when it is dequeued.
///
/// Heartbeats, `knownIds`, `cancelIds` and the registry of running jobs all speak of jobs by this
/// key; its [`Display`](fmt::Display) form is the one the frontend uses in heartbeat answers:
/// `<id>` for a single-queue executor, `<id>-<queue>` for a multi-queue one (where two queues can
/// hand out the same id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunKey {
    pub id: i64,
    pub queue: String,
    with_queue: bool,
}

impl RunKey {
    /// The key of a job taken from a single-queue executor's only queue.
    pub fn single(id: i64, queue: &str) -> Self {
        Self {
            id,
            queue: queue.to_string(),
            with_queue: false,
        }
    }

    /// The key of a job taken by a multi-queue executor from `queue`.
    pub fn multi(id: i64, queue: &str) -> Self {
        Self {
            id,
            queue: queue.to_string(),
            with_queue: true,
        }
    }
}

impl fmt::Display for RunKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.with_queue {
            write!(f, "{}-{}", self.id, self.queue)
        } else {
            write!(f, "{}", self.id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_forms() {
        assert_eq!(RunKey::single(12, "batches").to_string(), "12");
        assert_eq!(RunKey::multi(12, "batches").to_string(), "12-batches");
        assert_ne!(RunKey::multi(12, "batches"), RunKey::multi(12, "codeintel"));
    }
}
