//! Plan of the job Secret (token, workspace files, step scripts, step env values) and the pull Secret.

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Secret};

use super::{
    MAX_SECRET_BYTES, SETUP_PROGRAM_KEY, SpecError, TOKEN_KEY, WorkspaceFile, labels,
    meta::JobMeta,
    payload,
    script::{self, StagedFile},
    steps::StepPlan,
};
use crate::queue::types::Job;

/// What the job Secret holds, and which of its keys the setup container sees as files.
pub(super) struct SecretPlan {
    name: String,
    data: BTreeMap<String, ByteString>,
    staged: Vec<StagedFile>,
}

impl SecretPlan {
    /// A plan for the Secret `name` that holds only the job token so far.
    pub(super) fn new(name: String, token: &str) -> Self {
        Self {
            name,
            data: BTreeMap::from([(TOKEN_KEY.to_string(), ByteString(token.as_bytes().to_vec()))]),
            staged: Vec::new(),
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The files the setup program copies into the workspace, in staging order.
    pub(super) fn staged(&self) -> &[StagedFile] {
        &self.staged
    }

    /// Stages the job's workspace files.
    ///
    /// They travel in the Secret, not in the pod spec: anyone allowed to read pods could read
    /// them there, and large files would bloat (or break) the Job object.
    pub(super) fn stage_workspace_files(&mut self, files: &[WorkspaceFile]) -> Result<(), SpecError> {
        let paths = payload::workspace_file_paths(files)?;
        for (file, path) in files.iter().zip(paths) {
            self.stage(path, file.content.clone(), file.modified_at);
        }
        Ok(())
    }

    /// Stages every step's script and stores its env values.
    ///
    /// Step env values live in the Secret too (Sourcegraph puts them in the pod spec in plain
    /// text, e.g. batch change secrets and codeintel's SRC_HEADER_AUTHORIZATION): the pod spec only
    /// names the Secret keys.
    pub(super) fn add_steps(&mut self, steps: &[StepPlan<'_>]) {
        for step in steps {
            self.stage(
                format!("{}/{}", script::SCRIPTS_DIR, step.script_name),
                step.script.clone().into_bytes(),
                None,
            );
            for env in &step.env {
                self.data
                    .insert(env.secret_key.clone(), ByteString(env.value.as_bytes().to_vec()));
            }
        }
    }

    /// Stores the setup container's program, which runs from the Secret volume (see
    /// [`script::run_setup_program`]).
    pub(super) fn add_setup_program(&mut self, program: String) {
        self.data
            .insert(SETUP_PROGRAM_KEY.to_string(), ByteString(program.into_bytes()));
    }

    /// Rejects a Secret the API server would refuse, before any object of the job exists.
    pub(super) fn check_size(&self) -> Result<(), SpecError> {
        let bytes: usize = self.data.values().map(|value| value.0.len()).sum();
        if bytes > MAX_SECRET_BYTES {
            return Err(SpecError::SecretTooLarge {
                bytes,
                limit: MAX_SECRET_BYTES,
            });
        }
        Ok(())
    }

    pub(super) fn into_secret(self, meta: &JobMeta<'_>) -> Secret {
        Secret {
            metadata: meta.owned(self.name),
            type_: Some("Opaque".into()),
            // Written once per job; immutable Secrets are not watched by the kubelet.
            immutable: Some(true),
            data: Some(self.data),
            ..Default::default()
        }
    }

    fn stage(&mut self, path: String, content: Vec<u8>, modified_at: Option<jiff::Timestamp>) {
        let secret_key = format!("file.{}", self.staged.len());
        self.data.insert(secret_key.clone(), ByteString(content));
        self.staged.push(StagedFile {
            secret_key,
            path,
            modified_at,
        });
    }
}

/// The `kubernetes.io/dockerconfigjson` Secret from the payload's `dockerAuthConfig`; `None` when
/// the payload has no registry credentials (v2 payloads always carry the field, often empty).
pub(super) fn pull_secret(job: &Job, meta: &JobMeta<'_>) -> Result<Option<Secret>, SpecError> {
    let Some(config) = &job.docker_auth_config else {
        return Ok(None);
    };
    let invalid = |reason: &str| SpecError::InvalidDockerAuthConfig {
        reason: reason.to_string(),
    };
    let config = config.expose();
    let object = config.as_object().ok_or_else(|| invalid("not a JSON object"))?;
    match object.get("auths") {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::Object(auths)) if auths.is_empty() => return Ok(None),
        Some(serde_json::Value::Object(_)) => {}
        Some(_) => return Err(invalid("\"auths\" is not an object")),
    }
    let content = serde_json::to_vec(config).map_err(|_| invalid("cannot be serialized"))?;
    Ok(Some(Secret {
        metadata: meta.owned(labels::pull_secret_name(&meta.name)),
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            ".dockerconfigjson".to_string(),
            ByteString(content),
        )])),
        ..Default::default()
    }))
}
