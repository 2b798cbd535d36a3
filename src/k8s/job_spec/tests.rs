//! Tests of the job objects: their shape, the Secret's contents, rejected payloads, and the golden files.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::core::v1::{
        Container, EnvVar, NodeSelectorRequirement, PodAffinityTerm, PodSpec, Toleration, Volume, VolumeMount,
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::LabelSelector},
};

use super::*;
use crate::{
    config::{NodePinning, VolumeType},
    queue::types::{CliStep, DockerStep, Secret as Hidden},
};

const TOKEN: &str = "job-token-5f3a9c";
const ENV_SECRET: &str = "s3cr3t-batch-value";
const FILE_CONTENT: &str = "{\"confidential\": \"workspace-file-body\"}";

fn test_config() -> KubernetesConfig {
    KubernetesConfig {
        config_path: None,
        namespace: "sg-executors".into(),
        namespace_source: crate::config::NamespaceSource::Variable,
        owner_pod: None,
        client_qps: 100,
        client_burst: 200,
        node_name: None,
        node_pinning: NodePinning::Affinity,
        node_selector: BTreeMap::new(),
        node_required_affinity_match_expressions: Vec::new(),
        node_required_affinity_match_fields: Vec::new(),
        pod_affinity: Vec::new(),
        pod_anti_affinity: Vec::new(),
        tolerations: Vec::new(),
        request_cpu: None,
        request_memory: Some(Quantity("12Gi".into())),
        limit_cpu: None,
        limit_memory: Some(Quantity("12Gi".into())),
        job_deadline_seconds: 1200,
        keep_jobs: false,
        run_as_user: None,
        run_as_group: None,
        // KUBERNETES_FS_GROUP's default.
        fs_group: Some(1000),
        job_annotations: BTreeMap::new(),
        pod_annotations: BTreeMap::new(),
        image_pull_secrets: Vec::new(),
        image_pull_policy: "IfNotPresent".into(),
        step_image: "sourcegraph/batcheshelper:insiders".into(),
        volume_type: VolumeType::EmptyDir,
        volume_size: Quantity("5Gi".into()),
        additional_volumes: Vec::new(),
        additional_volume_mounts: Vec::new(),
        git_ca_cert: None,
        host_network: false,
        job_service_account: None,
        automount_service_account_token: false,
        ttl_seconds_after_finished: Some(600),
        pending_timeout: Duration::from_secs(600),
        unschedulable_timeout: Duration::from_secs(60),
        image_pull_timeout: Duration::from_secs(60),
        pod_creation_timeout: Duration::from_secs(30),
    }
}

fn step(key: &str, image: &str, commands: &[&str], dir: &str, env: &[&str]) -> DockerStep {
    DockerStep {
        key: key.into(),
        image: image.into(),
        commands: commands.iter().map(|c| c.to_string()).collect(),
        dir: dir.into(),
        env: env.iter().map(|e| e.to_string()).collect(),
    }
}

/// A v2 batches job as the frontend sends it for native server-side execution.
fn batches_job() -> Job {
    Job {
        version: 2,
        id: 91562,
        token: Hidden::new(TOKEN.into()),
        queue: "batches".into(),
        repository_name: "github.com/sourcegraph/sample".into(),
        repository_directory: "repository".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        fetch_tags: false,
        shallow_clone: true,
        sparse_checkout: Vec::new(),
        files: BTreeMap::new(),
        docker_steps: vec![
            step(
                "step.0.pre",
                "sourcegraph/batcheshelper:6.0.0",
                &["batcheshelper pre 0"],
                ".",
                &[],
            ),
            step(
                "step.0.run",
                "alpine:3",
                &["cd repository", "echo hi > README.md"],
                "repository",
                &[&format!("SECRET_TOKEN={ENV_SECRET}"), "WITH_EQUALS=a=b"],
            ),
            step(
                "step.0.post",
                "sourcegraph/batcheshelper:6.0.0",
                &["batcheshelper post 0"],
                ".",
                &[],
            ),
        ],
        cli_steps: Vec::new(),
        redacted_values: Hidden::new(BTreeMap::from([(ENV_SECRET.to_string(), "SECRET".to_string())])),
        docker_auth_config: None,
    }
}

fn input_file() -> WorkspaceFile {
    WorkspaceFile {
        path: "input.json".into(),
        content: FILE_CONTENT.as_bytes().to_vec(),
        modified_at: Some("2024-05-01T10:00:00Z".parse().expect("valid time")),
    }
}

fn build(job: &Job, files: &[WorkspaceFile], cfg: &KubernetesConfig) -> Result<JobObjects, SpecError> {
    build_in_queue(job, "batches", files, cfg)
}

fn build_in_queue(
    job: &Job,
    queue: &str,
    files: &[WorkspaceFile],
    cfg: &KubernetesConfig,
) -> Result<JobObjects, SpecError> {
    let ctx = JobContext {
        job,
        queue,
        executor_name: "exec-host-1-7d2c",
        instance_id: "exec-prod",
        frontend_url: "https://sourcegraph.example.com",
        files,
    };
    build_job_objects(&ctx, cfg)
}

fn pod_spec(objects: &JobObjects) -> &PodSpec {
    objects
        .job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("job has a pod spec")
}

fn init_containers(objects: &JobObjects) -> &[Container] {
    pod_spec(objects)
        .init_containers
        .as_deref()
        .expect("init containers")
}

fn secret_ref(env: &EnvVar) -> Option<(&str, &str)> {
    env.value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .map(|r| (r.name.as_str(), r.key.as_str()))
}

fn secret_value<'a>(objects: &'a JobObjects, key: &str) -> &'a [u8] {
    &objects.secret.data.as_ref().expect("secret data")[key].0
}

#[test]
fn multi_step_job_has_setup_steps_and_main_in_order() {
    let objects = build(&batches_job(), &[input_file()], &test_config()).expect("buildable");
    let names: Vec<&str> = init_containers(&objects)
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "setup-workspace",
            "step-kubernetes-step-0-pre",
            "step-kubernetes-step-0-run",
            "step-kubernetes-step-0-post"
        ]
    );
    let pod = pod_spec(&objects);
    assert_eq!(pod.containers.len(), 1);
    assert_eq!(pod.containers[0].name, "main");
    assert_eq!(
        pod.containers[0].args,
        Some(vec![crate::k8s::script::container_program("echo 'complete'")])
    );
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.active_deadline_seconds, Some(1200));
    assert_eq!(pod.automount_service_account_token, Some(false));

    let keys: Vec<&str> = objects.steps.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "setup.workspace",
            "step.kubernetes.step.0.pre",
            "step.kubernetes.step.0.run",
            "step.kubernetes.step.0.post",
            "main"
        ]
    );
    let script = "/job/.sourcegraph-executor/91562.1_github.com_sourcegraph_sample@0123456789abcdef0123456789abcdef01234567.sh";
    assert_eq!(objects.steps[2].command, ["/bin/sh", script]);

    let run = &init_containers(&objects)[2];
    assert_eq!(run.image.as_deref(), Some("alpine:3"));
    assert_eq!(run.command, Some(vec!["sh".to_string(), "-c".to_string()]));
    assert_eq!(
        run.args,
        Some(vec![crate::k8s::script::container_program(&format!(
            "if [ \"$('/job/nextIndex.sh' '/job/skip.json' 'step.kubernetes.step.0.run')\" != \"skip\" ]; \
             then /bin/sh '{script}'; fi"
        ))])
    );
    assert_eq!(run.working_dir.as_deref(), Some("/job/repository"));
    assert_eq!(init_containers(&objects)[1].working_dir.as_deref(), Some("/job"));
    assert_eq!(init_containers(&objects)[0].working_dir.as_deref(), Some("/job"));
    for container in init_containers(&objects).iter().chain(&pod.containers) {
        let mounts = container.volume_mounts.as_deref().expect("mounts");
        assert_eq!(
            (mounts[0].name.as_str(), mounts[0].mount_path.as_str()),
            ("job-data", "/job")
        );
        assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let resources = container.resources.as_ref().expect("resources");
        assert_eq!(resources.requests.as_ref().expect("requests")["memory"].0, "12Gi");
        assert!(!resources.requests.as_ref().expect("requests").contains_key("cpu"));
    }
}

#[test]
fn step_env_comes_from_secret_keys_and_setup_gets_the_token() {
    let objects = build(&batches_job(), &[input_file()], &test_config()).expect("buildable");
    let secret = "sg-executor-job-batches-91562-secrets";
    let run_env = init_containers(&objects)[2].env.as_deref().expect("env");
    assert_eq!(run_env.len(), 3);
    assert_eq!(run_env[0].name, "SECRET_TOKEN");
    assert_eq!(secret_ref(&run_env[0]), Some((secret, "env.1.0")));
    assert_eq!(run_env[1].name, "WITH_EQUALS");
    assert_eq!(secret_ref(&run_env[1]), Some((secret, "env.1.1")));
    assert_eq!(secret_value(&objects, "env.1.0"), ENV_SECRET.as_bytes());
    assert_eq!(
        secret_value(&objects, "env.1.1"),
        b"a=b",
        "split on the first '='"
    );
    assert_eq!(run_env[2].name, "EXECUTOR_ADD_SAFE");
    assert_eq!(run_env[2].value.as_deref(), Some("false"));
    assert!(
        run_env
            .iter()
            .all(|e| e.name == "EXECUTOR_ADD_SAFE" || e.value.is_none())
    );

    let setup = &init_containers(&objects)[0];
    let setup_env = setup.env.as_deref().expect("setup env");
    assert_eq!(setup_env.len(), 1);
    assert_eq!(secret_ref(&setup_env[0]), Some((secret, "TOKEN")));
    assert_eq!(secret_value(&objects, "TOKEN"), TOKEN.as_bytes());
    let setup_mounts = setup.volume_mounts.as_deref().expect("mounts");
    assert!(setup_mounts.iter().any(|m| m.name == "job-secrets"
        && m.mount_path == script::SECRETS_DIR
        && m.read_only == Some(true)));
    for step in &init_containers(&objects)[1..] {
        let mounts = step.volume_mounts.as_deref().expect("mounts");
        assert!(
            mounts.iter().all(|m| m.name != "job-secrets"),
            "only setup sees the Secret files"
        );
    }
}

#[test]
fn no_secret_value_appears_in_the_job_object() {
    let objects = build(&batches_job(), &[input_file()], &test_config()).expect("buildable");
    let job_json = serde_json::to_string(&objects.job).expect("serializable");
    for secret in [
        TOKEN,
        ENV_SECRET,
        FILE_CONTENT,
        "workspace-file-body",
        "echo hi > README.md",
    ] {
        assert!(!job_json.contains(secret), "{secret:?} leaked into the Job");
    }
    // The files went into the Secret instead, and the setup program copies them.
    assert_eq!(secret_value(&objects, "file.0"), FILE_CONTENT.as_bytes());
    let step_script = String::from_utf8(secret_value(&objects, "file.2").to_vec()).expect("UTF-8");
    assert!(
        step_script.ends_with("cd repository\necho hi > README.md\n"),
        "{step_script}"
    );
    let setup_args = &init_containers(&objects)[0].args.as_ref().expect("args")[0];
    assert!(
        setup_args.contains("\n/bin/sh '/var/run/kube-executor/secrets/setup.sh'\n"),
        "{setup_args}"
    );
    let setup_program = String::from_utf8(secret_value(&objects, "setup.sh").to_vec()).expect("UTF-8");
    assert!(setup_program.contains("cp '/var/run/kube-executor/secrets/file.0' '/job/input.json'"));
    assert!(setup_program.contains("TZ=UTC0 touch -m -t 202405011000.00 '/job/input.json'"));
    let volume = pod_spec(&objects)
        .volumes
        .as_deref()
        .expect("volumes")
        .iter()
        .find(|v| v.name == "job-secrets")
        .expect("secret volume");
    let keys: Vec<&str> = volume
        .secret
        .as_ref()
        .expect("secret source")
        .items
        .as_deref()
        .expect("items")
        .iter()
        .map(|i| i.key.as_str())
        .collect();
    assert_eq!(
        keys,
        ["setup.sh", "file.0", "file.1", "file.2", "file.3"],
        "token and env values are not files"
    );
}

#[test]
fn the_job_is_owned_by_the_executor_pod_when_it_is_known() {
    let mut cfg = test_config();
    let plain = build(&batches_job(), &[], &cfg).expect("buildable");
    assert_eq!(plain.job.metadata.owner_references, None);
    cfg.owner_pod = Some(crate::config::OwnerPod {
        name: "executor-0".into(),
        uid: "1b2c-uid".into(),
    });
    let owned = build(&batches_job(), &[], &cfg).expect("buildable");
    let owners = owned.job.metadata.owner_references.expect("an owner");
    assert_eq!(owners.len(), 1);
    let owner = &owners[0];
    assert_eq!(
        (
            owner.api_version.as_str(),
            owner.kind.as_str(),
            owner.name.as_str(),
            owner.uid.as_str()
        ),
        ("v1", "Pod", "executor-0", "1b2c-uid")
    );
    assert_eq!(
        (owner.controller, owner.block_owner_deletion),
        (Some(false), Some(false))
    );
    // The Secret and the PVC are the pod's until the Job is created and takes them over, so an
    // executor lost in between leaves nothing behind.
    cfg.volume_type = VolumeType::Pvc;
    let with_pvc = build(&batches_job(), &[], &cfg).expect("buildable");
    let pvc = with_pvc.pvc.expect("a PVC");
    for owners in [
        &with_pvc.secret.metadata.owner_references,
        &pvc.metadata.owner_references,
    ] {
        assert_eq!(owners.as_ref(), Some(&vec![owner.clone()]));
    }
    assert_eq!(plain.secret.metadata.owner_references, None);
}

#[test]
fn every_object_is_labelled_and_annotated() {
    let mut cfg = test_config();
    cfg.volume_type = VolumeType::Pvc;
    cfg.job_annotations = BTreeMap::from([("team".to_string(), "batches".to_string())]);
    cfg.pod_annotations = BTreeMap::from([("sidecar.istio.io/inject".to_string(), "false".to_string())]);
    let mut job = batches_job();
    job.docker_auth_config = Some(Hidden::new(
        serde_json::json!({"auths": {"r.example": {"auth": "dTpw"}}}),
    ));
    let objects = build(&job, &[], &cfg).expect("buildable");
    let template = objects
        .job
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .expect("template meta");
    let metas = [
        &objects.job.metadata,
        template,
        &objects.secret.metadata,
        &objects.pull_secret.as_ref().expect("pull secret").metadata,
        &objects.pvc.as_ref().expect("pvc").metadata,
    ];
    let expected = labels::job_labels("exec-prod", "batches", 91562);
    for meta in metas {
        assert_eq!(meta.labels.as_ref(), Some(&expected));
        assert_eq!(
            meta.annotations.as_ref().expect("annotations")[labels::EXECUTOR_NAME_ANNOTATION],
            "exec-host-1-7d2c"
        );
    }
    assert_eq!(
        objects.job.metadata.annotations.as_ref().expect("annotations")["team"],
        "batches"
    );
    let pod_annotations = template.annotations.as_ref().expect("annotations");
    assert_eq!(pod_annotations["sidecar.istio.io/inject"], "false");
    assert_eq!(pod_annotations[SAFE_TO_EVICT_ANNOTATION], "false");
    assert_eq!(objects.job.metadata.namespace.as_deref(), Some("sg-executors"));
    let spec = objects.job.spec.as_ref().expect("spec");
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(spec.ttl_seconds_after_finished, Some(600));
    cfg.ttl_seconds_after_finished = None;
    let objects = build(&job, &[], &cfg).expect("buildable");
    assert_eq!(
        objects
            .job
            .spec
            .as_ref()
            .expect("spec")
            .ttl_seconds_after_finished,
        None
    );
}

#[test]
fn node_pinning_by_affinity_merges_into_the_configured_term() {
    let mut cfg = test_config();
    cfg.node_name = Some("node-a".into());
    cfg.node_required_affinity_match_expressions = vec![NodeSelectorRequirement {
        key: "pool".into(),
        operator: "In".into(),
        values: Some(vec!["executors".into()]),
    }];
    let objects = build(&batches_job(), &[], &cfg).expect("buildable");
    let pod = pod_spec(&objects);
    assert_eq!(pod.node_name, None);
    let affinity = pod.affinity.as_ref().expect("affinity");
    let terms = &affinity
        .node_affinity
        .as_ref()
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
        .expect("required node affinity")
        .node_selector_terms;
    assert_eq!(terms.len(), 1, "one term: its requirements are ANDed");
    assert_eq!(
        terms[0].match_expressions.as_deref().expect("expressions")[0].key,
        "pool"
    );
    let fields = terms[0].match_fields.as_deref().expect("fields");
    assert_eq!(fields.len(), 1);
    assert_eq!(
        (
            fields[0].key.as_str(),
            fields[0].operator.as_str(),
            fields[0].values.as_deref()
        ),
        ("metadata.name", "In", Some(&["node-a".to_string()][..]))
    );
    assert!(affinity.pod_affinity.is_none() && affinity.pod_anti_affinity.is_none());
}

#[test]
fn node_pinning_by_node_name_sets_spec_node_name() {
    let mut cfg = test_config();
    cfg.node_name = Some("node-a".into());
    cfg.node_pinning = NodePinning::NodeName;
    let objects = build(&batches_job(), &[], &cfg).expect("buildable");
    let pod = pod_spec(&objects);
    assert_eq!(pod.node_name.as_deref(), Some("node-a"));
    assert!(pod.affinity.is_none(), "no affinity without configuration");
}

#[test]
fn node_affinity_alone_emits_no_empty_pod_affinity_terms() {
    let mut cfg = test_config();
    cfg.node_required_affinity_match_fields = vec![NodeSelectorRequirement {
        key: "metadata.name".into(),
        operator: "NotIn".into(),
        values: Some(vec!["bad-node".into()]),
    }];
    let objects = build(&batches_job(), &[], &cfg).expect("buildable");
    let json = serde_json::to_value(pod_spec(&objects)).expect("serializable");
    assert!(json["affinity"]["nodeAffinity"].is_object());
    assert!(json["affinity"].get("podAffinity").is_none(), "{json}");
    assert!(json["affinity"].get("podAntiAffinity").is_none(), "{json}");
    assert!(!json.to_string().contains("\"topologyKey\":\"\""));

    let term = PodAffinityTerm {
        topology_key: "kubernetes.io/hostname".into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_string(), "executor".to_string())])),
            ..Default::default()
        }),
        ..Default::default()
    };
    cfg.pod_anti_affinity = vec![term.clone()];
    let objects = build(&batches_job(), &[], &cfg).expect("buildable");
    let affinity = pod_spec(&objects).affinity.clone().expect("affinity");
    assert!(affinity.pod_affinity.is_none());
    assert_eq!(
        affinity
            .pod_anti_affinity
            .and_then(|a| a.required_during_scheduling_ignored_during_execution),
        Some(vec![term])
    );
}

#[test]
fn run_as_user_group_and_fs_group_are_applied() {
    let mut cfg = test_config();
    cfg.fs_group = None;
    let objects = build(&batches_job(), &[], &cfg).expect("buildable");
    assert!(
        pod_spec(&objects).security_context.is_none(),
        "nothing configured, nothing set"
    );
    cfg.fs_group = Some(1000);
    let objects = build(&batches_job(), &[], &cfg).expect("buildable");
    let context = pod_spec(&objects)
        .security_context
        .as_ref()
        .expect("security context");
    assert_eq!(
        (context.run_as_user, context.fs_group),
        (None, Some(1000)),
        "fsGroup alone"
    );
    cfg.run_as_user = Some(1001);
    cfg.run_as_group = Some(1002);
    cfg.fs_group = Some(1000);
    let objects = build(&batches_job(), &[], &cfg).expect("buildable");
    let context = pod_spec(&objects)
        .security_context
        .as_ref()
        .expect("security context");
    assert_eq!(
        (context.run_as_user, context.run_as_group, context.fs_group),
        (Some(1001), Some(1002), Some(1000))
    );
}

#[test]
fn pvc_mode_creates_a_claim_and_mounts_it() {
    let mut cfg = test_config();
    cfg.volume_type = VolumeType::Pvc;
    cfg.volume_size = Quantity("20Gi".into());
    let objects = build(&batches_job(), &[], &cfg).expect("buildable");
    let pvc = objects.pvc.as_ref().expect("pvc");
    assert_eq!(
        pvc.metadata.name.as_deref(),
        Some("sg-executor-job-batches-91562-pvc")
    );
    let spec = pvc.spec.as_ref().expect("pvc spec");
    assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_string()]));
    assert_eq!(spec.storage_class_name, None, "the cluster default class");
    assert_eq!(
        spec.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .expect("requests")["storage"]
            .0,
        "20Gi"
    );
    let volume = &pod_spec(&objects).volumes.as_deref().expect("volumes")[0];
    assert_eq!(volume.name, "job-data");
    assert!(volume.empty_dir.is_none());
    assert_eq!(
        volume
            .persistent_volume_claim
            .as_ref()
            .map(|c| c.claim_name.as_str()),
        Some("sg-executor-job-batches-91562-pvc")
    );

    let objects = build(&batches_job(), &[], &test_config()).expect("buildable");
    assert!(objects.pvc.is_none());
    let volume = &pod_spec(&objects).volumes.as_deref().expect("volumes")[0];
    assert_eq!(
        volume
            .empty_dir
            .as_ref()
            .and_then(|e| e.size_limit.as_ref())
            .map(|q| q.0.as_str()),
        Some("5Gi")
    );
}

#[test]
fn pull_secret_comes_from_the_docker_auth_config() {
    let mut cfg = test_config();
    cfg.image_pull_secrets = vec!["registry-a".into()];
    let mut job = batches_job();
    let auth = serde_json::json!({"auths": {"registry.example.com": {"auth": "dXNlcjpwYXNz"}}});
    job.docker_auth_config = Some(Hidden::new(auth.clone()));
    let objects = build(&job, &[], &cfg).expect("buildable");
    let pull = objects.pull_secret.as_ref().expect("pull secret");
    assert_eq!(
        pull.metadata.name.as_deref(),
        Some("sg-executor-job-batches-91562-pull")
    );
    assert_eq!(pull.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
    let stored: serde_json::Value =
        serde_json::from_slice(&pull.data.as_ref().expect("data")[".dockerconfigjson"].0).expect("JSON");
    assert_eq!(stored, auth);
    let refs: Vec<&str> = pod_spec(&objects)
        .image_pull_secrets
        .as_deref()
        .expect("pull secrets")
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(refs, ["registry-a", "sg-executor-job-batches-91562-pull"]);
    assert!(
        !serde_json::to_string(&objects.job)
            .expect("json")
            .contains("dXNlcjpwYXNz")
    );

    for empty in [
        serde_json::json!({"auths": {}}),
        serde_json::json!({"auths": null}),
        serde_json::json!({}),
    ] {
        job.docker_auth_config = Some(Hidden::new(empty));
        assert!(build(&job, &[], &cfg).expect("buildable").pull_secret.is_none());
    }
    job.docker_auth_config = Some(Hidden::new(serde_json::json!({"auths": ["x"]})));
    let err = build(&job, &[], &cfg).err().expect("auths must be an object");
    assert!(matches!(err, SpecError::InvalidDockerAuthConfig { .. }), "{err}");
}

#[test]
fn cli_steps_are_rejected_with_the_fix() {
    let mut job = batches_job();
    job.cli_steps = vec![CliStep {
        key: "batch-exec".into(),
        command: vec!["batch".into(), "exec".into()],
        dir: ".".into(),
        env: Vec::new(),
    }];
    let err = build(&job, &[], &test_config())
        .err()
        .expect("src-cli steps cannot run");
    assert!(matches!(err, SpecError::CliStepsUnsupported));
    let message = err.to_string();
    assert!(
        message.contains("batchChanges.nativeServerSideExecution"),
        "{message}"
    );
    assert!(message.contains("native-ssbc-execution"), "{message}");
}

#[test]
fn paths_leaving_the_workspace_are_rejected_by_name() {
    let cfg = test_config();
    for bad in ["../outside.json", "/etc/passwd", "a/../../b"] {
        let file = WorkspaceFile {
            path: bad.into(),
            ..input_file()
        };
        let err = build(&batches_job(), &[file], &cfg)
            .err()
            .expect("escaping path rejected");
        assert!(matches!(err, SpecError::PathOutsideWorkspace { .. }), "{err}");
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    let mut job = batches_job();
    job.docker_steps[1].dir = "../up".into();
    let err = build(&job, &[], &cfg).err().expect("escaping dir rejected");
    assert!(err.to_string().contains("docker step 1 dir \"../up\""), "{err}");
    let mut job = batches_job();
    job.repository_directory = "/abs".into();
    let err = build(&job, &[], &cfg).err().expect("escaping repo dir rejected");
    assert!(err.to_string().contains("repository directory \"/abs\""), "{err}");
    let file = WorkspaceFile {
        path: "./".into(),
        ..input_file()
    };
    assert!(matches!(
        build(&batches_job(), &[file], &cfg),
        Err(SpecError::FilePathEmpty { .. })
    ));
}

#[test]
fn hostile_payload_values_are_rejected_before_any_object_is_built() {
    let cfg = test_config();
    let mut job = batches_job();
    job.commit = "$(touch /tmp/pwned)".into();
    let err = build(&job, &[], &cfg).err().expect("non-hex commit rejected");
    assert!(matches!(err, SpecError::InvalidCommit { .. }), "{err}");
    assert!(
        err.to_string().contains("commit \"$(touch /tmp/pwned)\""),
        "{err}"
    );

    let mut job = batches_job();
    job.id = -3;
    let err = build(&job, &[], &cfg).err().expect("negative id rejected");
    assert!(matches!(err, SpecError::NegativeJobId { id: -3 }), "{err}");

    for files in [
        vec![WorkspaceFile {
            path: "nextIndex.sh".into(),
            ..input_file()
        }],
        vec![
            input_file(),
            WorkspaceFile {
                path: "input.json/inner".into(),
                ..input_file()
            },
        ],
    ] {
        let err = build(&batches_job(), &files, &cfg).err().expect("file rejected");
        assert!(matches!(err, SpecError::InvalidWorkspaceFile { .. }), "{err}");
    }
}

#[test]
fn a_long_repository_name_keeps_script_names_short_and_distinct() {
    let mut job = batches_job();
    job.repository_name = format!("github.com/o/{}", "r".repeat(300));
    let objects = build(&job, &[], &test_config()).expect("buildable");
    let scripts: std::collections::BTreeSet<&str> = objects.steps[1..objects.steps.len() - 1]
        .iter()
        .map(|step| step.command.last().expect("script path").as_str())
        .collect();
    assert_eq!(scripts.len(), job.docker_steps.len(), "one script per step");
    for script in scripts {
        let name = script.rsplit('/').next().expect("file name");
        assert!(name.len() <= script::MAX_FILE_NAME_BYTES, "{name}");
    }
}

#[test]
fn malformed_step_env_is_rejected_without_echoing_it() {
    let mut job = batches_job();
    job.docker_steps[2].env = vec!["OK=1".into(), "hunter2".into()];
    let err = build(&job, &[], &test_config()).err().expect("no '=' rejected");
    let message = err.to_string();
    assert!(message.contains("docker step 2 env entry 1"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn container_names_are_valid_unique_dns_labels() {
    let mut job = batches_job();
    job.docker_steps = vec![
        step("", "a", &[], "", &[]),
        step("Pre_Index.0", "a", &[], "", &[]),
        step("pre-index.0", "a", &[], "", &[]),
        step(&"very.long.key".repeat(8), "a", &[], "", &[]),
        step(&"very.long.key".repeat(8), "a", &[], "", &[]),
    ];
    let objects = build(&job, &[], &test_config()).expect("buildable");
    let names: Vec<&str> = init_containers(&objects)[1..]
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names[0], "step-kubernetes-0");
    assert_eq!(names[1], "step-kubernetes-pre-index-0");
    assert_eq!(names[2], "step-kubernetes-pre-index-0-2");
    assert!(names[3].len() <= 63 && names[4].len() <= 63);
    assert_ne!(names[3], names[4]);
    for name in &names {
        assert!(labels::is_dns_label(name), "{name}");
    }
    assert_eq!(objects.steps[1].key, "step.kubernetes.0");
    assert_eq!(
        objects.steps[2].key, "step.kubernetes.Pre_Index.0",
        "log keys keep the step key"
    );
    // Same input, same names.
    let again = build(&job, &[], &test_config()).expect("buildable");
    assert_eq!(again.steps, objects.steps);
}

#[test]
fn step_without_image_is_rejected() {
    let mut job = batches_job();
    job.docker_steps[0].image.clear();
    let err = build(&job, &[], &test_config()).err().expect("no image");
    assert!(err.to_string().contains("docker step 0"), "{err}");
}

#[test]
fn oversized_workspace_is_rejected_before_the_api_server_does() {
    let big = WorkspaceFile {
        path: "cache/big.json".into(),
        content: vec![b'x'; MAX_SECRET_BYTES],
        modified_at: None,
    };
    let err = build(&batches_job(), &[big], &test_config())
        .err()
        .expect("too large");
    assert!(matches!(err, SpecError::SecretTooLarge { .. }), "{err}");
}

/// A job of `count` one-command docker steps.
fn job_with_steps(count: usize) -> Job {
    let mut job = batches_job();
    job.docker_steps = (0..count)
        .map(|i| step(&format!("step.{i}.run"), "alpine:3", &["true"], ".", &[]))
        .collect();
    job
}

#[test]
fn hundreds_of_steps_and_a_thousand_files_keep_every_container_argument_small() {
    let files: Vec<WorkspaceFile> = (0..1000)
        .map(|i| WorkspaceFile {
            path: format!("inputs/dir-{}/file-{i}.json", i % 10),
            content: b"{}".to_vec(),
            modified_at: None,
        })
        .collect();
    let objects = build(&job_with_steps(500), &files, &test_config()).expect("buildable");
    let setup_program = secret_value(&objects, "setup.sh");
    assert!(
        setup_program.len() > 128 * 1024,
        "the program would not fit one argument: {} bytes",
        setup_program.len()
    );
    let job_bytes = serde_json::to_vec(&objects.job).expect("serializable").len();
    assert!(job_bytes < MAX_JOB_BYTES / 2, "{job_bytes} bytes");
    let init = init_containers(&objects);
    assert_eq!(init.len(), 501);
    for container in init {
        let args = container.args.as_deref().expect("args");
        assert!(
            args.iter().all(|arg| arg.len() < 1024),
            "{}: {args:?}",
            container.name
        );
    }
}

#[test]
fn a_job_too_large_to_store_is_rejected_naming_the_limit() {
    // Every container mounts the extra volumes, so 400 steps make the pod spec large while
    // the Secret stays small.
    let mut cfg = test_config();
    cfg.additional_volume_mounts = (0..30)
        .map(|i| VolumeMount {
            name: format!("cache-{i}"),
            mount_path: format!("/var/cache/tool-with-a-long-name-{i}"),
            ..Default::default()
        })
        .collect();
    let err = build(&job_with_steps(400), &[], &cfg).err().expect("too large");
    let message = err.to_string();
    assert!(
        matches!(err, SpecError::JobTooLarge { steps: 400, .. }),
        "{message}"
    );
    assert!(
        message.contains(&format!("more than the {MAX_JOB_BYTES} bytes")),
        "{message}"
    );
}

#[test]
fn an_env_entry_longer_than_linux_allows_is_rejected_without_its_value() {
    let mut job = batches_job();
    let value = "v".repeat(MAX_ENV_ENTRY_BYTES);
    job.docker_steps[1].env.push(format!("LONG={value}"));
    let err = build(&job, &[], &test_config()).err().expect("too long");
    let message = err.to_string();
    assert!(
        message.starts_with("docker step 1 env entry 2 is 131076 bytes long, more than the 131071 bytes"),
        "{message}"
    );
    assert!(!message.contains("vvvv"), "{message}");
}

#[test]
fn invalid_instance_id_or_queue_is_rejected() {
    let job = batches_job();
    let ctx = JobContext {
        job: &job,
        queue: "batches",
        executor_name: "e",
        instance_id: "not a label value",
        frontend_url: "https://sg.example.com",
        files: &[],
    };
    assert!(matches!(
        build_job_objects(&ctx, &test_config()),
        Err(SpecError::InvalidLabelValue { .. })
    ));
    assert!(matches!(
        build_in_queue(&job, "Batches", &[], &test_config()),
        Err(SpecError::InvalidJobName { .. })
    ));
}

#[test]
fn log_entry_keys_come_from_the_shared_definitions() {
    let objects = build(&batches_job(), &[], &test_config()).expect("buildable");
    let keys: Vec<&str> = objects.steps.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys.first(), Some(&SETUP_ENTRY_KEY));
    assert_eq!(keys.last(), Some(&MAIN_ENTRY_KEY));
    assert_eq!(keys[1], step_entry_key("step.0.pre"));
    assert_eq!(step_entry_key("0"), "step.kubernetes.0");
}

#[test]
fn container_names_map_back_to_log_entries() {
    let objects = build(&batches_job(), &[], &test_config()).expect("buildable");
    let (key, command) = entry_for_container(&objects.steps, "setup-workspace");
    assert_eq!((key.as_ref(), command.len()), ("setup.workspace", 0));
    let (key, command) = entry_for_container(&objects.steps, "step-kubernetes-step-0-post");
    assert_eq!(key, "step.kubernetes.step.0.post");
    assert_eq!(command[0], "/bin/sh");
    let (key, _) = entry_for_container(&objects.steps, "main");
    assert_eq!(key, "main");
    let (key, command) = entry_for_container(&objects.steps, "istio-proxy");
    assert_eq!((key.as_ref(), command.len()), ("istio.proxy", 0));
}

#[test]
fn owner_reference_patch_needs_a_created_job() {
    let objects = build(&batches_job(), &[], &test_config()).expect("buildable");
    assert_eq!(
        owner_reference_patch(&objects.job),
        None,
        "no UID before creation"
    );
    let mut created = objects.job.clone();
    created.metadata.uid = Some("4b1e5c7e-0000-4000-8000-000000000001".into());
    let patch = owner_reference_patch(&created).expect("patch");
    assert_eq!(
        patch,
        serde_json::json!({"metadata": {"ownerReferences": [{
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": "sg-executor-job-batches-91562",
            "uid": "4b1e5c7e-0000-4000-8000-000000000001",
            "controller": false,
            "blockOwnerDeletion": false
        }]}})
    );
}

// === golden objects ===

/// The objects as one List; the job Secret's text values are shown as `stringData`, so a
/// change to the setup program or a step script reads as text in review.
fn golden_list(objects: &JobObjects) -> serde_json::Value {
    let mut secret = objects.secret.clone();
    let data = secret.data.take().unwrap_or_default();
    let (text, binary): (BTreeMap<_, _>, BTreeMap<_, _>) = data
        .into_iter()
        .partition(|(_, value)| std::str::from_utf8(&value.0).is_ok());
    secret.string_data = Some(
        text.into_iter()
            .map(|(key, value)| (key, String::from_utf8_lossy(&value.0).into_owned()))
            .collect(),
    );
    secret.data = (!binary.is_empty()).then_some(binary);
    let mut items = vec![serde_json::to_value(&secret).expect("serializable")];
    if let Some(pull) = &objects.pull_secret {
        items.push(serde_json::to_value(pull).expect("serializable"));
    }
    if let Some(pvc) = &objects.pvc {
        items.push(serde_json::to_value(pvc).expect("serializable"));
    }
    items.push(serde_json::to_value(&objects.job).expect("serializable"));
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

fn check_golden(name: &str, objects: &JobObjects) {
    let list = golden_list(objects);
    for item in list["items"].as_array().expect("items") {
        assert!(
            item["apiVersion"].is_string() && item["kind"].is_string(),
            "{item}"
        );
    }
    let rendered = serde_json::to_string_pretty(&list).expect("serializable") + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("golden dir")).expect("golden dir");
        std::fs::write(&path, &rendered).expect("golden file writable");
        return;
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
    assert!(
        committed == rendered,
        "{} differs from the built objects; review the change and run with UPDATE_GOLDEN=1\n--- built:\n{rendered}",
        path.display()
    );
}

#[test]
fn golden_minimal_single_queue_job() {
    let mut job = batches_job();
    job.docker_steps.truncate(1);
    check_golden(
        "minimal",
        &build(&job, &[input_file()], &test_config()).expect("buildable"),
    );
}

#[test]
fn golden_full_options() {
    let mut cfg = test_config();
    cfg.namespace = "executors".into();
    cfg.node_name = Some("node-a".into());
    cfg.node_selector = BTreeMap::from([("pool".to_string(), "executors".to_string())]);
    cfg.node_required_affinity_match_expressions = vec![NodeSelectorRequirement {
        key: "topology.kubernetes.io/zone".into(),
        operator: "In".into(),
        values: Some(vec!["eu-west-1a".into(), "eu-west-1b".into()]),
    }];
    cfg.node_required_affinity_match_fields = vec![NodeSelectorRequirement {
        key: "metadata.name".into(),
        operator: "NotIn".into(),
        values: Some(vec!["node-broken".into()]),
    }];
    let term = |app: &str| PodAffinityTerm {
        topology_key: "kubernetes.io/hostname".into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_string(), app.to_string())])),
            ..Default::default()
        }),
        ..Default::default()
    };
    cfg.pod_affinity = vec![term("cache")];
    cfg.pod_anti_affinity = vec![term("database")];
    cfg.tolerations = vec![Toleration {
        key: Some("dedicated".into()),
        operator: Some("Equal".into()),
        value: Some("executors".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }];
    cfg.request_cpu = Some(Quantity("1".into()));
    cfg.limit_cpu = Some(Quantity("4".into()));
    cfg.request_memory = Some(Quantity("2Gi".into()));
    cfg.limit_memory = Some(Quantity("8Gi".into()));
    cfg.job_deadline_seconds = 3600;
    cfg.run_as_user = Some(1001);
    cfg.run_as_group = Some(1001);
    cfg.fs_group = Some(1000);
    cfg.job_annotations = BTreeMap::from([("example.com/team".to_string(), "platform".to_string())]);
    cfg.pod_annotations = BTreeMap::from([("sidecar.istio.io/inject".to_string(), "false".to_string())]);
    cfg.image_pull_secrets = vec!["registry-mirror".into()];
    cfg.image_pull_policy = "Always".into();
    cfg.volume_type = VolumeType::Pvc;
    cfg.volume_size = Quantity("20Gi".into());
    cfg.additional_volumes = vec![Volume {
        name: "ca-bundle".into(),
        config_map: Some(k8s_openapi::api::core::v1::ConfigMapVolumeSource {
            name: "ca-bundle".into(),
            ..Default::default()
        }),
        ..Default::default()
    }];
    cfg.additional_volume_mounts = vec![VolumeMount {
        name: "ca-bundle".into(),
        mount_path: "/etc/ssl/custom".into(),
        read_only: Some(true),
        ..Default::default()
    }];
    cfg.git_ca_cert = Some("/etc/ssl/custom/ca.pem".into());
    cfg.host_network = true;
    cfg.job_service_account = Some("executor-job".into());
    cfg.automount_service_account_token = true;
    cfg.ttl_seconds_after_finished = Some(300);
    let mut job = batches_job();
    job.fetch_tags = true;
    job.shallow_clone = false;
    job.sparse_checkout = vec!["src/*".into(), "docs/".into()];
    job.docker_auth_config = Some(Hidden::new(
        serde_json::json!({"auths": {"registry.example.com": {"auth": "dXNlcjpwYXNz"}}}),
    ));
    check_golden(
        "full-options",
        &build(&job, &[input_file()], &cfg).expect("buildable"),
    );
}

#[test]
fn golden_multi_queue_job_pinned_by_node_name() {
    let mut cfg = test_config();
    cfg.node_name = Some("node-b".into());
    cfg.node_pinning = NodePinning::NodeName;
    let job = Job {
        id: 77,
        queue: "codeintel".into(),
        repository_name: "github.com/sourcegraph/indexed".into(),
        repository_directory: String::new(),
        docker_steps: vec![
            step(
                "indexer",
                "sourcegraph/scip-go:latest",
                &["scip-go --no-animation"],
                "",
                &[],
            ),
            step(
                "upload",
                "sourcegraph/src-cli:latest",
                &["src code-intel upload -no-progress -repo=github.com/sourcegraph/indexed"],
                "",
                &[
                    "SRC_ENDPOINT=https://sourcegraph.example.com",
                    "SRC_HEADER_AUTHORIZATION=token-executor codeintel-access-token",
                ],
            ),
        ],
        ..batches_job()
    };
    let objects = build_in_queue(&job, "codeintel", &[], &cfg).expect("buildable");
    assert!(
        !serde_json::to_string(&objects.job)
            .expect("json")
            .contains("codeintel-access-token"),
        "codeintel's upload token stays in the Secret"
    );
    check_golden("multi-queue-node-name", &objects);
}
