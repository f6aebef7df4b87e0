"""The small real test guest: a Debian kernel plus a busybox initramfs.

- tests.guest.build: build_guest(variant) -> Guest(kernel, initrd, modules), kernel_cmdline(...)
- tests.guest.console: wait_ready(serial log) -> Ready(ip, mac, iface, driver), parse_hello(...)
  and, for kvt.fetch / kvt.resolve, wait_for(log, parse_fetch / parse_resolved, ...)
"""
