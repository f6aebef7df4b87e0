"""Claims on shared host names, ports and devices: kernel link names, host ports and SR-IOV
virtual functions."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.db.models import HostPort, LinkName, VfClaim
from app.db.repositories.base import Repository

WILDCARD = "0.0.0.0"


class HostPortRepository(Repository[HostPort]):
    """Host port claims: user-networking forwards of VM NICs and networks' port forwards."""

    def __init__(self, session: Session) -> None:
        super().__init__(session, HostPort)

    def ports(self, protocol: str, address: str) -> set[int]:
        """The first ports of the claims on exactly this address."""
        query = select(HostPort.port).where(
            HostPort.protocol == protocol, HostPort.address == address
        )
        return set(self.session.scalars(query))

    def overlapping(
        self, protocol: str, address: str, port: int, end_port: int
    ) -> Sequence[HostPort]:
        """Claims overlapping these ports on this address (0.0.0.0 overlaps every address)."""
        last = func.coalesce(HostPort.end_port, HostPort.port)
        query = select(HostPort).where(
            HostPort.protocol == protocol, HostPort.port <= end_port, last >= port
        )
        if address != WILDCARD:
            query = query.where(HostPort.address.in_((address, WILDCARD)))
        return self.session.scalars(query).all()

    def release(self, owner_ids: Sequence[str]) -> None:
        self.session.execute(delete(HostPort).where(HostPort.owner_id.in_(owner_ids)))


class LinkNameRepository(Repository[LinkName]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, LinkName)

    def release(self, resource_id: str) -> None:
        self.session.execute(delete(LinkName).where(LinkName.resource_id == resource_id))

    def held_by(self, resource: str) -> list[tuple[str, str]]:
        """(link name, resource id) of every name this kind of resource holds."""
        query = select(LinkName.name, LinkName.resource_id).where(LinkName.resource == resource)
        return [(name, resource_id) for name, resource_id in self.session.execute(query)]


class VfClaimRepository(Repository[VfClaim]):
    """SR-IOV VFs held by VM NICs (the sriov backend), by PCI address."""

    def __init__(self, session: Session) -> None:
        super().__init__(session, VfClaim)

    def claimed(self) -> dict[str, VfClaim]:
        return {c.pci_address: c for c in self.session.scalars(select(VfClaim))}

    def release_nics(self, nic_ids: Sequence[str]) -> None:
        self.session.execute(delete(VfClaim).where(VfClaim.nic_id.in_(nic_ids)))
