"""Runs the real kvmnetd daemon as a subprocess inside a test namespace, over its unix socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.host.netns import call_in

KVMNETD = Path(sys.executable).with_name("kvmnetd")


class Daemon:
    """One daemon process (restartable) with its own state dir, in namespace `netns`."""

    def __init__(self, netns: str, workdir: Path, reconcile_interval: float = 30.0) -> None:
        self.netns = netns
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.run_dir = workdir / "run"
        self.socket = self.run_dir / "kvmnetd.sock"
        self.log = workdir / "daemon.log"
        self.reconcile_interval = reconcile_interval
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_env: dict[str, str] = {}

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KVMNETD_NETNS": self.netns,
            "KVMNETD_STATE_DIR": str(self.state_dir),
            "KVMNETD_RUN_DIR": str(self.run_dir),
            "KVMNETD_LISTEN": "",
            "KVMNETD_RECONCILE_INTERVAL": str(self.reconcile_interval),
            "KVMNETD_LOG_LEVEL": "INFO",
            **self.extra_env,
        }

    # a start migrates a fresh database: 30 s was not enough at load ~16 (two xdist workers,
    # the nested host and other jobs on the 2 cores); a ready daemon returns at once
    def start(self, timeout: float = 90) -> Daemon:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(KVMNETD), "serve"],
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # its own session: what it starts and does not detach is found by session id
                start_new_session=True,
            )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.kill()  # never leave a half-started daemon behind
            raise
        return self

    def _accepting(self) -> bool:
        """Whether the unix socket takes connections (checked without httpx, which leaks
        its socket when a connect is refused)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def wait_ready(self, timeout: float) -> None:
        """/readyz on the unix socket answers 200, and then the TCP listener (KVMNETD_LISTEN)
        takes connections: the daemon opens it only once the unix socket's app is up, so
        /readyz can answer before the TCP port listens."""
        started = time.monotonic()
        self._wait_ready_unix(timeout)
        listen = self.extra_env.get("KVMNETD_LISTEN", "")
        if listen:
            host, port = listen.rsplit(":", 1)
            left = max(1.0, timeout - (time.monotonic() - started))
            call_in(self.netns, lambda: _wait_listening(host.strip("[]"), int(port), left))

    def _wait_ready_unix(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.logs()}")
            if self._accepting():
                # a slow first answer under load is not a failure: ask again until the deadline
                left = max(1.0, deadline - time.monotonic())
                with self.client(timeout=left) as c:
                    if c.get("/readyz").status_code == 200:
                        return
            time.sleep(0.05)
        raise TimeoutError(f"daemon not ready after {timeout}s:\n{self.logs()}")

    def client(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)),
            base_url="http://kvmnetd",
            timeout=timeout,
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _wait_listening(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listens on {host}:{port} after {timeout:.0f} s"
                ) from None
            time.sleep(0.05)
