"""The tag routes of any Neutron collection (the standard-attr-tag extension), made per
collection by tag_router: GET/PUT/DELETE /v2.0/<collection>/{<member>_id}/tags and
GET/PUT/DELETE .../tags/{tag}. Neutron's answers: the tag list (GET, PUT of the list), 201
(PUT of one tag, no body), 204 (DELETE), 204/404 TagNotFound (GET of one tag). A change
takes If-Match: revision_number=N as the resource's own PUT does (412 at another revision).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Path, Request, Response
from starlette.responses import JSONResponse

from app.api.deps import caller_of, context
from app.api.neutron.common import neutron_router, revision, settle
from app.api.neutron.query import Collection
from app.db.session import Session
from app.domain.neutron import NeutronConfig
from app.domain.tenancy import Caller
from app.schemas.neutron import NeutronTagsBody, NeutronTagsEnvelope
from app.services.neutron.tags import Locate, TagService

LocateFactory = Callable[[Session, Caller, NeutronConfig], Locate]


def tag_router(collection: Collection, locate: LocateFactory) -> APIRouter:
    """The six tag routes of `collection`; `locate(session, caller, config)` gives the
    collection's lookup of a row by id (404 as Neutron; write=True: a row the caller may
    change)."""
    router = neutron_router(f"{collection.collection}/{{{collection.param}}}/tags")
    member = collection.member
    ResourceId = Path(alias=collection.param, description=f"The {member}'s id")

    def service(request: Request, session: Session) -> TagService:
        caller = caller_of(request)
        found = locate(session, caller, context(request).neutron)
        return TagService(session, caller, member, found, revision(request))

    @router.get("", operation_id=f"list_{member}_tags", response_model=NeutronTagsEnvelope)
    async def list_tags(request: Request, resource_id: str = ResourceId) -> JSONResponse:
        tags = await context(request).read(lambda s: service(request, s).get(resource_id))
        return JSONResponse({"tags": tags})

    @router.put("", operation_id=f"replace_{member}_tags", response_model=NeutronTagsEnvelope)
    async def replace_tags(
        body: NeutronTagsBody, request: Request, resource_id: str = ResourceId
    ) -> JSONResponse:
        ctx = context(request)
        row, op, tags = await ctx.mutate(
            lambda s: service(request, s).replace(resource_id, body.tags)
        )
        await settle(ctx, row, op, wait=0)
        return JSONResponse({"tags": tags})

    @router.delete("", operation_id=f"delete_{member}_tags", status_code=204)
    async def delete_tags(request: Request, resource_id: str = ResourceId) -> Response:
        ctx = context(request)
        row, op = await ctx.mutate(lambda s: service(request, s).clear(resource_id))
        await settle(ctx, row, op, wait=0)
        return Response(status_code=204)

    @router.get(
        "/{tag}",
        operation_id=f"check_{member}_tag",
        status_code=204,
        description="204 when the resource has the tag, 404 TagNotFound else",
    )
    async def check_tag(request: Request, tag: str, resource_id: str = ResourceId) -> Response:
        await context(request).read(lambda s: service(request, s).has(resource_id, tag))
        return Response(status_code=204)

    @router.put("/{tag}", operation_id=f"add_{member}_tag", status_code=201)
    async def add_tag(request: Request, tag: str, resource_id: str = ResourceId) -> Response:
        ctx = context(request)
        row, op = await ctx.mutate(lambda s: service(request, s).add(resource_id, tag))
        await settle(ctx, row, op, wait=0)
        return Response(status_code=201)

    @router.delete("/{tag}", operation_id=f"delete_{member}_tag", status_code=204)
    async def delete_tag(request: Request, tag: str, resource_id: str = ResourceId) -> Response:
        ctx = context(request)
        row, op = await ctx.mutate(lambda s: service(request, s).remove(resource_id, tag))
        await settle(ctx, row, op, wait=0)
        return Response(status_code=204)

    return router
