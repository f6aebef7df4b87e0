"""The only layer with side effects on the host: netlink, nftables, qemu, dnsmasq."""
