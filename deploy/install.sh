#!/usr/bin/env bash
# Install kvmnetd as a systemd service on Debian 12 (run as root from the source tree).
# Puts the code in /opt/kvmnetd with its own venv, the unit, tmpfiles and an example config.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
prefix=${PREFIX:-/opt/kvmnetd}
export DEBIAN_FRONTEND=noninteractive

apt-get update -qq
apt-get install -y -qq iproute2 nftables qemu-system-x86 ipxe-qemu busybox-static dnsmasq-base \
    python3-venv curl rsync

mkdir -p "$prefix"
rsync -a --delete --exclude .venv --exclude var --exclude .git --exclude '__pycache__' \
    "$src"/ "$prefix"/
python3 -m venv "$prefix/.venv"
"$prefix/.venv/bin/pip" install -q --upgrade pip
"$prefix/.venv/bin/pip" install -q -e "$prefix"

# every qemu runs as this unprivileged system user unless a VM asks for run_as
"$src/deploy/ensure-qemu-user" kvmnetd-qemu
install -D -m 0644 "$src/deploy/kvmnetd.service" /etc/systemd/system/kvmnetd.service
install -D -m 0644 "$src/deploy/kvmnetd.tmpfiles.conf" /usr/lib/tmpfiles.d/kvmnetd.conf
install -d -m 0755 /etc/kvmnetd
[ -e /etc/kvmnetd/config.toml ] || install -m 0644 "$src/deploy/config.example.toml" /etc/kvmnetd/config.toml
systemd-tmpfiles --create /usr/lib/tmpfiles.d/kvmnetd.conf
"$prefix/deploy/fetch-guest-kernel" /var/lib/kvmnetd/kernel || echo "no guest kernel: KVM usability will be reported as unknown"
systemctl daemon-reload
systemctl enable --now kvmnetd
echo "kvmnetd installed; admin token in /var/lib/kvmnetd/admin-token"
