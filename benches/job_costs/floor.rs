//! The floor: a minimal client making the calls one job needs and nothing else — dequeue, create
//! the Secret and the Job the executor would create (with the executor's own builder, so the
//! cluster runs the same pod), and once the pod succeeded add the two teardown entries, delete the
//! Job and the Secret and mark the job complete — so the executor's figures read as ratios to it.

use std::sync::Arc;

use k8s_openapi::api::{batch::v1::Job, core::v1::Secret};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams},
};
use kube_executor::{JobContext, build_job_objects, config::Config};
use serde_json::json;

use crate::observe::Observer;

/// The floor's executor name and instance id.
pub const NAME: &str = "bench-floor";

/// What the floor client needs to reach the frontend and the cluster.
pub struct FloorClient {
    pub http: reqwest::Client,
    pub frontend: String,
    pub token: String,
    pub kube: kube::Client,
    /// An executor configuration for this cluster and frontend, whose job objects the floor creates.
    pub config: Config,
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
        let dequeued = self.dequeue().await;
        let job: kube_executor::queue::types::Job =
            serde_json::from_value(dequeued.clone()).expect("a job payload");
        let token = dequeued["token"].as_str().expect("a job token").to_string();
        let ctx = JobContext {
            job: &job,
            queue: "batches",
            executor_name: NAME,
            instance_id: NAME,
            frontend_url: &self.config.frontend_url,
            files: &[],
        };
        let objects = build_job_objects(&ctx, &self.config.kubernetes).expect("the job's objects");
        let secrets: Api<Secret> = Api::namespaced(self.kube.clone(), "default");
        let jobs: Api<Job> = Api::namespaced(self.kube.clone(), "default");
        secrets
            .create(&PostParams::default(), &objects.secret)
            .await
            .expect("create the floor Secret");
        jobs.create(&PostParams::default(), &objects.job)
            .await
            .expect("create the floor Job");
        observer.wait_succeeded(job.id).await;
        for key in ["teardown.kubernetes.job", "teardown.fs"] {
            let entry = json!({
                "executorName": NAME, "jobId": job.id, "key": key, "command": ["kubectl", "delete"],
                "startTime": jiff::Timestamp::now().to_string(), "exitCode": 0, "out": "", "durationMs": 0,
            });
            self.job_call(job.id, &token, "addExecutionLogEntry", entry).await;
        }
        let background = DeleteParams::background();
        jobs.delete(&objects.job.name_any(), &background)
            .await
            .expect("delete the floor Job");
        secrets
            .delete(&objects.secret.name_any(), &background)
            .await
            .expect("delete the floor Secret");
        self.job_call(
            job.id,
            &token,
            "markComplete",
            json!({ "executorName": NAME, "jobId": job.id }),
        )
        .await;
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
