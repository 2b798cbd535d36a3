//! A layer of the Kubernetes client that counts every API request by verb, resource and HTTP status.

use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{Method, Request, Response, Uri};
use tower::{Layer, Service};

use crate::metrics::Metrics;

/// Wraps the client's HTTP service in [`RequestMetrics`].
#[derive(Clone)]
pub struct RequestMetricsLayer {
    pub metrics: Metrics,
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// Counts each request once its response (or failure) arrives.
#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, R> Service<Request<B>> for RequestMetrics<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (verb, resource) = classify(request.method(), request.uri());
        let metrics = self.metrics.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            let code = match &result {
                Ok(response) => response.status().as_str().to_owned(),
                Err(_) => "error".to_owned(),
            };
            metrics.record_kubernetes_request(verb, &resource, &code);
            result
        })
    }
}

/// The Kubernetes verb and resource (`pods`, `pods/log`, `jobs`...) of a request.
fn classify(method: &Method, uri: &Uri) -> (&'static str, String) {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    let rest = match rest {
        ["namespaces", _namespace, scoped @ ..] if !scoped.is_empty() => scoped,
        other => other,
    };
    let resource = match rest {
        [] => "other".to_string(),
        [resource] | [resource, _] => (*resource).to_string(),
        [resource, _, subresource, ..] => format!("{resource}/{subresource}"),
    };
    let named = rest.len() >= 2;
    let watching = uri.query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    });
    let verb = match *method {
        Method::GET if named => "get",
        Method::GET if watching => "watch",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    };
    (verb, resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(method: Method, uri: &str) -> (&'static str, String) {
        classify(&method, &uri.parse().expect("valid URI"))
    }

    #[test]
    fn requests_are_named_by_verb_and_resource() {
        let cases = [
            (
                Method::GET,
                "/api/v1/namespaces/ns/pods?labelSelector=a%3Db&watch=true",
                "watch",
                "pods",
            ),
            (Method::GET, "/api/v1/namespaces/ns/pods", "list", "pods"),
            (
                Method::GET,
                "/api/v1/namespaces/ns/pods/p-1/log?follow=true",
                "get",
                "pods/log",
            ),
            (
                Method::POST,
                "/apis/batch/v1/namespaces/ns/jobs",
                "create",
                "jobs",
            ),
            (
                Method::DELETE,
                "/apis/batch/v1/namespaces/ns/jobs/j-1",
                "delete",
                "jobs",
            ),
            (
                Method::PATCH,
                "/api/v1/namespaces/ns/secrets/s-1",
                "patch",
                "secrets",
            ),
            (
                Method::POST,
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                "create",
                "selfsubjectaccessreviews",
            ),
            (Method::GET, "/api/v1/namespaces/ns", "get", "namespaces"),
            (Method::GET, "/version", "list", "other"),
        ];
        for (method, uri, verb, resource) in cases {
            assert_eq!(check(method, uri), (verb, resource.to_string()), "{uri}");
        }
    }
}
