"""The schema comes only from migrations: upgrading an empty database to head must give
exactly what the models describe, and downgrading must undo it."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import CheckConstraint, create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from app.db.migrate import alembic_config, upgrade
from app.db.models import Base


def test_migrations_match_the_models_and_downgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    upgrade(url)
    command.check(alembic_config(url))  # raises when models and migrations differ
    tables = set(inspect(create_engine(url)).get_table_names())
    assert {"bridges", "taps", "link_names", "operations", "vms", "vm_nics", "host_ports"} <= tables
    command.downgrade(alembic_config(url), "base")
    assert set(inspect(create_engine(url)).get_table_names()) == {"alembic_version"}


def test_existing_bridges_get_a_generated_mac_of_their_own(tmp_path: Path) -> None:
    """0010: a bridge made before kept no MAC of its own (it took its lowest port's); the
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


def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with create_engine(url).connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


def test_check_constraints_of_the_migrations_equal_the_models(tmp_path: Path) -> None:
    """0011 writes its constraints out literally; they must say what the models say."""
    url = f"sqlite:///{tmp_path / 'k.db'}"
    upgrade(url)
    inspector = inspect(create_engine(url))
    for table in Base.metadata.sorted_tables:
        declared = {
            str(c.name): " ".join(str(c.sqltext).split())
            for c in table.constraints
            if isinstance(c, CheckConstraint)
        }
        stored = {
            str(c["name"]): " ".join(str(c["sqltext"]).split())
            for c in inspector.get_check_constraints(table.name)
        }
        assert stored == declared, table.name


LINK_COLUMNS = (
    "id, name, created_at, updated_at, deleted, status, generation, observed_generation, "
    "mtu, mac, addresses, create_intent"
)


def test_existing_rows_migrate_and_broken_ones_are_repaired(tmp_path: Path) -> None:
    """Rows written before 0011 (by an older version, or by hand) survive the upgrade; a
    value that breaks a constraint goes back to its default, and the row says so."""
    url = f"sqlite:///{tmp_path / 'k.db'}"
    upgrade(url, "0006")
    now = "2026-11-30 00:00:00"
    with create_engine(url).begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO bridges ({LINK_COLUMNS}, stp, forward_delay_cs) VALUES "
                f"('b-good', 'br0', '{now}', '{now}', 0, 'active', 1, 1, 1400, "
                "'02:00:00:00:00:01', '[\"192.168.105.1/24\"]', 0, 1, 1500), "
                f"('b-bad', 'br1', '{now}', '{now}', 0, 'active', 3, 3, 99999, "
                "'not-a-mac', 'null', 0, 1, -5)"
            )
        )
        conn.execute(
            text(
                f"INSERT INTO taps ({LINK_COLUMNS}, bridge_id, owner_uid, owner_gid, multi_queue, "
                f"vnet_hdr) VALUES ('t-bad', 'tap0', '{now}', '{now}', 0, 'weird', 1, 1, NULL, "
                "NULL, '{\"a\": 1}', 0, 'b-good', -1, NULL, 7, 0)"
            )
        )
        conn.execute(  # an uplink that saved nothing, as 0006 stored it: JSON 'null'
            text(
                "INSERT INTO uplinks (id, name, bridge_id, probe_timeout, take_mac, dhcp, phase, "
                "saved, steps, created_at, updated_at, deleted, status, generation, "
                f"observed_generation) VALUES ('u-1', 'eth0', 'b-good', 5.0, 1, 'refuse', "
                f"'detached', 'null', '[]', '{now}', '{now}', 0, 'error', 2, 2)"
            )
        )
    upgrade(url)
    # a good row is left as it was (the JSON 'null' of an uplink is now SQL NULL)
    assert _rows(url, "SELECT saved, status, generation, status_reason FROM uplinks") == [
        (None, "error", 2, None)
    ]
    assert _rows(
        url, "SELECT id, mtu, mac, addresses, stp, forward_delay_cs, status FROM bridges"
    ) == [
        ("b-good", 1400, "02:00:00:00:00:01", '["192.168.105.1/24"]', 1, 1500, "active"),
        ("b-bad", None, None, "[]", 1, 1500, "pending"),
    ]
    ((generation, reason),) = _rows(
        url, "SELECT generation, status_reason FROM bridges WHERE id = 'b-bad'"
    )
    assert generation > 3  # the supervisor applies the repaired row again
    assert reason is not None and "repaired by migration 0011" in reason
    assert _rows(url, "SELECT addresses, owner_uid, multi_queue, status, bridge_id FROM taps") == [
        ("[]", None, 1, "pending", "b-good")
    ]
    # 0018: every row made before is in the default project: its kernel name is its name
    assert _rows(url, "SELECT id, ifname FROM bridges") == [("b-good", "br0"), ("b-bad", "br1")]
    assert _rows(url, "SELECT ifname FROM taps") == [("tap0",)]
    # from now on the database itself refuses what validation refuses
    with create_engine(url).begin() as conn:
        for bad in ("addresses = 'null'", "forward_delay_cs = 4000", "stp = 2", "mtu = 1"):
            with (
                pytest.raises(IntegrityError, match="CHECK constraint failed"),
                conn.begin_nested(),
            ):
                conn.execute(text(f"UPDATE bridges SET {bad} WHERE id = 'b-good'"))
