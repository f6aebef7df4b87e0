"""One base for host failures (app.host.errors) and the one rule workers retry by
(app.supervisor.faults.is_transient)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from app.host.addresses import AddressReadError
from app.host.dnsmasq import DnsmasqError
from app.host.errors import HostError
from app.host.files import FileProblem
from app.host.netlink import LinkError
from app.host.nft import NftError
from app.host.qemu import (
    QemuAlreadyRunning,
    QemuError,
    QemuLaunchError,
    QemuShutdownError,
    QemuUnresponsive,
)
from app.host.qmp import QmpCommandError, QmpDisconnected, QmpError, QmpTimeout
from app.host.uplink import UplinkError
from app.supervisor.faults import is_transient

SOCKET = Path("/run/kvmnetd/vms/x/qmp.sock")


@pytest.mark.parametrize(
    "cls",
    [
        LinkError,
        NftError,
        DnsmasqError,
        UplinkError,
        AddressReadError,
        FileProblem,
        QemuError,
        QemuLaunchError,
        QemuAlreadyRunning,
        QemuUnresponsive,
        QemuShutdownError,
        QmpError,
        QmpTimeout,
        QmpDisconnected,
        QmpCommandError,
    ],
)
def test_every_host_failure_shares_one_base(cls: type[Exception]) -> None:
    assert issubclass(cls, HostError)


@pytest.mark.parametrize("code", [errno.EBUSY, errno.EAGAIN, errno.ENOBUFS, errno.ENODEV])
def test_a_netlink_error_is_transient_by_its_errno(code: int) -> None:
    exc = LinkError("RTM_NEWLINK br0", code)
    assert is_transient(exc) and exc.code == code


@pytest.mark.parametrize("code", [errno.EEXIST, errno.EPERM, errno.EINVAL, None])
def test_a_netlink_error_of_another_errno_is_permanent(code: int | None) -> None:
    assert not is_transient(LinkError("RTM_NEWLINK br0", code))


def test_a_qmp_deadline_is_transient_a_refused_command_is_not() -> None:
    assert is_transient(QmpTimeout("no answer in 5 s", SOCKET, "query-status"))
    assert not is_transient(QmpCommandError("GenericError", "no such NIC", SOCKET, "set_link"))
    assert not is_transient(QmpDisconnected("qemu hung up", SOCKET))


def test_a_launch_failure_is_permanent_and_carries_its_argv() -> None:
    exc = QemuLaunchError("vm-1", "exited", ["qemu-system-x86_64", "-S"], exit_code=1)
    assert not is_transient(exc)
    assert tuple(exc.argv or ()) == ("qemu-system-x86_64", "-S")
    assert exc.code is None


def test_an_nft_error_carries_its_argv() -> None:
    exc = NftError(["nft", "-j", "-f", "-"], "Error: syntax error")
    assert list(exc.argv or ()) == ["nft", "-j", "-f", "-"]
    assert not is_transient(exc)


def test_transience_can_be_given_per_failure() -> None:
    assert is_transient(DnsmasqError("port 67 busy", transient=True))
    assert not is_transient(DnsmasqError("no such binary"))


def test_a_passed_deadline_is_transient_anything_else_is_not() -> None:
    assert is_transient(TimeoutError())
    assert not is_transient(ValueError("bad stored row"))
    assert not is_transient(OSError(errno.EBUSY, "busy"))
