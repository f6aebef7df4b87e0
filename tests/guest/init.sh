#!/bin/busybox sh
# /init of the kvmnetd test guest: busybox sh as PID 1 (built by tests/guest/build.py).
# Kernel command line: kvt.ip=A.B.C.D/NN [kvt.gw=A.B.C.D] | kvt.dhcp=1, optional kvt.iface=NAME
# and kvt.port=N (default 7777). Prints one line on the console: KVT-READY ip=... mac=...
# iface=... driver=... queues=... features=... or KVT-FAILED <reason>; then answers on TCP and
# keeps a shell.
# Optional:
#   kvt.echo=PORT        a TCP echo server on PORT besides the hello server (connections stay open)
#   kvt.fetch=HOST:PORT  (repeatable) after READY, connect once a second for up to 120 s until the
#                        answer's first line is not empty; prints KVT-FETCH HOST:PORT <that line>
#                        or KVT-FETCH-FAILED HOST:PORT
#   kvt.resolve=NAME     (repeatable) after READY, nslookup NAME once a second for up to 60 s
#                        (server: /etc/resolv.conf from DHCP, else kvt.dns=A.B.C.D); prints
#                        KVT-RESOLVED NAME A.B.C.D or KVT-RESOLVE-FAILED NAME
# Those background jobs print each line with one write, after a newline (see say).
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

shell_forever() {
	while :; do
		setsid cttyhack sh
		sleep 1
	done
}

fail() {
	dmesg -n 1
	echo "KVT-FAILED $*"
	shell_forever
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

# params NAME: every value of kvt.NAME= on the kernel command line, one a line
params() {
	for word in $(cat /proc/cmdline); do
		case "$word" in
		"kvt.$1="*) echo "${word#*=}" ;;
		esac
	done
}

# say LINE: LINE on the console in one write (so background jobs never mix their lines), after a
# newline of its own: the console shell may have left its prompt there, without a newline
say() {
	echo "
$*"
}

# whole seconds since boot
now() {
	read -r up _ </proc/uptime
	echo "${up%%.*}"
}

# insert every module of /etc/kvt-modules, in order, retrying those that fail
load_modules() {
	pending=$(cat /etc/kvt-modules)
	round=0
	while [ -n "$pending" ] && [ "$round" -lt 50 ]; do
		left=""
		for m in $pending; do
			insmod "/lib/modules/$m.ko" 2>/dev/null || left="$left $m"
		done
		pending=$left
		round=$((round + 1))
		[ -z "$pending" ] || sleep 0.1
	done
	[ -z "$pending" ] || fail "modules did not load:$pending"
}

# the interface to configure: kvt.iface, else eth0, else the first one that is not lo
find_iface() {
	wanted=$(param iface) || wanted=""
	tries=0
	while [ "$tries" -lt 100 ]; do
		if [ -n "$wanted" ]; then
			[ -e "/sys/class/net/$wanted" ] && echo "$wanted" && return 0
		elif [ -e /sys/class/net/eth0 ]; then
			echo eth0 && return 0
		else
			for path in /sys/class/net/*; do
				name=${path##*/}
				[ "$name" != lo ] && [ -e "$path" ] && echo "$name" && return 0
			done
		fi
		tries=$((tries + 1))
		sleep 0.1
	done
	return 1
}

# wait up to 5 s for the link to come up (e1000 reports carrier ~2 s after it is set up)
wait_carrier() {
	tries=0
	while [ "$(cat "/sys/class/net/$1/carrier" 2>/dev/null)" != 1 ] && [ "$tries" -lt 50 ]; do
		tries=$((tries + 1))
		sleep 0.1
	done
}

configure() {
	ip link set lo up
	ip link set "$1" up || fail "cannot bring $1 up"
	wait_carrier "$1"
	if address=$(param ip); then
		ip addr add "$address" dev "$1" || fail "cannot add $address to $1"
		if gateway=$(param gw); then
			ip route add default via "$gateway" || fail "cannot add default route via $gateway"
		fi
	elif [ "$(param dhcp)" = 1 ]; then
		# patient enough for a server that ping-checks an address before offering it
		# (dnsmasq does, for up to 3 s)
		if ! udhcpc -i "$1" -s /etc/udhcpc.sh -t 8 -T 3 -n >/run/udhcpc.log 2>&1; then
			sed 's/^/udhcpc: /' /run/udhcpc.log
			fail "dhcp: no lease on $1"
		fi
	else
		fail "no kvt.ip= or kvt.dhcp=1 on the kernel command line"
	fi
}

# shut down when the ACPI power button is pressed (QMP system_powerdown)
watch_power_button() {
	for dev in /sys/class/input/event*; do
		[ "$(cat "$dev/device/name" 2>/dev/null)" = "Power Button" ] || continue
		(
			dd if="/dev/input/${dev##*/}" of=/dev/null bs=24 count=1 2>/dev/null
			echo "KVT-POWEROFF"
			sync
			poweroff -f
		) &
	done
}

serve() {
	port=$(param port) || port=7777
	printf '#!/bin/sh\ncat /run/kvt-answer\n' >/run/kvt-answer.sh
	chmod 755 /run/kvt-answer.sh
	echo "$1" >/run/kvt-answer
	nc -ll -p "$port" -e /run/kvt-answer.sh &
	# kvt.echo: each connection gets its own cat, which echoes until the client closes
	if echo_port=$(param echo); then
		nc -ll -p "$echo_port" -e cat &
	fi
}

# fetch HOST:PORT: connect once a second for up to 120 s until the first line of the answer is
# not empty (CR stripped); one console line with it, or KVT-FETCH-FAILED
fetch() {
	host=${1%:*}
	port=${1##*:}
	deadline=$(($(now) + 120))
	while :; do
		line=$(timeout 5 nc -w 2 "$host" "$port" </dev/null 2>/dev/null | head -n 1 | tr -d '\r')
		if [ -n "$line" ]; then
			say "KVT-FETCH $1 $line"
			return 0
		fi
		[ "$(now)" -lt "$deadline" ] || break
		sleep 1
	done
	say "KVT-FETCH-FAILED $1"
}

# the DNS server: the first nameserver of /etc/resolv.conf (written by udhcpc.sh), else kvt.dns
dns_server() {
	server=$(awk '$1 == "nameserver" { print $2; exit }' /etc/resolv.conf 2>/dev/null)
	[ -n "$server" ] || server=$(param dns) || return 1
	echo "$server"
}

# the first IPv4 answer in nslookup's output on stdin that is not the server's own address ($1);
# the block that starts with "Server:" (up to the blank line after it) names the server itself.
# Handles "Address: A.B.C.D", "Address 1: A.B.C.D name" and "A.B.C.D:53" / "A.B.C.D#53".
first_answer() {
	awk -v server="$1" '
		/^Server:/ { skip = 1 }
		/^[ \t]*$/ { skip = 0 }
		skip || !/^Address/ { next }
		{
			for (i = 2; i <= NF; i++) {
				a = $i
				sub(/#[0-9]+$/, "", a)
				if (a !~ /^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+(:[0-9]+)?$/) continue
				sub(/:[0-9]+$/, "", a)
				if (a != server) { print a; exit }
			}
		}'
}

# resolve NAME: nslookup once a second for up to 60 s; one console line with the first IPv4
# answer, or KVT-RESOLVE-FAILED
resolve() {
	deadline=$(($(now) + 60))
	while :; do
		server=$(dns_server) || server=""
		answer=$(timeout 5 nslookup "$1" ${server:+"$server"} 2>/dev/null | first_answer "$server")
		if [ -n "$answer" ]; then
			say "KVT-RESOLVED $1 $answer"
			return 0
		fi
		[ "$(now)" -lt "$deadline" ] || break
		sleep 1
	done
	say "KVT-RESOLVE-FAILED $1"
}

# kvt.fetch= and kvt.resolve= targets, each in its own background job
probe() {
	for target in $(params fetch); do
		fetch "$target" &
	done
	for name in $(params resolve); do
		resolve "$name" &
	done
}

load_modules
iface=$(find_iface) || fail "no network interface"
configure "$iface"
address=$(ip -o -4 addr show dev "$iface" | awk '{print $4; exit}')
[ -n "$address" ] || fail "no IPv4 address on $iface"
mac=$(cat "/sys/class/net/$iface/address")
driver=$(basename "$(readlink "/sys/class/net/$iface/device/driver")" 2>/dev/null)
# the queue pairs the driver set up (its sysfs rx-N directories) and, on virtio, the feature
# bits it accepted (the virtio device's `features`: one 0/1 character per bit, bit 0 first)
queues=$(ls -d "/sys/class/net/$iface/queues/rx-"* | wc -l)
features=$(cat "/sys/class/net/$iface/device/features" 2>/dev/null) || features=""
facts="ip=$address mac=$mac iface=$iface driver=${driver:-unknown} queues=$queues"
facts="$facts features=${features:--}"
watch_power_button
serve "KVT-HELLO $facts"
dmesg -n 1
echo "KVT-READY $facts"
probe
shell_forever
