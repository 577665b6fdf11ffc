#!/usr/bin/env bash
# Fuzzes credbroker's parsers with cargo-fuzz (libFuzzer). See fuzz/README.md.
#
#   scripts/fuzz.sh check                 stable `cargo check` of the fuzz crate (what CI runs)
#   scripts/fuzz.sh build                 build every target (nightly, cargo-fuzz)
#   scripts/fuzz.sh list                  the targets
#   scripts/fuzz.sh [TARGET|all] [SECONDS]
#                                         fuzz TARGET (default all, one after another) for
#                                         SECONDS each (default 60), corpus fuzz/corpus/TARGET
#   scripts/fuzz.sh cmin TARGET           minimise fuzz/corpus/TARGET in place
#   scripts/fuzz.sh regressions [TARGET]  replay fuzz/regressions/TARGET/* (each must now pass)
#
# cargo-fuzz is installed into .deps/cargo if it is not on PATH (nothing outside the project).
# Runs are niced. Extra libFuzzer flags: FUZZ_ARGS="-jobs=2 -workers=2" scripts/fuzz.sh token 600
# The full libFuzzer output goes to $FUZZ_LOG (default: a new file under $TMPDIR).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TARGETS=(token config template journal h2)
CARGO_FUZZ_VERSION=0.13.2

# Per target: libFuzzer's -max_len (bytes). -timeout is per input (s), -rss_limit_mb per process.
max_len() {
  case "$1" in
    token) echo 8192 ;;
    config) echo 16384 ;;
    template) echo 4096 ;;
    journal) echo 1024 ;;
    h2) echo 16384 ;;
    *) echo 4096 ;;
  esac
}
# Per target: extra libFuzzer flags. journal: its writer thread exits after the input is done,
# so libFuzzer's per-input malloc/free balance is never even and it would run a full leak scan
# after every input (4x slower); leaks are not what that target looks for.
extra_flags() {
  case "$1" in
    journal) echo "-detect_leaks=0" ;;
  esac
}
TIMEOUT=${FUZZ_TIMEOUT:-10}
RSS_LIMIT_MB=${FUZZ_RSS_LIMIT_MB:-4096}

ensure_cargo_fuzz() {
  export PATH="$ROOT/.deps/cargo/bin:$PATH"
  if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "==> cargo install cargo-fuzz $CARGO_FUZZ_VERSION (.deps/cargo)"
    nice -n 19 cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root .deps/cargo
  fi
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "error: cargo-fuzz needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 2
  fi
}

is_target() {
  local t
  for t in "${TARGETS[@]}"; do [ "$t" = "$1" ] && return 0; done
  return 1
}

corpus_size() {
  local dir=$1
  if [ -d "$dir" ]; then
    echo "$(find "$dir" -type f | wc -l) files, $(find "$dir" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}') bytes"
  else
    echo "0 files"
  fi
}

run_target() {
  local target=$1 seconds=$2
  local corpus=fuzz/corpus/$target log
  mkdir -p "$corpus" fuzz/artifacts/"$target"
  log=${FUZZ_LOG:-$(mktemp -t "fuzz-$target.XXXXXX.log")}
  echo "==> fuzz $target for ${seconds}s (corpus $corpus: $(corpus_size "$corpus"); log $log)"
  local status=0
  # shellcheck disable=SC2086
  nice -n 19 cargo +nightly fuzz run --fuzz-dir fuzz "$target" "$corpus" -- \
    -max_total_time="$seconds" -max_len="$(max_len "$target")" -timeout="$TIMEOUT" \
    -rss_limit_mb="$RSS_LIMIT_MB" -print_final_stats=1 $(extra_flags "$target") ${FUZZ_ARGS:-} 2>&1 | tee "$log" >/dev/null || status=$?
  # The last status line (#N DONE/pulse cov: ft: corp: exec/s:) and the final stats.
  grep -E '^#[0-9]+' "$log" | tail -n 1 || true
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log" || true
  echo "    corpus $corpus: $(corpus_size "$corpus")"
  if [ "$status" -ne 0 ]; then
    echo "    FAILED (exit $status): see $log and fuzz/artifacts/$target/" >&2
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -n 10 >&2 || true
  fi
  return "$status"
}

cmd=${1:-all}
case "$cmd" in
  check)
    # Stable toolchain: the targets compile (libfuzzer-sys builds libFuzzer's C++ with cc).
    # Not --locked: fuzz/Cargo.lock follows the main Cargo.lock, and a dependency added there
    # must not fail this check until someone refreshes it (cargo adds it here).
    cargo check --manifest-path fuzz/Cargo.toml --bins
    ;;
  list)
    printf '%s\n' "${TARGETS[@]}"
    ;;
  build)
    ensure_cargo_fuzz
    nice -n 19 cargo +nightly fuzz build --fuzz-dir fuzz
    ;;
  cmin)
    target=${2:?usage: scripts/fuzz.sh cmin TARGET}
    is_target "$target" || { echo "unknown target $target" >&2; exit 2; }
    ensure_cargo_fuzz
    echo "==> cmin $target: before $(corpus_size "fuzz/corpus/$target")"
    nice -n 19 cargo +nightly fuzz cmin --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- \
      -max_len="$(max_len "$target")" -timeout="$TIMEOUT" -rss_limit_mb="$RSS_LIMIT_MB" $(extra_flags "$target")
    echo "    after $(corpus_size "fuzz/corpus/$target")"
    ;;
  regressions)
    ensure_cargo_fuzz
    for target in "${2:-${TARGETS[@]}}"; do
      dir=fuzz/regressions/$target
      [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ] || continue
      echo "==> replay $dir"
      # shellcheck disable=SC2046
      nice -n 19 cargo +nightly fuzz run --fuzz-dir fuzz "$target" $(find "$dir" -type f | sort) -- \
        -timeout="$TIMEOUT" -rss_limit_mb="$RSS_LIMIT_MB" $(extra_flags "$target")
    done
    ;;
  all)
    seconds=${2:-60}
    ensure_cargo_fuzz
    failed=()
    for target in "${TARGETS[@]}"; do
      run_target "$target" "$seconds" || failed+=("$target")
    done
    if [ "${#failed[@]}" -ne 0 ]; then
      echo "failed: ${failed[*]}" >&2
      exit 1
    fi
    ;;
  *)
    is_target "$cmd" || { echo "unknown target or command $cmd (targets: ${TARGETS[*]})" >&2; exit 2; }
    ensure_cargo_fuzz
    run_target "$cmd" "${2:-60}"
    ;;
esac
