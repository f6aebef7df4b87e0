#!/bin/busybox sh
# Stage 1 of the nested host (the initramfs's /init; tests/kernel/build.py packs it).
# Inserts the boot modules, mounts the host's root filesystem (9p tag "root", read-only) under a
# tmpfs overlay, the unpacked modules (tag "modules") on /lib/modules and the writable results
# share (tag "results") at kvt.results=PATH, moves /proc /sys /dev and switch_roots into
# kvt.init=PATH (tests/kernel/nested-init.sh). Any failure prints KVT-STAGE1-FAILED <reason>
# and powers off (the host reports the console tail).
/bin/busybox --install -s /bin
PATH=/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
	echo "KVT-STAGE1-FAILED $*"
	poweroff -f
}

# param NAME: the value of kvt.NAME= on the kernel command line (status 1 if absent)
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

for m in $(cat /etc/kvt-modules); do
	insmod "/lib/modules/$m" || fail "insmod $m"
done
results=$(param results) || fail "no kvt.results= on the kernel command line"
init=$(param init) || fail "no kvt.init= on the kernel command line"

# 9p options as measured (tests/kernel/README.md); the root share is read-only
p9="trans=virtio,version=9p2000.L,msize=512000"
mount -t 9p -o "$p9,cache=loose,ro" root /lower || fail "mount root share"
mount -t tmpfs -o mode=0755 tmpfs /upper || fail "mount tmpfs for the overlay"
mkdir -p /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /newroot ||
	fail "mount overlay"
mkdir -p /newroot/lib/modules "/newroot$results"
mount -t 9p -o "$p9,cache=loose,ro" modules /newroot/lib/modules || fail "mount modules share"
mount -t 9p -o "$p9,cache=none" results "/newroot$results" || fail "mount results share"
for fs in proc sys dev; do
	mount --move "/$fs" "/newroot/$fs" || fail "move /$fs"
done
exec switch_root /newroot "$init"
