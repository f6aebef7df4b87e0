"""The schema comes only from migrations: upgrading an empty database to head must give
exactly what the models describe, and downgrading must undo it."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, inspect

from app.db.migrate import alembic_config, upgrade


def test_migrations_match_the_models_and_downgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    upgrade(url)
    command.check(alembic_config(url))  # raises when models and migrations differ
    tables = set(inspect(create_engine(url)).get_table_names())
    assert {"bridges", "taps", "link_names", "operations", "vms", "vm_nics", "host_ports"} <= tables
    command.downgrade(alembic_config(url), "base")
    assert set(inspect(create_engine(url)).get_table_names()) == {"alembic_version"}
