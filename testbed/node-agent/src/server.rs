//! The node's HTTPS endpoint: `/healthz` and `/containerLogs/{ns}/{pod}/{container}` (what the API server
//! proxies `pods/log` to).

use std::{collections::HashMap, net::SocketAddr, path::Path, sync::Arc};

use axum::{
    Router,
    body::Body,
    extract::{Path as UrlPath, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures_util::StreamExt;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::logs::{ByteBudget, LogLookupError, LogQuery, LogRegistry, follow_stream, select_lines};

/// Failure to start the HTTPS endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("reading TLS certificate {path}: {message}")]
    ReadCertificate { path: String, message: String },
    #[error("reading TLS key {path}: {message}")]
    ReadKey { path: String, message: String },
    #[error("TLS configuration rejected: {0}")]
    Tls(#[from] rustls::Error),
    #[error("binding 127.0.0.1:{port}: {source}")]
    Bind { port: u16, source: std::io::Error },
}

/// Builds the TLS acceptor from PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServerError::ReadCertificate {
            path: cert.display().to_string(),
            message: e.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| ServerError::ReadKey {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The HTTP routes.
pub fn router(logs: Arc<LogRegistry>, log_stream_cut: Option<std::time::Duration>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .with_state(LogState { logs, log_stream_cut })
}

/// What the log route needs: the logs, and the optional stream-cut fault.
#[derive(Clone)]
struct LogState {
    logs: Arc<LogRegistry>,
    log_stream_cut: Option<std::time::Duration>,
}

fn plain(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

async fn container_logs(
    State(LogState { logs, log_stream_cut }): State<LogState>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let query = match LogQuery::parse(&params, jiff::Timestamp::now()) {
        Ok(query) => query,
        Err(error) => return plain(StatusCode::BAD_REQUEST, error.to_string()),
    };
    let log = match logs.lookup(&namespace, &pod, &container, query.previous) {
        Ok(log) => log,
        Err(error @ (LogLookupError::PodNotFound { .. } | LogLookupError::ContainerNotFound { .. })) => {
            return plain(StatusCode::NOT_FOUND, error.to_string());
        }
        Err(error) => return plain(StatusCode::BAD_REQUEST, error.to_string()),
    };
    let content_type = [(header::CONTENT_TYPE, "text/plain")];
    if query.follow && !query.previous {
        let stream = follow_stream(log, query).map(|chunk| chunk.map(axum::body::Bytes::from));
        return match log_stream_cut {
            // The fault knob: end the stream early, as a dropped node connection would.
            Some(cut) => {
                let stream = stream.take_until(tokio::time::sleep(cut));
                (content_type, Body::from_stream(stream)).into_response()
            }
            None => (content_type, Body::from_stream(stream)).into_response(),
        };
    }
    let selected = select_lines(&log.snapshot(), &query);
    let body = ByteBudget::new(query.limit_bytes).render(&selected, query.timestamps);
    (content_type, body).into_response()
}

/// Serves HTTPS on 127.0.0.1:`port` until cancelled.
pub async fn serve(
    port: u16,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    cancel: CancellationToken,
) -> Result<(), ServerError> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ServerError::Bind { port, source })?;
    tracing::info!(%address, "serving node endpoint");
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(error) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
            };
            let connection =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                result = connection => if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with error");
                },
                () = cancel.cancelled() => {}
            }
        });
    }
}
