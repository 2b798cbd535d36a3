//! The floor: a minimal client making the calls one job needs and nothing else — dequeue, create
//! the Secret and the Job, and once the pod succeeded add the two teardown entries, delete the Job
//! and mark the job complete — so the executor's figures can be read as ratios to it.

use std::sync::Arc;

use k8s_openapi::api::{batch::v1::Job, core::v1::Secret};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

use crate::observe::{JOB_ID_LABEL, Observer};

const NAME: &str = "bench-floor";

/// What the floor client needs to reach the frontend and the cluster.
pub struct FloorClient {
    pub http: reqwest::Client,
    pub frontend: String,
    pub token: String,
    pub kube: kube::Client,
    pub image: String,
}

/// Runs `jobs` queued jobs, `concurrency` at a time, to their end.
pub async fn run(client: Arc<FloorClient>, observer: Arc<Observer>, jobs: usize, concurrency: usize) {
    // The frontend accepts job calls only from an executor it has heard from.
    client.heartbeat().await;
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (client, observer) = (client.clone(), observer.clone());
            let share = jobs / concurrency + usize::from(worker < jobs % concurrency);
            tokio::spawn(async move {
                for _ in 0..share {
                    client.one_job(&observer).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a floor worker");
    }
}

impl FloorClient {
    async fn one_job(&self, observer: &Observer) {
        let job = self.dequeue().await;
        let id = job["id"].as_i64().expect("a job id");
        let token = job["token"].as_str().expect("a job token").to_string();
        let name = format!("bench-floor-{id}");
        let secrets: Api<Secret> = Api::namespaced(self.kube.clone(), "default");
        let jobs: Api<Job> = Api::namespaced(self.kube.clone(), "default");
        let labels = json!({ JOB_ID_LABEL: id.to_string(), "kube-executor.io/instance": NAME });
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": format!("{name}-secrets"), "labels": labels },
            "stringData": { "TOKEN": token },
        });
        let secret: Secret = serde_json::from_value(secret).expect("a Secret");
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("create the floor Secret");
        let job_object = serde_json::from_value(self.job_object(&name, &labels)).expect("a Job");
        jobs.create(&PostParams::default(), &job_object)
            .await
            .expect("create the floor Job");
        observer.wait_succeeded(id).await;
        for key in ["teardown.kubernetes.job", "teardown.fs"] {
            let entry = json!({
                "executorName": NAME, "jobId": id, "key": key, "command": ["kubectl", "delete"],
                "startTime": jiff::Timestamp::now().to_string(), "exitCode": 0, "out": "", "durationMs": 0,
            });
            self.job_call(id, &token, "addExecutionLogEntry", entry).await;
        }
        jobs.delete(&name, &DeleteParams::background())
            .await
            .expect("delete the floor Job");
        secrets
            .delete(&format!("{name}-secrets"), &DeleteParams::background())
            .await
            .expect("delete the floor Secret");
        self.job_call(
            id,
            &token,
            "markComplete",
            json!({ "executorName": NAME, "jobId": id }),
        )
        .await;
    }

    fn job_object(&self, name: &str, labels: &serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": { "name": name, "labels": labels },
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": { "labels": labels },
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{
                            "name": "main", "image": self.image,
                            "command": ["sh", "-c", "echo complete"],
                            "resources": { "requests": { "memory": "64Mi" } },
                        }],
                    },
                },
            },
        })
    }

    async fn heartbeat(&self) {
        let response = self
            .http
            .post(format!("{}/.executors/queue/batches/heartbeat", self.frontend))
            .header("Authorization", format!("token-executor {}", self.token))
            .json(&json!({ "executorName": NAME, "jobIds": [], "executorVersion": "6.0.0", "os": "linux" }))
            .send()
            .await
            .expect("heartbeat");
        assert!(response.status().is_success(), "heartbeat: {}", response.status());
    }

    /// Dequeues until a job comes: the bench queued it before starting the floor.
    async fn dequeue(&self) -> serde_json::Value {
        loop {
            let response = self
                .http
                .post(format!("{}/.executors/queue/batches/dequeue", self.frontend))
                .header("Authorization", format!("token-executor {}", self.token))
                .json(&json!({ "executorName": NAME, "version": "6.0.0", "numCPUs": 4, "memory": "12G", "diskSpace": "20G" }))
                .send()
                .await
                .expect("dequeue");
            if response.status() == reqwest::StatusCode::OK {
                return response.json().await.expect("a job");
            }
            tokio::task::yield_now().await;
        }
    }

    async fn job_call(&self, id: i64, token: &str, op: &str, body: serde_json::Value) {
        let response = self
            .http
            .post(format!("{}/.executors/queue/batches/{op}", self.frontend))
            .header("Authorization", format!("Bearer {token}"))
            .header("X-Sourcegraph-Job-ID", id.to_string())
            .header("X-Sourcegraph-Executor-Name", NAME)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{op}: {e}"));
        assert!(response.status().is_success(), "{op}: {}", response.status());
    }
}
