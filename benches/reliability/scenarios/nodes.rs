//! Scenario 6: job pods deleted and evicted by someone else, a node marked NotReady with pods on
//! it, and the node agent killed so its pods' status stops updating.

use std::time::{Duration, Instant};

use dev_frontend::FrontendOptions;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api,
    api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams},
};
use serde_json::json;

use super::Plan;
use crate::{
    bed::{Bed, Setup},
    report::Figures,
    support::INSTANCE,
    workload::Kind,
};

/// How long the node agent stays dead.
const AGENT_DOWN: Duration = Duration::from_secs(5);

pub async fn pods_and_nodes(plan: &Plan) -> Figures {
    let mut bed = Bed::start(
        "6. pods deleted/evicted, node NotReady, node agent killed",
        Setup {
            // Each disturbed job is errored once per fault it meets, then runs again.
            frontend: FrontendOptions {
                max_failures: 4,
                ..FrontendOptions::default()
            },
            ..Setup::new(4)
        },
    )
    .await;
    // Fresh jobs before each fault, so some are running when it strikes.
    let batch = plan.jobs(6);
    bed.enqueue(batch, plan.shape(), |_| Kind::Numbered);
    bed.wait_running(2, plan.wait()).await;
    disturb_a_pod(&mut bed, false).await;
    bed.enqueue(batch, plan.shape(), |_| Kind::Numbered);
    bed.wait_running(2, plan.wait()).await;
    disturb_a_pod(&mut bed, true).await;

    bed.enqueue(batch, plan.shape(), |_| Kind::Numbered);
    bed.wait_running(2, plan.wait()).await;
    match mark_node_not_ready(&bed).await {
        Ok(()) => bed.fault_ended(
            "node-1 marked NotReady (until the agent's next heartbeat) with pods on it",
            Instant::now(),
        ),
        Err(e) => bed
            .figures
            .problems
            .push(format!("could not mark node-1 NotReady: {e}")),
    }

    bed.enqueue(batch, plan.shape(), |_| Kind::Numbered);
    bed.wait_running(2, plan.wait()).await;
    bed.allow_retry_of_unfinished();
    bed.env.cluster.kill_node_agent();
    tokio::time::sleep(AGENT_DOWN).await;
    bed.env
        .cluster
        .restart_node_agent()
        .expect("restart the node agent");
    bed.fault_ended(
        &format!("node agent SIGKILLed for {AGENT_DOWN:?} with pods running, then restarted"),
        Instant::now(),
    );
    bed.finish(plan.finish()).await
}

/// Deletes (or evicts) the pod of one running job, as an operator or a drain would.
async fn disturb_a_pod(bed: &mut Bed, evict: bool) {
    let pods: Api<Pod> = Api::namespaced(bed.env.cluster.client(), "default");
    let params = ListParams::default().labels(&format!("kube-executor.io/instance={INSTANCE}"));
    // Steps run as init containers, so a running job's pod may still be Pending.
    let running = pods.list(&params).await.ok().and_then(|list| {
        list.items.into_iter().find(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            p.metadata.deletion_timestamp.is_none() && matches!(phase, Some("Pending" | "Running"))
        })
    });
    let Some(pod) = running else {
        bed.figures.problems.push("no running job pod to disturb".into());
        return;
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    if let Some(id) = job_id_of(&pod) {
        bed.allow_retry(id);
    }
    let result = if evict {
        pods.evict(&name, &EvictParams::default()).await.map(|_| ())
    } else {
        pods.delete(&name, &DeleteParams::default()).await.map(|_| ())
    };
    match result {
        Ok(()) => bed.fault_ended(
            &format!(
                "pod {name} {} by someone else",
                if evict { "evicted" } else { "deleted" }
            ),
            Instant::now(),
        ),
        Err(e) => bed
            .figures
            .problems
            .push(format!("could not disturb pod {name}: {e}")),
    }
}

fn job_id_of(pod: &Pod) -> Option<i64> {
    pod.metadata
        .labels
        .as_ref()?
        .get("job-name")?
        .strip_prefix("sg-executor-job-batches-")?
        .parse()
        .ok()
}

/// Sets node-1's Ready condition to False, as a kubelet that stopped reporting would leave it.
async fn mark_node_not_ready(bed: &Bed) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(bed.env.cluster.client());
    let node = nodes.get_status("node-1").await?;
    let conditions: Vec<serde_json::Value> = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|mut c| {
            if c.type_ == "Ready" {
                c.status = "False".into();
                c.reason = Some("KubeletNotReady".into());
            }
            serde_json::to_value(c).unwrap_or_default()
        })
        .collect();
    let patch = json!({"status": {"conditions": conditions}});
    nodes
        .patch_status("node-1", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}
