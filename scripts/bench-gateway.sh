#!/usr/bin/env bash
# The gateway's added latency (BENCHMARKS.md): tools/call against a minimal MCP upstream
# directly, then through `credbroker gateway`, at concurrency 1 and 32. Also run by bench.sh.
#
#   scripts/bench-gateway.sh          DURATION=5s scripts/bench-gateway.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
scripts/deps.sh > /dev/null
cargo build --release --quiet --features testd --bin credbroker-testd --bin credbroker-bench
CB=${CB:-"$ROOT/target/release/credbroker-testd"}
LOAD="$ROOT/target/release/credbroker-bench"
W=$(mktemp -d /var/tmp/credbroker-bench-gw.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
echo "calls recorded: $("$CB" audit query --journal "$W/journal.db" --event mcp_call --outcome success)"
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open"; exit 1; }

. scripts/bench-auth.sh   # $ISSUER, $RES and $W/token

# The daemon every call is recorded by (as in production: the gateway fails closed without it).
(umask 077 && "$CB" keygen > "$W/journal.key")
cat > "$W/cb.toml" <<TOML
[server]
broker_socket = "$W/broker.sock"
admin_socket = "$W/admin.sock"
gateway_uids = [$(id -u)]
[journal]
path = "$W/journal.db"
key_file = "$W/journal.key"
[[issuer]]
url = "$ISSUER"
TOML
"$CB" --log-level warn serve --config "$W/cb.toml" > "$W/daemon.log" 2>&1 & PIDS+=($!)
for _ in $(seq 1000); do
  CREDBROKER_ADMIN_SOCKET="$W/admin.sock" "$CB" status >/dev/null 2>&1 && break; sleep 0.005
done
echo "calls recorded: $("$CB" audit query --journal "$W/journal.db" --event mcp_call --outcome success)"

UP=$(port); GW=$(port)
"$LOAD" mcp-upstream --listen "127.0.0.1:$UP" 2> "$W/upstream.log" & PIDS+=($!)
cat > "$W/gateway.toml" <<TOML
[daemon]
socket = "$W/broker.sock"
[[issuer]]
url = "$ISSUER"
[[gateway]]
name = "bench"
listen = "127.0.0.1:$GW"
resource = "$RES"
upstream = "http://127.0.0.1:$UP/mcp"
[gateway.tools]
query = ["mcp.tool:bench"]
TOML
"$CB" --log-level warn gateway --config "$W/gateway.toml" > "$W/gateway.log" 2>&1 & PIDS+=($!)
wait_port "$UP"; wait_port "$GW"

# Recording alone: RecordCall straight to the daemon, as the gateway does before each call.
for c in 1 32; do
  echo "c=$c record: $("$LOAD" --json record --socket "$W/broker.sock" --concurrency "$c" --duration "$DURATION" --warmup "$WARMUP")"
done

echo '{' > "$W/results.json"
for c in 1 32; do
  D=$("$LOAD" --json mcp --url "http://127.0.0.1:$UP/mcp" --concurrency "$c" --duration "$DURATION" --warmup "$WARMUP")
  G=$("$LOAD" --json mcp --url "http://127.0.0.1:$GW/bench" --token-file "$W/token" --concurrency "$c" --duration "$DURATION" --warmup "$WARMUP")
  echo "c=$c direct:  $D"
  echo "c=$c gateway: $G"
  python3 - "$c" "$D" "$G" <<'PY'
import json, sys
c, d, g = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
assert d["errors"] == 0 and g["errors"] == 0, (d, g)
for p in ("p50", "p99"):
    print(f"c={c} added {p}: {g[f'call_{p}_ms'] - d[f'call_{p}_ms']:.3f} ms "
          f"(direct {d[f'call_{p}_ms']:.3f}, gateway {g[f'call_{p}_ms']:.3f})")
PY
done
echo "calls recorded: $("$CB" audit query --journal "$W/journal.db" --event mcp_call --outcome success)"
