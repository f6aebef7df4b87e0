"""The Neutron v2.0 API subset (issue 12), under /networking on the same listeners.

COLLECTIONS is the registry: each entry is a collection's engine description
(app.api.neutron.query.Collection), its router, and its row lookup for the generic tag
routes. A new collection (subnets, ports) adds one Registered here; the resource list, the
extensions and the tag routes follow from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from app.api.neutron import envelopes, networks, ports, quotas, subnets
from app.api.neutron.common import NeutronRoute, base_url
from app.api.neutron.errors import PREFIX
from app.api.neutron.query import Collection
from app.api.neutron.tags import LocateFactory, tag_router
from app.domain.neutron import NeutronError
from app.schemas.neutron import NEUTRON_ERRORS, NeutronExtensionEnvelope, NeutronExtensionsEnvelope


@dataclass(frozen=True)
class Registered:
    collection: Collection
    router: APIRouter
    locate: LocateFactory | None  # None: the collection has no tags


COLLECTIONS: list[Registered] = [
    Registered(networks.NETWORKS, networks.router, networks.locate),
    Registered(subnets.SUBNETS, subnets.router, subnets.locate),
    Registered(ports.PORTS, ports.router, ports.locate),
]


def aliases() -> list[str]:
    found = [*envelopes.BASE_EXTENSIONS, *quotas.EXTENSIONS]
    for entry in COLLECTIONS:
        found += entry.collection.extensions
    return sorted(set(found))


root = APIRouter(
    prefix=PREFIX, tags=["neutron"], responses=NEUTRON_ERRORS, route_class=NeutronRoute
)


@root.get("/", operation_id="neutron_versions", summary="Neutron's version document")
async def versions(request: Request) -> JSONResponse:
    return JSONResponse(envelopes.version_document(base_url(request)))


@root.get("/v2.0/", operation_id="neutron_resources", summary="The v2.0 collections")
async def resources(request: Request) -> JSONResponse:
    pairs = [(e.collection.collection, e.collection.member) for e in COLLECTIONS]
    return JSONResponse(envelopes.resources(base_url(request), pairs))


@root.get(
    "/v2.0/extensions",
    operation_id="neutron_list_extensions",
    response_model=NeutronExtensionsEnvelope,
    summary="The extensions whose behaviour this daemon implements",
)
async def list_extensions() -> JSONResponse:
    return JSONResponse({"extensions": envelopes.extensions(aliases())})


@root.get(
    "/v2.0/extensions/{alias}",
    operation_id="neutron_get_extension",
    response_model=NeutronExtensionEnvelope,
)
async def get_extension(alias: str) -> JSONResponse:
    if alias not in aliases():
        raise NeutronError(404, "ExtensionNotFound", f"Extension with alias {alias} does not exist")
    return JSONResponse({"extension": envelopes.extension(alias)})


def routers() -> list[APIRouter]:
    """Every router of the Neutron API, for create_app."""
    found = [root, quotas.router]
    for entry in COLLECTIONS:
        found.append(entry.router)
        if entry.locate is not None:
            found.append(tag_router(entry.collection, entry.locate))
    return found
