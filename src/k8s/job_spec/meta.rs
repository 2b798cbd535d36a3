//! Metadata shared by every object of one job, and the Job and PVC objects around the pod.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::{Job as KubeJob, JobSpec},
        core::v1::{
            PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec,
            VolumeResourceRequirements,
        },
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};

use super::{JobContext, SAFE_TO_EVICT_ANNOTATION, labels};
use crate::config::{KubernetesConfig, VolumeType};

/// Names, namespace, labels and annotations of one job's objects.
pub(super) struct JobMeta<'a> {
    ctx: JobContext<'a>,
    cfg: &'a KubernetesConfig,
    /// The Job's name; the other objects' names derive from it.
    pub name: String,
}

impl<'a> JobMeta<'a> {
    pub(super) fn new(ctx: JobContext<'a>, cfg: &'a KubernetesConfig, name: String) -> Self {
        Self { ctx, cfg, name }
    }

    /// Metadata of a Secret or the PVC: the job's labels and the executor annotation, and the
    /// executor's pod as owner until the Job takes over (the owner patch replaces the list): an
    /// executor lost between creating them and creating its Job must not leave them behind, and a
    /// replacement pod of a DaemonSet, with another name, never sweeps the lost pod's instance.
    pub(super) fn owned(&self, object_name: String) -> ObjectMeta {
        let mut metadata = self.object(object_name, self.executor_annotation());
        metadata.owner_references = self.pod_owner_references();
        metadata
    }

    /// The Job that runs `pod_spec` once.
    pub(super) fn job(&self, pod_spec: PodSpec) -> KubeJob {
        let mut job_annotations = self.cfg.job_annotations.clone();
        job_annotations.extend(self.executor_annotation());
        let mut metadata = self.object(self.name.clone(), job_annotations);
        metadata.owner_references = self.pod_owner_references();
        KubeJob {
            metadata,
            spec: Some(JobSpec {
                // A retry would start over on a workspace the failed attempt already changed.
                backoff_limit: Some(0),
                ttl_seconds_after_finished: self.cfg.ttl_seconds_after_finished,
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(self.labels()),
                        annotations: Some(self.pod_annotations()),
                        ..Default::default()
                    }),
                    spec: Some(pod_spec),
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The workspace claim, with `KUBERNETES_JOB_VOLUME_TYPE=pvc` only.
    pub(super) fn pvc(&self) -> Option<PersistentVolumeClaim> {
        (self.cfg.volume_type == VolumeType::Pvc).then(|| PersistentVolumeClaim {
            metadata: self.owned(labels::pvc_name(&self.name)),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        self.cfg.volume_size.clone(),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// The executor's own pod as the owner, when it is known.
    fn pod_owner_references(&self) -> Option<Vec<OwnerReference>> {
        self.cfg.owner_pod.as_ref().map(|pod| {
            vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                // Not the controller (the Job controller runs it), and no blocking: that needs
                // permission to update the pod's finalizers.
                controller: Some(false),
                block_owner_deletion: Some(false),
            }]
        })
    }

    fn object(&self, object_name: String, annotations: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(object_name),
            namespace: Some(self.cfg.namespace.clone()),
            labels: Some(self.labels()),
            annotations: Some(annotations),
            ..Default::default()
        }
    }

    fn labels(&self) -> BTreeMap<String, String> {
        labels::job_labels(self.ctx.instance_id, self.ctx.queue, self.ctx.job.id)
    }

    fn executor_annotation(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(
            labels::EXECUTOR_NAME_ANNOTATION.to_string(),
            self.ctx.executor_name.to_string(),
        )])
    }

    fn pod_annotations(&self) -> BTreeMap<String, String> {
        let mut annotations = self.cfg.pod_annotations.clone();
        // An operator may deliberately allow eviction; only the default is ours.
        annotations
            .entry(SAFE_TO_EVICT_ANNOTATION.into())
            .or_insert_with(|| "false".into());
        annotations.extend(self.executor_annotation());
        annotations
    }
}
