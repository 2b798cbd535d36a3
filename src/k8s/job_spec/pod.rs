//! Pod builders of one job: containers, mounts, volumes, resources, affinity and security context.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Affinity, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath, LocalObjectReference,
        NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
        PersistentVolumeClaimVolumeSource, PodAffinity, PodAntiAffinity, PodSecurityContext, PodSpec,
        ResourceRequirements, SecretKeySelector, SecretVolumeSource, Volume, VolumeMount,
    },
    apimachinery::pkg::api::resource::Quantity,
};

use super::{
    JOB_DATA_VOLUME, MAIN_CONTAINER, SECRETS_VOLUME, SETUP_CONTAINER, SETUP_PROGRAM_KEY, TOKEN_KEY, script,
    secret::SecretPlan, steps::StepPlan,
};
use crate::config::{KubernetesConfig, NodePinning};

/// File mode of the workspace files in the Secret volume.
///
/// World-readable because the setup container may run as any user (`KUBERNETES_RUN_AS_USER`, or
/// the image's user when unset) and `fsGroup` may be unset, while the volume files belong to root.
/// Nothing else can see them: the volume is per-job, mounted only in the setup container, which
/// copies the files into the workspace anyway.
const SECRET_FILE_MODE: i32 = 0o444;

/// What the pod of one job is built from, besides its steps.
pub(super) struct PodPlan<'a> {
    pub cfg: &'a KubernetesConfig,
    pub secret: &'a SecretPlan,
    /// The workspace claim; `None` puts the workspace in an emptyDir.
    pub pvc_name: Option<String>,
    /// The job's own pull Secret, used after the configured ones.
    pub pull_secret_name: Option<String>,
}

impl PodPlan<'_> {
    /// The pod: the setup container, then one init container per step, then main.
    pub(super) fn spec(&self, steps: &[StepPlan<'_>]) -> PodSpec {
        let cfg = self.cfg;
        let mut init_containers = vec![self.setup_container()];
        init_containers.extend(steps.iter().map(|step| self.step_container(step)));
        PodSpec {
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
            image_pull_secrets: non_empty(self.image_pull_secrets()),
            security_context: security_context(cfg),
            init_containers: Some(init_containers),
            containers: vec![self.main_container()],
            volumes: Some(self.volumes()),
            ..Default::default()
        }
    }

    /// The only container that sees the job token and the Secret's files.
    fn setup_container(&self) -> Container {
        Container {
            env: Some(vec![self.secret_env(TOKEN_KEY, TOKEN_KEY)]),
            volume_mounts: Some(self.mounts(true)),
            ..self.container(
                SETUP_CONTAINER,
                &self.cfg.step_image,
                &script::run_setup_program(SETUP_PROGRAM_KEY),
                script::JOB_DIR.into(),
            )
        }
    }

    fn step_container(&self, step: &StepPlan<'_>) -> Container {
        let mut env: Vec<EnvVar> = step
            .env
            .iter()
            .map(|entry| self.secret_env(entry.name, &entry.secret_key))
            .collect();
        env.push(EnvVar {
            name: "EXECUTOR_ADD_SAFE".into(),
            value: Some("false".into()),
            ..Default::default()
        });
        Container {
            env: Some(env),
            ..self.container(
                &step.container_name,
                step.image,
                &step.container_args(),
                step.working_dir.clone(),
            )
        }
    }

    fn main_container(&self) -> Container {
        self.container(
            MAIN_CONTAINER,
            &self.cfg.step_image,
            "echo 'complete'",
            script::JOB_DIR.into(),
        )
    }

    fn container(&self, name: &str, image: &str, program: &str, working_dir: String) -> Container {
        let cfg = self.cfg;
        Container {
            name: name.into(),
            image: Some(image.into()),
            image_pull_policy: (!cfg.image_pull_policy.is_empty()).then(|| cfg.image_pull_policy.clone()),
            command: Some(vec!["sh".into(), "-c".into()]),
            args: Some(vec![script::container_program(program)]),
            working_dir: Some(working_dir),
            resources: resources(cfg),
            volume_mounts: Some(self.mounts(false)),
            ..Default::default()
        }
    }

    fn mounts(&self, with_secrets: bool) -> Vec<VolumeMount> {
        let mut mounts = vec![VolumeMount {
            name: JOB_DATA_VOLUME.into(),
            mount_path: script::JOB_DIR.into(),
            ..Default::default()
        }];
        if with_secrets {
            mounts.push(VolumeMount {
                name: SECRETS_VOLUME.into(),
                mount_path: script::SECRETS_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            });
        }
        mounts.extend(self.cfg.additional_volume_mounts.iter().cloned());
        mounts
    }

    fn volumes(&self) -> Vec<Volume> {
        let job_data = Volume {
            name: JOB_DATA_VOLUME.into(),
            persistent_volume_claim: self.pvc_name.as_ref().map(|claim_name| {
                PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name.clone(),
                    ..Default::default()
                }
            }),
            empty_dir: self.pvc_name.is_none().then(|| EmptyDirVolumeSource {
                size_limit: Some(self.cfg.volume_size.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        [job_data, self.secrets_volume()]
            .into_iter()
            .chain(self.cfg.additional_volumes.iter().cloned())
            .collect()
    }

    /// The setup program and the staged files, for the setup container.
    fn secrets_volume(&self) -> Volume {
        let keys = std::iter::once(SETUP_PROGRAM_KEY)
            .chain(self.secret.staged().iter().map(|file| file.secret_key.as_str()));
        Volume {
            name: SECRETS_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(self.secret.name().to_string()),
                // Only the files: the token and env values stay out of the filesystem.
                items: Some(
                    keys.map(|key| KeyToPath {
                        key: key.to_string(),
                        path: key.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ),
                default_mode: Some(SECRET_FILE_MODE),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn image_pull_secrets(&self) -> Vec<LocalObjectReference> {
        self.cfg
            .image_pull_secrets
            .iter()
            .chain(&self.pull_secret_name)
            .map(|secret| LocalObjectReference { name: secret.clone() })
            .collect()
    }

    /// Env var `name` read from the job Secret's `key`.
    fn secret_env(&self, name: &str, key: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: self.secret.name().into(),
                    key: key.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
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

fn non_empty<T>(items: Vec<T>) -> Option<Vec<T>> {
    (!items.is_empty()).then_some(items)
}

fn non_empty_map<K, V>(map: BTreeMap<K, V>) -> Option<BTreeMap<K, V>> {
    (!map.is_empty()).then_some(map)
}
