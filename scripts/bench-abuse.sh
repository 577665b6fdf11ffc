#!/usr/bin/env bash
# What abuse detection, blocks and the client registry cost a BeginTask when nothing fires:
# the same daemon and load, once without [abuse] and once with every detector configured (none
# reachable), a block in force for another client, and a client registry, alternated so drift
# on a shared machine shows up as spread rather than as a difference.
#
#   scripts/bench-abuse.sh            # ~2 minutes after the release build
#   DURATION=5s ROUNDS=2 scripts/bench-abuse.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-2}

scripts/deps.sh
cargo build --release --quiet --features testd --bin credbroker-testd --bin credbroker-bench
CB="$ROOT/target/release/credbroker-testd"
LOAD="$ROOT/target/release/credbroker-bench"
W=$(mktemp -d /var/tmp/credbroker-bench-abuse.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
. scripts/bench-auth.sh   # $ISSUER, $RES and $W/token
(umask 077 && "$CB" keygen > "$W/journal.key" && "$CB" keygen > "$W/hook.key")

config() { # config DIR EXTRA
  cat <<TOML
[server]
broker_socket = "$1/broker.sock"
admin_socket = "$1/admin.sock"
[journal]
path = "$1/journal.db"
key_file = "$W/journal.key"
[broker]
provider_concurrency = 256
[[issuer]]
url = "$ISSUER"
[attribution]
clients = { "bench-agent" = "bench-owner@example.com" }
[[provider]]
name = "noop"
type = "noop"
[[grant]]
name = "bench"
provider = "noop"
scopes = ["mcp.tool:bench"]
max_ttl = "2h"
[[workload]]
name = "bench"
uid = $(id -u)
audience = "$RES"
grants = ["bench"]
$2
TOML
}

WATCHED='
[abuse]
webhook_url = "http://127.0.0.1:9/never"
webhook_secret_file = "'"$W"'/hook.key"
[abuse.wrong_audience]
response = ["revoke-client", "alert"]
[abuse.token_reuse]
response = ["revoke-token", "alert"]
[abuse.scope_probing]
threshold = 1000
window = "1m"
response = ["deny", "revoke-token"]
[abuse.rate]
threshold = 1000000
window = "1s"
per = "owner"
response = ["deny", "alert"]
[abuse.blocked_reuse]
response = ["alert"]
[[client]]
id = "bench-agent"
owner = "bench-owner@example.com"
expires = "2099-01-01T00:00:00Z"
'

run() { # run NAME EXTRA
  local d="$W/$1"; mkdir -p "$d"; rm -f "$d"/journal.db*
  config "$d" "$2" > "$d/cb.toml"
  "$CB" --log-level warn serve --config "$d/cb.toml" >> "$d/daemon.log" 2>&1 & local pid=$!; PIDS+=($pid)
  for _ in $(seq 1000); do
    CREDBROKER_ADMIN_SOCKET="$d/admin.sock" "$CB" status >/dev/null 2>&1 && break; sleep 0.005
  done
  if [ "$1" = watched ]; then
    # A block in force for someone else: the index is not empty, so every request looks.
    CREDBROKER_ADMIN_SOCKET="$d/admin.sock" "$CB" blocks add --client someone-else \
      --issuer "$ISSUER" --for 1h --reason bench > /dev/null
  fi
  local T=(--socket "$d/broker.sock" --token-file "$W/token" --daemon-pid "$pid")
  local c1 c64
  c1=$("$LOAD" --json cycle "${T[@]}" --concurrency 1 --duration "$DURATION" --warmup "$WARMUP")
  c64=$("$LOAD" --json cycle "${T[@]}" --concurrency 64 --connections 8 --duration "$DURATION" --warmup "$WARMUP")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$1" "$c1" "$c64" <<'PY'
import json, sys
name, c1, c64 = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
def g(d, *keys):
    for k in keys:
        if k in d: return d[k]
    return None
print(f"{name:8}  c=1 begin p50 {g(c1,'begin_p50_ms')} ms  cycle p50 {g(c1,'cycle_p50_ms')} ms  "
      f"| c=64 {g(c64,'cycles_per_s')} cycles/s  cycle p99 {g(c64,'cycle_p99_ms')} ms  "
      f"daemon CPU {g(c64,'daemon_cpu_us_per_cycle')} us/cycle  errors {g(c1,'errors')}+{g(c64,'errors')}")
PY
}

for r in $(seq "$ROUNDS"); do
  echo "--- round $r"
  run plain ""
  run watched "$WATCHED"
done
