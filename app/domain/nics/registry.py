"""NIC backends as drivers: the common base every backend overrides only where it differs,
and the registry that maps a backend's name to its driver.

The shape is Incus's device loader (internal/server/device/device_load.go: a map from NIC
type to a constructor, a common base embedded by nic_bridged.go, nic_macvlan.go, ...): the
rest of the daemon asks the registry, never compares backend names, so a new backend is one
new module that registers its driver (see app/domain/nics/__init__.py for the built-ins).

A driver answers, for one NIC:
- admit: a request's NIC (plain data, as the API validated it) to a NicSpec, claiming what the
  backend needs through NicClaims (the service answers those from the database);
- validate: the backend's own rules (the common ones live in app.domain.vms.validate_nic);
- load/dump: its stored `options` JSON to and from the spec (the one place that reads it);
- host_links: the kernel links it needs (a tap the VM worker makes on a bridge, one of our
  tap resources, none);
- netdev: QEMU's `-netdev` argument for it;
- present: what the API shows of its stored options;
- offers/needs: endpoints a NIC offers other VMs' NICs and the ones it needs from them (a
  listening socket and the sockets that connect to it), from its stored options: what
  in-use protection asks before a VM goes (`peer_nics`).
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol, TypeVar

from app.domain.errors import InvalidInput
from app.domain.nics.spec import VHOST_MODEL, Backend, NicSpec, Vhost, either
from app.domain.registry import Registry


class HostLink(enum.StrEnum):
    """Which kernel link a NIC's backend needs, and who makes it."""

    NONE = "none"  # nothing in the kernel (QEMU user networking, sockets, hubs)
    VM_TAP = "vm-tap"  # a tap the VM worker makes for this NIC and attaches to its bridge
    TAP = "tap"  # one of our tap resources, kept by the link worker (maybe a routed tap)
    VM_MACVTAP = "vm-macvtap"  # a macvtap the VM worker makes for this NIC on a host link
    VF = "vf"  # an SR-IOV virtual function the VM worker hands qemu through vfio-pci


@dataclass(frozen=True)
class HostLinkNeed:
    """One kernel link a NIC needs: its kind and name. qemu gets a tap as descriptors the
    daemon opened, one per queue (QEMU's `-netdev tap,fds=`)."""

    kind: HostLink
    name: str
    queues: int = 1


class NicClaims(Protocol):
    """What a backend may ask of the service while a NIC is created. Each call checks
    and records in the caller's transaction; a refusal is a DomainError (4xx)."""

    def vm_tap(
        self,
        bridge: str | None,
        vlan: str | None = None,
        trunk: tuple[Sequence[int], int | None] | None = None,
    ) -> str:
        """A tap the VM worker will make for this NIC on `bridge` (id or name; None: the
        trunk of `vlan`), an access port of `vlan` (id or name), or a trunk port carrying
        `trunk` = (tagged VIDs, native VID) of the bridge's VLANs: its name."""
        ...

    def tap_resource(self, tap: str, queues: int) -> str:
        """One of our tap resources (id or name), free and made for `queues`: its name."""
        ...

    def plug_port(self, port: str, queues: int, mac: str | None) -> tuple[str, str, str]:
        """One of our ports (id or name), free (409 otherwise), plugged into this NIC:
        (its tap's kernel name, its MAC, its id). `mac`: the NIC's requested MAC, which
        must be the port's (422 otherwise)."""
        ...

    def macvtap(self, parent: str) -> str:
        """A macvtap the VM worker will make for this NIC on host link `parent`: its name
        (claimed). 409 when `parent` is absent, unsuitable or one of our links."""
        ...

    def virtual_function(self, pf: str | None) -> tuple[str, str, int]:
        """A free SR-IOV VF for this NIC (claimed) on PF `pf` (None: any PF with one):
        (PF name, VF PCI address, VF index). 409 naming why there is none."""
        ...

    def claim_port(self, protocol: str, address: str, port: int) -> None:
        """A host port for this NIC (409 when another holds it)."""
        ...

    def free_loopback_port(self) -> int:
        """A loopback TCP port nobody claimed (not claimed yet: claim_port it)."""
        ...

    def peer_nic(self, peer: str, vm: str, index: int) -> tuple[str, Mapping[str, Any]] | None:
        """(backend, stored options) of NIC `index` of live VM `vm`; None when it has none."""
        ...


class NicDriver:
    """A backend with no kernel link, no options and no rules of its own; drivers override
    what differs. Instances are stateless: one per backend, in the registry."""

    name: ClassVar[str] = ""
    host_link: ClassVar[HostLink] = HostLink.NONE
    multiqueue: ClassVar[bool] = False  # carries several queue pairs (virtio-net mq)
    # carries a virtio-net header (a kernel tap: IFF_VNET_HDR), so offloads can be negotiated
    vnet_hdr: ClassVar[bool] = False
    joins_hub: ClassVar[bool] = True  # with no guest NIC (model null) it may join a hub
    owns_hub: ClassVar[bool] = False  # its `hub` is the hub the guest NIC itself sits on
    mtu_refused: ClassVar[str | None] = None  # why an MTU cannot be set on it
    has_peers: ClassVar[bool] = False  # offers or needs endpoints of other VMs' NICs
    # plugs a port resource: its MAC, fixed address and port security are the port's
    plugs_port: ClassVar[bool] = False
    # the request field that says where it attaches (`tap` for the tap backend), None: none
    option: ClassVar[str | None] = None
    # further request fields only backends that list them take (the user backend's `user`;
    # `ipv4`: a fixed address on a managed network, for a tap on a bridge): the others refuse
    # them (422) instead of dropping them
    fields: ClassVar[tuple[str, ...]] = ()
    # can be added to and removed from a running qemu (QMP netdev_add with descriptors the
    # daemon passes, then device_add: netdev_qmp); the others wait for a stopped VM
    hotplug: ClassVar[bool] = False
    # its traffic can go through vhost-net: qemu's tap netdev (app.domain.vhost)
    vhost: ClassVar[bool] = False
    # the guest device this backend always is (sriov: vfio-pci, the VF itself), instead of
    # an emulated NIC model; None: the NIC's `model`
    device_model: ClassVar[str | None] = None

    def admit(self, nic: NicSpec, request: Mapping[str, Any], claims: NicClaims) -> NicSpec:
        """The spec of a NIC from a request's NIC fields (the API's NicIn as plain data)."""
        return nic

    def validate(self, nic: NicSpec) -> None:
        """This backend's own rules (InvalidInput)."""

    def load(self, nic: NicSpec, options: Mapping[str, Any]) -> NicSpec:
        """The spec with this backend's settings read from its stored options."""
        return nic

    def dump(self, nic: NicSpec) -> dict[str, Any]:
        """This backend's settings as stored options (what load reads back)."""
        return {}

    def host_links(self, nic: NicSpec) -> tuple[HostLinkNeed, ...]:
        if self.host_link is HostLink.NONE or nic.tap is None:
            return ()
        return (HostLinkNeed(self.host_link, nic.tap, nic.queues),)

    def uses_vhost(self, nic: NicSpec, vhost_net: bool) -> bool:
        """Whether qemu moves this NIC's packets with vhost-net (app.domain.vhost): `on`
        always (validation refuses it where the host cannot), `auto` where the host's
        /dev/vhost-net works (`vhost_net`) and the guest NIC is virtio-net-pci; never on a
        backend without a tap."""
        if not self.vhost or nic.vhost is Vhost.OFF:
            return False
        return nic.vhost is Vhost.ON or (vhost_net and nic.model == VHOST_MODEL)

    def netdev(
        self,
        netdev_id: str,
        nic: NicSpec,
        vhost_net: bool,
        fds: Sequence[int] | None = None,
        vhost_fds: Sequence[int] = (),
    ) -> str:
        """QEMU's `-netdev` value for this NIC (`fds`: descriptors of its host link;
        `vhost_fds`: of /dev/vhost-net, one per queue, where it uses vhost-net)."""
        raise NotImplementedError(f"the {self.name} backend has no -netdev")

    def qemu_args(self, index: int, nic: NicSpec) -> list[str] | None:
        """The whole of this NIC on qemu's command line when it is no `-netdev` with a guest
        NIC on it (a VF passed through); None: the usual -netdev and -device."""
        return None

    def netdev_qmp(
        self,
        netdev_id: str,
        nic: NicSpec,
        vhost_net: bool,
        fd_names: Sequence[str],
        vhost_fd_names: Sequence[str] = (),
    ) -> dict[str, object]:
        """QMP `netdev_add`'s arguments for this NIC on a running qemu, its host link's
        descriptors (and /dev/vhost-net's, `vhost_fd_names`) already handed over by
        `getfd` under `fd_names` (hotplug backends)."""
        raise InvalidInput(f"the {self.name} backend cannot be added to a running VM")

    def present(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Fields the API shows from stored options, beyond the common `hub`."""
        return {}

    def offers(self, options: Mapping[str, Any]) -> frozenset[str]:
        """Endpoints a NIC with these stored options offers other VMs' NICs (opaque keys,
        compared with what `needs` gives)."""
        return frozenset()

    def needs(self, options: Mapping[str, Any]) -> frozenset[str]:
        """Endpoints of other VMs' NICs a NIC with these stored options needs."""
        return frozenset()


DRIVERS: Registry[NicDriver] = Registry(
    "NIC backend", [b.value for b in Backend], unknown=InvalidInput
)


D = TypeVar("D", bound=type[NicDriver])


def register(driver: D) -> D:
    """Class decorator: make `driver` the backend of its `name` (ValueError when taken)."""
    DRIVERS.add(driver.name, driver())
    return driver


def unregister(name: str) -> None:
    DRIVERS.remove(name)


@contextlib.contextmanager
def registered(driver: type[NicDriver]) -> Iterator[NicDriver]:
    """`driver` registered for the duration of the block (tests)."""
    with DRIVERS.registered(driver.name, driver()) as instance:
        yield instance


def backends() -> list[str]:
    """The registered backends' names: the built-in ones in Backend's order, then the
    others in registration order."""
    return DRIVERS.names()


def find_driver(name: str) -> NicDriver | None:
    return DRIVERS.find(name)


def nic_driver(name: str) -> NicDriver:
    """The driver of backend `name`; InvalidInput naming the known ones otherwise."""
    return DRIVERS.get(name)


def backends_with(test: str) -> list[str]:
    """The backends whose class attribute `test` is true."""
    return [name for name, driver in DRIVERS.items() if getattr(driver, test)]


def backends_where(test: str) -> str:
    """`a, b or c`: the backends whose class attribute `test` is true (for messages)."""
    return either(backends_with(test))


def backend_options() -> dict[str, str]:
    """Backend -> the request field it needs (the backends that need one)."""
    return {name: d.option for name, d in DRIVERS.items() if d.option is not None}


def field_backends() -> dict[str, list[str]]:
    """A request field only some backends take -> those backends: each one's `option` (but
    `hub`, which a hub join on any backend with a hub also takes: validate_hub) and its
    `fields`."""
    owners: dict[str, list[str]] = {}
    for name, driver in DRIVERS.items():
        own = [driver.option] if driver.option not in (None, "hub") else []
        for field in [*own, *driver.fields]:
            owners.setdefault(str(field), []).append(name)
    return owners


# ---- the stored `options` JSON of a NIC row ------------------------------------------------


def load_options(nic: NicSpec, options: Mapping[str, Any] | None) -> NicSpec:
    """The spec with its backend's stored options read in (and a hub it joins). Stored
    options that cannot be read are InvalidInput, never a KeyError."""
    stored = options or {}
    driver = nic_driver(nic.backend)
    try:
        hub = stored.get("hub")
        return driver.load(replace(nic, hub=None if hub is None else int(hub)), stored)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(
            f"NIC {nic.id}: stored {nic.backend} options cannot be used "
            f"({type(exc).__name__}: {exc})"
        ) from None


def dump_options(nic: NicSpec) -> dict[str, Any]:
    """The options JSON stored for `nic` (load_options reads it back)."""
    options = nic_driver(nic.backend).dump(nic)
    if nic.hub is not None:
        options["hub"] = nic.hub
    return options


def present_options(backend: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the API shows of a NIC's stored options: `hub`, and its backend's fields (an
    unknown backend, or options its driver cannot read, show only `hub`)."""
    stored = options or {}
    shown: dict[str, Any] = {"hub": stored.get("hub")}
    driver = find_driver(backend)
    if driver is not None:
        # a damaged row is still listed and read (never a 500): its fields show as absent
        with contextlib.suppress(KeyError, TypeError, ValueError):
            shown.update(driver.present(stored))
    return shown


def _endpoints(backend: str, options: Mapping[str, Any] | None, offered: bool) -> frozenset[str]:
    """What a stored NIC offers or needs; nothing for an unknown backend or options its
    driver cannot read (a damaged row never stops a delete)."""
    driver = find_driver(backend)
    if driver is None:
        return frozenset()
    try:
        return (driver.offers if offered else driver.needs)(options or {})
    except (KeyError, TypeError, ValueError):
        return frozenset()


T = TypeVar("T")


def peer_nics(
    own: Iterable[tuple[str, Mapping[str, Any] | None]],
    others: Iterable[tuple[T, str, Mapping[str, Any] | None]],
) -> list[T]:
    """Of `others` ((key, backend, stored options) of other VMs' NICs), the keys of those
    that need an endpoint one of `own` ((backend, stored options) of a VM's NICs) offers:
    the NICs a VM's removal would leave dangling."""
    offered: set[str] = set()
    for backend, options in own:
        offered |= _endpoints(backend, options, offered=True)
    if not offered:
        return []
    return [
        key for key, backend, options in others if _endpoints(backend, options, False) & offered
    ]


# ---- rules every backend shares -------------------------------------------------------------


def validate_hub(nic: NicSpec, driver: NicDriver) -> None:
    """A NIC without a model only joins a hub; `hub` with a model is the hub backend's."""
    if nic.model is None:
        if not driver.joins_hub or nic.hub is None:
            raise InvalidInput(
                "a backend without a guest NIC (model null) joins a hub: give `hub` and a "
                f"{backends_where('joins_hub')} backend"
            )
        if nic.queues > 1 or nic.vhost is Vhost.ON:
            raise InvalidInput("queues and vhost belong to a guest NIC, not to a hub join")
    elif nic.hub is not None and not driver.owns_hub:
        owners = backends_where("owns_hub")
        raise InvalidInput(f"`hub` on a NIC with a model needs the {owners} backend")
