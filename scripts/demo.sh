#!/usr/bin/env bash
# A local demo: a real OAuth authorization server (oidc-provider), the credbroker daemon, and
# one MCP task begun and ended through the daemon's unix socket, every step printed.
#
# The credential comes from the test provider (a stand-in that keeps its "credentials" as files),
# so the demo needs no cloud account and no Vault.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

scripts/deps.sh
echo "==> building credbroker (first build takes a few minutes)"
cargo build --quiet --features testd --bin credbroker-testd
CB="$ROOT/target/debug/credbroker-testd"

DEMO=$(mktemp -d /tmp/credbroker-demo.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DEMO"
}
trap cleanup EXIT

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ISSUER="http://127.0.0.1:$PORT"
RESOURCE="https://mcp.example.test/postgres"

step "starting the authorization server at $ISSUER"
cat > "$DEMO/as.json" <<JSON
{
  "issuer": "$ISSUER",
  "keys": $(cat tests/fixtures/keys/keys.json),
  "clients": [ { "client_id": "demo-agent", "client_secret": "demo-secret", "scope": "mcp.tool:postgres.read" } ],
  "resources": { "$RESOURCE": { "alg": "ES256", "ttl": 300, "scope": "mcp.tool:postgres.read" } }
}
JSON
node tests/support/oidc/server.mjs "$DEMO/as.json" > "$DEMO/as.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q READY "$DEMO/as.log" && break; sleep 0.1; done

step "starting credbroker"
(umask 077 && "$CB" keygen > "$DEMO/journal.key")
cat > "$DEMO/credbroker.toml" <<TOML
[server]
broker_socket = "$DEMO/broker.sock"
admin_socket = "$DEMO/admin.sock"

[journal]
path = "$DEMO/journal.db"
key_file = "$DEMO/journal.key"

[[issuer]]
url = "$ISSUER"

[attribution]
require_owner = true
clients = { "demo-agent" = "alice@example.com" }

[[provider]]
name = "demo-db"
type = "test"
state_dir = "$DEMO/provider"

[[grant]]
name = "orders-db-read"
provider = "demo-db"
scopes = ["mcp.tool:postgres.read"]
max_ttl = "10m"
params = { label = "orders-{owner}" }

[[workload]]
name = "postgres-mcp"
uid = $(id -u)
audience = "$RESOURCE"
grants = ["orders-db-read"]
TOML
cat "$DEMO/credbroker.toml"
"$CB" check-config --config "$DEMO/credbroker.toml"
"$CB" serve --config "$DEMO/credbroker.toml" > "$DEMO/daemon.log" 2>&1 &
PIDS+=($!)
export CREDBROKER_SOCKET="$DEMO/broker.sock" CREDBROKER_ADMIN_SOCKET="$DEMO/admin.sock"
for _ in $(seq 100); do "$CB" status >/dev/null 2>&1 && break; sleep 0.1; done
"$CB" status

step "an AI agent gets an access token (client credentials, resource indicator)"
TOKEN=$(curl -sf -u demo-agent:demo-secret "$ISSUER/token" \
  -d grant_type=client_credentials \
  --data-urlencode "resource=$RESOURCE" \
  --data-urlencode "scope=mcp.tool:postgres.read" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
echo "token: ${TOKEN:0:24}… (${#TOKEN} bytes)"

step "credbroker token check (what the daemon will see)"
echo "$TOKEN" | "$CB" token check --config "$DEMO/credbroker.toml"

step "the MCP server begins a task: tool 'query', grant 'orders-db-read'"
echo "$TOKEN" | "$CB" task begin --tool query --grant orders-db-read --ttl 5m --format json | tee "$DEMO/begin.json"
TASK=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["task"]["id"])' "$DEMO/begin.json")

step "operators see it"
"$CB" tasks list
"$CB" tasks show "$TASK"

step "the task ends: its credential is revoked"
"$CB" task end --task "$TASK" | python3 -c 'import json,sys; t=json.load(sys.stdin); print("task", t["id"], t["state"], t["end_reason"]); [print("lease", l["id"], l["state"]) for l in t["leases"]]'
echo "provider now holds: issued=$(ls "$DEMO/provider/issued" | wc -l) revoked=$(ls "$DEMO/provider/revoked" | wc -l)"

step "the audit trail: peer → client → owner → token fingerprint → task → lease"
"$CB" audit export --journal "$DEMO/journal.db" > "$DEMO/audit.jsonl"
python3 - "$DEMO/audit.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    peer = r.get("peer") or {}
    short = lambda k, n: str(r.get(k) or "-")[-n:]
    print(f"{r['seq']:>3} {r['event']:<16} peer=uid:{peer.get('uid', '-')}/pid:{peer.get('pid', '-')}"
          f" client={r.get('client_id', '-')} owner={r.get('owner', '-')}"
          f" token={str(r.get('token_fingerprint') or '-')[:12]} task=…{short('task_id', 12)}"
          f" lease=…{short('lease_id', 12)} {r.get('reason', '')}")
PY

step "lineage: owner → agent → token → task → leases"
"$CB" lineage --journal "$DEMO/journal.db"

step "the audit log is intact (hash chain)"
"$CB" audit verify --journal "$DEMO/journal.db"
step "done"
