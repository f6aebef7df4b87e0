"""The `user` backend: QEMU's user networking (slirp; the how-to's `-net user`): guest
10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3 by default, and port forwards (the how-to's
`-redir tcp:5555::22`, today `hostfwd=`), each claiming its host port."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any, ClassVar

from app.domain.errors import InvalidInput
from app.domain.nics.registry import NicClaims, NicDriver, register
from app.domain.nics.spec import PORTS, NicSpec, PortForward, UserNet, bounded
from app.domain.qemu_options import qemu_options


def user_net(raw: Mapping[str, Any] | None) -> UserNet:
    """UserNet from its plain-data form (a request's `user`, or the stored options)."""
    fields = dict(raw or {})
    forwards = tuple(PortForward(**f) for f in fields.pop("forwards", None) or [])
    return UserNet(**fields, forwards=forwards)


@register
class UserDriver(NicDriver):
    name: ClassVar[str] = "user"
    fields: ClassVar[tuple[str, ...]] = ("user",)
    mtu_refused: ClassVar[str | None] = (
        "mtu cannot be set on the user backend: QEMU's user networking (slirp) keeps its "
        "own fixed MTU"
    )

    def admit(self, nic: NicSpec, request: Mapping[str, Any], claims: NicClaims) -> NicSpec:
        user = user_net(request.get("user"))
        for forward in user.forwards:
            claims.claim_port(forward.protocol, forward.host_address, forward.host_port)
        return replace(nic, user=user)

    def validate(self, nic: NicSpec) -> None:
        user = nic.user or UserNet()
        try:
            network = ipaddress.IPv4Network(user.network, strict=True)
            addresses = [ipaddress.IPv4Address(user.host), ipaddress.IPv4Address(user.dns)]
        except ValueError as exc:
            raise InvalidInput(f"user networking: {exc}") from None
        for address in addresses:
            if address not in network:
                raise InvalidInput(f"user networking: {address} is outside {network}")
        seen: set[tuple[str, str, int]] = set()
        for forward in user.forwards:
            _validate_forward(forward)
            if forward.claim in seen:
                raise InvalidInput(f"port forward {forward.claim} is listed twice")
            seen.add(forward.claim)

    def load(self, nic: NicSpec, options: Mapping[str, Any]) -> NicSpec:
        return replace(nic, user=user_net(options.get("user")))

    def dump(self, nic: NicSpec) -> dict[str, Any]:
        user = asdict(nic.user or UserNet())
        user["forwards"] = list(user["forwards"])
        return {"user": user}

    def netdev(
        self,
        netdev_id: str,
        nic: NicSpec,
        vhost_net: bool,
        fds: Sequence[int] | None = None,
        vhost_fds: Sequence[int] = (),
    ) -> str:
        user = nic.user or UserNet()
        base = qemu_options(
            f"user,id={netdev_id}",
            net=user.network,
            host=user.host,
            dns=user.dns,
            restrict="on" if user.restrict else None,
        )
        forwards = [
            f"hostfwd={f.protocol}:{f.host_address}:{f.host_port}"
            f"-{f.guest_address or ''}:{f.guest_port}"
            for f in user.forwards
        ]
        return ",".join([base, *forwards])


def _validate_forward(forward: PortForward) -> None:
    if forward.protocol not in ("tcp", "udp"):
        raise InvalidInput(f"port forward protocol must be tcp or udp, not {forward.protocol!r}")
    bounded("host_port", forward.host_port, PORTS)
    bounded("guest_port", forward.guest_port, PORTS)
    try:
        ipaddress.IPv4Address(forward.host_address)
    except ValueError:
        raise InvalidInput(f"host_address {forward.host_address!r} is not IPv4") from None
