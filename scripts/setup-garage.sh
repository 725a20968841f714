#!/usr/bin/env bash
# Installs Garage (https://garagehq.deuxfleurs.fr), the distributed S3-compatible
# store the Garage tests start as a three-node cluster on loopback or in network
# namespaces. Idempotent: does nothing when `garage` is already on PATH or in
# ~/.cargo/bin. Builds from crates.io with cargo: ~45 min on 2 shared cores here,
# which is why scripts/setup-test.sh does not call it (scripts/test-garage.sh does).
set -euo pipefail

version=2.5.0

log() { printf 'setup-garage: %s\n' "$*" >&2; }

if command -v garage >/dev/null || [ -x "$HOME/.cargo/bin/garage" ]; then
  exit 0
fi
if ! command -v cargo >/dev/null; then
  echo "setup-garage: cargo is missing; run scripts/setup.sh first" >&2
  exit 1
fi
log "installing garage $version (cargo install --locked; long: it is a large build)"
cargo install "garage@$version" --locked
