"""What every Neutron router shares: its route class, the base URL the clients were given,
the If-Match revision, a list answer through the engine, and the end of a write (announce,
nudge the workers, wait briefly so the kernel object exists when the client goes on)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.responses import JSONResponse

from app.api.deps import AppContext
from app.api.neutron import query
from app.api.neutron.errors import PREFIX
from app.api.strict import StrictRoute
from app.api.waiting import settle_response
from app.db.models import Operation, ResourceColumns
from app.domain.neutron import revision_constraint
from app.schemas.neutron import NEUTRON_ERRORS
from app.services.neutron.tags import row_kind

# Neutron's writes are synchronous: its answer comes once the change is done. Ours wait
# this long (s) for the workers to settle the row, then answer with the row as it is.
SETTLE_WAIT = 5.0


class NeutronRoute(StrictRoute):
    """Strict JSON bodies, but any query parameter (filters are query parameters; the
    engine refuses those naming no attribute)."""

    strict_query = False


def neutron_router(path: str) -> APIRouter:
    """The router of `/networking/v2.0/<path>`: the OpenAPI tag `neutron`, NeutronError
    answers, NeutronRoute."""
    return APIRouter(
        prefix=f"{PREFIX}/v2.0/{path}",
        tags=["neutron"],
        responses=NEUTRON_ERRORS,
        route_class=NeutronRoute,
    )


def base_url(request: Request) -> str:
    """The Neutron endpoint as the client reached it (scheme, host, port) + PREFIX."""
    return str(request.base_url).rstrip("/") + PREFIX


def revision(request: Request) -> int | None:
    """If-Match: revision_number=N (the SDK's if_revision), None without one."""
    return revision_constraint(request.headers.get("if-match"))


def listing(
    request: Request, collection: query.Collection, rows: list[dict[str, Any]]
) -> JSONResponse:
    """`{<collection>: [...], <collection>_links: [...]}` (links only when paged)."""
    params = list(request.query_params.multi_items())
    parsed = query.parse(params, collection)
    url = f"{base_url(request)}/v2.0/{collection.collection}"
    page = query.apply(
        rows, parsed, collection, lambda pairs: f"{url}?{query.query_string(pairs)}", params
    )
    body: dict[str, Any] = {collection.collection: page.items}
    if page.links:
        body[f"{collection.collection}_links"] = page.links
    return JSONResponse(body)


def shown(request: Request, item: dict[str, Any]) -> dict[str, Any]:
    """One item with `fields=` applied (Neutron's show takes it too)."""
    fields = [f for f in request.query_params.getlist("fields") if f]
    return {k: v for k, v in item.items() if k in fields} if fields else item


async def settle(
    ctx: AppContext, row: ResourceColumns, operation: Operation | None, wait: float = SETTLE_WAIT
) -> None:
    """Announce the change and wake the workers; wait up to `wait` s for them to settle it
    (a delete: to remove the row)."""
    # any resource row of ours (bridge, VLAN, later subnet and port rows)
    resource: Any = row
    await settle_response(ctx, Response(), row_kind(row) + "s", resource, operation, wait, 200)
