"""dnsmasq per managed network: its configuration files, the process, and its leases.

Each network has a directory `<run_dir>/networks/<id>/` with dnsmasq.conf, the static leases
(dhcp-hosts, one `MAC,ADDRESS[,NAME]` per line), the DNS names (addn-hosts) and dnsmasq's
output (dnsmasq.log); the lease database lives in `<state_dir>/networks/<id>/` so that it
survives reboots. dnsmasq binds only to the network's link (`interface=`, `bind-dynamic`,
`except-interface=lo`), so it never competes with a resolver on the host's port 53, and
drops root for nobody after opening its sockets and lease file (unless nobody could not reach
the run directory to re-read the host files: then it keeps root).

Static leases and names change with SIGHUP (dnsmasq re-reads dhcp-hostsfile and addn-hosts
and keeps its leases); any other change restarts it, and the lease file carries the leases
across. dnsmasq runs in its own session, so it outlives a daemon restart; the restarted
daemon recognises it by its pid file and its command line (which names the config file),
and watches it through a pidfd.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import grp
import logging
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from app.domain.networks import DhcpDnsSpec
from app.host.errors import HostError
from app.host.files import FileProblem, read_bounded, remove
from app.host.procs import (
    Held,
    ProcFacts,
    find,
    hold,
    in_this_netns,
    pidfd_exited,
    read_pid_file,
)

log = logging.getLogger(__name__)

DNSMASQ = "dnsmasq"
USER = "nobody"
DIR_MODE = 0o755  # dnsmasq re-reads the host files as nobody
FILE_MODE = 0o644
LOG_LIMIT = 1 << 20
STOP_TIMEOUT = 5.0
TAIL_LINES = 12
LEASES_LIMIT = 64 << 20  # bytes; a /16 of leases takes about 6 MiB
MAX_EXPIRY = 253402300799  # 9999-12-31T23:59:59Z: later is garbage (datetime cannot hold it)
MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


@dataclass(frozen=True)
class DnsmasqPaths:
    run_dir: Path  # <run_dir>/networks/<id>
    state_dir: Path  # <state_dir>/networks/<id>

    @classmethod
    def of(cls, run_dir: Path, state_dir: Path, network_id: str) -> DnsmasqPaths:
        return cls(run_dir / "networks" / network_id, state_dir / "networks" / network_id)

    @property
    def conf(self) -> Path:
        return self.run_dir / "dnsmasq.conf"

    @property
    def dhcp_hosts(self) -> Path:
        return self.run_dir / "dhcp-hosts"

    @property
    def dns_hosts(self) -> Path:
        return self.run_dir / "addn-hosts"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "dnsmasq.pid"

    @property
    def log(self) -> Path:
        return self.run_dir / "dnsmasq.log"

    @property
    def leases(self) -> Path:
        return self.state_dir / "dnsmasq.leases"


def _group() -> str:
    for name in ("nogroup", "nobody"):
        with contextlib.suppress(KeyError):
            grp.getgrnam(name)
            return name
    return "0"


def others_can_enter(directory: Path) -> bool:
    """Whether an unprivileged user can walk down to `directory` (to re-read the host files
    after SIGHUP, dnsmasq needs that once it dropped root)."""
    return all(
        d.stat().st_mode & stat.S_IXOTH for d in (directory, *directory.parents) if d.exists()
    )


def render_conf(spec: DhcpDnsSpec, paths: DnsmasqPaths, user: str = USER) -> str:
    """dnsmasq.conf for one network (everything else on the command line is fixed)."""
    subnet = IPv4Network(spec.subnet)
    lines = [
        f"# written by kvmnetd for network {spec.network_id}; changes are overwritten",
        f"interface={spec.interface}",
        "except-interface=lo",
        "bind-dynamic",
        "strict-order",
        "no-hosts",
        f"pid-file={paths.pidfile}",
        f"user={user}",
        f"group={_group() if user == USER else 'root'}",
        "log-facility=-",
        f"addn-hosts={paths.dns_hosts}",
    ]
    if spec.domain:
        lines += [f"domain={spec.domain}", f"local=/{spec.domain}/", "expand-hosts"]
    if spec.dhcp:
        lines += [
            f"dhcp-range={spec.range_start},{spec.range_end},{subnet.netmask},{spec.lease_seconds}",
            f"dhcp-option=option:router,{spec.gateway}",
            _dns_servers(spec),
            *_classless_routes(spec),
            "dhcp-authoritative",
            "dhcp-no-override",
            # the whole subnet, not the hosts' count: that would restart dnsmasq on every change
            f"dhcp-lease-max={subnet.num_addresses}",
            f"dhcp-leasefile={paths.leases}",
            f"dhcp-hostsfile={paths.dhcp_hosts}",
        ]
    return "\n".join(lines) + "\n"


def _dns_servers(spec: DhcpDnsSpec) -> str:
    """DHCP option 6 (RFC 2132 3.8): the network's nameservers, else the gateway, where
    this dnsmasq answers DNS."""
    servers = spec.nameservers or (spec.gateway,)
    return "dhcp-option=option:dns-server," + ",".join(str(s) for s in servers)


def _classless_routes(spec: DhcpDnsSpec) -> list[str]:
    """DHCP option 121 (RFC 3442) as dnsmasq writes it: `destination/len,router` pairs in
    one option (dnsmasq encodes the compact destinations itself; dnsmasq.conf.example).
    spec.routes already holds the default route through the gateway when any route is
    given (app.domain.networks.classless_routes). Windows has asked for option 121 since
    Vista, so Microsoft's pre-RFC option 249 is not sent."""
    if not spec.routes:
        return []
    pairs = ",".join(f"{r.destination},{r.nexthop}" for r in spec.routes)
    return [f"dhcp-option=option:classless-static-route,{pairs}"]


def render_dhcp_hosts(spec: DhcpDnsSpec) -> str:
    lines = []
    for host in spec.hosts:
        fields = [host.mac, str(host.address)]
        if host.hostname:
            fields.append(host.hostname)
        lines.append(",".join(fields))
    return "".join(f"{line}\n" for line in lines)


def render_dns_hosts(spec: DhcpDnsSpec) -> str:
    return "".join(f"{h.address} {h.hostname}\n" for h in spec.hosts if h.hostname)


def _write_if_changed(path: Path, text: str) -> bool:
    """Whatever is at `path` (garbage, a FIFO, a directory, a link) is replaced unless it is
    a regular file saying `text`: the run directory is ours."""
    data = text.encode()
    try:
        if read_bounded(path, len(data)) == data:
            return False
    except FileProblem as exc:  # longer (a change), or not a regular file
        log.debug("replacing: %s", exc)
    _clear(path)
    temporary = path.with_name(f".{path.name}.new")
    _clear(temporary)
    temporary.write_text(text)
    os.chmod(temporary, FILE_MODE)
    os.replace(temporary, path)
    return True


@dataclass(frozen=True)
class FileChanges:
    conf: bool
    hosts: bool


def write_files(spec: DhcpDnsSpec, paths: DnsmasqPaths) -> FileChanges:
    """Brings the network's files up to date; says which of them changed."""
    for directory in (paths.run_dir.parent, paths.run_dir):
        directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        os.chmod(directory, DIR_MODE)
    paths.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    hosts = _write_if_changed(paths.dhcp_hosts, render_dhcp_hosts(spec))
    hosts = _write_if_changed(paths.dns_hosts, render_dns_hosts(spec)) or hosts
    user = USER if others_can_enter(paths.run_dir) else "root"
    conf = _write_if_changed(paths.conf, render_conf(spec, paths, user))
    if conf and user == "root":
        log.warning(
            "dnsmasq of network %s keeps root: %s cannot be entered by %s (make the run "
            "directory's parents o+x to let it drop privileges)",
            spec.network_id,
            paths.run_dir,
            USER,
        )
    return FileChanges(conf=conf, hosts=hosts)


def _set_aside_unless_regular(path: Path) -> None:
    """dnsmasq cannot use a lease file that is a directory, FIFO or link (it would fail to
    start, or block): that one is renamed to `<name>.bad` and dnsmasq starts a new one."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(path.lstat().st_mode):
            aside = path.with_name(path.name + ".bad")
            remove(aside)
            log.warning("%s is not a regular file: renamed to %s", path, aside.name)
            os.replace(path, aside)


def _clear(path: Path) -> None:
    """Removes a directory found where a file of ours belongs (a file or link is replaced
    by os.replace itself)."""
    if path.is_dir() and not path.is_symlink():
        remove(path)


def remove_files(paths: DnsmasqPaths) -> None:
    """Forgets a deleted network's files (its leases too), whatever else was put there."""
    for directory in (paths.run_dir, paths.state_dir):
        remove(directory)


# ---- the process ----------------------------------------------------------------------------


class DnsmasqError(HostError):
    """dnsmasq could not be started (its argv and last words are in the message)."""


def argv_for(paths: DnsmasqPaths) -> list[str]:
    return [DNSMASQ, "--keep-in-foreground", f"--conf-file={paths.conf}"]


class Dnsmasq:
    """A running dnsmasq of one network: started by us (a child) or adopted after a restart."""

    def __init__(
        self, network_id: str, paths: DnsmasqPaths, pid: int, pidfd: int, child: bool
    ) -> None:
        self.network_id = network_id
        self.paths = paths
        self.pid = pid
        self.pidfd = pidfd
        self.child = child
        self.returncode: int | None = None

    def __repr__(self) -> str:
        return f"<dnsmasq of network {self.network_id} pid {self.pid}>"

    def exited(self) -> bool:
        if self.returncode is not None:
            return True
        if self.pidfd < 0 or not pidfd_exited(self.pidfd):
            return False
        self._reap()
        return True

    def _reap(self) -> None:
        code: int | None = None
        if self.child:
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(self.pid, 0)
                code = os.waitstatus_to_exitcode(status)
        self.returncode = code if code is not None else -1
        self.close()

    def describe_exit(self) -> str:
        code = self.returncode
        if code is None:
            return "running"
        if code < -1:
            return f"killed by {signal.Signals(-code).name}"
        return "exited" if code == -1 else f"exited with status {code}"

    def reload(self) -> None:
        """SIGHUP: re-read the static leases and DNS names; leases are kept."""
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGHUP)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL after `timeout`; returns once it is gone."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
            if self.exited():
                return
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.exited():
                    return
                time.sleep(0.02)
        raise DnsmasqError(f"{self!r} did not exit after SIGKILL")

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def _open_log(paths: DnsmasqPaths) -> int:
    with contextlib.suppress(FileNotFoundError):
        found = paths.log.lstat()
        if not stat.S_ISREG(found.st_mode):  # not a log: ours to remove
            log.warning("removing %s: not a regular file", paths.log)
            remove(paths.log)
        elif found.st_size > LOG_LIMIT:
            os.replace(paths.log, paths.log.with_name(paths.log.name + ".1"))
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(paths.log, flags, 0o640)


def interface_exists(name: str) -> bool:
    """Whether the calling thread's network namespace has a link `name` (if_nametoindex(3)).
    dnsmasq given `--interface` of a link that does not exist yet starts all the same and
    serves nothing there: it is started once the link is there."""
    if not name:
        return False
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def start(network_id: str, paths: DnsmasqPaths) -> Dnsmasq:
    """Starts dnsmasq in the calling thread's network namespace, in a session of its own."""
    argv = argv_for(paths)
    try:
        _set_aside_unless_regular(paths.leases)
        log_fd = _open_log(paths)
    except OSError as exc:
        raise DnsmasqError(f"cannot prepare {exc.filename}: {exc.strerror}") from None
    try:
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        os.write(log_fd, f"--- kvmnetd starts dnsmasq at {stamp}\n".encode())
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"},
        )
    except OSError as exc:
        raise DnsmasqError(f"{' '.join(argv)}: {exc}") from None
    finally:
        os.close(log_fd)
    pidfd = os.pidfd_open(child.pid)
    child.returncode = 0  # reaped through the pidfd, never by Popen
    log.info("dnsmasq for network %s runs as pid %d", network_id, child.pid)
    return Dnsmasq(network_id, paths, child.pid, pidfd, child=True)


@dataclass(frozen=True)
class Adoption:
    """What adopt() found: the running dnsmasq of a network (or None), and what was wrong
    with its pid file, if anything (for the network's status_reason)."""

    process: Dnsmasq | None
    problem: str | None = None


def _identity(paths: DnsmasqPaths) -> Callable[[ProcFacts], str | None]:
    wanted = f"--conf-file={paths.conf}"

    def check(facts: ProcFacts) -> str | None:
        if wanted not in facts.argv or os.path.basename(facts.argv[0]) != DNSMASQ:
            return f"pid {facts.pid} is not this network's dnsmasq ({shlex.join(facts.argv)[:80]})"
        if facts.state == "Z":
            return f"pid {facts.pid} has exited"
        if not in_this_netns(facts.pid):
            return f"pid {facts.pid} runs in another network namespace"
        return None

    return check


def adopt(network_id: str, paths: DnsmasqPaths) -> Adoption:
    """The dnsmasq a previous daemon started for this network, if it still runs. Its pid file
    is only a hint: a pid is taken only when /proc shows that process runs dnsmasq with this
    network's configuration file in this namespace. When the pid file is missing, garbage or
    names another process, the process is looked for by that command line instead (and the
    pid file is rewritten), so a damaged pid file never leads to a second dnsmasq fighting
    the first one for its sockets."""
    identity = _identity(paths)
    said = read_pid_file(paths.pidfile)
    problem = said.problem
    if said.pid is not None:
        held = hold(said.pid, identity)
        if isinstance(held, Held):
            log.info("adopted dnsmasq pid %d of network %s", held.pid, network_id)
            return Adoption(Dnsmasq(network_id, paths, held.pid, held.pidfd, child=False))
        problem = f"pid file {paths.pidfile}: {held}"
    for facts in find(identity):
        held = hold(facts.pid, identity)
        if isinstance(held, Held):
            _rewrite_pid_file(paths, held.pid)
            note = f"{problem}; adopted the running dnsmasq pid {held.pid}" if problem else None
            log.warning("network %s: %s", network_id, note or f"adopted dnsmasq {held.pid}")
            return Adoption(Dnsmasq(network_id, paths, held.pid, held.pidfd, child=False), note)
    if problem is not None:
        log.warning("network %s: %s; no dnsmasq of it runs", network_id, problem)
    return Adoption(None, problem)


def remove_pid_file(paths: DnsmasqPaths) -> None:
    """Before a start: dnsmasq writes it once its sockets are bound (whatever was there,
    a file, a link or a directory, goes)."""
    remove(paths.pidfile)


def _rewrite_pid_file(paths: DnsmasqPaths, pid: int) -> None:
    with contextlib.suppress(OSError):  # only a hint for the next adoption
        _clear(paths.pidfile)
        temporary = paths.pidfile.with_name(f".{paths.pidfile.name}.new")
        temporary.write_text(f"{pid}\n")
        os.replace(temporary, paths.pidfile)


def output_tail(paths: DnsmasqPaths, lines: int = TAIL_LINES) -> str:
    try:
        fd = os.open(paths.log, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return ""
            f.seek(max(0, f.seek(0, os.SEEK_END) - 200 * lines))
            text = f.read().decode(errors="replace")
    except OSError:  # missing, or not something to read
        return ""
    return "\n".join(text.splitlines()[-lines:])


# ---- leases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lease:
    mac: str
    address: str
    hostname: str | None
    expires_at: dt.datetime | None  # None: an infinite lease


def read_leases(paths: DnsmasqPaths, now: float | None = None) -> list[Lease]:
    """The active leases from dnsmasq's lease file: `EXPIRY MAC IP NAME CLIENT-ID` lines
    (dnsmasq's lease.c). Lines that are not such a lease (IPv6 and duid lines, and anything
    damaged: a bad MAC, address or expiry, binary) are skipped; a file that cannot be read
    (not a regular file, larger than LEASES_LIMIT) reads as no leases."""
    current = time.time() if now is None else now
    try:
        data = read_bounded(paths.leases, LEASES_LIMIT)
    except FileProblem as exc:
        log.warning("lease file ignored: %s", exc)
        return []
    if data is None:
        return []
    leases = []
    for line in data.decode(errors="replace").splitlines():
        lease = _lease(line.split(), current)
        if lease is not None:
            leases.append(lease)
    return leases


def _lease(fields: list[str], now: float) -> Lease | None:
    if len(fields) < 4 or not (fields[0].isascii() and fields[0].isdigit()):
        return None
    expiry = int(fields[0])
    mac = fields[1].lower()
    if not MAC.fullmatch(mac) or (expiry and expiry < now) or expiry > MAX_EXPIRY:
        return None
    try:
        address = str(IPv4Address(fields[2]))
    except ValueError:
        return None  # IPv6 leases, and garbage
    name = fields[3]
    return Lease(
        mac=mac,
        address=address,
        hostname=None if name == "*" or not name.isprintable() else name,
        expires_at=dt.datetime.fromtimestamp(expiry, dt.UTC) if expiry else None,
    )
