"""schemathesis hooks (SCHEMATHESIS_HOOKS=tests.fuzz.hooks): keep generated VMs from booting
anything, and let stateful deletes wait until they are done."""

from __future__ import annotations

import itertools
from typing import Any

import schemathesis
from schemathesis.hooks import HookContext

# a directory that never exists: qemu fails at once, no guest runs (the CPU stays free)
NOWHERE = "/nonexistent-kvmnetd-fuzz"
BOOT_PATHS = ("kernel", "initrd", "disk")
# A DELETE answers 202 and the resource stays readable (status deleting) until the supervisor
# has removed it, milliseconds later; with ?wait= the answer is 204 once it is gone. The
# stateful phase's use-after-free check reads right after a 2xx DELETE, so its DELETEs wait:
# then a later 200 really is a use after free. They never force: `?force=true` also deletes
# what depends on the resource (a bridge's network), which the created-resource check, reading
# that network later in the chain, would report as "created resource not found".
DELETE_WAIT = 30
# deletes that the API does at once (no supervisor work): they take no ?wait=
SYNC_DELETES = ("/v1/projects",)


def _unbootable(boot: Any) -> None:
    if isinstance(boot, dict):
        for key in BOOT_PATHS:
            value = boot.get(key)
            if isinstance(value, str) and value.startswith("/"):
                boot[key] = NOWHERE + value


# Stateful network creates get a fresh private /24 each (a subnet must be private, at least
# /29 and overlap no other; JSON Schema cannot say so, and random strings are never one), so
# the chains bridge -> network -> get/patch/delete really run. Gateway and DHCP range then
# default to the subnet's (random ones would lie outside it).
NETWORK_CREATE = ("POST", "/v1/networks")
_subnets = itertools.count(1)
# Stateful creates get names no generated path parameter is: a resource is found by id or by
# name, and a random `DELETE /v1/networks/0` deleted the network just created as "0", which
# the created-resource check (ST302) then reported as never found.
_names = itertools.count(1)


def _valid_network(body: dict[str, Any]) -> None:
    n = next(_subnets)
    body["subnet"] = f"10.{200 + n // 256 % 50}.{n % 256}.0/24"
    body.pop("gateway", None)
    body.pop("tap", None)  # on the bridge a link feeds in (a network has a bridge or a tap)
    dhcp = body.get("dhcp")
    if isinstance(dhcp, dict):
        dhcp.pop("range_start", None)
        dhcp.pop("range_end", None)


@schemathesis.hook
def map_case(context: HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """Every absolute boot path of a VM lies under NOWHERE (relative ones stay: the API must
    refuse them), so the VMs the fuzzer creates and starts exercise the whole API and
    supervisor but never boot a TCG guest. Stateful DELETEs wait (DELETE_WAIT), unforced;
    stateful
    network creates are valid (_valid_network); stateful creates are named fz<n>."""
    if isinstance(case.body, dict):
        _unbootable(case.body.get("boot"))
    meta = case.meta
    if meta is None or meta.phase.name != "stateful":
        return case
    if case.method.upper() == "DELETE" and not case.operation.path.startswith(SYNC_DELETES):
        query = {k: v for k, v in (case.query or {}).items() if k != "force"}
        case.query = {**query, "wait": DELETE_WAIT}
    if case.method.upper() == "POST" and isinstance(case.body, dict) and "name" in case.body:
        case.body["name"] = f"fz{next(_names)}"
    if (case.method.upper(), case.operation.path) == NETWORK_CREATE and isinstance(case.body, dict):
        _valid_network(case.body)
    return case
