#!/usr/bin/env bash
# The remote tests against a three-node Garage cluster: installs Garage if it is
# missing (scripts/setup-garage.sh), then runs, with `--features garage`, the
# store's remote tests against it (and s3s-fs), the two-host test through it, and
# a pull that loses a node. Needs what scripts/setup-test.sh installs (QEMU, the guest,
# s3s-fs) and root (network namespaces). Not part of scripts/test.sh: building
# Garage takes longer than the CI budget allows (see docs/store.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/setup-garage.sh
echo "== garage: $(garage --version 2>/dev/null || echo '?')"
echo "== cargo clippy --features garage"
cargo clippy -p thaw-store -p thaw-cli --all-targets --features garage -- -D warnings
echo "== thaw-store remote tests (s3s-fs and Garage)"
cargo test -p thaw-store --features garage --test s3 -- --test-threads=1
echo "== thaw-cli: a Garage node down during a pull; two hosts through Garage"
cargo test -p thaw-cli --features garage --test remote --test two_hosts -- --test-threads=1
