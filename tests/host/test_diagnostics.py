"""Host diagnostics against a real kernel namespace: ip_forward, foreign nftables forward
chains, port 53 listeners (real sockets, a real dnsmasq) and who owns them.

Everything is changed only inside the test's kvt-* namespace; every process started here is
killed by its pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.host.diagnostics import check_dnsmasq, check_forward_policy, conf_file_under
from app.host.inspect import LiveHostInspector
from tests.netns_tools import ip

GATEWAY = "10.77.0.1"

# Binds port 53 for every "udp/ADDR" or "tcp/ADDR" argument (arguments starting with "--"
# are only there to be seen in /proc/PID/cmdline), prints its pid, then waits to be killed.
LISTENER = """
import os, socket, sys, time
held = []
for spec in sys.argv[1:]:
    if spec.startswith("--"):
        continue
    proto, _, addr = spec.partition("/")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, 53))
    if proto == "tcp":
        s.listen()
    held.append(s)
print(os.getpid(), flush=True)
time.sleep(600)
"""


@pytest.fixture
def inspector(netns: str, tmp_path: Path) -> Iterator[LiveHostInspector]:
    insp = LiveHostInspector(netns=netns, run_dir=tmp_path / "run")
    try:
        yield insp
    finally:
        insp.close()


def checks(insp: LiveHostInspector, gateways: list[str] | None = None) -> dict[str, Any]:
    return {c["name"]: c for c in insp.diagnostics(gateways or [])}


def in_ns(ns: str, *argv: str, stdin: str | None = None) -> None:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, f"{argv} failed: {done.stderr}"


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, 9)
    proc.wait(10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@contextlib.contextmanager
def listener(ns: str, *specs: str) -> Iterator[int]:
    """A python process in `ns` holding port 53 as `specs` say; yields its pid."""
    # `ip netns exec` execs the command in place, so the Popen pid is the listener's
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", LISTENER, *specs],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        if not line:
            proc.wait(10)
            raise AssertionError(f"listener failed: {proc.stderr.read()}")
        assert int(line) == proc.pid
        yield proc.pid
    finally:
        _stop(proc)


def add_gateway(ns: str, address: str = GATEWAY) -> None:
    ip(ns, "link", "add", "kvtbr0", "type", "bridge")
    ip(ns, "addr", "add", f"{address}/24", "dev", "kvtbr0")
    ip(ns, "link", "set", "kvtbr0", "up")


def test_ip_forwarding_follows_the_namespace(netns: str, inspector: LiveHostInspector) -> None:
    in_ns(netns, "sysctl", "-w", "net.ipv4.ip_forward=0")
    off = checks(inspector)["ip_forwarding"]
    assert (off["ok"], off["severity"], off["data"]) == (False, "info", {"value": 0})
    assert "ip_forward is 0" in off["detail"]
    assert "turns it on when a network exists" in off["detail"]
    # with managed networks, forwarding off is an error
    assert checks(inspector, [GATEWAY])["ip_forwarding"]["severity"] == "error"

    in_ns(netns, "sysctl", "-w", "net.ipv4.ip_forward=1")
    on = checks(inspector, [GATEWAY])["ip_forwarding"]
    assert (on["ok"], on["severity"], on["data"]) == (True, "info", {"value": 1})
    assert "ip_forward is 1" in on["detail"]


def test_foreign_forward_drop_is_reported_ours_is_not(
    netns: str, inspector: LiveHostInspector
) -> None:
    clean = checks(inspector)["forward_policy"]
    assert (clean["ok"], clean["data"]) == (True, {"chains": []})

    in_ns(
        netns,
        "nft",
        "-f",
        "-",
        stdin="""
table ip kvt_docker_like {
  chain FORWARD {
    type filter hook forward priority 0; policy drop;
  }
}
table inet kvmnetd {
  chain forward {
    type filter hook forward priority 0; policy drop;
  }
}
table ip6 kvt_accepting {
  chain FORWARD {
    type filter hook forward priority 0; policy accept;
  }
}
table inet kvt_input_only {
  chain input {
    type filter hook input priority 0; policy drop;
  }
}
""",
    )
    check = checks(inspector)["forward_policy"]
    assert (check["ok"], check["severity"]) == (False, "error")
    assert check["data"]["chains"] == [
        {
            "family": "ip",
            "table": "kvt_docker_like",
            "chain": "FORWARD",
            "priority": 0,
            "policy": "drop",
        }
    ]
    assert "ip table kvt_docker_like chain FORWARD" in check["detail"]
    assert "will be dropped there unless that table accepts it" in check["detail"]
    assert "kvmnetd" not in check["detail"]


def test_foreign_wildcard_listener_clashes(netns: str, inspector: LiveHostInspector) -> None:
    with listener(netns, "udp/0.0.0.0", "tcp/::") as pid:
        check = checks(inspector, [GATEWAY])["port53"]
    assert (check["ok"], check["severity"]) == (False, "error")
    clashes = {(c["protocol"], c["address"]): c for c in check["data"]["clashes"]}
    assert set(clashes) == {("udp", "0.0.0.0"), ("tcp", "::")}
    for clash in clashes.values():
        assert (clash["pid"], clash["ours"], clash["port"]) == (pid, False, 53)
        assert clash["comm"].startswith("python")
    assert f"0.0.0.0:53/udp is held by pid {pid} (python" in check["detail"]
    assert f"[::]:53/tcp is held by pid {pid}" in check["detail"]


def test_listeners_elsewhere_do_not_clash(netns: str, inspector: LiveHostInspector) -> None:
    """Loopback (a local resolver) and another network's address are not our gateways."""
    add_gateway(netns)
    ip(netns, "addr", "add", "10.78.0.1/24", "dev", "kvtbr0")
    with listener(netns, "udp/127.0.0.53", "tcp/127.0.0.53", "udp/10.78.0.1") as pid:
        check = checks(inspector, [GATEWAY])["port53"]
    assert check["ok"], check["detail"]
    assert {(entry["address"], entry["pid"]) for entry in check["data"]["listeners"]} == {
        ("127.0.0.53", pid),
        ("10.78.0.1", pid),
    }
    assert check["data"]["clashes"] == []


def test_foreign_listener_on_a_gateway_clashes(
    netns: str, inspector: LiveHostInspector, tmp_path: Path
) -> None:
    """A conf file outside <run_dir>/networks does not make a process ours."""
    add_gateway(netns)
    elsewhere = f"--conf-file={tmp_path / 'run' / 'other' / 'dnsmasq.conf'}"
    with listener(netns, f"udp/{GATEWAY}", elsewhere) as pid:
        check = checks(inspector, [GATEWAY])["port53"]
    assert not check["ok"]
    [clash] = check["data"]["clashes"]
    assert (clash["address"], clash["protocol"], clash["pid"]) == (GATEWAY, "udp", pid)
    assert f"{GATEWAY}:53/udp is held by pid {pid}" in check["detail"]
    assert "a managed network's gateway" in check["detail"]


def test_our_listener_on_a_gateway_does_not_clash(
    netns: str, inspector: LiveHostInspector, tmp_path: Path
) -> None:
    add_gateway(netns)
    ours = f"--conf-file={tmp_path / 'run' / 'networks' / 'n1' / 'dnsmasq.conf'}"
    with listener(netns, f"udp/{GATEWAY}", f"tcp/{GATEWAY}", ours) as pid:
        assert conf_file_under(tmp_path / "run" / "networks")(pid)
        assert not conf_file_under(tmp_path / "elsewhere")(pid)
        check = checks(inspector, [GATEWAY])["port53"]
    assert check["ok"], check["detail"]
    assert check["data"]["clashes"] == []
    assert sorted((e["protocol"], e["pid"], e["ours"]) for e in check["data"]["listeners"]) == [
        ("tcp", pid, True),
        ("udp", pid, True),
    ]


@pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is not installed")
def test_real_dnsmasq_run_as_the_daemon_will_is_ours(
    netns: str, inspector: LiveHostInspector, tmp_path: Path
) -> None:
    add_gateway(netns)
    conf = tmp_path / "run" / "networks" / "n1" / "dnsmasq.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(
        f"port=53\nlisten-address={GATEWAY}\nbind-interfaces\nno-resolv\nno-hosts\npid-file=\n"
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, "dnsmasq", "--keep-in-foreground", f"--conf-file={conf}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            check = checks(inspector, [GATEWAY])["port53"]
            if len(check["data"]["listeners"]) == 2 or proc.poll() is not None:
                break
            assert time.monotonic() < deadline, check
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        _stop(proc)
    assert check["ok"], check["detail"]
    assert {
        (e["protocol"], e["pid"], e["comm"], e["ours"]) for e in check["data"]["listeners"]
    } == {
        ("udp", proc.pid, "dnsmasq", True),
        ("tcp", proc.pid, "dnsmasq", True),
    }

    found = checks(inspector)["dnsmasq"]
    assert found["ok"]
    assert found["data"]["path"] == shutil.which("dnsmasq")
    assert found["data"]["version_line"].startswith("Dnsmasq version ")
    assert found["data"]["version"][0].isdigit()


def test_missing_tools_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without nft or dnsmasq in PATH (nothing here touches any namespace)."""
    monkeypatch.setenv("PATH", str(tmp_path))
    policy = check_forward_policy()
    assert (policy.ok, policy.severity) == (False, "warning")
    assert "nft is not installed" in policy.data["error"]
    assert "nft is not installed" in policy.detail
    dnsmasq = check_dnsmasq()
    assert (dnsmasq.ok, dnsmasq.severity, dnsmasq.data["package"]) == (
        False,
        "error",
        "dnsmasq-base",
    )
    assert "apt-get install dnsmasq-base" in dnsmasq.detail
