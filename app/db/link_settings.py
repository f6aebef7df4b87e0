"""A bridge's or tap's stored link settings as workers and the API may use them: no query,
only the row's columns read through app.domain.stored (routers use it to present a row)."""

from __future__ import annotations

from typing import Any

from app.db.models import Bridge, Tap
from app.domain.stored import BRIDGE_RULES, TAP_RULES, read_link_settings


def stored_link_settings(row: Bridge | Tap) -> tuple[dict[str, Any], str | None]:
    """The row's link settings as the workers and the API may use them (each value that
    cannot be used replaced by its default), and what was wrong with the stored ones."""
    names = BRIDGE_RULES if isinstance(row, Bridge) else TAP_RULES
    return read_link_settings(
        {name: getattr(row, name) for name in names}, is_bridge=isinstance(row, Bridge)
    )
