#!/usr/bin/env bash
# The demo, from a fresh Debian bookworm machine (as root): installs what thaw needs
# (scripts/setup.sh: not the test tools), builds thaw, boots the default guest,
# snapshots it, restores three clones, runs a command in each, and prints the cold-boot
# vs restore timing table. Its VMs and snapshots live in a temporary $THAW_HOME that is
# removed at the end (set THAW_HOME to keep them); the built guest stays in
# ~/.cache/thaw, so that a second run starts at once.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# Only the binaries the demo runs: thaw, thaw-clock (thaw guest build copies it into
# the guest) and thaw-bench (thaw bench execs it); not thawd nor the test targets.
cargo build --release --quiet -p thaw-cli -p thaw-clock -p thaw-bench
thaw=./target/release/thaw
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

$thaw guest build
echo "== boot"
$thaw boot demo
$thaw exec demo -- /bin/sh -c 'echo "written before the snapshot" > /tmp/hello'
echo "== snapshot (the VM keeps running)"
$thaw snapshot demo base
echo "== restore 3 clones"
$thaw restore base --count 3
for vm in base-1 base-2 base-3; do
  printf '%s: %s, random %s\n' "$vm" "$($thaw exec "$vm" -- cat /tmp/hello)" \
    "$($thaw exec "$vm" -- /bin/sh -c 'head -c 8 /dev/urandom | od -An -tx1 | tr -d " "')"
done
$thaw ls
$thaw stop --all
echo "== benchmark"
$thaw bench --runs "${RUNS:-3}"
