#!/bin/sh
# Sets up a fresh Debian (bookworm) machine for Holdfast, as root (or with sudo):
# the Debian packages the build, tests and benchmarks need, then `npm ci`, which
# installs the pinned Node 26 runtime and builds the native addon against it.
# Safe to run again.
set -eu
cd "$(dirname "$0")/.."

# samba (with samba-vfs-modules, for shadow_copy2), smbclient, openssh-server
# and openssh-client: the real SMB and SFTP servers the source tests start on
# loopback (and the peers the source benchmark compares against). rsync: the
# replication benchmark's peer (rsync -a over ssh). chromium and fonts: the
# console's browser test drives Debian's chromium headless (playwright-core).
# systemd: systemd-analyze, which the unit-file test runs (verify, security).
# qemu-system-x86, ipxe-qemu, ipxe, ovmf, dnsmasq-base: the network-boot tests
# (a VM booting from the boot server); debootstrap, squashfs-tools, cpio: the
# appliance image build (provisioning/). ceph-mon, ceph-osd, radosgw: the
# single-node Ceph cluster the S3 store backend is tested on (started by the
# tests themselves as this user, on loopback, and stopped by pid).
PACKAGES="ceph-mon ceph-osd radosgw qemu-system-x86 ipxe-qemu ipxe ovmf dnsmasq-base debootstrap squashfs-tools cpio build-essential python3 libzstd-dev restic borgbackup time tar util-linux samba samba-vfs-modules smbclient openssh-server openssh-client rsync chromium fonts-dejavu-core fonts-liberation systemd"

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "setup: run as root (apt-get installs: $PACKAGES)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
  echo "setup: installed$missing"
else
  echo "setup: Debian packages already installed"
fi

npm ci --no-audit --no-fund
echo "setup: done. Try: npm run demo   (or: npx holdfast --help)"
