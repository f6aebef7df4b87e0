"""Joining an L2 segment: the one way a network, a VM NIC or a tap resource is put on a
bridge, tap or VLAN (or any registered segment kind). The lookup's rules are the same for
every kind (422 unknown kind, 404 unknown object, 409 being deleted); what more a kind asks
of a joiner is its driver's `join_refusal` (app.domain.segments), answered here as a 409:
the services ask the segment, never compare kind names."""

from __future__ import annotations

from app.db.models import ResourceColumns
from app.db.repositories import Port, find_object, object_facts, port_segment_ref
from app.db.session import Session
from app.domain.errors import BeingDeleted, Conflict, NotFound
from app.domain.segments import Joiner, segment_driver
from app.domain.tenancy import EVERY_PROJECT, Scope
from app.domain.vlans import VlanFacts
from app.services.scoping import shared_object


def find_segment(session: Session, kind: str, ref: str, scope: Scope) -> ResourceColumns | None:
    """The object of `kind` that `ref` (its id or name) names for a caller of `scope`: one
    of its project's, or another project's that its project's `shared_segments` lists
    (issue 11: members attach only to their own or shared segments); None for anything
    else, exactly as for an unknown ref."""
    found = find_object(session, kind, ref, scope)
    return found if found is not None else shared_object(session, scope, kind, ref)


def live_object(
    session: Session,
    kind: str,
    ref: str,
    host: VlanFacts | None = None,
    scope: Scope = EVERY_PROJECT,
) -> ResourceColumns:
    """The object of `kind` named `ref` (its id or name) that `scope` may attach to
    (find_segment): 422 for an unknown kind (naming the known ones), 404 unknown (or what
    the kind says instead on this `host`: a VLAN where none can exist is 409
    host-lacks-feature), 409 while it is being deleted."""
    driver = segment_driver(kind)
    found = find_segment(session, kind, ref, scope)
    if found is None:
        raise driver.unknown(ref, host) or NotFound(f"no {driver.label or kind} {ref!r}")
    label = driver.label or kind
    if found.deleted:
        raise BeingDeleted(f"{label} {found.name!r} is being deleted")
    return found


def refuse_join(session: Session, kind: str, obj: ResourceColumns, joiner: Joiner) -> None:
    """409 with the reason when the kind's driver refuses `joiner` on `obj` now (a VLAN in
    error, say). An object whose facts cannot be read (a row it depends on is gone) is
    left to the caller's own checks."""
    facts = object_facts(session, kind, obj)
    if facts is None:
        return
    reason = segment_driver(kind).join_refusal(facts, joiner)
    if reason is not None:
        raise Conflict(reason)


def join(
    session: Session,
    kind: str,
    ref: str,
    joiner: Joiner,
    host: VlanFacts | None = None,
    scope: Scope = EVERY_PROJECT,
) -> ResourceColumns:
    """The live object of `kind` named `ref`, which `joiner` may join (live_object, then
    refuse_join)."""
    found = live_object(session, kind, ref, host, scope)
    refuse_join(session, kind, found, joiner)
    return found


def join_port(session: Session, port: Port, joiner: Joiner) -> None:
    """409 when the segment `port` is on (whichever kind stores it) refuses `joiner`; a
    port on no segment (a trunk port, no bridge) has nothing to refuse it."""
    ref = port_segment_ref(port)
    if ref is None:
        return
    kind, object_id = ref
    obj = find_object(session, kind, object_id, EVERY_PROJECT)  # an id the row holds
    if obj is not None:
        refuse_join(session, kind, obj, joiner)
