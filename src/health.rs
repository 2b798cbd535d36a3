//! The health server: `/healthz`, `/readyz`, `/metrics`, `/nfr` and a status page, on EXECUTOR_HEALTH_SERVER_ADDR.

use std::{future::Future, io, net::SocketAddr, pin::pin, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::{context::Deps, runner::FrontendStatus, telemetry::SystemInfo};

/// How long a client may take to send a request's headers. Probes and scrapers send theirs at
/// once, so a connection that has sent none, or only part, by then is stalled or hostile; closing
/// it frees its slot. Hyper restarts the timer while a kept-alive connection waits for its next
/// request, so idle connections are closed after this long too.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once: probes and a scraper need a handful, and the cap keeps a flood of
/// idle sockets from exhausting memory and file descriptors. A connection over the cap is not
/// refused but left in the kernel's listen backlog until a slot frees, so a probe arriving while
/// the slots are busy is delayed rather than failed; stalled connections free theirs within
/// [`HEADER_READ_TIMEOUT`].
const MAX_CONNECTIONS: usize = 64;

/// After the stop signal, how long requests in flight get to finish before their connections are
/// dropped, so a stalled client cannot hold up the executor's exit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed accept (e.g. EMFILE, out of file descriptors): such errors last a while,
/// and retrying at once would spin. The server keeps running either way.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(250);

#[derive(Clone)]
struct AppState {
    deps: Deps,
    system: SystemInfo,
    frontend: FrontendStatus,
}

/// The limits of the accept loop; tests shrink them.
#[derive(Clone, Copy)]
struct Limits {
    header_read_timeout: Duration,
    max_connections: usize,
    shutdown_grace: Duration,
}

impl Limits {
    const SERVING: Self = Self {
        header_read_timeout: HEADER_READ_TIMEOUT,
        max_connections: MAX_CONNECTIONS,
        shutdown_grace: SHUTDOWN_GRACE,
    };
}

/// Binds the health server; returns the bound address and the serving future, which ends once
/// `stop` is cancelled and the requests in flight have finished (or [`SHUTDOWN_GRACE`] passed).
///
/// # Errors
/// When the address cannot be bound.
pub async fn bind(
    addr: SocketAddr,
    deps: Deps,
    system: SystemInfo,
    frontend: FrontendStatus,
    stop: CancellationToken,
) -> io::Result<(SocketAddr, impl Future<Output = ()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/nfr", get(nfr))
        .route("/", get(status_page))
        .with_state(AppState {
            deps,
            system,
            frontend,
        });
    Ok((bound, serve(listener, app, Limits::SERVING, stop)))
}

/// Accepts connections on `listener` and serves `app` on each until `stop`, then drains them.
async fn serve(listener: TcpListener, app: Router, limits: Limits, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let http = http1_builder(limits.header_read_timeout);
    let mut connections = JoinSet::new();
    while let Some((stream, slot)) = next_connection(&listener, &slots, &stop).await {
        // Reaped here, so the set holds only live connections.
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(
            http.clone(),
            stream,
            app.clone(),
            slot,
            stop.clone(),
        ));
    }
    drop(listener);
    drain(connections, limits.shutdown_grace).await;
}

/// HTTP/1 only (probes and scrapers speak it), with the header timeout.
fn http1_builder(header_read_timeout: Duration) -> http1::Builder {
    let mut http = http1::Builder::new();
    // Hyper measures the header timeout with this timer (and panics without one).
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    http
}

/// The next accepted connection with the slot it holds; `None` once `stop` is cancelled. Accept
/// errors are logged and retried: they never end the server.
async fn next_connection(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    stop: &CancellationToken,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    // The slot comes first, so connections over the cap wait unaccepted in the listen backlog.
    let slot = tokio::select! {
        () = stop.cancelled() => return None,
        // Fails only on a closed semaphore, and this one is never closed.
        slot = Arc::clone(slots).acquire_owned() => slot.ok()?,
    };
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => return Some((stream, slot)),
            Err(error) if is_connection_error(&error) => {
                tracing::debug!(%error, "a health server connection failed before it was accepted");
            }
            Err(error) => {
                tracing::warn!(%error, "the health server cannot accept a connection; retrying");
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                }
            }
        }
    }
}

/// An error of one incoming connection rather than of the listener: the next accept can succeed
/// at once.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection until it closes, holding its slot; on `stop`, the request in flight is
/// answered and the connection closed.
async fn serve_connection(
    http: http1::Builder,
    stream: TcpStream,
    app: Router,
    slot: OwnedSemaphorePermit,
    stop: CancellationToken,
) {
    let _slot = slot;
    let mut connection = pin!(http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app)));
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // Header timeouts and clients going away end up here: routine, not worth a warning.
        tracing::debug!(%error, "a health server connection ended with an error");
    }
}

/// Waits up to `grace` for the connections to finish; dropping the set aborts the rest.
async fn drain(mut connections: JoinSet<()>, grace: Duration) {
    let all_finished =
        tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
    if all_finished.is_err() {
        tracing::debug!(
            open = connections.len(),
            "health server connections closed at the end of the shutdown grace"
        );
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<AppState>) -> Response {
    let mut problems = Vec::new();
    if !s.frontend.answered() {
        problems.push("the frontend has not answered yet");
    } else if !s.frontend.answering() {
        problems.push("the frontend has not answered the last two heartbeats");
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

/// Both operational NFRs as JSON (see `crate::nfr::Snapshot`).
async fn nfr(State(s): State<AppState>) -> Response {
    axum::Json(s.deps.nfr.snapshot(jiff::Timestamp::now())).into_response()
}

async fn status_page(State(s): State<AppState>) -> Html<String> {
    Html(crate::status_page::render(&crate::status_page::PageInput {
        deps: &s.deps,
        system: &s.system,
        frontend_answered: s.frontend.answered(),
        now: jiff::Timestamp::now(),
    }))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        sync::mpsc,
        task::JoinHandle,
        time::{Instant, timeout},
    };

    use super::*;

    /// A whole request; the server closes the connection after answering it.
    const GET_HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";

    /// The server on 127.0.0.1 with `limits` and the real `/healthz` route.
    struct TestServer {
        addr: SocketAddr,
        stop: CancellationToken,
        task: JoinHandle<()>,
    }

    impl TestServer {
        async fn start(limits: Limits) -> Self {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .expect("bind 127.0.0.1:0");
            let addr = listener.local_addr().expect("bound address");
            let stop = CancellationToken::new();
            let app = Router::new().route("/healthz", get(healthz));
            let task = tokio::spawn(serve(listener, app, limits, stop.clone()));
            Self { addr, stop, task }
        }

        async fn connect(&self) -> TcpStream {
            TcpStream::connect(self.addr)
                .await
                .expect("connect to the health server")
        }
    }

    /// Everything the server sends until it closes the connection (a reset counts as closing).
    async fn read_until_closed(stream: &mut TcpStream) -> String {
        let mut received = Vec::new();
        let _ = stream.read_to_end(&mut received).await;
        String::from_utf8_lossy(&received).into_owned()
    }

    #[tokio::test]
    async fn healthz_answers_ok() {
        let server = TestServer::start(Limits::SERVING).await;
        let mut client = server.connect().await;
        client.write_all(GET_HEALTHZ).await.expect("send the request");
        let response = timeout(Duration::from_secs(30), read_until_closed(&mut client))
            .await
            .expect("an answer");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\nok"), "{response}");
    }

    // Paused time: hyper's TokioTimer sleeps on tokio's clock, which advances to the header
    // deadline as soon as nothing else can run.
    #[tokio::test(start_paused = true)]
    async fn a_connection_without_complete_headers_is_closed_after_the_header_timeout() {
        let server = TestServer::start(Limits::SERVING).await;
        let started = Instant::now();
        let mut silent = server.connect().await;
        let mut partial = server.connect().await;
        partial
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
            .await
            .expect("send part of the headers");
        // Answered once, then silent: the timer runs again while hyper waits for the next request.
        let mut kept_alive = server.connect().await;
        kept_alive
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("send the request");
        let mut response = Vec::new();
        while !response.ends_with(b"\r\n\r\nok") {
            let read = kept_alive.read_buf(&mut response).await.expect("read the answer");
            assert_ne!(read, 0, "closed before answering");
        }
        for stream in [&mut silent, &mut partial, &mut kept_alive] {
            timeout(2 * HEADER_READ_TIMEOUT, read_until_closed(stream))
                .await
                .expect("the server closes the connection");
        }
        assert!(
            started.elapsed() >= HEADER_READ_TIMEOUT,
            "closed before the timeout"
        );
    }

    #[derive(Debug, PartialEq)]
    enum Event {
        StalledClosed,
        Answered(String),
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_over_the_cap_is_served_once_a_stalled_one_is_closed() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::SERVING
        };
        let server = TestServer::start(limits).await;
        let (events, mut received) = mpsc::unbounded_channel();
        // Both slots go to connections that send nothing: only the header timeout frees them.
        for _ in 0..limits.max_connections {
            let mut stalled = server.connect().await;
            let events = events.clone();
            tokio::spawn(async move {
                read_until_closed(&mut stalled).await;
                let _ = events.send(Event::StalledClosed);
            });
        }
        let mut waiting = server.connect().await;
        waiting.write_all(GET_HEALTHZ).await.expect("send the request");
        tokio::spawn(async move {
            let response = read_until_closed(&mut waiting).await;
            let _ = events.send(Event::Answered(response));
        });

        let mut order = Vec::new();
        while order.len() < limits.max_connections + 1 {
            let event = timeout(4 * HEADER_READ_TIMEOUT, received.recv()).await;
            order.push(event.expect("all connections end").expect("an event"));
        }
        let answered = order
            .iter()
            .position(|event| matches!(event, Event::Answered(_)))
            .expect("the waiting request is answered");
        assert!(answered > 0, "answered before any slot was freed: {order:?}");
        let Event::Answered(response) = &order[answered] else {
            unreachable!("found as Answered above")
        };
        assert!(response.ends_with("\r\n\r\nok"), "{response}");
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_the_server_within_the_grace_despite_a_stalled_connection() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(3600),
            ..Limits::SERVING
        };
        let server = TestServer::start(limits).await;
        let mut stalled = server.connect().await;
        stalled
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .expect("send part of the headers");
        // A completed request proves the stalled connection, connected before it, was accepted.
        let mut client = server.connect().await;
        client.write_all(GET_HEALTHZ).await.expect("send the request");
        read_until_closed(&mut client).await;

        server.stop.cancel();
        timeout(2 * limits.shutdown_grace, server.task)
            .await
            .expect("the server ends within the grace")
            .expect("the server does not panic");
        timeout(Duration::from_secs(1), read_until_closed(&mut stalled))
            .await
            .expect("the stalled connection is closed");
        assert!(TcpStream::connect(server.addr).await.is_err(), "still accepting");
    }
}
