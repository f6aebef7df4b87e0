"""/v1/host: what the admin otherwise reads with ifconfig, route -n and by trial."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from app.api.deps import admin_only, context
from app.api.presenters import uplink_diagnostic
from app.api.strict import StrictRoute
from app.domain.errors import NotFound
from app.schemas.common import PROBLEM_RESPONSES, LinkNameStr
from app.schemas.host import (
    Capabilities,
    CapabilitiesSummary,
    DiagnosticCheck,
    HostInterface,
    HostRoute,
    SriovNumVfs,
    SriovPf,
)
from app.services.networks import NetworkService
from app.services.sriov import SriovService
from app.services.uplinks import UplinkService

# the host's own interfaces, routes, probes and diagnostics are the provider's: admins only
# (a member or reader gets 403; issue 11)
router = APIRouter(
    prefix="/v1/host",
    tags=["host"],
    responses=PROBLEM_RESPONSES,
    route_class=StrictRoute,
    dependencies=[Depends(admin_only)],
)


@router.get("/interfaces", operation_id="list_host_interfaces", response_model=list[HostInterface])
async def list_host_interfaces(request: Request) -> list[HostInterface]:
    """Links with state, MTU, MAC, addresses, master and RX/TX counters (like ifconfig)."""
    ctx = context(request)
    return [HostInterface(**i) for i in await ctx.host(ctx.inspector.interfaces)]


@router.get("/routes", operation_id="list_host_routes", response_model=list[HostRoute])
async def list_host_routes(request: Request) -> list[HostRoute]:
    """IPv4 and IPv6 routes of the main tables (like route -n)."""
    ctx = context(request)
    return [HostRoute(**r) for r in await ctx.host(ctx.inspector.routes)]


@router.get("/capabilities", operation_id="get_host_capabilities", response_model=Capabilities)
async def get_host_capabilities(request: Request) -> Capabilities:
    """What this host can do, probed by trying (cached after the first probe)."""
    ctx = context(request)
    return Capabilities(**await ctx.host(ctx.inspector.capabilities))


@router.get("/sriov", operation_id="list_sriov_pfs", response_model=list[SriovPf])
async def list_sriov_pfs(request: Request) -> list[SriovPf]:
    """The SR-IOV physical functions (PFs) and their virtual functions (VFs): how many each
    can have and has (sysfs sriov_totalvfs, sriov_numvfs), each VF's PCI address, driver,
    IOMMU group and settings on the PF (netlink IFLA_VFINFO_LIST: MAC, VLAN, spoof check,
    trust), and which VM NIC (`backend: sriov`) holds it, or null: free. [] on a host
    without SR-IOV (capabilities `sriov` says why)."""
    ctx = context(request)
    pfs = await ctx.host(ctx.inspector.sriov_pool)
    return [SriovPf(**pf) for pf in await ctx.read(lambda s: SriovService(s).view(pfs))]


# a PF is named by its interface: a name that is no Linux link name is 422, as in a NIC's `pf`
PfName = Annotated[
    LinkNameStr, Path(description="The physical function's interface (e.g. enp1s0f0)")
]


@router.get("/sriov/{pf}", operation_id="get_sriov_pf", response_model=SriovPf)
async def get_sriov_pf(pf: PfName, request: Request) -> SriovPf:
    """One physical function as GET /v1/host/sriov lists it. 404 when `pf` is no SR-IOV
    physical function on this host, 422 when it is no Linux link name."""
    ctx = context(request)
    pfs = await ctx.host(ctx.inspector.sriov_pool)
    shown = await ctx.read(lambda s: SriovService(s).view([p for p in pfs if p.name == pf]))
    if not shown:
        raise NotFound(f"{pf} is not an SR-IOV physical function on this host")
    return SriovPf(**shown[0])


@router.put("/sriov/{pf}", operation_id="set_sriov_num_vfs", response_model=SriovPf)
async def set_sriov_num_vfs(pf: PfName, body: SriovNumVfs, request: Request) -> SriovPf:
    """Give PF `pf` `num_vfs` virtual functions (sysfs sriov_numvfs; 0 first when changing a
    non-zero count, as the kernel requires). Done at once on the host, not by the
    supervisor: the VF count is the hardware's, not a resource of kvmnetd's. 404 for an
    unknown PF, 422 beyond its total_vfs or for a `pf` that is no Linux link name, 409 while
    VM NICs hold VFs of it (a NIC created between the check and the write is refused by the
    pool it reads: its VF is gone)."""
    ctx = context(request)
    pfs = await ctx.host(ctx.inspector.sriov_pool)
    await ctx.read(lambda s: SriovService(s).check_num_vfs(pfs, pf, body.num_vfs))
    await ctx.host(ctx.inspector.set_num_vfs, pf, body.num_vfs)
    after = await ctx.host(ctx.inspector.sriov_pool)
    shown = await ctx.read(lambda s: SriovService(s).view([p for p in after if p.name == pf]))
    return SriovPf(**shown[0])


@router.get(
    "/diagnostics", operation_id="get_host_diagnostics", response_model=list[DiagnosticCheck]
)
async def get_host_diagnostics(
    request: Request,
    probe: Annotated[
        bool,
        Query(
            description="Also probe each managed network's path actively (a few seconds): "
            "from a throwaway port on its bridge, a DHCP offer, a DNS answer from the gateway "
            "and forwarding by the host must work; each network gets a check `path:<name>` "
            "whose failed steps name the foreign nftables chain most likely responsible"
        ),
    ] = False,
) -> list[DiagnosticCheck]:
    """What would break forwarding for managed networks here, each with the exact reason:
    IP forwarding off, a FORWARD chain with a drop policy in another table (as Docker leaves
    it), dnsmasq missing, another listener on port 53 where our dnsmasq must answer; and
    each bridge uplink: its NIC present, its carrier, its move settled. With `probe=true`,
    what a guest would really meet on each network (see `probe`)."""
    ctx = context(request)
    gateways = await ctx.read(lambda s: NetworkService(s).gateways())
    checks = [DiagnosticCheck(**c) for c in await ctx.host(ctx.inspector.diagnostics, gateways)]
    if probe:
        targets = await ctx.read(lambda s: NetworkService(s).probe_targets())
        checks += [DiagnosticCheck(**c) for c in await ctx.host(ctx.inspector.probe_paths, targets)]
    for bridge, row in await ctx.read(lambda s: UplinkService(s).all()):
        live = await ctx.host(ctx.inspector.uplink_view, row.name, row.permanent_mac)
        checks.append(uplink_diagnostic(bridge, row, live))
    checks.append(await _subnet_clashes(request))
    return checks


async def _subnet_clashes(request: Request) -> DiagnosticCheck:
    """`subnet_clashes`: each live network's subnet used by an address or connected route of
    an interface that is not kvmnetd's."""
    ctx = context(request)
    networks, own = await ctx.read(
        lambda s: (NetworkService(s).live_subnets(), NetworkService(s).own_addresses())
    )
    return DiagnosticCheck(**await ctx.host(ctx.inspector.subnet_clashes, networks, own))


# what every token may read: the capabilities' summary (issue 11: "capabilities beyond a
# summary are admin-only")
summary_router = APIRouter(
    prefix="/v1/capabilities",
    tags=["host"],
    responses=PROBLEM_RESPONSES,
    route_class=StrictRoute,
)


@summary_router.get("", operation_id="get_capabilities_summary", response_model=CapabilitiesSummary)
async def get_capabilities_summary(request: Request) -> CapabilitiesSummary:
    """Which features, accelerators and NIC models this host offers (any token): what a
    tenant needs to know before asking for a VLAN, an isolated port or vhost."""
    ctx = context(request)
    caps = Capabilities(**await ctx.host(ctx.inspector.capabilities))
    features = {name: feature.available for name, feature in caps.links.items()}
    features |= {"tun_device": caps.tun_device.available, "vhost_net": caps.vhost_net.available}
    features["rate_limit"] = caps.rate_limit.available
    features["sriov"] = caps.sriov.available
    return CapabilitiesSummary(
        features=features,
        accelerators=[
            a.accelerator
            for a in caps.accelerators.values()
            if a.available and a.runs_guests is not False  # None: no kernel to try with
        ],
        nic_models=[m.model for m in caps.qemu.nic_models],
    )
