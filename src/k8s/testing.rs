//! A scripted Kubernetes API server inside the test process, for tests of the API calls.
//!
//! The code under test gets a `kube::Client` whose requests arrive here one at a time; the test
//! checks each (method, path, query, body) and answers it, so the order of calls is asserted too.

use std::{io, time::Duration};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use http::{Method, Request, Response};
use http_body::Frame;
use http_body_util::StreamBody;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

/// A response body the test writes chunk by chunk; an `Err` chunk breaks the stream there.
pub type ScriptedBody = StreamBody<BoxStream<'static, Result<Frame<Bytes>, io::Error>>>;

/// The server side of [`client`].
pub struct ApiServer {
    handle: Handle<Request<kube::client::Body>, Response<ScriptedBody>>,
}

/// A client for namespace `default` whose requests go to the returned server.
pub fn client() -> (kube::Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair();
    (kube::Client::new(service, "default"), ApiServer { handle })
}

/// [`client`] with `layer` (the client's rate limit) in front of the server.
pub fn client_through(layer: &super::rate_limit::ClientRateLimitLayer) -> (kube::Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair();
    let limited = tower::Layer::layer(layer, service);
    (kube::Client::new(limited, "default"), ApiServer { handle })
}

/// One request as the server received it, waiting for its answer.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// The JSON body, `Null` when there is none.
    pub body: Value,
    reply: SendResponse<Response<ScriptedBody>>,
}

impl ApiServer {
    /// The next request; fails the test when the client is gone without sending one.
    pub async fn next(&mut self) -> Call {
        let Some((request, reply)) = self.handle.next_request().await else {
            panic!("the client sent no further request");
        };
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("readable request body");
        Call {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            reply,
        }
    }

    /// The next request, asserted to be `"<METHOD> <path>"`.
    pub async fn expect(&mut self, method_and_path: &str) -> Call {
        let call = self.next().await;
        assert_eq!(call.line(), method_and_path, "query {:?}", call.query);
        call
    }

    /// Asserts that the client was dropped without sending another request.
    pub async fn assert_no_more_calls(mut self) {
        if let Some((request, _)) = self.handle.next_request().await {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

impl Call {
    /// `"<METHOD> <path>"`, e.g. `"POST /api/v1/namespaces/ns/secrets"`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// The value of query parameter `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Answers with `status` and a JSON body.
    pub fn answer(self, status: u16, body: Value) {
        let bytes = Bytes::from(serde_json::to_vec(&body).expect("serializable"));
        self.answer_chunks(status, vec![Ok(bytes)]);
    }

    /// Answers with a Kubernetes `Status` error.
    pub fn fail(self, code: u16, reason: &str) {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("scripted {reason}"), "reason": reason, "code": code,
        });
        self.answer(code, status);
    }

    /// Answers 200 with `lines` (each sent as its own chunk, newline added); when `break_after`
    /// the stream then fails instead of ending.
    pub fn stream_lines(self, lines: &[&str], break_after: bool) {
        let mut chunks: Vec<Result<Bytes, io::Error>> = lines
            .iter()
            .map(|line| Ok(Bytes::from(format!("{line}\n"))))
            .collect();
        if break_after {
            chunks.push(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "scripted break",
            )));
        }
        self.answer_chunks(200, chunks);
    }

    fn answer_chunks(self, status: u16, chunks: Vec<Result<Bytes, io::Error>>) {
        let frames = stream::iter(chunks.into_iter().map(|chunk| chunk.map(Frame::data))).boxed();
        let response = Response::builder()
            .status(status)
            .body(StreamBody::new(frames))
            .expect("valid response");
        self.reply.send_response(response);
    }
}

/// The output of the task running the code under test. Run with a paused clock: a task stuck on a
/// request the script does not answer fails the test (at once, in real time) instead of hanging it.
pub async fn finished<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(3600), task)
        .await
        .expect("the code under test finished (not waiting for an unscripted request)")
        .expect("the code under test did not panic")
}

/// A list response of `kind` with `items`.
pub fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": "v1", "metadata": {}, "items": items})
}

/// The answer to a successful delete.
pub fn deleted() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200})
}
