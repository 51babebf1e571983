#!/usr/bin/env bash
# Measures how long rebalancing (SPEC D39) takes to spread the connections of one gateway over
# three: runs the ignored test `convergence_time` of tests/tests/rebalance.rs, which starts a
# publisher and one gateway (real processes, the test Postgres and Redis), connects
# REBALANCE_BENCH_CLIENTS resumable clients (default 2000) of 50 instances through the
# harness's round-robin balancer, publishes 100 events/s, adds two gateways, and prints the time
# from the new pods being in the balancer to every pod within REBALANCE_THRESHOLD (1.25) of the
# fleet mean, with every client reconnected. REBALANCE_RATE and REBALANCE_INTERVAL are at their
# defaults (50/s, 5s); only the warm-up and minimum age are shortened (the clients are seconds
# old). It also checks that no resumable client lost or repeated an event, and that the first
# pod never held fewer than its line floor(1.25 x mean).
#
#   scripts/rebalance-convergence.sh            # 2000 clients
#   REBALANCE_BENCH_CLIENTS=1000 scripts/rebalance-convergence.sh
#
# Prints `CONVERGENCE clients=N pods=1->3 converged_in=Ts closes=C lowest=L line=F`, and the
# first pod's `rebalancing: round done` log lines (closes per round, why each ended).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --workspace --bins
cargo test -p ryze-tests --test rebalance -- --ignored --exact convergence_time --nocapture 2>&1 \
  | grep -E '^CONVERGENCE|round done|first pod: [a-z_]+ [0-9]|test result'
