"""Reading the test guest's serial console: its readiness line and its answer on TCP.

The guest prints exactly one of
    KVT-READY ip=192.168.105.2/24 mac=52:54:00:12:34:56 iface=eth0 driver=virtio_net queues=1
        features=1100...  (one line: the queue pairs the driver set up, its sysfs rx-N
        directories, and on virtio the feature bits it accepted, bit 0 first; `-` elsewhere)
    KVT-FAILED <reason>
(a kernel panic counts as a failure too)
and answers every TCP connection on its port with `KVT-HELLO ip=... mac=... iface=... driver=...
queues=... features=...`.

After READY, for each kvt.fetch=HOST:PORT and kvt.resolve=NAME (see build.kernel_cmdline), one of
    KVT-FETCH HOST:PORT <first line of the answer>
    KVT-FETCH-FAILED HOST:PORT
    KVT-RESOLVED NAME A.B.C.D
    KVT-RESOLVE-FAILED NAME
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

FACTS = (
    r"ip=(?P<ip>\S+) mac=(?P<mac>\S+) iface=(?P<iface>\S+) driver=(?P<driver>\S+)"
    r" queues=(?P<queues>\d+) features=(?P<features>[01]+|-)"
)
READY_RE = re.compile(rf"KVT-READY {FACTS}")
HELLO_RE = re.compile(rf"KVT-HELLO {FACTS}")
FAILED_RE = re.compile(r"KVT-FAILED (?P<reason>[^\r\n]*)|(?P<panic>Kernel panic - [^\r\n]*)")
# the end of a console line: needed, since the log may end in the middle of the line being written
END = r"[ \t]*[\r\n]"

T = TypeVar("T")


@dataclass(frozen=True)
class Ready:
    """What the guest reports about itself: ip as A.B.C.D/NN, its MAC, interface and driver,
    the queue pairs its driver set up and (virtio) the feature bits it accepted ("" elsewhere:
    bit N is features[N] == "1", virtio 1.2, 5.1.3)."""

    ip: str
    mac: str
    iface: str
    driver: str
    queues: int = 1
    features: str = ""

    def facts(self) -> tuple[str, str, str, str]:
        """ip, mac, iface and driver."""
        return (self.ip, self.mac, self.iface, self.driver)

    def has_feature(self, bit: int) -> bool:
        return len(self.features) > bit and self.features[bit] == "1"

    @property
    def address(self) -> str:
        return self.ip.split("/", 1)[0]


class GuestFailed(RuntimeError):
    """The guest said KVT-FAILED, its qemu died, or it did not get ready in time."""


def _ready(facts: re.Match[str]) -> Ready:
    features = "" if facts["features"] == "-" else facts["features"]
    return Ready(
        facts["ip"], facts["mac"], facts["iface"], facts["driver"], int(facts["queues"]), features
    )


def parse_ready(text: str) -> Ready | None:
    """The readiness facts in console output (None if not there yet); raises on KVT-FAILED."""
    failed = FAILED_RE.search(text)
    if failed:
        reason = failed["reason"] or failed["panic"]
        raise GuestFailed(f"guest failed: {reason}\n{tail(text)}")
    ready = READY_RE.search(text)
    return _ready(ready) if ready else None


def parse_hello(text: str) -> Ready | None:
    """The facts in the guest's TCP answer (None if it is not one)."""
    hello = HELLO_RE.search(text)
    return _ready(hello) if hello else None


def parse_fetch(text: str, target: str) -> str | None:
    """The first line the guest got from `target` ("HOST:PORT"; None if not there yet); raises
    GuestFailed on KVT-FETCH-FAILED for it."""
    if re.search(rf"KVT-FETCH-FAILED {re.escape(target)}{END}", text):
        raise GuestFailed(f"guest could not fetch from {target}\n{tail(text)}")
    fetched = re.search(rf"KVT-FETCH {re.escape(target)} (?P<answer>[^\r\n]*)[\r\n]", text)
    return fetched["answer"] if fetched else None


def parse_resolved(text: str, name: str) -> str | None:
    """The IPv4 address the guest resolved `name` to (None if not there yet); raises GuestFailed
    on KVT-RESOLVE-FAILED for it."""
    if re.search(rf"KVT-RESOLVE-FAILED {re.escape(name)}{END}", text):
        raise GuestFailed(f"guest could not resolve {name}\n{tail(text)}")
    resolved = re.search(rf"KVT-RESOLVED {re.escape(name)} (?P<address>[\d.]+){END}", text)
    return resolved["address"] if resolved else None


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(
    log: Path, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> Ready:
    """Poll a serial log (qemu `-serial file:LOG`) until the guest is ready; GuestFailed if it
    reports a failure, `proc` (its qemu) exits, or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        ready = parse_ready(text)
        if ready is not None:
            return ready
        if proc is not None and proc.poll() is not None:
            raise GuestFailed(
                f"qemu exited with {proc.returncode} before the guest was ready\n{tail(text)}"
            )
        if time.monotonic() > deadline:
            raise GuestFailed(f"guest not ready after {timeout:.0f} s\n{tail(text)}")
        time.sleep(0.05)


def wait_for(
    log: Path,
    find: Callable[[str], T | None],
    what: str,
    timeout: float = 30.0,
    proc: subprocess.Popen[bytes] | None = None,
) -> T:
    """Poll a serial log until `find` (e.g. `lambda text: parse_fetch(text, target)`) returns
    something; GuestFailed (or what `find` raises) if `proc` exits or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        found = find(text)
        if found is not None:
            return found
        if proc is not None and proc.poll() is not None:
            raise GuestFailed(f"qemu exited with {proc.returncode} before {what}\n{tail(text)}")
        if time.monotonic() > deadline:
            raise GuestFailed(f"no {what} after {timeout:.0f} s\n{tail(text)}")
        time.sleep(0.05)
