"""constraints: the database refuses what validation refuses (CHECK constraints)

Every resource table gets CHECK constraints that mirror the API's validation (ranges, flags
that are 0 or 1, JSON columns that are arrays or objects, the statuses), so no writer can store
a value the workers cannot read. Rows already stored that break one are repaired first: the
value goes back to its default (or, where no default has the same meaning, the row is marked
for deletion) and the row says so in `status_reason` and gets a new generation, so the
supervisor applies it again. The constraints are written out literally (a migration is frozen
in time); tests/unit/test_migrations.py checks that they equal the models' own.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 18:45:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MAC_GLOB = ":".join(["[0-9a-f][0-9a-f]"] * 6)
STATUSES = "('pending', 'active', 'error', 'deleting')"


def _flag(column: str) -> tuple[str, str, str]:
    return column, f"{column} IN (0, 1)", f"({column} != 0)"


def _resource(statuses: bool = True) -> list[tuple[str, str, str]]:
    checks = [
        _flag("deleted"),
        ("observed_generation", "observed_generation >= 0", "0"),
        ("generation", "generation >= 1", "observed_generation + 1"),
    ]
    if statuses:
        checks.append(("status", f"status IN {STATUSES}", "'error'"))
    return checks


def _link() -> list[tuple[str, str, str]]:
    return [
        *_resource(),
        _flag("create_intent"),
        ("mtu", "mtu IS NULL OR mtu BETWEEN 68 AND 65521", "NULL"),
        ("mac", f"mac IS NULL OR mac GLOB '{MAC_GLOB}'", "NULL"),
        ("addresses", "json_valid(addresses) AND json_type(addresses) = 'array'", "'[]'"),
    ]


def _json(column: str, kind: str, repair: str, nullable: bool = False) -> tuple[str, str, str]:
    sql = f"json_valid({column}) AND json_type({column}) = '{kind}'"
    return column, f"{column} IS NULL OR ({sql})" if nullable else sql, repair


def _between(column: str, low: str, high: str, repair: str, nullable: bool) -> tuple[str, str, str]:
    sql = f"{column} BETWEEN {low} AND {high}"
    return column, f"{column} IS NULL OR {sql}" if nullable else sql, repair


ID_MAX = "4294967294"
# Per table, in repair order: (what, CHECK, the value a breaking row gets instead).
CHECKS: dict[str, list[tuple[str, str, str]]] = {
    "bridges": [
        *_link(),
        _flag("stp"),
        (
            "forward_delay_cs",
            "forward_delay_cs BETWEEN 0 AND 3000 AND (stp = 0 OR forward_delay_cs >= 200)",
            "CASE WHEN stp = 1 THEN 1500 ELSE 0 END",
        ),
        (
            "generated_mac",
            f"generated_mac GLOB '{MAC_GLOB}'",
            "printf('02:%02x:%02x:%02x:%02x:%02x', abs(random()) % 256, abs(random()) % 256, "
            "abs(random()) % 256, abs(random()) % 256, abs(random()) % 256)",
        ),
    ],
    "taps": [
        *_link(),
        _flag("multi_queue"),
        _flag("vnet_hdr"),
        _between("owner_uid", "0", ID_MAX, "NULL", nullable=True),
        _between("owner_gid", "0", ID_MAX, "NULL", nullable=True),
    ],
    "vms": [
        *_resource(statuses=False),
        _between("vcpus", "1", "256", "1", nullable=False),
        _between("memory_mib", "16", "1048576", "256", nullable=False),
        _json("boot", "object", "'{}'"),
        _between("run_as_uid", "0", ID_MAX, "NULL", nullable=True),
        _between("run_as_gid", "0", ID_MAX, "NULL", nullable=True),
        ("restarts", "restarts >= 0", "0"),
    ],
    "vm_nics": [
        ("position", "position >= 0", "0"),
        (
            "mac",
            f"mac GLOB '{MAC_GLOB}'",
            # a MAC in other notation is lower-cased; anything else gets a fresh one
            f"CASE WHEN lower(replace(mac, '-', ':')) GLOB '{MAC_GLOB}' "
            "THEN lower(replace(mac, '-', ':')) ELSE printf('52:54:00:%02x:%02x:%02x', "
            "abs(random()) % 256, abs(random()) % 256, abs(random()) % 256) END",
        ),
        _json("options", "object", "'{}'"),
        _between("queues", "1", "16", "1", nullable=False),
        _flag("link_up"),
        _between("mtu", "68", "65521", "NULL", nullable=True),
    ],
    "networks": [
        *_resource(),
        _flag("nat"),
        _flag("dhcp"),
        _between("lease_seconds", "120", "604800", "3600", nullable=False),
        ("restarts", "restarts >= 0", "0"),
    ],
    "port_forwards": [
        *_resource(),
        ("protocol", "protocol IN ('tcp', 'udp')", "lower(protocol)"),
        # a forward with ports out of range never worked: it goes (the worker removes it)
        ("port", "port BETWEEN 1 AND 65535", "1"),
        ("end_port", "end_port BETWEEN port AND 65535", "port"),
        ("target_port", "target_port BETWEEN 1 AND 65535", "1"),
    ],
    "uplinks": [
        *_resource(),
        _flag("take_mac"),
        _between("probe_timeout", "0.5", "60", "5.0", nullable=False),
        ("dhcp", "dhcp IN ('refuse', 'move')", "'refuse'"),
        _json("saved", "object", "NULL", nullable=True),
        (
            "phase",
            "phase IN ('detached', 'moving', 'attached', 'restoring')",
            # unknown journal state: restore what was saved, if anything was
            "CASE WHEN saved IS NULL THEN 'detached' ELSE 'restoring' END",
        ),
        _json("steps", "array", "'[]'"),
    ],
}
WITH_STATUS = {"bridges", "taps", "vms", "networks", "port_forwards", "uplinks"}
FORWARD_PORTS = {"port", "end_port", "target_port"}


def _repair(table: str, what: str, check: str, value: str) -> None:
    """Give every row that breaks `check` the value `value`, and say so on the row."""
    sets = [f"{what} = {value}"]
    if table in WITH_STATUS:
        note = f"repaired by migration 0011: {what} was not valid"
        sets.append(f"status_reason = '{note}'")
        if what != "generation":  # the supervisor applies the repaired row again
            sets.append("generation = generation + 1")
        if table == "port_forwards" and what in FORWARD_PORTS:
            sets += ["deleted = 1", "status = 'deleting'"]
        elif what != "status":
            sets.append("status = CASE WHEN deleted = 1 THEN 'deleting' ELSE 'pending' END")
    # NOT (x) is NULL when x is NULL; coalesce makes such rows count as breaking
    op.execute(f"UPDATE {table} SET {', '.join(sets)} WHERE NOT coalesce(({check}), 0)")


def upgrade() -> None:
    # an uplink that saved nothing was stored as the JSON text 'null'; from now on SQL NULL
    op.execute("UPDATE uplinks SET saved = NULL WHERE saved = 'null'")
    for table, checks in CHECKS.items():
        for what, check, value in checks:
            _repair(table, what, check, value)
        # SQLite cannot add a constraint to a table: batch mode copies it into a new one
        with op.batch_alter_table(table, recreate="always") as batch_op:
            for what, check, _ in checks:
                batch_op.create_check_constraint(f"ck_{table}_{what}", check)


def downgrade() -> None:
    for table, checks in reversed(CHECKS.items()):
        with op.batch_alter_table(table, recreate="always") as batch_op:
            for what, _, _ in checks:
                batch_op.drop_constraint(f"ck_{table}_{what}", type_="check")
