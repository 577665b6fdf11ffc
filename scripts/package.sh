#!/usr/bin/env bash
# Builds the Debian package: target/debian/credbroker_VERSION_ARCH.deb.
#   scripts/package.sh                  release build, then the .deb
#   scripts/package.sh --profile dev    the debug binary (the tests package it this way: a
#                                       release build is minutes on 2 cores), faster compression
#   --no-build                          package the binary already built for that profile
#   --output DIR                        where the .deb goes
#   --tools-only                        install cargo-deb and stop (scripts/deps.sh)
# cargo-deb is installed into .deps/cargo the first time (pinned version).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
profile=release build=1 output=target/debian tools_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --output) output="$2"; shift 2 ;;
    --tools-only) tools_only=1; shift ;;
    *) echo "usage: scripts/package.sh [--profile release|dev] [--no-build] [--output DIR]" >&2; exit 2 ;;
  esac
done

cargo_deb=.deps/cargo/bin/cargo-deb
if ! "$cargo_deb" --version 2>/dev/null | grep -q "^cargo-deb $CARGO_DEB_VERSION\$"; then
  echo "==> cargo install cargo-deb $CARGO_DEB_VERSION (.deps/cargo)"
  cargo install --locked cargo-deb --version "$CARGO_DEB_VERSION" --root .deps/cargo
fi

[ "$tools_only" = 1 ] && exit 0

target="${CARGO_TARGET_DIR:-target}"
case "$profile" in
  dev) bin="$target/debug/credbroker"; fast=(--fast) ;;
  *) bin="$target/$profile/credbroker"; fast=() ;;
esac
if [ "$build" = 1 ]; then
  cargo build --locked --profile "$profile" --bin credbroker
fi
[ -x "$bin" ] || { echo "error: $bin is not built (drop --no-build)" >&2; exit 2; }

# The man pages and completions come from the binary's own clap definitions.
assets="$target/deb-assets"
rm -rf "$assets" && mkdir -p "$assets/man"
"$bin" man --dir "$assets/man"
gzip -9nf "$assets"/man/*.1
"$bin" completions bash >"$assets/credbroker.bash"
"$bin" completions zsh >"$assets/_credbroker"
"$bin" completions fish >"$assets/credbroker.fish"

mkdir -p "$output"
"$cargo_deb" --no-build --profile "$profile" ${fast[@]+"${fast[@]}"} --output "$output" -p credbroker
