//! Keeps the README's variable table and `config/executor.env` in line with what the executor reads.
//!
//! `UPDATE_README=1 cargo test --test config_reference` rewrites the README table from the catalogue.

use std::collections::BTreeSet;

use kube_executor::config::VARIABLES;

/// Older names read only as fallbacks, HOSTNAME (set by the container runtime) and POD_NAME /
/// POD_NAMESPACE / POD_UID (set per pod through the Downward API): documented in the README but
/// deliberately not in the example env file or the rendered ConfigMaps.
const NOT_IN_ENV_FILE: [&str; 7] = [
    "EXECUTOR_FIRECRACKER_NUM_CPUS",
    "EXECUTOR_FIRECRACKER_MEMORY",
    "KUBERNETES_SINGLE_JOB_STEP_IMAGE",
    "HOSTNAME",
    "POD_NAME",
    "POD_NAMESPACE",
    "POD_UID",
];

const START: &str = "<!-- variables:start -->";
const END: &str = "<!-- variables:end -->";

fn repo_file(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {full}: {e}"))
}

fn render_table() -> String {
    let mut out = String::from("| Variable | Default | Meaning |\n|---|---|---|\n");
    for v in VARIABLES {
        let default = if v.default.is_empty() {
            "—".to_string()
        } else {
            format!("`{}`", v.default)
        };
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            v.name,
            default,
            v.description.replace('|', "\\|")
        ));
    }
    out
}

#[test]
fn readme_variable_table_matches_the_catalogue() {
    let readme = repo_file("README.md");
    let (before, rest) = readme
        .split_once(START)
        .expect("README has the variables start marker");
    let (current, after) = rest.split_once(END).expect("README has the variables end marker");
    let expected = format!("\n{}", render_table());
    if std::env::var_os("UPDATE_README").is_some() {
        let path = format!("{}/README.md", env!("CARGO_MANIFEST_DIR"));
        std::fs::write(path, format!("{before}{START}{expected}{END}{after}")).expect("write README");
        return;
    }
    assert_eq!(
        current, expected,
        "README variable table is out of date: run UPDATE_README=1 cargo test --test config_reference"
    );
}

#[test]
fn example_env_file_lists_every_variable_with_its_default() {
    let text = repo_file("config/executor.env");
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let assignment = line.strip_prefix("# ").unwrap_or(line);
        let Some((name, value)) = assignment.split_once('=') else {
            continue;
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        let var = VARIABLES
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("config/executor.env sets {name}, which the executor does not read"));
        if !line.starts_with('#') {
            assert_eq!(
                value, var.default,
                "config/executor.env: {name} differs from its default"
            );
        }
        assert!(
            names.insert(name.to_string()),
            "config/executor.env lists {name} twice"
        );
    }
    let expected: BTreeSet<String> = VARIABLES
        .iter()
        .map(|v| v.name.to_string())
        .filter(|n| !NOT_IN_ENV_FILE.contains(&n.as_str()))
        .collect();
    let missing: Vec<_> = expected.difference(&names).collect();
    assert!(missing.is_empty(), "config/executor.env is missing {missing:?}");
}
