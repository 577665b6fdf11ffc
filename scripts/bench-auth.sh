# Sourced by the benchmark scripts: starts the test authorization server on loopback and writes
# a real access token for resource $RES (scope mcp.tool:bench) to $W/token. Needs $W and PIDS.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ASP=$(port); ISSUER="http://127.0.0.1:$ASP"; RES="https://mcp.example.test/bench"
cat > "$W/as.json" <<JSON
{ "issuer": "$ISSUER", "keys": $(cat tests/fixtures/keys/keys.json),
  "clients": [ { "client_id": "bench-agent", "client_secret": "bench", "scope": "mcp.tool:bench" } ],
  "resources": { "$RES": { "alg": "ES256", "ttl": 7200, "scope": "mcp.tool:bench" },
    "https://mcp.example.test/bench-vault-300": { "alg": "ES256", "ttl": 300, "scope": "mcp.tool:bench" },
    "https://mcp.example.test/bench-vault-3600": { "alg": "ES256", "ttl": 3600, "scope": "mcp.tool:bench" } } }
JSON
node tests/support/oidc/server.mjs "$W/as.json" > "$W/as.log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do grep -q READY "$W/as.log" && break; sleep 0.1; done
curl -sf -u bench-agent:bench "$ISSUER/token" -d grant_type=client_credentials \
  --data-urlencode "resource=$RES" --data-urlencode "scope=mcp.tool:bench" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])' > "$W/token"
