//! Checks of payload values that reach a shell, git, a label or a file name: job ID, commit and workspace file paths.

use std::collections::BTreeMap;

use super::{SpecError, WorkspaceFile, normalize, script};

/// Hex digits of a SHA-1 object id.
const SHA1_HEX_LEN: usize = 40;
/// Hex digits of a SHA-256 object id.
const SHA256_HEX_LEN: usize = 64;

/// Rejects a negative job ID: it would make an invalid `job-id` label value (`-5`), which only the
/// API server would notice, after the Secret was created.
pub(super) fn check_job_id(id: i64) -> Result<(), SpecError> {
    if id < 0 {
        return Err(SpecError::NegativeJobId { id });
    }
    Ok(())
}

/// The commit must be a full hex object id: it becomes a git argument and part of the step
/// script names. Only a job without a repository may leave it empty.
pub(super) fn check_commit(commit: &str, repository_name: &str) -> Result<(), SpecError> {
    if commit.is_empty() && repository_name.is_empty() {
        return Ok(());
    }
    let full_length = matches!(commit.len(), SHA1_HEX_LEN | SHA256_HEX_LEN);
    if !full_length || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SpecError::InvalidCommit {
            commit: commit.to_string(),
        });
    }
    Ok(())
}

/// Workspace-relative paths the executor writes itself; a workspace file there would replace
/// (or be replaced by) the executor's own file.
fn reserved_by(path: &str) -> Option<&'static str> {
    if path == script::NEXT_INDEX_NAME {
        return Some("step skip helper");
    }
    if path == script::SKIP_FILE_NAME {
        return Some("step skip file");
    }
    let in_scripts_dir = path
        .strip_prefix(script::SCRIPTS_DIR)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    in_scripts_dir.then_some("step scripts directory")
}

/// The normalised paths of the workspace files, after refusing every path the setup program
/// could only write by mangling it: one naming a directory, one the executor writes itself,
/// two naming the same file, or one that is also the directory of another.
pub(super) fn workspace_file_paths(files: &[WorkspaceFile]) -> Result<Vec<String>, SpecError> {
    let mut by_path: BTreeMap<String, &str> = BTreeMap::new();
    let mut paths = Vec::with_capacity(files.len());
    for file in files {
        let raw = file.path.as_str();
        let path = normalize(raw, "workspace file")?;
        let problem = |problem: String| SpecError::InvalidWorkspaceFile {
            path: raw.to_string(),
            problem,
        };
        if path.is_empty() {
            return Err(SpecError::FilePathEmpty {
                what: "workspace file".into(),
                path: raw.to_string(),
            });
        }
        if raw.ends_with('/') {
            return Err(problem(
                "ends in \"/\", so it names a directory, not a file".into(),
            ));
        }
        if let Some(what) = reserved_by(&path) {
            return Err(problem(format!("is where the executor writes its {what}")));
        }
        if let Some(other) = by_path.insert(path.clone(), raw) {
            return Err(problem(format!(
                "names the same file as workspace file {other:?}"
            )));
        }
        paths.push(path);
    }
    // In sorted order a directory's files follow it, though not always right after it (`a`,
    // `a.txt`, `a/b`): look for the first path under each one.
    for (path, raw) in &by_path {
        let dir = format!("{path}/");
        if let Some((_, inner)) = by_path
            .range(dir.clone()..)
            .next()
            .filter(|(p, _)| p.starts_with(&dir))
        {
            return Err(SpecError::InvalidWorkspaceFile {
                path: (*raw).to_string(),
                problem: format!("is also the directory of workspace file {inner:?}"),
            });
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> WorkspaceFile {
        WorkspaceFile {
            path: path.into(),
            content: b"x".to_vec(),
            modified_at: None,
        }
    }

    fn refused(paths: &[&str]) -> String {
        let files: Vec<WorkspaceFile> = paths.iter().map(|p| file(p)).collect();
        workspace_file_paths(&files)
            .err()
            .unwrap_or_else(|| panic!("{paths:?} accepted"))
            .to_string()
    }

    #[test]
    fn only_full_hex_object_ids_are_commits() {
        let sha1 = "0123456789abcdef0123456789ABCDEF01234567";
        let sha256 = "f".repeat(64);
        assert!(check_commit(sha1, "github.com/o/r").is_ok());
        assert!(check_commit(&sha256, "github.com/o/r").is_ok());
        assert!(check_commit("", "").is_ok(), "no repository, no commit");
        assert!(check_commit(sha1, "").is_ok());
        for bad in [
            "",
            "HEAD",
            "main",
            "0123456",
            "$(touch /tmp/x)",
            "--upload-pack=touch /tmp/x",
            &format!("{}g", &sha1[..39]),
            &format!("{sha1}0"),
            &format!("{sha1}\n"),
        ] {
            let err = check_commit(bad, "github.com/o/r")
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            let message = err.to_string();
            assert!(message.contains("commit"), "{message}");
            assert!(message.contains(&format!("{bad:?}")), "{message}");
        }
        assert!(
            check_commit("$(x)", "").is_err(),
            "checked without a repository too"
        );
    }

    #[test]
    fn negative_job_ids_are_refused() {
        assert!(check_job_id(0).is_ok() && check_job_id(7).is_ok());
        let message = check_job_id(-5).expect_err("refused").to_string();
        assert!(message.contains("job ID -5"), "{message}");
    }

    #[test]
    fn workspace_files_normalise_to_distinct_plain_files() {
        let files = [file("./a.txt"), file("a/b.txt"), file("dir//c.json"), file("a.b")];
        let paths = workspace_file_paths(&files).expect("valid");
        assert_eq!(paths, ["a.txt", "a/b.txt", "dir/c.json", "a.b"]);
        assert!(workspace_file_paths(&[file("sub/nextIndex.sh"), file("x/skip.json")]).is_ok());
        assert!(workspace_file_paths(&[file(".sourcegraph-executor-notes")]).is_ok());
    }

    #[test]
    fn a_path_that_is_also_a_directory_is_refused_by_name() {
        let message = refused(&["a", "a.txt", "a/b"]);
        assert!(message.contains("workspace file \"a\""), "{message}");
        assert!(
            message.contains("directory of workspace file \"a/b\""),
            "{message}"
        );
        let message = refused(&["x/y/z", "x/y"]);
        assert!(message.contains("\"x/y\" is also the directory"), "{message}");
        let message = refused(&["dir/"]);
        assert!(message.contains("\"dir/\" ends in \"/\""), "{message}");
        let message = refused(&["a/b", "./a//b"]);
        assert!(
            message.contains("same file as workspace file \"a/b\""),
            "{message}"
        );
    }

    #[test]
    fn paths_the_executor_writes_are_refused_by_name() {
        for (path, what) in [
            ("nextIndex.sh", "skip helper"),
            ("./skip.json", "skip file"),
            (".sourcegraph-executor", "scripts directory"),
            (".sourcegraph-executor/1.0_r@c.sh", "scripts directory"),
        ] {
            let message = refused(&[path]);
            assert!(message.contains(&format!("{path:?}")), "{message}");
            assert!(message.contains(what), "{message}");
        }
    }
}
