"""Operations: the record of one accepted mutation and how it ended."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import DependentOut


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
    created_at: dt.datetime
    finished_at: dt.datetime | None = None
    detached: list[DependentOut] | None = Field(
        default=None, description="What a forced delete detached, removed, stopped or deleted"
    )
