#!/usr/bin/env bash
# Regenerates the figures of docs/benchmarks.md on this machine: runs
# `thaw bench --compare` (every method, the default guest, 256 MiB to 4 GiB), keeps the
# report as docs/bench-compare.json, draws docs/bench-ready.png and
# docs/bench-ready-ram.png, and puts the table between the markers in
# docs/benchmarks.md. RUNS (default 10) sets the runs per method and size.
# The machine may be shared: the report records the load average before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# thaw bench runs thaw-bench from beside thaw: build both.
cargo build --release -q -p thaw-cli -p thaw-daemon -p thaw-bench
thaw=./target/release/thaw
"$thaw" bench --compare --runs "${RUNS:-10}" --memory 256 --memory 1024 --memory 4096 \
  --chart docs/bench-ready.png --json > docs/bench-compare.json.new
mv docs/bench-compare.json.new docs/bench-compare.json
table=$("$thaw" bench --chart-from docs/bench-compare.json --chart docs/bench-ready.png)
awk -v table="$table" '
  /<!-- bench-table:begin -->/ { print; print "```"; print table; print "```"; skip = 1; next }
  /<!-- bench-table:end -->/ { skip = 0 }
  !skip { print }
' docs/benchmarks.md > docs/benchmarks.md.new
mv docs/benchmarks.md.new docs/benchmarks.md
echo "updated docs/benchmarks.md, docs/bench-ready.png, docs/bench-ready-ram.png, docs/bench-compare.json"
