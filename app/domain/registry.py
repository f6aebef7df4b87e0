"""One map from a kind's name to what implements it, shared by every per-kind registry of
the daemon: segment kinds (app.domain.segments), NIC backends (app.domain.nics), link kinds
(app.domain.links, and their host half in app.host.links) and the segment kinds' storage
(app.db.repositories.segments).

The shape is Incus's (internal/server/network/network_load.go, device/device_load.go: a
map from type name to driver, filled once by each type's own file). What each of those
registries had written out again lives here once:
- `add`: a kind takes a name once (ValueError for an empty or taken name: two modules
  claiming one kind is a bug to see at import, not a silent replacement);
- `get`: the entry of a kind, or the registry's `unknown` error naming the known kinds
  (UnknownKind, a KeyError, unless the registry says otherwise: the segment kinds and NIC
  backends answer InvalidInput, a 422 at the API);
- `find`: the entry or None (a stored row written by a newer version, say);
- `names`: the registered names, the built-in ones first in their declared order, then the
  others in registration order;
- `registered`: an entry for the duration of a block (tests add a kind this way, as a new
  kind's module would, and leave the registry as they found it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownKind(KeyError):
    """A name no entry of a registry has. str() is the message itself (a bare KeyError
    would show it quoted as a key)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Entries of type T keyed by their kind's name.

    `what` names the kind in messages ("segment kind", "NIC backend"); `built_in` is the
    order `names()` lists the built-in kinds in; `unknown` builds the error `get` raises
    from its message (UnknownKind by default)."""

    def __init__(
        self,
        what: str,
        built_in: Iterable[str] = (),
        unknown: Callable[[str], Exception] = UnknownKind,
    ) -> None:
        self.what = what
        self._order = tuple(built_in)
        self._unknown = unknown
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Make `entry` the one of kind `name` (ValueError when unnamed or taken)."""
        name = str(name)  # a StrEnum member is keyed (and named in messages) by its value
        if not name or name in self._entries:
            raise ValueError(f"{self.what} {name!r} is unnamed or already registered")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Forget kind `name` (nothing when it is not registered)."""
        self._entries.pop(name, None)

    @contextlib.contextmanager
    def registered(self, name: str, entry: T) -> Iterator[T]:
        """`entry` registered as kind `name` for the duration of the block."""
        self.add(name, entry)
        try:
            yield entry
        finally:
            self.remove(name)

    def find(self, name: str) -> T | None:
        return self._entries.get(name)

    def get(self, name: str) -> T:
        """The entry of kind `name`; the registry's `unknown` error naming the known ones
        otherwise."""
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(self.names())
            raise self._unknown(f"unknown {self.what} {str(name)!r}; known: {known}")
        return entry

    def names(self) -> list[str]:
        """The registered names: the built-in ones in their declared order, then the others
        in registration order."""
        built_in = [name for name in self._order if name in self._entries]
        return built_in + [name for name in self._entries if name not in built_in]

    def entries(self) -> list[T]:
        """The registered entries, in `names()` order."""
        return [self._entries[name] for name in self.names()]

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) of every registered kind, in `names()` order."""
        return [(name, self._entries[name]) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
