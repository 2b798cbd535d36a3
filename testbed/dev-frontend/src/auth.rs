//! The two authentication schemes of the executor routes: the general access token and job tokens.

use axum::http::{HeaderMap, StatusCode, header::AUTHORIZATION};

use crate::{
    server::{ApiError, Shared},
    store::constant_time_eq,
};

pub(crate) const JOB_ID_HEADER: &str = "X-Sourcegraph-Job-ID";
pub(crate) const EXECUTOR_NAME_HEADER: &str = "X-Sourcegraph-Executor-Name";
const GENERAL_SCHEME: &str = "token-executor";
const JOB_SCHEME: &str = "Bearer";

/// Splits `Authorization: <scheme> <token>`; `None` when absent.
fn authorization(headers: &HeaderMap) -> Result<Option<(String, String)>, ApiError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| {
        ApiError::text(
            StatusCode::UNAUTHORIZED,
            "HTTP Authorization request header is not valid text",
        )
    })?;
    let parts: Vec<&str> = value.split(' ').collect();
    match parts.as_slice() {
        [scheme, token] => Ok(Some(((*scheme).to_owned(), (*token).to_owned()))),
        _ => Err(ApiError::text(
            StatusCode::UNAUTHORIZED,
            "HTTP Authorization request header value must be of the form '<scheme> <token>'",
        )),
    }
}

/// Checks `Authorization: token-executor <access token>` (dequeue, heartbeat, test/auth).
///
/// # Errors
/// 500 when no access token is configured; 401 for a missing, malformed or wrong header (the
/// wrong-token answer has an empty body, as in the real frontend).
pub(crate) fn check_general(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = shared.access_token.as_deref() else {
        return Err(ApiError::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Executors are not configured on this instance",
        ));
    };
    let Some((scheme, token)) = authorization(headers)? else {
        return Err(ApiError::text(
            StatusCode::UNAUTHORIZED,
            "no token value in the HTTP Authorization request header",
        ));
    };
    if scheme != GENERAL_SCHEME {
        return Err(ApiError::text(
            StatusCode::UNAUTHORIZED,
            format!(
                "unrecognized HTTP Authorization request header scheme (supported values: {GENERAL_SCHEME:?})"
            ),
        ));
    }
    if token.is_empty() {
        return Err(ApiError::text(
            StatusCode::UNAUTHORIZED,
            "no token value in the HTTP Authorization request header",
        ));
    }
    if !constant_time_eq(token.as_bytes(), expected.as_bytes()) {
        return Err(ApiError::text(StatusCode::UNAUTHORIZED, ""));
    }
    Ok(())
}

/// What a job-token-protected route is about; the token must have been issued for it.
pub(crate) enum JobScope<'a> {
    /// `/.executors/queue/<queue>/...`: the token's queue must match.
    Queue(&'a str),
    /// `/.executors/files/<bucket>/...`: `batch-changes` files belong to the `batches` queue.
    Files { bucket: &'a str },
    /// `/.executors/git/<repo>/...`: the token's repository must match.
    Git { repo: &'a str },
}

/// Checks a job token (`Authorization: Bearer <token>` + job id + executor name headers), or the
/// general token under the legacy `token-executor` scheme.
///
/// # Errors
/// 400 for a missing/unparseable job id or executor name, 401 for an unknown token or an executor
/// that never sent a heartbeat, 403 for a token of another job/queue/repository or a wrong legacy
/// token.
pub(crate) fn check_job(shared: &Shared, headers: &HeaderMap, scope: JobScope<'_>) -> Result<(), ApiError> {
    let Some((scheme, token)) = authorization(headers)? else {
        return Err(ApiError::text(
            StatusCode::UNAUTHORIZED,
            "no token value in the HTTP Authorization request header",
        ));
    };
    if token.is_empty() {
        return Err(ApiError::text(
            StatusCode::UNAUTHORIZED,
            "no token value in the HTTP Authorization request header",
        ));
    }
    match scheme.as_str() {
        GENERAL_SCHEME => {
            let accepted = shared
                .access_token
                .as_deref()
                .is_some_and(|expected| constant_time_eq(token.as_bytes(), expected.as_bytes()));
            return if accepted {
                Ok(())
            } else {
                Err(ApiError::text(StatusCode::FORBIDDEN, ""))
            };
        }
        JOB_SCHEME => {}
        _ => {
            return Err(ApiError::text(
                StatusCode::UNAUTHORIZED,
                format!(
                    "unrecognized HTTP Authorization request header scheme (supported values: {JOB_SCHEME:?}, {GENERAL_SCHEME:?})"
                ),
            ));
        }
    }
    let job_id = job_id_header(headers)?;
    let executor = headers
        .get(EXECUTOR_NAME_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|name| !name.is_empty())
        .ok_or_else(|| ApiError::text(StatusCode::BAD_REQUEST, "worker hostname cannot be empty"))?;
    let Some(granted) = shared.read(|store| store.find_token(&token)) else {
        return Err(ApiError::text(StatusCode::UNAUTHORIZED, "invalid token"));
    };
    if granted.job_id != job_id {
        return Err(ApiError::text(
            StatusCode::FORBIDDEN,
            "invalid token: issued for another job",
        ));
    }
    let scope_matches = match scope {
        JobScope::Queue(queue) => granted.queue == queue,
        JobScope::Files { bucket } => bucket != "batch-changes" || granted.queue == "batches",
        JobScope::Git { repo } => granted.repo == repo,
    };
    if !scope_matches {
        return Err(ApiError::text(
            StatusCode::FORBIDDEN,
            "invalid token: not issued for this resource",
        ));
    }
    if !shared.read(|store| store.executor_known(executor)) {
        return Err(ApiError::text(
            StatusCode::UNAUTHORIZED,
            "invalid token: executor has not sent a heartbeat",
        ));
    }
    Ok(())
}

fn job_id_header(headers: &HeaderMap) -> Result<i64, ApiError> {
    let raw = headers
        .get(JOB_ID_HEADER)
        .ok_or_else(|| ApiError::text(StatusCode::BAD_REQUEST, format!("missing {JOB_ID_HEADER} header")))?;
    raw.to_str()
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| {
            ApiError::text(
                StatusCode::BAD_REQUEST,
                format!("failed to parse {JOB_ID_HEADER} header as an integer"),
            )
        })
}
