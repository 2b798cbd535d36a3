//! Shell text of a job pod: the setup-workspace program, the step scripts and the step container commands.

use jiff::Timestamp;

/// Mount path of the workspace volume in every container of a job pod.
pub const JOB_DIR: &str = "/job";
/// Where the setup-workspace container sees the job Secret's workspace files.
pub const SECRETS_DIR: &str = "/var/run/kube-executor/secrets";
/// Workspace-relative directory of the step scripts (Sourcegraph's `ScriptsPath`).
pub const SCRIPTS_DIR: &str = ".sourcegraph-executor";
/// Workspace-relative path of the skip helper.
pub const NEXT_INDEX_NAME: &str = "nextIndex.sh";
/// Workspace-relative path of the file batcheshelper writes to skip ahead to a later step.
pub const SKIP_FILE_NAME: &str = "skip.json";

/// `nextIndex.sh <skip-file> <step-key>` prints `skip` when the step must not run.
///
/// Same decision as Sourcegraph's helper, which batcheshelper's cache relies on: nothing is skipped
/// without a skip file; with one, every step is skipped whose key does not end with the file's
/// `"nextStep"` (so a skip file without `nextStep` skips every step, as upstream does).
pub const NEXT_INDEX_SCRIPT: &str = r#"#!/bin/sh
# Usage: nextIndex.sh <skip-file> <step-key>
skip_file="$1"
step_key="$2"
if [ ! -f "$skip_file" ]; then
  exit 0
fi
next_step=$(grep -o '"nextStep":[^,]*' "$skip_file" | sed -e 's/"nextStep"://' -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' -e 's/"//g' -e 's/}//g')
if [ "${step_key%"$next_step"}" = "$step_key" ]; then
  echo "skip"
fi
exit 0
"#;

/// Ends the here-document that writes [`NEXT_INDEX_SCRIPT`]; must not be a line of it.
const NEXT_INDEX_DELIMITER: &str = "KUBE_EXECUTOR_NEXT_INDEX";

/// First lines of every step script.
///
/// Steps are written for bash, so the script re-executes itself with bash when the image has one
/// (on the PATH, else `/bin/bash`); the extra argument marks the second run so it does not loop.
/// Without bash the commands run in `sh`. Then, as in Sourcegraph, a failing command does not stop
/// the script (the last command's status is the step's) and every command is traced.
const STEP_SCRIPT_PREAMBLE: &str = r#"
# Prefer bash for the step commands; the argument marks the re-executed run.
if [ "$#" -eq 0 ]; then
  for shell_candidate in "$(command -p -v bash 2>/dev/null)" /bin/bash; do
    if [ -n "$shell_candidate" ] && [ -x "$shell_candidate" ]; then
      exec "$shell_candidate" "$0" bash-selected
    fi
  done
fi

set +e
set -x
"#;

/// Quotes `value` for a POSIX shell: single quotes, with `'` written as `'"'"'`.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r#"'"'"'"#))
}

/// The last line every job container prints, after its program, so that the log follower knows
/// a stream that ended after it ended with the container and need not be read again. Never shown
/// in an execution log entry.
pub const END_OF_OUTPUT_LINE: &str = "kube-executor: end of output";

/// Wraps a container program so that its stderr goes into its stdout pipe and its output ends
/// with [`END_OF_OUTPUT_LINE`]; the container exits with the program's status.
///
/// A container runtime reads stdout and stderr from two pipes and interleaves them by when it
/// happened to read each, so a step's `set -x` trace (stderr) and its output (stdout) can reach
/// the log out of order. The executor shows both as one stream anyway (every line is `stdout: `),
/// so giving them one pipe keeps the order the step wrote them in, on any runtime.
///
/// A log stream ends when the container exits, usually before the Pod watch reports the exit; the
/// marker tells that end from a connection cut while the container runs on, which would otherwise
/// take a second request per container to rule out. A program killed before the marker (OOM, a
/// deadline) just costs that second request.
pub fn container_program(program: &str) -> String {
    format!(
        "exec 2>&1\n{program}\nkube_executor_status=$?\necho {}\nexit \"$kube_executor_status\"",
        shell_quote(END_OF_OUTPUT_LINE)
    )
}

/// Normalises a workspace-relative path: drops empty and `.` components.
///
/// Returns `None` when the path could leave the workspace: absolute, or with a `..` component.
/// The root itself normalises to the empty string.
pub fn normalize_workspace_path(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

/// Joins a normalised workspace-relative path to `root`.
fn under(root: &str, relative: &str) -> String {
    if relative.is_empty() {
        root.to_string()
    } else {
        format!("{root}/{relative}")
    }
}

/// Longest file name most file systems (ext4, xfs, overlayfs) accept, in bytes.
pub const MAX_FILE_NAME_BYTES: usize = 255;

/// Length of the hash that keeps a shortened repository part of a script name unique.
const NAME_HASH_LEN: usize = 12;

/// File name of the script of docker step `step_index`:
/// `<jobID>.<i>_<repositoryName with / → _>@<commit>.sh`, as Sourcegraph names it.
///
/// Bytes other than ASCII letters, digits, `.`, `-` and `_` become `_` (so `/` does, as upstream),
/// which keeps the name one plain path component whatever the payload holds. A repository part
/// that would make the name longer than [`MAX_FILE_NAME_BYTES`] is cut and ends with a hash of
/// the whole repository name, so two long names sharing a prefix still get different scripts.
pub fn step_script_name(job_id: i64, step_index: usize, repository_name: &str, commit: &str) -> String {
    let prefix = format!("{job_id}.{step_index}_");
    let suffix = format!("@{}.sh", file_name_safe(commit));
    let mut repository = file_name_safe(repository_name);
    let budget = MAX_FILE_NAME_BYTES.saturating_sub(prefix.len() + suffix.len());
    if repository.len() > budget {
        let hash = format!("{:016x}", fnv1a64(repository_name.as_bytes()));
        // Every byte is ASCII, so any cut is on a character boundary.
        repository.truncate(budget.saturating_sub(NAME_HASH_LEN + 1));
        repository.push('-');
        repository.push_str(&hash[..NAME_HASH_LEN]);
    }
    format!("{prefix}{repository}{suffix}")
}

/// `value` with every byte outside `[A-Za-z0-9._-]` replaced by `_`.
fn file_name_safe(value: &str) -> String {
    value
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
            _ => '_',
        })
        .collect()
}

/// 64-bit FNV-1a: stable across builds and platforms (names must not change between executor
/// versions), and only needs to tell names apart, not resist an adversary.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Absolute path of a step script inside the pod.
pub fn step_script_path(script_name: &str) -> String {
    format!("{JOB_DIR}/{SCRIPTS_DIR}/{script_name}")
}

/// Content of a step script: the preamble, then the step's commands one per line.
pub fn step_script(commands: &[String]) -> String {
    let mut script = String::from(STEP_SCRIPT_PREAMBLE);
    for command in commands {
        script.push_str(command);
        script.push('\n');
    }
    script
}

/// The `sh -c` program of a step container: runs the step script unless the skip helper says the
/// step is skipped. The container's exit status is the script's (0 when skipped).
///
/// Unlike Sourcegraph, which joins the step command with `"; "` and so runs a bare `/bin/sh` before
/// executing the script file itself, the script is handed to `/bin/sh` directly.
pub fn step_container_args(step_key: &str, script_name: &str) -> String {
    step_container_args_in(JOB_DIR, step_key, script_name)
}

fn step_container_args_in(job_dir: &str, step_key: &str, script_name: &str) -> String {
    format!(
        "if [ \"$({next_index} {skip_file} {key})\" != \"skip\" ]; then /bin/sh {script}; fi",
        next_index = shell_quote(&format!("{job_dir}/{NEXT_INDEX_NAME}")),
        skip_file = shell_quote(&format!("{job_dir}/{SKIP_FILE_NAME}")),
        key = shell_quote(step_key),
        script = shell_quote(&format!("{job_dir}/{SCRIPTS_DIR}/{script_name}")),
    )
}

/// Shell function of the setup program that fails the job when one of its arguments is a
/// symbolic link.
///
/// The repository is checked out before the workspace files are written, and it may hold links:
/// `repository/link -> /usr/bin` plus a workspace file `repository/link/chmod` would overwrite a
/// binary of the container that holds the job token. So no component of a path the program
/// writes may be a link. The reason also goes to the termination log, so the mark names it.
const REFUSE_LINKS_FUNCTION: &str = r#"refuse_links() {
  for path in "$@"; do
    if [ -L "$path" ]; then
      reason="the repository has a symbolic link at $path: workspace files are never written through links"
      echo "$reason"
      { printf '%s\n' "$reason" > "$termination_log"; } 2>/dev/null || :
      exit 1
    fi
  done
}"#;

/// First word of the line the setup program writes to its termination log after success: the
/// effective soft limits of the job pod, which the executor reads from the pod status for its
/// ulimits NFR (`crate::nfr`).
pub const ULIMITS_MARK: &str = "kube-executor-ulimits";

/// Where Kubernetes reads a container's termination message (the default `terminationMessagePath`).
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// Last lines of the setup program: measure the soft limits of open files and processes and write
/// them as one [`ULIMITS_MARK`] line to the termination log, never to the log entry.
///
/// Runs only after everything else succeeded (`set -e`), so a failure's reason (a refused link)
/// stays the container's only termination message. Not every `sh` knows `ulimit -u` (dash
/// rejects it, and reads `-p` as processes where bash reads pipe size), so without it the
/// process limit comes from `/proc/self/limits`; a limit that cannot be read is `unknown`. A
/// termination log that cannot be written leaves the job alone.
fn measure_ulimits() -> String {
    format!(
        r#"nofile=$(ulimit -n 2>/dev/null) || nofile=
nproc=$(ulimit -u 2>/dev/null) || nproc=$(sed -n 's/^Max processes  *\([^ ]*\).*/\1/p' /proc/self/limits 2>/dev/null) || nproc=
{{ printf '{ULIMITS_MARK} nofile=%s nproc=%s\n' "${{nofile:-unknown}}" "${{nproc:-unknown}}" > "$termination_log"; }} 2>/dev/null || :"#
    )
}

/// A `refuse_links` call on every path from the first component of workspace-relative
/// `relative` down to the whole of it, under `job_dir`.
fn refuse_links_line(job_dir: &str, relative: &str) -> String {
    let mut call = String::from("refuse_links");
    let mut path = job_dir.to_string();
    for component in relative.split('/').filter(|component| !component.is_empty()) {
        path.push('/');
        path.push_str(component);
        call.push(' ');
        call.push_str(&shell_quote(&path));
    }
    call
}

/// The `sh -c` program of the setup container: run the setup program from the Secret volume.
///
/// The program is a file, not the container's argument: Linux limits one argument to 128 KiB,
/// which a few hundred steps or workspace files exceed.
pub fn run_setup_program(file_name: &str) -> String {
    format!("/bin/sh {}", shell_quote(&format!("{SECRETS_DIR}/{file_name}")))
}

/// A workspace file staged in the job Secret, to be copied into the workspace by the setup program.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedFile {
    /// Key of the file in the job Secret (and file name under [`SECRETS_DIR`]).
    pub secret_key: String,
    /// Normalised workspace-relative destination (see [`normalize_workspace_path`]); never empty.
    pub path: String,
    /// Modification time to set; `None` leaves the copy time.
    pub modified_at: Option<Timestamp>,
}

/// Everything the setup-workspace program needs.
#[derive(Debug, Clone)]
pub struct SetupScript<'a> {
    pub job_id: i64,
    /// Empty: no repository to clone (the git part is left out).
    pub repository_name: &'a str,
    /// Normalised workspace-relative repository directory; empty = the workspace root.
    pub repository_dir: &'a str,
    pub commit: &'a str,
    pub fetch_tags: bool,
    pub shallow_clone: bool,
    /// Non-empty: non-cone sparse-checkout patterns; blobs are then fetched lazily.
    pub sparse_checkout: &'a [String],
    /// Sent as `X-Sourcegraph-Executor-Name` to the git endpoint.
    pub executor_name: &'a str,
    /// `EXECUTOR_FRONTEND_URL`; the clone URL is `<frontend_url>/.executors/git/<repository_name>`.
    pub frontend_url: &'a str,
    /// `KUBERNETES_GIT_CA_CERT`: CA bundle path inside the setup image.
    pub git_ca_cert: Option<&'a str>,
    pub files: &'a [StagedFile],
}

impl SetupScript<'_> {
    /// The setup-workspace program, which the setup container runs with `sh` from the job Secret
    /// (working directory `/job`).
    ///
    /// The job token comes from the `TOKEN` environment variable and is never part of the text, so
    /// the pod spec can be read without revealing it.
    pub fn render(&self) -> String {
        self.render_in(JOB_DIR, SECRETS_DIR, TERMINATION_LOG)
    }

    fn render_in(&self, job_dir: &str, secrets_dir: &str, termination_log: &str) -> String {
        let mut lines: Vec<String> = vec![
            "set -e".into(),
            // A clone must never wait for a password prompt; LFS objects are not served by the
            // executor git endpoint.
            "export GIT_TERMINAL_PROMPT=0 GIT_LFS_SKIP_SMUDGE=1".into(),
            format!("termination_log={}", shell_quote(termination_log)),
        ];
        if !self.repository_name.is_empty() {
            self.push_clone(&mut lines, job_dir);
        }
        lines.push(REFUSE_LINKS_FUNCTION.into());
        let next_index_path = format!("{job_dir}/{NEXT_INDEX_NAME}");
        let scripts_dir = format!("{job_dir}/{SCRIPTS_DIR}");
        lines.push(refuse_links_line(job_dir, NEXT_INDEX_NAME));
        lines.push(refuse_links_line(job_dir, SCRIPTS_DIR));
        let next_index = shell_quote(&next_index_path);
        lines.push(format!("mkdir -p {}", shell_quote(&scripts_dir)));
        // A quoted here-document keeps the helper readable in the pod spec and unexpanded.
        lines.push(format!(
            "cat > {next_index} <<'{NEXT_INDEX_DELIMITER}'\n{NEXT_INDEX_SCRIPT}{NEXT_INDEX_DELIMITER}"
        ));
        lines.push(format!("chmod +x {next_index}"));
        for file in self.files {
            let destination = under(job_dir, &file.path);
            let parent = destination.rsplit_once('/').map_or(job_dir, |(parent, _)| parent);
            let quoted = shell_quote(&destination);
            lines.push(refuse_links_line(job_dir, &file.path));
            lines.push(format!("mkdir -p {}", shell_quote(parent)));
            lines.push(format!(
                "cp {} {quoted}",
                shell_quote(&format!("{secrets_dir}/{}", file.secret_key))
            ));
            lines.push(format!("chmod +x {quoted}"));
            if let Some(modified_at) = file.modified_at {
                // `touch -t` is POSIX (GNU and busybox); the payload's time is UTC.
                lines.push(format!(
                    "TZ=UTC0 touch -m -t {} {quoted}",
                    modified_at.strftime("%Y%m%d%H%M.%S")
                ));
            }
        }
        lines.push(measure_ulimits());
        let mut program = lines.join("\n");
        program.push('\n');
        program
    }

    fn push_clone(&self, lines: &mut Vec<String>, job_dir: &str) {
        let repo = shell_quote(&under(job_dir, self.repository_dir));
        let git = format!("git -C {repo}");
        let clone_url = format!(
            "{}/.executors/git/{}",
            self.frontend_url.trim_end_matches('/'),
            self.repository_name.trim_start_matches('/')
        );
        let commit = shell_quote(self.commit);
        // The token stays in the environment: `$TOKEN` is expanded by the shell at run time.
        let auth = format!(
            "-c http.extraHeader=\"Authorization:Bearer $TOKEN\" \
             -c http.extraHeader=X-Sourcegraph-Actor-UID:internal \
             -c http.extraHeader=X-Sourcegraph-Job-ID:{} \
             -c {} \
             -c protocol.version=2",
            self.job_id,
            shell_quote(&format!(
                "http.extraHeader=X-Sourcegraph-Executor-Name:{}",
                self.executor_name
            )),
        );
        lines.push(format!("mkdir -p {repo}"));
        lines.push(format!("{git} init -q"));
        if let Some(ca_cert) = self.git_ca_cert {
            lines.push(format!(
                "{git} config --local http.sslCAInfo {}",
                shell_quote(ca_cert)
            ));
        }
        lines.push(format!("{git} remote add origin {}", shell_quote(&clone_url)));
        lines.push(format!("{git} config --local gc.auto 0"));
        let mut fetch_flags = vec![if self.fetch_tags { "--tags" } else { "--no-tags" }];
        if self.shallow_clone {
            fetch_flags.push("--depth=1");
        }
        let sparse = !self.sparse_checkout.is_empty();
        if sparse {
            fetch_flags.push("--filter=blob:none");
        }
        // The trailing `--` makes the commit a revision, never a path. No `--end-of-options`
        // here: not every git a step image may carry reads it after `checkout` as the end of
        // options. The commit is a validated hex object id, so it cannot look like one anyway.
        let checkout = format!("-c advice.detachedHead=false checkout --no-progress --force {commit} --");
        // No progress meter: its `\r` lines would fill the setup log entry. `--end-of-options`
        // (git 2.24+) keeps a payload value from ever being read as an option.
        lines.push(format!(
            "{git} {auth} fetch --no-progress --no-recurse-submodules {} --end-of-options origin {commit}",
            fetch_flags.join(" ")
        ));
        if sparse {
            let patterns: Vec<String> = self.sparse_checkout.iter().map(|p| shell_quote(p)).collect();
            lines.push(format!("{git} config --local core.sparseCheckout 1"));
            lines.push(format!(
                "{git} sparse-checkout set --no-cone -- {}",
                patterns.join(" ")
            ));
            // The checkout fetches the blobs the patterns select, so it needs the credentials too.
            lines.push(format!("{git} {auth} {checkout}"));
        } else {
            lines.push(format!("{git} {checkout}"));
        }
        // As the docker and firecracker runtimes do: indexers read the repository name from the
        // origin URL, and the frontend's URL need not stay in the workspace.
        lines.push(format!(
            "{git} remote set-url --end-of-options origin {}",
            shell_quote(self.repository_name)
        ));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        path::{Path, PathBuf},
        process::{Command, Output},
    };

    use super::*;

    /// A temporary directory removed on drop, even when the test panics.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(label: &str) -> Self {
            let path = std::env::temp_dir().join(format!("kube-executor-{label}-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&path).expect("temp dir is creatable");
            Self(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }

        fn str(&self) -> &str {
            self.0.to_str().expect("temp dir path is UTF-8")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn sh(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Output {
        let mut command = Command::new("/bin/sh");
        command.args(args).current_dir(dir);
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().expect("/bin/sh runs")
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn a_container_program_ends_its_one_stream_with_the_end_line_and_keeps_its_status() {
        let dir = TempDir::new("container-program");
        let program = container_program("echo out; echo err >&2; (exit 3)");
        let out = sh(&["-c", &program], dir.path(), &[]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "the program's status is the container's"
        );
        assert_eq!(text(&out.stdout), format!("out\nerr\n{END_OF_OUTPUT_LINE}\n"));
        assert!(out.stderr.is_empty(), "stderr went into stdout");
    }

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    }

    fn setup<'a>(files: &'a [StagedFile], sparse: &'a [String]) -> SetupScript<'a> {
        SetupScript {
            job_id: 42,
            repository_name: "github.com/sourcegraph/sample",
            repository_dir: "repository",
            commit: "0123456789abcdef0123456789abcdef01234567",
            fetch_tags: false,
            shallow_clone: true,
            sparse_checkout: sparse,
            executor_name: "exec-host-1",
            frontend_url: "https://sourcegraph.example.com/",
            git_ca_cert: None,
            files,
        }
    }

    /// The setup program's termination log holds exactly one measurement line with both limits
    /// read (this machine's `sh` is dash or bash: one lacks `ulimit -u`, the other has it), and
    /// its output does not mention the measurement.
    fn assert_ulimits_reported(termination_log: &Path, out: &Output) {
        let message = std::fs::read_to_string(termination_log).expect("termination log written");
        let line = message.trim_end();
        assert_eq!(message.lines().count(), 1, "{message:?}");
        let measured = crate::nfr::parse_ulimits(line).expect("a measurement line");
        assert!(measured.nofile.is_some() && measured.nproc.is_some(), "{line}");
        let output = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!output.contains(ULIMITS_MARK), "{output}");
    }

    #[test]
    fn the_process_limit_is_read_without_ulimit_u() {
        // dash has no `ulimit -u`; bash has, and must agree with /proc/self/limits.
        let temp = TempDir::new("ulimits");
        let termination_log = temp.path().join("termination-log");
        let program = format!(
            "termination_log={}\n{}",
            shell_quote(termination_log.to_str().expect("UTF-8")),
            measure_ulimits()
        );
        for shell in ["/bin/sh", "/bin/bash", "/bin/dash"] {
            if !Path::new(shell).exists() {
                continue;
            }
            let out = Command::new(shell)
                .args(["-c", &program])
                .output()
                .expect("shell runs");
            assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
            let line = std::fs::read_to_string(&termination_log).expect("termination log");
            let measured = crate::nfr::parse_ulimits(&line).expect("a measurement line");
            assert!(measured.nofile.is_some(), "{shell}: {line}");
            assert!(measured.nproc.is_some(), "{shell}: {line}");
        }
    }

    #[test]
    fn shell_quote_escapes_single_quotes() {
        assert_eq!(shell_quote("it's"), r#"'it'"'"'s'"#);
        let out = sh(
            &["-c", &format!("printf %s {}", shell_quote("a 'b' $c \"d\""))],
            Path::new("/"),
            &[],
        );
        assert_eq!(text(&out.stdout), "a 'b' $c \"d\"");
    }

    #[test]
    fn workspace_paths_are_normalised_or_rejected() {
        assert_eq!(normalize_workspace_path("a/./b//c").as_deref(), Some("a/b/c"));
        assert_eq!(normalize_workspace_path(".").as_deref(), Some(""));
        assert_eq!(normalize_workspace_path("").as_deref(), Some(""));
        assert_eq!(normalize_workspace_path("/etc/passwd"), None);
        assert_eq!(normalize_workspace_path("../x"), None);
        assert_eq!(normalize_workspace_path("a/../../x"), None);
        assert_eq!(normalize_workspace_path("a/.."), None);
    }

    #[test]
    fn default_fetch_matches_upstream_shallow_no_tags() {
        let script = setup(&[], &[]).render();
        assert!(script.starts_with("set -e\n"), "{script}");
        assert!(
            script.contains(
                "fetch --no-progress --no-recurse-submodules --no-tags --depth=1 --end-of-options origin '0123"
            ),
            "{script}"
        );
        assert!(script.contains("git -C '/job/repository' init"), "{script}");
        assert!(
            script.contains(
                "remote add origin 'https://sourcegraph.example.com/.executors/git/github.com/sourcegraph/sample'"
            ),
            "{script}"
        );
        assert!(
            script.contains(r#"-c http.extraHeader="Authorization:Bearer $TOKEN""#),
            "{script}"
        );
        assert!(
            script.contains("-c http.extraHeader=X-Sourcegraph-Job-ID:42 "),
            "{script}"
        );
        assert!(
            script.contains("-c 'http.extraHeader=X-Sourcegraph-Executor-Name:exec-host-1'"),
            "{script}"
        );
        assert!(script.contains("config --local gc.auto 0"), "{script}");
        assert!(!script.contains("sparse"), "{script}");
        assert!(!script.contains("sslCAInfo"), "{script}");
    }

    #[test]
    fn fetch_honours_tags_depth_and_sparse_checkout() {
        let sparse = vec!["src/*".to_string(), "it's/".to_string()];
        let mut spec = setup(&[], &sparse);
        spec.fetch_tags = true;
        spec.shallow_clone = false;
        spec.git_ca_cert = Some("/etc/ssl/ca.pem");
        let script = spec.render();
        assert!(
            script.contains(
                "fetch --no-progress --no-recurse-submodules --tags --filter=blob:none --end-of-options origin"
            ),
            "{script}"
        );
        assert!(!script.contains("--depth"), "{script}");
        assert!(!script.contains("--no-tags"), "{script}");
        assert!(
            script.contains(r#"sparse-checkout set --no-cone -- 'src/*' 'it'"'"'s/'"#),
            "{script}"
        );
        assert!(
            script.contains("config --local http.sslCAInfo '/etc/ssl/ca.pem'"),
            "{script}"
        );
        let sparse_at = script.find("sparse-checkout set").expect("sparse set present");
        let checkout_at = script.find("checkout --no-progress").expect("checkout present");
        assert!(
            sparse_at < checkout_at,
            "sparse patterns are set before the checkout"
        );
    }

    #[test]
    fn setup_script_passes_sh_syntax_check() {
        let files = [StagedFile {
            secret_key: "file.0".into(),
            path: "dir with space/it's.json".into(),
            modified_at: Some("2024-05-01T10:00:00Z".parse().expect("valid time")),
        }];
        let sparse = vec!["a/*".to_string()];
        for script in [setup(&files, &[]).render(), setup(&files, &sparse).render()] {
            let out = sh(&["-n", "-c", &script], Path::new("/"), &[]);
            assert!(out.status.success(), "sh -n: {}\n{script}", text(&out.stderr));
        }
    }

    #[test]
    fn setup_without_repository_only_writes_helper_and_files() {
        let temp = TempDir::new("setup-files");
        let job_dir = temp.path().join("job");
        let secrets_dir = temp.path().join("secrets");
        std::fs::create_dir_all(&job_dir).expect("job dir");
        std::fs::create_dir_all(&secrets_dir).expect("secrets dir");
        std::fs::write(secrets_dir.join("file.0"), b"{\"a\": 'quoted'}\n").expect("write");
        std::fs::write(secrets_dir.join("file.1"), b"echo hi").expect("write");
        let modified: Timestamp = "2024-05-01T10:00:07Z".parse().expect("valid time");
        let files = [
            StagedFile {
                secret_key: "file.0".into(),
                path: "nested/dir/in put.json".into(),
                modified_at: Some(modified),
            },
            StagedFile {
                secret_key: "file.1".into(),
                path: ".sourcegraph-executor/1.0_r@c.sh".into(),
                modified_at: None,
            },
        ];
        let mut spec = setup(&files, &[]);
        spec.repository_name = "";
        let termination_log = temp.path().join("termination-log");
        let script = spec.render_in(
            job_dir.to_str().expect("UTF-8"),
            secrets_dir.to_str().expect("UTF-8"),
            termination_log.to_str().expect("UTF-8"),
        );
        assert!(!script.contains("git "), "no repository, no git: {script}");
        let out = sh(&["-c", &script], &job_dir, &[]);
        assert!(
            out.status.success(),
            "setup failed: {}\n{script}",
            text(&out.stderr)
        );
        assert_ulimits_reported(&termination_log, &out);

        let copied = job_dir.join("nested/dir/in put.json");
        assert_eq!(
            std::fs::read(&copied).expect("copied file"),
            b"{\"a\": 'quoted'}\n"
        );
        let mtime = std::fs::metadata(&copied)
            .and_then(|m| m.modified())
            .expect("mtime");
        let mtime_secs = mtime
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after epoch")
            .as_secs();
        assert_eq!(mtime_secs as i64, modified.as_second());
        assert_eq!(
            std::fs::read(job_dir.join(".sourcegraph-executor/1.0_r@c.sh")).expect("script copied"),
            b"echo hi"
        );
        assert_eq!(
            std::fs::read_to_string(job_dir.join("nextIndex.sh")).expect("helper written"),
            NEXT_INDEX_SCRIPT
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(job_dir.join("nextIndex.sh"))
            .expect("helper")
            .permissions()
            .mode();
        assert!(mode & 0o100 != 0, "helper is executable: {mode:o}");
    }

    #[test]
    fn workspace_files_are_never_written_through_a_link_from_the_repository() {
        let temp = TempDir::new("setup-links");
        let job_dir = temp.path().join("job");
        let secrets_dir = temp.path().join("secrets");
        let outside = temp.path().join("outside");
        for dir in [&job_dir.join("repository"), &secrets_dir, &outside] {
            std::fs::create_dir_all(dir).expect("dir");
        }
        std::fs::write(secrets_dir.join("file.0"), b"replaced binary").expect("write");
        std::os::unix::fs::symlink(&outside, job_dir.join("repository/link")).expect("link");
        std::os::unix::fs::symlink(outside.join("target"), job_dir.join("repository/file-link"))
            .expect("link");
        for (path, link) in [
            ("repository/link/chmod", "repository/link"),
            ("repository/file-link", "repository/file-link"),
        ] {
            let files = [StagedFile {
                secret_key: "file.0".into(),
                path: path.into(),
                modified_at: None,
            }];
            let mut spec = setup(&files, &[]);
            spec.repository_name = "";
            let termination_log = temp.path().join("termination-log");
            let script = spec.render_in(
                job_dir.to_str().expect("UTF-8"),
                secrets_dir.to_str().expect("UTF-8"),
                termination_log.to_str().expect("UTF-8"),
            );
            let out = sh(&["-c", &script], &job_dir, &[]);
            assert_eq!(out.status.code(), Some(1), "{path}: {}", text(&out.stderr));
            let expected = format!(
                "the repository has a symbolic link at {}: workspace files are never written through links",
                job_dir.join(link).display()
            );
            assert_eq!(text(&out.stdout).trim(), expected, "{path}");
            // The failure judge quotes the termination message: only the reason, no measurement.
            assert_eq!(
                std::fs::read_to_string(&termination_log).expect("termination log"),
                format!("{expected}\n"),
                "{path}"
            );
            let written: Vec<_> = std::fs::read_dir(&outside).expect("outside").collect();
            assert!(
                written.is_empty(),
                "{path}: wrote outside the workspace: {written:?}"
            );
        }
    }

    #[test]
    fn next_index_helper_skips_until_the_named_step() {
        let temp = TempDir::new("next-index");
        let helper = temp.path().join("nextIndex.sh");
        std::fs::write(&helper, NEXT_INDEX_SCRIPT).expect("write helper");
        let skip = temp.path().join("skip.json");
        let run = |key: &str| {
            let out = sh(
                &[
                    helper.to_str().expect("UTF-8"),
                    skip.to_str().expect("UTF-8"),
                    key,
                ],
                temp.path(),
                &[],
            );
            assert!(out.status.success(), "{}", text(&out.stderr));
            text(&out.stdout).trim().to_string()
        };
        assert_eq!(
            run("step.kubernetes.step.0.pre"),
            "",
            "no skip file: run everything"
        );

        std::fs::write(&skip, r#"{"nextStep": "step.2.pre"}"#).expect("write skip");
        assert_eq!(run("step.kubernetes.step.0.pre"), "skip");
        assert_eq!(run("step.kubernetes.step.1.post"), "skip");
        assert_eq!(run("step.kubernetes.step.2.pre"), "");

        std::fs::write(&skip, "{\"nextStep\":\"step.3.pre\",\"other\":1}\n").expect("write skip");
        assert_eq!(run("step.kubernetes.step.2.pre"), "skip");
        assert_eq!(run("step.kubernetes.step.3.pre"), "");

        // Upstream's quirk, kept: a skip file without nextStep skips every step.
        std::fs::write(&skip, "{}").expect("write skip");
        assert_eq!(run("step.kubernetes.step.3.pre"), "skip");
    }

    #[test]
    fn step_container_runs_the_script_with_its_exit_status_unless_skipped() {
        let temp = TempDir::new("step-run");
        let job_dir = temp.path();
        std::fs::create_dir_all(job_dir.join(SCRIPTS_DIR)).expect("scripts dir");
        std::fs::write(job_dir.join(NEXT_INDEX_NAME), NEXT_INDEX_SCRIPT).expect("helper");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            job_dir.join(NEXT_INDEX_NAME),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod helper");
        let commands = vec![
            "echo \"bash=${BASH_VERSION:+yes}\" > ran.txt".to_string(),
            "false".to_string(),
            "echo after-failure >> ran.txt".to_string(),
            "exit 7".to_string(),
        ];
        std::fs::write(job_dir.join(SCRIPTS_DIR).join("s.sh"), step_script(&commands)).expect("script");
        let args = step_container_args_in(temp.str(), "step.kubernetes.step.1.run", "s.sh");

        let out = sh(&["-c", &args], job_dir, &[]);
        assert_eq!(
            out.status.code(),
            Some(7),
            "exit status is the script's: {}",
            text(&out.stderr)
        );
        let ran = std::fs::read_to_string(job_dir.join("ran.txt")).expect("step ran");
        assert!(
            ran.contains("after-failure"),
            "a failing command does not stop the step: {ran}"
        );
        assert!(
            text(&out.stderr).contains("+ false"),
            "commands are traced: {}",
            text(&out.stderr)
        );
        let bash_available = Command::new("sh")
            .args(["-c", "command -p -v bash || test -x /bin/bash"])
            .status()
            .is_ok_and(|s| s.success());
        assert_eq!(
            ran.contains("bash=yes"),
            bash_available,
            "bash is used when present: {ran}"
        );

        std::fs::remove_file(job_dir.join("ran.txt")).expect("reset");
        std::fs::write(job_dir.join(SKIP_FILE_NAME), r#"{"nextStep": "step.2.run"}"#).expect("skip");
        let out = sh(&["-c", &args], job_dir, &[]);
        assert_eq!(out.status.code(), Some(0), "a skipped step succeeds");
        assert!(!job_dir.join("ran.txt").exists(), "a skipped step does not run");

        let args = step_container_args_in(temp.str(), "step.kubernetes.step.2.run", "s.sh");
        let out = sh(&["-c", &args], job_dir, &[]);
        assert_eq!(out.status.code(), Some(7), "the named step runs again");
    }

    #[test]
    fn step_script_names_follow_sourcegraph() {
        assert_eq!(
            step_script_name(12, 3, "github.com/o/r", "abc"),
            "12.3_github.com_o_r@abc.sh"
        );
        assert_eq!(step_script_path("x.sh"), "/job/.sourcegraph-executor/x.sh");
        assert_eq!(
            step_container_args("step.kubernetes.step.0.pre", "x.sh"),
            "if [ \"$('/job/nextIndex.sh' '/job/skip.json' 'step.kubernetes.step.0.pre')\" != \"skip\" ]; \
             then /bin/sh '/job/.sourcegraph-executor/x.sh'; fi"
        );
    }

    #[test]
    fn step_script_names_are_one_plain_path_component() {
        assert_eq!(
            step_script_name(1, 0, "github.com/o/r ../$(x)", "c0ffee"),
            "1.0_github.com_o_r_..___x_@c0ffee.sh"
        );
        assert_eq!(step_script_name(1, 0, "r", "a;b`c"), "1.0_r@a_b_c.sh");
    }

    #[test]
    fn long_repository_names_are_cut_with_a_hash_to_stay_unique() {
        let commit = "f".repeat(64);
        let long_a = format!("github.com/o/{}a", "x".repeat(400));
        let long_b = format!("github.com/o/{}b", "x".repeat(400));
        let a = step_script_name(i64::MAX, 999, &long_a, &commit);
        let b = step_script_name(i64::MAX, 999, &long_b, &commit);
        assert_eq!(a.len(), MAX_FILE_NAME_BYTES, "{a}");
        assert!(b.len() <= MAX_FILE_NAME_BYTES, "{b}");
        assert_ne!(a, b, "same prefix, different repositories");
        assert!(a.ends_with(&format!("@{commit}.sh")), "{a}");
        assert_eq!(
            a,
            step_script_name(i64::MAX, 999, &long_a, &commit),
            "deterministic"
        );
        let exact = "r".repeat(MAX_FILE_NAME_BYTES - "1.0_@c.sh".len());
        assert_eq!(
            step_script_name(1, 0, &exact, "c"),
            format!("1.0_{exact}@c.sh"),
            "a name that fits is kept whole"
        );
        // The name really is usable as a file name.
        let temp = TempDir::new("long-name");
        std::fs::write(temp.path().join(&a), "x").expect("a 255-byte name is a valid file name");
    }

    #[test]
    fn setup_git_prints_no_progress_and_ends_options_before_payload_values() {
        let script = setup(&[], &["a/*".to_string()]).render();
        assert!(!script.contains("--progress"), "{script}");
        assert!(
            script.contains("checkout --no-progress --force '0123456789abcdef0123456789abcdef01234567' --\n"),
            "{script}"
        );
        assert!(
            script.contains("remote set-url --end-of-options origin 'github.com/sourcegraph/sample'"),
            "{script}"
        );
    }

    /// A repository served over `file://` at the path the clone URL names, with two directories,
    /// two commits and a tag, so the real setup program can be run against it.
    struct Origin {
        temp: TempDir,
        head: String,
    }

    fn origin() -> Origin {
        let temp = TempDir::new("setup-git");
        let repo = temp.path().join("frontend/.executors/git/github.com/o/r");
        std::fs::create_dir_all(repo.join("a")).expect("repo dir");
        std::fs::create_dir_all(repo.join("b")).expect("repo dir");
        git(&repo, &["init", "-q", "-b", "main"]);
        for (key, value) in [
            ("user.name", "t"),
            ("user.email", "t@example.com"),
            ("uploadpack.allowFilter", "true"),
            ("uploadpack.allowAnySHA1InWant", "true"),
        ] {
            git(&repo, &["config", key, value]);
        }
        std::fs::write(repo.join("a/one.txt"), "one\n").expect("write");
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-q", "-m", "first"]);
        git(&repo, &["tag", "v1"]);
        std::fs::write(repo.join("b/two.txt"), "two\n").expect("write");
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-q", "-m", "second"]);
        let head = git(&repo, &["rev-parse", "HEAD"]);
        Origin { temp, head }
    }

    fn run_setup(origin: &Origin, fetch_tags: bool, shallow: bool, sparse: &[String]) -> PathBuf {
        let job_dir = origin.temp.path().join(format!("job-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&job_dir).expect("job dir");
        let frontend = format!("file://{}/frontend", origin.temp.str());
        let spec = SetupScript {
            commit: &origin.head,
            fetch_tags,
            shallow_clone: shallow,
            repository_name: "github.com/o/r",
            frontend_url: &frontend,
            ..setup(&[], sparse)
        };
        let termination_log = job_dir.with_extension("termination-log");
        let script = spec.render_in(
            job_dir.to_str().expect("UTF-8"),
            "/nonexistent",
            termination_log.to_str().expect("UTF-8"),
        );
        let out = sh(
            &["-c", &script],
            &job_dir,
            &[
                ("TOKEN", "job-token"),
                ("GIT_CONFIG_GLOBAL", "/dev/null"),
                ("GIT_CONFIG_NOSYSTEM", "1"),
            ],
        );
        assert!(
            out.status.success(),
            "setup failed: {}\n{script}",
            text(&out.stderr)
        );
        let output = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!output.contains('\r'), "git printed progress lines: {output:?}");
        assert_ulimits_reported(&termination_log, &out);
        job_dir.join("repository")
    }

    #[test]
    fn setup_clones_shallow_without_tags_by_default() {
        let origin = origin();
        let repo = run_setup(&origin, false, true, &[]);
        assert_eq!(git(&repo, &["rev-parse", "HEAD"]), origin.head);
        assert_eq!(git(&repo, &["rev-parse", "--is-shallow-repository"]), "true");
        assert_eq!(git(&repo, &["tag"]), "");
        assert!(repo.join("a/one.txt").exists() && repo.join("b/two.txt").exists());
        assert_eq!(git(&repo, &["remote", "get-url", "origin"]), "github.com/o/r");
    }

    #[test]
    fn setup_fetches_full_history_and_tags_when_asked() {
        let origin = origin();
        let repo = run_setup(&origin, true, false, &[]);
        assert_eq!(git(&repo, &["rev-parse", "--is-shallow-repository"]), "false");
        assert_eq!(git(&repo, &["tag"]), "v1");
        assert_eq!(git(&repo, &["rev-list", "--count", "HEAD"]), "2");
    }

    #[test]
    fn setup_checks_out_only_the_sparse_patterns() {
        let origin = origin();
        let repo = run_setup(&origin, false, true, &["a/*".to_string()]);
        assert_eq!(git(&repo, &["rev-parse", "HEAD"]), origin.head);
        assert!(repo.join("a/one.txt").exists(), "pattern matched");
        assert!(!repo.join("b/two.txt").exists(), "outside the patterns");
    }
}
