#!/usr/bin/env bash
# Installs s3s-fs, the small S3-compatible server that thaw-store's remote tests
# start on 127.0.0.1. Idempotent: does nothing when the binary is already on PATH
# or in ~/.cargo/bin. Builds from crates.io with cargo (a few minutes on 2 cores).
set -euo pipefail

version=0.14.1

log() { printf 'setup-s3: %s\n' "$*" >&2; }

if command -v s3s-fs >/dev/null || [ -x "$HOME/.cargo/bin/s3s-fs" ]; then
  exit 0
fi
if ! command -v cargo >/dev/null; then
  echo "setup-s3: cargo is missing; run scripts/setup.sh first" >&2
  exit 1
fi
log "installing s3s-fs $version (cargo install)"
cargo install "s3s-fs@$version" --features binary --locked
