//! The cluster's keys and certificates, made with the `openssl` command-line tool.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::error::{Error, Result};

/// Paths of every key and certificate a cluster uses, all inside its directory.
#[derive(Debug, Clone)]
pub(crate) struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub api_server_cert: PathBuf,
    pub api_server_key: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    pub kubelet_client_cert: PathBuf,
    pub kubelet_client_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_public_key: PathBuf,
}

const VALIDITY_DAYS: &str = "30";

/// Creates the CA, the serving and client certificates and the service-account key pair in `dir`.
pub(crate) fn generate(dir: &Path) -> Result<Pki> {
    std::fs::create_dir_all(dir).map_err(|source| Error::File {
        action: "create directory",
        path: dir.to_owned(),
        source,
    })?;
    let ca_cert = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    run_openssl(
        "creating the CA",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            path_str(&ca_key),
            "-out",
            path_str(&ca_cert),
            "-days",
            VALIDITY_DAYS,
            "-subj",
            "/CN=test-cluster-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        ],
    )?;
    let ca = Ca {
        cert: &ca_cert,
        key: &ca_key,
        dir,
    };

    let (api_server_cert, api_server_key) = ca.issue(
        "kube-apiserver",
        "/CN=kube-apiserver",
        "serverAuth",
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1",
    )?;
    let (node_cert, node_key) = ca.issue(
        "node-agent",
        "/CN=node-agent",
        "serverAuth",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
    )?;
    let (kubelet_client_cert, kubelet_client_key) = ca.issue(
        "kubelet-client",
        "/O=system:masters/CN=kube-apiserver-kubelet-client",
        "clientAuth",
        "",
    )?;

    let service_account_key = dir.join("service-account.key");
    let service_account_public_key = dir.join("service-account.pub");
    run_openssl(
        "creating the service-account key",
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            path_str(&service_account_key),
        ],
    )?;
    run_openssl(
        "extracting the service-account public key",
        &[
            "pkey",
            "-in",
            path_str(&service_account_key),
            "-pubout",
            "-out",
            path_str(&service_account_public_key),
        ],
    )?;

    Ok(Pki {
        ca_cert,
        ca_key,
        api_server_cert,
        api_server_key,
        node_cert,
        node_key,
        kubelet_client_cert,
        kubelet_client_key,
        service_account_key,
        service_account_public_key,
    })
}

struct Ca<'a> {
    cert: &'a Path,
    key: &'a Path,
    dir: &'a Path,
}

impl Ca<'_> {
    /// Issues a leaf certificate; returns (certificate, key) paths.
    fn issue(&self, name: &str, subject: &str, usage: &str, alt_names: &str) -> Result<(PathBuf, PathBuf)> {
        let cert = self.dir.join(format!("{name}.crt"));
        let key = self.dir.join(format!("{name}.key"));
        let csr = self.dir.join(format!("{name}.csr"));
        let extensions = self.dir.join(format!("{name}.ext"));
        let mut extension_text = format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"
        );
        if !alt_names.is_empty() {
            extension_text.push_str(alt_names);
            extension_text.push('\n');
        }
        std::fs::write(&extensions, extension_text).map_err(|source| Error::File {
            action: "write",
            path: extensions.clone(),
            source,
        })?;
        run_openssl(
            "creating a certificate request",
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                path_str(&key),
                "-out",
                path_str(&csr),
                "-subj",
                subject,
            ],
        )?;
        // A random serial keeps certificates of concurrently started clusters distinct.
        let serial = format!("0x{}", uuid::Uuid::new_v4().simple());
        run_openssl(
            "signing a certificate",
            &[
                "x509",
                "-req",
                "-in",
                path_str(&csr),
                "-CA",
                path_str(self.cert),
                "-CAkey",
                path_str(self.key),
                "-set_serial",
                &serial,
                "-days",
                VALIDITY_DAYS,
                "-extfile",
                path_str(&extensions),
                "-out",
                path_str(&cert),
            ],
        )?;
        Ok((cert, key))
    }
}

fn path_str(path: &Path) -> &str {
    // Cluster directories are built from the temp dir and ASCII names; a non-UTF-8 temp dir
    // surfaces as an openssl error naming the empty path.
    path.to_str().unwrap_or_default()
}

fn run_openssl(step: &'static str, args: &[&str]) -> Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .map_err(|e| Error::Certificate {
            step,
            detail: format!("could not run openssl: {e}"),
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Certificate {
        step,
        detail: format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    })
}
