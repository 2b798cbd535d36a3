//! Turns the prepared environment into [`Config`]: which variable feeds which field, and the checks
//! of individual variables.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use k8s_openapi::{
    api::core::v1::{NodeSelectorRequirement, PodAffinityTerm},
    apimachinery::pkg::api::resource::Quantity,
};

use super::{
    Config, KubernetesConfig, LogFormat, NamespaceSource, NodePinning, OwnerPod, QueueSelection, VolumeType,
    parser::{DNS_SUBDOMAIN_RULE, Env, MAX_ID, Parser, U32_MAX, Var},
    quantity::quantity_value,
};
use crate::{
    k8s::labels,
    queue::{
        client::{HttpUrlError, parse_http_url},
        types::{KNOWN_QUEUES, Secret},
    },
};

/// Problems come in this order: compatibility switches and ignored variables, then each field.
pub(super) fn config(env: &Env, p: &mut Parser<'_>) -> Config {
    check_unsupported_modes(env, p);
    check_ignored(env, p);
    check_secret_json_object(p, env.var("EXECUTOR_DOCKER_AUTH_CONFIG"));
    let add_host_gateway = p.bool(env.var("EXECUTOR_DOCKER_ADD_HOST_GATEWAY"));
    let hostname = p.string(env.var("HOSTNAME")).unwrap_or_else(os_hostname);
    Config {
        frontend_url: frontend_url(p, env.var("EXECUTOR_FRONTEND_URL"), add_host_gateway),
        frontend_password: frontend_password(p, env.var("EXECUTOR_FRONTEND_PASSWORD")),
        queues: queues(p, env.var("EXECUTOR_QUEUE_NAME"), env.var("EXECUTOR_QUEUE_NAMES")),
        poll_interval: p.positive_duration(env.var("EXECUTOR_QUEUE_POLL_INTERVAL")),
        maximum_num_jobs: p
            .int_as(env.var("EXECUTOR_MAXIMUM_NUM_JOBS"), 1, U32_MAX)
            .unwrap_or(1),
        maximum_runtime_per_job: p.positive_duration(env.var("EXECUTOR_MAXIMUM_RUNTIME_PER_JOB")),
        num_total_jobs: p
            .int_as::<u64>(env.var("EXECUTOR_NUM_TOTAL_JOBS"), 0, i64::MAX)
            .filter(|n| *n > 0),
        max_active_time: p
            .duration(env.var("EXECUTOR_MAX_ACTIVE_TIME"))
            .filter(|d| !d.is_zero()),
        keep_workspaces: p.bool(env.var("EXECUTOR_KEEP_WORKSPACES")),
        job_num_cpus: p
            .int_as(
                env.var_with_fallback("EXECUTOR_JOB_NUM_CPUS", "EXECUTOR_FIRECRACKER_NUM_CPUS"),
                0,
                U32_MAX,
            )
            .unwrap_or(0),
        job_memory: data_size(
            p,
            env.var_with_fallback("EXECUTOR_JOB_MEMORY", "EXECUTOR_FIRECRACKER_MEMORY"),
        ),
        job_disk_space: data_size(p, env.var("EXECUTOR_FIRECRACKER_DISK_SPACE")),
        node_exporter_url: exporter_url(p, env.var("NODE_EXPORTER_URL")),
        docker_registry_node_exporter_url: exporter_url(p, env.var("DOCKER_REGISTRY_NODE_EXPORTER_URL")),
        job_audit_logging: p.bool(env.var("EXECUTOR_ENABLE_JOB_AUDIT_LOGGING")),
        log_level: log_level(p, env.var("SRC_LOG_LEVEL")),
        log_format: log_format(p, env.var("SRC_LOG_FORMAT")),
        trace_log: p.bool(env.var("SRC_TRACE_LOG")),
        instance_id: instance_id(p, env.var("EXECUTOR_INSTANCE_ID"), &hostname),
        hostname,
        reported_version: p.string(env.var("EXECUTOR_REPORTED_VERSION")).unwrap_or_default(),
        health_server_addr: listen_addr(p, env.var("EXECUTOR_HEALTH_SERVER_ADDR")),
        shutdown_grace_period: p
            .duration(env.var("EXECUTOR_SHUTDOWN_GRACE_PERIOD"))
            .unwrap_or_default(),
        log_entry_max_bytes: p
            .int_as(env.var("EXECUTOR_LOG_ENTRY_MAX_BYTES"), 4096, U32_MAX)
            .unwrap_or(4096),
        recommended_ulimit_nofile: p
            .int_as(env.var("EXECUTOR_RECOMMENDED_ULIMIT_NOFILE"), 1, i64::MAX)
            .unwrap_or(crate::nfr::DEFAULT_RECOMMENDED_NOFILE),
        recommended_ulimit_nproc: p
            .int_as(env.var("EXECUTOR_RECOMMENDED_ULIMIT_NPROC"), 1, i64::MAX)
            .unwrap_or(crate::nfr::DEFAULT_RECOMMENDED_NPROC),
        pod_name: p.dns_subdomain(env.var("POD_NAME")),
        pod_namespace: p.dns_label(env.var("POD_NAMESPACE")),
        kubernetes: kubernetes(env, p),
    }
}

/// The executor's pod as the owner of its Jobs, when it is known and in the jobs' namespace.
fn owner_pod(env: &Env, p: &mut Parser<'_>, job_namespace: &str) -> Option<OwnerPod> {
    let uid = p.string(env.var("POD_UID"))?;
    let name = env
        .value("POD_NAME")
        .filter(|name| labels::is_dns_subdomain(name))?;
    (env.value("POD_NAMESPACE") == Some(job_namespace)).then(|| OwnerPod {
        name: name.to_string(),
        uid,
    })
}

const REQUEST_CPU: &str = "EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU";
const LIMIT_CPU: &str = "EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU";
const REQUEST_MEMORY: &str = "EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY";
const LIMIT_MEMORY: &str = "EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY";

/// EXECUTOR_KUBERNETES_NAMESPACE, else the pod's own namespace from POD_NAMESPACE (whose own
/// check reports a bad value), else `default` (the service account's file is read by
/// [`super::Config::from_env`]).
fn job_namespace(env: &Env, p: &mut Parser<'_>) -> (String, NamespaceSource) {
    if let Some(namespace) = p.dns_label(env.var("EXECUTOR_KUBERNETES_NAMESPACE")) {
        return (namespace, NamespaceSource::Variable);
    }
    match env.value("POD_NAMESPACE").filter(|ns| labels::is_dns_label(ns)) {
        Some(namespace) => (namespace.to_string(), NamespaceSource::PodNamespace),
        None => ("default".to_string(), NamespaceSource::Default),
    }
}

fn kubernetes(env: &Env, p: &mut Parser<'_>) -> KubernetesConfig {
    let (request_cpu, limit_cpu) = request_and_limit(env, p, REQUEST_CPU, LIMIT_CPU);
    let (request_memory, limit_memory) = request_and_limit(env, p, REQUEST_MEMORY, LIMIT_MEMORY);
    let keep_jobs = p.bool(env.var("KUBERNETES_KEEP_JOBS"));
    let ttl = p.int_as::<i32>(env.var("KUBERNETES_JOB_TTL_SECONDS_AFTER_FINISHED"), 0, MAX_ID);
    let (namespace, namespace_source) = job_namespace(env, p);
    let owner_pod = owner_pod(env, p, &namespace);
    KubernetesConfig {
        owner_pod,
        client_qps: p
            .int_as(env.var("EXECUTOR_KUBERNETES_CLIENT_QPS"), 1, U32_MAX)
            .unwrap_or(100),
        client_burst: p
            .int_as(env.var("EXECUTOR_KUBERNETES_CLIENT_BURST"), 1, U32_MAX)
            .unwrap_or(200),
        config_path: p.string(env.var("EXECUTOR_KUBERNETES_CONFIG_PATH")),
        namespace: namespace.clone(),
        namespace_source,
        node_name: p.dns_subdomain(env.var("EXECUTOR_KUBERNETES_NODE_NAME")),
        node_pinning: node_pinning(p, env.var("EXECUTOR_KUBERNETES_NODE_PINNING")),
        node_selector: node_selector(p, env.var("EXECUTOR_KUBERNETES_NODE_SELECTOR")),
        node_required_affinity_match_expressions: node_requirements(
            p,
            env.var("EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS"),
        ),
        node_required_affinity_match_fields: node_requirements(
            p,
            env.var("EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_FIELDS"),
        ),
        pod_affinity: pod_affinity_terms(p, env.var("EXECUTOR_KUBERNETES_POD_AFFINITY")),
        pod_anti_affinity: pod_affinity_terms(p, env.var("EXECUTOR_KUBERNETES_POD_ANTI_AFFINITY")),
        tolerations: p.json(
            env.var("EXECUTOR_KUBERNETES_NODE_TOLERATIONS"),
            "array of Toleration",
        ),
        request_cpu,
        request_memory,
        limit_cpu,
        limit_memory,
        job_deadline_seconds: p
            .int(env.var("KUBERNETES_JOB_DEADLINE"), 1, i64::MAX)
            .unwrap_or(1),
        keep_jobs,
        run_as_user: p.id(env.var("KUBERNETES_RUN_AS_USER"), "UID"),
        run_as_group: p.id(env.var("KUBERNETES_RUN_AS_GROUP"), "GID"),
        fs_group: p.id(env.var("KUBERNETES_FS_GROUP"), "GID"),
        job_annotations: p.json(env.var("KUBERNETES_JOB_ANNOTATIONS"), "object of string values"),
        pod_annotations: p.json(
            env.var("KUBERNETES_JOB_POD_ANNOTATIONS"),
            "object of string values",
        ),
        image_pull_secrets: image_pull_secrets(p, env.var("KUBERNETES_IMAGE_PULL_SECRETS")),
        image_pull_policy: image_pull_policy(p, env.var("KUBERNETES_IMAGE_PULL_POLICY")),
        step_image: image_reference(
            p,
            env.var_with_fallback("KUBERNETES_JOB_STEP_IMAGE", "KUBERNETES_SINGLE_JOB_STEP_IMAGE"),
        ),
        volume_type: volume_type(p, env.var("KUBERNETES_JOB_VOLUME_TYPE")),
        volume_size: volume_size(p, env.var("KUBERNETES_JOB_VOLUME_SIZE")),
        additional_volumes: p.json(env.var("KUBERNETES_ADDITIONAL_JOB_VOLUMES"), "array of Volume"),
        additional_volume_mounts: p.json(
            env.var("KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS"),
            "array of VolumeMount",
        ),
        git_ca_cert: p.string(env.var("KUBERNETES_GIT_CA_CERT")),
        host_network: p.bool(env.var("KUBERNETES_JOB_HOST_NETWORK")),
        job_service_account: p.dns_subdomain(env.var("KUBERNETES_JOB_SERVICE_ACCOUNT")),
        automount_service_account_token: p.bool(env.var("KUBERNETES_JOB_AUTOMOUNT_SERVICE_ACCOUNT_TOKEN")),
        ttl_seconds_after_finished: ttl.filter(|seconds| *seconds > 0 && !keep_jobs),
        pending_timeout: p.positive_duration(env.var("KUBERNETES_JOB_PENDING_TIMEOUT")),
        unschedulable_timeout: p.positive_duration(env.var("KUBERNETES_JOB_UNSCHEDULABLE_TIMEOUT")),
        image_pull_timeout: p.positive_duration(env.var("KUBERNETES_JOB_IMAGE_PULL_TIMEOUT")),
        pod_creation_timeout: p.positive_duration(env.var("KUBERNETES_JOB_POD_CREATION_TIMEOUT")),
    }
}

// === Individual variables ===

/// Modes of Sourcegraph's executor that kube-executor does not have: accepted only when they match
/// what it does anyway.
fn check_unsupported_modes(env: &Env, p: &mut Parser<'_>) {
    let use_firecracker = env.var("EXECUTOR_USE_FIRECRACKER");
    if p.bool(use_firecracker) {
        p.problem(
            &use_firecracker,
            "true is not supported: kube-executor runs every job as a Kubernetes Job; set it to false or leave it unset",
        );
    }
    let single_job_pod = env.var("KUBERNETES_SINGLE_JOB_POD");
    if p.bool_opt(single_job_pod) == Some(false) {
        p.problem(
            &single_job_pod,
            "false is not supported: kube-executor runs each job as a single pod; set it to true or leave it unset",
        );
    }
}

fn frontend_password(p: &mut Parser<'_>, var: Var<'_>) -> Secret<String> {
    if !var.is_set() {
        p.problem(
            &var,
            "is required (the site configuration's executors.accessToken)",
        );
    }
    Secret::new(var.value.unwrap_or_default().to_owned())
}

/// A request and a limit of one resource; `None` when unset, zero or invalid.
fn request_and_limit(
    env: &Env,
    p: &mut Parser<'_>,
    request_name: &'static str,
    limit_name: &'static str,
) -> (Option<Quantity>, Option<Quantity>) {
    let (request_var, limit_var) = (env.var(request_name), env.var(limit_name));
    let request = p.quantity(request_var).flatten();
    let limit = p.quantity(limit_var).flatten();
    check_request_within_limit(p, (request_var, &request), (limit_var, &limit));
    (request, limit)
}

fn image_pull_policy(p: &mut Parser<'_>, var: Var<'_>) -> String {
    let policies = [
        ("Always", "Always"),
        ("Never", "Never"),
        ("IfNotPresent", "IfNotPresent"),
    ];
    p.choice(var, &policies, "IfNotPresent").to_owned()
}

fn volume_type(p: &mut Parser<'_>, var: Var<'_>) -> VolumeType {
    let types = [("emptyDir", VolumeType::EmptyDir), ("pvc", VolumeType::Pvc)];
    p.choice(var, &types, VolumeType::EmptyDir)
}

fn volume_size(p: &mut Parser<'_>, var: Var<'_>) -> Quantity {
    match p.quantity(var) {
        Some(Some(size)) => size,
        Some(None) => {
            p.invalid(&var, var.value.unwrap_or_default(), "must be greater than 0");
            Quantity::default()
        }
        None => Quantity::default(),
    }
}

fn frontend_url(p: &mut Parser<'_>, var: Var<'_>, add_host_gateway: bool) -> String {
    let Some(value) = var.value else {
        p.problem(
            &var,
            "is required (for example http://sourcegraph-frontend:30080)",
        );
        return String::new();
    };
    match parse_http_url(value) {
        Ok(url) => {
            if url
                .host_str()
                .is_some_and(|host| host.eq_ignore_ascii_case("host.docker.internal"))
                && !add_host_gateway
            {
                p.problem(
                    &var,
                    "points at host.docker.internal, which needs EXECUTOR_DOCKER_ADD_HOST_GATEWAY=true",
                );
            }
            value.trim_end_matches('/').to_owned()
        }
        // NB: user information may hold a password, so that value is not quoted.
        Err(HttpUrlError::UserInfo) => {
            p.problem(&var, "must not contain user information (user:password@); the executor authenticates with EXECUTOR_FRONTEND_PASSWORD");
            String::new()
        }
        Err(HttpUrlError::Invalid(reason)) => {
            p.invalid(
                &var,
                value,
                format_args!("is not a URL of the form http(s)://host[:port][/path]: {reason}"),
            );
            String::new()
        }
    }
}

fn exporter_url(p: &mut Parser<'_>, var: Var<'_>) -> Option<String> {
    let value = var.value?;
    match parse_http_url(value) {
        Ok(_) => {}
        Err(HttpUrlError::UserInfo) => p.problem(&var, "must not contain user information (user:password@)"),
        Err(HttpUrlError::Invalid(reason)) => {
            p.invalid(
                &var,
                value,
                format_args!("is not a URL of the form http(s)://host[:port][/path]: {reason}"),
            );
        }
    }
    Some(value.to_owned())
}

fn queues(p: &mut Parser<'_>, single: Var<'_>, multi: Var<'_>) -> QueueSelection {
    let known = KNOWN_QUEUES.join(" or ");
    match (single.value, multi.value) {
        (None, None) => {
            p.push(format!(
                "neither {} nor {} is set (expected one of them, naming {known})",
                p.label(&single),
                p.label(&multi)
            ));
            QueueSelection::Single(String::new())
        }
        (Some(_), Some(_)) => {
            p.push(format!(
                "both {} and {} are set (expected exactly one of them)",
                p.label(&single),
                p.label(&multi)
            ));
            QueueSelection::Single(String::new())
        }
        (Some(name), None) => {
            if !KNOWN_QUEUES.contains(&name) {
                p.invalid(
                    &single,
                    name,
                    format_args!("is not a known queue (expected {known})"),
                );
            }
            QueueSelection::Single(name.to_owned())
        }
        (None, Some(list)) => {
            let mut names: Vec<String> = Vec::new();
            // NB: like Sourcegraph, no trimming: " batches" would be sent to the frontend verbatim.
            for name in list.split(',') {
                if !KNOWN_QUEUES.contains(&name) {
                    p.invalid(
                        &multi,
                        name,
                        format_args!(
                            "is not a known queue (expected {known}, comma-separated without spaces)"
                        ),
                    );
                } else if names.iter().any(|seen| seen == name) {
                    p.invalid(&multi, name, "is listed more than once");
                }
                names.push(name.to_owned());
            }
            QueueSelection::Multi(names)
        }
    }
}

/// Sizes like `12G` that the frontend interprets; only the shape is checked here.
fn data_size(p: &mut Parser<'_>, var: Var<'_>) -> String {
    let Some(value) = var.value else {
        return String::new();
    };
    let digits = value
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, unit) = value.split_at(digits);
    let number_ok = !number.is_empty() && number.parse::<f64>().is_ok();
    let unit_ok = unit
        .trim_start_matches(' ')
        .bytes()
        .all(|b| b.is_ascii_alphabetic());
    if !number_ok || !unit_ok {
        p.invalid(&var, value, "is not a size (examples: 12G, 512M, 20GB)");
    }
    value.to_owned()
}

/// Checks a secret JSON document without ever quoting it: only the position of a syntax error.
fn check_secret_json_object(p: &mut Parser<'_>, var: Var<'_>) {
    let Some(value) = var.value else { return };
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(serde_json::Value::Object(_)) => {}
        Ok(_) => p.problem(&var, "is not a JSON object like {\"auths\": {...}} (value not shown: it holds credentials)"),
        Err(error) => p.problem(
            &var,
            format_args!(
                "is not valid JSON: syntax error at line {} column {} (value not shown: it holds credentials)",
                error.line(),
                error.column()
            ),
        ),
    }
}

fn log_level(p: &mut Parser<'_>, var: Var<'_>) -> String {
    let Some(value) = var.value else {
        return "warn".to_owned();
    };
    let directive = match value.to_ascii_lowercase().as_str() {
        "dbug" | "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "eror" | "error" => "error",
        // tracing has no level above error.
        "crit" => "error",
        _ => {
            p.invalid(
                &var,
                value,
                "is not a log level (expected dbug, info, warn, eror or crit)",
            );
            "warn"
        }
    };
    directive.to_owned()
}

/// Sourcegraph's names: `condensed` and `console` are for people, `json` for machines, and
/// `logfmt` means JSON too, as in sourcegraph/log, whose logfmt output was retired.
fn log_format(p: &mut Parser<'_>, var: Var<'_>) -> LogFormat {
    let Some(value) = var.value else {
        return LogFormat::Condensed;
    };
    match value.to_ascii_lowercase().as_str() {
        "condensed" => LogFormat::Condensed,
        "json" | "logfmt" => LogFormat::Json,
        "console" => LogFormat::Console,
        _ => {
            p.invalid(
                &var,
                value,
                "is not a log format (expected condensed, console, json or logfmt)",
            );
            LogFormat::Condensed
        }
    }
}

/// The machine's hostname, as Go's `os.Hostname` reads it, when `HOSTNAME` is unset.
fn os_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|content| content.trim().to_owned())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "executor".to_owned())
}

fn instance_id(p: &mut Parser<'_>, var: Var<'_>, hostname: &str) -> String {
    const RULE: &str = "is not a valid Kubernetes label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)";
    match var.value {
        Some(value) => {
            if !labels::is_valid_label_value(value) {
                p.invalid(&var, value, RULE);
            }
            value.to_owned()
        }
        None => {
            if !labels::is_valid_label_value(hostname) {
                p.problem(
                    &var,
                    format_args!("is unset, so it defaults to the hostname {hostname:?}, which {RULE}; set EXECUTOR_INSTANCE_ID"),
                );
            }
            hostname.to_owned()
        }
    }
}

fn listen_addr(p: &mut Parser<'_>, var: Var<'_>) -> SocketAddr {
    let fallback = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 6060);
    let Some(value) = var.value else { return fallback };
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return addr;
    }
    let parsed = value.rsplit_once(':').and_then(|(host, port)| {
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|_| port.bytes().all(|b| b.is_ascii_digit()))?;
        match host {
            "" => Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)),
            "localhost" => Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
            _ => None,
        }
    });
    parsed.unwrap_or_else(|| {
        p.invalid(
            &var,
            value,
            "is not a listen address (examples: :6060, 0.0.0.0:6060, 127.0.0.1:6060, [::]:6060, localhost:6060)",
        );
        fallback
    })
}

fn node_pinning(p: &mut Parser<'_>, var: Var<'_>) -> NodePinning {
    let Some(value) = var.value else {
        return NodePinning::Affinity;
    };
    match value.to_ascii_lowercase().as_str() {
        "affinity" => NodePinning::Affinity,
        "nodename" => NodePinning::NodeName,
        _ => {
            p.invalid(
                &var,
                value,
                "is not a node pinning mode (expected affinity or nodeName)",
            );
            NodePinning::Affinity
        }
    }
}

fn node_selector(p: &mut Parser<'_>, var: Var<'_>) -> BTreeMap<String, String> {
    let mut selector = BTreeMap::new();
    let Some(value) = var.value else { return selector };
    for pair in value.split(',') {
        match pair.split_once('=') {
            Some((key, label)) if !key.is_empty() && !label.contains('=') => {
                selector.insert(key.to_owned(), label.to_owned());
            }
            _ => p.invalid(
                &var,
                pair,
                "is not a key=value pair (expected comma-separated key=value pairs, e.g. disk=ssd,zone=a)",
            ),
        }
    }
    selector
}

const REQUIREMENT_OPERATORS: [&str; 6] = ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"];

fn node_requirements(p: &mut Parser<'_>, var: Var<'_>) -> Vec<NodeSelectorRequirement> {
    let requirements: Vec<NodeSelectorRequirement> = p.json(var, "array of NodeSelectorRequirement");
    for (index, requirement) in requirements.iter().enumerate() {
        if requirement.key.is_empty() {
            p.problem(&var, format_args!("entry {index} has an empty key"));
        }
        if !REQUIREMENT_OPERATORS.contains(&requirement.operator.as_str()) {
            p.problem(
                &var,
                format_args!(
                    "entry {index} has operator {:?} (expected one of {})",
                    requirement.operator,
                    REQUIREMENT_OPERATORS.join(", ")
                ),
            );
        }
    }
    requirements
}

fn pod_affinity_terms(p: &mut Parser<'_>, var: Var<'_>) -> Vec<PodAffinityTerm> {
    let terms: Vec<PodAffinityTerm> = p.json(var, "array of PodAffinityTerm");
    for (index, term) in terms.iter().enumerate() {
        // Kubernetes rejects an empty topologyKey, which would fail every Job at creation.
        if term.topology_key.is_empty() {
            p.problem(
                &var,
                format_args!("entry {index} has no topologyKey (expected e.g. \"topologyKey\": \"kubernetes.io/hostname\")"),
            );
        }
    }
    terms
}

/// Kubernetes rejects a pod whose request exceeds its limit; say so now rather than per job.
fn check_request_within_limit(
    p: &mut Parser<'_>,
    (request_var, request): (Var<'_>, &Option<Quantity>),
    (limit_var, limit): (Var<'_>, &Option<Quantity>),
) {
    let (Some(request), Some(limit)) = (request, limit) else {
        return;
    };
    let (Some(request_value), Some(limit_value)) = (quantity_value(&request.0), quantity_value(&limit.0))
    else {
        return;
    };
    if request_value > limit_value * (1.0 + 1e-12) {
        let limit_label = p.label(&limit_var);
        p.invalid(
            &request_var,
            &request.0,
            format_args!(
                "is more than {limit_label} {:?}; Kubernetes rejects pods whose request exceeds their limit",
                limit.0
            ),
        );
    }
}

fn image_pull_secrets(p: &mut Parser<'_>, var: Var<'_>) -> Vec<String> {
    let Some(value) = var.value else { return Vec::new() };
    let names: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect();
    for name in &names {
        if !labels::is_dns_subdomain(name) {
            p.invalid(
                &var,
                name,
                format_args!("is not a valid Secret name: {DNS_SUBDOMAIN_RULE}"),
            );
        }
    }
    names
}

fn image_reference(p: &mut Parser<'_>, var: Var<'_>) -> String {
    let Some(value) = var.value else {
        return String::new();
    };
    if value.chars().any(char::is_whitespace) {
        p.invalid(&var, value, "is not an image reference (it contains whitespace)");
    }
    value.to_owned()
}

/// Variables Sourcegraph's other runtimes use: accepted, ignored, but still checked so a typo does
/// not go unnoticed until the configuration is moved to an executor that reads them.
fn check_ignored(env: &Env, p: &mut Parser<'_>) {
    p.bool(env.var("EXECUTOR_USE_KUBERNETES"));
    p.duration(env.var("EXECUTOR_CLEANUP_TASK_INTERVAL"));
    for name in [
        "EXECUTOR_FIRECRACKER_BANDWIDTH_INGRESS",
        "EXECUTOR_FIRECRACKER_BANDWIDTH_EGRESS",
        "KUBERNETES_JOB_RETRY_BACKOFF_LIMIT",
    ] {
        p.int(env.var(name), i64::MIN, i64::MAX);
    }
    p.duration(env.var("KUBERNETES_JOB_RETRY_BACKOFF_DURATION"));
    // Free-form strings: nothing to check. The persistence volume is vestigial in Sourcegraph too:
    // only its removed multi-job mode mounted that claim.
    for name in [
        "EXECUTOR_VM_PREFIX",
        "EXECUTOR_VM_STARTUP_SCRIPT_PATH",
        "EXECUTOR_FIRECRACKER_IMAGE",
        "EXECUTOR_FIRECRACKER_KERNEL_IMAGE",
        "EXECUTOR_FIRECRACKER_SANDBOX_IMAGE",
        "EXECUTOR_DOCKER_HOST_MOUNT_PATH",
        "EXECUTOR_DOCKER_REGISTRY_MIRROR_URL",
        "EXECUTOR_DOCKER_ADDITIONAL_MOUNTS",
        "EXECUTOR_KUBERNETES_PERSISTENCE_VOLUME_NAME",
    ] {
        p.string(env.var(name));
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, time::Duration};

    use super::*;
    use crate::config::{IGNORED_VARIABLES, VARIABLES};

    const PASSWORD: &str = "pw-Zq7xK2mVt9rLsB4nWcH8";

    /// The variables every test needs, overlaid with `extra` (an empty value replaces a required one
    /// with "unset").
    fn env_with(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars: BTreeMap<String, String> = [
            ("EXECUTOR_FRONTEND_URL", "http://sourcegraph-frontend:30080"),
            ("EXECUTOR_FRONTEND_PASSWORD", PASSWORD),
            ("EXECUTOR_QUEUE_NAME", "batches"),
            ("HOSTNAME", "executor-7d9f8-abcde"),
        ]
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
        for (name, value) in extra {
            vars.insert(name.to_string(), value.to_string());
        }
        vars.into_iter().collect()
    }

    fn config_with(extra: &[(&str, &str)]) -> Config {
        match Config::from_vars(env_with(extra)) {
            Ok(config) => config,
            Err(error) => panic!("expected a valid configuration, got: {error}"),
        }
    }

    fn problems_with(extra: &[(&str, &str)]) -> Vec<String> {
        match Config::from_vars(env_with(extra)) {
            Ok(config) => panic!("expected problems for {extra:?}, got {config:?}"),
            Err(error) => error.problems,
        }
    }

    fn q(text: &str) -> Option<Quantity> {
        Some(Quantity(text.to_owned()))
    }

    #[test]
    fn defaults_with_only_the_required_variables() {
        let config = config_with(&[]);
        assert_eq!(config.frontend_url, "http://sourcegraph-frontend:30080");
        assert_eq!(config.frontend_password.expose(), PASSWORD);
        assert_eq!(config.queues, QueueSelection::Single("batches".into()));
        assert_eq!(config.poll_interval, Duration::from_secs(1));
        assert_eq!(config.maximum_num_jobs, 1);
        assert_eq!(config.maximum_runtime_per_job, Duration::from_secs(30 * 60));
        assert_eq!(config.num_total_jobs, None);
        assert_eq!(config.max_active_time, None);
        assert!(!config.keep_workspaces);
        assert_eq!(config.job_num_cpus, 4);
        assert_eq!(config.job_memory, "12G");
        assert_eq!(config.job_disk_space, "20G");
        assert_eq!(config.node_exporter_url, None);
        assert_eq!(config.docker_registry_node_exporter_url, None);
        assert!(!config.job_audit_logging);
        assert_eq!(config.log_level, "warn");
        assert_eq!(config.log_format, LogFormat::Condensed);
        assert!(!config.trace_log);
        assert_eq!(config.hostname, "executor-7d9f8-abcde");
        assert_eq!(config.instance_id, "executor-7d9f8-abcde");
        assert_eq!(config.reported_version, "0.0.0+dev");
        assert_eq!(
            config.health_server_addr,
            "0.0.0.0:6060".parse().expect("literal address")
        );
        assert_eq!(config.shutdown_grace_period, Duration::from_secs(5 * 60));
        assert_eq!(config.log_entry_max_bytes, 1_048_576);
        assert_eq!(
            (config.recommended_ulimit_nofile, config.recommended_ulimit_nproc),
            (65536, 4096)
        );
        assert_eq!(
            (config.pod_name.as_deref(), config.own_pod_namespace()),
            (None, "default")
        );

        let k = &config.kubernetes;
        assert_eq!(k.config_path, None);
        assert_eq!(k.namespace, "default");
        assert_eq!(k.node_name, None);
        assert_eq!(k.node_pinning, NodePinning::Affinity);
        assert!(k.node_selector.is_empty());
        assert!(k.node_required_affinity_match_expressions.is_empty());
        assert!(k.node_required_affinity_match_fields.is_empty());
        assert!(k.pod_affinity.is_empty());
        assert!(k.pod_anti_affinity.is_empty());
        assert!(k.tolerations.is_empty());
        assert_eq!(k.request_cpu, None);
        assert_eq!(k.request_memory, q("12Gi"));
        assert_eq!(k.limit_cpu, None);
        assert_eq!(k.limit_memory, q("12Gi"));
        assert_eq!(k.job_deadline_seconds, 1200);
        assert!(!k.keep_jobs);
        assert_eq!(k.run_as_user, None);
        assert_eq!(k.run_as_group, None);
        assert_eq!(k.fs_group, Some(1000));
        assert!(k.job_annotations.is_empty());
        assert!(k.pod_annotations.is_empty());
        assert!(k.image_pull_secrets.is_empty());
        assert_eq!(k.image_pull_policy, "IfNotPresent");
        assert_eq!(k.step_image, "sourcegraph/batcheshelper:insiders");
        assert_eq!(k.volume_type, VolumeType::EmptyDir);
        assert_eq!(k.volume_size, Quantity("5Gi".into()));
        assert!(k.additional_volumes.is_empty());
        assert!(k.additional_volume_mounts.is_empty());
        assert_eq!(k.git_ca_cert, None);
        assert!(!k.host_network);
        assert_eq!(k.job_service_account, None);
        assert!(!k.automount_service_account_token);
        assert_eq!(k.ttl_seconds_after_finished, Some(600));
        assert_eq!(k.pending_timeout, Duration::from_secs(600));
        assert_eq!(k.unschedulable_timeout, Duration::from_secs(60));
        assert_eq!(k.image_pull_timeout, Duration::from_secs(60));
        assert_eq!(k.pod_creation_timeout, Duration::from_secs(30));
    }

    /// Every variable set to a value different from its default.
    fn full_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("EXECUTOR_FRONTEND_URL", "https://host.docker.internal:8443/sg/"),
            ("EXECUTOR_FRONTEND_PASSWORD", PASSWORD),
            ("EXECUTOR_QUEUE_NAME", ""),
            ("EXECUTOR_QUEUE_NAMES", "batches,codeintel"),
            ("EXECUTOR_QUEUE_POLL_INTERVAL", "250ms"),
            ("EXECUTOR_MAXIMUM_NUM_JOBS", "8"),
            ("EXECUTOR_MAXIMUM_RUNTIME_PER_JOB", "1h30m"),
            ("EXECUTOR_NUM_TOTAL_JOBS", "100"),
            ("EXECUTOR_MAX_ACTIVE_TIME", "12h"),
            ("EXECUTOR_KEEP_WORKSPACES", "true"),
            ("EXECUTOR_USE_FIRECRACKER", "false"),
            ("EXECUTOR_JOB_NUM_CPUS", "2"),
            ("EXECUTOR_FIRECRACKER_NUM_CPUS", "16"),
            ("EXECUTOR_JOB_MEMORY", "8G"),
            ("EXECUTOR_FIRECRACKER_MEMORY", "64G"),
            ("EXECUTOR_FIRECRACKER_DISK_SPACE", "50G"),
            ("EXECUTOR_DOCKER_ADD_HOST_GATEWAY", "true"),
            (
                "EXECUTOR_DOCKER_AUTH_CONFIG",
                r#"{"auths":{"registry.example.com":{"auth":"dXNlcjpwYXNz"}}}"#,
            ),
            ("NODE_EXPORTER_URL", "http://node-exporter:9100"),
            (
                "DOCKER_REGISTRY_NODE_EXPORTER_URL",
                "http://registry-exporter:9100",
            ),
            ("EXECUTOR_ENABLE_JOB_AUDIT_LOGGING", "T"),
            ("SRC_LOG_LEVEL", "dbug"),
            ("SRC_LOG_FORMAT", "json"),
            ("SRC_TRACE_LOG", "1"),
            ("HOSTNAME", "executor-pod-1"),
            ("EXECUTOR_KUBERNETES_CONFIG_PATH", "/etc/kube/config"),
            ("EXECUTOR_KUBERNETES_NAMESPACE", "sourcegraph"),
            ("EXECUTOR_KUBERNETES_CLIENT_QPS", "20"),
            ("EXECUTOR_KUBERNETES_CLIENT_BURST", "40"),
            ("EXECUTOR_KUBERNETES_NODE_NAME", "node-a.example"),
            ("EXECUTOR_KUBERNETES_NODE_SELECTOR", "disk=ssd,zone=a"),
            (
                "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS",
                r#"[{"key":"pool","operator":"In","values":["jobs"]}]"#,
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_FIELDS",
                r#"[{"key":"metadata.name","operator":"NotIn","values":["node-b"]}]"#,
            ),
            (
                "EXECUTOR_KUBERNETES_POD_AFFINITY",
                r#"[{"labelSelector":{"matchLabels":{"app":"cache"}},"topologyKey":"kubernetes.io/hostname"}]"#,
            ),
            (
                "EXECUTOR_KUBERNETES_POD_ANTI_AFFINITY",
                r#"[{"labelSelector":{"matchLabels":{"app":"db"}},"topologyKey":"topology.kubernetes.io/zone"}]"#,
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_TOLERATIONS",
                r#"[{"key":"jobs","operator":"Equal","value":"yes","effect":"NoSchedule"}]"#,
            ),
            ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU", "500m"),
            ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY", "1Gi"),
            ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU", "2"),
            ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY", "4e9"),
            ("EXECUTOR_KUBERNETES_PERSISTENCE_VOLUME_NAME", "old-pvc"),
            ("KUBERNETES_JOB_DEADLINE", "3600"),
            ("KUBERNETES_KEEP_JOBS", "false"),
            ("KUBERNETES_RUN_AS_USER", "100"),
            ("KUBERNETES_RUN_AS_GROUP", "0"),
            ("KUBERNETES_FS_GROUP", "2147483647"),
            ("KUBERNETES_JOB_ANNOTATIONS", r#"{"team":"search"}"#),
            (
                "KUBERNETES_JOB_POD_ANNOTATIONS",
                r#"{"sidecar.istio.io/inject":"false"}"#,
            ),
            ("KUBERNETES_IMAGE_PULL_SECRETS", " regcred , ,other.creds,"),
            ("KUBERNETES_IMAGE_PULL_POLICY", "Always"),
            (
                "KUBERNETES_JOB_STEP_IMAGE",
                "registry.example.com/batcheshelper:6.0.0",
            ),
            ("KUBERNETES_SINGLE_JOB_STEP_IMAGE", "old/batcheshelper:1"),
            ("KUBERNETES_JOB_VOLUME_TYPE", "pvc"),
            ("KUBERNETES_JOB_VOLUME_SIZE", "20Gi"),
            (
                "KUBERNETES_ADDITIONAL_JOB_VOLUMES",
                r#"[{"name":"ca","configMap":{"name":"corp-ca"}}]"#,
            ),
            (
                "KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS",
                r#"[{"name":"ca","mountPath":"/ca","readOnly":true}]"#,
            ),
            ("KUBERNETES_GIT_CA_CERT", "/ca/ca.crt"),
            ("KUBERNETES_JOB_HOST_NETWORK", "true"),
            ("KUBERNETES_SINGLE_JOB_POD", "true"),
            ("EXECUTOR_INSTANCE_ID", "sg-executor_batches.1"),
            ("EXECUTOR_REPORTED_VERSION", "6.2.1106"),
            ("EXECUTOR_HEALTH_SERVER_ADDR", "localhost:8080"),
            ("EXECUTOR_SHUTDOWN_GRACE_PERIOD", "0"),
            ("EXECUTOR_LOG_ENTRY_MAX_BYTES", "4096"),
            ("EXECUTOR_KUBERNETES_NODE_PINNING", "NodeName"),
            ("KUBERNETES_JOB_SERVICE_ACCOUNT", "job-runner"),
            ("KUBERNETES_JOB_AUTOMOUNT_SERVICE_ACCOUNT_TOKEN", "true"),
            ("KUBERNETES_JOB_TTL_SECONDS_AFTER_FINISHED", "3600"),
            ("KUBERNETES_JOB_PENDING_TIMEOUT", "2m"),
            ("KUBERNETES_JOB_UNSCHEDULABLE_TIMEOUT", "20s"),
            ("KUBERNETES_JOB_IMAGE_PULL_TIMEOUT", "90s"),
            ("KUBERNETES_JOB_POD_CREATION_TIMEOUT", "45s"),
            ("EXECUTOR_RECOMMENDED_ULIMIT_NOFILE", "1048576"),
            ("EXECUTOR_RECOMMENDED_ULIMIT_NPROC", "512"),
            ("POD_NAME", "executor-7d9f8-abcde"),
            ("POD_NAMESPACE", "sourcegraph-executors"),
            ("POD_UID", "5f1c0de1-aaaa-bbbb-cccc-0123456789ab"),
        ]
    }

    #[test]
    fn full_env_covers_every_variable() {
        let names: BTreeSet<&str> = full_env().iter().map(|(name, _)| *name).collect();
        let missing: Vec<&str> = VARIABLES
            .iter()
            .map(|variable| variable.name)
            .filter(|name| !names.contains(name))
            .collect();
        assert!(missing.is_empty(), "full_env() lacks {missing:?}");
    }

    #[test]
    fn every_variable_is_parsed() {
        let config = config_with(&full_env());
        assert_eq!(config.frontend_url, "https://host.docker.internal:8443/sg");
        assert_eq!(
            config.queues,
            QueueSelection::Multi(vec!["batches".into(), "codeintel".into()])
        );
        assert_eq!(config.poll_interval, Duration::from_millis(250));
        assert_eq!(config.maximum_num_jobs, 8);
        assert_eq!(config.maximum_runtime_per_job, Duration::from_secs(90 * 60));
        assert_eq!(config.num_total_jobs, Some(100));
        assert_eq!(config.max_active_time, Some(Duration::from_secs(12 * 3600)));
        assert!(config.keep_workspaces);
        assert_eq!(config.job_num_cpus, 2, "the primary name wins over its fallback");
        assert_eq!(config.job_memory, "8G");
        assert_eq!(config.job_disk_space, "50G");
        assert_eq!(
            config.node_exporter_url.as_deref(),
            Some("http://node-exporter:9100")
        );
        assert_eq!(
            config.docker_registry_node_exporter_url.as_deref(),
            Some("http://registry-exporter:9100")
        );
        assert!(config.job_audit_logging);
        assert_eq!(config.log_level, "debug");
        assert_eq!(config.log_format, LogFormat::Json);
        assert!(config.trace_log);
        assert_eq!(config.hostname, "executor-pod-1");
        assert_eq!(config.instance_id, "sg-executor_batches.1");
        assert_eq!(config.reported_version, "6.2.1106");
        assert_eq!(
            config.health_server_addr,
            "127.0.0.1:8080".parse().expect("literal address")
        );
        assert_eq!(config.shutdown_grace_period, Duration::ZERO);
        assert_eq!(config.log_entry_max_bytes, 4096);
        assert_eq!(
            (config.recommended_ulimit_nofile, config.recommended_ulimit_nproc),
            (1_048_576, 512)
        );
        assert_eq!(config.pod_name.as_deref(), Some("executor-7d9f8-abcde"));
        assert_eq!(config.own_pod_namespace(), "sourcegraph-executors");

        let k = &config.kubernetes;
        assert_eq!(k.config_path.as_deref(), Some("/etc/kube/config"));
        assert_eq!((k.client_qps, k.client_burst), (20, 40));
        assert_eq!(k.namespace, "sourcegraph");
        assert_eq!(k.node_name.as_deref(), Some("node-a.example"));
        assert_eq!(k.node_pinning, NodePinning::NodeName);
        assert_eq!(
            k.node_selector,
            BTreeMap::from([
                ("disk".to_owned(), "ssd".to_owned()),
                ("zone".to_owned(), "a".to_owned())
            ])
        );
        let expression = &k.node_required_affinity_match_expressions;
        assert_eq!((expression.len(), expression[0].key.as_str()), (1, "pool"));
        assert_eq!(expression[0].operator, "In");
        assert_eq!(expression[0].values, Some(vec!["jobs".to_owned()]));
        let field = &k.node_required_affinity_match_fields;
        assert_eq!(
            (field.len(), field[0].key.as_str(), field[0].operator.as_str()),
            (1, "metadata.name", "NotIn")
        );
        assert_eq!(k.pod_affinity.len(), 1);
        assert_eq!(k.pod_affinity[0].topology_key, "kubernetes.io/hostname");
        let selector = k.pod_affinity[0]
            .label_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref());
        assert_eq!(
            selector.and_then(|labels| labels.get("app")).map(String::as_str),
            Some("cache")
        );
        assert_eq!(k.pod_anti_affinity[0].topology_key, "topology.kubernetes.io/zone");
        assert_eq!(k.tolerations.len(), 1);
        assert_eq!(k.tolerations[0].effect.as_deref(), Some("NoSchedule"));
        assert_eq!(k.tolerations[0].value.as_deref(), Some("yes"));
        assert_eq!(k.request_cpu, q("500m"));
        assert_eq!(k.request_memory, q("1Gi"));
        assert_eq!(k.limit_cpu, q("2"));
        assert_eq!(k.limit_memory, q("4e9"));
        assert_eq!(k.job_deadline_seconds, 3600);
        assert!(!k.keep_jobs);
        assert_eq!(k.run_as_user, Some(100));
        assert_eq!(k.run_as_group, Some(0));
        assert_eq!(k.fs_group, Some(2_147_483_647));
        assert_eq!(k.job_annotations.get("team").map(String::as_str), Some("search"));
        assert_eq!(
            k.pod_annotations
                .get("sidecar.istio.io/inject")
                .map(String::as_str),
            Some("false")
        );
        assert_eq!(
            k.image_pull_secrets,
            vec!["regcred".to_owned(), "other.creds".to_owned()]
        );
        assert_eq!(k.image_pull_policy, "Always");
        assert_eq!(k.step_image, "registry.example.com/batcheshelper:6.0.0");
        assert_eq!(k.volume_type, VolumeType::Pvc);
        assert_eq!(k.volume_size, Quantity("20Gi".into()));
        assert_eq!(k.additional_volumes.len(), 1);
        assert_eq!(k.additional_volumes[0].name, "ca");
        let config_map = k.additional_volumes[0]
            .config_map
            .as_ref()
            .map(|source| source.name.as_str());
        assert_eq!(config_map, Some("corp-ca"));
        assert_eq!(k.additional_volume_mounts.len(), 1);
        assert_eq!(k.additional_volume_mounts[0].mount_path, "/ca");
        assert_eq!(k.additional_volume_mounts[0].read_only, Some(true));
        assert_eq!(k.git_ca_cert.as_deref(), Some("/ca/ca.crt"));
        assert!(k.host_network);
        assert_eq!(k.job_service_account.as_deref(), Some("job-runner"));
        assert!(k.automount_service_account_token);
        assert_eq!(k.ttl_seconds_after_finished, Some(3600));
        assert_eq!(k.pending_timeout, Duration::from_secs(120));
        assert_eq!(k.unschedulable_timeout, Duration::from_secs(20));
        assert_eq!(k.image_pull_timeout, Duration::from_secs(90));
        assert_eq!(k.pod_creation_timeout, Duration::from_secs(45));
    }

    #[test]
    fn helm_rendered_env_with_empty_values_parses() {
        let config = Config::from_vars(
            [
                (
                    "EXECUTOR_FRONTEND_URL",
                    "http://sourcegraph-frontend.sg.svc.cluster.local:30080",
                ),
                ("EXECUTOR_FRONTEND_PASSWORD", PASSWORD),
                ("EXECUTOR_MAXIMUM_NUM_JOBS", "10"),
                ("EXECUTOR_MAXIMUM_RUNTIME_PER_JOB", "30m"),
                ("EXECUTOR_QUEUE_NAME", ""),
                ("EXECUTOR_QUEUE_NAMES", "batches,codeintel"),
                ("SRC_LOG_LEVEL", "warn"),
                ("SRC_LOG_FORMAT", "condensed"),
                ("SRC_TRACE_LOG", "false"),
                ("EXECUTOR_KUBERNETES_NAMESPACE", "sg"),
                ("EXECUTOR_KUBERNETES_CONFIG_PATH", ""),
                ("EXECUTOR_KUBERNETES_NODE_NAME", ""),
                ("EXECUTOR_KUBERNETES_NODE_SELECTOR", ""),
                ("EXECUTOR_KUBERNETES_NODE_TOLERATIONS", ""),
                ("EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS", ""),
                ("EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_FIELDS", ""),
                ("EXECUTOR_KUBERNETES_POD_AFFINITY", ""),
                ("EXECUTOR_KUBERNETES_POD_ANTI_AFFINITY", ""),
                ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU", ""),
                ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY", "1Gi"),
                ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU", ""),
                ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY", "12Gi"),
                ("KUBERNETES_JOB_DEADLINE", "1200"),
                ("KUBERNETES_RUN_AS_USER", ""),
                ("KUBERNETES_RUN_AS_GROUP", ""),
                ("KUBERNETES_FS_GROUP", "1000"),
                ("EXECUTOR_DOCKER_ADD_HOST_GATEWAY", "false"),
                ("KUBERNETES_KEEP_JOBS", "false"),
                ("EXECUTOR_KEEP_WORKSPACES", "false"),
                ("EXECUTOR_USE_FIRECRACKER", "false"),
                ("EXECUTOR_INSTANCE_ID", "sg-executor-k8s"),
                // Injected by Kubernetes and the image; not ours to read.
                ("HOSTNAME", "executor-batches-codeintel-5d8f9c7b6-x2x4q"),
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("KUBERNETES_SERVICE_PORT", "443"),
                ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
                ("HOME", "/home/sourcegraph"),
            ]
            .map(|(name, value)| (name.to_owned(), value.to_owned())),
        );
        let config = match config {
            Ok(config) => config,
            Err(error) => panic!("Helm-rendered environment rejected: {error}"),
        };
        assert_eq!(config.maximum_num_jobs, 10);
        assert_eq!(
            config.queues,
            QueueSelection::Multi(vec!["batches".into(), "codeintel".into()])
        );
        assert_eq!(config.kubernetes.namespace, "sg");
        assert_eq!(config.kubernetes.config_path, None);
        assert_eq!(config.kubernetes.request_cpu, None);
        assert_eq!(config.kubernetes.request_memory, q("1Gi"));
        assert_eq!(config.kubernetes.run_as_user, None);
        assert!(config.kubernetes.tolerations.is_empty());
        assert_eq!(config.instance_id, "sg-executor-k8s");
    }

    #[test]
    fn kustomize_component_env_parses() {
        let config = config_with(&[
            ("EXECUTOR_USE_FIRECRACKER", "false"),
            ("EXECUTOR_KUBERNETES_PERSISTENCE_VOLUME_NAME", "sg-executor-pvc"),
            (
                "EXECUTOR_KUBERNETES_POD_AFFINITY",
                r#"[{"labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["executor"]}]}, "topologyKey": "kubernetes.io/hostname"}]"#,
            ),
            ("EXECUTOR_FRONTEND_URL", "http://sourcegraph-frontend"),
            ("EXECUTOR_MAXIMUM_NUM_JOBS", "8"),
            ("EXECUTOR_QUEUE_NAME", ""),
            ("EXECUTOR_QUEUE_NAMES", "codeintel"),
            ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY", "5Gi"),
        ]);
        assert_eq!(config.frontend_url, "http://sourcegraph-frontend");
        assert_eq!(config.queues, QueueSelection::Multi(vec!["codeintel".into()]));
        assert_eq!(config.kubernetes.pod_affinity.len(), 1);
        assert_eq!(config.kubernetes.request_memory, q("5Gi"));
    }

    #[test]
    fn executor_suffix_overrides_the_plain_name() {
        let config = config_with(&[
            ("EXECUTOR_QUEUE_POLL_INTERVAL", "1s"),
            ("EXECUTOR_QUEUE_POLL_INTERVAL_executor", "5s"),
            // An empty override is unset, so the plain value stays.
            ("EXECUTOR_MAXIMUM_NUM_JOBS", "3"),
            ("EXECUTOR_MAXIMUM_NUM_JOBS_executor", ""),
            // An override alone is enough.
            ("KUBERNETES_JOB_DEADLINE_executor", "60"),
        ]);
        assert_eq!(config.poll_interval, Duration::from_secs(5));
        assert_eq!(config.maximum_num_jobs, 3);
        assert_eq!(config.kubernetes.job_deadline_seconds, 60);

        let problems = problems_with(&[("SRC_LOG_LEVEL_executor", "loud")]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("SRC_LOG_LEVEL (set by SRC_LOG_LEVEL_executor): \"loud\""),
            "{problems:?}"
        );
    }

    #[test]
    fn older_names_are_fallbacks() {
        let config = config_with(&[
            ("EXECUTOR_FIRECRACKER_NUM_CPUS", "8"),
            ("EXECUTOR_FIRECRACKER_MEMORY", "32G"),
            ("KUBERNETES_SINGLE_JOB_STEP_IMAGE", "example/helper:1"),
        ]);
        assert_eq!(config.job_num_cpus, 8);
        assert_eq!(config.job_memory, "32G");
        assert_eq!(config.kubernetes.step_image, "example/helper:1");

        // Empty primaries are unset, so the fallback applies.
        let config = config_with(&[
            ("EXECUTOR_JOB_NUM_CPUS", ""),
            ("EXECUTOR_FIRECRACKER_NUM_CPUS", "6"),
        ]);
        assert_eq!(config.job_num_cpus, 6);

        let problems = problems_with(&[("EXECUTOR_FIRECRACKER_NUM_CPUS", "many")]);
        assert_eq!(
            problems,
            vec![
                "EXECUTOR_FIRECRACKER_NUM_CPUS (fallback for EXECUTOR_JOB_NUM_CPUS): \"many\" is not an integer"
            ]
        );
    }

    #[test]
    fn unknown_and_wrongly_cased_names_are_not_read() {
        let config = config_with(&[
            ("executor_maximum_num_jobs", "7"),
            ("Executor_Maximum_Num_Jobs", "9"),
            ("EXECUTOR_MAXIMUM_NUM_JOB", "oops"),
            ("SOMETHING_ELSE_executor", "x"),
        ]);
        assert_eq!(config.maximum_num_jobs, 1);
    }

    #[test]
    fn hostname_falls_back_to_the_machine_name() {
        let config = config_with(&[("HOSTNAME", "")]);
        assert_eq!(config.hostname, os_hostname());
        assert!(!config.hostname.is_empty());
        assert_eq!(config.instance_id, config.hostname);
    }

    /// Kubernetes allows an empty label value, but an instance ID has to tell executors apart: empty
    /// means unset, so the non-empty hostname applies.
    #[test]
    fn the_instance_id_is_never_empty() {
        let config = config_with(&[("EXECUTOR_INSTANCE_ID", "")]);
        assert_eq!(config.instance_id, "executor-7d9f8-abcde");
    }

    #[test]
    fn keep_jobs_disables_the_ttl_and_zero_values_mean_unset() {
        let config = config_with(&[
            ("KUBERNETES_KEEP_JOBS", "true"),
            ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY", "0"),
            ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY", "0Gi"),
            ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU", "0.0"),
            ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU", "-0m"),
        ]);
        assert_eq!(config.kubernetes.ttl_seconds_after_finished, None);
        assert_eq!(config.kubernetes.request_memory, None);
        assert_eq!(config.kubernetes.limit_memory, None);
        assert_eq!(config.kubernetes.request_cpu, None);
        assert_eq!(config.kubernetes.limit_cpu, None);
        let config = config_with(&[("KUBERNETES_JOB_TTL_SECONDS_AFTER_FINISHED", "0")]);
        assert_eq!(config.kubernetes.ttl_seconds_after_finished, None);
    }

    #[test]
    fn log_levels_map_to_tracing_directives() {
        for (level, directive) in [
            ("dbug", "debug"),
            ("debug", "debug"),
            ("info", "info"),
            ("warn", "warn"),
            ("warning", "warn"),
            ("error", "error"),
            ("eror", "error"),
            ("crit", "error"),
            ("INFO", "info"),
        ] {
            assert_eq!(
                config_with(&[("SRC_LOG_LEVEL", level)]).log_level,
                directive,
                "{level}"
            );
        }
        for (format, expected) in [
            ("condensed", LogFormat::Condensed),
            ("json", LogFormat::Json),
            ("logfmt", LogFormat::Json),
            ("JSON", LogFormat::Json),
            ("console", LogFormat::Console),
        ] {
            assert_eq!(
                config_with(&[("SRC_LOG_FORMAT", format)]).log_format,
                expected,
                "{format}"
            );
        }
    }

    #[test]
    fn health_server_addresses() {
        for (text, expected) in [
            (":6060", "0.0.0.0:6060"),
            ("0.0.0.0:7070", "0.0.0.0:7070"),
            ("127.0.0.1:80", "127.0.0.1:80"),
            ("[::]:6060", "[::]:6060"),
            ("localhost:9000", "127.0.0.1:9000"),
        ] {
            let config = config_with(&[("EXECUTOR_HEALTH_SERVER_ADDR", text)]);
            assert_eq!(
                config.health_server_addr,
                expected.parse().expect("literal address"),
                "{text}"
            );
        }
    }

    /// Each case makes exactly one problem, which starts with the variable and says what is expected.
    #[test]
    fn every_invalid_value_is_reported_against_its_variable() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "EXECUTOR_FRONTEND_URL",
                "sourcegraph.example.com",
                "no scheme:// prefix",
            ),
            (
                "EXECUTOR_FRONTEND_URL",
                "ftp://sourcegraph",
                "scheme must be http or https",
            ),
            ("EXECUTOR_FRONTEND_URL", "http://", "it has no host"),
            ("EXECUTOR_FRONTEND_URL", "http://:30080", "it has no host"),
            (
                "EXECUTOR_FRONTEND_URL",
                "http://frontend:99999",
                "port must be a number",
            ),
            (
                "EXECUTOR_FRONTEND_URL",
                "http://frontend?x=1",
                "query or fragment",
            ),
            (
                "EXECUTOR_FRONTEND_URL",
                "http://front end",
                "host may only contain",
            ),
            (
                "EXECUTOR_FRONTEND_URL",
                "http://host.docker.internal:3080",
                "EXECUTOR_DOCKER_ADD_HOST_GATEWAY=true",
            ),
            (
                "EXECUTOR_QUEUE_NAME",
                "indexing",
                "\"indexing\" is not a known queue (expected batches or codeintel)",
            ),
            (
                "EXECUTOR_QUEUE_POLL_INTERVAL",
                "5 sec",
                "\"5 sec\" is not a duration (examples: 1s, 30m, 1h30m)",
            ),
            ("EXECUTOR_QUEUE_POLL_INTERVAL", "0", "must be greater than 0"),
            (
                "EXECUTOR_MAXIMUM_NUM_JOBS",
                "0",
                "\"0\" is too small (expected at least 1)",
            ),
            ("EXECUTOR_MAXIMUM_NUM_JOBS", "ten", "\"ten\" is not an integer"),
            ("EXECUTOR_MAXIMUM_RUNTIME_PER_JOB", "30", "is not a duration"),
            (
                "EXECUTOR_NUM_TOTAL_JOBS",
                "-1",
                "is too small (expected at least 0)",
            ),
            ("EXECUTOR_MAX_ACTIVE_TIME", "-1h", "is negative"),
            (
                "EXECUTOR_KEEP_WORKSPACES",
                "yes",
                "\"yes\" is not a boolean (expected one of 1, t, T, TRUE",
            ),
            (
                "EXECUTOR_USE_FIRECRACKER",
                "true",
                "runs every job as a Kubernetes Job",
            ),
            ("EXECUTOR_USE_FIRECRACKER", "maybe", "is not a boolean"),
            ("EXECUTOR_JOB_NUM_CPUS", "four", "is not an integer"),
            ("EXECUTOR_JOB_NUM_CPUS", "-2", "is too small"),
            ("EXECUTOR_JOB_MEMORY", "lots", "is not a size"),
            ("EXECUTOR_FIRECRACKER_DISK_SPACE", "20G!", "is not a size"),
            ("EXECUTOR_DOCKER_ADD_HOST_GATEWAY", "si", "is not a boolean"),
            (
                "EXECUTOR_DOCKER_AUTH_CONFIG",
                "{\"auths\": ",
                "is not valid JSON: syntax error at line 1",
            ),
            ("EXECUTOR_DOCKER_AUTH_CONFIG", "[1, 2]", "is not a JSON object"),
            ("NODE_EXPORTER_URL", "node-exporter:9100", "is not a URL"),
            (
                "DOCKER_REGISTRY_NODE_EXPORTER_URL",
                "tcp://registry:9100",
                "scheme must be http or https",
            ),
            ("EXECUTOR_ENABLE_JOB_AUDIT_LOGGING", "enabled", "is not a boolean"),
            (
                "SRC_LOG_LEVEL",
                "verbose",
                "is not a log level (expected dbug, info, warn, eror or crit)",
            ),
            (
                "SRC_LOG_FORMAT",
                "xml",
                "is not a log format (expected condensed, console, json or logfmt)",
            ),
            ("SRC_TRACE_LOG", "nah", "is not a boolean"),
            (
                "EXECUTOR_KUBERNETES_NAMESPACE",
                "Source_Graph",
                "is not a valid Kubernetes name",
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_NAME",
                "Node A",
                "is not a valid Kubernetes name",
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_PINNING",
                "scheduler",
                "expected affinity or nodeName",
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_SELECTOR",
                "disk=ssd,zone",
                "\"zone\" is not a key=value pair",
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_SELECTOR",
                "=ssd",
                "\"=ssd\" is not a key=value pair",
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_SELECTOR",
                "a=b=c",
                "\"a=b=c\" is not a key=value pair",
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS",
                "[{\"key\": \"pool\"",
                "is not a valid JSON array of NodeSelectorRequirement: EOF while parsing",
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS",
                r#"[{"key":"pool","operator":"Equals","values":["jobs"]}]"#,
                "entry 0 has operator \"Equals\" (expected one of In, NotIn, Exists, DoesNotExist, Gt, Lt)",
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_FIELDS",
                r#"{"key":"metadata.name","operator":"In"}"#,
                "invalid type: map, expected a sequence",
            ),
            (
                "EXECUTOR_KUBERNETES_POD_AFFINITY",
                r#"[{"labelSelector":{"matchLabels":{"app":"x"}}}]"#,
                "entry 0 has no topologyKey",
            ),
            (
                "EXECUTOR_KUBERNETES_POD_ANTI_AFFINITY",
                r#"[{"topologyKey":"kubernetes.io/hostname"},{"topologyKey":""}]"#,
                "entry 1 has no topologyKey",
            ),
            (
                "EXECUTOR_KUBERNETES_NODE_TOLERATIONS",
                "NoSchedule",
                "is not a valid JSON array of Toleration",
            ),
            (
                "EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU",
                "1 core",
                "is not a Kubernetes quantity: unknown suffix \" core\"",
            ),
            ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU", "-1", "is negative"),
            (
                "EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU",
                "two",
                "does not start with a number",
            ),
            (
                "EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU",
                "1.2.3",
                "unknown suffix \".3\"",
            ),
            (
                "EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY",
                "12GB",
                "unknown suffix \"GB\"",
            ),
            (
                "EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY",
                "16Gi",
                "is more than EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY \"12Gi\"",
            ),
            (
                "EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY",
                "1e",
                "unknown suffix \"e\"",
            ),
            (
                "KUBERNETES_JOB_DEADLINE",
                "0",
                "is too small (expected at least 1)",
            ),
            ("KUBERNETES_JOB_DEADLINE", "20m", "is not an integer"),
            ("KUBERNETES_KEEP_JOBS", "nope", "is not a boolean"),
            (
                "KUBERNETES_RUN_AS_USER",
                "-1",
                "KUBERNETES_RUN_AS_USER must be a UID in the range 0 to 2,147,483,647, but got \"-1\".",
            ),
            (
                "KUBERNETES_RUN_AS_USER",
                "2147483648",
                "must be a UID in the range 0 to 2,147,483,647",
            ),
            (
                "KUBERNETES_RUN_AS_GROUP",
                "staff",
                "must be a GID in the range 0 to 2,147,483,647, but got \"staff\"",
            ),
            (
                "KUBERNETES_FS_GROUP",
                "-1",
                "must be a GID in the range 0 to 2,147,483,647",
            ),
            (
                "KUBERNETES_JOB_ANNOTATIONS",
                r#"{"team": 5}"#,
                "is not a valid JSON object of string values: invalid type: integer `5`",
            ),
            (
                "KUBERNETES_JOB_POD_ANNOTATIONS",
                "team=search",
                "is not a valid JSON object of string values",
            ),
            (
                "KUBERNETES_IMAGE_PULL_SECRETS",
                "regcred,Reg_Cred",
                "\"Reg_Cred\" is not a valid Secret name",
            ),
            (
                "KUBERNETES_IMAGE_PULL_POLICY",
                "always",
                "is not one of Always, Never, IfNotPresent",
            ),
            (
                "KUBERNETES_JOB_STEP_IMAGE",
                "batcheshelper latest",
                "contains whitespace",
            ),
            (
                "KUBERNETES_JOB_VOLUME_TYPE",
                "hostPath",
                "is not one of emptyDir, pvc",
            ),
            ("KUBERNETES_JOB_VOLUME_SIZE", "0", "must be greater than 0"),
            (
                "KUBERNETES_JOB_VOLUME_SIZE",
                "5 GB",
                "is not a Kubernetes quantity",
            ),
            (
                "KUBERNETES_ADDITIONAL_JOB_VOLUMES",
                r#"[{"name": 5}]"#,
                "is not a valid JSON array of Volume: invalid type",
            ),
            (
                "KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS",
                r#"{"name":"x"}"#,
                "is not a valid JSON array of VolumeMount",
            ),
            ("KUBERNETES_JOB_HOST_NETWORK", "on", "is not a boolean"),
            (
                "KUBERNETES_SINGLE_JOB_POD",
                "false",
                "runs each job as a single pod",
            ),
            ("KUBERNETES_SINGLE_JOB_POD", "0", "runs each job as a single pod"),
            ("KUBERNETES_SINGLE_JOB_POD", "maybe", "is not a boolean"),
            (
                "EXECUTOR_INSTANCE_ID",
                "-executor-",
                "is not a valid Kubernetes label value",
            ),
            (
                "EXECUTOR_INSTANCE_ID",
                "a123456789012345678901234567890123456789012345678901234567890123",
                "is not a valid Kubernetes label value",
            ),
            (
                "EXECUTOR_HEALTH_SERVER_ADDR",
                "example.com:6060",
                "is not a listen address",
            ),
            ("EXECUTOR_HEALTH_SERVER_ADDR", "6060", "is not a listen address"),
            ("EXECUTOR_HEALTH_SERVER_ADDR", ":http", "is not a listen address"),
            ("EXECUTOR_SHUTDOWN_GRACE_PERIOD", "5 minutes", "is not a duration"),
            (
                "EXECUTOR_LOG_ENTRY_MAX_BYTES",
                "100",
                "is too small (expected at least 4096)",
            ),
            ("EXECUTOR_LOG_ENTRY_MAX_BYTES", "1MiB", "is not an integer"),
            (
                "EXECUTOR_RECOMMENDED_ULIMIT_NOFILE",
                "0",
                "is too small (expected at least 1)",
            ),
            ("EXECUTOR_RECOMMENDED_ULIMIT_NPROC", "4k", "is not an integer"),
            ("POD_NAME", "Executor_Pod", "is not a valid"),
            ("POD_NAMESPACE", "Sourcegraph", "is not a valid"),
            (
                "KUBERNETES_JOB_SERVICE_ACCOUNT",
                "Runner",
                "is not a valid Kubernetes name",
            ),
            (
                "KUBERNETES_JOB_AUTOMOUNT_SERVICE_ACCOUNT_TOKEN",
                "2",
                "is not a boolean",
            ),
            (
                "KUBERNETES_JOB_TTL_SECONDS_AFTER_FINISHED",
                "-1",
                "is too small (expected at least 0)",
            ),
            (
                "KUBERNETES_JOB_TTL_SECONDS_AFTER_FINISHED",
                "3000000000",
                "is too large",
            ),
            ("KUBERNETES_JOB_PENDING_TIMEOUT", "0s", "must be greater than 0"),
            (
                "KUBERNETES_JOB_UNSCHEDULABLE_TIMEOUT",
                "0",
                "must be greater than 0",
            ),
            ("KUBERNETES_JOB_IMAGE_PULL_TIMEOUT", "1x", "is not a duration"),
            ("KUBERNETES_JOB_POD_CREATION_TIMEOUT", "30", "is not a duration"),
            // Accepted for compatibility, unused, but still checked.
            ("EXECUTOR_USE_KUBERNETES", "nope", "is not a boolean"),
            ("EXECUTOR_CLEANUP_TASK_INTERVAL", "1 minute", "is not a duration"),
            (
                "EXECUTOR_FIRECRACKER_BANDWIDTH_INGRESS",
                "fast",
                "is not an integer",
            ),
            (
                "EXECUTOR_FIRECRACKER_BANDWIDTH_EGRESS",
                "1.5",
                "is not an integer",
            ),
            ("KUBERNETES_JOB_RETRY_BACKOFF_LIMIT", "many", "is not an integer"),
            (
                "KUBERNETES_JOB_RETRY_BACKOFF_DURATION",
                "soon",
                "is not a duration",
            ),
        ];
        for (name, value, expected) in cases {
            let problems = problems_with(&[(name, value)]);
            assert_eq!(problems.len(), 1, "{name}={value:?}: {problems:#?}");
            assert!(problems[0].starts_with(name), "{name}={value:?}: {problems:#?}");
            assert!(
                problems[0].contains(expected),
                "{name}={value:?}: expected {expected:?} in {problems:#?}"
            );
        }
    }

    #[test]
    fn queue_selection_problems() {
        let both = problems_with(&[("EXECUTOR_QUEUE_NAMES", "codeintel")]);
        assert_eq!(
            both,
            vec!["both EXECUTOR_QUEUE_NAME and EXECUTOR_QUEUE_NAMES are set (expected exactly one of them)"]
        );

        let neither = problems_with(&[("EXECUTOR_QUEUE_NAME", ""), ("EXECUTOR_QUEUE_NAMES", "")]);
        assert_eq!(neither.len(), 1);
        assert!(
            neither[0].starts_with("neither EXECUTOR_QUEUE_NAME nor EXECUTOR_QUEUE_NAMES is set"),
            "{neither:?}"
        );

        let spaced = problems_with(&[
            ("EXECUTOR_QUEUE_NAME", ""),
            ("EXECUTOR_QUEUE_NAMES", "codeintel,  batches"),
        ]);
        assert_eq!(spaced.len(), 1);
        assert!(
            spaced[0].starts_with("EXECUTOR_QUEUE_NAMES: \"  batches\" is not a known queue"),
            "{spaced:?}"
        );
        assert!(spaced[0].contains("comma-separated without spaces"), "{spaced:?}");

        let repeated = problems_with(&[
            ("EXECUTOR_QUEUE_NAME", ""),
            ("EXECUTOR_QUEUE_NAMES", "batches,batches"),
        ]);
        assert_eq!(
            repeated,
            vec!["EXECUTOR_QUEUE_NAMES: \"batches\" is listed more than once"]
        );

        let trailing = problems_with(&[("EXECUTOR_QUEUE_NAME", ""), ("EXECUTOR_QUEUE_NAMES", "batches,")]);
        assert_eq!(trailing.len(), 1);
        assert!(
            trailing[0].starts_with("EXECUTOR_QUEUE_NAMES: \"\" is not a known queue"),
            "{trailing:?}"
        );
    }

    #[test]
    fn required_variables_are_reported_when_missing() {
        let problems = problems_with(&[("EXECUTOR_FRONTEND_URL", ""), ("EXECUTOR_FRONTEND_PASSWORD", "")]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("EXECUTOR_FRONTEND_URL: is required"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("EXECUTOR_FRONTEND_PASSWORD: is required"),
            "{problems:?}"
        );
    }

    #[test]
    fn several_problems_are_reported_together() {
        let error = match Config::from_vars(env_with(&[
            ("EXECUTOR_QUEUE_POLL_INTERVAL", "5 sec"),
            ("EXECUTOR_MAXIMUM_NUM_JOBS", "0"),
            ("KUBERNETES_RUN_AS_USER", "-1"),
            ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU", "1 core"),
            ("KUBERNETES_JOB_VOLUME_TYPE", "hostPath"),
        ])) {
            Ok(config) => panic!("expected problems, got {config:?}"),
            Err(error) => error,
        };
        let text = error.to_string();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("invalid configuration (5 problems):"));
        let rest: Vec<&str> = lines.collect();
        assert_eq!(rest.len(), 5, "{text}");
        for name in [
            "EXECUTOR_QUEUE_POLL_INTERVAL",
            "EXECUTOR_MAXIMUM_NUM_JOBS",
            "KUBERNETES_RUN_AS_USER",
            "EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU",
            "KUBERNETES_JOB_VOLUME_TYPE",
        ] {
            assert_eq!(
                rest.iter()
                    .filter(|line| line.starts_with(&format!("  - {name}")))
                    .count(),
                1,
                "{text}"
            );
        }
    }

    #[test]
    fn the_password_never_appears_in_errors() {
        let error = match Config::from_vars(env_with(&[
            (
                "EXECUTOR_FRONTEND_URL",
                &format!("https://admin:{PASSWORD}@sourcegraph.example.com"),
            ),
            ("EXECUTOR_QUEUE_NAME", PASSWORD),
            (
                "EXECUTOR_DOCKER_AUTH_CONFIG",
                &format!("{{\"auths\": {PASSWORD}}}"),
            ),
            ("KUBERNETES_RUN_AS_USER", PASSWORD),
            ("SRC_LOG_LEVEL_executor", &format!("x{PASSWORD}x")),
        ])) {
            Ok(config) => panic!("expected problems, got {config:?}"),
            Err(error) => error,
        };
        assert_eq!(error.problems.len(), 5, "{error}");
        let display = error.to_string();
        let debug = format!("{error:?}");
        // Any 8-character piece of the password would be a leak too.
        for window in PASSWORD.as_bytes().windows(8) {
            let piece = std::str::from_utf8(window).expect("ASCII password");
            assert!(!display.contains(piece), "{piece:?} leaked into {display}");
            assert!(!debug.contains(piece), "{piece:?} leaked into {debug}");
        }
        assert!(
            display.contains("EXECUTOR_FRONTEND_URL: must not contain user information"),
            "{display}"
        );
        assert!(
            display.contains("EXECUTOR_DOCKER_AUTH_CONFIG: is not valid JSON"),
            "{display}"
        );
        // A valid configuration's Debug output hides the password too.
        let config = config_with(&[]);
        assert!(!format!("{config:?}").contains(PASSWORD));
    }

    #[test]
    fn frontend_urls() {
        for (text, expected) in [
            ("http://sourcegraph-frontend", "http://sourcegraph-frontend"),
            ("https://sg.example.com/", "https://sg.example.com"),
            ("http://10.0.0.5:3080/prefix/", "http://10.0.0.5:3080/prefix"),
            ("http://[::1]:3080", "http://[::1]:3080"),
            ("HTTPS://Sg.Example.com", "HTTPS://Sg.Example.com"),
        ] {
            assert_eq!(
                config_with(&[("EXECUTOR_FRONTEND_URL", text)]).frontend_url,
                expected,
                "{text}"
            );
        }
    }

    /// The builder reads exactly the catalogue: nothing is read without being documented, and
    /// nothing documented is silently ignored.
    #[test]
    fn every_catalogued_variable_is_read_and_nothing_else() {
        let env = Env::prepare(env_with(&[]));
        let mut parser = Parser::new(&env, Vec::new());
        config(&env, &mut parser);
        let read = env.names_read();
        let catalogued: BTreeSet<&str> = VARIABLES
            .iter()
            .chain(IGNORED_VARIABLES)
            .map(|variable| variable.name)
            .collect();
        assert_eq!(read, catalogued);
    }
}
