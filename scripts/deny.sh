#!/usr/bin/env bash
# The dependency tree against deny.toml: licences, bans (OpenSSL, wildcards; duplicates listed),
# sources, and RustSec advisories. cargo-deny is installed into .deps/cargo if it is missing.
#
#   scripts/deny.sh                      # everything; advisories need the RustSec database
#   ADVISORY_DB=/path/to/advisory-db scripts/deny.sh   # a local git clone of RustSec/advisory-db
#
# The advisory database is a git repository on github.com. Where it cannot be fetched (a host
# that reaches only the package registries) the advisories check says so and is skipped; every
# other check still decides the exit code.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CARGO_DENY_VERSION=0.20.2
export PATH="$ROOT/.deps/cargo/bin:$PATH"
if ! cargo-deny --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then
  echo "==> cargo install cargo-deny $CARGO_DENY_VERSION (.deps/cargo)"
  cargo install --locked cargo-deny --version "$CARGO_DENY_VERSION" --root .deps/cargo
fi

echo "==> cargo deny check bans licenses sources"
cargo-deny check --hide-inclusion-graph bans licenses sources

echo "==> cargo deny check advisories"
DBS="$ROOT/.deps/advisory-dbs"
if [ -n "${ADVISORY_DB:-}" ]; then
  # cargo-deny keeps its database as DBS/advisory-db-<hash of the URL>, a git clone.
  rm -rf "$DBS" && mkdir -p "$DBS"
  git clone -q "$ADVISORY_DB" "$DBS/advisory-db-3157b0e258782691"
  printf '[advisories]\ndb-path = "%s"\n' "$DBS" > "$DBS/deny.toml"
  cargo-deny --offline --config "$DBS/deny.toml" check advisories
elif git ls-remote https://github.com/RustSec/advisory-db HEAD >/dev/null 2>&1; then
  cargo-deny check advisories
else
  echo "advisories: NOT CHECKED: github.com (the RustSec advisory database) is unreachable from here;"
  echo "            run with network access, or ADVISORY_DB=<a clone of RustSec/advisory-db>."
fi
