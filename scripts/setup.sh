#!/usr/bin/env bash
# Installs what thaw needs on Debian bookworm (run as root): QEMU 10 from
# bookworm-backports, busybox-static, qemu-guest-agent, the tools that build the
# firmware-booted guest image (GRUB for BIOS and UEFI, sfdisk, mtools, dosfstools), OVMF,
# vncdotool for the display tests (pip), and a Rust toolchain if cargo is missing.
# Idempotent: a second run installs nothing new.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (apt-get needs it)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive

# bookworm-backports: same URIs and keyring as the bookworm entry.
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  log "adding bookworm-backports to apt sources"
  cat > /etc/apt/sources.list.d/thaw-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  need_update=1
fi

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v qemu-img >/dev/null || missing+=(qemu-utils)
[ -x /bin/busybox ] && file_is_static=$( (ldd /bin/busybox 2>&1 || true) | grep -c 'not a dynamic' ) || file_is_static=0
[ "$file_is_static" = 1 ] || missing+=(busybox-static)
[ -x /usr/sbin/qemu-ga ] || missing+=(qemu-guest-agent)
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
command -v cpio >/dev/null || missing+=(cpio)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v xz >/dev/null || missing+=(xz-utils)
# The firmware-booted guest (thaw guest build --profile debian-bios): a GPT disk with
# GRUB for BIOS and for UEFI; OVMF for --firmware uefi.
command -v sfdisk >/dev/null || missing+=(fdisk)
command -v grub-mkimage >/dev/null || missing+=(grub-common)
[ -f /usr/lib/grub/i386-pc/boot.img ] || missing+=(grub-pc-bin)
[ -f /usr/lib/grub/x86_64-efi/linux.mod ] || missing+=(grub-efi-amd64-bin)
command -v mcopy >/dev/null || missing+=(mtools)
command -v mkfs.vfat >/dev/null || missing+=(dosfstools)
[ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || missing+=(ovmf)
command -v python3 >/dev/null || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
# thaw bench --compare: the peer methods (zstd, gzip, libvirt) and the charts' font.
command -v zstd >/dev/null || missing+=(zstd)
command -v gzip >/dev/null || missing+=(gzip)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
libvirt_missing=()
command -v virsh >/dev/null || libvirt_missing+=(libvirt-clients)
[ -x /usr/sbin/libvirtd ] || libvirt_missing+=(libvirt-daemon-system)

if [ ${#missing[@]} -gt 0 ] || [ ${#libvirt_missing[@]} -gt 0 ] || [ "${need_update:-0}" = 1 ]; then
  log "apt-get update"
  apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  # QEMU from backports (10.x); the rest from bookworm.
  apt-get install -y -qq -t bookworm-backports "${missing[@]}" >/dev/null
fi
if [ ${#libvirt_missing[@]} -gt 0 ]; then
  # libvirt from bookworm itself (9.0, what thaw's benchmark is tested with), after
  # QEMU 10 so that its QEMU driver uses that one. thaw bench --compare starts libvirtd
  # itself when none runs (no systemd needed).
  log "installing: ${libvirt_missing[*]}"
  apt-get install -y -qq "${libvirt_missing[@]}" >/dev/null
fi
if ! qemu-system-x86_64 --version | grep -qE 'version (9|[1-9][0-9])\.'; then
  log "upgrading QEMU to the bookworm-backports version"
  apt-get install -y -qq -t bookworm-backports qemu-system-x86 qemu-utils >/dev/null
fi

# vncdotool, a VNC client the display tests drive (from PyPI; Debian has no package).
if ! python3 -c 'import vncdotool.api' 2>/dev/null; then
  log "installing vncdotool (pip)"
  python3 -m pip install -q --root-user-action=ignore --break-system-packages 'vncdotool==1.4.2' >/dev/null
fi

if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    :
  else
    log "installing Rust (cargo) from Debian"
    apt-get install -y -qq cargo rustc >/dev/null
  fi
fi

# schemathesis (PyPI) checks the live daemon against docs/openapi.json
# (crates/thaw-daemon/tests/schema.rs).
if ! command -v schemathesis >/dev/null; then
  command -v pip3 >/dev/null || apt-get install -y -qq python3-pip >/dev/null
  log "installing schemathesis (pip)"
  pip3 install -q schemathesis 2>/dev/null || pip3 install -q --break-system-packages schemathesis
fi

# The S3-compatible server the store's remote tests start on loopback.
PATH="$HOME/.cargo/bin:$PATH" bash "$(dirname "$0")/setup-s3.sh"

log "QEMU: $(qemu-system-x86_64 --version | head -1)"
