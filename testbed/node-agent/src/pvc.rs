//! Minimal volume provisioning: hostPath PVs for pending claims without a storage class (or class
//! "local-test"), and removal of those PVs once their claim is gone.

use std::{collections::BTreeMap, path::PathBuf};

use futures_util::StreamExt;
use k8s_openapi::{
    api::core::v1::{
        HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
    },
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ObjectMeta, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use tokio_util::sync::CancellationToken;

use crate::volumes::claims_dir;

/// Storage class (besides none) this provisioner serves.
pub const STORAGE_CLASS: &str = "local-test";
const PROVISIONED_LABEL: &str = "node-agent.testbed/provisioned";

/// The PV this agent would create for `claim`, or `None` if the claim is not ours to serve.
pub fn volume_for_claim(
    claim: &PersistentVolumeClaim,
    state_dir: &std::path::Path,
) -> Option<PersistentVolume> {
    let spec = claim.spec.as_ref()?;
    let class = spec.storage_class_name.clone().unwrap_or_default();
    if !(class.is_empty() || class == STORAGE_CLASS) {
        return None;
    }
    if spec.volume_name.as_ref().is_some_and(|v| !v.is_empty()) {
        return None;
    }
    if claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| phase != "Pending")
    {
        return None;
    }
    if claim.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let uid = claim.metadata.uid.clone()?;
    let storage = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage").cloned())
        .unwrap_or_else(|| Quantity("1Gi".into()));
    let path: PathBuf = claims_dir(state_dir).join(&uid);
    Some(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(format!("pvc-{uid}")),
            labels: Some(BTreeMap::from([(
                PROVISIONED_LABEL.to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_string(), storage)])),
            access_modes: spec.access_modes.clone(),
            storage_class_name: Some(class),
            persistent_volume_reclaim_policy: Some("Delete".into()),
            volume_mode: spec.volume_mode.clone(),
            host_path: Some(HostPathVolumeSource {
                path: path.display().to_string(),
                type_: None,
            }),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                name: claim.metadata.name.clone(),
                namespace: claim.metadata.namespace.clone(),
                uid: Some(uid),
                resource_version: claim.metadata.resource_version.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    })
}

/// Watches claims and provisions volumes until cancelled.
pub async fn provision(client: Client, state_dir: PathBuf, cancel: CancellationToken) {
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let stream = watcher(claims, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => return,
            next = stream.next() => next,
        };
        let claim = match next {
            Some(Ok(claim)) => claim,
            Some(Err(error)) => {
                tracing::warn!(%error, "claim watch failed; retrying");
                continue;
            }
            None => return,
        };
        let Some(volume) = volume_for_claim(&claim, &state_dir) else {
            continue;
        };
        if let Some(path) = volume.spec.as_ref().and_then(|s| s.host_path.as_ref())
            && let Err(error) = std::fs::create_dir_all(&path.path)
        {
            tracing::warn!(%error, path = %path.path, "cannot create claim directory");
            continue;
        }
        match volumes.create(&PostParams::default(), &volume).await {
            Ok(created) => {
                tracing::info!(pv = ?created.metadata.name, claim = ?claim.metadata.name, "provisioned volume")
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => tracing::warn!(%error, claim = ?claim.metadata.name, "creating volume failed"),
        }
    }
}

/// Deletes provisioned volumes whose claim is gone (phase Released or Failed) and their directories.
pub async fn reclaim(client: Client, cancel: CancellationToken) {
    let volumes: Api<PersistentVolume> = Api::all(client);
    let config = watcher::Config::default().labels(&format!("{PROVISIONED_LABEL}=true"));
    let stream = watcher(volumes.clone(), config)
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => return,
            next = stream.next() => next,
        };
        let volume = match next {
            Some(Ok(volume)) => volume,
            Some(Err(error)) => {
                tracing::warn!(%error, "volume watch failed; retrying");
                continue;
            }
            None => return,
        };
        let phase = volume
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or_default();
        if !matches!(phase, "Released" | "Failed") || volume.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(name) = volume.metadata.name.clone() else {
            continue;
        };
        if let Some(path) = volume.spec.as_ref().and_then(|s| s.host_path.as_ref()) {
            let _ = std::fs::remove_dir_all(&path.path);
        }
        match volumes.delete(&name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(pv = %name, "deleted released volume"),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => tracing::warn!(%error, pv = %name, "deleting volume failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(spec: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "ns", "uid": "c-1"},
            "spec": spec,
            "status": {"phase": "Pending"}
        }))
        .expect("test claim is valid")
    }

    #[test]
    fn classless_claims_get_a_host_path_volume() {
        let pvc =
            claim(json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}));
        let pv = volume_for_claim(&pvc, std::path::Path::new("/state")).expect("served");
        let spec = pv.spec.expect("has spec");
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-c-1"));
        assert_eq!(
            spec.capacity.and_then(|c| c.get("storage").cloned()),
            Some(Quantity("2Gi".into()))
        );
        assert_eq!(spec.host_path.map(|h| h.path), Some("/state/pvc/c-1".into()));
        assert_eq!(spec.claim_ref.and_then(|c| c.uid), Some("c-1".into()));
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_string()]));
    }

    #[test]
    fn other_classes_and_bound_claims_are_left_alone() {
        let other = claim(json!({"storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}}}));
        assert!(volume_for_claim(&other, std::path::Path::new("/s")).is_none());
        let bound = claim(json!({"volumeName": "pv-x", "resources": {"requests": {"storage": "1Gi"}}}));
        assert!(volume_for_claim(&bound, std::path::Path::new("/s")).is_none());
        let ours =
            claim(json!({"storageClassName": "local-test", "resources": {"requests": {"storage": "1Gi"}}}));
        assert!(volume_for_claim(&ours, std::path::Path::new("/s")).is_some());
    }
}
