//! Creating, owning and deleting a job's Kubernetes objects, and sweeping a previous process's leftovers.

use std::time::Duration;

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{PersistentVolumeClaim, Secret},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::{api_error, job_spec::JobObjects, labels, watch::CreatedJob};
use crate::retry::{RetryPolicy, retry_when};

/// Why a job's objects could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("a {kind} named {name} already exists and belongs to another executor ({owner})")]
    OwnedByOther {
        kind: &'static str,
        name: String,
        owner: String,
    },
    #[error("creating {kind} {name} was rejected by the API server: {message}")]
    Rejected {
        kind: &'static str,
        name: String,
        message: String,
    },
    #[error("{kind} {name}: forbidden; check the executor's Role: {message}")]
    Forbidden {
        kind: &'static str,
        name: String,
        message: String,
    },
    #[error("creating {kind} {name} failed: {source}")]
    Api {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error("a leftover {kind} named {name} was still being deleted after {waited:?}")]
    LeftoverNotGone {
        kind: &'static str,
        name: String,
        waited: Duration,
    },
}

impl CreateError {
    /// Whether retrying the whole job later could succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, CreateError::Rejected { .. })
    }
}

/// The typed APIs of one namespace.
#[derive(Clone)]
pub struct Objects {
    pub jobs: Api<Job>,
    pub secrets: Api<Secret>,
    pub pvcs: Api<PersistentVolumeClaim>,
    instance_id: String,
}

/// Who holds a name that a create found taken.
enum NameHolder {
    Ours,
    Nobody,
    Other,
}

/// What creation produced.
#[derive(Debug)]
pub struct Created {
    /// The Job as created, to tell its pods from those of an earlier Job of the same name.
    pub job: CreatedJob,
    /// Leftovers of an earlier run of the same job that had to be removed first.
    pub replaced_leftovers: usize,
    /// Whether the Job owns all its Secrets and PVC (then they go with it, no delete needed).
    pub owned: bool,
}

impl Objects {
    /// APIs for `namespace`, acting for executor instance `instance_id`.
    pub fn new(client: Client, namespace: &str, instance_id: &str) -> Self {
        Self {
            jobs: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client.clone(), namespace),
            pvcs: Api::namespaced(client, namespace),
            instance_id: instance_id.to_string(),
        }
    }

    /// Creates Secret(s) → PVC → Job, then makes the Job the owner of the others so the garbage
    /// collector removes them with it. An object of the same name left by an earlier run of this
    /// executor instance (a crash before cleanup) is deleted and created again.
    ///
    /// # Errors
    /// See [`CreateError`]; on error, whatever was created is deleted again.
    pub async fn create(&self, objects: &JobObjects) -> Result<Created, CreateError> {
        let mut replaced = 0;
        let mut created_secrets: Vec<String> = Vec::new();
        let mut created_pvc: Option<String> = None;
        let result: Result<Job, CreateError> = async {
            let secrets = std::iter::once(&objects.secret).chain(objects.pull_secret.iter());
            for secret in secrets {
                replaced += self.create_one(&self.secrets, "Secret", secret).await?.1;
                created_secrets.push(secret.name_any());
            }
            if let Some(pvc) = &objects.pvc {
                replaced += self.create_one(&self.pvcs, "PersistentVolumeClaim", pvc).await?.1;
                created_pvc = Some(pvc.name_any());
            }
            let (job, n) = self.create_one(&self.jobs, "Job", &objects.job).await?;
            replaced += n;
            Ok(job)
        }
        .await;
        let result = match result {
            Ok(job) => self
                .own(&job, &created_secrets, created_pvc.as_deref())
                .await
                .map(|owned| (job, owned)),
            Err(error) => Err(error),
        };
        match result {
            Ok((job, owned)) => Ok(Created {
                job: CreatedJob {
                    name: job.name_any(),
                    uid: job.metadata.uid.clone().unwrap_or_default(),
                },
                replaced_leftovers: replaced,
                owned,
            }),
            Err(error) => {
                if let CreateError::Forbidden { .. } = &error {
                    // The Job may exist already (a forbidden owner patch): remove it too.
                    let _ = delete_quietly(&self.jobs, &objects.job.name_any()).await;
                }
                for name in &created_secrets {
                    let _ = delete_quietly(&self.secrets, name).await;
                }
                if let Some(name) = &created_pvc {
                    let _ = delete_quietly(&self.pvcs, name).await;
                }
                Err(error)
            }
        }
    }

    /// Makes the Job the owner of its Secrets and PVC. A forbidden patch is an error (the Role is
    /// wrong and objects would outlive their Job); any other failure is only logged, since
    /// teardown deletes them explicitly anyway.
    /// Returns whether every object is now owned.
    async fn own(&self, job: &Job, secrets: &[String], pvc: Option<&str>) -> Result<bool, CreateError> {
        let Some(patch) = super::job_spec::owner_reference_patch(job) else {
            return Ok(false);
        };
        let mut owned = true;
        let params = PatchParams::default();
        for name in secrets {
            if let Err(error) = self.secrets.patch(name, &params, &Patch::Merge(&patch)).await {
                if api_error::is_forbidden(&error) {
                    return Err(classify("Secret", name, error));
                }
                warn!(secret = %name, %error, "could not make the Job own its Secret; it is deleted explicitly");
                owned = false;
            }
        }
        if let Some(name) = pvc
            && let Err(error) = self.pvcs.patch(name, &params, &Patch::Merge(&patch)).await
        {
            if api_error::is_forbidden(&error) {
                return Err(classify("PersistentVolumeClaim", name, error));
            }
            warn!(pvc = %name, %error, "could not make the Job own its PVC; it is deleted explicitly");
            owned = false;
        }
        Ok(owned)
    }

    /// Creates one object; on AlreadyExists removes our own leftover and tries once more.
    /// Returns the created object and how many leftovers were replaced.
    ///
    /// Ownership is checked with a list by name *and* this instance's labels, so the executor needs
    /// no `get` permission on Secrets and never touches another executor's objects.
    async fn create_one<K>(
        &self,
        api: &Api<K>,
        kind: &'static str,
        object: &K,
    ) -> Result<(K, usize), CreateError>
    where
        K: Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        // NB: a broken connection may hide a create that was applied; the next attempt then meets
        // our own object and replaces it below, like any leftover.
        let params = PostParams::default();
        let first = retry_when(
            "kubernetes.create",
            RetryPolicy::kubernetes_objects(),
            api_error::is_transient,
            || api.create(&params, object),
        )
        .await;
        match first {
            Ok(created) => return Ok((created, 0)),
            Err(error) if api_error::is_already_exists(&error) => {}
            Err(error) => return Err(classify(kind, &name, error)),
        }
        match self.name_holder(api, &name).await {
            Ok(NameHolder::Ours) => {
                info!(kind, %name, "removing a leftover of an earlier run of this job");
                let _ = delete_quietly(api, &name).await;
                let limit = Duration::from_secs(60);
                if !self.wait_gone(api, &name, limit).await {
                    return Err(CreateError::LeftoverNotGone {
                        kind,
                        name,
                        waited: limit,
                    });
                }
            }
            // The conflicting object is gone already: the garbage collector removed an earlier
            // run's Secret between the create and the look-up.
            Ok(NameHolder::Nobody) => {}
            Ok(NameHolder::Other) => {
                return Err(CreateError::OwnedByOther {
                    kind,
                    name,
                    owner: "another executor instance or not kube-executor".to_string(),
                });
            }
            Err(error) => return Err(classify(kind, &name, error)),
        }
        api.create(&PostParams::default(), object)
            .await
            .map(|created| (created, 1))
            .map_err(|e| classify(kind, &name, e))
    }

    /// Who holds `name` after a conflict: an object with this instance's labels, nobody any more,
    /// or someone else. Listed by name, so no `get` permission is needed.
    async fn name_holder<K>(&self, api: &Api<K>, name: &str) -> Result<NameHolder, kube::Error>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        if self.find_ours(api, name).await? {
            return Ok(NameHolder::Ours);
        }
        let anyone = ListParams::default().fields(&format!("metadata.name={name}"));
        Ok(if api.list(&anyone).await?.items.is_empty() {
            NameHolder::Nobody
        } else {
            NameHolder::Other
        })
    }

    /// Whether an object named `name` carrying this instance's labels exists.
    async fn find_ours<K>(&self, api: &Api<K>, name: &str) -> Result<bool, kube::Error>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let params = ListParams::default()
            .labels(&labels::instance_selector(&self.instance_id))
            .fields(&format!("metadata.name={name}"));
        Ok(!api.list(&params).await?.items.is_empty())
    }

    /// Waits (polling with growing pauses, bounded) until our object `name` no longer exists.
    async fn wait_gone<K>(&self, api: &Api<K>, name: &str, limit: Duration) -> bool
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let deadline = tokio::time::Instant::now() + limit;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.find_ours(api, name).await {
                Ok(false) => return true,
                _ if tokio::time::Instant::now() >= deadline => return false,
                _ => {}
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Deletes the Job; its pods, and its Secrets/PVC when `owned`, follow through the garbage
    /// collector. Unowned Secrets/PVC (a failed owner patch) are deleted explicitly. NotFound
    /// counts as done.
    ///
    /// # Errors
    /// Lists every delete that failed.
    pub async fn delete_all(&self, objects: &JobObjects, owned: bool) -> Result<Vec<String>, Vec<String>> {
        let mut done = Vec::new();
        let mut failed = Vec::new();
        let job_name = objects.job.name_any();
        match delete_quietly(&self.jobs, &job_name).await {
            Ok(()) => done.push(format!("deleted job.batch/{job_name}")),
            Err(e) => failed.push(format!("job.batch/{job_name}: {e}")),
        }
        // What the Job owns, the garbage collector removes: one API call less per job.
        for secret in std::iter::once(&objects.secret).chain(objects.pull_secret.iter()) {
            let name = secret.name_any();
            if owned {
                done.push(format!("secret/{name} goes with the Job (owner reference)"));
                continue;
            }
            match delete_quietly(&self.secrets, &name).await {
                Ok(()) => done.push(format!("deleted secret/{name}")),
                Err(e) => failed.push(format!("secret/{name}: {e}")),
            }
        }
        if let Some(pvc) = &objects.pvc {
            let name = pvc.name_any();
            if owned {
                done.push(format!(
                    "persistentvolumeclaim/{name} goes with the Job (owner reference)"
                ));
            } else {
                match delete_quietly(&self.pvcs, &name).await {
                    Ok(()) => done.push(format!("deleted persistentvolumeclaim/{name}")),
                    Err(e) => failed.push(format!("persistentvolumeclaim/{name}: {e}")),
                }
            }
        }
        if failed.is_empty() { Ok(done) } else { Err(failed) }
    }

    /// Deletes this instance's Jobs (and stray Secrets/PVCs) left by an earlier process: that
    /// process can no longer report them, and the frontend re-queues their jobs. Finished Jobs are
    /// kept when `keep_finished` (KUBERNETES_KEEP_JOBS) is set.
    ///
    /// # Errors
    /// When listing fails; individual delete failures are logged.
    pub async fn sweep_leftovers(&self, keep_finished: bool) -> Result<usize, kube::Error> {
        let selector = labels::instance_selector(&self.instance_id);
        let params = ListParams::default().labels(&selector);
        let mut deleted = 0;
        for job in self.jobs.list(&params).await? {
            if keep_finished && super::failure::job_finished(&job) {
                continue;
            }
            let name = job.name_any();
            sweep_one(&self.jobs, &name).await?;
            let label = |key: &str| job.labels().get(key).cloned().unwrap_or_default();
            info!(
                job = %name,
                job_id = %label(labels::JOB_ID_KEY),
                queue = %label(labels::QUEUE_KEY),
                "deleted a Job left by an earlier executor process"
            );
            deleted += 1;
        }
        if !keep_finished {
            // Owned Secrets/PVCs go with their Job; these are the ones a crash left unowned.
            for secret in self.secrets.list(&params).await? {
                if secret.owner_references().is_empty() {
                    sweep_one(&self.secrets, &secret.name_any()).await?;
                }
            }
            for pvc in self.pvcs.list(&params).await? {
                if pvc.owner_references().is_empty() {
                    sweep_one(&self.pvcs, &pvc.name_any()).await?;
                }
            }
        }
        Ok(deleted)
    }
}

/// Deletes one leftover; a forbidden delete is returned (the Role is wrong), other failures are
/// logged and left to the next sweep or the TTL.
async fn sweep_one<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match delete_quietly(api, name).await {
        Err(error) if api_error::is_forbidden(&error) => Err(error),
        Err(error) => {
            warn!(%name, %error, "could not delete a leftover object");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

fn background() -> DeleteParams {
    DeleteParams::background()
}

/// Deletes `name`, trying again while the API server is unreachable or answers 429/5xx (for up to
/// a minute, as creates do); NotFound counts as done, so a delete applied before its answer was
/// lost is done too.
async fn delete_quietly<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let params = background();
    let deleted = retry_when(
        "kubernetes.delete",
        RetryPolicy::kubernetes_objects(),
        api_error::is_transient,
        || api.delete(name, &params),
    )
    .await;
    match deleted {
        Ok(_) => Ok(()),
        Err(error) if api_error::is_not_found(&error) => Ok(()),
        Err(error) => Err(error),
    }
}

fn classify(kind: &'static str, name: &str, error: kube::Error) -> CreateError {
    match error {
        error if api_error::is_rejected(&error) => CreateError::Rejected {
            kind,
            name: name.to_string(),
            message: api_error::message(&error),
        },
        error if api_error::is_forbidden(&error) => CreateError::Forbidden {
            kind,
            name: name.to_string(),
            message: api_error::message(&error),
        },
        source => CreateError::Api {
            kind,
            name: name.to_string(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::{Value, json};

    use super::*;
    use crate::k8s::testing::{self, ApiServer, deleted, finished, list};

    const SECRETS: &str = "/api/v1/namespaces/ns/secrets";
    const PVCS: &str = "/api/v1/namespaces/ns/persistentvolumeclaims";
    const JOBS: &str = "/apis/batch/v1/namespaces/ns/jobs";
    const OURS: &str = "app.kubernetes.io/managed-by=kube-executor,kube-executor.io/instance=inst-1";

    fn meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        }
    }

    fn job_objects(with_pvc: bool) -> JobObjects {
        JobObjects {
            job: Job {
                metadata: meta("sg-job-1"),
                ..Job::default()
            },
            secret: Secret {
                metadata: meta("sg-job-1-secrets"),
                ..Secret::default()
            },
            pull_secret: None,
            pvc: with_pvc.then(|| PersistentVolumeClaim {
                metadata: meta("sg-job-1-pvc"),
                ..PersistentVolumeClaim::default()
            }),
            steps: Vec::new(),
        }
    }

    fn objects() -> (Objects, ApiServer) {
        let (client, server) = testing::client();
        (Objects::new(client, "ns", "inst-1"), server)
    }

    /// The request body as the API server would store it, with a UID.
    fn stored(body: &Value, uid: &str) -> Value {
        let mut object = body.clone();
        object["metadata"]["uid"] = json!(uid);
        object
    }

    /// Answers the rest of a create that succeeds: the Secret stored with UID `secret_uid`, the
    /// Job with UID `j1`, and the patch that makes the Job own the Secret.
    async fn answer_secret_job_and_owner_patch(server: &mut ApiServer, secret_uid: &str) {
        let call = server.expect(&format!("POST {SECRETS}")).await;
        let body = stored(&call.body, secret_uid);
        call.answer(201, body);
        let call = server.expect(&format!("POST {JOBS}")).await;
        let body = stored(&call.body, "j1");
        call.answer(201, body);
        let call = server.expect(&format!("PATCH {SECRETS}/sg-job-1-secrets")).await;
        let body = stored(&call.body, secret_uid);
        call.answer(200, body);
    }

    fn named(kind: &str, name: &str, owned: bool) -> Value {
        let owners = if owned {
            json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "sg-job-9", "uid": "u9"}])
        } else {
            json!(null)
        };
        json!({"kind": kind, "apiVersion": "v1", "metadata": {"name": name, "ownerReferences": owners}})
    }

    fn finished_job(name: &str) -> Value {
        json!({
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "status": {"conditions": [{"type": "Complete", "status": "True"}]},
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejected_job_deletes_the_secret_and_pvc_created_before_it() {
        let (objects, mut server) = objects();
        let create = tokio::spawn(async move { objects.create(&job_objects(true)).await });

        let call = server.expect(&format!("POST {SECRETS}")).await;
        assert_eq!(call.body["metadata"]["name"], "sg-job-1-secrets");
        let body = stored(&call.body, "s1");
        call.answer(201, body);
        let call = server.expect(&format!("POST {PVCS}")).await;
        let body = stored(&call.body, "p1");
        call.answer(201, body);
        server.expect(&format!("POST {JOBS}")).await.fail(422, "Invalid");
        // Rollback: what was created goes; the Job, which was never created, is not touched.
        let call = server.expect(&format!("DELETE {SECRETS}/sg-job-1-secrets")).await;
        assert_eq!(call.body["propagationPolicy"], "Background");
        call.answer(200, deleted());
        server
            .expect(&format!("DELETE {PVCS}/sg-job-1-pvc"))
            .await
            .answer(200, deleted());

        let error = finished(create).await.expect_err("the Job was rejected");
        assert!(
            matches!(error, CreateError::Rejected { kind: "Job", .. }),
            "{error}"
        );
        assert!(error.is_permanent());
        server.assert_no_more_calls().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_forbidden_owner_patch_deletes_the_job_as_well() {
        let (objects, mut server) = objects();
        let create = tokio::spawn(async move { objects.create(&job_objects(false)).await });

        let call = server.expect(&format!("POST {SECRETS}")).await;
        let body = stored(&call.body, "s1");
        call.answer(201, body);
        let call = server.expect(&format!("POST {JOBS}")).await;
        let body = stored(&call.body, "j1");
        call.answer(201, body);
        let call = server.expect(&format!("PATCH {SECRETS}/sg-job-1-secrets")).await;
        assert_eq!(call.body["metadata"]["ownerReferences"][0]["uid"], "j1");
        call.fail(403, "Forbidden");
        server
            .expect(&format!("DELETE {JOBS}/sg-job-1"))
            .await
            .answer(200, deleted());
        server
            .expect(&format!("DELETE {SECRETS}/sg-job-1-secrets"))
            .await
            .answer(200, deleted());

        let error = finished(create).await.expect_err("the patch was forbidden");
        assert!(
            matches!(error, CreateError::Forbidden { kind: "Secret", .. }),
            "{error}"
        );
        server.assert_no_more_calls().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_the_api_server_could_not_serve_is_tried_again() {
        let (objects, mut server) = objects();
        let create = tokio::spawn(async move { objects.create(&job_objects(false)).await });

        // A restarting API server answers 503 twice; the job goes on once it is back.
        for _ in 0..2 {
            server
                .expect(&format!("POST {SECRETS}"))
                .await
                .fail(503, "ServiceUnavailable");
        }
        answer_secret_job_and_owner_patch(&mut server, "s1").await;

        let created = finished(create).await.expect("created after the retries");
        assert_eq!(created.replaced_leftovers, 0);
        assert_eq!(created.job.uid, "j1");
        server.assert_no_more_calls().await;
    }

    #[tokio::test(start_paused = true)]
    async fn our_leftover_of_the_same_name_is_deleted_and_created_again() {
        let (objects, mut server) = objects();
        let create = tokio::spawn(async move { objects.create(&job_objects(false)).await });

        server
            .expect(&format!("POST {SECRETS}"))
            .await
            .fail(409, "AlreadyExists");
        // Ours? Listed by name and this instance's labels: no `get` permission needed.
        let call = server.expect(&format!("GET {SECRETS}")).await;
        assert_eq!(call.param("labelSelector"), Some(OURS));
        assert_eq!(
            call.param("fieldSelector"),
            Some("metadata.name=sg-job-1-secrets")
        );
        call.answer(
            200,
            list("SecretList", vec![named("Secret", "sg-job-1-secrets", false)]),
        );
        server
            .expect(&format!("DELETE {SECRETS}/sg-job-1-secrets"))
            .await
            .answer(200, deleted());
        // Still being deleted once, then gone.
        let call = server.expect(&format!("GET {SECRETS}")).await;
        assert_eq!(
            call.param("fieldSelector"),
            Some("metadata.name=sg-job-1-secrets")
        );
        call.answer(
            200,
            list("SecretList", vec![named("Secret", "sg-job-1-secrets", false)]),
        );
        server
            .expect(&format!("GET {SECRETS}"))
            .await
            .answer(200, list("SecretList", vec![]));
        answer_secret_job_and_owner_patch(&mut server, "s2").await;

        let created = finished(create).await.expect("created");
        assert_eq!(created.replaced_leftovers, 1);
        assert!(created.owned);
        assert_eq!(created.job.uid, "j1");
        server.assert_no_more_calls().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflicting_object_that_vanished_before_the_look_up_is_created_again() {
        let (objects, mut server) = objects();
        let create = tokio::spawn(async move { objects.create(&job_objects(false)).await });

        server
            .expect(&format!("POST {SECRETS}"))
            .await
            .fail(409, "AlreadyExists");
        // The garbage collector removes the earlier run's Secret before it can be looked up.
        let call = server.expect(&format!("GET {SECRETS}")).await;
        assert_eq!(call.param("labelSelector"), Some(OURS));
        call.answer(200, list("SecretList", vec![]));
        let call = server.expect(&format!("GET {SECRETS}")).await;
        assert_eq!(call.param("labelSelector"), None);
        call.answer(200, list("SecretList", vec![]));
        answer_secret_job_and_owner_patch(&mut server, "s2").await;

        let created = finished(create)
            .await
            .expect("created after the conflict cleared");
        assert_eq!(created.replaced_leftovers, 1);
        assert!(created.owned);
        server.assert_no_more_calls().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_same_named_object_that_is_not_ours_is_left_alone() {
        let (objects, mut server) = objects();
        let create = tokio::spawn(async move { objects.create(&job_objects(false)).await });

        server
            .expect(&format!("POST {SECRETS}"))
            .await
            .fail(409, "AlreadyExists");
        let call = server.expect(&format!("GET {SECRETS}")).await;
        assert_eq!(call.param("labelSelector"), Some(OURS));
        call.answer(200, list("SecretList", vec![]));
        let call = server.expect(&format!("GET {SECRETS}")).await;
        assert_eq!(call.param("labelSelector"), None, "anyone's object of that name");
        let theirs = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sg-job-1-secrets"}});
        call.answer(200, list("SecretList", vec![theirs]));

        let error = finished(create).await.expect_err("the name is taken");
        assert!(
            matches!(error, CreateError::OwnedByOther { kind: "Secret", .. }),
            "{error}"
        );
        assert!(!error.is_permanent());
        // Neither the other owner's Secret nor anything else is deleted.
        server.assert_no_more_calls().await;
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_deletes_this_instances_jobs_and_the_secrets_and_pvcs_no_job_owns() {
        let (objects, mut server) = objects();
        let sweep = tokio::spawn(async move { objects.sweep_leftovers(false).await });

        let call = server.expect(&format!("GET {JOBS}")).await;
        assert_eq!(call.param("labelSelector"), Some(OURS));
        let running = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "sg-job-2"}});
        call.answer(200, list("JobList", vec![finished_job("sg-job-1"), running]));
        server
            .expect(&format!("DELETE {JOBS}/sg-job-1"))
            .await
            .answer(200, deleted());
        // A delete the API server could not serve is tried again.
        server
            .expect(&format!("DELETE {JOBS}/sg-job-2"))
            .await
            .fail(503, "ServiceUnavailable");
        // One that fails for good is left for the next sweep; the sweep goes on.
        server
            .expect(&format!("DELETE {JOBS}/sg-job-2"))
            .await
            .fail(409, "Conflict");
        let call = server.expect(&format!("GET {SECRETS}")).await;
        assert_eq!(call.param("labelSelector"), Some(OURS));
        let secrets = vec![named("Secret", "owned", true), named("Secret", "stray", false)];
        call.answer(200, list("SecretList", secrets));
        server
            .expect(&format!("DELETE {SECRETS}/stray"))
            .await
            .answer(200, deleted());
        let call = server.expect(&format!("GET {PVCS}")).await;
        assert_eq!(call.param("labelSelector"), Some(OURS));
        let pvcs = vec![named("PersistentVolumeClaim", "stray-pvc", false)];
        call.answer(200, list("PersistentVolumeClaimList", pvcs));
        // Already gone counts as deleted.
        server
            .expect(&format!("DELETE {PVCS}/stray-pvc"))
            .await
            .fail(404, "NotFound");

        assert_eq!(finished(sweep).await.expect("swept"), 2);
        server.assert_no_more_calls().await;
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_with_keep_jobs_deletes_only_unfinished_jobs() {
        let (objects, mut server) = objects();
        let sweep = tokio::spawn(async move { objects.sweep_leftovers(true).await });

        let call = server.expect(&format!("GET {JOBS}")).await;
        assert_eq!(call.param("labelSelector"), Some(OURS));
        let running = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "sg-job-2"}});
        call.answer(200, list("JobList", vec![finished_job("sg-job-1"), running]));
        server
            .expect(&format!("DELETE {JOBS}/sg-job-2"))
            .await
            .answer(200, deleted());

        // The kept Job's Secrets and PVC are kept with it: they are not even listed.
        assert_eq!(finished(sweep).await.expect("swept"), 1);
        server.assert_no_more_calls().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_forbidden_sweep_delete_is_an_error() {
        let (objects, mut server) = objects();
        let sweep = tokio::spawn(async move { objects.sweep_leftovers(false).await });

        let running = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "sg-job-2"}});
        server
            .expect(&format!("GET {JOBS}"))
            .await
            .answer(200, list("JobList", vec![running]));
        server
            .expect(&format!("DELETE {JOBS}/sg-job-2"))
            .await
            .fail(403, "Forbidden");

        let error = finished(sweep).await.expect_err("the Role is wrong");
        assert!(api_error::is_forbidden(&error), "{error}");
        server.assert_no_more_calls().await;
    }
}
