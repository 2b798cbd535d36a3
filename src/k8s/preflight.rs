//! Startup check that the executor's Kubernetes identity has every permission its configuration
//! needs, so a wrong Role fails at once with one message instead of at some later job.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::{Api, Client, api::PostParams};

use crate::config::{KubernetesConfig, VolumeType};

/// One verb on one resource, and what it is needed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    pub subresource: Option<&'static str>,
    pub why: &'static str,
}

impl Permission {
    /// `resource` or `resource/subresource`, as the API server names it in its messages.
    pub fn resource_name(&self) -> String {
        match self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.to_string(),
        }
    }
}

const fn perm(
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: Option<&'static str>,
    why: &'static str,
) -> Permission {
    Permission {
        verb,
        group,
        resource,
        subresource,
        why,
    }
}

/// Reading the executor's own pod (POD_NAME) for its restart count; checked only when that pod is
/// in the jobs namespace, the one the Role covers.
pub const GET_OWN_POD: Permission = perm(
    "get",
    "",
    "pods",
    None,
    "the executor's own restart count (POD_NAME)",
);

/// Every permission the executor uses with this configuration (rbac/role.yaml grants these).
pub fn required(config: &KubernetesConfig) -> Vec<Permission> {
    let mut needed = vec![
        perm("create", "batch", "jobs", None, "one Job per queue job"),
        perm("delete", "batch", "jobs", None, "teardown and the startup sweep"),
        perm(
            "list",
            "batch",
            "jobs",
            None,
            "the Job watch that counts job slots",
        ),
        perm(
            "watch",
            "batch",
            "jobs",
            None,
            "the Job watch that counts job slots",
        ),
        perm("list", "", "pods", None, "the shared pod watch"),
        perm("watch", "", "pods", None, "the shared pod watch"),
        perm(
            "delete",
            "",
            "pods",
            None,
            "removing a pod whose Job no longer exists",
        ),
        perm("get", "", "pods", Some("log"), "live log streaming"),
        perm("create", "", "secrets", None, "the per-job token Secret"),
        perm("patch", "", "secrets", None, "making the Job own its Secret"),
        perm("delete", "", "secrets", None, "removing leftover Secrets"),
        perm("list", "", "secrets", None, "finding leftover Secrets"),
        perm(
            "delete",
            "",
            "persistentvolumeclaims",
            None,
            "removing leftover claims",
        ),
        perm(
            "list",
            "",
            "persistentvolumeclaims",
            None,
            "finding leftover claims",
        ),
        perm(
            "list",
            "",
            "events",
            None,
            "reading the autoscaler's and kubelet's reasons for a pod already stuck",
        ),
    ];
    if config.volume_type == VolumeType::Pvc {
        needed.push(perm(
            "create",
            "",
            "persistentvolumeclaims",
            None,
            "the per-job workspace claim (KUBERNETES_JOB_VOLUME_TYPE=pvc)",
        ));
        needed.push(perm(
            "patch",
            "",
            "persistentvolumeclaims",
            None,
            "making the Job own its claim",
        ));
    }
    needed
}

/// What the check found.
#[derive(Debug)]
pub enum Preflight {
    /// Everything is allowed.
    Allowed,
    /// These are denied.
    Missing(Vec<Permission>),
    /// The cluster would not answer access reviews; nothing is known.
    Unknown(kube::Error),
}

/// Asks the API server (SelfSubjectAccessReview, allowed to every authenticated identity) whether
/// each permission is granted in `namespace`.
pub async fn check(client: Client, namespace: &str, needed: &[Permission]) -> Preflight {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client);
    let mut missing = Vec::new();
    for p in needed {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_string()),
                    verb: Some(p.verb.to_string()),
                    group: Some(p.group.to_string()),
                    resource: Some(p.resource.to_string()),
                    subresource: p.subresource.map(str::to_string),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        match reviews.create(&PostParams::default(), &review).await {
            Ok(answer) if answer.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(_) => missing.push(p.clone()),
            Err(error) => return Preflight::Unknown(error),
        }
    }
    if missing.is_empty() {
        Preflight::Allowed
    } else {
        Preflight::Missing(missing)
    }
}

/// One line per missing permission, in the API server's own phrasing.
pub fn describe(namespace: &str, missing: &[Permission]) -> String {
    missing
        .iter()
        .map(|p| {
            let group = if p.group.is_empty() {
                String::new()
            } else {
                format!(" in API group \"{}\"", p.group)
            };
            format!(
                "cannot {} resource \"{}\"{group} in the namespace \"{namespace}\" (needed for {})",
                p.verb,
                p.resource_name(),
                p.why
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvc_verbs_are_needed_only_in_pvc_mode_and_messages_name_verb_and_resource() {
        let vars = [
            ("EXECUTOR_FRONTEND_URL", "http://frontend"),
            ("EXECUTOR_FRONTEND_PASSWORD", "preflight-password-0123456789"),
            ("EXECUTOR_QUEUE_NAME", "batches"),
        ];
        let mut config = crate::config::Config::from_vars(vars.map(|(k, v)| (k.to_string(), v.to_string())))
            .expect("minimal configuration")
            .kubernetes;
        config.volume_type = VolumeType::EmptyDir;
        let empty_dir = required(&config);
        config.volume_type = VolumeType::Pvc;
        let pvc = required(&config);
        assert_eq!(pvc.len(), empty_dir.len() + 2);
        assert!(
            !empty_dir
                .iter()
                .any(|p| p.resource == "persistentvolumeclaims" && p.verb == "create")
        );
        let text = describe("ns", &pvc[7..8]);
        assert!(
            text.starts_with("cannot get resource \"pods/log\" in the namespace \"ns\""),
            "{text}"
        );
    }
}
