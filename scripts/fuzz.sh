#!/usr/bin/env bash
# Fuzzes the parsers of untrusted input with cargo-fuzz (libFuzzer), each target for a
# bounded time, and prints the executions per target. Targets (fuzz/fuzz_targets/):
#   manifest     snapshot manifest.json (thaw::snapshot::parse_manifest_bytes)
#   qmp          QMP greeting and messages (thaw_qmp::parse_greeting, parse_message)
#   mapped       mapped-ram headers (thaw::mapped::blocks_with, blocks_in)
#   daemon_body  the daemon's request bodies (thaw_daemon::check_request_body)
#
#     bash scripts/fuzz.sh                 # 60 s per target
#     THAW_FUZZ_SECS=600 bash scripts/fuzz.sh manifest
#     bash scripts/fuzz.sh --build-only    # build the targets, run nothing
#
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the script. New
# inputs that found new paths accumulate in fuzz/corpus/<target>/ (not committed);
# fuzz/seeds/<target>/ are the committed starting points.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# cargo-fuzz passes nightly-only flags (-Z, sanitizer options); this stable toolchain
# accepts them with RUSTC_BOOTSTRAP. Nothing else is built this way.
export RUSTC_BOOTSTRAP=1
SECS="${THAW_FUZZ_SECS:-60}"
BUILD_ONLY=false
if [ "${1:-}" = --build-only ]; then
  BUILD_ONLY=true
  shift
fi
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(manifest qmp mapped daemon_body)

if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

cd fuzz
# No sanitizer: the code under test is safe Rust, and what is looked for is panics
# (debug assertions on: overflow checks too), hangs and unbounded allocation.
FLAGS=(--sanitizer none --debug-assertions)
if $BUILD_ONLY; then
  exec cargo fuzz build "${FLAGS[@]}"
fi
cargo fuzz build "${FLAGS[@]}" 2>&1 | grep -v "^ *Compiling" >&2 || true
status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="artifacts/$t/last-run.log"
  if cargo fuzz run "${FLAGS[@]}" "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 >"$log" 2>&1; then
    result="no crash"
  else
    result="FAILED (see fuzz/$log and fuzz/artifacts/$t/)"
    status=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  echo "fuzz $t: ${execs:-?} executions in ${SECS} s, $result"
done
exit $status
