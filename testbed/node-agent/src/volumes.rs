//! Pod volumes as host directories: emptyDir, PVC, hostPath, and Secret/ConfigMap/downwardAPI/projected
//! contents written as files; plus the bind mounts a container gets from its volumeMounts.

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
};
use kube::{Api, Client};

use crate::{env, spawn::BindMount};

/// Why a pod's volumes cannot be set up yet; the pod stays in ContainerCreating and this is retried.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("MountVolume.SetUp failed for volume \"{volume}\": secret \"{name}\" not found")]
    SecretNotFound { volume: String, name: String },
    #[error("MountVolume.SetUp failed for volume \"{volume}\": configmap \"{name}\" not found")]
    ConfigMapNotFound { volume: String, name: String },
    #[error("MountVolume.SetUp failed for volume \"{volume}\": key \"{key}\" not found in {kind} \"{name}\"")]
    KeyNotFound {
        volume: String,
        kind: &'static str,
        name: String,
        key: String,
    },
    #[error("persistentvolumeclaim \"{0}\" not found")]
    ClaimNotFound(String),
    #[error("volume \"{volume}\": reading {what} failed: {source}")]
    Api {
        volume: String,
        what: String,
        source: kube::Error,
    },
    #[error("volume \"{volume}\": writing {path} failed: {source}")]
    Write {
        volume: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("volume \"{volume}\": downward API field: {source}")]
    Field { volume: String, source: env::EnvError },
    #[error("volumeMount \"{0}\" names no volume of the pod")]
    UnknownVolume(String),
}

/// A file to write into a volume: relative path, contents, optional mode.
type VolumeFile = (String, Vec<u8>, Option<i32>);

/// Directory holding the per-claim directories of provisioned PVs.
pub fn claims_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("pvc")
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// Materialises every volume of `pod` under `pod_dir/volumes`; returns the host path for each volume name.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    pod_dir: &Path,
    state_dir: &Path,
) -> Result<HashMap<String, PathBuf>, VolumeError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut paths = HashMap::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = pod_dir.join("volumes").join(&volume.name);
        let path = prepare_one(client, pod, &namespace, volume, &dir, state_dir).await?;
        paths.insert(volume.name.clone(), path);
    }
    Ok(paths)
}

async fn prepare_one(
    client: &Client,
    pod: &Pod,
    namespace: &str,
    volume: &Volume,
    dir: &Path,
    state_dir: &Path,
) -> Result<PathBuf, VolumeError> {
    let name = volume.name.clone();
    let write_error = |path: &Path, source| VolumeError::Write {
        volume: name.clone(),
        path: path.into(),
        source,
    };
    if let Some(host_path) = &volume.host_path {
        let path = PathBuf::from(&host_path.path);
        if !path.exists() && host_path.type_.as_deref() != Some("FileOrCreate") {
            std::fs::create_dir_all(&path).map_err(|e| write_error(&path, e))?;
        } else if !path.exists() {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| write_error(parent, e))?;
            }
            std::fs::write(&path, b"").map_err(|e| write_error(&path, e))?;
        }
        return Ok(path);
    }
    if let Some(claim) = &volume.persistent_volume_claim {
        return claim_path(client, namespace, &claim.claim_name, state_dir, &name).await;
    }
    std::fs::create_dir_all(dir).map_err(|e| write_error(dir, e))?;
    let mut files: Vec<VolumeFile> = Vec::new();
    let default_mode;
    if let Some(secret) = &volume.secret {
        default_mode = secret.default_mode;
        let secret_name = secret.secret_name.clone().unwrap_or_default();
        let data = fetch_secret(client, namespace, &secret_name, &name).await?;
        match data {
            Some(data) => files.extend(select_items(
                &name,
                "Secret",
                &secret_name,
                &data,
                secret.items.as_deref(),
            )?),
            None if secret.optional == Some(true) => {}
            None => {
                return Err(VolumeError::SecretNotFound {
                    volume: name,
                    name: secret_name,
                });
            }
        }
    } else if let Some(config_map) = &volume.config_map {
        default_mode = config_map.default_mode;
        let data = fetch_config_map(client, namespace, &config_map.name, &name).await?;
        match data {
            Some(data) => files.extend(select_items(
                &name,
                "ConfigMap",
                &config_map.name,
                &data,
                config_map.items.as_deref(),
            )?),
            None if config_map.optional == Some(true) => {}
            None => {
                return Err(VolumeError::ConfigMapNotFound {
                    volume: name,
                    name: config_map.name.clone(),
                });
            }
        }
    } else if let Some(downward) = &volume.downward_api {
        default_mode = downward.default_mode;
        for item in downward.items.iter().flatten() {
            if let Some(field) = &item.field_ref {
                let value =
                    env::field_value(pod, &field.field_path).map_err(|source| VolumeError::Field {
                        volume: name.clone(),
                        source,
                    })?;
                files.push((item.path.clone(), value.into_bytes(), item.mode));
            }
        }
    } else if let Some(projected) = &volume.projected {
        default_mode = projected.default_mode;
        for source in projected.sources.iter().flatten() {
            if let Some(secret) = &source.secret {
                let data = fetch_secret(client, namespace, &secret.name, &name).await?;
                match data {
                    Some(data) => files.extend(select_items(
                        &name,
                        "Secret",
                        &secret.name,
                        &data,
                        secret.items.as_deref(),
                    )?),
                    None if secret.optional == Some(true) => {}
                    None => {
                        return Err(VolumeError::SecretNotFound {
                            volume: name,
                            name: secret.name.clone(),
                        });
                    }
                }
            }
            if let Some(config_map) = &source.config_map {
                let data = fetch_config_map(client, namespace, &config_map.name, &name).await?;
                match data {
                    Some(data) => files.extend(select_items(
                        &name,
                        "ConfigMap",
                        &config_map.name,
                        &data,
                        config_map.items.as_deref(),
                    )?),
                    None if config_map.optional == Some(true) => {}
                    None => {
                        return Err(VolumeError::ConfigMapNotFound {
                            volume: name,
                            name: config_map.name.clone(),
                        });
                    }
                }
            }
            if let Some(downward) = &source.downward_api {
                for item in downward.items.iter().flatten() {
                    if let Some(field) = &item.field_ref {
                        let value = env::field_value(pod, &field.field_path).map_err(|source| {
                            VolumeError::Field {
                                volume: name.clone(),
                                source,
                            }
                        })?;
                        files.push((item.path.clone(), value.into_bytes(), item.mode));
                    }
                }
            }
            // serviceAccountToken sources are not materialised: there is no token issuer here.
        }
    } else {
        // emptyDir, and anything unsupported, is a plain per-pod directory.
        default_mode = None;
    }
    for (relative, contents, mode) in files {
        let path = dir.join(relative.trim_start_matches('/'));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| write_error(parent, e))?;
        }
        std::fs::write(&path, &contents).map_err(|e| write_error(&path, e))?;
        let mode = mode.or(default_mode).unwrap_or(0o644) as u32;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| write_error(&path, e))?;
    }
    Ok(dir.to_path_buf())
}

fn select_items(
    volume: &str,
    kind: &'static str,
    object: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
) -> Result<Vec<VolumeFile>, VolumeError> {
    match items {
        None => Ok(data
            .iter()
            .map(|(key, value)| (key.clone(), value.clone(), None))
            .collect()),
        Some(items) => items
            .iter()
            .map(|item| {
                data.get(&item.key)
                    .map(|value| (item.path.clone(), value.clone(), item.mode))
                    .ok_or_else(|| VolumeError::KeyNotFound {
                        volume: volume.to_string(),
                        kind,
                        name: object.to_string(),
                        key: item.key.clone(),
                    })
            })
            .collect(),
    }
}

/// Fetches a Secret's data; `None` when it does not exist.
pub async fn fetch_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    volume: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, VolumeError> {
    match Api::<Secret>::namespaced(client.clone(), namespace)
        .get(name)
        .await
    {
        Ok(secret) => {
            let mut data: BTreeMap<String, Vec<u8>> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (key, value) in secret.string_data.unwrap_or_default() {
                data.insert(key, value.into_bytes());
            }
            Ok(Some(data))
        }
        Err(error) if is_not_found(&error) => Ok(None),
        Err(source) => Err(VolumeError::Api {
            volume: volume.into(),
            what: format!("secret {name}"),
            source,
        }),
    }
}

/// Fetches a ConfigMap's data (text and binary); `None` when it does not exist.
pub async fn fetch_config_map(
    client: &Client,
    namespace: &str,
    name: &str,
    volume: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, VolumeError> {
    match Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get(name)
        .await
    {
        Ok(config_map) => {
            let mut data: BTreeMap<String, Vec<u8>> = config_map
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (key, value) in config_map.binary_data.unwrap_or_default() {
                data.insert(key, value.0);
            }
            Ok(Some(data))
        }
        Err(error) if is_not_found(&error) => Ok(None),
        Err(source) => Err(VolumeError::Api {
            volume: volume.into(),
            what: format!("configmap {name}"),
            source,
        }),
    }
}

/// Host directory backing a claim: the bound PV's hostPath, else a per-claim directory.
async fn claim_path(
    client: &Client,
    namespace: &str,
    claim: &str,
    state_dir: &Path,
    volume: &str,
) -> Result<PathBuf, VolumeError> {
    let api_error = |what: String, source| VolumeError::Api {
        volume: volume.into(),
        what,
        source,
    };
    let pvc = match Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
        .get(claim)
        .await
    {
        Ok(pvc) => pvc,
        Err(error) if is_not_found(&error) => return Err(VolumeError::ClaimNotFound(claim.into())),
        Err(source) => return Err(api_error(format!("claim {claim}"), source)),
    };
    let bound = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|n| !n.is_empty());
    let host_path = match bound {
        Some(pv_name) => match Api::<PersistentVolume>::all(client.clone()).get(&pv_name).await {
            Ok(pv) => pv.spec.and_then(|s| s.host_path).map(|h| PathBuf::from(h.path)),
            Err(error) if is_not_found(&error) => None,
            Err(source) => return Err(api_error(format!("persistent volume {pv_name}"), source)),
        },
        None => None,
    };
    let path = host_path.unwrap_or_else(|| {
        claims_dir(state_dir).join(
            pvc.metadata
                .uid
                .clone()
                .unwrap_or_else(|| format!("{namespace}-{claim}")),
        )
    });
    std::fs::create_dir_all(&path).map_err(|source| VolumeError::Write {
        volume: volume.into(),
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Bind mounts for a container's volumeMounts, parents before nested targets.
pub fn container_mounts(
    container: &Container,
    volume_paths: &HashMap<String, PathBuf>,
    env: &[(String, String)],
) -> Result<Vec<BindMount>, VolumeError> {
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let base = volume_paths
            .get(&mount.name)
            .ok_or_else(|| VolumeError::UnknownVolume(mount.name.clone()))?;
        let sub_path = match (&mount.sub_path, &mount.sub_path_expr) {
            (Some(sub), _) if !sub.is_empty() => Some(sub.clone()),
            (_, Some(expr)) if !expr.is_empty() => Some(env::expand(expr, env)),
            _ => None,
        };
        let source = match sub_path {
            Some(sub) => {
                let source = base.join(sub.trim_start_matches('/'));
                if !source.exists() {
                    std::fs::create_dir_all(&source).map_err(|e| VolumeError::Write {
                        volume: mount.name.clone(),
                        path: source.clone(),
                        source: e,
                    })?;
                }
                source
            }
            None => base.clone(),
        };
        mounts.push(BindMount {
            source,
            target: PathBuf::from(&mount.mount_path),
            read_only: mount.read_only == Some(true),
        });
    }
    mounts.sort_by_key(|m| m.target.components().count());
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mounts_follow_volume_mounts_with_sub_paths_in_depth_order() {
        let scratch = std::env::temp_dir().join(format!("node-agent-volumes-{}", std::process::id()));
        let work = scratch.join("work");
        std::fs::create_dir_all(&work).expect("temp dir");
        let container: Container = serde_json::from_value(json!({
            "name": "c",
            "volumeMounts": [
                {"name": "work", "mountPath": "/data/cache", "subPath": "cache"},
                {"name": "work", "mountPath": "/data", "readOnly": true},
            ]
        }))
        .expect("valid container");
        let paths = HashMap::from([("work".to_string(), work.clone())]);
        let mounts = container_mounts(&container, &paths, &[]).expect("mounts resolve");
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].target, PathBuf::from("/data"));
        assert!(mounts[0].read_only);
        assert_eq!(mounts[1].source, work.join("cache"));
        assert!(work.join("cache").is_dir());
        let unknown: Container = serde_json::from_value(json!({
            "name": "c", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]
        }))
        .expect("valid container");
        assert!(
            matches!(container_mounts(&unknown, &paths, &[]), Err(VolumeError::UnknownVolume(v)) if v == "nope")
        );
        std::fs::remove_dir_all(&scratch).expect("cleanup");
    }
}
