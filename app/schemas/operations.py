"""Operations: the record of one accepted mutation and how it ended."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import DependentOut, Page


class OperationOut(BaseModel):
    """One accepted mutation and how it ended."""

    model_config = ConfigDict(title="Operation")

    id: str
    action: Literal["create", "update", "delete"]
    resource: str = Field(examples=["tap"])
    resource_id: str
    target_generation: int
    status: Literal["running", "succeeded", "failed"]
    error: str | None = None
    request_id: str | None = None
    project_id: str = Field(description="The project of the resource it changed")
    token_id: str | None = Field(
        default=None,
        description="The project token that asked (None: the unix socket or the first-start "
        "admin token, see `via`)",
    )
    via: str | None = Field(
        default=None,
        description="How the caller proved who it is: unix-socket, admin-token or token "
        "(None: recorded before projects existed)",
    )
    created_at: dt.datetime
    finished_at: dt.datetime | None = None
    detached: list[DependentOut] | None = Field(
        default=None, description="What a forced delete detached, removed, stopped or deleted"
    )


class OperationPage(Page[OperationOut]):
    """A page of operations, oldest first."""
