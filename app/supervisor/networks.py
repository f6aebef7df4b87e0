"""The network worker: one thread that keeps the managed networks real.

Each pass loads every network and port forward, then
1. turns IP forwarding on while any network exists (it never turns it off: other things on
   the host may rely on it);
2. loads our nftables table in one transaction when the rendering changed, or when a full
   pass finds the live table differs from what we loaded (drift; also rules of ours that
   the database no longer wants); with no network left, the table goes. With networks of two
   or more projects the table also keeps the projects apart (app.domain.nat_rules; the rows
   carry their project_id);
3. keeps one dnsmasq per network: files written, static-lease changes by SIGHUP, other
   changes by a restart (leases survive in the lease file), restarted with backoff when it
   dies, adopted after a daemon restart, and stopped for deleted and orphaned networks;
4. at a full pass, checks each subnet against the host's addresses and connected routes
   that are not ours (a clash is an error on the network until it is gone);
5. compares each VM NIC's fixed address with the lease its MAC holds and withholds the port
   forwards of a NIC that holds another address;
5b. keeps the anti-spoofing rules of the protected NICs (port_security) in our nftables
   `bridge` table, allowing the leases just observed (app.supervisor.port_security);
6. writes status back in one transaction (only what changed) and publishes events.

It wakes on a nudge, when a dnsmasq exits (pidfds in the same poll as the wake pipe), while a
network waits for its link, when a retry is due, and every `resync_interval` for a full pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network
from pathlib import Path
from select import POLLIN, poll
from typing import Any

from app.bus import EventBus
from app.db.models import Network, PortForward
from app.db.repositories import (
    FinishedOperation,
    ForwardOutcome,
    ForwardState,
    NetworkRepository,
    NetworkState,
    NicObservation,
    OperationRepository,
    PortForwardRepository,
    ProtectedNic,
    RowState,
    load_network_state,
    network_referrers,
    orphan_forward_claims,
    own_addresses,
    protected_nics,
    record_forward_outcomes,
    record_nic_addresses,
    record_port_security,
    remove_forwards,
)
from app.db.session import Database, Session
from app.domain import nat_rules
from app.domain.networks import DhcpDnsSpec, clash_reason, foreign_clash, observe_address
from app.domain.retry import Backoff
from app.domain.status import Status
from app.host import dnsmasq, nft
from app.host.addresses import AddressReadError, host_prefixes
from app.host.files import FileProblem, read_bounded
from app.host.netns import enter_for_this_thread
from app.host.procs import read_pid_file
from app.host.sysctl import enable_ip_forwarding
from app.supervisor.faults import FaultLog, describe
from app.supervisor.port_security import PortSecuritySync, plan

log = logging.getLogger(__name__)

RESYNC_INTERVAL = 30.0
WAITING_POLL = 0.2  # while a network waits for its link to settle
PASS_KEY = "pass"  # the backoff key of whole-pass failures
READY_TIMEOUT = 3.0  # dnsmasq writes its pid file once its sockets are bound
NFT_KEY = "nftables"
PORT_SECURITY_KEY = "port-security"
RULES_RECORD = "nft-rules.json"
RECORD_LIMIT = 64 << 20  # bytes
UNKNOWN: Any = object()


@dataclass
class Observed:
    """What this pass found for one network or forward."""

    status: Status
    reason: str | None = None
    settled: bool = True  # the loaded generation is applied (or failed for good)
    dnsmasq_pid: int | None = None
    restarts: int = 0
    gone: bool = False  # deleted: remove the row


@dataclass
class PassResult:
    networks: dict[str, Observed] = field(default_factory=dict)
    forwards: dict[str, Observed] = field(default_factory=dict)
    nics: list[NicObservation] = field(default_factory=list)  # changed lease observations
    # NIC id -> why its anti-spoofing rules are not in place (None: they are), where changed
    port_security: dict[str, str | None] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)


class NetworkWorker:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        run_dir: Path,
        state_dir: Path,
        netns: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        resync_interval: float = RESYNC_INTERVAL,
    ) -> None:
        self.db = db
        self.bus = bus
        self.run_dir = run_dir
        self.state_dir = state_dir
        self.netns = netns
        self.clock = clock
        self.resync_interval = resync_interval
        self.ready = threading.Event()
        self.passes = 0
        self.backoff = Backoff(clock)
        self._pass_backoff = Backoff(clock, base=1.0, cap=resync_interval)
        self.faults = FaultLog(log, clock)
        self._faulted: dict[str, Observed] = {}  # network id -> its report while it fails
        self._procs: dict[str, dnsmasq.Dnsmasq] = {}
        self._exits: dict[str, str] = {}  # network id -> how its dnsmasq last ended
        # network id -> (generation, what was wrong with its pid file) found at adoption
        self._notes: dict[str, tuple[int, str]] = {}
        self._written: dict[str, DhcpDnsSpec] = {}  # network id -> what its files say
        self._clashes: dict[str, str] = {}  # network id -> a foreign use of its subnet
        # the rules we loaded (a digest of their inputs) and the live table as read back after
        # that load (UNKNOWN until a full pass read it)
        self._loaded_key: str | None = None
        self._live_rules: Any = UNKNOWN
        self.port_security = PortSecuritySync(clock)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._full_requested = True
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---- control ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="network-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker; dnsmasq processes keep running (a restarted daemon adopts them)."""
        self._stopping = True
        self.nudge()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the network worker did not stop within %.0fs", timeout)
                return
        for process in self._procs.values():
            process.close()
        self._procs.clear()
        with self._lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def nudge(self) -> None:
        with self._lock:  # never write to a closed (and possibly reused) descriptor
            if self._wake_w >= 0:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"x")

    def resync(self) -> None:
        with self._lock:
            self._full_requested = True
        self.nudge()

    # ---- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        enter_for_this_thread(self.netns)  # nft, sysctl and dnsmasq act in this namespace
        next_full = self.clock()
        waiting = False
        while not self._stopping:
            full = self._next_pass(next_full, waiting)
            if self._stopping:
                break
            try:
                waiting = self._pass(full)
                if full:
                    next_full = self.clock() + self.resync_interval
                    self._pass_backoff.succeeded(PASS_KEY)
                    self.faults.succeeded(PASS_KEY, "the network pass")
                    self.ready.set()
            except Exception as exc:
                # redone by a full resync after a backoff that grows while this persists
                self.faults.failed(PASS_KEY, "the network pass", exc)
                next_full = self.clock() + self._pass_backoff.failed(PASS_KEY)
                self._drop_exited()  # their pidfds would wake the next poll at once
            self.passes += 1

    def _next_pass(self, next_full: float, waiting: bool) -> bool:
        """Sleeps until there is work; True for a full pass."""
        poller = poll()
        poller.register(self._wake_r, POLLIN)
        for process in self._procs.values():
            if process.pidfd >= 0:
                poller.register(process.pidfd, POLLIN)
        now = self.clock()
        wake_at = next_full
        retry_at = self.backoff.next_due()
        if retry_at is not None:
            wake_at = min(wake_at, retry_at)
        if waiting:
            wake_at = min(wake_at, now + WAITING_POLL)
        with self._lock:
            full_requested, self._full_requested = self._full_requested, False
        if full_requested or now >= next_full:
            return True
        if poller.poll(max(0, int((wake_at - now) * 1000))):
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
        return self.clock() >= next_full

    # ---- one pass --------------------------------------------------------------------------

    def _pass(self, full: bool) -> bool:
        """One pass; returns whether a network still waits for its link."""
        with self.db.reading() as session:
            networks, forwards = load_network_state(session)
            own = own_addresses(session) if full else None
            protected = protected_nics(session)
        # a network whose row cannot be read puts no rules in (its link_problem says why)
        live = [n for n in networks if not n.row.deleted and not n.unreadable]
        result = PassResult()
        if own is not None:
            self._check_clashes(live, own)
        withheld = self._observe_addresses(live, result)
        self._sync_port_security(protected, full, result)
        forwards = [_withhold(f, withheld) for f in forwards]
        problem = self._ensure_forwarding() if live else None
        rules_problem = self._sync_rules(live, forwards, full, result)
        problem = problem or rules_problem
        for network in networks:
            observed = self._sync_network_safely(network, problem, full)
            clash = self._clashes.get(network.row.id)
            if clash is not None and not network.row.deleted:
                observed.status, observed.reason, observed.settled = Status.ERROR, clash, True
            result.networks[network.row.id] = observed
        for forward in forwards:
            result.forwards[forward.row.id] = _forward_outcome(forward, rules_problem)
        if full:
            self._sweep_orphans({n.row.id for n in networks})
        for network in networks:
            if network.link_name is None and not network.row.deleted:
                # not synced (no link, or a row that cannot be read): a dnsmasq of it that
                # ended is forgotten here, else its pidfd would wake every poll at once
                self._drop_exited(network.row.id)
        if full or self._news(networks, forwards, result):
            self._write_back(networks, forwards, result)
        else:
            for event in result.events:
                self.bus.publish(**event)
        return any(o.status is Status.PENDING for o in result.networks.values())

    # ---- addresses that must not collide ---------------------------------------------------

    def _check_clashes(self, networks: list[NetworkState], own: dict[str, list[str]]) -> None:
        """At a full pass: each network's subnet against the host's addresses and connected
        routes that are not ours (one that appears after creation is reported on the network
        until it is gone). dnsmasq and the rules stay: guests keep what they have."""
        if not networks:
            self._clashes = {}
            return
        try:
            prefixes = host_prefixes()
        except AddressReadError as exc:
            log.warning("subnet check skipped: %s", exc)
            return
        clashes: dict[str, str] = {}
        for network in networks:
            subnet = IPv4Network(network.service.subnet)
            clash = foreign_clash(subnet, prefixes, own)
            if clash is not None:
                clashes[network.row.id] = clash_reason(subnet, clash)
                if self._clashes.get(network.row.id) != clashes[network.row.id]:
                    log.warning("network %s: %s", network.row.name, clashes[network.row.id])
        self._clashes = clashes

    def _observe_addresses(
        self, networks: list[NetworkState], result: PassResult
    ) -> dict[str, str]:
        """Compares each NIC's fixed address with the lease its MAC holds (dnsmasq's lease
        file); records changes in `result.nics`; returns NIC id -> why forwards to it are
        withheld."""
        withheld: dict[str, str] = {}
        for network in networks:
            if not network.nics:
                continue
            try:
                leases = [
                    (x.mac, x.address) for x in dnsmasq.read_leases(self._paths(network.row.id))
                ]
            except (OSError, ValueError) as exc:
                log.warning("network %s: cannot read its leases: %s", network.row.name, exc)
                continue
            for nic in network.nics:
                observed, reason = observe_address(nic, leases)
                if reason is not None:
                    withheld[nic.nic_id] = reason
                if (observed, reason) != (nic.observed, nic.reason):
                    if reason is not None:
                        log.warning("network %s: %s", network.row.name, reason)
                    result.nics.append(NicObservation(network.row.id, nic, observed, reason))
        return withheld

    def _sync_port_security(
        self, protected: list[ProtectedNic], full: bool, result: PassResult
    ) -> None:
        """The protected NICs' rules (app.supervisor.port_security), with the leases this
        pass observed; records each NIC's changed reason. Something unexpected is logged
        and retried at the next full pass; the networks' pass goes on."""
        leased = {o.nic_id: o.observed_ipv4 for o in result.nics}
        planned = [plan(n, leased.get(n.nic_id, n.observed_ipv4)) for n in protected]
        try:
            reasons = self.port_security.sync(planned, full)
        except Exception as exc:
            self.faults.failed(PORT_SECURITY_KEY, "the port security rules", exc)
            self.port_security.loaded = None
            return
        self.faults.succeeded(PORT_SECURITY_KEY, "the port security rules")
        for nic in protected:
            reason = reasons.get(nic.nic_id)
            if reason != nic.reason:
                result.port_security[nic.nic_id] = reason

    @staticmethod
    def _news(
        networks: list[NetworkState], forwards: list[ForwardState], result: PassResult
    ) -> bool:
        """Whether the pass found anything the rows do not say yet (a quiet pass writes
        nothing, so it never waits for the database's write lock)."""
        if result.nics or result.port_security:
            return True
        for network in networks:
            observed = result.networks[network.row.id]
            if not _already_recorded(network.row, observed) or (
                network.dnsmasq_pid,
                network.restarts,
            ) != (observed.dnsmasq_pid, observed.restarts):
                return True
        return any(not _already_recorded(f.row, result.forwards[f.row.id]) for f in forwards)

    # ---- IP forwarding ---------------------------------------------------------------------

    def _ensure_forwarding(self) -> str | None:
        try:
            if enable_ip_forwarding():
                log.info("turned on IPv4 forwarding (net.ipv4.ip_forward=1) for managed networks")
        except OSError as exc:
            return f"cannot turn on IP forwarding: {exc}"
        return None

    # ---- nftables --------------------------------------------------------------------------

    def _sync_rules(
        self,
        networks: list[NetworkState],
        forwards: list[ForwardState],
        full: bool,
        result: PassResult,
    ) -> str | None:
        """Loads our table when the rules changed, or on a full pass when the live table is not
        what we loaded (drift); returns why it could not be loaded, if it could not."""
        nat_networks = sorted((n.nat for n in networks), key=lambda n: n.id)
        specs = sorted(
            (f.spec for f in forwards if f.spec is not None and not f.row.deleted),
            key=lambda f: f.id,
        )
        key = hashlib.sha256(repr((nat_networks, specs)).encode()).hexdigest()
        if not self.backoff.due(NFT_KEY):
            return "retrying nftables"
        try:
            if self._loaded_key is None:  # what a previous daemon loaded, if anything
                self._loaded_key, self._live_rules = self._read_record()
            unchanged = key == self._loaded_key
            if unchanged and not (full and self._drifted(nat_networks, specs, networks, result)):
                return None
            nft.load(nat_rules.render(nat_networks, specs) or nat_rules.removal())
        except nft.NftError as exc:
            delay = self.backoff.failed(NFT_KEY)
            log.warning("nftables: %s (retrying in %.1fs)", exc, delay)
            return f"nftables: {exc}"
        self.backoff.succeeded(NFT_KEY)
        # the live table is read back at the next full pass (not now: a batch of changes
        # would pay for reading thousands of rules after every load)
        self._loaded_key, self._live_rules = key, UNKNOWN
        self._write_record()
        return None

    def _drifted(
        self,
        nat_networks: list[nat_rules.NatNetwork],
        specs: list[nat_rules.Forward],
        networks: list[NetworkState],
        result: PassResult,
    ) -> bool:
        """Whether the live table differs from the one we loaded. The first read after a load
        becomes the reference once it holds exactly the rules we loaded (by their comments)."""
        live = nft.list_table()
        live_rules = nat_rules.canonical(live) if live is not None else None
        if self._live_rules is UNKNOWN:
            wanted = nat_rules.rule_comments(nat_networks, specs)
            if nat_rules.live_comments(live or []) == wanted and (live is None) == (not wanted):
                self._live_rules = live_rules
                self._write_record()
                return False
        elif live_rules == self._live_rules:
            return False
        log.warning("our nftables table drifted from what we loaded; loading it again")
        result.events.append(_drift_event(networks))
        return True

    def _record_path(self) -> Path:
        return self.state_dir / RULES_RECORD

    def _read_record(self) -> tuple[str | None, Any]:
        """What a previous daemon loaded: adopting an unchanged table needs no reload."""
        try:
            data = read_bounded(self._record_path(), RECORD_LIMIT)
            record = json.loads(data) if data is not None else None
        except (FileProblem, ValueError) as exc:  # a damaged record: load the table again
            log.warning("ignoring the nftables record: %s", exc)
            return None, UNKNOWN
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            return None, UNKNOWN
        live = record.get("live") if record.get("live_known") is True else UNKNOWN
        return record["key"], live

    def _write_record(self) -> None:
        known = self._live_rules is not UNKNOWN
        record = {
            "key": self._loaded_key,
            "live_known": known,
            "live": self._live_rules if known else None,
        }
        path = self._record_path()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_name(path.name + ".new")
        temporary.write_text(json.dumps(record))
        os.replace(temporary, path)

    # ---- dnsmasq ---------------------------------------------------------------------------

    def _paths(self, network_id: str) -> dnsmasq.DnsmasqPaths:
        return dnsmasq.DnsmasqPaths.of(self.run_dir, self.state_dir, network_id)

    def _sync_network_safely(
        self, network: NetworkState, problem: str | None, full: bool
    ) -> Observed:
        """One network; something unexpected is recorded on it and retried with backoff,
        and the pass goes on with the others."""
        row = network.row
        what = f"network {row.name}"
        faulted = self._faulted.get(row.id)
        if faulted is not None and not self.backoff.due(row.id):
            return faulted
        try:
            observed = self._sync_network(network, problem, full)
        except Exception as exc:
            self.faults.failed(row.id, what, exc)
            self.backoff.failed(row.id)
            self._drop_exited(row.id)
            self._faulted[row.id] = Observed(Status.ERROR, describe(exc))
            return self._faulted[row.id]
        if self._faulted.pop(row.id, None) is not None:
            self.backoff.succeeded(row.id)
        self.faults.succeeded(row.id, what)
        return observed

    def _drop_exited(self, network_id: str | None = None) -> None:
        """Forget dnsmasq processes that ended (of one network, or all): a pidfd that stays
        readable would make every poll return at once."""
        for key, process in list(self._procs.items()):
            if network_id not in (None, key):
                continue
            try:
                ended = process.exited()
            except Exception:  # cannot tell: forget it; the next pass adopts or starts one
                ended = True
            if ended:
                with contextlib.suppress(Exception):
                    self._exits[key] = self._exit_reason(process)
                del self._procs[key]
                process.close()

    def _sync_network(self, network: NetworkState, problem: str | None, full: bool) -> Observed:
        row = network.row
        if row.deleted:
            self._stop_dnsmasq(row.id)
            dnsmasq.remove_files(self._paths(row.id))
            self._written.pop(row.id, None)
            self.backoff.succeeded(row.id)
            return Observed(Status.DELETING, gone=True)
        if network.link_name is None:
            return Observed(Status.ERROR, network.link_problem)
        observed = self._sync_dnsmasq(network, full)
        if problem is not None and observed.status is not Status.ERROR:
            observed.status, observed.reason = Status.ERROR, problem
        elif network.link_problem is not None and observed.status is Status.ACTIVE:
            observed.status, observed.reason, observed.settled = (
                Status.PENDING,
                network.link_problem,
                False,
            )
        return observed

    def _sync_dnsmasq(self, network: NetworkState, full: bool) -> Observed:
        row = network.row
        paths = self._paths(row.id)
        restarts = network.restarts
        if full or self._written.get(row.id) != network.service:
            # files are compared with what they should say only when that changed (or at a
            # full pass, which also repairs files changed behind our back)
            changes = dnsmasq.write_files(network.service, paths)
            self._written[row.id] = network.service
        else:
            changes = dnsmasq.FileChanges(conf=False, hosts=False)
        process = self._procs.get(row.id) or self._adopt(row.id, row.generation, paths)
        if process is not None and process.exited():
            self._exits[row.id] = self._exit_reason(process)
            log.warning("dnsmasq of network %s %s", row.name, self._exits[row.id])
            del self._procs[row.id]
            process = None
            restarts += 1
            self.backoff.failed(row.id)
        if process is not None and changes.conf:
            log.info("restarting dnsmasq of network %s: its configuration changed", row.name)
            self._stop_dnsmasq(row.id)
            process = None
        elif process is not None and changes.hosts:
            process.reload()
        if process is None:
            if not dnsmasq.interface_exists(network.service.interface):
                # its link is not there yet (a VLAN's L3 interface, a bridge being made):
                # started once it is, never for a missing interface
                reason = network.link_problem or f"{network.service.interface} does not exist"
                return Observed(Status.PENDING, reason, settled=False, restarts=restarts)
            if not self.backoff.due(row.id):
                reason = f"dnsmasq {self._exits.get(row.id, 'is down')}; restarting soon"
                return Observed(Status.ERROR, reason, settled=False, restarts=restarts)
            started = self._start(row.id, paths)
            if isinstance(started, str):
                self.backoff.failed(row.id)
                return Observed(Status.ERROR, started, restarts=restarts)
            process = started
        return Observed(
            Status.ACTIVE,
            self._note(row.id, row.generation),
            dnsmasq_pid=process.pid,
            restarts=restarts,
        )

    def _note(self, network_id: str, generation: int) -> str | None:
        """What went wrong with a file of the network that was healed since (shown with its
        `active` status until the network's next change)."""
        note = self._notes.get(network_id)
        if note is None:
            return None
        if note[0] != generation:
            del self._notes[network_id]
            return None
        return f"recovered: {note[1]}"

    def _adopt(
        self, network_id: str, generation: int, paths: dnsmasq.DnsmasqPaths
    ) -> dnsmasq.Dnsmasq | None:
        """The running dnsmasq of a network this worker does not hold yet. What was wrong with
        its pid file stays on the network's status_reason until its next generation."""
        found = dnsmasq.adopt(network_id, paths)
        if found.problem is not None:
            self._notes[network_id] = (generation, found.problem)
        if found.process is not None:
            self._procs[network_id] = found.process
        return found.process

    def _start(self, network_id: str, paths: dnsmasq.DnsmasqPaths) -> dnsmasq.Dnsmasq | str:
        """A running dnsmasq, or why it did not come up (with its last words)."""
        try:
            dnsmasq.remove_pid_file(paths)
        except OSError as exc:
            return f"cannot remove {paths.pidfile}: {exc.strerror}"
        try:
            process = dnsmasq.start(network_id, paths)
        except dnsmasq.DnsmasqError as exc:
            return str(exc)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if process.exited():
                return self._exit_reason(process)
            if read_pid_file(paths.pidfile).pid == process.pid:
                break
            time.sleep(0.01)
        self._procs[network_id] = process
        return process

    @staticmethod
    def _exit_reason(process: dnsmasq.Dnsmasq) -> str:
        tail = dnsmasq.output_tail(process.paths, lines=4)
        return f"dnsmasq {process.describe_exit()}" + (f": {tail}" if tail else "")

    def _stop_dnsmasq(self, network_id: str) -> None:
        process = self._procs.pop(network_id, None) or (
            dnsmasq.adopt(network_id, self._paths(network_id)).process
        )
        self._notes.pop(network_id, None)
        if process is not None:
            try:
                process.stop()
            finally:
                process.close()

    def _sweep_orphans(self, known: set[str]) -> None:
        """dnsmasq processes and files of networks the database does not know."""
        root = self.run_dir / "networks"
        if not root.is_dir():
            return
        for entry in root.iterdir():
            if entry.is_dir() and entry.name not in known:
                log.info("removing orphaned network %s (dnsmasq and files)", entry.name)
                self._stop_dnsmasq(entry.name)
                dnsmasq.remove_files(self._paths(entry.name))

    # ---- writing back ----------------------------------------------------------------------

    @staticmethod
    def _write_forwards(
        session: Session,
        forwards: list[ForwardState],
        result: PassResult,
        events: list[dict[str, Any]],
        finished: list[FinishedOperation],
    ) -> None:
        gone: list[str] = []
        changed: list[ForwardOutcome] = []
        for forward in forwards:
            loaded, observed = forward.row, result.forwards[forward.row.id]
            if observed.gone:
                gone.append(loaded.id)
                finished.append(FinishedOperation(loaded.id, loaded.generation, "succeeded"))
                events.append(_event(loaded, "deleted", "deleted", None, loaded.generation))
                continue
            if _already_recorded(loaded, observed):
                continue
            status = Status.DELETING if loaded.deleted else observed.status
            generation = loaded.generation if observed.settled else loaded.observed_generation
            changed.append(
                ForwardOutcome(
                    loaded.id, loaded.generation, status.value, observed.reason, generation
                )
            )
            events.append(_event(loaded, status.value, status.value, observed.reason, generation))
            if observed.settled and not loaded.deleted:
                outcome = "succeeded" if status is Status.ACTIVE else "failed"
                finished.append(
                    FinishedOperation(loaded.id, loaded.generation, outcome, observed.reason)
                )
        record_forward_outcomes(session, changed)
        remove_forwards(session, gone)

    def _write_back(
        self, networks: list[NetworkState], forwards: list[ForwardState], result: PassResult
    ) -> None:
        events = list(result.events)
        finished: list[FinishedOperation] = []
        with self.db.unit_of_work() as session:
            network_rows = {r.id: r for r in NetworkRepository(session).all()}
            # forwards first (in bulk): a network row goes only after the forwards of it
            self._write_forwards(session, forwards, result, events, finished)
            for network in networks:
                observed = result.networks[network.row.id]
                row = network_rows.get(network.row.id)
                if row is not None:
                    event = _record(session, row, network.row, observed, finished, "network")
                    if event is not None:
                        events.append(event)
                    if not observed.gone:
                        row.dnsmasq_pid, row.restarts = observed.dnsmasq_pid, observed.restarts
            record_nic_addresses(session, result.nics)
            record_port_security(session, result.port_security)
            events += _address_events(network_rows, result.nics)
            orphan_forward_claims(session)
            OperationRepository(session).finish(finished)
        for event in events:
            self.bus.publish(**event)


def _event(
    loaded: RowState, what: str, status: str, reason: str | None, observed_generation: int
) -> dict[str, Any]:
    return {
        "type": f"port_forward.{what}",
        "resource": "port_forward",
        "resource_id": loaded.id,
        "name": loaded.name,
        "project_id": loaded.project_id,
        "status": status,
        "status_reason": reason,
        "generation": loaded.generation,
        "observed_generation": observed_generation,
    }


def _already_recorded(loaded: RowState, observed: Observed) -> bool:
    if observed.gone:
        return False
    status = Status.DELETING if loaded.deleted else observed.status
    generation = loaded.generation if observed.settled else loaded.observed_generation
    recorded = (loaded.status, loaded.status_reason, loaded.observed_generation)
    return recorded == (status.value, observed.reason, generation)


def _address_events(
    rows: dict[str, Network], observations: list[NicObservation]
) -> list[dict[str, Any]]:
    """`network.nic_address`: a NIC's MAC holds another address than before (`data` says
    which, and the problem when it is not the NIC's fixed one)."""
    events = []
    for observation in observations:
        row = rows.get(observation.network_id)
        if row is not None and not row.deleted:
            fields = row.event_fields("network", "nic_address")
            events.append({**fields, "data": observation.event_data()})
    return events


def _withhold(forward: ForwardState, withheld: dict[str, str]) -> ForwardState:
    """A forward whose target NIC holds another address than its fixed one gets no rule: the
    fixed address may be a stranger's."""
    reason = withheld.get(forward.nic_id or "")
    if reason is None or forward.row.deleted:
        return forward
    return replace(forward, spec=None, withheld=reason)


def _forward_outcome(forward: ForwardState, rules_problem: str | None) -> Observed:
    if forward.row.deleted:
        if rules_problem is not None:
            return Observed(Status.DELETING, rules_problem, settled=False)
        return Observed(Status.DELETING, gone=True)
    if rules_problem is not None:
        return Observed(Status.ERROR, rules_problem)
    if forward.withheld is not None:
        return Observed(Status.ERROR, forward.withheld)
    if forward.spec is None:
        return Observed(Status.ERROR, "its target NIC has no address on the network")
    return Observed(Status.ACTIVE)


def _drift_event(networks: list[NetworkState]) -> dict[str, Any]:
    return {
        "type": "network.drift_repaired",
        "resource": "network",
        "resource_id": networks[0].row.id if networks else None,
        "name": networks[0].row.name if networks else None,
        "status": Status.ACTIVE.value,
        "status_reason": "our nftables table had drifted from the desired rules",
        "generation": networks[0].row.generation if networks else 0,
        "observed_generation": networks[0].row.observed_generation if networks else 0,
    }


def _record(
    session: Session,
    row: Network | PortForward,
    loaded: RowState,
    observed: Observed,
    finished: list[FinishedOperation],
    resource: str,
) -> dict[str, Any] | None:
    """Write one outcome onto its row; the event to publish when something changed."""
    if observed.gone:
        if not row.deleted:
            return None
        waiting = network_referrers(session, row.id) if isinstance(row, Network) else []
        if waiting:  # never fail the pass on a foreign key: the row goes after them
            reason = f"waiting for {', '.join(waiting[:5])} to go"
            if row.status_reason == reason:
                return None
            row.status_reason = reason
            return row.event_fields(resource)
        finished.append(FinishedOperation(row.id, row.generation, "succeeded"))
        if isinstance(row, Network):
            NetworkRepository(session).remove(row)
        else:
            PortForwardRepository(session).remove(row)
        return row.event_fields(
            resource, "deleted", status="deleted", observed_generation=row.generation
        )
    before = (row.status, row.status_reason, row.observed_generation)
    current = row.generation == loaded.generation  # else changed during the pass: next one
    status = observed.status if current else Status.PENDING
    if row.deleted:
        status = Status.DELETING
    row.status, row.status_reason = status.value, observed.reason
    if observed.settled:
        row.observed_generation = loaded.generation
    after = (row.status, row.status_reason, row.observed_generation)
    if after == before:
        return None
    if observed.settled and current and not row.deleted:
        outcome = "succeeded" if status is Status.ACTIVE else "failed"
        finished.append(FinishedOperation(row.id, loaded.generation, outcome, observed.reason))
    return row.event_fields(resource)
