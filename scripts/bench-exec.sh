#!/usr/bin/env bash
# Figures for streaming exec, thaw cp and the SDK's example suite (reported, never
# asserted by a test):
#   - exec first-byte latency: `thaw exec VM -- echo hi`, from spawning thaw to the
#     first byte on its stdout, median of 20 (thaw's start and agent connection included);
#   - thaw cp throughput, 100 MiB of random bytes into the guest and back (BLAKE3-equal);
#   - clients/python/examples (20 tests, each with a fresh clone from the thaw_vm
#     fixture): wall time without a warm pool, then with one of POOL clones.
# Everything runs in a private THAW_HOME that is removed at the end, with every VM and
# the daemon it started.
#
#   scripts/bench-exec.sh            # builds nothing: uses target/debug/{thaw,thawd}
#   POOL=4 scripts/bench-exec.sh
set -euo pipefail
cd "$(dirname "$0")/.."
THAW=${THAW:-$PWD/target/debug/thaw}
THAWD=${THAWD:-$PWD/target/debug/thawd}
POOL=${POOL:-4}
work=$(mktemp -d /tmp/thaw-bench-exec.XXXXXX)
export THAW_HOME=$work/home THAW_NO_DAEMON=1
mkdir -p "$THAW_HOME"
daemon=
cleanup() {
    if [ -n "$daemon" ]; then
        THAW_HOST=unix://$THAW_HOME/thawd.sock "$THAW" stop --all >/dev/null 2>&1 || true
        kill "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
    fi
    THAW_NO_DAEMON=1 "$THAW" stop --all >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

"$THAW" boot bench --memory 512 >/dev/null
accel=$("$THAW" inspect bench --json | python3 -c "import json,sys; print(json.load(sys.stdin)['record']['spec'].get('accel', '?'))")
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, accel: $accel"

python3 - "$THAW" <<'EOF'
import statistics, subprocess, sys, time
thaw = sys.argv[1]
lat = []
for _ in range(20):
    t0 = time.monotonic()
    p = subprocess.Popen([thaw, "exec", "bench", "--", "echo", "hi"], stdout=subprocess.PIPE)
    first = p.stdout.read(1)
    lat.append((time.monotonic() - t0) * 1000)
    p.stdout.read()
    assert p.wait() == 0 and first == b"h"
print(f"exec first byte (echo hi): median {statistics.median(lat):.0f} ms "
      f"(min {min(lat):.0f}, max {max(lat):.0f}, n=20)")
EOF

head -c 104857600 /dev/urandom >"$work/in.bin"
secs() { python3 -c "import sys; print(f'{104857600 / 1e6 / (float(sys.argv[2]) - float(sys.argv[1])):.1f}')" "$@"; }
t0=$(date +%s.%N)
"$THAW" cp "$work/in.bin" bench:/tmp/in.bin >/dev/null
t1=$(date +%s.%N)
"$THAW" cp bench:/tmp/in.bin "$work/out.bin" >/dev/null
t2=$(date +%s.%N)
cmp -s "$work/in.bin" "$work/out.bin" || { echo "the copy back differs" >&2; exit 1; }
echo "thaw cp 100 MiB: host -> guest $(secs "$t0" "$t1") MB/s, guest -> host $(secs "$t1" "$t2") MB/s"
t0=$(date +%s.%N)
"$THAW" exec --timeout 3600 bench -- head -c 104857600 /dev/zero | wc -c >/dev/null
t1=$(date +%s.%N)
echo "thaw exec 100 MiB of stdout: $(secs "$t0" "$t1") MB/s"
"$THAW" stop bench >/dev/null
rm -f "$work/in.bin" "$work/out.bin"

# The example suite through a daemon.
unset THAW_NO_DAEMON
"$THAWD" >"$work/thawd.log" 2>&1 &
daemon=$!
for _ in $(seq 600); do [ -S "$THAW_HOME/thawd.sock" ] && break; sleep 0.1; done
export THAW_HOST=unix://$THAW_HOME/thawd.sock
"$THAW" boot base >/dev/null
"$THAW" snapshot base base --stop >/dev/null
suite() {
    local t0 t1
    t0=$(date +%s.%N)
    PYTHONPATH=$PWD/clients/python/src python3 -m pytest -q -p no:cacheprovider \
        clients/python/examples >"$work/suite.log" 2>&1 || { cat "$work/suite.log" >&2; exit 1; }
    t1=$(date +%s.%N)
    python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$t1"
}
passed=$(grep -c . <(PYTHONPATH=$PWD/clients/python/src python3 -m pytest -q --collect-only -p no:cacheprovider clients/python/examples | grep '::'))
echo "example suite: $passed tests"
echo "example suite without a pool: $(suite) s"
"$THAW" pool base --size "$POOL" >/dev/null
for _ in $(seq 1200); do
    ready=$("$THAW" pools --json | python3 -c "import json,sys; print(sum(p['ready'] for p in json.load(sys.stdin)))")
    [ "$ready" -ge "$POOL" ] && break
    sleep 0.5
done
echo "example suite with a warm pool of $POOL (running): $(suite) s"
