"""tests/kernel/nested/tap_wire.py, the nested tests' guest wire, on this host's kernel (tun/tap
works here): frames cross between the daemon's tap and the guest's eth0, and a tap deleted
under the wire (the daemon removed it: a normal end) ends it quietly, exit status 0 and one
line on stderr, no traceback."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.kernel.nested.conftest import TAP_WIRE
from tests.netns_tools import ip, throwaway_netns


@pytest.fixture
def guest_ns() -> Iterator[str]:
    with throwaway_netns() as name:
        yield name


def test_a_deleted_tap_ends_the_wire_quietly(netns: str, guest_ns: str) -> None:
    # a persistent tap as the daemon makes it, with an address to ping from the guest side
    ip(netns, "tuntap", "add", "dev", "tw0", "mode", "tap")
    ip(netns, "addr", "add", "10.77.0.1/24", "dev", "tw0")
    ip(netns, "link", "set", "tw0", "up")
    python = [sys.executable, "-I", "-S"]  # as wired_guest runs it
    argv = ["ip", "netns", "exec", netns, *python, str(TAP_WIRE), "tw0", guest_ns]
    with subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            ip(guest_ns, "addr", "add", "10.77.0.2/24", "dev", "eth0")
            ip(guest_ns, "link", "set", "eth0", "up")
            ping = ["ip", "netns", "exec", guest_ns, "busybox", "ping", "-c", "1", "-W", "2"]
            assert any(
                subprocess.run([*ping, "10.77.0.1"], capture_output=True, timeout=30).returncode
                == 0
                for _ in range(5)
            ), "no frames crossed the wire"
            ip(netns, "link", "del", "tw0")
            deadline = time.monotonic() + 20
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            _, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines() == [
        "tap_wire.py: tw0 (namespace of the daemon) was deleted; the wire ends"
    ], err
