//! One plan per docker step: log entry key, container name, working dir, script and env.

use std::collections::BTreeSet;

use super::{
    MAIN_CONTAINER, MAIN_ENTRY_KEY, MAX_ENV_ENTRY_BYTES, SETUP_CONTAINER, SETUP_ENTRY_KEY, SpecError,
    StepSpec, labels, normalize, script, step_entry_key,
};
use crate::queue::types::{DockerStep, Job};

/// An env entry of a step: the pod spec names it, the job Secret holds its value.
pub(super) struct StepEnv<'a> {
    pub name: &'a str,
    pub value: &'a str,
    /// Key of the value in the job Secret.
    pub secret_key: String,
}

/// Everything the job Secret, the pod and the log entries need of one docker step.
pub(super) struct StepPlan<'a> {
    pub entry_key: String,
    /// DNS label, unique in the pod.
    pub container_name: String,
    pub image: &'a str,
    /// Absolute path of the step's directory in the workspace.
    pub working_dir: String,
    /// File name of the step script under [`script::SCRIPTS_DIR`].
    pub script_name: String,
    /// Content of the step script.
    pub script: String,
    pub env: Vec<StepEnv<'a>>,
}

impl<'a> StepPlan<'a> {
    /// Plans the docker steps of `job`, in order.
    pub(super) fn plan_all(job: &'a Job) -> Result<Vec<Self>, SpecError> {
        // The setup and main containers keep their names whatever the step keys are.
        let mut used_names = BTreeSet::from([SETUP_CONTAINER.to_string(), MAIN_CONTAINER.to_string()]);
        job.docker_steps
            .iter()
            .enumerate()
            .map(|(index, step)| Self::plan(job, index, step, &mut used_names))
            .collect()
    }

    fn plan(
        job: &'a Job,
        index: usize,
        step: &'a DockerStep,
        used_names: &mut BTreeSet<String>,
    ) -> Result<Self, SpecError> {
        let entry_key = if step.key.is_empty() {
            step_entry_key(&index.to_string())
        } else {
            step_entry_key(&step.key)
        };
        if step.image.is_empty() {
            return Err(SpecError::StepWithoutImage {
                index,
                key: step.key.clone(),
            });
        }
        let dir = normalize(&step.dir, &format!("docker step {index} dir"))?;
        let env = step_env(index, step)?;
        Ok(Self {
            container_name: unique_container_name(&entry_key, used_names),
            entry_key,
            image: &step.image,
            working_dir: workspace_dir(&dir),
            script_name: script::step_script_name(job.id, index, &job.repository_name, &job.commit),
            script: script::step_script(&step.commands),
            env,
        })
    }

    /// The container's program: run the step script unless batcheshelper's skip file says not to.
    pub(super) fn container_args(&self) -> String {
        script::step_container_args(&self.entry_key, &self.script_name)
    }

    fn spec(&self) -> StepSpec {
        StepSpec {
            key: self.entry_key.clone(),
            container_name: self.container_name.clone(),
            command: vec!["/bin/sh".into(), script::step_script_path(&self.script_name)],
        }
    }
}

/// The log entries of the pod in container order: setup, one per step, main.
pub(super) fn step_specs(steps: &[StepPlan<'_>]) -> Vec<StepSpec> {
    let setup = StepSpec {
        key: SETUP_ENTRY_KEY.into(),
        container_name: SETUP_CONTAINER.into(),
        command: Vec::new(),
    };
    let main = StepSpec {
        key: MAIN_ENTRY_KEY.into(),
        container_name: MAIN_CONTAINER.into(),
        command: Vec::new(),
    };
    std::iter::once(setup)
        .chain(steps.iter().map(StepPlan::spec))
        .chain(std::iter::once(main))
        .collect()
}

/// The `NAME=value` entries of docker step `index`, split on the first `=`; errors never echo
/// an entry, which may be a secret.
fn step_env(index: usize, step: &DockerStep) -> Result<Vec<StepEnv<'_>>, SpecError> {
    step.env
        .iter()
        .enumerate()
        .map(|(entry, pair)| {
            let invalid = |problem| SpecError::InvalidStepEnv {
                step: index,
                entry,
                problem,
            };
            let (name, value) = pair.split_once('=').ok_or_else(|| invalid("no '='"))?;
            if name.is_empty() {
                return Err(invalid("empty name"));
            }
            if pair.len() > MAX_ENV_ENTRY_BYTES {
                return Err(SpecError::StepEnvTooLong {
                    step: index,
                    entry,
                    bytes: pair.len(),
                    limit: MAX_ENV_ENTRY_BYTES,
                });
            }
            Ok(StepEnv {
                name,
                value,
                secret_key: format!("env.{index}.{entry}"),
            })
        })
        .collect()
}

fn workspace_dir(relative: &str) -> String {
    if relative.is_empty() {
        script::JOB_DIR.to_string()
    } else {
        format!("{}/{relative}", script::JOB_DIR)
    }
}

/// A DNS-label container name derived from a step's log key; deterministic, unique within `used`.
fn unique_container_name(key: &str, used: &mut BTreeSet<String>) -> String {
    let sanitized: String = key
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    let fit = |max: usize| -> String {
        let cut: String = sanitized.chars().take(max).collect();
        cut.trim_end_matches('-').to_string()
    };
    let mut name = fit(labels::MAX_LABEL_VALUE_LEN);
    let mut counter = 2;
    while used.contains(&name) {
        let suffix = format!("-{counter}");
        name = format!("{}{suffix}", fit(labels::MAX_LABEL_VALUE_LEN - suffix.len()));
        counter += 1;
    }
    used.insert(name.clone());
    name
}
