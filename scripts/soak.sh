#!/usr/bin/env bash
# Soak (part of the benchmarks): CYCLES (default 1000) restore -> exec -> stop cycles
# through the daemon, then CYCLES warm-pool take + refill cycles, with the release
# binaries. Prints, before and after each: QEMU processes, the daemon's open fds and
# RSS, and the files under $THAW_HOME; fails if any of them grew (RSS: by more than
# 16 MiB). The 50-cycle version runs in CI (crates/thaw-cli/tests/soak.rs).
#
#     bash scripts/soak.sh [CYCLES]     (THAW_SOAK_ONLY=restore|pool: one phase)
set -euo pipefail
cd "$(dirname "$0")/.."
CYCLES="${1:-1000}"
export PATH="$HOME/.cargo/bin:$PATH"

cargo build --release -q -p thaw-cli -p thaw-daemon
BIN="$PWD/target/release"
THAW_HOME="$(mktemp -d /tmp/thaw-soak-XXXXXX)"
export THAW_HOME
unset THAW_NO_DAEMON THAW_LOG
thaw() { "$BIN/thaw" "$@"; }

SERVE=
cleanup() {
  thaw stop --all >/dev/null 2>&1 || true
  [ -n "$SERVE" ] && kill "$SERVE" 2>/dev/null && wait "$SERVE" 2>/dev/null || true
  local left
  left=$(pgrep -f "qemu-system.*$THAW_HOME" || true)
  [ -z "$left" ] || echo "soak: QEMU processes left running: $left" >&2
  rm -rf "$THAW_HOME"
}
trap cleanup EXIT

thaw guest build >/dev/null
# The binary itself, not the function: $! must be the daemon, not a subshell.
"$BIN/thaw" serve 2>"$THAW_HOME/../$(basename "$THAW_HOME").log" &
SERVE=$!
until thaw pools >/dev/null 2>&1; do sleep 0.1; done

thaw boot vm --memory 128 >/dev/null
thaw exec vm -- /bin/sh -c 'echo marker > /tmp/m'
thaw snapshot vm base >/dev/null
thaw stop vm >/dev/null

# QEMU processes, daemon fds, daemon RSS (KiB), files under $THAW_HOME.
measure() {
  local qemu fds rss files
  qemu=$(pgrep -fc "qemu-system.*$THAW_HOME" || true)
  fds=$(ls "/proc/$SERVE/fd" | wc -l)
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$SERVE/status")
  files=$(find "$THAW_HOME" -mindepth 1 | wc -l)
  echo "$qemu $fds $rss $files"
}

pool_ready() {
  until thaw pools --json | python3 -c 'import json,sys; p=json.load(sys.stdin)[0]; sys.exit(0 if p["ready"]==1 and p["filling"]==0 else 1)'; do
    sleep 0.02
  done
}

restore_cycle() {
  thaw restore base --name s >/dev/null
  [ "$(thaw exec s -- cat /tmp/m)" = marker ] || { echo "soak: the clone lost its state" >&2; exit 1; }
  thaw stop s >/dev/null
}

pool_cycle() {
  pool_ready
  local out
  out=$(thaw restore base --name p --json)
  grep -Eq '"source": *"pool"' <<<"$out" || { echo "soak: not taken from the pool: $out" >&2; exit 1; }
  [ "$(thaw exec p -- cat /tmp/m)" = marker ] || { echo "soak: the clone lost its state" >&2; exit 1; }
  thaw stop p >/dev/null
}

compare() { # what, cycles, seconds, before, after
  read -r q0 f0 r0 n0 <<<"$4"
  read -r q1 f1 r1 n1 <<<"$5"
  echo "soak $1: $2 cycles in $3 s; QEMU processes $q0 -> $q1, daemon fds $f0 -> $f1, daemon RSS $r0 -> $r1 KiB, files under \$THAW_HOME $n0 -> $n1"
  if [ "$q1" -gt "$q0" ] || [ "$f1" -gt "$f0" ] || [ "$n1" -gt "$n0" ] || [ "$r1" -gt $((r0 + 16384)) ]; then
    echo "soak $1: something grew" >&2
    exit 1
  fi
}

run() { # what, cycle function
  local i before after t0
  for i in 1 2 3; do "$2"; done # warm up
  [ "$2" = pool_cycle ] && pool_ready
  before=$(measure)
  t0=$SECONDS
  for ((i = 1; i <= CYCLES; i++)); do
    "$2"
    if ((i % 100 == 0)); then echo "soak $1: $i cycles, now $(measure) (qemu fds rss files)" >&2; fi
  done
  [ "$2" = pool_cycle ] && pool_ready
  after=$(measure)
  compare "$1" "$CYCLES" $((SECONDS - t0)) "$before" "$after"
}

ONLY="${THAW_SOAK_ONLY:-}" # "restore" or "pool": one of the two phases
[ "$ONLY" = pool ] || run "restore -> exec -> stop" restore_cycle
if [ "$ONLY" != restore ]; then
  thaw pool base --size 1 >/dev/null
  run "pool take + refill" pool_cycle
fi
