"""A PXE server for network-booted test guests (`boot.network`), on a bridge of a test's
namespace: dnsmasq giving addresses from a pool and, as the boot file (DHCP option 67,
RFC 2132 9.5), an HTTP URL on tests/pxe_http.py, which iPXE (QEMU's NIC option ROMs) fetches
itself. Used by tests/kernel/nested/test_vhost_daemon.py and bench/vhost.py.

The boot file is an iPXE script (https://ipxe.org/scripting) the caller writes; `/hold` keeps
the guest's NIC open (tests/pxe_http.py). Both processes are killed by pid on exit.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HTTP_PORT = 8000
SERVER = Path(__file__).with_name("pxe_http.py")
ACK_RE = re.compile(r"DHCPACK\(\S+\) (?P<ip>[0-9.]+) (?P<mac>[0-9a-f:]{17})")


@dataclass
class PxeServer:
    address: str
    directory: Path

    @property
    def dnsmasq_log(self) -> Path:
        return self.directory / "dnsmasq.log"

    @property
    def http_log(self) -> Path:
        return self.directory / "http.log"

    def url(self, name: str) -> str:
        return f"http://{self.address}:{HTTP_PORT}/{name}"

    def leased(self, mac: str) -> str | None:
        """The address dnsmasq acknowledged to `mac` (DHCPACK), if any yet."""
        text = self.dnsmasq_log.read_text(errors="replace")
        found = [m["ip"] for m in ACK_RE.finditer(text) if m["mac"] == mac.lower()]
        return found[-1] if found else None

    def requests(self) -> list[dict[str, object]]:
        """tests/pxe_http.py's records: {"peer", "path", "bytes", "seconds"}, in order."""
        lines = self.http_log.read_text(errors="replace").splitlines()
        return [r for r in map(json.loads, lines) if "path" in r]


def _spawn(netns: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", netns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@contextlib.contextmanager
def pxe_server(
    netns: str, interface: str, address: str, pool: tuple[str, str], script: str, directory: Path
) -> Iterator[PxeServer]:
    """dnsmasq on `interface` (which holds `address`) leasing `pool`, whose boot file is
    `script` (an iPXE script, saved as boot.ipxe in `directory`, served with the rest of
    `directory` over HTTP on `address`)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "boot.ipxe").write_text(script)
    server = PxeServer(address, directory)
    dnsmasq = [
        "dnsmasq",
        "--no-daemon",
        "--conf-file=/dev/null",
        "--port=0",  # no DNS
        f"--interface={interface}",
        "--bind-interfaces",
        f"--dhcp-range={pool[0]},{pool[1]}",
        f"--dhcp-boot={server.url('boot.ipxe')}",
        "--leasefile-ro",
        "--log-dhcp",
    ]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        http = [sys.executable, "-I", "-S", str(SERVER), str(directory), address, str(HTTP_PORT)]
        procs.append(_spawn(netns, http, server.http_log))
        procs.append(_spawn(netns, dnsmasq, server.dnsmasq_log))
        deadline = time.monotonic() + 60
        while "listening" not in server.http_log.read_text(errors="replace"):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"the PXE server did not start: {server.http_log.read_text()}")
            time.sleep(0.2)
        yield server
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)
