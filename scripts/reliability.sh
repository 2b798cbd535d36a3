#!/usr/bin/env bash
#! Runs the reliability suite (fault scenarios on a local control plane) and writes its report to docs/reliability.md.
#
# Usage: scripts/reliability.sh [--quick] [--no-write] [--only SCENARIO[,SCENARIO...]]
#
# Builds the test profile once (the same build `cargo test` uses), then runs the harness in
# benches/reliability/: eight scenarios, each with its own control plane (etcd, kube-apiserver,
# controller-manager, scheduler, simulated nodes), dev frontend and executor, all on loopback:
#   1. kube-apiserver killed and restarted    5. SIGTERM with jobs running
#   2. watches expired (etcd compaction)      6. pods deleted/evicted, node NotReady, node agent killed
#   3. frontend 500/503/hanging/lost answers  7. hostile payloads mixed in
#   4. executor SIGKILLed and restarted       8. soak at concurrency 20 (500 jobs; 100 with --quick)
# --quick shortens streams and faults (about 5-7 minutes on 2 cores). The report table goes to
# stdout and to docs/reliability.md (with --no-write or --only, to stdout only: scripts/test.sh
# checks without rewriting the committed report, and a partial run never replaces it). Exits non-zero when any job was lost or ran twice, any object or log line was lost,
# duplicated or left behind, the concurrency limit was exceeded, or any other assertion failed.
# Each scenario stops its processes and removes its directories even when it fails.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

args=()
report="docs/reliability.md"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) args+=(--quick) ;;
    --no-write) report="" ;;
    --only) [ $# -ge 2 ] || { echo "--only needs scenario names" >&2; exit 2; }
            args+=(--only "$2"); report=""; shift ;;
    *) echo "usage: scripts/reliability.sh [--quick] [--no-write] [--only SCENARIO,...]" >&2; exit 2 ;;
  esac
  shift
done

mkdir -p docs
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
cargo build --locked -p node-agent -p test-cluster --bins
status=0
cargo bench --profile dev --locked --bench reliability -- "${args[@]}" --out "$out" || status=$?
if [ -n "$report" ] && [ -s "$out" ]; then
  cp "$out" "$report"
  echo "report written to $report" >&2
fi
exit "$status"
