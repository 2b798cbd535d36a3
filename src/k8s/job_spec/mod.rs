//! Pure builders of the Kubernetes objects of one queue job: Job, Secrets, PVC, and the log-entry map.

mod meta;
mod payload;
mod pod;
mod secret;
mod steps;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use k8s_openapi::{
    api::batch::v1::Job as KubeJob,
    api::core::v1::{PersistentVolumeClaim, Secret},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};

use self::{meta::JobMeta, pod::PodPlan, secret::SecretPlan, steps::StepPlan};
use super::{
    labels,
    script::{self, SetupScript, StagedFile},
};
use crate::{config::KubernetesConfig, queue::types::Job};

/// Container that clones the repository and writes the workspace files.
pub const SETUP_CONTAINER: &str = "setup-workspace";
/// Log entry key of [`SETUP_CONTAINER`].
pub const SETUP_ENTRY_KEY: &str = "setup.workspace";
/// The pod's only regular container; it runs after every step succeeded.
pub const MAIN_CONTAINER: &str = "main";
/// Log entry key of [`MAIN_CONTAINER`].
pub const MAIN_ENTRY_KEY: &str = "main";
/// Name of the workspace volume.
pub const JOB_DATA_VOLUME: &str = "job-data";
/// Name of the volume that shows the setup container the job Secret's workspace files.
pub const SECRETS_VOLUME: &str = "job-secrets";
/// Secret key of the job token.
pub const TOKEN_KEY: &str = "TOKEN";
/// Secret key (and file name in the setup container) of the setup-workspace program.
pub const SETUP_PROGRAM_KEY: &str = "setup.sh";
/// The Cluster Autoscaler must not evict a job pod: a step cannot resume elsewhere.
pub const SAFE_TO_EVICT_ANNOTATION: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";
/// Largest total size of a Secret's data the API server accepts.
pub const MAX_SECRET_BYTES: usize = 1024 * 1024;
/// Largest Job object this executor creates, as JSON.
///
/// etcd refuses objects over 1.5 MiB by default. The pod made from the Job holds the same spec
/// plus a status entry per container, so the Job keeps a third of that free.
pub const MAX_JOB_BYTES: usize = 1024 * 1024;
/// Longest `NAME=value` string Linux passes to a program (`MAX_ARG_STRLEN`, 32 pages), less
/// its terminating NUL.
pub const MAX_ENV_ENTRY_BYTES: usize = 128 * 1024 - 1;

/// Log entry key of the docker step with key `step_key` (its index when the payload has no key).
pub fn step_entry_key(step_key: &str) -> String {
    format!("step.kubernetes.{step_key}")
}

/// A workspace file of the job (`job.files`), its content already resolved.
#[derive(Clone, PartialEq)]
pub struct WorkspaceFile {
    /// Path relative to `/job`.
    pub path: String,
    pub content: Vec<u8>,
    pub modified_at: Option<jiff::Timestamp>,
}

impl std::fmt::Debug for WorkspaceFile {
    // The content may be confidential (batch spec inputs, cached results) and large.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkspaceFile")
            .field("path", &self.path)
            .field("content_bytes", &self.content.len())
            .field("modified_at", &self.modified_at)
            .finish()
    }
}

/// Everything about one dequeued job that shapes its objects, besides the configuration.
#[derive(Debug, Clone, Copy)]
pub struct JobContext<'a> {
    pub job: &'a Job,
    /// The queue the job was dequeued from (never empty, also in multi-queue mode).
    pub queue: &'a str,
    /// Name this executor reports to the frontend.
    pub executor_name: &'a str,
    /// `EXECUTOR_INSTANCE_ID`.
    pub instance_id: &'a str,
    /// `EXECUTOR_FRONTEND_URL`.
    pub frontend_url: &'a str,
    /// `job.files`, with `bucket`/`key` references already fetched.
    pub files: &'a [WorkspaceFile],
}

/// One container of the job pod and the execution log entry it produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSpec {
    /// Log entry key (`setup.workspace`, `step.kubernetes.<key>`, `main`).
    pub key: String,
    pub container_name: String,
    /// Command shown in the log entry; empty for the setup and main containers, as upstream.
    pub command: Vec<String>,
}

/// The objects of one job, in creation order: Secret, pull Secret, PVC, then the Job.
#[derive(Clone)]
pub struct JobObjects {
    pub job: KubeJob,
    /// `<job>-secrets`: job token, workspace files and step env values.
    pub secret: Secret,
    /// `<job>-pull`, when the payload carries registry credentials.
    pub pull_secret: Option<Secret>,
    /// `<job>-pvc`, with `KUBERNETES_JOB_VOLUME_TYPE=pvc`.
    pub pvc: Option<PersistentVolumeClaim>,
    /// Setup, one per docker step, main: in container order.
    pub steps: Vec<StepSpec>,
}

/// Why a job's objects could not be built; every variant is a problem of the job payload or the
/// configuration, so retrying the same job cannot help.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "this job has src-cli steps, which the Kubernetes runtime cannot run: enable native server-side \
         execution (site config batchChanges.nativeServerSideExecution, or the native-ssbc-execution \
         feature flag on older versions)"
    )]
    CliStepsUnsupported,
    #[error("{what} {path:?} leaves the workspace /job: absolute paths and \"..\" are not allowed")]
    PathOutsideWorkspace { what: String, path: String },
    #[error("{what} {path:?} names the workspace root, not a file")]
    FilePathEmpty { what: String, path: String },
    #[error("workspace file {path:?} {problem}")]
    InvalidWorkspaceFile { path: String, problem: String },
    #[error("job ID {id} is negative; queue job IDs are never negative")]
    NegativeJobId { id: i64 },
    #[error(
        "the job's commit {commit:?} is not a full hex object id (40 hex digits for SHA-1, 64 for SHA-256)"
    )]
    InvalidCommit { commit: String },
    #[error("the job's dockerAuthConfig is unusable: {reason}")]
    InvalidDockerAuthConfig { reason: String },
    #[error("Job name {name:?} is not a valid DNS label of at most 63 characters (check the queue name)")]
    InvalidJobName { name: String },
    #[error("label {key} value {value:?} is not a valid Kubernetes label value")]
    InvalidLabelValue { key: &'static str, value: String },
    #[error("docker step {index} (key {key:?}) has no image")]
    StepWithoutImage { index: usize, key: String },
    #[error("docker step {step} env entry {entry} is not NAME=value ({problem})")]
    InvalidStepEnv {
        step: usize,
        entry: usize,
        problem: &'static str,
    },
    #[error(
        "the job Secret would hold {bytes} bytes (workspace files, step scripts, env values, the setup \
         program), more than the {limit} bytes Kubernetes allows"
    )]
    SecretTooLarge { bytes: usize, limit: usize },
    #[error(
        "the Kubernetes Job would be {bytes} bytes ({steps} docker steps), more than the {limit} bytes \
         this executor allows so that the Job and its pod stay within etcd's 1.5 MiB object limit"
    )]
    JobTooLarge {
        bytes: usize,
        steps: usize,
        limit: usize,
    },
    #[error(
        "docker step {step} env entry {entry} is {bytes} bytes long, more than the {limit} bytes Linux \
         allows for one environment variable"
    )]
    StepEnvTooLong {
        step: usize,
        entry: usize,
        bytes: usize,
        limit: usize,
    },
}

/// Builds every object of one job.
///
/// # Errors
/// [`SpecError`] when the payload cannot run on Kubernetes (src-cli steps) or is malformed.
pub fn build_job_objects(ctx: &JobContext<'_>, cfg: &KubernetesConfig) -> Result<JobObjects, SpecError> {
    let job = ctx.job;
    let meta = JobMeta::new(*ctx, cfg, validated_job_name(ctx)?);
    let repository_dir = normalize(&job.repository_directory, "repository directory")?;

    let mut secret = SecretPlan::new(labels::secret_name(&meta.name), job.token.expose());
    secret.stage_workspace_files(ctx.files)?;
    let steps = StepPlan::plan_all(job)?;
    secret.add_steps(&steps);
    secret.add_setup_program(setup_program(ctx, cfg, &repository_dir, secret.staged()));
    secret.check_size()?;

    let pull_secret = secret::pull_secret(job, &meta)?;
    let pvc = meta.pvc();
    let pod = PodPlan {
        cfg,
        secret: &secret,
        pvc_name: pvc.as_ref().map(|_| labels::pvc_name(&meta.name)),
        pull_secret_name: pull_secret.as_ref().map(|_| labels::pull_secret_name(&meta.name)),
    };
    let kube_job = meta.job(pod.spec(&steps));
    check_job_size(&kube_job)?;

    Ok(JobObjects {
        job: kube_job,
        secret: secret.into_secret(&meta),
        pull_secret,
        pvc,
        steps: steps::step_specs(&steps),
    })
}

/// Rejects a Job too large to store: the pod the Job controller makes from it is as large, and
/// grows with a status per container.
fn check_job_size(job: &KubeJob) -> Result<(), SpecError> {
    let bytes = serde_json::to_vec(job).map_or(usize::MAX, |json| json.len());
    if bytes > MAX_JOB_BYTES {
        let steps = job
            .spec
            .as_ref()
            .and_then(|spec| spec.template.spec.as_ref())
            .and_then(|pod| pod.init_containers.as_ref())
            .map_or(0, |init| init.len().saturating_sub(1));
        return Err(SpecError::JobTooLarge {
            bytes,
            steps,
            limit: MAX_JOB_BYTES,
        });
    }
    Ok(())
}

/// The Job's name, after the checks that make the payload unrunnable whatever its steps hold.
fn validated_job_name(ctx: &JobContext<'_>) -> Result<String, SpecError> {
    if !ctx.job.cli_steps.is_empty() {
        return Err(SpecError::CliStepsUnsupported);
    }
    payload::check_job_id(ctx.job.id)?;
    payload::check_commit(&ctx.job.commit, &ctx.job.repository_name)?;
    let name = labels::job_name(ctx.queue, ctx.job.id);
    if !labels::is_dns_label(&name) {
        return Err(SpecError::InvalidJobName { name });
    }
    for (key, value) in [
        (labels::INSTANCE_KEY, ctx.instance_id),
        (labels::QUEUE_KEY, ctx.queue),
    ] {
        if !labels::is_valid_label_value(value) {
            return Err(SpecError::InvalidLabelValue {
                key,
                value: value.to_string(),
            });
        }
    }
    Ok(name)
}

/// The setup container's program: clone the repository, then copy the `staged` files into place.
fn setup_program(
    ctx: &JobContext<'_>,
    cfg: &KubernetesConfig,
    repository_dir: &str,
    staged: &[StagedFile],
) -> String {
    let job = ctx.job;
    SetupScript {
        job_id: job.id,
        repository_name: &job.repository_name,
        repository_dir,
        commit: &job.commit,
        fetch_tags: job.fetch_tags,
        shallow_clone: job.shallow_clone,
        sparse_checkout: &job.sparse_checkout,
        executor_name: ctx.executor_name,
        frontend_url: ctx.frontend_url,
        git_ca_cert: cfg.git_ca_cert.as_deref(),
        files: staged,
    }
    .render()
}

/// JSON merge patch that makes the created `job` the owner of a job's Secret or PVC, so the
/// garbage collector removes them with the Job (also when its TTL expires or someone deletes it).
///
/// `controller` and `blockOwnerDeletion` are false: setting `blockOwnerDeletion` needs permission
/// to update the Job's finalizers. `None` until the Job has a name and UID (i.e. was created).
pub fn owner_reference_patch(job: &KubeJob) -> Option<serde_json::Value> {
    let owner = OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: job.metadata.name.clone()?,
        uid: job.metadata.uid.clone()?,
        controller: Some(false),
        block_owner_deletion: Some(false),
    };
    let metadata = ObjectMeta {
        owner_references: Some(vec![owner]),
        ..Default::default()
    };
    let metadata = serde_json::to_value(metadata).ok()?;
    Some(serde_json::Value::Object(serde_json::Map::from_iter([(
        "metadata".to_string(),
        metadata,
    )])))
}

/// Log entry key and command of a job pod container. Containers not in `steps` get their name
/// with `-` turned into `.`, as Sourcegraph does, and no command.
pub fn entry_for_container<'a>(steps: &'a [StepSpec], container: &str) -> (Cow<'a, str>, &'a [String]) {
    match steps.iter().find(|step| step.container_name == container) {
        Some(step) => (Cow::Borrowed(step.key.as_str()), step.command.as_slice()),
        None => (Cow::Owned(container.replace('-', ".")), &[]),
    }
}

fn normalize(path: &str, what: &str) -> Result<String, SpecError> {
    script::normalize_workspace_path(path).ok_or_else(|| SpecError::PathOutsideWorkspace {
        what: what.to_string(),
        path: path.to_string(),
    })
}
