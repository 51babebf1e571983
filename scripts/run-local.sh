#!/usr/bin/env bash
# `make run`: the single-process system (gateway + embedded publisher + in-process fan-out),
# a private Postgres in .run/, migrations, a seeded demo account and instance, and ready
# commands printed. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN=${RUN_DIR:-$ROOT/.run}
PORT=${RUN_PORT:-8080}
ADMIN_PORT=${RUN_ADMIN_PORT:-9090}
PG_PORT=${RUN_PG_PORT:-55432}
API_KEY=${RUN_PUBLISHER_API_KEY:-demo-publisher-key}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ryze-events/target}

# RUN_BIN_DIR: use binaries built already (the test of this script sets it).
if [ -z "${RUN_BIN_DIR:-}" ]; then
  bash scripts/install-test-deps.sh >/dev/null
  cargo build --workspace --bins
fi
BIN=${RUN_BIN_DIR:-$CARGO_TARGET_DIR/debug}
PG_BIN=${PG_BIN_DIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}

mkdir -p "$RUN"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ ! -f "$RUN/pg/PG_VERSION" ]; then
  mkdir -p "$RUN/pg" "$RUN/pg-sock"
  if [ "$(id -u)" = 0 ]; then chown -R postgres "$RUN/pg" "$RUN/pg-sock"; fi
  as_pg "$PG_BIN/initdb" -D "$RUN/pg" -U postgres --auth=trust >/dev/null
fi
mkdir -p "$RUN/pg-sock" "$RUN/pg-log"
if [ "$(id -u)" = 0 ]; then chown postgres "$RUN/pg-sock" "$RUN/pg-log"; fi
started_pg=no
if ! as_pg "$PG_BIN/pg_ctl" -D "$RUN/pg" status >/dev/null 2>&1; then
  as_pg "$PG_BIN/pg_ctl" -D "$RUN/pg" -l "$RUN/pg-log/postgres.log" -w \
    -o "-p $PG_PORT -k $RUN/pg-sock -c listen_addresses=127.0.0.1" start >/dev/null
  started_pg=yes
fi
stop_pg() {
  if [ "$started_pg" = yes ]; then as_pg "$PG_BIN/pg_ctl" -D "$RUN/pg" -m fast stop >/dev/null 2>&1 || true; fi
}
trap stop_pg EXIT

PSQL=(psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtA)
"${PSQL[@]}" -d postgres -c "SELECT 1 FROM pg_database WHERE datname='ryze'" | grep -q 1 \
  || "${PSQL[@]}" -d postgres -c "CREATE DATABASE ryze"
export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/ryze"
"$BIN/ryze-publisher" migrate >/dev/null

# Seed once; later runs reuse the same tokens.
if [ ! -f "$RUN/demo.env" ]; then
  account=$("$BIN/ryze-publisher" account create --name demo)
  account_id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$account")
  account_token=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' <<<"$account")
  instance=$("$BIN/ryze-publisher" instance create --account "$account_id" --name demo)
  instance_id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$instance")
  instance_token=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' <<<"$instance")
  "${PSQL[@]}" -d ryze -c "INSERT INTO websocket_configs (instance_id, enabled) VALUES ('$instance_id', true) ON CONFLICT DO NOTHING"
  cat > "$RUN/demo.env" <<ENV
ACCOUNT_ID=$account_id
ACCOUNT_TOKEN=$account_token
INSTANCE_ID=$instance_id
INSTANCE_TOKEN=$instance_token
ENV
fi
# shellcheck disable=SC1091
. "$RUN/demo.env"

cat <<INFO

ryze-events is running (single process, embedded publisher, in-process fan-out).
  account token:   $ACCOUNT_TOKEN
  instance token:  $INSTANCE_TOKEN   (instance "demo", id $INSTANCE_ID)
  publisher key:   $API_KEY

Watch events (needs only npm; the second line if you have websocat):
  npx -y wscat -c "ws://127.0.0.1:$PORT/ws/demo?token=$INSTANCE_TOKEN"
  websocat "ws://127.0.0.1:$PORT/ws/demo?token=$INSTANCE_TOKEN"
  (browser console: http://127.0.0.1:$PORT/console)
Publish a sample event:
  curl -sS -X POST http://127.0.0.1:$PORT/v1/events -H "Authorization: Bearer $API_KEY" -H 'Content-Type: application/json' \\
    -d '{"instanceId":"$INSTANCE_ID","event":"message.exchange","data":{"id":"wamid.1","message":{"direction":"incoming","content":{"text":"hello"}}}}'
Read the config:
  curl -sS http://127.0.0.1:$PORT/api/events/getWebsocket/demo -H "token: $ACCOUNT_TOKEN"
Health: curl -sS http://127.0.0.1:$PORT/health    Metrics: curl -sS http://127.0.0.1:$ADMIN_PORT/metrics

INFO

# The gateway ends with this script even when the script is killed outright (SIGKILL).
DEATHSIG=()
if command -v setpriv >/dev/null 2>&1; then DEATHSIG=(setpriv --pdeathsig TERM --); fi
LISTEN_ADDR=127.0.0.1:$PORT ADMIN_LISTEN_ADDR=127.0.0.1:$ADMIN_PORT \
EMBEDDED_PUBLISHER=true PUBLISHER_API_KEY=$API_KEY PUBLIC_BASE_URL=http://127.0.0.1:$PORT \
CONSOLE_ENABLED=true RUST_LOG=${RUST_LOG:-info} \
  ${DEATHSIG[@]+"${DEATHSIG[@]}"} "$BIN/ryze-gateway" &
gw=$!
trap 'kill -TERM $gw 2>/dev/null; wait $gw 2>/dev/null; stop_pg' EXIT INT TERM
wait $gw
