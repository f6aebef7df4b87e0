"""The one base of every failure of an action on the host (netlink, nftables, qemu and its
QMP monitor, dnsmasq, uplink moves, our run files).

A worker catches `HostError` and decides from `transient` alone whether to retry soon by
itself (app.supervisor.faults.is_transient): a transient failure is one the host may get over
without anyone changing anything (EBUSY, EAGAIN, ENOBUFS, a link not there yet, a deadline
that passed on a busy monitor); a permanent one waits for a change of the desired state or
the next resync, still backed off. Where there is evidence the error carries it: `argv` of
the command that failed (nft, qemu, dnsmasq) and `code`, the errno netlink answered
(man 3 errno). Subclasses keep their own constructors; a subclass whose transience depends
on the instance overrides the `transient` property (LinkError: by errno).
"""

from __future__ import annotations

from collections.abc import Sequence


class HostError(Exception):
    """An action on the host failed. `transient=` overrides the class's default."""

    argv: Sequence[str] | None = None  # the command that failed, where one ran
    code: int | None = None  # the errno the kernel answered, where it answered one
    _transient: bool = False  # the class's default; set per instance by transient=

    def __init__(self, *args: object, transient: bool | None = None) -> None:
        super().__init__(*args)
        if transient is not None:
            self._transient = transient

    @property
    def transient(self) -> bool:
        """Worth retrying soon without any change of the desired state."""
        return self._transient
