#!/usr/bin/env bash
# The demo, from a fresh Debian bookworm machine (as root): installs what thaw needs
# (scripts/setup.sh: not the test tools), builds thaw, boots the default guest,
# snapshots it, restores three clones, runs a command in each, and prints how long the
# cold boot and the restores took. Its VMs and snapshots live in a temporary
# $THAW_HOME that is removed at the end (set THAW_HOME to keep them); the built guest
# stays in ~/.cache/thaw, so that a second run starts at once. BENCH=1 also builds
# thaw-bench and runs `thaw bench` (cold boots and every restore path, min/median/max).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
phase() { printf '== %s (%d s in)\n' "$*" $((SECONDS - started)); }

phase "setup (what thaw needs; scripts/setup.sh)"
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# Only what the demo runs: thaw and thaw-clock (thaw guest build copies it into the
# guest), in the `demo` profile (the dev profile without debug info: about a third of a
# release build's CPU time; thaw's own share of a restore is milliseconds either way).
phase "build (cargo build --profile demo -p thaw-cli -p thaw-clock)"
packages=(-p thaw-cli -p thaw-clock)
[ "${BENCH:-0}" = 1 ] && packages+=(-p thaw-bench)
cargo build --profile demo --quiet "${packages[@]}"
thaw="${CARGO_TARGET_DIR:-target}/demo/thaw"
if [ -z "${THAW_HOME:-}" ]; then
  THAW_HOME="$(mktemp -d /tmp/thaw-demo.XXXXXX)"
  remove_home=1
fi
export THAW_HOME
cleanup() {
  $thaw stop --all >/dev/null 2>&1 || true
  if [ "${remove_home:-0}" = 1 ]; then rm -rf "$THAW_HOME"; fi
}
trap cleanup EXIT

# A number from thaw's --json output: the first (or every) value of "key".
field() { sed -n "s/.*\"$1\": *\([0-9.]*\).*/\1/p"; }

phase "the default guest (thaw guest build: a kernel from Debian, busybox, the guest agent)"
$thaw guest build
phase "cold boot"
boot_ms=$($thaw boot demo --json | field boot_ms | head -1)
printf 'booted demo: its guest agent answered %.0f ms after QEMU started\n' "$boot_ms"
$thaw exec demo -- /bin/sh -c 'echo "written before the snapshot" > /tmp/hello'
phase "snapshot (the VM keeps running)"
$thaw snapshot demo base
phase "restore 3 clones at once"
ready=$($thaw restore base --count 3 --json | field ready_ms)
for vm in base-1 base-2 base-3; do
  printf '%s: %s, random %s\n' "$vm" "$($thaw exec "$vm" -- cat /tmp/hello)" \
    "$($thaw exec "$vm" -- /bin/sh -c 'head -c 8 /dev/urandom | od -An -tx1 | tr -d " "')"
done
$thaw ls
$thaw stop --all
phase "one clone at a time"
for i in 1 2 3; do
  ready="$ready $($thaw restore base --name "one-$i" --json | field ready_ms)"
  $thaw stop "one-$i" >/dev/null
done
# shellcheck disable=SC2086
printf '%s\n' $ready | awk -v boot="$boot_ms" '
  { ms[NR] = $1 }
  END {
    printf "\ncold boot → ready:             %8.0f ms\n", boot
    printf "3 clones at once → ready:      %8.0f %8.0f %8.0f ms\n", ms[1], ms[2], ms[3]
    printf "1 clone → ready:               %8.0f %8.0f %8.0f ms\n", ms[4], ms[5], ms[6]
    best = ms[4]; if (ms[5] < best) best = ms[5]; if (ms[6] < best) best = ms[6]
    printf "a restore is ready %.0fx sooner than a cold boot (best single clone)\n", boot / best
  }'
if [ "${BENCH:-0}" = 1 ]; then
  phase "benchmark (thaw bench)"
  $thaw bench --runs "${RUNS:-3}"
fi
phase "done"
