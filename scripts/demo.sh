#!/usr/bin/env bash
#! Runs kube-executor against a local control plane and the dev frontend with sample jobs.
#
# Usage: scripts/demo.sh            (DEMO_KEEP=1 keeps everything running afterwards, for the pages)
#
# Starts a local Kubernetes control plane with two simulated nodes, the Sourcegraph-compatible dev
# frontend with a demo repository and the sample jobs of scripts/demo/jobs, then runs the executor
# on the batches and codeintel queues until those jobs are done, and prints what the frontend
# recorded. Everything it starts is stopped and removed at the end (or on Ctrl-C).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

step "installing the local control plane (cached after the first run)"
scripts/install-test-cluster.sh
step "building"
cargo build --workspace --bins --locked

work="$(mktemp -d)"
pids=()
cleanup() {
  set +e
  target/debug/test-cluster down --dir "$work/cluster" >/dev/null 2>&1
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # wait_for DESCRIPTION SECONDS COMMAND...
  local what="$1" limit="$2"; shift 2
  for _ in $(seq 1 $((limit * 5))); do "$@" && return 0; sleep 0.2; done
  die "$what did not come up within ${limit}s"
}

step "starting a control plane with two simulated nodes"
mkdir -p "$work/cluster"
target/debug/test-cluster up --dir "$work/cluster" --nodes 2 >"$work/cluster.log" 2>&1 &
pids+=($!)
wait_for "the control plane" 120 test -s "$work/cluster/env"
kubeconfig="$work/cluster/kubeconfig"

step "starting the dev frontend"
frontend_port="$(free_port)"
token="demo-access-token-0123456789abcdef"
frontend="http://127.0.0.1:$frontend_port"
target/debug/dev-frontend serve --addr "127.0.0.1:$frontend_port" --access-token "$token" \
  --repos-dir "$work/repos" >"$work/frontend.log" 2>&1 &
pids+=($!)
wait_for "the dev frontend" 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$frontend_port" 2>/dev/null

commit="$(target/debug/dev-frontend create-repo --url "$frontend" --name github.com/sourcegraph/demo --dir scripts/demo/repo)"
echo "demo repository github.com/sourcegraph/demo at $commit" >&2
count=0
for file in scripts/demo/jobs/*.json; do
  sed "s/__COMMIT__/$commit/" "$file" >"$work/job.json"
  id="$(target/debug/dev-frontend enqueue --url "$frontend" --file "$work/job.json")"
  echo "enqueued $(basename "$file" .json) as job $id" >&2
  count=$((count + 1))
done

health_port="$(free_port)"
step "running the executor (it stops after $count jobs)"
cat >&2 <<INFO
  Site admin > Executors > Instances:  $frontend/site-admin/executors
  Jobs and their live logs:            $frontend/jobs
  Executor status page:                http://127.0.0.1:$health_port/
INFO
env -i PATH="$PATH" HOME="${HOME:-/root}" HOSTNAME=demo-executor \
  EXECUTOR_FRONTEND_URL="$frontend" \
  EXECUTOR_FRONTEND_PASSWORD="$token" \
  EXECUTOR_QUEUE_NAMES=batches,codeintel \
  EXECUTOR_MAXIMUM_NUM_JOBS=2 \
  EXECUTOR_NUM_TOTAL_JOBS="$count" \
  EXECUTOR_INSTANCE_ID=demo \
  EXECUTOR_KUBERNETES_CONFIG_PATH="$kubeconfig" \
  EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY=256Mi \
  EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY=2Gi \
  EXECUTOR_HEALTH_SERVER_ADDR="127.0.0.1:$health_port" \
  SRC_LOG_LEVEL=info \
  target/debug/executor

step "what the frontend recorded"
target/debug/dev-frontend show --url "$frontend" | python3 scripts/demo/summary.py
if [ "${DEMO_KEEP:-0}" = 1 ]; then
  step "DEMO_KEEP=1: everything keeps running; Ctrl-C to stop"
  echo "  $frontend/site-admin/executors   $frontend/jobs   KUBECONFIG=$kubeconfig" >&2
  wait "${pids[0]}"
fi
