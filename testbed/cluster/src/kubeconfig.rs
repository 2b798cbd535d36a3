//! Kubeconfig files that authenticate with a bearer token, and clients built from them.

use std::{io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use base64::Engine;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::{Error, Result};

/// Writes a kubeconfig (mode 0600, JSON, which kubectl reads as YAML) for `user` with `token`.
pub(crate) fn write(path: &Path, server: &str, ca_pem: &[u8], user: &str, token: &str) -> Result<()> {
    let ca_data = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let document = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test-cluster", "cluster": {"server": server, "certificate-authority-data": ca_data}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "test-cluster", "user": user, "namespace": "default"}}],
        "current-context": user,
    });
    let text = serde_json::to_vec_pretty(&document).map_err(Error::SerializeKubeconfig)?;
    let write_error = |source| Error::File {
        action: "write kubeconfig",
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::options()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(write_error)?;
    file.write_all(&text).map_err(write_error)
}

/// A client for the kubeconfig at `path`, using its current context.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let load_error = |source| Error::LoadKubeconfig {
        path: path.to_owned(),
        source,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(load_error)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(load_error)?;
    kube::Client::try_from(config).map_err(Error::BuildClient)
}
