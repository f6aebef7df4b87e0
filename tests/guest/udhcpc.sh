#!/bin/sh
# udhcpc event script of the kvmnetd test guest: applies the lease to $interface.
case "$1" in
deconfig)
	ip -4 addr flush dev "$interface"
	ip link set "$interface" up
	;;
bound | renew)
	current=$(ip -o -4 addr show dev "$interface" | awk '{print $4; exit}')
	if [ "$current" != "$ip/${mask:-24}" ]; then
		ip -4 addr flush dev "$interface"
		ip addr add "$ip/${mask:-24}" dev "$interface"
	fi
	for gateway in $router; do
		ip route replace default via "$gateway" dev "$interface"
		break
	done
	for server in $dns; do
		echo "nameserver $server"
	done >/etc/resolv.conf
	;;
esac
exit 0
