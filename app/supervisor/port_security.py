"""Keeps our nftables `bridge kvmnetd` table equal to the protected NICs (port_security on),
one part of the network worker's pass (it knows the leases the rules allow).

- A quiet pass compares the wanted rules with what it loaded last and loads only the NICs
  that changed (their chain and map element) and removes the chains of NICs that went, in
  one transaction (app.domain.port_security.render_changes): no other chain is touched, so
  no other NIC's counters restart.
- A full pass (start-up, the resync timer) reads the live table back and reloads exactly the
  chains that differ from the plan (edited, flushed or missing: drift), removes chains of
  NICs the database no longer has, and loads the whole table in one transaction when its
  base chain or map is missing (flushed or deleted by hand).
- When a load fails, the whole table is loaded in one transaction; when that fails too,
  each NIC is loaded alone onto an empty table, so one NIC's failure is recorded on that
  NIC only and retried with a backoff of its own (or when its rules change); a failure for
  all (no nft, no bridge family) is retried with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from app.db.repositories import ProtectedNic
from app.domain import port_security as ps
from app.domain.retry import Backoff
from app.host import nft

log = logging.getLogger(__name__)

NFT_KEY = "port-security"
RETRYING = "retrying to load the port security rules"


@dataclass(frozen=True)
class Planned:
    nic: ProtectedNic
    rules: ps.PortRules
    problem: str | None  # addresses it was given that cannot be used


def plan(nic: ProtectedNic, observed_ipv4: str | None) -> Planned:
    """A NIC's rules; an address that cannot be parsed (a damaged row) is left out (the rules
    are then stricter, never looser) and named in its reason."""
    addresses = [nic.ipv4, observed_ipv4]
    unusable = []
    usable = []
    for text in [*(a for a in addresses if a), *nic.allowed]:
        try:
            ps.port_rules(nic.tap, nic.mac, [text])
        except ValueError:
            unusable.append(text)
        else:
            usable.append(text)
    rules = ps.port_rules(nic.tap, nic.mac, usable)
    problem = f"addresses left out (not IPv4/IPv6): {', '.join(unusable)}" if unusable else None
    return Planned(nic, rules, problem)


class PortSecuritySync:
    """The loaded state of our bridge table across passes (one instance per worker thread)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.backoff = Backoff(clock)
        self.loaded: dict[str, ps.PortRules] | None = None  # tap -> rules; None: unknown
        self.drift_repairs = 0
        # tap -> (the rules nft refused for it, why): not tried again until they change or
        # its backoff is due (a retry costs a reload of every NIC)
        self.refused: dict[str, tuple[ps.PortRules, str]] = {}

    def sync(self, planned: Sequence[Planned], full: bool) -> dict[str, str | None]:
        """Loads what changed; returns NIC id -> why its rules are not (all) in place."""
        wanted = {p.rules.tap: p.rules for p in planned}
        reasons: dict[str, str | None] = {p.nic.nic_id: p.problem for p in planned}
        if not self.backoff.due(NFT_KEY):
            return {p.nic.nic_id: p.nic.reason or RETRYING for p in planned}
        try:
            failed = self._apply(wanted, full)
        except nft.NftError as exc:
            delay = self.backoff.failed(NFT_KEY)
            log.warning("port security rules: %s (retrying in %.1fs)", exc, delay)
            self.loaded = None
            return {p.nic.nic_id: f"nftables: {exc}" for p in planned}
        self.backoff.succeeded(NFT_KEY)
        for p in planned:
            if p.rules.tap in failed:
                reasons[p.nic.nic_id] = failed[p.rules.tap]
        return reasons

    def _apply(self, wanted: dict[str, ps.PortRules], full: bool) -> dict[str, str]:
        """Tap -> why its rules could not be loaded (the others are)."""
        if full and not wanted and self.loaded == {}:
            return {}  # nothing of ours, checked before: no `nft list` every full pass
        if full or self.loaded is None:
            changed, removed, whole = self._live_differences(wanted)
        else:
            changed = [r for tap, r in wanted.items() if self.loaded.get(tap) != r]
            removed = sorted(set(self.loaded) - set(wanted))
            # nothing of ours loaded: the table may not exist, so it is loaded whole; the
            # last NIC gone: the table goes (its base chain would look up every frame)
            whole = (not self.loaded and bool(changed)) or (not wanted and bool(removed))
        held = self._held_back(wanted)
        wanted = {tap: rules for tap, rules in wanted.items() if tap not in held}
        changed = [r for r in changed if r.tap not in held]
        if whole:
            return {**held, **self._load_whole(wanted)}
        if not changed and not removed:
            return held
        try:
            nft.load(ps.render_changes(changed, removed))
        except nft.NftError as exc:
            log.warning("port security: %s; loading the whole table", exc)
            return self._load_whole(wanted)
        assert self.loaded is not None
        for tap in removed:
            self.loaded.pop(tap, None)
        self.loaded.update({r.tap: r for r in changed})
        return held

    def _held_back(self, wanted: dict[str, ps.PortRules]) -> dict[str, str]:
        """Taps whose unchanged rules nft refused and whose retry is not due: tap -> why."""
        held: dict[str, str] = {}
        for tap, (rules, reason) in list(self.refused.items()):
            if wanted.get(tap) != rules:  # changed or gone: tried afresh
                del self.refused[tap]
                self.backoff.succeeded(tap)
            elif not self.backoff.due(tap):
                held[tap] = reason
        return held

    def _live_differences(
        self, wanted: dict[str, ps.PortRules]
    ) -> tuple[list[ps.PortRules], list[str], bool]:
        """(chains to load, taps whose chain goes, whether to load the whole table) from the
        live table: drift is repaired chain by chain."""
        listing = nft.list_table(ps.FAMILY, ps.TABLE)
        if listing is None:
            self.loaded = {} if not wanted else None
            return [], [], bool(wanted)
        if not wanted:  # no protected NIC left: the table goes (render_all's removal)
            self.loaded = None
            return [], [], True
        live = ps.read_table(listing)
        if not live.hooked or not any("map" in item for item in listing):
            self._drifted("its base chain or map is missing")
            return [], [], True
        changed = [r for r in wanted.values() if not ps.chain_matches(live, r)]
        stale = live.taps() - set(wanted)
        removed = sorted(t for t in stale if ps.chain_name(t) in live.chains and t in live.elements)
        if len(removed) != len(stale):  # a chain without its element or the reverse
            self._drifted("a chain or map element of ours is missing its other half")
            return [], [], True
        if self.loaded is not None and (changed or removed):
            self._drifted(f"{len(changed)} chain(s) differ, {len(removed)} stale")
        self.loaded = {tap: rules for tap, rules in wanted.items()}
        for rules in changed:  # not loaded until render_changes succeeds
            self.loaded.pop(rules.tap, None)
        return changed, removed, False

    def _drifted(self, what: str) -> None:
        self.drift_repairs += 1
        log.warning("our nftables bridge table drifted (%s); repairing it", what)

    def _load_whole(self, wanted: dict[str, ps.PortRules]) -> dict[str, str]:
        try:
            nft.load(ps.render_all(list(wanted.values())))
        except nft.NftError as exc:
            if not wanted:
                raise
            log.warning("port security: %s; loading each NIC alone", exc)
            return self._load_each(wanted)
        self.loaded = dict(wanted)
        return {}

    def _load_each(self, wanted: dict[str, ps.PortRules]) -> dict[str, str]:
        """The base chain and map, then each NIC in a transaction of its own. When even the
        empty table cannot be loaded, every NIC fails alike (NftError for the caller)."""
        nft.load(ps.render_all([]) + ps.render_base())
        self.loaded = {}
        failed: dict[str, str] = {}
        for tap, rules in sorted(wanted.items()):
            try:
                nft.load(ps.render_changes([rules], []))
            except nft.NftError as exc:
                failed[tap] = f"nftables: {exc}"
                self.refused[tap] = (rules, failed[tap])
                delay = self.backoff.failed(tap)
                log.warning("port security of tap %s: %s (retrying in %.1fs)", tap, exc, delay)
            else:
                self.loaded[tap] = rules
                self.refused.pop(tap, None)
                self.backoff.succeeded(tap)
        return failed
