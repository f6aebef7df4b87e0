"""create_app(settings): wires the database, event bus, supervisor, host inspector and API.

The app's lifespan applies migrations, starts the supervisor (and the capability probe in
the background) and stops them on shutdown: long-held requests are answered first (the
drain), then the probe's helper process ends, then the workers stop (VMs and dnsmasq keep
running; a restarted daemon adopts them).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app import __version__
from app.api import (
    bridges,
    events,
    health,
    host,
    networks,
    neutron,
    operations,
    port_forwards,
    ports,
    projects,
    taps,
    usage,
    vlans,
    vm_nics,
    vms,
)
from app.api.deps import AppContext
from app.api.draining import Drain
from app.api.errors import install_error_handlers
from app.api.middleware import (
    DOCS_ASSETS,
    AuthMiddleware,
    BodyLimitMiddleware,
    JsonContentTypeMiddleware,
    RequestIdMiddleware,
)
from app.api.openapi import install_openapi
from app.bus import EventBus, IdReserver
from app.db.migrate import upgrade
from app.db.repositories import reserve_event_ids
from app.db.session import Database
from app.domain.errors import Conflict, Unavailable
from app.domain.tenancy import Principal, new_secret
from app.host.files import FileProblem, read_bounded, remove
from app.host.inspect import LiveHostInspector
from app.host.qmp import QmpError
from app.services.tokens import LastUse, authenticate
from app.settings import Settings
from app.supervisor.loop import Supervisor
from app.supervisor.networks import NetworkWorker
from app.supervisor.vms import VmWorker

log = logging.getLogger(__name__)

TAGS = [
    {"name": "bridges", "description": "Linux bridges (brctl addbr / showmacs)"},
    {"name": "taps", "description": "Persistent tap devices and their bridge membership"},
    {"name": "vlans", "description": "IEEE 802.1Q VLANs: tenants' L2 segments on a trunk bridge"},
    {"name": "vms", "description": "Virtual machines: qemu processes supervised by the daemon"},
    {"name": "networks", "description": "Managed NAT networks: SNAT, DHCP and DNS (dnsmasq)"},
    {"name": "port-forwards", "description": "Host ports forwarded to VMs on managed networks"},
    {
        "name": "ports",
        "description": "Ports (Neutron's): a tap on a bridge or VLAN with a MAC and a fixed "
        "address; a VM NIC with the port backend plugs one",
    },
    {"name": "operations", "description": "The outcome of accepted mutations"},
    {"name": "events", "description": "Server-sent events for every state change"},
    {"name": "host", "description": "Interfaces, routes and probed capabilities"},
    {"name": "health", "description": "Liveness and readiness"},
    {"name": "projects", "description": "Projects (tenants), their quotas and bearer tokens"},
    {
        "name": "neutron",
        "description": "OpenStack Networking (Neutron) v2.0 subset under /networking, for "
        "openstacksdk and the openstack CLI: X-Auth-Token, NeutronError bodies",
    },
]


TOKEN_LIMIT = 4096  # bytes
TOKEN_MIN_LENGTH = 16
# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")


def load_or_create_token(path: Path) -> str:
    """The admin token: generated once into a 0600 file, then reused. A file that holds no
    usable token (empty, binary, not a bearer token of at least TOKEN_MIN_LENGTH characters,
    too long, not a regular file) is moved aside to `<name>.bad` and a new token written:
    no client could have used it."""
    try:
        data = read_bounded(path, TOKEN_LIMIT)
        problem = None if data is None else _token_problem(data)
    except FileProblem as exc:
        data, problem = b"", str(exc)
    if data is not None and problem is None:
        return data.decode().strip()
    if data is not None:
        aside = path.with_name(path.name + ".bad")
        log.warning(
            "admin token file %s: %s; moved to %s, writing a new token", path, problem, aside
        )
        remove(aside)  # an older bad one
        os.replace(path, aside)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # prefixed as every token secret (never a leading '-' a CLI would take for an option:
    # `openstack --os-token -x...` failed once in 64 starts)
    token = new_secret()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def _token_problem(data: bytes) -> str | None:
    text = data.strip(b" \t\r\n")
    if not text:
        return "it is empty"
    if not text.isascii() or not TOKEN.fullmatch(text.decode()):
        return "it does not hold a bearer token (RFC 6750 b64token)"
    if len(text) < TOKEN_MIN_LENGTH:
        return f"its token is shorter than {TOKEN_MIN_LENGTH} characters"
    return None


def create_app(
    settings: Settings, token: str | None = None, host_netns: str | None = None
) -> FastAPI:
    """The daemon's app. `host_netns` makes the host-side parts work in that namespace
    without the process entering it (in-process tests); `kvmnetd serve` instead enters
    KVMNETD_NETNS for the whole process before calling this."""
    db = Database(settings.db_url)
    bus = EventBus()
    supervisor = Supervisor(db, bus, settings.reconcile_interval, netns=host_netns)
    inspector = LiveHostInspector(
        netns=host_netns,
        qemu_binary=settings.qemu_binary,
        probe_kernel=settings.probe_kernel_path,
        run_dir=settings.run_dir,
        state_dir=settings.state_dir,
    )
    vm_worker = VmWorker(
        db,
        bus,
        settings.run_dir,
        settings.qemu_binary,
        kvm_runs_guests=lambda: _kvm_runs_guests(inspector.capabilities()),
        vhost_net=lambda: bool(inspector.capabilities()["vhost_net"]["available"]),
        netns=host_netns,
        qemu_user=settings.qemu_user,
        resync_interval=settings.reconcile_interval,
    )

    # a bridge or VLAN usable again: the VMs with a NIC there get their taps back on it now
    supervisor.on_ports_held(vm_worker.recheck_taps)
    drain = Drain()
    last_use = LastUse(db)
    network_worker = NetworkWorker(
        db,
        bus,
        settings.run_dir,
        settings.state_dir,
        netns=host_netns,
        resync_interval=settings.reconcile_interval,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        upgrade(db.url)
        bus.persist_ids(_event_id_reserver(db))  # before anything publishes
        supervisor.start()
        vm_worker.start()
        network_worker.start()
        inspector.start_probe()
        try:
            yield
        finally:
            drain.begin()  # `kvmnetd serve` did at its signal; in-process users get it here
            inspector.close()  # ends the probe's qemu and removes its scratch files
            network_worker.stop()  # dnsmasq keeps serving; a restarted daemon adopts it
            vm_worker.stop()  # the VMs keep running; a restarted daemon re-adopts them
            supervisor.stop()
            last_use.close()  # the token uses seen so far are written
            db.dispose()

    # /docs and /redoc load their scripts and styles from the daemon (fastapi-offline's
    # packaged copy of Swagger UI and ReDoc), never from a CDN; no online validator badge
    app = FastAPIOffline(
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},
        title="kvmnetd",
        version=__version__,
        summary="REST control plane for QEMU/KVM host networking",
        description=(
            "Bridges, taps, VLANs, NAT networks and VMs on a Linux host. Mutations answer "
            "202 with the resource pending; `?wait=SECONDS` blocks until it settled; "
            "`GET /v1/events` streams every change. Errors are RFC 9457 problem+json."
        ),
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.context = AppContext(
        db=db,
        bus=bus,
        nudger=Nudgers(supervisor, vm_worker, network_worker),
        inspector=inspector,
        is_ready=lambda: all(w.ready.is_set() for w in (supervisor, vm_worker, network_worker)),
        vm_control=WorkerControl(vm_worker),
        tenant_images=settings.images_dir,
        drain=drain,
        neutron=settings.neutron,
    )
    app.state.drain = drain
    app.state.last_use = last_use
    app.state.inspector = inspector
    app.state.supervisor = supervisor
    app.state.vm_worker = vm_worker
    app.state.network_worker = network_worker
    for router in (
        bridges,
        taps,
        vlans,
        vms,
        vm_nics,
        networks,
        port_forwards,
        ports,
        usage,
        operations,
        events,
        host,
        health,
        projects,
    ):
        app.include_router(router.router)
    app.include_router(host.summary_router)
    for neutron_router in neutron.routers():
        app.include_router(neutron_router)
    install_error_handlers(app)
    install_openapi(app)
    # added last = outermost: request id, then body limit, then auth
    app.add_middleware(JsonContentTypeMiddleware)
    app.add_middleware(
        AuthMiddleware,
        token=token or new_secret(),
        authenticate=lambda secret: _authenticate(app.state.context, secret, last_use),
    )
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app


def _authenticate(ctx: AppContext, secret: bytes, last_use: LastUse) -> Principal | None:
    """A project token's principal: one indexed read on the event loop (a WAL read never
    waits for a lock, ~0.2 ms; cheaper than the hop to a worker thread). Its use is
    recorded after, off the event loop (LastUse)."""
    now = ctx.clock()
    with ctx.db.reading() as session:
        principal = authenticate(session, secret, now)
    if principal is not None and principal.token_id is not None:
        last_use.seen(principal.token_id, now)
    return principal


class Nudgers:
    """Wakes the workers a change concerns (each looks only at what is unsettled among its
    own kinds); a change of an unknown kind wakes them all."""

    def __init__(
        self, supervisor: Supervisor, vm_worker: VmWorker, network_worker: NetworkWorker
    ) -> None:
        # a VM's NICs carry fixed addresses and its forwards (network worker); a network's
        # gateway is an address of its link (link supervisor)
        self.by_resource: dict[str, tuple[Supervisor | VmWorker | NetworkWorker, ...]] = {
            "bridge": (supervisor,),
            "tap": (supervisor,),
            "uplink": (supervisor,),
            "vm": (vm_worker, network_worker),
            "network": (network_worker, supervisor),
            "port_forward": (network_worker,),
            "vlan": (supervisor,),  # the link supervisor will own their kernel objects
            # a port's tap (link supervisor), its static lease (network worker)
            "port": (supervisor, network_worker),
        }
        self.everyone = (supervisor, vm_worker, network_worker)

    def nudge(self, resource: str | None = None) -> None:
        for worker in self.by_resource.get(resource or "", self.everyone):
            worker.nudge()


class WorkerControl:
    """app.services.ports.VmControl over the VM worker, with its errors as domain errors."""

    def __init__(self, worker: VmWorker) -> None:
        self.worker = worker

    def execute(
        self, vm_id: str, command: str, args: dict[str, object] | None, timeout: float
    ) -> object:
        try:
            return self.worker.execute(vm_id, command, args, timeout)
        except LookupError:
            raise Conflict("the VM is not running") from None
        except (QmpError, TimeoutError) as exc:
            raise Unavailable(f"qemu did not answer {command}: {exc}") from None


def _event_id_reserver(db: Database) -> IdReserver:
    """Event ids from the database's sequence, one committed block per call."""

    def reserve(count: int, minimum: int) -> int:
        with db.unit_of_work() as session:
            return reserve_event_ids(session, count, minimum)

    return reserve


def _kvm_runs_guests(capabilities: dict[str, Any]) -> bool | None:
    kvm = capabilities.get("accelerators", {}).get("kvm", {})
    return kvm.get("runs_guests") if kvm.get("available") else False
