//! What a Kubernetes API error means for the executor: forbidden, not found, already there, conflict, transient, rejected.
//!
//! kube's `Status` helpers match the machine-readable reason. An error body that is not a
//! `Status` (a proxy's or load balancer's plain-text answer) reaches us with only its HTTP code,
//! so each check also accepts the code that goes with the reason.

use kube::core::{Status, response::reason};

fn api_status(error: &kube::Error) -> Option<&Status> {
    match error {
        kube::Error::Api(status) => Some(status),
        _ => None,
    }
}

/// The API server refused the call for lack of permission (the executor's Role).
pub fn is_forbidden(error: &kube::Error) -> bool {
    api_status(error).is_some_and(|s| s.is_forbidden() || s.code == 403)
}

/// The object (or the pod whose log was asked for) does not exist.
pub fn is_not_found(error: &kube::Error) -> bool {
    api_status(error).is_some_and(|s| s.is_not_found() || s.code == 404)
}

/// A create met an object of the same name (409; on a create that can only mean it exists).
pub fn is_already_exists(error: &kube::Error) -> bool {
    api_status(error).is_some_and(|s| s.is_already_exists()) || is_conflict(error)
}

/// A precondition (a UID or resourceVersion the call named) no longer held: 409 Conflict.
pub fn is_conflict(error: &kube::Error) -> bool {
    api_status(error).is_some_and(|s| s.is_conflict() || s.code == 409)
}

/// The call may succeed if made again: the API server could not be reached or the connection
/// broke (the request may or may not have been applied), or it answered 429 or a 5xx that means
/// overloaded, restarting or timed out.
pub fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => matches!(status.code, 429 | 500 | 502 | 503 | 504),
        kube::Error::Service(_) | kube::Error::HyperError(_) => true,
        _ => false,
    }
}

/// The API server refused the object or request itself (422 Invalid, 400 BadRequest): sending
/// it again cannot succeed.
pub fn is_rejected(error: &kube::Error) -> bool {
    api_status(error)
        .is_some_and(|s| s.is_invalid() || s.reason == reason::BAD_REQUEST || matches!(s.code, 400 | 422))
}

/// The server's human-readable message for an API error, or the error itself.
pub fn message(error: &kube::Error) -> String {
    match api_status(error) {
        Some(status) => status.message.clone(),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Status::failure("refused", reason).with_code(code).boxed())
    }

    #[test]
    fn reasons_and_bare_codes_are_both_recognised() {
        assert!(is_forbidden(&api(403, reason::FORBIDDEN)));
        assert!(is_forbidden(&api(403, "Failed to parse error data")));
        assert!(is_not_found(&api(404, reason::NOT_FOUND)));
        assert!(is_not_found(&api(404, "")));
        assert!(is_already_exists(&api(409, reason::ALREADY_EXISTS)));
        assert!(is_already_exists(&api(409, "")));
        assert!(is_rejected(&api(422, reason::INVALID)));
        assert!(is_rejected(&api(400, reason::BAD_REQUEST)));
        assert!(is_rejected(&api(400, "")));
    }

    #[test]
    fn other_errors_are_none_of_them() {
        for error in [api(500, reason::INTERNAL_ERROR), api(401, reason::UNAUTHORIZED)] {
            assert!(!is_forbidden(&error));
            assert!(!is_not_found(&error));
            assert!(!is_already_exists(&error));
            assert!(!is_rejected(&error));
        }
        assert!(!is_not_found(&kube::Error::LinesCodecMaxLineLengthExceeded));
    }
}
