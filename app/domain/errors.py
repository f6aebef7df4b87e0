"""The one exception base of the daemon; the API maps each kind to an HTTP problem."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class DomainError(Exception):
    """Base of every error a client may see. `kind` is the stable problem type slug."""

    kind = "domain-error"
    status = 400
    title = "Request cannot be processed"

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidInput(DomainError, ValueError):
    """Bad input; also a ValueError so schema validators report it as a field error."""

    kind = "invalid-input"
    status = 422
    title = "Invalid input"


class NotFound(DomainError):
    kind = "not-found"
    status = 404
    title = "Resource not found"


class Forbidden(DomainError):
    """The caller's role may not do this at all (admin-only things), whatever the object."""

    kind = "forbidden"
    status = 403
    title = "Not allowed for this role"


class Conflict(DomainError):
    kind = "conflict"
    status = 409
    title = "Conflict with the current state"


class NameTaken(Conflict):
    kind = "name-taken"
    title = "Name already in use"


class AddressTaken(Conflict):
    """A fixed IPv4 address another NIC or port holds, or another MAC's DHCP lease."""

    kind = "address-taken"
    title = "Address already in use"


class AddressesExhausted(Conflict):
    """No free fixed address is left in a network's subnet."""

    kind = "addresses-exhausted"
    title = "No free address left"


class MacTaken(Conflict):
    """A MAC address another VM NIC or port has (one MAC is one guest interface)."""

    kind = "mac-taken"
    title = "MAC address already in use"


class InUse(Conflict):
    kind = "in-use"
    title = "Resource is in use"


class Unavailable(DomainError):
    kind = "unavailable"
    status = 503
    title = "A component did not answer in time"


class BeingDeleted(Conflict):
    kind = "being-deleted"
    title = "Resource is being deleted"


@contextlib.contextmanager
def naming(where: str) -> Iterator[None]:
    """A DomainError raised inside says first what it is about (`where: detail`), e.g. which
    of a request's NICs (`nics[1]: vhost-net only accelerates virtio-net-pci`): rules that
    see one object name it as the caller's request does, never by an id the client never
    saw."""
    try:
        yield
    except DomainError as exc:
        exc.detail = f"{where}: {exc.detail}"
        exc.args = (exc.detail, *exc.args[1:])
        raise
