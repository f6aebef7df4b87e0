"""The test guest works: real qemu under TCG, in throwaway kvt-* namespaces, no daemon involved.

- the how-to's routed tap: a bridge with 192.168.105.1/24 and a tap, a virtio-net guest with a
  static 192.168.105.2 and that gateway answers on TCP (naming its MAC) and to ping;
- QEMU user networking: a DHCP guest gets 10.0.2.15 and answers through a host port forward,
  then powers itself off on an ACPI powerdown (QMP system_powerdown);
- the legacy NIC models with the linux-image-amd64 kernel get 10.0.2.15 the same way;
- the optional behaviours on one static guest: kvt.echo keeps connections open and echoes,
  kvt.fetch reports a server's answer, kvt.resolve asks a dnsmasq (kvt.dns) for a name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from tests.guest.build import Guest, build_guest, kernel_cmdline
from tests.guest.console import (
    GuestFailed,
    Ready,
    parse_fetch,
    parse_hello,
    parse_ready,
    parse_resolved,
    wait_for,
    wait_ready,
)

QEMU = "qemu-system-x86_64"
GUEST_PORT = 7777
HOST_PORT = 17777  # a fresh namespace has every port free
READY_TIMEOUT = 30.0
TICKS = os.sysconf("SC_CLK_TCK")
VIRTIO_F_VERSION_1 = 32  # virtio 1.2, 6: the feature bit of a modern device

# a tiny TCP client run inside a namespace: prints what the server sends, retrying until data
CLIENT = """
import socket, sys, time
host, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while True:
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            data = b"".join(iter(lambda: s.recv(4096), b""))
        if data:
            sys.stdout.write(data.decode(errors="replace"))
            break
    except OSError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"no answer from {host}:{port}: {exc}")
    if time.monotonic() > deadline:
        sys.exit(f"no data from {host}:{port}")
    time.sleep(0.2)
"""

# a TCP server run inside a namespace: answers each connection with one line naming the peer
ANSWER_SERVER = """
import socket, sys
with socket.create_server((sys.argv[1], int(sys.argv[2]))) as server:
    print("listening", flush=True)
    while True:
        conn, (peer, _) = server.accept()
        with conn:
            conn.sendall(f"OUTSIDE saw {peer}\\r\\n".encode())
"""

# an echo client run inside a namespace: one connection, `lines` lines spread over `hold` seconds,
# each must come back before the next is sent; prints what came back
ECHO_CLIENT = """
import socket, sys, time
host, port, hold, lines = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
deadline = time.monotonic() + 10
while True:
    try:
        conn = socket.create_connection((host, port), timeout=5)
        break
    except OSError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"cannot connect to {host}:{port}: {exc}")
        time.sleep(0.2)
with conn, conn.makefile("rwb") as stream:
    for i in range(lines):
        if i:
            time.sleep(hold / (lines - 1))
        sent = f"line {i} of {lines}\\n".encode()
        stream.write(sent)
        stream.flush()
        back = stream.readline()
        if back != sent:
            sys.exit(f"sent {sent!r}, got back {back!r}")
        sys.stdout.write(back.decode())
"""


@dataclass
class Boot:
    proc: subprocess.Popen[bytes]
    ready: Ready
    seconds: float  # wall time from spawn to the readiness line
    cpu_seconds: float  # qemu's CPU time until then


@pytest.fixture(scope="session")
def virtio_guest() -> Guest:
    return build_guest("virtio")


@pytest.fixture(scope="session")
def legacy_guest() -> Guest:
    return build_guest("legacy-nics")


def qemu_argv(ns: str, guest: Guest, log: Path, args: Sequence[str], cmdline: str) -> list[str]:
    return [
        *("ip", "netns", "exec", ns, QEMU),
        *("-nodefaults", "-display", "none", "-serial", f"file:{log}"),
        *("-m", "256", "-accel", "tcg"),
        *("-kernel", str(guest.kernel), "-initrd", str(guest.initrd), "-append", cmdline),
        *args,
    ]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End this qemu by its pid: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def booted(ns: str, guest: Guest, tmp: Path, args: Sequence[str], cmdline: str) -> Iterator[Boot]:
    """Boot the guest in `ns` (`args` add its NIC) until its readiness line; qemu is ended
    afterwards, always."""
    log, errors = tmp / "serial.log", tmp / "qemu.err"
    with errors.open("wb") as err:
        start = time.monotonic()
        argv = qemu_argv(ns, guest, log, args, cmdline)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        try:
            ready = wait_ready(log, READY_TIMEOUT, proc)
        except Exception:
            print(f"--- qemu stderr ---\n{errors.read_text(errors='replace')}")
            raise
        boot = Boot(proc, ready, time.monotonic() - start, cpu_seconds(proc.pid))
        print(f"boot: {boot.seconds:.1f} s wall, {boot.cpu_seconds:.1f} CPU-s, {ready}")
        yield boot
    finally:
        stop(proc)


@contextlib.contextmanager
def running(ns: str, argv: Sequence[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process in `ns` (stdout piped, stderr to `log`), ended by its pid afterwards, always."""
    with log.open("wb") as err:
        argv = ["ip", "netns", "exec", ns, *argv]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    try:
        yield proc
    finally:
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def in_ns(ns: str, argv: Sequence[str], timeout: float = 20) -> str:
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{list(argv)} in {ns}: exit {proc.returncode}\n{proc}"
    return proc.stdout


def tcp_answer(ns: str, host: str, port: int) -> Ready:
    """Connect from inside `ns` and parse the guest's KVT-HELLO."""
    text = in_ns(ns, [sys.executable, "-c", CLIENT, host, str(port), "10"])
    hello = parse_hello(text)
    assert hello is not None, f"not a guest's answer: {text!r}"
    return hello


def qmp(sock: Path, command: str) -> None:
    """One QMP command over qemu's `-qmp unix:SOCK,server=on,wait=off` socket."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(5)
        conn.connect(str(sock))
        stream = conn.makefile("rw")
        stream.readline()  # the greeting
        for execute in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": execute}) + "\n")
            stream.flush()
            while "return" not in (reply := json.loads(stream.readline())):
                assert "error" not in reply, f"QMP {execute}: {reply}"


def ping_argv() -> list[str]:
    return ["ping"] if shutil.which("ping") else ["busybox", "ping"]


def routed_tap(ns: str, bridge: str, tap: str, address: str, prefixlen: int) -> None:
    """A bridge with `address` and a persistent tap enslaved to it, all up, inside `ns`."""
    with IPRoute(netns=ns) as ipr:
        ipr.link("add", ifname=bridge, kind="bridge", br_stp_state=0, br_forward_delay=0)
        ipr.link("add", ifname=tap, kind="tuntap", mode="tap")
        br = ipr.link_lookup(ifname=bridge)[0]
        ipr.link("set", index=ipr.link_lookup(ifname=tap)[0], master=br, state="up")
        ipr.addr("add", index=br, address=address, prefixlen=prefixlen)
        ipr.link("set", index=br, state="up")


def user_nic(model: str, mac: str) -> list[str]:
    forward = f"hostfwd=tcp:127.0.0.1:{HOST_PORT}-:{GUEST_PORT}"
    return ["-netdev", f"user,id=n0,{forward}", "-device", f"{model},netdev=n0,mac={mac}"]


def test_static_address_on_a_routed_tap(netns: str, virtio_guest: Guest, tmp_path: Path) -> None:
    if not Path("/dev/net/tun").exists():
        pytest.skip("the kernel offers no /dev/net/tun: cannot create taps")
    routed_tap(netns, "br0", "tap0", "192.168.105.1", 24)
    mac = "52:54:00:4b:56:01"
    args = ["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"]
    args += ["-device", f"virtio-net-pci,netdev=n0,mac={mac}"]
    cmdline = kernel_cmdline(ip="192.168.105.2/24", gw="192.168.105.1")
    with booted(netns, virtio_guest, tmp_path, args, cmdline) as boot:
        assert boot.ready.facts() == ("192.168.105.2/24", mac, "eth0", "virtio_net")
        assert boot.ready.has_feature(VIRTIO_F_VERSION_1)  # the device's modern interface
        assert tcp_answer(netns, "192.168.105.2", GUEST_PORT) == boot.ready
        in_ns(netns, [*ping_argv(), "-c1", "-W2", "192.168.105.2"])


def test_echo_fetch_and_resolve_on_a_static_guest(
    netns: str, virtio_guest: Guest, tmp_path: Path
) -> None:
    if not Path("/dev/net/tun").exists():
        pytest.skip("the kernel offers no /dev/net/tun: cannot create taps")
    host, guest_ip, probe = "192.168.106.1", "192.168.106.2", "192.168.106.77"
    routed_tap(netns, "br0", "tap0", host, 24)
    dnsmasq = [
        *("dnsmasq", "--conf-file=/dev/null", "--keep-in-foreground", "--pid-file="),
        *("--no-resolv", "--no-hosts", f"--host-record=probe.test,{probe}", "--log-queries"),
        *("--bind-interfaces", f"--listen-address={host}", "--except-interface=lo"),
        "--log-facility=-",
    ]
    server = [sys.executable, "-c", ANSWER_SERVER, host, "8080"]
    args = ["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"]
    args += ["-device", "virtio-net-pci,netdev=n0,mac=52:54:00:4b:56:04"]
    cmdline = kernel_cmdline(
        ip=f"{guest_ip}/24",
        gw=host,
        echo=7000,
        fetch=f"{host}:8080",
        resolve="probe.test",
        dns=host,
    )
    with (
        running(netns, dnsmasq, tmp_path / "dnsmasq.log") as dns,
        running(netns, server, tmp_path / "server.log") as answers,
    ):
        assert answers.stdout is not None and answers.stdout.readline() == b"listening\n"
        with booted(netns, virtio_guest, tmp_path, args, cmdline) as boot:
            log = tmp_path / "serial.log"
            try:
                fetched = wait_for(
                    log, lambda text: parse_fetch(text, f"{host}:8080"), "fetch", 30, boot.proc
                )
                assert fetched == f"OUTSIDE saw {guest_ip}"
                resolved = wait_for(
                    log, lambda text: parse_resolved(text, "probe.test"), "resolve", 30, boot.proc
                )
                assert resolved == probe
                assert dns.poll() is None, "dnsmasq died"
                echo = [sys.executable, "-c", ECHO_CLIENT, guest_ip, "7000"]
                held = in_ns(netns, [*echo, "5", "6"])  # one connection, 6 lines over 5 s
                assert held.splitlines() == [f"line {i} of 6" for i in range(6)]
                again = in_ns(netns, [*echo, "0.5", "3"])  # a second client afterwards
                assert again.splitlines() == [f"line {i} of 3" for i in range(3)]
            finally:
                print(f"--- serial log ---\n{log.read_text(errors='replace')[-3000:]}")
                print(f"--- dnsmasq ---\n{(tmp_path / 'dnsmasq.log').read_text()[-2000:]}")


def test_dhcp_over_user_networking_then_acpi_powerdown(
    netns: str, virtio_guest: Guest, tmp_path: Path
) -> None:
    mac, sock = "52:54:00:4b:56:02", tmp_path / "qmp.sock"
    args = [*user_nic("virtio-net-pci", mac), "-qmp", f"unix:{sock},server=on,wait=off"]
    with booted(netns, virtio_guest, tmp_path, args, kernel_cmdline(dhcp=True)) as boot:
        assert boot.ready.facts() == ("10.0.2.15/24", mac, "eth0", "virtio_net")
        assert boot.ready.has_feature(VIRTIO_F_VERSION_1)  # the device's modern interface
        assert tcp_answer(netns, "127.0.0.1", HOST_PORT) == boot.ready
        qmp(sock, "system_powerdown")  # the guest's /init powers off on the ACPI power button
        assert boot.proc.wait(10) == 0
        assert "KVT-POWEROFF" in (tmp_path / "serial.log").read_text(errors="replace")


@pytest.mark.parametrize(
    ("model", "driver"),
    [("e1000", "e1000"), ("rtl8139", "8139cp"), ("ne2k_pci", "ne2k-pci"), ("pcnet", "pcnet32")],
)
def test_legacy_nic_model_gets_a_lease(
    netns: str, legacy_guest: Guest, tmp_path: Path, model: str, driver: str
) -> None:
    mac = "52:54:00:4b:56:03"
    args = user_nic(model, mac)
    with booted(netns, legacy_guest, tmp_path, args, kernel_cmdline(dhcp=True)) as boot:
        assert boot.ready == Ready("10.0.2.15/24", mac, "eth0", driver)
        assert tcp_answer(netns, "127.0.0.1", HOST_PORT) == boot.ready


def test_kernel_cmdline_takes_exactly_one_address_mode() -> None:
    static = kernel_cmdline(ip="192.168.105.2/24", gw="192.168.105.1")
    assert static == "console=ttyS0 no_timer_check kvt.ip=192.168.105.2/24 kvt.gw=192.168.105.1"
    assert kernel_cmdline(dhcp=True, port=8000) == (
        "console=ttyS0 no_timer_check kvt.dhcp=1 kvt.port=8000"
    )
    with pytest.raises(ValueError):
        kernel_cmdline()
    with pytest.raises(ValueError):
        kernel_cmdline(ip="10.0.0.2/24", dhcp=True)
    with pytest.raises(ValueError):
        kernel_cmdline(ip="10.0.0.2")


def test_kernel_cmdline_carries_the_optional_behaviours() -> None:
    words = kernel_cmdline(
        dhcp=True, echo=7000, fetch="10.0.0.1:80", resolve=["a.test", "b.test"], dns="10.0.0.1"
    ).split()
    assert words[3:] == [
        "kvt.echo=7000",
        "kvt.fetch=10.0.0.1:80",
        "kvt.resolve=a.test",
        "kvt.resolve=b.test",
        "kvt.dns=10.0.0.1",
    ]
    assert kernel_cmdline(dhcp=True, fetch=["h:1", "k:2"]).split()[3:] == [
        "kvt.fetch=h:1",
        "kvt.fetch=k:2",
    ]
    for bad in ({"fetch": "10.0.0.1"}, {"fetch": "a b:80"}, {"fetch": "h:0"}, {"echo": 70000}):
        with pytest.raises(ValueError):
            kernel_cmdline(dhcp=True, **bad)
    with pytest.raises(ValueError):
        kernel_cmdline(dhcp=True, resolve="two words")


def test_console_lines_are_parsed() -> None:
    line = (
        "KVT-READY ip=10.0.2.15/24 mac=52:54:00:4b:56:03 iface=eth0 driver=e1000 queues=1 "
        "features=-\r\n"
    )
    assert parse_ready(f"[    1.0] booting\r\n{line}") == Ready(
        "10.0.2.15/24", "52:54:00:4b:56:03", "eth0", "e1000"
    )
    virtio = parse_ready(
        "KVT-READY ip=10.0.2.15/24 mac=52:54:00:4b:56:03 iface=eth0 driver=virtio_net "
        "queues=2 features=1100000000000000000000100000000000000000000000000000000000000000\r\n"
    )
    assert virtio is not None and virtio.queues == 2
    assert virtio.has_feature(0) and virtio.has_feature(22) and not virtio.has_feature(2)
    assert not virtio.has_feature(64)
    assert parse_ready("[    1.0] booting\r\n") is None
    with pytest.raises(GuestFailed, match="no lease on eth0"):
        parse_ready("KVT-FAILED dhcp: no lease on eth0\r\n")
    with pytest.raises(GuestFailed, match="Kernel panic"):
        parse_ready("[    1.7] Kernel panic - not syncing: No working init found.\r\n")


def test_fetch_and_resolve_lines_are_parsed() -> None:
    text = (
        "KVT-READY ip=10.0.2.15/24 mac=52:54:00:4b:56:03 iface=eth0 driver=e1000 queues=1 "
        "features=-\r\n"
        "KVT-FETCH 10.0.0.1:8080 OUTSIDE saw 10.0.0.1\r\n"
        "~ # KVT-RESOLVED probe.test 10.0.0.77\r\n"
        "KVT-FETCH-FAILED 10.0.0.1:80\r\n"
        "KVT-RESOLVE-FAILED nope.test\r\n"
        "KVT-FETCH 10.0.0.9:80 partial"
    )
    assert parse_fetch(text, "10.0.0.1:8080") == "OUTSIDE saw 10.0.0.1"
    assert parse_fetch(text, "10.0.0.1:808") is None
    assert parse_fetch(text, "10.0.0.9:80") is None  # the line is not complete yet
    with pytest.raises(GuestFailed, match=r"could not fetch from 10\.0\.0\.1:80"):
        parse_fetch(text, "10.0.0.1:80")
    assert parse_resolved(text, "probe.test") == "10.0.0.77"
    assert parse_resolved(text, "probe") is None
    with pytest.raises(GuestFailed, match=r"could not resolve nope\.test"):
        parse_resolved(text, "nope.test")
