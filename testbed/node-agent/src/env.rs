//! Container environment: base variables, `env`/`envFrom` resolution, field references and `$(VAR)` expansion.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Container, Pod};

/// IP address every simulated node and pod uses.
pub const LOOPBACK_IP: &str = "127.0.0.1";

/// Why a container's configuration cannot be built yet (waiting reason `CreateContainerConfigError`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyMissing {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyMissing {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("unsupported fieldRef {0:?}")]
    UnsupportedField(String),
    #[error("env var {0} uses an unsupported valueFrom source")]
    UnsupportedSource(String),
}

/// Secret and ConfigMap contents fetched for a container; `None` marks an object that does not exist.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub secrets: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    pub config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
}

/// Names of the Secrets and ConfigMaps a container's environment refers to.
pub fn referenced_sources(container: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut secrets = BTreeSet::new();
    let mut config_maps = BTreeSet::new();
    for var in container.env.iter().flatten() {
        if let Some(from) = &var.value_from {
            if let Some(secret) = &from.secret_key_ref {
                secrets.insert(secret.name.clone());
            }
            if let Some(config_map) = &from.config_map_key_ref {
                config_maps.insert(config_map.name.clone());
            }
        }
    }
    for source in container.env_from.iter().flatten() {
        if let Some(secret) = &source.secret_ref {
            secrets.insert(secret.name.clone());
        }
        if let Some(config_map) = &source.config_map_ref {
            config_maps.insert(config_map.name.clone());
        }
    }
    (secrets, config_maps)
}

/// Resolves a downward-API field path against the pod.
pub fn field_value(pod: &Pod, path: &str) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.podIP" => LOOPBACK_IP.to_string(),
        "status.hostIPs" | "status.podIPs" => LOOPBACK_IP.to_string(),
        "metadata.labels" => render_map(meta.labels.as_ref()),
        "metadata.annotations" => render_map(meta.annotations.as_ref()),
        other => keyed("metadata.labels['", meta.labels.as_ref())
            .or_else(|| keyed("metadata.annotations['", meta.annotations.as_ref()))
            .ok_or_else(|| EnvError::UnsupportedField(other.to_string()))?,
    };
    Ok(value)
}

/// Renders labels/annotations the way the downward API volume does: `key="value"` lines.
fn render_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(key, value)| format!("{key}={value:?}\n"))
        .collect()
}

/// Builds the full environment of `container`: base variables, then `envFrom`, then `env` (later wins).
pub fn resolve_env(
    pod: &Pod,
    container: &Container,
    sources: &Sources,
) -> Result<Vec<(String, String)>, EnvError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), "/root".into()),
        ("HOSTNAME".into(), pod.metadata.name.clone().unwrap_or_default()),
    ];
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| match env
        .iter_mut()
        .find(|(existing, _)| *existing == name)
    {
        Some(slot) => slot.1 = value,
        None => env.push((name, value)),
    };
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        if let Some(secret) = &source.secret_ref {
            match sources.secrets.get(&secret.name).cloned().flatten() {
                Some(data) => {
                    for (key, value) in data {
                        set(
                            &mut env,
                            format!("{prefix}{key}"),
                            String::from_utf8_lossy(&value).into_owned(),
                        );
                    }
                }
                None if secret.optional == Some(true) => {}
                None => return Err(EnvError::SecretNotFound(secret.name.clone())),
            }
        }
        if let Some(config_map) = &source.config_map_ref {
            match sources.config_maps.get(&config_map.name).cloned().flatten() {
                Some(data) => {
                    for (key, value) in data {
                        set(&mut env, format!("{prefix}{key}"), value);
                    }
                }
                None if config_map.optional == Some(true) => {}
                None => return Err(EnvError::ConfigMapNotFound(config_map.name.clone())),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                if let Some(selector) = &from.secret_key_ref {
                    let data = sources.secrets.get(&selector.name).cloned().flatten();
                    match data.as_ref().map(|d| d.get(&selector.key)) {
                        Some(Some(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
                        _ if selector.optional == Some(true) => continue,
                        Some(None) => {
                            return Err(EnvError::SecretKeyMissing {
                                namespace,
                                name: selector.name.clone(),
                                key: selector.key.clone(),
                            });
                        }
                        None => return Err(EnvError::SecretNotFound(selector.name.clone())),
                    }
                } else if let Some(selector) = &from.config_map_key_ref {
                    let data = sources.config_maps.get(&selector.name).cloned().flatten();
                    match data.as_ref().map(|d| d.get(&selector.key)) {
                        Some(Some(text)) => text.clone(),
                        _ if selector.optional == Some(true) => continue,
                        Some(None) => {
                            return Err(EnvError::ConfigMapKeyMissing {
                                namespace,
                                name: selector.name.clone(),
                                key: selector.key.clone(),
                            });
                        }
                        None => return Err(EnvError::ConfigMapNotFound(selector.name.clone())),
                    }
                } else if let Some(field) = &from.field_ref {
                    field_value(pod, &field.field_path)?
                } else if from.resource_field_ref.is_some() {
                    // Without real limits enforcement the value is informational; report the node-level default.
                    "0".to_string()
                } else {
                    return Err(EnvError::UnsupportedSource(var.name.clone()));
                }
            }
            (value, None) => {
                let raw = value.clone().unwrap_or_default();
                expand(&raw, &env)
            }
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// Expands `$(NAME)` references against `env` like the kubelet: unknown names stay as written and
/// `$$` escapes a dollar sign.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(position) = rest.find('$') {
        out.push_str(&rest[..position]);
        let after = &rest[position + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match env.iter().rev().find(|(key, _)| key == name) {
                        Some((_, value)) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "x"}, "annotations": {"note": "hi"}},
            "spec": {"nodeName": "node-1", "serviceAccountName": "sa", "containers": [{"name": "c"}]}
        }))
        .expect("test pod is valid")
    }

    fn container(env: serde_json::Value) -> Container {
        serde_json::from_value(json!({"name": "c", "env": env})).expect("test container is valid")
    }

    fn lookup(env: &[(String, String)], name: &str) -> Option<String> {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn base_env_and_overrides() {
        let env = resolve_env(
            &pod(),
            &container(json!([{"name": "HOME", "value": "/work"}])),
            &Sources::default(),
        )
        .expect("resolves");
        assert_eq!(lookup(&env, "HOME").as_deref(), Some("/work"));
        assert_eq!(lookup(&env, "HOSTNAME").as_deref(), Some("p"));
        assert!(lookup(&env, "PATH").is_some_and(|p| p.contains("/usr/bin")));
    }

    #[test]
    fn field_refs_resolve() {
        let env = resolve_env(
            &pod(),
            &container(json!([
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            ])),
            &Sources::default(),
        )
        .expect("resolves");
        assert_eq!(lookup(&env, "NODE").as_deref(), Some("node-1"));
        assert_eq!(lookup(&env, "APP").as_deref(), Some("x"));
        assert_eq!(lookup(&env, "NOTE").as_deref(), Some("hi"));
        assert_eq!(lookup(&env, "IP").as_deref(), Some("127.0.0.1"));
        assert_eq!(lookup(&env, "UID").as_deref(), Some("u-1"));
    }

    #[test]
    fn secrets_and_config_maps_resolve_or_name_what_is_missing() {
        let with_secret = container(json!([
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "mode"}}},
        ]));
        let mut sources = Sources::default();
        let error = resolve_env(&pod(), &with_secret, &sources).expect_err("secret missing");
        assert_eq!(error, EnvError::SecretNotFound("s".into()));
        assert_eq!(error.to_string(), "secret \"s\" not found");
        sources
            .secrets
            .insert("s".into(), Some([("token".to_string(), b"abc".to_vec())].into()));
        sources.config_maps.insert("cm".into(), Some(BTreeMap::new()));
        let error = resolve_env(&pod(), &with_secret, &sources).expect_err("key missing");
        assert!(matches!(error, EnvError::ConfigMapKeyMissing { key, .. } if key == "mode"));
        sources.config_maps.insert(
            "cm".into(),
            Some([("mode".to_string(), "fast".to_string())].into()),
        );
        let env = resolve_env(&pod(), &with_secret, &sources).expect("resolves");
        assert_eq!(lookup(&env, "TOKEN").as_deref(), Some("abc"));
        assert_eq!(lookup(&env, "MODE").as_deref(), Some("fast"));
    }

    #[test]
    fn optional_missing_sources_are_skipped() {
        let optional = container(json!([
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token", "optional": true}}}
        ]));
        let env = resolve_env(&pod(), &optional, &Sources::default()).expect("optional is fine");
        assert_eq!(lookup(&env, "TOKEN"), None);
    }

    #[test]
    fn env_from_applies_prefix() {
        let mut with_from: Container = serde_json::from_value(json!({
            "name": "c", "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CFG_"}]
        }))
        .expect("valid");
        with_from.env = None;
        let mut sources = Sources::default();
        sources
            .config_maps
            .insert("cm".into(), Some([("a".to_string(), "1".to_string())].into()));
        let env = resolve_env(&pod(), &with_from, &sources).expect("resolves");
        assert_eq!(lookup(&env, "CFG_a").as_deref(), Some("1"));
        let (secrets, config_maps) = referenced_sources(&with_from);
        assert!(secrets.is_empty());
        assert_eq!(
            config_maps.into_iter().collect::<Vec<_>>(),
            vec!["cm".to_string()]
        );
    }

    #[test]
    fn dependent_variables_expand() {
        let env = resolve_env(
            &pod(),
            &container(json!([
                {"name": "A", "value": "one"},
                {"name": "B", "value": "$(A)-two $(MISSING) $$(A)"},
            ])),
            &Sources::default(),
        )
        .expect("resolves");
        assert_eq!(lookup(&env, "B").as_deref(), Some("one-two $(MISSING) $(A)"));
    }
}
