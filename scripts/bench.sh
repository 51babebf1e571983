#!/usr/bin/env bash
# `make bench` / `make bench-quick`: build release binaries, then run `ryze-bench` against real
# processes on this machine (private Postgres and Redis, two gateways, one publisher, the
# `ryze-load` workers as clients, all over loopback). Method and results: docs/benchmarks.md.
#
#   scripts/bench.sh            full run (about 4 minutes); rewrites the generated block of
#                               docs/benchmarks.md and keeps the raw numbers as JSON
#   scripts/bench.sh --quick    smaller counts (2-3 minutes) for before/after checks of a
#                               hot-path change; prints the results, leaves the docs alone
#   scripts/bench.sh --tiny     a few hundred connections: proves the tools work
# Other arguments go to ryze-bench, e.g. `--only fanout,idle`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ryze-events/target}

mode=full
extra=()
for arg in "$@"; do
  case "$arg" in
    --quick) mode=quick ;;
    --tiny) mode=tiny ;;
    *) extra+=("$arg") ;;
  esac
done

bash scripts/install-test-deps.sh >/dev/null
cargo build --release --workspace --bins

# Every process started from here inherits the largest open-files limit allowed: one gateway
# holds about 19,900 sockets at 20,000.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "bench: open files $(ulimit -n); load average $(cut -d' ' -f1-3 /proc/loadavg); nproc $(nproc)" >&2

bin=$CARGO_TARGET_DIR/release
out=$CARGO_TARGET_DIR/bench
mkdir -p "$out"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
export RYZE_BIN_DIR=$bin
# CPU profiles of the gateways while they publish: only when asked (BENCH_PERF=1) and perf
# works here (Debian: linux-perf). Profiling costs the gateways enough to move the results
# (fan-out at 200 events/s to 2,000 subscribers: 304k deliveries/s profiled, the offered
# 400k/s without), so the numbers this script writes into docs/benchmarks.md are taken without it.
if [ "${BENCH_PERF:-0}" = 1 ] && perf stat -e cpu-clock true >/dev/null 2>&1; then
  extra+=(--perf "$out/perf-$stamp")
fi
case $mode in
  full)
    "$bin/ryze-bench" --command "make bench" --doc docs/benchmarks.md \
      --json "$out/full-$stamp.json" "${extra[@]}"
    echo "bench: docs/benchmarks.md updated; raw numbers in $out/full-$stamp.json" >&2
    ;;
  quick)
    "$bin/ryze-bench" --quick --command "make bench-quick" \
      --json "$out/quick-$stamp.json" "${extra[@]}" | tee "$out/quick-$stamp.md"
    echo "bench: results in $out/quick-$stamp.md and .json (docs/benchmarks.md untouched)" >&2
    ;;
  tiny)
    "$bin/ryze-bench" --tiny --command "scripts/bench.sh --tiny" "${extra[@]}"
    ;;
esac
