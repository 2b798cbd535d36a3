//! Image-name checks standing in for image pulls: syntax validation and configured pull failures.

/// Prefix of image names that never "pull", whatever the node configuration says.
pub const UNPULLABLE_PREFIX: &str = "unpullable.invalid/";

/// What "pulling" an image would do on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullOutcome {
    /// The image is considered present.
    Present,
    /// The reference cannot be parsed (waiting reason `InvalidImageName`).
    InvalidName(String),
    /// The pull fails (waiting reason `ErrImagePull`, then `ImagePullBackOff`).
    PullFails,
}

/// Decides the pull outcome for `image` given the node's list of unpullable images.
pub fn pull_outcome(image: &str, unpullable: &[String]) -> PullOutcome {
    if let Some(problem) = invalid_reference(image) {
        return PullOutcome::InvalidName(format!(
            "Failed to apply default image tag \"{image}\": couldn't parse image reference \"{image}\": {problem}"
        ));
    }
    if image.starts_with(UNPULLABLE_PREFIX) || unpullable.iter().any(|name| name == image) {
        return PullOutcome::PullFails;
    }
    PullOutcome::Present
}

/// The message a container runtime gives for a failed pull.
pub fn pull_error_message(image: &str) -> String {
    format!(
        "rpc error: code = Unknown desc = failed to pull and unpack image \"{image}\": failed to resolve \
         reference \"{image}\": pull access denied, repository does not exist or may require authorization"
    )
}

/// Returns why `image` is not a valid reference, or `None` when it is (a simplified form of the
/// distribution reference grammar: the repository path must be lowercase).
fn invalid_reference(image: &str) -> Option<&'static str> {
    if image.is_empty() || image.chars().any(char::is_whitespace) {
        return Some("invalid reference format");
    }
    let without_digest = image.split('@').next().unwrap_or(image);
    let last_slash = without_digest.rfind('/').map_or(0, |index| index + 1);
    let repository = match without_digest[last_slash..].rfind(':') {
        Some(colon) => &without_digest[..last_slash + colon],
        None => without_digest,
    };
    let mut components = repository.split('/').collect::<Vec<_>>();
    // A first component that looks like a registry host may carry uppercase letters and a port.
    if components.len() > 1 {
        let first = components[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            components.remove(0);
        }
    }
    for component in components {
        if component.is_empty() {
            return Some("invalid reference format");
        }
        if component.chars().any(|c| c.is_ascii_uppercase()) {
            return Some("invalid reference format: repository name must be lowercase");
        }
        if !component
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        {
            return Some("invalid reference format");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_references_are_present() {
        for image in [
            "busybox",
            "alpine:3.19",
            "registry.Example.com:5000/team/app:V1",
            "a/b@sha256:abc",
        ] {
            assert_eq!(pull_outcome(image, &[]), PullOutcome::Present, "{image}");
        }
    }

    #[test]
    fn uppercase_and_spaces_are_invalid_names() {
        for image in ["BusyBox", "team/App:1", "bad image", ""] {
            assert!(
                matches!(pull_outcome(image, &[]), PullOutcome::InvalidName(_)),
                "{image}"
            );
        }
    }

    #[test]
    fn configured_and_prefixed_images_fail_to_pull() {
        let unpullable = vec!["private/thing:1".to_string()];
        assert_eq!(
            pull_outcome("private/thing:1", &unpullable),
            PullOutcome::PullFails
        );
        assert_eq!(pull_outcome("private/thing:2", &unpullable), PullOutcome::Present);
        assert_eq!(
            pull_outcome("unpullable.invalid/x:1", &[]),
            PullOutcome::PullFails
        );
    }
}
