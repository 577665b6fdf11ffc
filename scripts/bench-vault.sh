# Sourced by scripts/bench.sh once its OpenBao (raft) is up: the real-provider cycle. OpenBao's
# database engine makes PostgreSQL roles; measured side by side, one cycle at a time:
#   - OpenBao alone: read database/creds/bench, revoke its lease (a least-privilege token);
#   - credbroker (the Vault provider) in front of the same OpenBao: BeginTask + EndTask of a
#     grant reading the same path, with a 5-minute and with a 1-hour access token, each with
#     scopes made per BeginTask (the default), made ahead of need (scope_pool = 16), and batch
#     scopes (scope_type = "batch").
# Needs from bench.sh: $W, PIDS, $CB, $LOAD, $BAO, $A (OpenBao's API), $W/bao/token (root),
# $ISSUER, record(), say(), port(), start_daemon's pattern.

PGBIN=$(pg_config --bindir)
pgrun() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$PGBIN/$1" "${@:2}"; else "$PGBIN/$1" "${@:2}"; fi; }
PGDIR="$W/pg"; PGPORT=$(port)
chmod 711 "$W"
mkdir -m 755 "$PGDIR" && mkdir -m 700 "$PGDIR/data"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$PGDIR"
pgrun initdb -D "$PGDIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --no-sync >/dev/null
# Durable, as a production database is: fsync stays on.
pgrun pg_ctl -D "$PGDIR/data" -l "$PGDIR/log" -w -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $PGDIR" start >/dev/null
pg_stop() { [ -f "$PGDIR/data/postmaster.pid" ] && pgrun pg_ctl -D "$PGDIR/data" -m immediate -w stop >/dev/null || true; }
psql_su() { pgrun psql -h "$PGDIR" -p "$PGPORT" -U postgres -v ON_ERROR_STOP=1 -X -q "$@"; }
psql_su -d postgres -c "CREATE DATABASE orders"
(umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(18), end="")' > "$W/pg-admin-pw")
printf "CREATE ROLE bao_admin WITH LOGIN PASSWORD '%s' CREATEROLE" "$(cat "$W/pg-admin-pw")" | psql_su -d postgres -f -
psql_su -d orders -c "CREATE TABLE orders(id int); GRANT SELECT ON orders TO bao_admin WITH GRANT OPTION;"

ROOT_TOKEN=$(cat "$W/bao/token")
api() { # api METHOD PATH [JSON]
  curl -sf -X "$1" -H "X-Vault-Token: $ROOT_TOKEN" "$A/$2" ${3:+-d "$3"}
}
api POST sys/mounts/database '{"type":"database"}' > /dev/null
api POST database/config/orders-pg "$(python3 -c 'import json,sys; print(json.dumps({
  "plugin_name": "postgresql-database-plugin", "allowed_roles": "bench",
  "connection_url": "postgresql://{{username}}:{{password}}@127.0.0.1:'"$PGPORT"'/orders?sslmode=disable",
  "username": "bao_admin", "password": open(sys.argv[1]).read(), "verify_connection": True}))' "$W/pg-admin-pw")" > /dev/null
api POST database/roles/bench "$(python3 -c 'import json,sys; print(json.dumps({
  "db_name": "orders-pg", "default_ttl": "1h", "max_ttl": "24h",
  "creation_statements": [open(sys.argv[1]).read()], "revocation_statements": [open(sys.argv[2]).read()],
  "renew_statements": ["ALTER ROLE \"{{name}}\" VALID UNTIL '"'"'{{expiration}}'"'"';"]}))' \
  config/openbao/create-role.sql config/openbao/revoke-role.sql)" > /dev/null
policy() { api PUT "sys/policies/acl/$1" "$(python3 -c 'import json,sys; print(json.dumps({"policy": sys.stdin.read()}))')" > /dev/null; }
sed 's#database/creds/orders-read#database/creds/bench#' config/openbao/credbroker.hcl | policy credbroker
printf 'path "database/creds/bench" { capabilities = ["read"] }\n' | policy bench-read
printf 'path "database/creds/bench" { capabilities = ["read"] }\npath "sys/leases/revoke" { capabilities = ["update"] }\n' | policy bench-direct
token_for() { api POST auth/token/create "{\"policies\":[$1],\"ttl\":\"4h\",\"renewable\":true}" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["auth"]["client_token"])'; }
(umask 077 && token_for '"bench-direct"' > "$W/bao/direct-token" && token_for '"credbroker","bench-read"' > "$W/bao/cb-token")

# OpenBao alone, one at a time. Measured before every run through credbroker and once after the
# last: OpenBao's own cycle drifts between runs (its raft log, the expiration manager's queue,
# the machine), so each run's added cost is taken against the mean of its two neighbours.
direct() { # direct NAME
  say "OpenBao alone: read database/creds/bench + revoke its lease, one at a time"
  R=$("$LOAD" --json openbao-creds --addr "${A%/v1}" --token-file "$W/bao/direct-token" --path database/creds/bench \
    --duration "$DURATION" --warmup "$WARMUP"); echo "$R"; record "$1" "$R"
}

# The pool runs last: their unused tokens expire for minutes after, and OpenBao's revoking them
# would load the runs that follow.
for RUN in 300 3600 300_batch 3600_batch 300_pool 3600_pool; do
  TTL=${RUN%_*}; POOL=0; SCOPE=service
  case "$RUN" in *_pool) POOL=16 ;; *_batch) SCOPE=batch ;; esac
  direct "vault_direct_before_$RUN"
  RESV="https://mcp.example.test/bench-vault-$TTL"
  curl -sf -u bench-agent:bench "$ISSUER/token" -d grant_type=client_credentials \
    --data-urlencode "resource=$RESV" --data-urlencode "scope=mcp.tool:bench" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])' > "$W/token-$TTL"
  cat > "$W/cb-vault.toml" <<TOML
[server]
broker_socket = "$W/broker-vault.sock"
admin_socket = "$W/admin-vault.sock"
[journal]
path = "$W/journal-vault-$RUN.db"
key_file = "$W/journal.key"
[[issuer]]
url = "$ISSUER"
[attribution]
clients = { "bench-agent" = "bench-owner@example.com" }
[[provider]]
name = "openbao"
type = "vault"
address = "${A%/v1}"
token_file = "$W/bao/cb-token"
scope_pool = $POOL
scope_type = "$SCOPE"
[[grant]]
name = "db"
provider = "openbao"
scopes = ["mcp.tool:bench"]
max_ttl = "2h"
params = { kind = "dynamic", path = "database/creds/bench", public = ["username"] }
[[workload]]
name = "bench"
uid = $(id -u)
audience = "$RESV"
grants = ["db"]
TOML
  "$CB" --log-level warn serve --config "$W/cb-vault.toml" >> "$W/daemon-vault.log" 2>&1 & VPID=$!; PIDS+=($VPID)
  for _ in $(seq 1000); do
    CREDBROKER_ADMIN_SOCKET="$W/admin-vault.sock" "$CB" status >/dev/null 2>&1 && break; sleep 0.005
  done
  say "credbroker + OpenBao: BeginTask + EndTask of database/creds/bench, one at a time, a ${TTL}s token, scope_pool = $POOL, scope_type = $SCOPE"
  # No TTL asked: the task lasts as long as the token (and max_ttl) allow, as an MCP server's
  # task for a tool call would.
  R=$("$LOAD" --json cycle --socket "$W/broker-vault.sock" --token-file "$W/token-$TTL" --grant db \
    --daemon-pid "$VPID" --concurrency 1 --ttl 0 --duration "$DURATION" --warmup "$WARMUP"); echo "$R"
  record "vault_cb_$RUN" "$R"
  kill "$VPID"; wait "$VPID" 2>/dev/null || true
done
direct vault_direct_after
pg_stop
