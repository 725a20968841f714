#!/usr/bin/env bash
# Installs what thaw needs on Debian bookworm (run as root) to build and run the default
# guest: QEMU 10 from bookworm-backports, busybox-static, qemu-guest-agent, cpio, xz, and
# a Rust toolchain if cargo is missing. With --images, also what builds the Debian guest
# images (--profile debian, debian-bios, debian-uefi): debootstrap, e2fsprogs, GRUB for
# BIOS and UEFI, sfdisk, mtools, dosfstools, OVMF. What the tests need on top is
# scripts/setup-test.sh. Idempotent: a second run installs nothing new.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

images=0
for arg in "$@"; do
  case "$arg" in
    --images) images=1 ;;
    *) echo "setup: unknown option $arg (expected --images)" >&2; exit 2 ;;
  esac
done

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
command -v xz >/dev/null || missing+=(xz-utils)
command -v cc >/dev/null || missing+=(gcc libc6-dev)
if [ "$images" = 1 ]; then
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
  # The firmware-booted guest (thaw guest build --profile debian-bios): a GPT disk with
  # GRUB for BIOS and for UEFI; OVMF for --firmware uefi.
  command -v sfdisk >/dev/null || missing+=(fdisk)
  command -v grub-mkimage >/dev/null || missing+=(grub-common)
  [ -f /usr/lib/grub/i386-pc/boot.img ] || missing+=(grub-pc-bin)
  [ -f /usr/lib/grub/x86_64-efi/linux.mod ] || missing+=(grub-efi-amd64-bin)
  command -v mcopy >/dev/null || missing+=(mtools)
  command -v mkfs.vfat >/dev/null || missing+=(dosfstools)
  [ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || missing+=(ovmf)
fi

if [ ${#missing[@]} -gt 0 ] || [ "${need_update:-0}" = 1 ]; then
  log "apt-get update"
  apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  # QEMU from backports (10.x); the rest from bookworm.
  apt-get install -y -qq -t bookworm-backports "${missing[@]}" >/dev/null
fi
if ! qemu-system-x86_64 --version | grep -qE 'version (9|[1-9][0-9])\.'; then
  log "upgrading QEMU to the bookworm-backports version"
  apt-get install -y -qq -t bookworm-backports qemu-system-x86 qemu-utils >/dev/null
fi

if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    :
  else
    log "installing Rust (cargo) from Debian"
    apt-get install -y -qq cargo rustc >/dev/null
  fi
fi

log "QEMU: $(qemu-system-x86_64 --version | head -1)"
