#!/usr/bin/env bash
#! Measures what each job costs the API server, the frontend and the executor, next to the floor
#! of a minimal client making the same calls, and writes docs/bench.md with the plot docs/bench.svg.
#
# Usage: scripts/bench.sh [--quick]
#
# Builds the executor, the node agent and the benchmark in release mode, then runs
# benches/job_costs on a local control plane with 20 simulated nodes, the dev frontend and its own
# executors (see benches/job_costs/main.rs for the rounds). --quick runs fewer and smaller rounds.
# It starts and stops everything it uses; a missed target is printed and makes it exit 1.
# Not a timed test: it is not part of scripts/test.sh.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
scripts/install-test-cluster.sh
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo build --release --locked -p node-agent
NODE_AGENT_BIN="$repo/target/release/node-agent" cargo bench --locked --bench job_costs -- "$@"
