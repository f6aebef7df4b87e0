"""The `socket` backend: VM to VM without a tap (the how-to's `-net socket,listen=` on one VM
and `connect=` on the other; QEMU's `-netdev socket`), on loopback only, or a multicast group
kept on loopback. A listening NIC claims a loopback port; a connecting one names its peer
NIC as `<vm>/<nic index>` and gets that port."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from app.domain.errors import InvalidInput
from app.domain.nics.registry import NicClaims, NicDriver, register
from app.domain.nics.spec import PORTS, NicSpec, SocketNet, bounded

LOOPBACK = "127.0.0.1"


def listening_port(stored: tuple[str, Mapping[str, Any]] | None) -> int | None:
    """The loopback port of a stored listening socket NIC ((backend, options)), else None."""
    if stored is None or stored[0] != SocketDriver.name:
        return None
    options = stored[1].get("socket") or {}
    return int(options["port"]) if options.get("mode") == "listen" else None


def _endpoint(options: Mapping[str, Any], mode: str) -> frozenset[str]:
    """The loopback TCP port of a stored socket NIC in `mode` as an endpoint key."""
    socket = options.get("socket") or {}
    if socket.get("mode") != mode:
        return frozenset()
    return frozenset({f"tcp:{LOOPBACK}:{int(socket['port'])}"})


@register
class SocketDriver(NicDriver):
    name: ClassVar[str] = "socket"
    has_peers: ClassVar[bool] = True
    option: ClassVar[str | None] = "socket"

    def offers(self, options: Mapping[str, Any]) -> frozenset[str]:
        """A listening NIC offers the loopback port it claimed."""
        return _endpoint(options, "listen")

    def needs(self, options: Mapping[str, Any]) -> frozenset[str]:
        """A connecting NIC needs its peer's port (multicast groups need nobody)."""
        return _endpoint(options, "connect")

    def admit(self, nic: NicSpec, request: Mapping[str, Any], claims: NicClaims) -> NicSpec:
        wanted = request["socket"]
        port = wanted.get("port")
        if wanted["mode"] == "mcast":
            if wanted.get("group") is None or port is None:
                raise InvalidInput("a multicast socket NIC needs `group` and `port`")
            socket = SocketNet("mcast", port, wanted["group"])
        elif wanted["mode"] == "listen":
            port = port or claims.free_loopback_port()
            claims.claim_port("tcp", LOOPBACK, port)
            socket = SocketNet("listen", port)
        else:
            socket = SocketNet("connect", self._peer_port(wanted.get("peer"), claims))
        return replace(nic, socket=replace(socket, peer=wanted.get("peer")))

    @staticmethod
    def _peer_port(peer: str | None, claims: NicClaims) -> int:
        """`<vm name or id>/<nic index>` of a socket NIC that listens."""
        if not peer or "/" not in peer:
            raise InvalidInput("a connecting socket NIC names its peer as `<vm>/<nic index>`")
        vm_ref, _, index_text = peer.rpartition("/")
        if not index_text.isdigit():
            raise InvalidInput(f"peer {peer!r}: the NIC index must be a number")
        port = listening_port(claims.peer_nic(peer, vm_ref, int(index_text)))
        if port is None:
            raise InvalidInput(f"peer {peer!r} is not a listening socket NIC")
        return port

    def validate(self, nic: NicSpec) -> None:
        socket = nic.socket
        if socket is None or socket.mode not in ("listen", "connect", "mcast"):
            raise InvalidInput("a socket NIC needs mode listen, connect or mcast")
        bounded("socket port", socket.port, PORTS)
        try:
            address = ipaddress.IPv4Address(socket.address)
        except ValueError:
            raise InvalidInput(f"socket address {socket.address!r} is not IPv4") from None
        if socket.mode == "mcast" and not address.is_multicast:
            raise InvalidInput(f"mcast needs a multicast group address, not {address}")
        if socket.mode != "mcast" and not address.is_loopback:
            raise InvalidInput("socket NICs listen and connect on loopback addresses only")

    def load(self, nic: NicSpec, options: Mapping[str, Any]) -> NicSpec:
        raw = options["socket"]
        socket = SocketNet(raw["mode"], int(raw["port"]), raw["address"], raw.get("peer"))
        return replace(nic, socket=socket)

    def dump(self, nic: NicSpec) -> dict[str, Any]:
        socket = nic.socket
        assert socket is not None
        return {
            "socket": {
                "mode": socket.mode,
                "port": socket.port,
                "address": socket.address,
                "peer": socket.peer,
            }
        }

    def netdev(
        self,
        netdev_id: str,
        nic: NicSpec,
        vhost_net: bool,
        fds: Sequence[int] | None = None,
        vhost_fds: Sequence[int] = (),
    ) -> str:
        socket = nic.socket
        assert socket is not None
        netdev = f"socket,id={netdev_id},{socket.mode}={socket.address}:{socket.port}"
        if socket.mode == "mcast":
            # keep the group on loopback: host-local, and it needs no multicast route
            netdev += f",localaddr={LOOPBACK}"
        return netdev
