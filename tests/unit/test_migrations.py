"""The schema comes only from migrations: upgrading an empty database to head must give
exactly what the models describe, and downgrading must undo it."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, inspect, text

from app.db.migrate import alembic_config, upgrade


def test_migrations_match_the_models_and_downgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    upgrade(url)
    command.check(alembic_config(url))  # raises when models and migrations differ
    tables = set(inspect(create_engine(url)).get_table_names())
    assert {"bridges", "taps", "link_names", "operations", "vms", "vm_nics", "host_ports"} <= tables
    command.downgrade(alembic_config(url), "base")
    assert set(inspect(create_engine(url)).get_table_names()) == {"alembic_version"}


def test_existing_bridges_get_a_generated_mac_of_their_own(tmp_path: Path) -> None:
    """0007_l2: a bridge made before kept no MAC of its own (it took its lowest port's); the
    migration gives each one a locally administered unicast MAC, different per bridge."""
    url = f"sqlite:///{tmp_path / 'k.db'}"
    command.upgrade(alembic_config(url), "0006")
    engine = create_engine(url)
    with engine.begin() as connection:
        for number in range(3):
            connection.execute(
                text(
                    "INSERT INTO bridges (id, name, created_at, updated_at, deleted, status, "
                    "generation, observed_generation, addresses, create_intent, stp, "
                    "forward_delay_cs) VALUES (:id, :name, '2026-01-01', '2026-01-01', 0, "
                    "'active', 1, 1, '[]', 0, 0, 0)"
                ),
                {"id": f"b{number}", "name": f"br{number}"},
            )
    upgrade(url)
    with engine.connect() as connection:
        macs = list(connection.execute(text("SELECT generated_mac FROM bridges")).scalars())
    assert len(set(macs)) == 3
    for mac in macs:
        first = int(mac.split(":")[0], 16)
        assert len(mac) == 17 and first & 0x02 and not first & 0x01, mac
