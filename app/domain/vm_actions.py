"""What every VM action means from every VM status: the table the API consults (one place,
app.services.vms) and the worker follows (app.domain.vm_plan decides from the desired state
the table wrote).

Rows are the observed statuses (VmStatus: also those reached by failures, `crashed` and
`error`, which covers a failed launch and a crash loop, and by a daemon restart: an adopted
qemu is `running`, one that ended while the daemon was down is `crashed` with an unknown exit
status). Columns are the actions of the API: start, stop, kill, reboot, delete, PATCH.

A cell is an Outcome:
- `desire`: write a desired power state and a new generation (202, or the settled answer
  with ?wait=). When the desired state already holds and `renew` is false, nothing is
  written and the answer is the VM as it is (idempotent): 200, or 202 while an earlier
  change is still under way (?wait= waits for that one).
  `renew` means the request is new intent even if the desired state is unchanged: a start
  of a crashed, failed or lost VM launches it again (its past exits, restart backoff, crash
  loop and failed launch no longer count, see vm_plan and the worker's new generation).
- `reset`: act on the running qemu at once (QMP system_reset), 204; nothing is written.
- `delete`: mark the VM deleted (202); the worker stops it (graceful, or SIGKILL with
  ?force=true) and removes everything of it. Repeating it is accepted; force escalates.
- `update`: PATCH writes the new spec and a generation (202; 200 with ?wait= once the
  worker has seen it; 200 unchanged when nothing differs). It is no power intent: a
  stopped, crashed or failed VM stays so.
  Fields qemu reads at start (vcpus, memory_mib, machine, accelerator, boot, run_as) take
  effect at the next start of qemu; a running VM shows `restart_pending: true` until then.
- `noop`: the VM as it is (200, or 202 while an earlier change is under way); nothing
  is written.
- `refuse`: 409 problem with the cell's reason; nothing is written.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from app.domain.errors import Conflict
from app.domain.vms import PowerState, VmStatus


class VmVerb(enum.StrEnum):
    """The actions of the API on one VM."""

    START = "start"  # POST /v1/vms/{id}/start
    STOP = "stop"  # POST /v1/vms/{id}/stop: the shutdown ladder
    KILL = "kill"  # POST /v1/vms/{id}/kill: SIGKILL, no guest power-down
    REBOOT = "reboot"  # POST /v1/vms/{id}/reboot: hard reset of the guest
    DELETE = "delete"  # DELETE /v1/vms/{id}
    PATCH = "patch"  # PATCH /v1/vms/{id}


class Effect(enum.StrEnum):
    DESIRE = "desire"
    RESET = "reset"
    DELETE = "delete"
    UPDATE = "update"
    NOOP = "noop"
    REFUSE = "refuse"


class StopMode(enum.StrEnum):
    """How the worker ends qemu when the desired state is stopped (the row's stop_mode)."""

    GRACEFUL = "graceful"  # ACPI powerdown, QMP quit, SIGTERM, SIGKILL, each with a deadline
    KILL = "kill"  # SIGKILL at once


@dataclass(frozen=True)
class Outcome:
    effect: Effect
    power: PowerState | None = None  # for DESIRE
    stop_mode: StopMode = StopMode.GRACEFUL  # for DESIRE stopped
    renew: bool = False  # for DESIRE: a new generation even when the desired state holds
    reason: str = ""  # for REFUSE (the problem's detail) and NOOP (why nothing changes)

    @property
    def http_status(self) -> int:
        """The answer without ?wait=: 202 when something was written, else 200/204/409."""
        return {
            Effect.DESIRE: 202,
            Effect.RESET: 204,
            Effect.DELETE: 202,
            Effect.UPDATE: 202,
            Effect.NOOP: 200,
            Effect.REFUSE: 409,
        }[self.effect]


class ActionRefused(Conflict):
    """The action is not possible from the VM's current status (the table's refusal)."""

    kind = "vm-action-refused"
    title = "VM action not possible in its current status"


# ---- the cells ------------------------------------------------------------------------------

_ON = Outcome(Effect.DESIRE, PowerState.RUNNING)
_RELAUNCH = Outcome(Effect.DESIRE, PowerState.RUNNING, renew=True)
_OFF = Outcome(Effect.DESIRE, PowerState.STOPPED)
# a failed or crashed VM: a stop is new intent even if `stopped` was wanted already (it
# clears the error: the VM then shows `stopped`)
_OFF_RENEW = Outcome(Effect.DESIRE, PowerState.STOPPED, renew=True)
_KILL = Outcome(Effect.DESIRE, PowerState.STOPPED, StopMode.KILL)
_RESET = Outcome(Effect.RESET)
_DELETE = Outcome(Effect.DELETE)
_UPDATE = Outcome(Effect.UPDATE)


def _noop(reason: str) -> Outcome:
    return Outcome(Effect.NOOP, reason=reason)


def _refuse(reason: str) -> Outcome:
    return Outcome(Effect.REFUSE, reason=reason)


_NOT_RUNNING = "the VM is not running: there is no guest to reset (start it)"

TABLE: dict[VmStatus, dict[VmVerb, Outcome]] = {
    # desired state written, the worker has not acted on it yet
    VmStatus.PENDING: {
        VmVerb.START: _ON,
        VmVerb.STOP: _OFF,
        VmVerb.KILL: _KILL,
        VmVerb.REBOOT: _refuse("the VM has a change pending: reset it once it runs"),
        VmVerb.DELETE: _DELETE,
        VmVerb.PATCH: _UPDATE,
    },
    # qemu is being launched (or a launch waits for a retry)
    VmStatus.STARTING: {
        VmVerb.START: _noop("the VM is starting"),
        VmVerb.STOP: _OFF,
        VmVerb.KILL: _KILL,
        VmVerb.REBOOT: _refuse("the VM is still starting: reset it once it runs"),
        VmVerb.DELETE: _DELETE,
        VmVerb.PATCH: _UPDATE,
    },
    VmStatus.RUNNING: {
        VmVerb.START: _noop("the VM is running"),
        VmVerb.STOP: _OFF,
        VmVerb.KILL: _KILL,
        VmVerb.REBOOT: _RESET,
        VmVerb.DELETE: _DELETE,
        VmVerb.PATCH: _UPDATE,
    },
    # the shutdown ladder runs; a start makes the VM start again once qemu has ended, a
    # kill escalates the ladder to SIGKILL at once (the worker's _escalate)
    VmStatus.STOPPING: {
        VmVerb.START: _ON,
        VmVerb.STOP: _OFF,
        VmVerb.KILL: _KILL,
        VmVerb.REBOOT: _refuse("the VM is stopping"),
        VmVerb.DELETE: _DELETE,
        VmVerb.PATCH: _UPDATE,
    },
    # stopped by the user, or the guest powered off and the policy did not restart it
    VmStatus.STOPPED: {
        VmVerb.START: _RELAUNCH,
        VmVerb.STOP: _OFF,
        VmVerb.KILL: _OFF,  # nothing to kill: the same as stop
        VmVerb.REBOOT: _refuse(_NOT_RUNNING),
        VmVerb.DELETE: _DELETE,
        VmVerb.PATCH: _UPDATE,
    },
    # qemu died on its own (also: ended while the daemon was down); the restart policy did
    # not restart it, or a restart waits for its backoff
    VmStatus.CRASHED: {
        VmVerb.START: _RELAUNCH,
        VmVerb.STOP: _OFF_RENEW,
        VmVerb.KILL: _OFF_RENEW,
        VmVerb.REBOOT: _refuse(_NOT_RUNNING),
        VmVerb.DELETE: _DELETE,
        VmVerb.PATCH: _UPDATE,
    },
    # a launch failed, a crash loop gave up, or qemu survived SIGKILL
    VmStatus.ERROR: {
        VmVerb.START: _RELAUNCH,
        VmVerb.STOP: _OFF_RENEW,
        VmVerb.KILL: Outcome(Effect.DESIRE, PowerState.STOPPED, StopMode.KILL, renew=True),
        VmVerb.REBOOT: _refuse("the VM is in error: start it again (or stop it)"),
        VmVerb.DELETE: _DELETE,
        VmVerb.PATCH: _UPDATE,
    },
    VmStatus.DELETING: {
        VmVerb.START: _refuse("the VM is being deleted"),
        VmVerb.STOP: _refuse("the VM is being deleted"),
        VmVerb.KILL: _refuse("the VM is being deleted: DELETE it with ?force=true instead"),
        VmVerb.REBOOT: _refuse("the VM is being deleted"),
        VmVerb.DELETE: _DELETE,
        VmVerb.PATCH: _refuse("the VM is being deleted"),
    },
}


def outcome(status: VmStatus, verb: VmVerb) -> Outcome:
    """The table's cell (every status and verb has one)."""
    return TABLE[status][verb]


def check(status: VmStatus, verb: VmVerb, name: str) -> Outcome:
    """The cell, or ActionRefused (409) carrying its reason."""
    cell = outcome(status, verb)
    if cell.effect is Effect.REFUSE:
        raise ActionRefused(
            f"cannot {verb.value} VM {name!r} while it is {status.value}: {cell.reason}",
            status=status.value,
            action=verb.value,
        )
    return cell


def desire_changes(cell: Outcome, power: PowerState, stop_mode: StopMode, settled_ok: bool) -> bool:
    """Whether a DESIRE cell writes a new generation, given the row's desired power state
    and stop mode, and whether the VM shows what was asked (`settled_ok`)."""
    assert cell.effect is Effect.DESIRE and cell.power is not None
    if cell.renew:
        return True
    if cell.power is not power:
        return True
    if cell.power is PowerState.STOPPED and cell.stop_mode is not stop_mode:
        # a kill escalates a graceful stop; a graceful stop after a kill changes nothing
        return cell.stop_mode is StopMode.KILL and not settled_ok
    return False
