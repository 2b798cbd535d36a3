//! End-to-end: payload values that could reach a shell, git or a file name are refused before anything is created, and the next job still runs.

mod support;

use std::time::Duration;

use dev_frontend::{DockerStep, JobFile, JobState, NewJob};
use support::{Env, job, step};

const TIMEOUT: Duration = Duration::from_secs(120);

fn error_of(record: &dev_frontend::JobRecord) -> String {
    record.error_message.clone().unwrap_or_default()
}

/// A file the payload puts into the workspace.
fn with_file(mut new_job: NewJob, path: &str) -> NewJob {
    new_job.files.insert(
        path.to_string(),
        JobFile {
            content: Some("payload file".into()),
            ..JobFile::default()
        },
    );
    new_job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_fail_permanently_before_anything_is_created() {
    let env = Env::start().await;
    let marker = std::env::temp_dir().join(format!("kube-executor-injected-{}", uuid::Uuid::new_v4()));
    let marker_text = marker.display().to_string();

    let mut injected = job(vec![step("run", &["echo should-not-run"])]);
    injected.repository_name = "github.com/acme/widgets".into();
    injected.commit = format!("$(touch {marker_text})");
    let mut option = job(vec![step("run", &["echo should-not-run"])]);
    option.repository_name = "github.com/acme/widgets".into();
    option.commit = format!("--upload-pack=touch {marker_text}");
    let helper = with_file(job(vec![step("run", &["echo should-not-run"])]), "nextIndex.sh");
    let nested = with_file(
        with_file(job(vec![step("run", &["echo should-not-run"])]), "a"),
        "a/b",
    );
    let cases = [
        (env.frontend.enqueue(injected), "commit \"$(touch "),
        (env.frontend.enqueue(option), "commit \"--upload-pack="),
        (env.frontend.enqueue(helper), "workspace file \"nextIndex.sh\""),
        (
            env.frontend.enqueue(nested),
            "workspace file \"a\" is also the directory",
        ),
    ];

    let _executor = env.spawn_executor(&[]);
    for (id, problem) in cases {
        let record = env.wait_terminal(id, TIMEOUT).await;
        assert_eq!(record.state, JobState::Failed, "{record:#?}");
        assert_eq!(record.num_failures, 0, "never retried: {record:#?}");
        let message = error_of(&record);
        assert!(message.contains(problem), "{problem:?} not in {message:?}");
        assert!(
            record
                .log_entries
                .iter()
                .all(|e| !e.out.contains("should-not-run")),
            "{record:#?}"
        );
    }
    assert_eq!(env.our_objects().await, (0, 0, 0), "refused jobs create nothing");

    let good = env
        .frontend
        .enqueue(job(vec![step("good", &["echo good-job-ran"])]));
    let record = env.wait_terminal(good, TIMEOUT).await;
    assert_eq!(record.state, JobState::Completed, "{record:#?}");
    assert!(
        record.log_entries.iter().any(|e| e.out.contains("good-job-ran")),
        "{record:#?}"
    );
    env.wait_no_objects(Duration::from_secs(30)).await;
    assert!(!marker.exists(), "a payload value ran as a command");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_name_longer_than_a_file_name_still_runs() {
    let env = Env::start().await;
    // 250 bytes, in short components the frontend can store; with `/` → `_` in the step script
    // name it alone is near the 255-byte file name limit.
    let name = format!("github.com/{}", "abcdefghi/".repeat(24).trim_end_matches('/'));
    let commit = env
        .frontend
        .create_repo(&name, &[("README.md", "long-named repository\n")])
        .await
        .expect("create repository");
    let mut new_job = job(vec![
        step("one", &["cat README.md"]),
        step("two", &["git log --format=%H -1"]),
    ]);
    new_job.repository_name = name;
    new_job.commit = commit.clone();
    let id = env.frontend.enqueue(new_job);

    let _executor = env.spawn_executor(&[]);
    let record = env.wait_terminal(id, TIMEOUT).await;
    assert_eq!(record.state, JobState::Completed, "{record:#?}");
    let out = |key: &str| {
        record
            .log_entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.out.clone())
            .unwrap_or_else(|| panic!("no entry {key}: {record:#?}"))
    };
    assert!(
        out("step.kubernetes.one").contains("long-named repository"),
        "{record:#?}"
    );
    assert!(out("step.kubernetes.two").contains(&commit), "{record:#?}");
    assert!(
        !out("setup.workspace").contains('\r'),
        "git progress in the setup log: {:?}",
        out("setup.workspace")
    );
    env.wait_no_objects(Duration::from_secs(30)).await;
}

/// The output of entry `key` of a finished job.
fn entry_out(record: &dev_frontend::JobRecord, key: &str) -> String {
    record
        .log_entries
        .iter()
        .find(|entry| entry.key == key)
        .map(|entry| entry.out.clone())
        .unwrap_or_else(|| panic!("no entry {key}: {record:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symbolic_link_in_the_repository_never_redirects_a_workspace_file() {
    let env = Env::start().await;
    // The node agent runs containers as host processes, so an absolute link target is a real
    // host directory: a write through the link would land in it.
    let scratch = support::Gate::new();
    let outside_dir = scratch.path("outside");
    std::fs::create_dir(&outside_dir).expect("outside dir");
    let outside_text = outside_dir.display().to_string();
    let commit = env
        .frontend
        .create_repo_with_links(
            "github.com/acme/links",
            &[("README.md", "links\n")],
            &[("link", outside_text.as_str())],
        )
        .await
        .expect("create repository");
    let mut new_job = with_file(
        job(vec![step("run", &["echo should-not-run"])]),
        "repository/link/chmod",
    );
    new_job.repository_name = "github.com/acme/links".into();
    new_job.repository_directory = "repository".into();
    new_job.commit = commit;
    let id = env.frontend.enqueue(new_job);

    let _executor = env.spawn_executor(&[]);
    let record = env.wait_terminal(id, TIMEOUT).await;
    // Like any failing setup step: errored, with the reason in the mark.
    assert_eq!(record.state, JobState::Errored, "{record:#?}");
    let reason = "the repository has a symbolic link at /job/repository/link: workspace files are \
                  never written through links";
    assert!(error_of(&record).contains(reason), "{record:#?}");
    assert!(
        entry_out(&record, "setup.workspace").contains(&format!("stdout: {reason}\n")),
        "{record:#?}"
    );
    assert!(
        !record.log_entries.iter().any(|e| e.key == "step.kubernetes.run"),
        "no step ran: {record:#?}"
    );
    let written: Vec<_> = std::fs::read_dir(&outside_dir).expect("outside dir").collect();
    assert!(written.is_empty(), "wrote through the link: {written:?}");
    env.wait_no_objects(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_five_hundred_steps_runs_every_step_in_order() {
    const STEPS: usize = 500;
    let env = Env::start().await;
    let steps = (0..STEPS)
        .map(|i| step(&format!("s{i}"), &[&format!("echo output-of-{i}")]))
        .collect();
    let id = env.frontend.enqueue(job(steps));

    let _executor = env.spawn_executor(&[]);
    let record = env.wait_terminal(id, Duration::from_secs(900)).await;
    assert_eq!(record.state, JobState::Completed, "{}", error_of(&record));
    let keys: Vec<&str> = record
        .log_entries
        .iter()
        .map(|e| e.key.as_str())
        .filter(|key| !key.starts_with("teardown."))
        .collect();
    let expected: Vec<String> = std::iter::once("setup.workspace".to_string())
        .chain((0..STEPS).map(|i| format!("step.kubernetes.s{i}")))
        .chain(std::iter::once("main".to_string()))
        .collect();
    let first_difference = keys.iter().zip(&expected).position(|(key, want)| key != want);
    assert!(
        keys.len() == expected.len() && first_difference.is_none(),
        "{} entries, first difference at {first_difference:?}",
        keys.len()
    );
    for i in [0, 1, 250, STEPS - 1] {
        let out = entry_out(&record, &format!("step.kubernetes.s{i}"));
        assert!(
            out.contains(&format!("stdout: output-of-{i}\n")),
            "step {i}: {out:?}"
        );
    }
    env.wait_no_objects(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_a_thousand_workspace_files_sees_every_file() {
    const FILES: usize = 1000;
    let env = Env::start().await;
    let mut new_job = job(vec![step(
        "count",
        &[
            "find inputs -type f | wc -l | tr -d ' '",
            "cat inputs/d7/f777.txt",
        ],
    )]);
    for i in 0..FILES {
        new_job.files.insert(
            format!("inputs/d{}/f{i}.txt", i % 10),
            JobFile {
                content: Some(format!("content-of-{i}")),
                ..JobFile::default()
            },
        );
    }
    let id = env.frontend.enqueue(new_job);

    let _executor = env.spawn_executor(&[]);
    let record = env.wait_terminal(id, Duration::from_secs(300)).await;
    assert_eq!(record.state, JobState::Completed, "{}", error_of(&record));
    let out = entry_out(&record, "step.kubernetes.count");
    assert!(out.contains(&format!("stdout: {FILES}\n")), "{out:?}");
    assert!(out.contains("stdout: content-of-777"), "{out:?}");
    env.wait_no_objects(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_workspace_file_fails_the_job_before_it_is_read_into_memory() {
    const FILE_BYTES: usize = 96 * 1024 * 1024;
    // Far below the file: reading it whole would pass this on its own.
    const PEAK_RSS_BOUND_KIB: u64 = 64 * 1024;
    let env = Env::start().await;
    env.frontend
        .add_file("batch-changes", "spec-1/huge.bin", &vec![b'x'; FILE_BYTES]);
    let mut oversized = job(vec![step("run", &["echo should-not-run"])]);
    oversized.files.insert(
        "cache/huge.bin".into(),
        JobFile {
            bucket: Some("batch-changes".into()),
            key: Some("spec-1/huge.bin".into()),
            ..JobFile::default()
        },
    );
    let id = env.frontend.enqueue(oversized);
    let next = env.frontend.enqueue(job(vec![step("next", &["echo next-ran"])]));

    let executor = env.spawn_executor(&[]);
    let record = env.wait_terminal(id, TIMEOUT).await;
    assert_eq!(record.state, JobState::Failed, "{record:#?}");
    assert_eq!(record.num_failures, 0, "never retried: {record:#?}");
    let message = error_of(&record);
    assert!(
        message
            .contains("workspace file \"cache/huge.bin\" does not fit the job Secret (1048576 bytes at most"),
        "{message}"
    );
    assert!(
        message.contains(&format!("announced {FILE_BYTES} bytes")),
        "{message}"
    );
    let peak = executor.peak_rss_kib();
    println!("executor peak RSS (VmHWM) after refusing a {FILE_BYTES}-byte file: {peak} KiB");
    assert!(peak < PEAK_RSS_BOUND_KIB, "peak RSS {peak} KiB");
    let record = env.wait_terminal(next, TIMEOUT).await;
    assert_eq!(record.state, JobState::Completed, "{record:#?}");
    env.wait_no_objects(Duration::from_secs(30)).await;
}

/// `$(touch <marker>)` and a quote-breaking `';touch <marker>;'`: a shell that ran either would
/// create the marker.
fn injections(marker: &std::path::Path) -> String {
    let marker = marker.display();
    format!("$(touch {marker})';touch {marker};'")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_in_a_runnable_payload_are_inert() {
    let env = Env::start().await;
    let scratch = support::Gate::new();
    let marker = scratch.path("injected");
    let hostile = injections(&marker);
    let commit = env
        .frontend
        .create_repo(
            "github.com/acme/inert",
            &[("README.md", "inert\n"), ("other.txt", "x\n")],
        )
        .await
        .expect("create repository");
    let mut runnable = job(vec![DockerStep {
        env: vec![format!("HOSTILE={hostile}")],
        dir: format!("work/{hostile}"),
        ..step(
            &format!("key{hostile}"),
            &[
                "printf 'env=%s\\n' \"$HOSTILE\"",
                "find /job/in -type f -exec cat {} +",
                "find /job -name README.md -o -name other.txt | sed 's|.*/||'",
            ],
        )
    }]);
    runnable.repository_name = "github.com/acme/inert".into();
    runnable.repository_directory = format!("repo{hostile}");
    runnable.commit = commit.clone();
    runnable.sparse_checkout = vec!["README.md".into(), hostile.clone()];
    runnable.files.insert(
        format!("in/{hostile}.txt"),
        JobFile {
            content: Some("file-content-arrived".into()),
            ..JobFile::default()
        },
    );
    runnable.files.insert(
        format!("work/{hostile}/.keep"),
        JobFile {
            content: Some(String::new()),
            ..JobFile::default()
        },
    );
    let id = env.frontend.enqueue(runnable);
    let mut unknown_repository = job(vec![step("run", &["echo should-not-run"])]);
    unknown_repository.repository_name = format!("github.com/acme/{hostile}");
    unknown_repository.commit = commit;
    let unknown = env.frontend.enqueue(unknown_repository);

    let _executor = env.spawn_executor(&[]);
    let record = env.wait_terminal(id, TIMEOUT).await;
    assert_eq!(record.state, JobState::Completed, "{}", error_of(&record));
    let out = entry_out(&record, &format!("step.kubernetes.key{hostile}"));
    assert!(out.contains(&format!("stdout: env={hostile}\n")), "{out}");
    assert!(out.contains("stdout: file-content-arrived"), "{out}");
    assert!(out.contains("stdout: README.md\n"), "{out}");
    assert!(
        !out.contains("stdout: other.txt\n"),
        "the sparse checkout lost its patterns: {out}"
    );
    let record = env.wait_terminal(unknown, TIMEOUT).await;
    assert_ne!(record.state, JobState::Completed, "{record:#?}");
    assert!(
        record
            .log_entries
            .iter()
            .all(|e| !e.out.contains("should-not-run")),
        "{record:#?}"
    );
    env.wait_no_objects(Duration::from_secs(30)).await;
    assert!(!marker.exists(), "a payload value ran as a command");
}
