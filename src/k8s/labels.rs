//! Label and annotation keys kube-executor puts on its objects, the names it gives those objects, and
//! Kubernetes' rules for label values and DNS names, which configuration checks use too.

use std::collections::BTreeMap;

/// Standard "managed by" label; every object kube-executor creates carries it.
pub const MANAGED_BY_KEY: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_KEY`].
pub const MANAGED_BY_VALUE: &str = "kube-executor";
/// Which executor deployment (`EXECUTOR_INSTANCE_ID`) created the object: lets a restarted executor
/// find its own Jobs without touching those of another executor in the same namespace.
pub const INSTANCE_KEY: &str = "kube-executor.io/instance";
/// Queue the job came from (`batches`, `codeintel`).
pub const QUEUE_KEY: &str = "kube-executor.io/queue";
/// Queue job ID; only unique together with [`QUEUE_KEY`].
pub const JOB_ID_KEY: &str = "kube-executor.io/job-id";
/// Annotation: the executor name the frontend knows this executor by (Site admin > Executors).
pub const EXECUTOR_NAME_ANNOTATION: &str = "kube-executor.io/executor-name";

/// Prefix of every Job name, kept from Sourcegraph so existing cleanup tooling still matches.
pub const JOB_NAME_PREFIX: &str = "sg-executor-job-";
/// Longest label value (and so longest Job name: the Job controller copies it into the
/// `job-name` pod label).
pub const MAX_LABEL_VALUE_LEN: usize = 63;

/// Label selector for lists and watches of the objects one executor instance owns.
pub fn instance_selector(instance_id: &str) -> String {
    format!("{MANAGED_BY_KEY}={MANAGED_BY_VALUE},{INSTANCE_KEY}={instance_id}")
}

/// Labels of every object that belongs to one queue job (Job, pod template, Secrets, PVC).
pub fn job_labels(instance_id: &str, queue: &str, job_id: i64) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_KEY.to_string(), MANAGED_BY_VALUE.to_string()),
        (INSTANCE_KEY.to_string(), instance_id.to_string()),
        (QUEUE_KEY.to_string(), queue.to_string()),
        (JOB_ID_KEY.to_string(), job_id.to_string()),
    ])
}

/// Name of the Kubernetes Job of a queue job: `sg-executor-job-<queue>-<id>`.
///
/// Always built from the job's real queue: job IDs are only unique per queue, and Sourcegraph's
/// multi-queue mode, which puts an empty queue here, makes a `batches` and a `codeintel` job with the
/// same ID collide.
pub fn job_name(queue: &str, job_id: i64) -> String {
    format!("{JOB_NAME_PREFIX}{queue}-{job_id}")
}

/// Name of the per-job Secret (job token, workspace files, step env values).
pub fn secret_name(job_name: &str) -> String {
    format!("{job_name}-secrets")
}

/// Name of the per-job image pull Secret built from the payload's `dockerAuthConfig`.
pub fn pull_secret_name(job_name: &str) -> String {
    format!("{job_name}-pull")
}

/// Name of the per-job workspace PVC (`KUBERNETES_JOB_VOLUME_TYPE=pvc`).
pub fn pvc_name(job_name: &str) -> String {
    format!("{job_name}-pvc")
}

/// Whether `value` is a valid label value: at most 63 characters, alphanumerics with `-`, `_`
/// and `.` inside; empty is allowed.
pub fn is_valid_label_value(value: &str) -> bool {
    if value.is_empty() {
        return true;
    }
    let bytes = value.as_bytes();
    value.len() <= MAX_LABEL_VALUE_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Whether `name` is an RFC 1123 DNS label (namespaces, container names, Job names that also serve
/// as label values): 1–63 characters of lowercase alphanumerics and `-`, starting and ending
/// alphanumeric.
pub fn is_dns_label(name: &str) -> bool {
    name.len() <= MAX_LABEL_VALUE_LEN && is_dns_part(name)
}

/// Longest RFC 1123 DNS subdomain.
const MAX_DNS_SUBDOMAIN_LEN: usize = 253;

/// Whether `name` is an RFC 1123 DNS subdomain (node, ServiceAccount and Secret names): at most 253
/// characters of dot-separated parts, each lowercase alphanumerics and `-`, starting and ending
/// alphanumeric.
pub(crate) fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= MAX_DNS_SUBDOMAIN_LEN && name.split('.').all(is_dns_part)
}

/// One non-empty part of a DNS name, of any length.
fn is_dns_part(part: &str) -> bool {
    let bytes = part.as_bytes();
    !part.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(|b| *b != b'-')
        && bytes.last().is_some_and(|b| *b != b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_real_queue_and_the_object_suffixes() {
        let name = job_name("codeintel", 42);
        assert_eq!(name, "sg-executor-job-codeintel-42");
        assert_eq!(secret_name(&name), "sg-executor-job-codeintel-42-secrets");
        assert_eq!(pull_secret_name(&name), "sg-executor-job-codeintel-42-pull");
        assert_eq!(pvc_name(&name), "sg-executor-job-codeintel-42-pvc");
        assert_ne!(job_name("batches", 42), job_name("codeintel", 42));
    }

    #[test]
    fn longest_job_name_fits_a_label_value() {
        let name = job_name("codeintel", i64::MAX);
        assert!(name.len() <= MAX_LABEL_VALUE_LEN, "{name}");
        assert!(is_dns_label(&name));
    }

    #[test]
    fn job_labels_and_selector_agree() {
        let labels = job_labels("exec-1", "batches", 7);
        assert_eq!(labels[MANAGED_BY_KEY], "kube-executor");
        assert_eq!(labels[INSTANCE_KEY], "exec-1");
        assert_eq!(labels[QUEUE_KEY], "batches");
        assert_eq!(labels[JOB_ID_KEY], "7");
        assert_eq!(
            instance_selector("exec-1"),
            "app.kubernetes.io/managed-by=kube-executor,kube-executor.io/instance=exec-1"
        );
        // Every pair of the selector is among the job labels, so the selector finds the job.
        for pair in instance_selector("exec-1").split(',') {
            let (key, value) = pair.split_once('=').expect("selector pairs are key=value");
            assert_eq!(labels.get(key).map(String::as_str), Some(value), "{key}");
        }
    }

    #[test]
    fn label_value_and_dns_label_rules() {
        assert!(is_valid_label_value("exec-1.example_a"));
        assert!(is_valid_label_value(""));
        assert!(!is_valid_label_value("-lead"));
        assert!(!is_valid_label_value("has space"));
        assert!(!is_valid_label_value(&"a".repeat(64)));
        assert!(is_dns_label("step-kubernetes-0"));
        assert!(!is_dns_label("Step"));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label("trailing-"));
        assert!(!is_dns_label(""));
    }

    /// Moved from the configuration's checks, which used to have their own copies.
    #[test]
    fn label_values_and_dns_names() {
        for value in ["a", "executor", "sg-executor_batches.1", "A1", &"x".repeat(63)] {
            assert!(is_valid_label_value(value), "{value}");
        }
        for value in ["-a", "a-", "a b", "a/b", &"x".repeat(64)] {
            assert!(!is_valid_label_value(value), "{value:?}");
        }
        assert!(is_dns_label("default"));
        assert!(!is_dns_label("a.b"));
        assert!(is_dns_subdomain("a.b"));
        assert!(!is_dns_label("Default"));
    }

    #[test]
    fn dns_subdomain_rules() {
        for name in ["node-a.example", "job-runner", "a", "1.2.3", &"a".repeat(253)] {
            assert!(is_dns_subdomain(name), "{name}");
        }
        // Every dot-separated part must be a label of its own.
        for name in [
            "",
            "a..b",
            ".a",
            "a.",
            "a.-b",
            "a-.b",
            "A.b",
            "a_b",
            &"a".repeat(254),
        ] {
            assert!(!is_dns_subdomain(name), "{name:?}");
        }
    }
}
