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
