//! State shared by all simulated nodes of this agent process: API client, logs, cgroups, running processes.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use kube::Client;
use tokio::sync::watch;

use crate::{cgroup::Cgroups, logs::LogRegistry, spawn};

/// Shared agent state.
pub struct Agent {
    pub client: Client,
    pub state_dir: PathBuf,
    pub logs: Arc<LogRegistry>,
    pub cgroups: Option<Cgroups>,
    pub processes: ProcessTable,
}

impl Agent {
    /// Per-pod directory (volumes, logs, termination-message files).
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.state_dir.join("pods").join(uid)
    }
}

/// Process groups of running containers, keyed by process-group id, with the owning pod's UID.
///
/// Every change bumps a generation counter so that waiters (pod termination) wake without polling.
#[derive(Debug)]
pub struct ProcessTable {
    groups: Mutex<HashMap<u32, String>>,
    generation: watch::Sender<u64>,
}

impl Default for ProcessTable {
    fn default() -> Self {
        Self {
            groups: Mutex::new(HashMap::new()),
            generation: watch::Sender::new(0),
        }
    }
}

impl ProcessTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<u32, String>> {
        self.groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn insert(&self, pgid: u32, pod_uid: &str) {
        self.lock().insert(pgid, pod_uid.to_string());
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn remove(&self, pgid: u32) {
        self.lock().remove(&pgid);
        self.generation.send_modify(|g| *g += 1);
    }

    fn groups_of(&self, pod_uid: &str) -> Vec<u32> {
        self.lock()
            .iter()
            .filter(|(_, uid)| *uid == pod_uid)
            .map(|(pgid, _)| *pgid)
            .collect()
    }

    /// SIGTERM to the pod's process groups, SIGKILL once `grace` has passed; returns when none is left.
    pub async fn terminate_pod(&self, pod_uid: &str, grace: Duration) {
        let mut changes = self.generation.subscribe();
        let groups = self.groups_of(pod_uid);
        if groups.is_empty() {
            return;
        }
        let signal = if grace.is_zero() {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        };
        for pgid in &groups {
            spawn::signal_group(*pgid, signal);
        }
        let all_gone = async {
            loop {
                changes.borrow_and_update();
                if self.groups_of(pod_uid).is_empty() {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(grace, all_gone).await.is_ok() {
            return;
        }
        // Grace expired: kill everything that is left (including processes started meanwhile).
        let mut changes = self.generation.subscribe();
        loop {
            changes.borrow_and_update();
            let left = self.groups_of(pod_uid);
            if left.is_empty() {
                return;
            }
            for pgid in left {
                spawn::signal_group(pgid, libc::SIGKILL);
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// SIGKILL to every container process group (agent shutdown).
    pub fn kill_all(&self) {
        for pgid in self.lock().keys() {
            spawn::signal_group(*pgid, libc::SIGKILL);
        }
    }
}
