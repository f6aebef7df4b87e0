#!/bin/sh
# Stage 2 of the nested host: its init, run from the host's read-only root (same path as on
# the host) after stage 1 (initramfs-init.sh) switched root. Mounts /run, /tmp, /dev/shm,
# devpts and cgroup2, points the kernel's module loader at the unpacked kmod's modprobe
# (kvt.modprobe=PATH: 8021q then autoloads on `ip link add ... type vlan`), then runs the
# command the host wrote into the results share (kvt.results=DIR):
#   DIR/argv  one argument a line (no shell: each line is one word, verbatim)
#   DIR/cwd   the directory to run it in
# Its output goes to DIR/output, its exit status to DIR/exit; then the VM powers off.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

param() {
	for word in $(cat /proc/cmdline); do
		case "$word" in
		"kvt.$1="*)
			echo "${word#*=}"
			return 0
			;;
		esac
	done
	return 1
}

poweroff_now() {
	sync
	busybox poweroff -f
}

results=$(param results)
modprobe=$(param modprobe)
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /dev/pts /dev/shm /run/netns /run/lock
# no udev here: the standard descriptor links (nft -f - reads /dev/stdin)
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
for i in 0:stdin 1:stdout 2:stderr; do [ -e "/dev/${i#*:}" ] || ln -s "/proc/self/fd/${i%%:*}" "/dev/${i#*:}"; done
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null || true
echo "$modprobe" >/proc/sys/kernel/modprobe
busybox hostname kvt-nested
ip link set lo up

PATH="$(dirname "$modprobe"):$PATH"
KVT_NESTED=1
HOME=/root
TMPDIR=/tmp
PYTHONDONTWRITEBYTECODE=1
export PATH KVT_NESTED HOME TMPDIR PYTHONDONTWRITEBYTECODE
# KVT_* variables of the host's environment (DIR/env: NAME=VALUE a line)
if [ -f "$results/env" ]; then
	while IFS= read -r assignment; do
		case "$assignment" in
		KVT_*=*) export "$assignment" ;;
		esac
	done <"$results/env"
fi

set --
while IFS= read -r word; do
	set -- "$@" "$word"
done <"$results/argv"
cd "$(cat "$results/cwd")" || {
	echo 125 >"$results/exit"
	poweroff_now
}
echo "KVT-NESTED-START"
"$@" >"$results/output" 2>&1 </dev/null
echo "$?" >"$results/exit"
echo "KVT-NESTED-DONE"
poweroff_now
