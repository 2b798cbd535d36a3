//! Pure builders of the Kubernetes objects of one queue job: Job, Secrets, PVC, and the log-entry map.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
};

use k8s_openapi::{
    ByteString,
    api::{
        batch::v1::{Job as KubeJob, JobSpec},
        core::v1::{
            Affinity, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath, LocalObjectReference,
            NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaim,
            PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodAffinity, PodAntiAffinity,
            PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, Secret, SecretKeySelector,
            SecretVolumeSource, Volume, VolumeMount, VolumeResourceRequirements,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{ObjectMeta, OwnerReference},
    },
};

use super::{
    labels,
    script::{self, SetupScript, StagedFile},
};
use crate::{
    config::{KubernetesConfig, NodePinning, VolumeType},
    queue::types::Job,
};

/// Container that clones the repository and writes the workspace files.
pub const SETUP_CONTAINER: &str = "setup-workspace";
/// Log entry key of [`SETUP_CONTAINER`].
pub const SETUP_ENTRY_KEY: &str = "setup.workspace";
/// The pod's only regular container; it runs after every step succeeded.
pub const MAIN_CONTAINER: &str = "main";
/// Name of the workspace volume.
pub const JOB_DATA_VOLUME: &str = "job-data";
/// Name of the volume that shows the setup container the job Secret's workspace files.
pub const SECRETS_VOLUME: &str = "job-secrets";
/// Secret key of the job token.
pub const TOKEN_KEY: &str = "TOKEN";
/// The Cluster Autoscaler must not evict a job pod: a step cannot resume elsewhere.
pub const SAFE_TO_EVICT_ANNOTATION: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";
/// Largest total size of a Secret's data the API server accepts.
pub const MAX_SECRET_BYTES: usize = 1024 * 1024;

/// File mode of the workspace files in the Secret volume.
///
/// World-readable because the setup container may run as any user (`KUBERNETES_RUN_AS_USER`, or
/// the image's user when unset) and `fsGroup` may be unset, while the volume files belong to root.
/// Nothing else can see them: the volume is per-job, mounted only in the setup container, which
/// copies the files into the workspace anyway.
const SECRET_FILE_MODE: i32 = 0o444;

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
        "the job Secret would hold {bytes} bytes (workspace files, step scripts, env values), more than \
         the {limit} bytes Kubernetes allows"
    )]
    SecretTooLarge { bytes: usize, limit: usize },
}

/// Builds every object of one job.
///
/// # Errors
/// [`SpecError`] when the payload cannot run on Kubernetes (src-cli steps) or is malformed.
pub fn build_job_objects(ctx: &JobContext<'_>, cfg: &KubernetesConfig) -> Result<JobObjects, SpecError> {
    let job = ctx.job;
    if !job.cli_steps.is_empty() {
        return Err(SpecError::CliStepsUnsupported);
    }
    let name = labels::job_name(ctx.queue, job.id);
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
    let secret_name = labels::secret_name(&name);
    let meta = |object_name: String, annotations: BTreeMap<String, String>| ObjectMeta {
        name: Some(object_name),
        namespace: Some(cfg.namespace.clone()),
        labels: Some(labels::job_labels(ctx.instance_id, ctx.queue, job.id)),
        annotations: Some(annotations),
        ..Default::default()
    };
    let executor_annotation = || {
        BTreeMap::from([(
            labels::EXECUTOR_NAME_ANNOTATION.to_string(),
            ctx.executor_name.to_string(),
        )])
    };

    let repository_dir = normalize(&job.repository_directory, "repository directory")?;
    let mut secret_data: BTreeMap<String, ByteString> = BTreeMap::new();
    secret_data.insert(
        TOKEN_KEY.into(),
        ByteString(job.token.expose().clone().into_bytes()),
    );

    // Workspace files travel in the Secret, not in the pod spec: anyone allowed to read pods could
    // read them there, and large files would bloat (or break) the Job object.
    let mut staged = Vec::with_capacity(ctx.files.len() + job.docker_steps.len());
    let mut stage = |path: String, content: Vec<u8>, modified_at| {
        let secret_key = format!("file.{}", staged.len());
        secret_data.insert(secret_key.clone(), ByteString(content));
        staged.push(StagedFile {
            secret_key,
            path,
            modified_at,
        });
    };
    for file in ctx.files {
        let path = normalize(&file.path, "workspace file")?;
        if path.is_empty() {
            return Err(SpecError::FilePathEmpty {
                what: "workspace file".into(),
                path: file.path.clone(),
            });
        }
        stage(path, file.content.clone(), file.modified_at);
    }

    let mut steps = vec![StepSpec {
        key: SETUP_ENTRY_KEY.into(),
        container_name: SETUP_CONTAINER.into(),
        command: Vec::new(),
    }];
    let mut used_names = BTreeSet::from([SETUP_CONTAINER.to_string(), MAIN_CONTAINER.to_string()]);
    let mut step_layouts = Vec::with_capacity(job.docker_steps.len());
    for (index, step) in job.docker_steps.iter().enumerate() {
        let key = if step.key.is_empty() {
            format!("step.kubernetes.{index}")
        } else {
            format!("step.kubernetes.{}", step.key)
        };
        if step.image.is_empty() {
            return Err(SpecError::StepWithoutImage {
                index,
                key: step.key.clone(),
            });
        }
        let dir = normalize(&step.dir, &format!("docker step {index} dir"))?;
        let script_name = script::step_script_name(job.id, index, &job.repository_name, &job.commit);
        stage(
            format!("{}/{script_name}", script::SCRIPTS_DIR),
            script::step_script(&step.commands).into_bytes(),
            None,
        );
        let container_name = unique_container_name(&key, &mut used_names);
        steps.push(StepSpec {
            key: key.clone(),
            container_name: container_name.clone(),
            command: vec!["/bin/sh".into(), script::step_script_path(&script_name)],
        });
        step_layouts.push((key, container_name, dir, script_name));
    }
    steps.push(StepSpec {
        key: MAIN_CONTAINER.into(),
        container_name: MAIN_CONTAINER.into(),
        command: Vec::new(),
    });

    // Step env values also live in the Secret (Sourcegraph puts them in the pod spec in plain text,
    // e.g. batch change secrets and codeintel's SRC_HEADER_AUTHORIZATION): the pod spec only names
    // the Secret keys.
    let mut step_envs = Vec::with_capacity(job.docker_steps.len());
    for (index, step) in job.docker_steps.iter().enumerate() {
        let mut env = Vec::with_capacity(step.env.len() + 1);
        for (entry, pair) in step.env.iter().enumerate() {
            let Some((env_name, value)) = pair.split_once('=') else {
                return Err(SpecError::InvalidStepEnv {
                    step: index,
                    entry,
                    problem: "no '='",
                });
            };
            if env_name.is_empty() {
                return Err(SpecError::InvalidStepEnv {
                    step: index,
                    entry,
                    problem: "empty name",
                });
            }
            let secret_key = format!("env.{index}.{entry}");
            secret_data.insert(secret_key.clone(), ByteString(value.as_bytes().to_vec()));
            env.push(secret_env(env_name, &secret_name, &secret_key));
        }
        env.push(EnvVar {
            name: "EXECUTOR_ADD_SAFE".into(),
            value: Some("false".into()),
            ..Default::default()
        });
        step_envs.push(env);
    }

    let secret_bytes: usize = secret_data.values().map(|v| v.0.len()).sum();
    if secret_bytes > MAX_SECRET_BYTES {
        return Err(SpecError::SecretTooLarge {
            bytes: secret_bytes,
            limit: MAX_SECRET_BYTES,
        });
    }

    let setup_program = SetupScript {
        job_id: job.id,
        repository_name: &job.repository_name,
        repository_dir: &repository_dir,
        commit: &job.commit,
        fetch_tags: job.fetch_tags,
        shallow_clone: job.shallow_clone,
        sparse_checkout: &job.sparse_checkout,
        executor_name: ctx.executor_name,
        frontend_url: ctx.frontend_url,
        git_ca_cert: cfg.git_ca_cert.as_deref(),
        files: &staged,
    }
    .render();

    let pull_secret = build_pull_secret(job, meta(labels::pull_secret_name(&name), executor_annotation()))?;
    let pvc = (cfg.volume_type == VolumeType::Pvc).then(|| PersistentVolumeClaim {
        metadata: meta(labels::pvc_name(&name), executor_annotation()),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), cfg.volume_size.clone())])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });

    let mounts = |with_secrets: bool| {
        let mut mounts = vec![VolumeMount {
            name: JOB_DATA_VOLUME.into(),
            mount_path: script::JOB_DIR.into(),
            ..Default::default()
        }];
        if with_secrets && !staged.is_empty() {
            mounts.push(VolumeMount {
                name: SECRETS_VOLUME.into(),
                mount_path: script::SECRETS_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            });
        }
        mounts.extend(cfg.additional_volume_mounts.iter().cloned());
        mounts
    };
    let container = |container_name: &str, image: &str, args: String, working_dir: String| Container {
        name: container_name.into(),
        image: Some(image.into()),
        image_pull_policy: (!cfg.image_pull_policy.is_empty()).then(|| cfg.image_pull_policy.clone()),
        command: Some(vec!["sh".into(), "-c".into()]),
        args: Some(vec![script::with_one_output_stream(&args)]),
        working_dir: Some(working_dir),
        resources: resources(cfg),
        volume_mounts: Some(mounts(false)),
        ..Default::default()
    };

    let mut init_containers = vec![Container {
        env: Some(vec![secret_env(TOKEN_KEY, &secret_name, TOKEN_KEY)]),
        volume_mounts: Some(mounts(true)),
        ..container(
            SETUP_CONTAINER,
            &cfg.step_image,
            setup_program,
            script::JOB_DIR.into(),
        )
    }];
    for ((step, (key, container_name, dir, script_name)), env) in
        job.docker_steps.iter().zip(step_layouts).zip(step_envs)
    {
        init_containers.push(Container {
            env: Some(env),
            ..container(
                &container_name,
                &step.image,
                script::step_container_args(&key, &script_name),
                workspace_dir(&dir),
            )
        });
    }
    let main = container(
        MAIN_CONTAINER,
        &cfg.step_image,
        "echo 'complete'".into(),
        script::JOB_DIR.into(),
    );

    let mut volumes = vec![Volume {
        name: JOB_DATA_VOLUME.into(),
        persistent_volume_claim: pvc.as_ref().map(|_| PersistentVolumeClaimVolumeSource {
            claim_name: labels::pvc_name(&name),
            ..Default::default()
        }),
        empty_dir: pvc.is_none().then(|| EmptyDirVolumeSource {
            size_limit: Some(cfg.volume_size.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }];
    if !staged.is_empty() {
        volumes.push(Volume {
            name: SECRETS_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name.clone()),
                // Only the files: the token and env values stay out of the filesystem.
                items: Some(
                    staged
                        .iter()
                        .map(|file| KeyToPath {
                            key: file.secret_key.clone(),
                            path: file.secret_key.clone(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                default_mode: Some(SECRET_FILE_MODE),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    volumes.extend(cfg.additional_volumes.iter().cloned());

    let mut image_pull_secrets: Vec<LocalObjectReference> = cfg
        .image_pull_secrets
        .iter()
        .map(|secret| LocalObjectReference { name: secret.clone() })
        .collect();
    if let Some(pull_secret) = &pull_secret {
        image_pull_secrets.push(LocalObjectReference {
            name: pull_secret.metadata.name.clone().unwrap_or_default(),
        });
    }

    let mut pod_annotations = cfg.pod_annotations.clone();
    // An operator may deliberately allow eviction; only the default is ours.
    pod_annotations
        .entry(SAFE_TO_EVICT_ANNOTATION.into())
        .or_insert_with(|| "false".into());
    pod_annotations.extend(executor_annotation());
    let mut job_annotations = cfg.job_annotations.clone();
    job_annotations.extend(executor_annotation());

    let pod_spec = PodSpec {
        restart_policy: Some("Never".into()),
        active_deadline_seconds: (cfg.job_deadline_seconds > 0).then_some(cfg.job_deadline_seconds),
        service_account_name: cfg.job_service_account.clone(),
        automount_service_account_token: Some(cfg.automount_service_account_token),
        host_network: cfg.host_network.then_some(true),
        node_name: match (&cfg.node_name, cfg.node_pinning) {
            (Some(node), NodePinning::NodeName) => Some(node.clone()),
            _ => None,
        },
        node_selector: non_empty_map(cfg.node_selector.clone()),
        affinity: affinity(cfg),
        tolerations: non_empty(cfg.tolerations.clone()),
        image_pull_secrets: non_empty(image_pull_secrets),
        security_context: security_context(cfg),
        init_containers: Some(init_containers),
        containers: vec![main],
        volumes: Some(volumes),
        ..Default::default()
    };

    let kube_job = KubeJob {
        metadata: meta(name.clone(), job_annotations),
        spec: Some(JobSpec {
            // A retry would start over on a workspace the failed attempt already changed.
            backoff_limit: Some(0),
            ttl_seconds_after_finished: cfg.ttl_seconds_after_finished,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels::job_labels(ctx.instance_id, ctx.queue, job.id)),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(pod_spec),
            },
            ..Default::default()
        }),
        ..Default::default()
    };

    let secret = Secret {
        metadata: meta(secret_name, executor_annotation()),
        type_: Some("Opaque".into()),
        // Written once per job; immutable Secrets are not watched by the kubelet.
        immutable: Some(true),
        data: Some(secret_data),
        ..Default::default()
    };

    Ok(JobObjects {
        job: kube_job,
        secret,
        pull_secret,
        pvc,
        steps,
    })
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

fn workspace_dir(relative: &str) -> String {
    if relative.is_empty() {
        script::JOB_DIR.to_string()
    } else {
        format!("{}/{relative}", script::JOB_DIR)
    }
}

fn secret_env(name: &str, secret_name: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret_name.into(),
                key: key.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
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

fn resources(cfg: &KubernetesConfig) -> Option<ResourceRequirements> {
    let list = |cpu: &Option<Quantity>, memory: &Option<Quantity>| {
        let list: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter_map(|(resource, quantity)| Some((resource.to_string(), quantity.clone()?)))
            .collect();
        non_empty_map(list)
    };
    let requests = list(&cfg.request_cpu, &cfg.request_memory);
    let limits = list(&cfg.limit_cpu, &cfg.limit_memory);
    (requests.is_some() || limits.is_some()).then(|| ResourceRequirements {
        requests,
        limits,
        ..Default::default()
    })
}

/// Node affinity from the configured expressions and fields plus node pinning, all in one term
/// (requirements inside a term are ANDed); pod (anti-)affinity only when configured, never with an
/// empty term as Sourcegraph emits.
fn affinity(cfg: &KubernetesConfig) -> Option<Affinity> {
    let expressions = cfg.node_required_affinity_match_expressions.clone();
    let mut fields = cfg.node_required_affinity_match_fields.clone();
    if let (Some(node), NodePinning::Affinity) = (&cfg.node_name, cfg.node_pinning) {
        fields.push(NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.clone()]),
        });
    }
    let node_affinity = (!expressions.is_empty() || !fields.is_empty()).then(|| NodeAffinity {
        required_during_scheduling_ignored_during_execution: Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: non_empty(expressions),
                match_fields: non_empty(fields),
            }],
        }),
        ..Default::default()
    });
    let pod_affinity = non_empty(cfg.pod_affinity.clone()).map(|terms| PodAffinity {
        required_during_scheduling_ignored_during_execution: Some(terms),
        ..Default::default()
    });
    let pod_anti_affinity = non_empty(cfg.pod_anti_affinity.clone()).map(|terms| PodAntiAffinity {
        required_during_scheduling_ignored_during_execution: Some(terms),
        ..Default::default()
    });
    (node_affinity.is_some() || pod_affinity.is_some() || pod_anti_affinity.is_some()).then_some(Affinity {
        node_affinity,
        pod_affinity,
        pod_anti_affinity,
    })
}

fn security_context(cfg: &KubernetesConfig) -> Option<PodSecurityContext> {
    (cfg.run_as_user.is_some() || cfg.run_as_group.is_some() || cfg.fs_group.is_some()).then(|| {
        PodSecurityContext {
            run_as_user: cfg.run_as_user,
            run_as_group: cfg.run_as_group,
            fs_group: cfg.fs_group,
            ..Default::default()
        }
    })
}

/// The `kubernetes.io/dockerconfigjson` Secret from the payload's `dockerAuthConfig`; `None` when
/// the payload has no registry credentials (v2 payloads always carry the field, often empty).
fn build_pull_secret(job: &Job, metadata: ObjectMeta) -> Result<Option<Secret>, SpecError> {
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
        metadata,
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            ".dockerconfigjson".to_string(),
            ByteString(content),
        )])),
        ..Default::default()
    }))
}

fn non_empty<T>(items: Vec<T>) -> Option<Vec<T>> {
    (!items.is_empty()).then_some(items)
}

fn non_empty_map<K, V>(map: BTreeMap<K, V>) -> Option<BTreeMap<K, V>> {
    (!map.is_empty()).then_some(map)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::{PodAffinityTerm, Toleration};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    use super::*;
    use crate::queue::types::{CliStep, DockerStep, Secret as Hidden};

    const TOKEN: &str = "job-token-5f3a9c";
    const ENV_SECRET: &str = "s3cr3t-batch-value";
    const FILE_CONTENT: &str = "{\"confidential\": \"workspace-file-body\"}";

    fn test_config() -> KubernetesConfig {
        KubernetesConfig {
            config_path: None,
            namespace: "sg-executors".into(),
            node_name: None,
            node_pinning: NodePinning::Affinity,
            node_selector: BTreeMap::new(),
            node_required_affinity_match_expressions: Vec::new(),
            node_required_affinity_match_fields: Vec::new(),
            pod_affinity: Vec::new(),
            pod_anti_affinity: Vec::new(),
            tolerations: Vec::new(),
            request_cpu: None,
            request_memory: Some(Quantity("12Gi".into())),
            limit_cpu: None,
            limit_memory: Some(Quantity("12Gi".into())),
            job_deadline_seconds: 1200,
            keep_jobs: false,
            run_as_user: None,
            run_as_group: None,
            // KUBERNETES_FS_GROUP's default.
            fs_group: Some(1000),
            job_annotations: BTreeMap::new(),
            pod_annotations: BTreeMap::new(),
            image_pull_secrets: Vec::new(),
            image_pull_policy: "IfNotPresent".into(),
            step_image: "sourcegraph/batcheshelper:insiders".into(),
            volume_type: VolumeType::EmptyDir,
            volume_size: Quantity("5Gi".into()),
            additional_volumes: Vec::new(),
            additional_volume_mounts: Vec::new(),
            git_ca_cert: None,
            host_network: false,
            job_service_account: None,
            automount_service_account_token: false,
            ttl_seconds_after_finished: Some(600),
            pending_timeout: Duration::from_secs(600),
            image_pull_timeout: Duration::from_secs(60),
            pod_creation_timeout: Duration::from_secs(30),
        }
    }

    fn step(key: &str, image: &str, commands: &[&str], dir: &str, env: &[&str]) -> DockerStep {
        DockerStep {
            key: key.into(),
            image: image.into(),
            commands: commands.iter().map(|c| c.to_string()).collect(),
            dir: dir.into(),
            env: env.iter().map(|e| e.to_string()).collect(),
        }
    }

    /// A v2 batches job as the frontend sends it for native server-side execution.
    fn batches_job() -> Job {
        Job {
            version: 2,
            id: 91562,
            token: Hidden::new(TOKEN.into()),
            queue: "batches".into(),
            repository_name: "github.com/sourcegraph/sample".into(),
            repository_directory: "repository".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            fetch_tags: false,
            shallow_clone: true,
            sparse_checkout: Vec::new(),
            files: BTreeMap::new(),
            docker_steps: vec![
                step(
                    "step.0.pre",
                    "sourcegraph/batcheshelper:6.0.0",
                    &["batcheshelper pre 0"],
                    ".",
                    &[],
                ),
                step(
                    "step.0.run",
                    "alpine:3",
                    &["cd repository", "echo hi > README.md"],
                    "repository",
                    &[&format!("SECRET_TOKEN={ENV_SECRET}"), "WITH_EQUALS=a=b"],
                ),
                step(
                    "step.0.post",
                    "sourcegraph/batcheshelper:6.0.0",
                    &["batcheshelper post 0"],
                    ".",
                    &[],
                ),
            ],
            cli_steps: Vec::new(),
            redacted_values: Hidden::new(BTreeMap::from([(ENV_SECRET.to_string(), "SECRET".to_string())])),
            docker_auth_config: None,
        }
    }

    fn input_file() -> WorkspaceFile {
        WorkspaceFile {
            path: "input.json".into(),
            content: FILE_CONTENT.as_bytes().to_vec(),
            modified_at: Some("2024-05-01T10:00:00Z".parse().expect("valid time")),
        }
    }

    fn build(job: &Job, files: &[WorkspaceFile], cfg: &KubernetesConfig) -> Result<JobObjects, SpecError> {
        build_in_queue(job, "batches", files, cfg)
    }

    fn build_in_queue(
        job: &Job,
        queue: &str,
        files: &[WorkspaceFile],
        cfg: &KubernetesConfig,
    ) -> Result<JobObjects, SpecError> {
        let ctx = JobContext {
            job,
            queue,
            executor_name: "exec-host-1-7d2c",
            instance_id: "exec-prod",
            frontend_url: "https://sourcegraph.example.com",
            files,
        };
        build_job_objects(&ctx, cfg)
    }

    fn pod_spec(objects: &JobObjects) -> &PodSpec {
        objects
            .job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("job has a pod spec")
    }

    fn init_containers(objects: &JobObjects) -> &[Container] {
        pod_spec(objects)
            .init_containers
            .as_deref()
            .expect("init containers")
    }

    fn secret_ref(env: &EnvVar) -> Option<(&str, &str)> {
        env.value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .map(|r| (r.name.as_str(), r.key.as_str()))
    }

    fn secret_value<'a>(objects: &'a JobObjects, key: &str) -> &'a [u8] {
        &objects.secret.data.as_ref().expect("secret data")[key].0
    }

    #[test]
    fn multi_step_job_has_setup_steps_and_main_in_order() {
        let objects = build(&batches_job(), &[input_file()], &test_config()).expect("buildable");
        let names: Vec<&str> = init_containers(&objects)
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "setup-workspace",
                "step-kubernetes-step-0-pre",
                "step-kubernetes-step-0-run",
                "step-kubernetes-step-0-post"
            ]
        );
        let pod = pod_spec(&objects);
        assert_eq!(pod.containers.len(), 1);
        assert_eq!(pod.containers[0].name, "main");
        assert_eq!(
            pod.containers[0].args,
            Some(vec!["exec 2>&1\necho 'complete'".to_string()])
        );
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.active_deadline_seconds, Some(1200));
        assert_eq!(pod.automount_service_account_token, Some(false));

        let keys: Vec<&str> = objects.steps.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "setup.workspace",
                "step.kubernetes.step.0.pre",
                "step.kubernetes.step.0.run",
                "step.kubernetes.step.0.post",
                "main"
            ]
        );
        let script = "/job/.sourcegraph-executor/91562.1_github.com_sourcegraph_sample@0123456789abcdef0123456789abcdef01234567.sh";
        assert_eq!(objects.steps[2].command, ["/bin/sh", script]);

        let run = &init_containers(&objects)[2];
        assert_eq!(run.image.as_deref(), Some("alpine:3"));
        assert_eq!(run.command, Some(vec!["sh".to_string(), "-c".to_string()]));
        assert_eq!(
            run.args,
            Some(vec![format!(
                "exec 2>&1\nif [ \"$('/job/nextIndex.sh' '/job/skip.json' 'step.kubernetes.step.0.run')\" != \"skip\" ]; \
                 then /bin/sh '{script}'; fi"
            )])
        );
        assert_eq!(run.working_dir.as_deref(), Some("/job/repository"));
        assert_eq!(init_containers(&objects)[1].working_dir.as_deref(), Some("/job"));
        assert_eq!(init_containers(&objects)[0].working_dir.as_deref(), Some("/job"));
        for container in init_containers(&objects).iter().chain(&pod.containers) {
            let mounts = container.volume_mounts.as_deref().expect("mounts");
            assert_eq!(
                (mounts[0].name.as_str(), mounts[0].mount_path.as_str()),
                ("job-data", "/job")
            );
            assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
            let resources = container.resources.as_ref().expect("resources");
            assert_eq!(resources.requests.as_ref().expect("requests")["memory"].0, "12Gi");
            assert!(!resources.requests.as_ref().expect("requests").contains_key("cpu"));
        }
    }

    #[test]
    fn step_env_comes_from_secret_keys_and_setup_gets_the_token() {
        let objects = build(&batches_job(), &[input_file()], &test_config()).expect("buildable");
        let secret = "sg-executor-job-batches-91562-secrets";
        let run_env = init_containers(&objects)[2].env.as_deref().expect("env");
        assert_eq!(run_env.len(), 3);
        assert_eq!(run_env[0].name, "SECRET_TOKEN");
        assert_eq!(secret_ref(&run_env[0]), Some((secret, "env.1.0")));
        assert_eq!(run_env[1].name, "WITH_EQUALS");
        assert_eq!(secret_ref(&run_env[1]), Some((secret, "env.1.1")));
        assert_eq!(secret_value(&objects, "env.1.0"), ENV_SECRET.as_bytes());
        assert_eq!(
            secret_value(&objects, "env.1.1"),
            b"a=b",
            "split on the first '='"
        );
        assert_eq!(run_env[2].name, "EXECUTOR_ADD_SAFE");
        assert_eq!(run_env[2].value.as_deref(), Some("false"));
        assert!(
            run_env
                .iter()
                .all(|e| e.name == "EXECUTOR_ADD_SAFE" || e.value.is_none())
        );

        let setup = &init_containers(&objects)[0];
        let setup_env = setup.env.as_deref().expect("setup env");
        assert_eq!(setup_env.len(), 1);
        assert_eq!(secret_ref(&setup_env[0]), Some((secret, "TOKEN")));
        assert_eq!(secret_value(&objects, "TOKEN"), TOKEN.as_bytes());
        let setup_mounts = setup.volume_mounts.as_deref().expect("mounts");
        assert!(setup_mounts.iter().any(|m| m.name == "job-secrets"
            && m.mount_path == script::SECRETS_DIR
            && m.read_only == Some(true)));
        for step in &init_containers(&objects)[1..] {
            let mounts = step.volume_mounts.as_deref().expect("mounts");
            assert!(
                mounts.iter().all(|m| m.name != "job-secrets"),
                "only setup sees the Secret files"
            );
        }
    }

    #[test]
    fn no_secret_value_appears_in_the_job_object() {
        let objects = build(&batches_job(), &[input_file()], &test_config()).expect("buildable");
        let job_json = serde_json::to_string(&objects.job).expect("serializable");
        for secret in [
            TOKEN,
            ENV_SECRET,
            FILE_CONTENT,
            "workspace-file-body",
            "echo hi > README.md",
        ] {
            assert!(!job_json.contains(secret), "{secret:?} leaked into the Job");
        }
        // The files went into the Secret instead, and the setup program copies them.
        assert_eq!(secret_value(&objects, "file.0"), FILE_CONTENT.as_bytes());
        let step_script = String::from_utf8(secret_value(&objects, "file.2").to_vec()).expect("UTF-8");
        assert!(
            step_script.ends_with("cd repository\necho hi > README.md\n"),
            "{step_script}"
        );
        let setup_args = &init_containers(&objects)[0].args.as_ref().expect("args")[0];
        assert!(setup_args.contains("cp '/var/run/kube-executor/secrets/file.0' '/job/input.json'"));
        assert!(setup_args.contains("TZ=UTC0 touch -m -t 202405011000.00 '/job/input.json'"));
        let volume = pod_spec(&objects)
            .volumes
            .as_deref()
            .expect("volumes")
            .iter()
            .find(|v| v.name == "job-secrets")
            .expect("secret volume");
        let keys: Vec<&str> = volume
            .secret
            .as_ref()
            .expect("secret source")
            .items
            .as_deref()
            .expect("items")
            .iter()
            .map(|i| i.key.as_str())
            .collect();
        assert_eq!(
            keys,
            ["file.0", "file.1", "file.2", "file.3"],
            "token and env values are not files"
        );
    }

    #[test]
    fn every_object_is_labelled_and_annotated() {
        let mut cfg = test_config();
        cfg.volume_type = VolumeType::Pvc;
        cfg.job_annotations = BTreeMap::from([("team".to_string(), "batches".to_string())]);
        cfg.pod_annotations = BTreeMap::from([("sidecar.istio.io/inject".to_string(), "false".to_string())]);
        let mut job = batches_job();
        job.docker_auth_config = Some(Hidden::new(
            serde_json::json!({"auths": {"r.example": {"auth": "dTpw"}}}),
        ));
        let objects = build(&job, &[], &cfg).expect("buildable");
        let template = objects
            .job
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .expect("template meta");
        let metas = [
            &objects.job.metadata,
            template,
            &objects.secret.metadata,
            &objects.pull_secret.as_ref().expect("pull secret").metadata,
            &objects.pvc.as_ref().expect("pvc").metadata,
        ];
        let expected = labels::job_labels("exec-prod", "batches", 91562);
        for meta in metas {
            assert_eq!(meta.labels.as_ref(), Some(&expected));
            assert_eq!(
                meta.annotations.as_ref().expect("annotations")[labels::EXECUTOR_NAME_ANNOTATION],
                "exec-host-1-7d2c"
            );
        }
        assert_eq!(
            objects.job.metadata.annotations.as_ref().expect("annotations")["team"],
            "batches"
        );
        let pod_annotations = template.annotations.as_ref().expect("annotations");
        assert_eq!(pod_annotations["sidecar.istio.io/inject"], "false");
        assert_eq!(pod_annotations[SAFE_TO_EVICT_ANNOTATION], "false");
        assert_eq!(objects.job.metadata.namespace.as_deref(), Some("sg-executors"));
        let spec = objects.job.spec.as_ref().expect("spec");
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.ttl_seconds_after_finished, Some(600));
        cfg.ttl_seconds_after_finished = None;
        let objects = build(&job, &[], &cfg).expect("buildable");
        assert_eq!(
            objects
                .job
                .spec
                .as_ref()
                .expect("spec")
                .ttl_seconds_after_finished,
            None
        );
    }

    #[test]
    fn node_pinning_by_affinity_merges_into_the_configured_term() {
        let mut cfg = test_config();
        cfg.node_name = Some("node-a".into());
        cfg.node_required_affinity_match_expressions = vec![NodeSelectorRequirement {
            key: "pool".into(),
            operator: "In".into(),
            values: Some(vec!["executors".into()]),
        }];
        let objects = build(&batches_job(), &[], &cfg).expect("buildable");
        let pod = pod_spec(&objects);
        assert_eq!(pod.node_name, None);
        let affinity = pod.affinity.as_ref().expect("affinity");
        let terms = &affinity
            .node_affinity
            .as_ref()
            .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
            .expect("required node affinity")
            .node_selector_terms;
        assert_eq!(terms.len(), 1, "one term: its requirements are ANDed");
        assert_eq!(
            terms[0].match_expressions.as_deref().expect("expressions")[0].key,
            "pool"
        );
        let fields = terms[0].match_fields.as_deref().expect("fields");
        assert_eq!(fields.len(), 1);
        assert_eq!(
            (
                fields[0].key.as_str(),
                fields[0].operator.as_str(),
                fields[0].values.as_deref()
            ),
            ("metadata.name", "In", Some(&["node-a".to_string()][..]))
        );
        assert!(affinity.pod_affinity.is_none() && affinity.pod_anti_affinity.is_none());
    }

    #[test]
    fn node_pinning_by_node_name_sets_spec_node_name() {
        let mut cfg = test_config();
        cfg.node_name = Some("node-a".into());
        cfg.node_pinning = NodePinning::NodeName;
        let objects = build(&batches_job(), &[], &cfg).expect("buildable");
        let pod = pod_spec(&objects);
        assert_eq!(pod.node_name.as_deref(), Some("node-a"));
        assert!(pod.affinity.is_none(), "no affinity without configuration");
    }

    #[test]
    fn node_affinity_alone_emits_no_empty_pod_affinity_terms() {
        let mut cfg = test_config();
        cfg.node_required_affinity_match_fields = vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "NotIn".into(),
            values: Some(vec!["bad-node".into()]),
        }];
        let objects = build(&batches_job(), &[], &cfg).expect("buildable");
        let json = serde_json::to_value(pod_spec(&objects)).expect("serializable");
        assert!(json["affinity"]["nodeAffinity"].is_object());
        assert!(json["affinity"].get("podAffinity").is_none(), "{json}");
        assert!(json["affinity"].get("podAntiAffinity").is_none(), "{json}");
        assert!(!json.to_string().contains("\"topologyKey\":\"\""));

        let term = PodAffinityTerm {
            topology_key: "kubernetes.io/hostname".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("app".to_string(), "executor".to_string())])),
                ..Default::default()
            }),
            ..Default::default()
        };
        cfg.pod_anti_affinity = vec![term.clone()];
        let objects = build(&batches_job(), &[], &cfg).expect("buildable");
        let affinity = pod_spec(&objects).affinity.clone().expect("affinity");
        assert!(affinity.pod_affinity.is_none());
        assert_eq!(
            affinity
                .pod_anti_affinity
                .and_then(|a| a.required_during_scheduling_ignored_during_execution),
            Some(vec![term])
        );
    }

    #[test]
    fn run_as_user_group_and_fs_group_are_applied() {
        let mut cfg = test_config();
        cfg.fs_group = None;
        let objects = build(&batches_job(), &[], &cfg).expect("buildable");
        assert!(
            pod_spec(&objects).security_context.is_none(),
            "nothing configured, nothing set"
        );
        cfg.fs_group = Some(1000);
        let objects = build(&batches_job(), &[], &cfg).expect("buildable");
        let context = pod_spec(&objects)
            .security_context
            .as_ref()
            .expect("security context");
        assert_eq!(
            (context.run_as_user, context.fs_group),
            (None, Some(1000)),
            "fsGroup alone"
        );
        cfg.run_as_user = Some(1001);
        cfg.run_as_group = Some(1002);
        cfg.fs_group = Some(1000);
        let objects = build(&batches_job(), &[], &cfg).expect("buildable");
        let context = pod_spec(&objects)
            .security_context
            .as_ref()
            .expect("security context");
        assert_eq!(
            (context.run_as_user, context.run_as_group, context.fs_group),
            (Some(1001), Some(1002), Some(1000))
        );
    }

    #[test]
    fn pvc_mode_creates_a_claim_and_mounts_it() {
        let mut cfg = test_config();
        cfg.volume_type = VolumeType::Pvc;
        cfg.volume_size = Quantity("20Gi".into());
        let objects = build(&batches_job(), &[], &cfg).expect("buildable");
        let pvc = objects.pvc.as_ref().expect("pvc");
        assert_eq!(
            pvc.metadata.name.as_deref(),
            Some("sg-executor-job-batches-91562-pvc")
        );
        let spec = pvc.spec.as_ref().expect("pvc spec");
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_string()]));
        assert_eq!(spec.storage_class_name, None, "the cluster default class");
        assert_eq!(
            spec.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .expect("requests")["storage"]
                .0,
            "20Gi"
        );
        let volume = &pod_spec(&objects).volumes.as_deref().expect("volumes")[0];
        assert_eq!(volume.name, "job-data");
        assert!(volume.empty_dir.is_none());
        assert_eq!(
            volume
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("sg-executor-job-batches-91562-pvc")
        );

        let objects = build(&batches_job(), &[], &test_config()).expect("buildable");
        assert!(objects.pvc.is_none());
        let volume = &pod_spec(&objects).volumes.as_deref().expect("volumes")[0];
        assert_eq!(
            volume
                .empty_dir
                .as_ref()
                .and_then(|e| e.size_limit.as_ref())
                .map(|q| q.0.as_str()),
            Some("5Gi")
        );
    }

    #[test]
    fn pull_secret_comes_from_the_docker_auth_config() {
        let mut cfg = test_config();
        cfg.image_pull_secrets = vec!["registry-a".into()];
        let mut job = batches_job();
        let auth = serde_json::json!({"auths": {"registry.example.com": {"auth": "dXNlcjpwYXNz"}}});
        job.docker_auth_config = Some(Hidden::new(auth.clone()));
        let objects = build(&job, &[], &cfg).expect("buildable");
        let pull = objects.pull_secret.as_ref().expect("pull secret");
        assert_eq!(
            pull.metadata.name.as_deref(),
            Some("sg-executor-job-batches-91562-pull")
        );
        assert_eq!(pull.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
        let stored: serde_json::Value =
            serde_json::from_slice(&pull.data.as_ref().expect("data")[".dockerconfigjson"].0).expect("JSON");
        assert_eq!(stored, auth);
        let refs: Vec<&str> = pod_spec(&objects)
            .image_pull_secrets
            .as_deref()
            .expect("pull secrets")
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(refs, ["registry-a", "sg-executor-job-batches-91562-pull"]);
        assert!(
            !serde_json::to_string(&objects.job)
                .expect("json")
                .contains("dXNlcjpwYXNz")
        );

        for empty in [
            serde_json::json!({"auths": {}}),
            serde_json::json!({"auths": null}),
            serde_json::json!({}),
        ] {
            job.docker_auth_config = Some(Hidden::new(empty));
            assert!(build(&job, &[], &cfg).expect("buildable").pull_secret.is_none());
        }
        job.docker_auth_config = Some(Hidden::new(serde_json::json!({"auths": ["x"]})));
        let err = build(&job, &[], &cfg).err().expect("auths must be an object");
        assert!(matches!(err, SpecError::InvalidDockerAuthConfig { .. }), "{err}");
    }

    #[test]
    fn cli_steps_are_rejected_with_the_fix() {
        let mut job = batches_job();
        job.cli_steps = vec![CliStep {
            key: "batch-exec".into(),
            command: vec!["batch".into(), "exec".into()],
            dir: ".".into(),
            env: Vec::new(),
        }];
        let err = build(&job, &[], &test_config())
            .err()
            .expect("src-cli steps cannot run");
        assert!(matches!(err, SpecError::CliStepsUnsupported));
        let message = err.to_string();
        assert!(
            message.contains("batchChanges.nativeServerSideExecution"),
            "{message}"
        );
        assert!(message.contains("native-ssbc-execution"), "{message}");
    }

    #[test]
    fn paths_leaving_the_workspace_are_rejected_by_name() {
        let cfg = test_config();
        for bad in ["../outside.json", "/etc/passwd", "a/../../b"] {
            let file = WorkspaceFile {
                path: bad.into(),
                ..input_file()
            };
            let err = build(&batches_job(), &[file], &cfg)
                .err()
                .expect("escaping path rejected");
            assert!(matches!(err, SpecError::PathOutsideWorkspace { .. }), "{err}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let mut job = batches_job();
        job.docker_steps[1].dir = "../up".into();
        let err = build(&job, &[], &cfg).err().expect("escaping dir rejected");
        assert!(err.to_string().contains("docker step 1 dir \"../up\""), "{err}");
        let mut job = batches_job();
        job.repository_directory = "/abs".into();
        let err = build(&job, &[], &cfg).err().expect("escaping repo dir rejected");
        assert!(err.to_string().contains("repository directory \"/abs\""), "{err}");
        let file = WorkspaceFile {
            path: "./".into(),
            ..input_file()
        };
        assert!(matches!(
            build(&batches_job(), &[file], &cfg),
            Err(SpecError::FilePathEmpty { .. })
        ));
    }

    #[test]
    fn malformed_step_env_is_rejected_without_echoing_it() {
        let mut job = batches_job();
        job.docker_steps[2].env = vec!["OK=1".into(), "hunter2".into()];
        let err = build(&job, &[], &test_config()).err().expect("no '=' rejected");
        let message = err.to_string();
        assert!(message.contains("docker step 2 env entry 1"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn container_names_are_valid_unique_dns_labels() {
        let mut job = batches_job();
        job.docker_steps = vec![
            step("", "a", &[], "", &[]),
            step("Pre_Index.0", "a", &[], "", &[]),
            step("pre-index.0", "a", &[], "", &[]),
            step(&"very.long.key".repeat(8), "a", &[], "", &[]),
            step(&"very.long.key".repeat(8), "a", &[], "", &[]),
        ];
        let objects = build(&job, &[], &test_config()).expect("buildable");
        let names: Vec<&str> = init_containers(&objects)[1..]
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names[0], "step-kubernetes-0");
        assert_eq!(names[1], "step-kubernetes-pre-index-0");
        assert_eq!(names[2], "step-kubernetes-pre-index-0-2");
        assert!(names[3].len() <= 63 && names[4].len() <= 63);
        assert_ne!(names[3], names[4]);
        for name in &names {
            assert!(labels::is_dns_label(name), "{name}");
        }
        assert_eq!(objects.steps[1].key, "step.kubernetes.0");
        assert_eq!(
            objects.steps[2].key, "step.kubernetes.Pre_Index.0",
            "log keys keep the step key"
        );
        // Same input, same names.
        let again = build(&job, &[], &test_config()).expect("buildable");
        assert_eq!(again.steps, objects.steps);
    }

    #[test]
    fn step_without_image_is_rejected() {
        let mut job = batches_job();
        job.docker_steps[0].image.clear();
        let err = build(&job, &[], &test_config()).err().expect("no image");
        assert!(err.to_string().contains("docker step 0"), "{err}");
    }

    #[test]
    fn oversized_workspace_is_rejected_before_the_api_server_does() {
        let big = WorkspaceFile {
            path: "cache/big.json".into(),
            content: vec![b'x'; MAX_SECRET_BYTES],
            modified_at: None,
        };
        let err = build(&batches_job(), &[big], &test_config())
            .err()
            .expect("too large");
        assert!(matches!(err, SpecError::SecretTooLarge { .. }), "{err}");
    }

    #[test]
    fn invalid_instance_id_or_queue_is_rejected() {
        let job = batches_job();
        let ctx = JobContext {
            job: &job,
            queue: "batches",
            executor_name: "e",
            instance_id: "not a label value",
            frontend_url: "https://sg.example.com",
            files: &[],
        };
        assert!(matches!(
            build_job_objects(&ctx, &test_config()),
            Err(SpecError::InvalidLabelValue { .. })
        ));
        assert!(matches!(
            build_in_queue(&job, "Batches", &[], &test_config()),
            Err(SpecError::InvalidJobName { .. })
        ));
    }

    #[test]
    fn container_names_map_back_to_log_entries() {
        let objects = build(&batches_job(), &[], &test_config()).expect("buildable");
        let (key, command) = entry_for_container(&objects.steps, "setup-workspace");
        assert_eq!((key.as_ref(), command.len()), ("setup.workspace", 0));
        let (key, command) = entry_for_container(&objects.steps, "step-kubernetes-step-0-post");
        assert_eq!(key, "step.kubernetes.step.0.post");
        assert_eq!(command[0], "/bin/sh");
        let (key, _) = entry_for_container(&objects.steps, "main");
        assert_eq!(key, "main");
        let (key, command) = entry_for_container(&objects.steps, "istio-proxy");
        assert_eq!((key.as_ref(), command.len()), ("istio.proxy", 0));
    }

    #[test]
    fn owner_reference_patch_needs_a_created_job() {
        let objects = build(&batches_job(), &[], &test_config()).expect("buildable");
        assert_eq!(
            owner_reference_patch(&objects.job),
            None,
            "no UID before creation"
        );
        let mut created = objects.job.clone();
        created.metadata.uid = Some("4b1e5c7e-0000-4000-8000-000000000001".into());
        let patch = owner_reference_patch(&created).expect("patch");
        assert_eq!(
            patch,
            serde_json::json!({"metadata": {"ownerReferences": [{
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": "sg-executor-job-batches-91562",
                "uid": "4b1e5c7e-0000-4000-8000-000000000001",
                "controller": false,
                "blockOwnerDeletion": false
            }]}})
        );
    }

    // === golden objects ===

    fn golden_list(objects: &JobObjects) -> serde_json::Value {
        let mut items = vec![serde_json::to_value(&objects.secret).expect("serializable")];
        if let Some(pull) = &objects.pull_secret {
            items.push(serde_json::to_value(pull).expect("serializable"));
        }
        if let Some(pvc) = &objects.pvc {
            items.push(serde_json::to_value(pvc).expect("serializable"));
        }
        items.push(serde_json::to_value(&objects.job).expect("serializable"));
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
    }

    fn check_golden(name: &str, objects: &JobObjects) {
        let list = golden_list(objects);
        for item in list["items"].as_array().expect("items") {
            assert!(
                item["apiVersion"].is_string() && item["kind"].is_string(),
                "{item}"
            );
        }
        let rendered = serde_json::to_string_pretty(&list).expect("serializable") + "\n";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(format!("{name}.json"));
        if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
            std::fs::create_dir_all(path.parent().expect("golden dir")).expect("golden dir");
            std::fs::write(&path, &rendered).expect("golden file writable");
            return;
        }
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
        assert!(
            committed == rendered,
            "{} differs from the built objects; review the change and run with UPDATE_GOLDEN=1\n--- built:\n{rendered}",
            path.display()
        );
    }

    #[test]
    fn golden_minimal_single_queue_job() {
        let mut job = batches_job();
        job.docker_steps.truncate(1);
        check_golden(
            "minimal",
            &build(&job, &[input_file()], &test_config()).expect("buildable"),
        );
    }

    #[test]
    fn golden_full_options() {
        let mut cfg = test_config();
        cfg.namespace = "executors".into();
        cfg.node_name = Some("node-a".into());
        cfg.node_selector = BTreeMap::from([("pool".to_string(), "executors".to_string())]);
        cfg.node_required_affinity_match_expressions = vec![NodeSelectorRequirement {
            key: "topology.kubernetes.io/zone".into(),
            operator: "In".into(),
            values: Some(vec!["eu-west-1a".into(), "eu-west-1b".into()]),
        }];
        cfg.node_required_affinity_match_fields = vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "NotIn".into(),
            values: Some(vec!["node-broken".into()]),
        }];
        let term = |app: &str| PodAffinityTerm {
            topology_key: "kubernetes.io/hostname".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("app".to_string(), app.to_string())])),
                ..Default::default()
            }),
            ..Default::default()
        };
        cfg.pod_affinity = vec![term("cache")];
        cfg.pod_anti_affinity = vec![term("database")];
        cfg.tolerations = vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("executors".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }];
        cfg.request_cpu = Some(Quantity("1".into()));
        cfg.limit_cpu = Some(Quantity("4".into()));
        cfg.request_memory = Some(Quantity("2Gi".into()));
        cfg.limit_memory = Some(Quantity("8Gi".into()));
        cfg.job_deadline_seconds = 3600;
        cfg.run_as_user = Some(1001);
        cfg.run_as_group = Some(1001);
        cfg.fs_group = Some(1000);
        cfg.job_annotations = BTreeMap::from([("example.com/team".to_string(), "platform".to_string())]);
        cfg.pod_annotations = BTreeMap::from([("sidecar.istio.io/inject".to_string(), "false".to_string())]);
        cfg.image_pull_secrets = vec!["registry-mirror".into()];
        cfg.image_pull_policy = "Always".into();
        cfg.volume_type = VolumeType::Pvc;
        cfg.volume_size = Quantity("20Gi".into());
        cfg.additional_volumes = vec![Volume {
            name: "ca-bundle".into(),
            config_map: Some(k8s_openapi::api::core::v1::ConfigMapVolumeSource {
                name: "ca-bundle".into(),
                ..Default::default()
            }),
            ..Default::default()
        }];
        cfg.additional_volume_mounts = vec![VolumeMount {
            name: "ca-bundle".into(),
            mount_path: "/etc/ssl/custom".into(),
            read_only: Some(true),
            ..Default::default()
        }];
        cfg.git_ca_cert = Some("/etc/ssl/custom/ca.pem".into());
        cfg.host_network = true;
        cfg.job_service_account = Some("executor-job".into());
        cfg.automount_service_account_token = true;
        cfg.ttl_seconds_after_finished = Some(300);
        let mut job = batches_job();
        job.fetch_tags = true;
        job.shallow_clone = false;
        job.sparse_checkout = vec!["src/*".into(), "docs/".into()];
        job.docker_auth_config = Some(Hidden::new(
            serde_json::json!({"auths": {"registry.example.com": {"auth": "dXNlcjpwYXNz"}}}),
        ));
        check_golden(
            "full-options",
            &build(&job, &[input_file()], &cfg).expect("buildable"),
        );
    }

    #[test]
    fn golden_multi_queue_job_pinned_by_node_name() {
        let mut cfg = test_config();
        cfg.node_name = Some("node-b".into());
        cfg.node_pinning = NodePinning::NodeName;
        let job = Job {
            id: 77,
            queue: "codeintel".into(),
            repository_name: "github.com/sourcegraph/indexed".into(),
            repository_directory: String::new(),
            docker_steps: vec![
                step(
                    "indexer",
                    "sourcegraph/scip-go:latest",
                    &["scip-go --no-animation"],
                    "",
                    &[],
                ),
                step(
                    "upload",
                    "sourcegraph/src-cli:latest",
                    &["src code-intel upload -no-progress -repo=github.com/sourcegraph/indexed"],
                    "",
                    &[
                        "SRC_ENDPOINT=https://sourcegraph.example.com",
                        "SRC_HEADER_AUTHORIZATION=token-executor codeintel-access-token",
                    ],
                ),
            ],
            ..batches_job()
        };
        let objects = build_in_queue(&job, "codeintel", &[], &cfg).expect("buildable");
        assert!(
            !serde_json::to_string(&objects.job)
                .expect("json")
                .contains("codeintel-access-token"),
            "codeintel's upload token stays in the Secret"
        );
        check_golden("multi-queue-node-name", &objects);
    }
}
