#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests against real components the tests start
# themselves. Usage: scripts/test.sh [extra nextest/cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
# `testd` builds credbroker-testd (the daemon with the test-only provider) for the integration tests.
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --all-features --no-tests=pass "$@"
else
  echo "(cargo-nextest not found; using cargo test)"
  exec cargo test --workspace --all-features "$@"
fi
