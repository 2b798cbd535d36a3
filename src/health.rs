//! The health server: `/healthz`, `/readyz`, `/metrics` and a status page, on EXECUTOR_HEALTH_SERVER_ADDR.

use std::net::SocketAddr;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use tokio_util::sync::CancellationToken;

use crate::{context::Deps, runner::FrontendStatus, telemetry::SystemInfo};

#[derive(Clone)]
struct AppState {
    deps: Deps,
    system: SystemInfo,
    frontend: FrontendStatus,
}

/// Binds the health server; returns the bound address and the serving future.
///
/// # Errors
/// When the address cannot be bound.
pub async fn bind(
    addr: SocketAddr,
    deps: Deps,
    system: SystemInfo,
    frontend: FrontendStatus,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(status_page))
        .with_state(AppState {
            deps,
            system,
            frontend,
        });
    let serve = async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
        {
            tracing::error!(%error, "health server failed");
        }
    };
    Ok((bound, serve))
}

async fn readyz(State(s): State<AppState>) -> Response {
    let mut problems = Vec::new();
    if !s.frontend.answered() {
        problems.push("the frontend has not answered yet");
    }
    if !s.deps.view.is_synced() {
        problems.push("the pod and job watches have not synced yet");
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("; ")).into_response()
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.system.metrics_text(&s.deps),
    )
        .into_response()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn status_page(State(s): State<AppState>) -> Html<String> {
    let cfg = &s.deps.config;
    let mut rows = String::new();
    for (key, _) in s.deps.registry.all() {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&key.to_string()),
            escape(&key.queue),
            escape(&crate::k8s::labels::job_name(&key.queue, key.id))
        ));
    }
    let events: String = s
        .deps
        .events
        .snapshot()
        .into_iter()
        .map(|(k, v)| format!("<tr><td>{}</td><td>{v}</td></tr>", escape(k)))
        .collect();
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>kube-executor</title>\
         <meta http-equiv=\"refresh\" content=\"5\"></head><body>\
         <h1>kube-executor</h1>\
         <p>Executor <b>{name}</b> (instance {instance}, build {build}, reports version {reported})</p>\
         <p>Frontend: {frontend} — {fe_state}. Watches: {watch}.</p>\
         <p>Namespace {ns}; slots used {used} of {max}.</p>\
         <h2>Running jobs</h2><table border=\"1\"><tr><th>ID</th><th>Queue</th><th>Kubernetes Job</th></tr>{rows}</table>\
         <h2>Events</h2><table border=\"1\"><tr><th>Event</th><th>Count</th></tr>{events}</table>\
         </body></html>",
        name = escape(&s.deps.executor_name),
        instance = escape(&cfg.instance_id),
        build = crate::telemetry::BUILD_VERSION,
        reported = escape(&cfg.reported_version),
        frontend = escape(&cfg.frontend_url),
        fe_state = if s.frontend.answered() {
            "answering"
        } else {
            "not answered yet"
        },
        watch = if s.deps.view.is_synced() {
            "synced"
        } else {
            "syncing"
        },
        ns = escape(&cfg.kubernetes.namespace),
        used = s.system.slots.used(),
        max = s.system.slots.max(),
    ))
}
