//! A fault-injecting HTTP proxy between the executor and the dev frontend: it answers chosen
//! requests with an error, holds them, or forwards them and then loses the answer.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the proxy does to a request its rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards it.
    Pass,
    /// Answers this status without forwarding: the frontend never sees the request.
    Status(u16),
    /// Holds it until the rule changes, then forwards it.
    Hang,
    /// Forwards it, then answers this status: the frontend applied what the executor thinks failed.
    ForwardThenStatus(u16),
    /// Forwards it, then closes the connection unanswered: the answer is lost.
    ForwardThenDrop,
}

#[derive(Debug, Clone)]
struct Rule {
    fault: Fault,
    /// Path fragments the fault applies to; empty: every request.
    paths: Vec<&'static str>,
}

impl Rule {
    fn applies(&self, path: &str) -> Fault {
        if self.paths.is_empty() || self.paths.iter().any(|p| path.contains(p)) {
            self.fault
        } else {
            Fault::Pass
        }
    }
}

pub struct FaultProxy {
    addr: SocketAddr,
    rule: watch::Sender<Rule>,
    faulted: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`).
    pub async fn start(upstream: String) -> std::io::Result<FaultProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (rule, rules) = watch::channel(Rule {
            fault: Fault::Pass,
            paths: Vec::new(),
        });
        let faulted = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let client = reqwest::Client::builder()
            .build()
            .map_err(std::io::Error::other)?;
        let shared = Arc::new(Forwarder {
            upstream,
            client,
            rules,
            faulted: faulted.clone(),
        });
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stopped.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else { continue };
                let forwarder = shared.clone();
                let connection_stop = stopped.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let forwarder = forwarder.clone();
                        async move { forwarder.handle(request).await.ok_or(AnswerDropped) }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection_stop.cancelled() => {}
                        _ = connection => {}
                    }
                });
            }
        });
        Ok(FaultProxy {
            addr,
            rule,
            faulted,
            stop,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Applies `fault` from now on to requests whose path contains one of `paths` (all if empty).
    pub fn set(&self, fault: Fault, paths: &[&'static str]) {
        self.rule.send_replace(Rule {
            fault,
            paths: paths.to_vec(),
        });
    }

    /// Requests that met a fault so far.
    pub fn faulted(&self) -> usize {
        self.faulted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Forwarder {
    upstream: String,
    client: reqwest::Client,
    rules: watch::Receiver<Rule>,
    faulted: Arc<AtomicUsize>,
}

impl Forwarder {
    /// The answer to send; `None` closes the connection without one.
    async fn handle(&self, request: Request<Incoming>) -> Option<Response<Full<Bytes>>> {
        let path = request.uri().path().to_owned();
        let fault = self.rules.borrow().applies(&path);
        if fault != Fault::Pass {
            self.faulted.fetch_add(1, Ordering::Relaxed);
        }
        Some(match fault {
            Fault::Pass => self.forward(request).await,
            Fault::Status(code) => status(code),
            Fault::Hang => {
                let mut rules = self.rules.clone();
                // Held until the rule no longer hangs this path; the sender lives as long as us.
                let _ = rules.wait_for(|rule| rule.applies(&path) != Fault::Hang).await;
                self.forward(request).await
            }
            Fault::ForwardThenStatus(code) => {
                let _applied = self.forward(request).await;
                status(code)
            }
            Fault::ForwardThenDrop => {
                let _applied = self.forward(request).await;
                return None;
            }
        })
    }

    async fn forward(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            return status(502);
        };
        let target = format!(
            "{}{}",
            self.upstream,
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        let mut outgoing = self.client.request(parts.method, target).body(body);
        for (name, value) in &parts.headers {
            if name != hyper::header::HOST {
                outgoing = outgoing.header(name, value);
            }
        }
        let Ok(answer) = outgoing.send().await else {
            return status(502);
        };
        let mut response = Response::builder().status(answer.status());
        for (name, value) in answer.headers() {
            // The body is re-sent whole, so the upstream's framing headers do not apply.
            if name != hyper::header::TRANSFER_ENCODING && name != hyper::header::CONNECTION {
                response = response.header(name, value);
            }
        }
        let body = answer.bytes().await.unwrap_or_default();
        response.body(Full::new(body)).unwrap_or_else(|_| status(502))
    }
}

/// The service error that makes hyper close a connection without answering.
#[derive(Debug)]
struct AnswerDropped;

impl std::fmt::Display for AnswerDropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("answer dropped by the fault proxy")
    }
}

impl std::error::Error for AnswerDropped {}

fn status(code: u16) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"injected fault")));
    *response.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    response
}
