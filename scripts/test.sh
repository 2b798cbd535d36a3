#!/usr/bin/env bash
#! Runs every check and test from a fresh clone: installs the control plane and tools, builds once, lints, tests.
#
# Usage: scripts/test.sh
#
# What it does, in order (each step names itself; the first failure stops the run):
#   1. scripts/install-test-cluster.sh   apt packages + kube-apiserver/controller-manager/scheduler (cached)
#   2. scripts/install-tools.sh          helm, kubernetes-validate, promtool, Chromium (cached)
#   3. cargo fmt --check, cargo build (all targets, one shared target dir), cargo clippy -D warnings
#   4. cargo test --workspace            unit tests, the test bed's proofs, the executor's end-to-end tests
#   5. cargo bench --profile dev --bench log_flood
#                                        executor memory with 20 jobs flooding their logs, as a ratio
#                                        to 20 quiet ones (prints the figures; fails if memory grows
#                                        with the output)
#   6. scripts/reliability.sh --quick    fault scenarios (API server restart, expired watches,
#                                        frontend faults, executor kill/SIGTERM, pod/node faults,
#                                        hostile payloads, soak); fails on any lost, duplicated or
#                                        leaked job, object or log line (report: docs/reliability.md)
#   7. scripts/validate-golden.sh        golden Job objects against the Kubernetes schemas
#   8. scripts/check-deploy.sh           Helm/Kustomize/RBAC checks, with a server-side dry run on a
#                                        local control plane started for the purpose
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
step() { printf '\n==> %s\n' "$*" >&2; }

step "installing the local control plane"
scripts/install-test-cluster.sh
step "installing deployment tools"
scripts/install-tools.sh >/dev/null

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
step "cargo fmt --check"
cargo fmt --all --check
step "cargo build (all targets)"
cargo build --workspace --all-targets --locked
step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked --no-fail-fast

step "benchmark: executor memory with 20 jobs flooding their logs (test build)"
cargo bench --profile dev --locked --bench log_flood

step "reliability suite, quick form (fault scenarios on local control planes)"
scripts/reliability.sh --quick --no-write

step "validating golden objects"
scripts/validate-golden.sh

step "checking deployment artefacts (with a server-side dry run on a local control plane)"
cluster_dir="$(mktemp -d)"
cleanup() {
  target/debug/test-cluster down --dir "$cluster_dir" >/dev/null 2>&1 || true
  rm -rf "$cluster_dir"
}
trap cleanup EXIT
target/debug/test-cluster up --dir "$cluster_dir" --nodes 1 >"$cluster_dir/up.log" 2>&1 &
for _ in $(seq 1 120); do
  [ -s "$cluster_dir/env" ] && break
  if ! kill -0 $! 2>/dev/null; then cat "$cluster_dir/up.log" >&2; echo "test-cluster up failed" >&2; exit 1; fi
  sleep 1
done
[ -s "$cluster_dir/env" ] || { cat "$cluster_dir/up.log" >&2; echo "test-cluster up timed out" >&2; exit 1; }
KUBECONFIG="$cluster_dir/kubeconfig" scripts/check-deploy.sh

step "all checks passed"
