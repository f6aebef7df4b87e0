"""Fixtures shared by the unit tests that need a database (services on SQLite, no kernel)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.db.session import Database
from app.schemas.links import BridgeCreate, TapCreate
from app.services.links import BridgeService, TapService
from tests.db_template import seeded_database_file


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A migrated database in `tmp_path` holding bridge `br0` and tap `tap1` (rows only)."""
    database = Database(f"sqlite:///{seeded_database_file(tmp_path / 'k.db')}")
    with database.unit_of_work() as s:
        BridgeService(s).create(BridgeCreate(name="br0"))
        TapService(s).create(TapCreate(name="tap1"))
    yield database
    database.dispose()
