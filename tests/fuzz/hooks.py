"""schemathesis hooks (SCHEMATHESIS_HOOKS=tests.fuzz.hooks): keep generated VMs from booting
anything, and let stateful deletes wait until they are done."""

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
