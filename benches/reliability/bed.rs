//! One scenario's world: control plane, dev frontend (optionally behind the fault proxy), the
//! executor, the suite's own observers, and the jobs streamed through them.

use std::time::{Duration, Instant};

use dev_frontend::{FrontendOptions, JobRecord};
use test_cluster::ClusterOptions;

use crate::{
    checks,
    monitor::{ClusterMonitor, ProcessSampler, ReadySampler},
    proxy::FaultProxy,
    report::Figures,
    support::{Env, Executor, process_running},
    workload::{self, Kind, Launched, Shape},
};

/// How long the garbage collector gets to remove the pods of deleted Jobs (it too recovers from
/// the faults, with its own back-off).
const LEFTOVER_WAIT: Duration = Duration::from_secs(120);

/// How a scenario's world is set up.
pub struct Setup {
    pub cluster: ClusterOptions,
    pub frontend: FrontendOptions,
    /// `EXECUTOR_MAXIMUM_NUM_JOBS`.
    pub limit: usize,
    /// Puts the fault proxy between the executor and the frontend.
    pub proxy: bool,
    /// Further executor environment.
    pub executor_env: Vec<(&'static str, String)>,
}

impl Setup {
    pub fn new(limit: usize) -> Setup {
        Setup {
            cluster: ClusterOptions::default(),
            frontend: FrontendOptions::default(),
            limit,
            proxy: false,
            executor_env: Vec::new(),
        }
    }
}

pub struct Bed {
    pub env: Env,
    pub proxy: Option<FaultProxy>,
    pub executor: Executor,
    pub monitor: ClusterMonitor,
    pub memory: ProcessSampler,
    pub ready: ReadySampler,
    pub figures: Figures,
    executor_env: Vec<(&'static str, String)>,
    launched: Vec<Launched>,
    executor_logs: Vec<std::path::PathBuf>,
    /// Set when the scenario itself ended the executor, so its exit is no crash.
    executor_ended_on_purpose: bool,
}

impl Bed {
    pub async fn start(name: &'static str, setup: Setup) -> Bed {
        let env = Env::start_with(setup.cluster, setup.frontend).await;
        let proxy = if setup.proxy {
            Some(
                FaultProxy::start(env.frontend.url())
                    .await
                    .expect("start the fault proxy"),
            )
        } else {
            None
        };
        let mut executor_env = setup.executor_env;
        executor_env.push(("EXECUTOR_MAXIMUM_NUM_JOBS", setup.limit.to_string()));
        executor_env.push(("RUST_LOG", "kube_executor=debug,info".to_string()));
        if let Some(proxy) = &proxy {
            executor_env.push(("EXECUTOR_FRONTEND_URL", proxy.url()));
        }
        let monitor = ClusterMonitor::start(env.cluster.client());
        let executor = spawn(&env, &executor_env);
        let memory = ProcessSampler::start(executor.pid(), Duration::from_millis(500));
        let ready = ReadySampler::start(executor.health);
        let mut figures = Figures::new(name);
        figures.limit = setup.limit;
        let executor_logs = vec![executor.log.clone()];
        Bed {
            env,
            proxy,
            executor,
            monitor,
            memory,
            ready,
            figures,
            executor_env,
            launched: Vec::new(),
            executor_logs,
            executor_ended_on_purpose: false,
        }
    }

    /// Enqueues `count` jobs, the kind of each chosen by `kind_of(index)`.
    pub fn enqueue(&mut self, count: usize, shape: Shape, kind_of: impl Fn(usize) -> Kind) -> Vec<Launched> {
        let start = self.launched.len();
        let new: Vec<Launched> = (start..start + count)
            .map(|index| {
                let kind = kind_of(index);
                Launched {
                    id: self.env.frontend.enqueue(workload::build(kind, shape, index)),
                    kind,
                    lines: shape.lines,
                    may_retry: false,
                }
            })
            .collect();
        self.launched.extend(&new);
        new
    }

    /// Lets the fault force a retry of job `id`.
    pub fn allow_retry(&mut self, id: i64) {
        for launched in self.launched.iter_mut().filter(|l| l.id == id) {
            launched.may_retry = true;
        }
    }

    /// Lets every job dequeued and not finished run again (a fault striking them may error them);
    /// returns how many there are.
    pub fn allow_retry_of_unfinished(&mut self) -> usize {
        let unfinished: Vec<i64> = self
            .env
            .frontend
            .jobs()
            .into_iter()
            .filter(|r| r.num_dequeues > 0 && !r.state.is_terminal())
            .map(|r| r.id)
            .collect();
        for id in &unfinished {
            self.allow_retry(*id);
        }
        unfinished.len()
    }

    /// Records a fault and when it ended; the end counts for the recovery figure only when jobs
    /// were waiting, so the time to the next Job measures recovery, not a lull in the stream.
    pub fn fault_ended(&mut self, description: &str, ended: Instant) {
        self.figures.faults.push(description.to_string());
        let waiting = self.launched.iter().any(|l| {
            self.env
                .frontend
                .job("batches", l.id)
                .is_some_and(|r| r.state == dev_frontend::JobState::Queued)
        });
        if waiting {
            self.figures.fault_ends.push(ended);
        }
    }

    /// SIGKILLs (9) or SIGTERMs (15) the executor and waits for it to exit.
    pub async fn end_executor(&mut self, signal: i32, within: Duration) -> std::process::ExitStatus {
        self.executor_ended_on_purpose = true;
        self.figures.peak_rss_kib = self.figures.peak_rss_kib.max(self.memory.peak_kib());
        self.executor.signal(signal);
        self.executor.wait_exit(within).await
    }

    /// Starts a new executor process with the same settings and follows it.
    pub fn restart_executor(&mut self) {
        self.executor = spawn(&self.env, &self.executor_env);
        self.executor_logs.push(self.executor.log.clone());
        self.memory.follow(self.executor.pid());
        self.ready.follow(self.executor.health);
        self.executor_ended_on_purpose = false;
    }

    /// Waits until `done` holds for the frontend's records of the launched jobs.
    pub async fn wait_records(&self, what: &str, timeout: Duration, done: impl Fn(&[JobRecord]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let records: Vec<JobRecord> = self
                .launched
                .iter()
                .filter_map(|l| self.env.frontend.job("batches", l.id))
                .collect();
            if done(&records) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `count` launched jobs have printed their first numbered line.
    pub async fn wait_running(&self, count: usize, timeout: Duration) {
        let first = format!("stdout: {} {} out 1", workload::MARK, workload::STEPS[0]);
        self.wait_records(&format!("{count} jobs running"), timeout, |records| {
            records
                .iter()
                .filter(|r| !r.state.is_terminal() && r.log_entries.iter().any(|e| e.out.contains(&first)))
                .count()
                >= count
        })
        .await;
    }

    /// Waits for every launched job to finish, then judges the scenario and stops the executor.
    pub async fn finish(mut self, timeout: Duration) -> Figures {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !self.all_terminal() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let tally = checks::judge(&self.env.frontend, &self.monitor, &self.launched);
        let cleaning = Instant::now();
        let leaked = checks::leftovers(&self.env, LEFTOVER_WAIT).await;
        if leaked.is_empty() {
            self.figures.notes.push(format!(
                "no executor object left {:.1} s after the last job finished",
                cleaning.elapsed().as_secs_f64()
            ));
        }
        let recovery = self.recovery();
        let mut figures = std::mem::replace(&mut self.figures, Figures::new(""));
        figures.absorb(tally, self.launched.len(), leaked.len());
        if !leaked.is_empty() {
            figures
                .problems
                .push(format!("left in the cluster: {}", leaked.join(", ")));
        }
        figures.max_concurrency = self.monitor.max_active();
        figures.recovery = recovery;
        figures.peak_rss_kib = figures.peak_rss_kib.max(self.memory.peak_kib());
        self.check_executor_alive(&mut figures).await;
        if !figures.passed() {
            self.print_executor_logs();
        }
        figures
    }

    /// What explains a failure: every executor process's log at info and above, to stderr (the
    /// logs live in the cluster's directory, which is removed with it).
    fn print_executor_logs(&self) {
        for log in &self.executor_logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let notable: Vec<&str> = text
                .lines()
                .filter(|l| {
                    !l.contains(" DEBUG ") || l.contains("k8s::watch") || l.contains("job::supervise")
                })
                .collect();
            eprintln!("---- {} (info and above, last 300 lines) ----", log.display());
            for line in &notable[notable.len().saturating_sub(300)..] {
                eprintln!("{line}");
            }
        }
    }

    fn all_terminal(&self) -> bool {
        self.launched.iter().all(|l| {
            self.env
                .frontend
                .job("batches", l.id)
                .is_some_and(|r| r.state.is_terminal())
        })
    }

    /// The longest time from a fault's end to the next Job created.
    fn recovery(&self) -> Option<Duration> {
        self.figures
            .fault_ends
            .iter()
            .filter_map(|end| self.monitor.first_creation_after(*end).map(|c| c - *end))
            .max()
    }

    /// The executor must still run (unless the scenario ended it), be ready, and drain on SIGTERM.
    async fn check_executor_alive(&mut self, figures: &mut Figures) {
        if !process_running(&self.executor.pid().to_string()) {
            if !self.executor_ended_on_purpose {
                figures
                    .problems
                    .push("the executor exited on its own (crashed)".into());
                figures.crashes += 1;
            }
            return;
        }
        if !self.ready.ready_now() {
            figures
                .problems
                .push("/readyz failed after the scenario had recovered".into());
        }
        self.executor.signal(15);
        if !self.all_terminal() {
            // Jobs still running are a failure already; a second signal stops them promptly.
            self.executor.signal(15);
        }
        let status = self.executor.wait_exit(Duration::from_secs(120)).await;
        if !status.success() {
            figures
                .problems
                .push(format!("the executor's SIGTERM exit was {status}"));
        }
    }
}

fn spawn(env: &Env, extra: &[(&'static str, String)]) -> Executor {
    let pairs: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.spawn_executor(&pairs)
}
