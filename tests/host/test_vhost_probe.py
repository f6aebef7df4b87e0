"""The vhost_net capability probe (app.host.capabilities) on this machine's real kernel: a
device that opens is available; a missing one makes the probe load the module with the
kernel's own modprobe, and the reason says why that failed (this machine's kernel loads no
modules at all; elsewhere modprobe's own message). The kernel tier proves the load that
works (tests/kernel/nested/test_vhost_daemon.py)."""

from __future__ import annotations

from pathlib import Path

from app.host.capabilities import KERNEL_MODPROBE, ProbeRunner, load_module, probe_vhost_net

SOURCE = {"kernel_config": "CONFIG_VHOST_NET", "module": "vhost_net"}


def test_a_device_that_opens_is_available(tmp_path: Path) -> None:
    device = tmp_path / "vhost-net"
    device.write_bytes(b"")
    assert probe_vhost_net(ProbeRunner(), device) == {"available": True, "reason": None, **SOURCE}


def test_a_missing_device_is_loaded_for_and_the_failure_said(tmp_path: Path) -> None:
    runner = ProbeRunner()
    why = load_module(runner, "kvt_no_such_module")  # never a real module: nothing loads
    assert why is not None
    if KERNEL_MODPROBE.exists():
        assert "modprobe kvt_no_such_module failed" in why or "no modprobe" in why, why
    else:
        assert why == "this kernel loads no modules (no /proc/sys/kernel/modprobe)"
    device = tmp_path / "absent"
    probed = probe_vhost_net(runner, device)
    assert probed["available"] is False and probed["kernel_config"] == "CONFIG_VHOST_NET"
    reason = probed["reason"]
    assert reason.startswith(f"no {device}") and reason.endswith(
        "CONFIG_VHOST_NET (module vhost_net)"
    )
    if not KERNEL_MODPROBE.exists():  # the load's failure is in it
        assert reason.startswith(f"no {device}; this kernel loads no modules"), reason
