"""The daemon in a namespace fresh from `ip netns add` (issue 10 trial, item A).

Such a namespace starts with `lo` down (ip-netns(8)): the daemon's TCP listener on
127.0.0.1 failed with `[Errno 99] cannot assign requested address` and tracebacks, so a
restart of the README's demo daemon did not come up. The daemon owns the loopback of the
namespace it runs in and brings it up; the test reads `lo` back through netlink and talks
to the TCP listener from inside the namespace. The root namespace's `lo` is never touched
(it is up on any running host, and this test runs only in a namespace it made).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

from app.host.netns import call_in
from tests.daemon import Daemon
from tests.netns_tools import kill_processes_in, new_netns_name


@pytest.fixture
def bare_netns() -> Iterator[str]:
    """A namespace as `ip netns add` leaves it: `lo` down."""
    name = new_netns_name()
    netns.create(name)
    try:
        yield name
    finally:
        kill_processes_in(name)
        netns.remove(name)


def lo_up(ns: str) -> bool:
    with IPRoute(netns=ns) as ipr:
        (link,) = ipr.get_links(ipr.link_lookup(ifname="lo")[0])
        return bool(link["flags"] & 1)  # IFF_UP


def _answers(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET /healthz HTTP/1.0\r\nHost: kvmnetd\r\n\r\n")
        return conn.recv(64)


def test_the_daemon_brings_up_lo_of_its_fresh_namespace(bare_netns: str, tmp_path: Path) -> None:
    assert not lo_up(bare_netns)
    port = 18000 + sum(bare_netns.encode()) % 1000
    daemon = Daemon(bare_netns, tmp_path)
    daemon.extra_env["KVMNETD_LISTEN"] = f"127.0.0.1:{port}"
    daemon.start()
    try:
        assert lo_up(bare_netns)
        assert call_in(bare_netns, lambda: _answers(port)).startswith(b"HTTP/1.1 ")
        logs = daemon.logs()
        assert f"brought lo up in network namespace {bare_netns}" in logs
        assert "Errno 99" not in logs and "Traceback" not in logs
        # the failing case was the restart once a link there had an IPv4 address; that
        # start finds lo up (nothing to say) and binds
        with daemon.client() as c:
            body = {"name": "br0", "addresses": ["10.97.0.1/24"]}
            assert c.post("/v1/bridges?wait=10", json=body).status_code == 201
        daemon.stop()
        daemon.start()
        assert call_in(bare_netns, lambda: _answers(port)).startswith(b"HTTP/1.1 ")
        assert daemon.logs().count("brought lo up") == 1
        assert "Errno 99" not in daemon.logs()
    finally:
        daemon.kill()
