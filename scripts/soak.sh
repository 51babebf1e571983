#!/usr/bin/env bash
# The long churn soak (`make soak`, issue 10 item 9): the same test `make test` runs for 20 s,
# `connection_churn_leaves_no_connections_subscriptions_or_memory_behind` in
# tests/tests/failure/churn.rs, run for longer. Workers connect and disconnect clients across
# many instances while events flow; it prints progress (cycles, open connections, wanted
# subscriptions, RSS) about every tenth of the run, and at the end asserts the connections
# gauge is 0, no instance channel has a subscriber once UNSUBSCRIBE_DELAY has passed, and the
# gateway's RSS is back within 64 MiB of its baseline.
#
# Settings (environment):
#   SOAK_SECONDS    how long to churn                       (default 600)
#   SOAK_WORKERS    concurrent connect/disconnect loops     (default 24)
#   SOAK_INSTANCES  instances the clients spread over       (default 40)
#   CARGO_TARGET_DIR, CARGO as for `make test`.
#
# Needs redis-server and Postgres like `make test` (scripts/install-test-deps.sh).
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ryze-events/target}"
CARGO="${CARGO:-cargo}"
export SOAK_SECONDS="${SOAK_SECONDS:-600}"
export SOAK_WORKERS="${SOAK_WORKERS:-24}"
export SOAK_INSTANCES="${SOAK_INSTANCES:-40}"

case "$SOAK_SECONDS$SOAK_WORKERS$SOAK_INSTANCES" in
    *[!0-9]*) echo "soak: SOAK_SECONDS, SOAK_WORKERS and SOAK_INSTANCES must be whole numbers" >&2; exit 64 ;;
esac

echo "soak: ${SOAK_SECONDS}s of churn, ${SOAK_WORKERS} workers, ${SOAK_INSTANCES} instances"
$CARGO build -p ryze-gateway-cmd -p ryze-publisher
exec $CARGO test -p ryze-tests --test failure -- --exact \
    churn::connection_churn_leaves_no_connections_subscriptions_or_memory_behind --nocapture
