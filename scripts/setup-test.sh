#!/usr/bin/env bash
# Installs what the test suite needs on Debian bookworm (run as root): everything
# scripts/setup.sh installs with --images (thaw, the Debian guest images' tools), and on
# top the test tools: the benchmark's peers (zstd, gzip, libvirt) and chart font,
# vncdotool for the display tests and schemathesis for the API's schema test (PyPI), and
# s3s-fs, the S3 server the store's remote tests start (crates.io), cargo-nextest, which
# runs the tests (crates.io; machines of CI's kind have it already), the Python SDK
# (clients/python) with its test tools, and systemd-analyze and man for the package test.
# Idempotent: a second run installs nothing new.
set -euo pipefail
here="$(dirname "$0")"

log() { printf 'setup-test: %s\n' "$*" >&2; }

bash "$here/setup.sh" --images
export DEBIAN_FRONTEND=noninteractive

missing=()
command -v python3 >/dev/null || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
# thaw bench --compare: the peer methods (zstd, gzip, libvirt) and the charts' font.
command -v zstd >/dev/null || missing+=(zstd)
command -v gzip >/dev/null || missing+=(gzip)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
# libvirt from bookworm itself (9.0, what thaw's benchmark is tested with), installed
# after QEMU 10 (setup.sh) so that its QEMU driver uses that one. thaw bench --compare
# starts libvirtd itself when none runs (no systemd needed).
command -v virsh >/dev/null || missing+=(libvirt-clients)
[ -x /usr/sbin/libvirtd ] || missing+=(libvirt-daemon-system)
# The package test (crates/thaw-cli/tests/package.rs): systemd-analyze verify on the
# installed thawd.service, which also looks up the unit's man pages with man.
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v man >/dev/null || missing+=(man-db)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# vncdotool, a VNC client the display tests drive (from PyPI; Debian has no package).
if ! python3 -c 'import vncdotool.api' 2>/dev/null; then
  log "installing vncdotool (pip)"
  python3 -m pip install -q --root-user-action=ignore --break-system-packages 'vncdotool==1.4.2' >/dev/null
fi

# schemathesis (PyPI) checks the live daemon against docs/openapi.json
# (crates/thaw-daemon/tests/schema.rs).
if ! command -v schemathesis >/dev/null; then
  log "installing schemathesis (pip)"
  python3 -m pip install -q --root-user-action=ignore --break-system-packages schemathesis >/dev/null
fi

# The Python SDK with its test extras (pytest, anyio), editable from this checkout so its
# tests (scripts/test.sh) run the code in the tree; again only when another tree's is installed.
sdk="$(cd "$here/../clients/python" && pwd)"
if ! python3 -c "import sys, pytest, anyio, thaw_client; sys.exit(not thaw_client.__file__.startswith('$sdk/'))" 2>/dev/null; then
  log "installing the Python SDK from $sdk (pip)"
  python3 -m pip install -q --root-user-action=ignore --break-system-packages -e "$sdk[test]" >/dev/null
fi

# The S3-compatible server the store's remote tests start on loopback.
PATH="$HOME/.cargo/bin:$PATH" bash "$here/setup-s3.sh"

# cargo-nextest runs the Rust tests (scripts/test.sh, .config/nextest.toml): every test
# in its own process, two at a time across all binaries.
if ! PATH="$HOME/.cargo/bin:$PATH" cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest (cargo install, a few minutes on 2 cores)"
  PATH="$HOME/.cargo/bin:$PATH" cargo install cargo-nextest --locked
fi
