"""What a project uses of each quota (app.domain.tenancy.Quota), counted from the desired
state, and the VLAN ids a trunk holds.

Usage counts the rows that are not `deleted`: a resource being deleted (its delete accepted,
the supervisor still removing its kernel objects) no longer counts, so a delete frees its
share at once, as the API's answer to the delete says it is going. vms, vcpus and
memory_mib count every VM that is not deleted, whatever its power state (a stopped VM can
start again at any time without asking). segments counts bridges and VLANs together. A
VM's NIC taps are the VM's, not `taps` (tap resources only), and a port's tap is the port's
(`ports`).

Each count is one aggregate query on the project's indexed `project_id`. The quota guard
(app.services.quotas) asks them inside the unit of work that inserts, which holds the
database's write lock (app.db.session.Database), so no other create can slip in between
count and insert.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import Bridge, Network, Port, PortForward, Tap, Vlan, Vm
from app.domain.tenancy import Quota

VM_QUOTAS = (Quota.VMS, Quota.VCPUS, Quota.MEMORY_MIB)
Counted = Tap | Bridge | Vlan | Network | PortForward | Port
COUNTED: dict[Quota, tuple[type[Counted], ...]] = {
    Quota.TAPS: (Tap,),
    Quota.BRIDGES: (Bridge,),
    Quota.VLANS: (Vlan,),
    # the L2 segments a Neutron network is (per-VLAN bridges are no Bridge rows: the VLAN's)
    Quota.SEGMENTS: (Bridge, Vlan),
    Quota.NETWORKS: (Network,),
    Quota.PORT_FORWARDS: (PortForward,),
    Quota.PORTS: (Port,),
}


def quota_usages(session: Session, project_id: str, quotas: Iterable[Quota]) -> dict[Quota, int]:
    """The project's usage of each of `quotas`: its live rows, or for vcpus and memory_mib
    the sum over its live VMs (the three VM quotas in one query)."""
    wanted = list(quotas)
    usage: dict[Quota, int] = {}
    if any(q in VM_QUOTAS for q in wanted):
        query = select(
            func.count(),
            func.coalesce(func.sum(Vm.vcpus), 0),
            func.coalesce(func.sum(Vm.memory_mib), 0),
        ).where(Vm.project_id == project_id, Vm.deleted.is_(False))
        counted = dict(zip(VM_QUOTAS, session.execute(query).one(), strict=True))
        usage.update({q: int(counted[q]) for q in wanted if q in VM_QUOTAS})
    for quota in wanted:
        if quota not in VM_QUOTAS:
            usage[quota] = sum(_live_rows(session, model, project_id) for model in COUNTED[quota])
    return usage


def _live_rows(session: Session, model: type[Counted], project_id: str) -> int:
    count = (
        select(func.count())
        .select_from(model)
        .where(model.project_id == project_id, model.deleted.is_(False))
    )
    if model is Tap:  # a port's tap counts as the port
        count = count.where(Tap.id.not_in(select(Port.tap_id)))
    return int(session.scalar(count) or 0)


def trunk_vids(session: Session, trunk_id: str) -> set[int]:
    """The VLAN ids held on a trunk, by any project (a VLAN being deleted keeps its id
    until its kernel objects are gone, as VlanRepository.holding says)."""
    return set(session.scalars(select(Vlan.vlan_id).where(Vlan.trunk_id == trunk_id)))
