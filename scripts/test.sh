#!/usr/bin/env bash
# The whole test suite, from a fresh Debian bookworm machine (as root): installs what
# is missing, checks formatting and lints, builds, builds the default guest, and runs
# every test (unit tests and end-to-end tests that boot real QEMU guests), then fuzzes
# the parsers of untrusted input for a short while (THAW_FUZZ_SECS per target).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-test.sh
export PATH="$HOME/.cargo/bin:$PATH"
# A fresh CI clone gains nothing from incremental compilation, which only takes disk.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"; fi
# The build and the tests' VMs need about 20 GB; say so up front rather than fail later
# with "No space left on device" in some test.
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
echo "== disk: $((free_kb / 1024 / 1024)) GiB free here, $(df -Pk "${TMPDIR:-/tmp}" | awk 'NR==2 {print int($4/1024/1024)}') GiB in ${TMPDIR:-/tmp}"
if [ "$free_kb" -lt $((20 * 1024 * 1024)) ]; then
  echo "warning: less than 20 GiB free; the build and the tests may run out of disk" >&2
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== build"
cargo build --workspace --all-targets
# The lints and the fuzz targets' build run beside the guests' builds, which mostly wait
# on downloads and dpkg: a fresh machine gains minutes. Their output is shown once done.
logs="$(mktemp -d)"
# A step that fails ends the script: the background builds end with it.
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$logs"' EXIT
cargo clippy --workspace --all-targets -- -D warnings >"$logs/clippy" 2>&1 &
clippy=$!
bash scripts/fuzz.sh --build-only >"$logs/fuzz-build" 2>&1 &
fuzz_build=$!
echo "== guests (default; debian and the firmware-booted image: debootstrap, a minute or two each the first time)"
./target/debug/thaw guest build
./target/debug/thaw guest build --profile debian
./target/debug/thaw guest build --profile debian-bios
echo "== cargo clippy"
status=0
wait "$clippy" || status=$?
grep -v '^ *\(Checking\|Compiling\|Blocking\)' "$logs/clippy" || true
[ "$status" -eq 0 ] || { echo "cargo clippy failed" >&2; exit "$status"; }
echo "== fuzz targets built"
wait "$fuzz_build" || { cat "$logs/fuzz-build" >&2; echo "the fuzz targets did not build" >&2; exit 1; }
echo "== tests"
# cargo-nextest (.config/nextest.toml): each test in its own process, two at a time
# across every binary and the slowest first; `cargo test` ran one binary at a time.
cargo nextest run --workspace --no-fail-fast --test-threads="${THAW_TEST_THREADS:-2}"
echo "== doc tests"
cargo test --workspace --doc
echo "== Python SDK (clients/python, against target/debug/thawd)"
THAW_THAWD="${THAW_THAWD:-$PWD/target/debug/thawd}" python3 -m pytest -q -p no:cacheprovider clients/python/tests
echo "== fuzz (${THAW_FUZZ_SECS:-20} s per target)"
THAW_FUZZ_SECS="${THAW_FUZZ_SECS:-20}" bash scripts/fuzz.sh
