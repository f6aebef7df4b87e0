"""The `kvmnetd` command: serve, db upgrade, openapi.

`serve` enters KVMNETD_NETNS (when set) before any thread exists, so every thread, netlink
socket and child process of the daemon lives in that namespace; then it listens on the unix
socket (mode 0600) and, when configured, on TCP (bearer token).

Stopping is bounded. The first SIGTERM or SIGINT drains (event streams end with a
`shutdown` event, pending `?wait=` calls answer 202 at once: app.api.draining), closes the
listeners, gives what is left of open requests GRACE_SECONDS, then runs the app's shutdown
(the probe's qemu ends; VMs and dnsmasq keep running). A second signal, or a stop still
unfinished after FORCE_AFTER_SECONDS, forces: the helper processes the daemon started for
itself are ended and the process exits at once, as after a kill -9, which the daemon is
built to survive (journals, SQLite WAL; a restarted daemon adopts VMs and dnsmasq).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp

from app.settings import Settings, load_settings

log = logging.getLogger("kvmnetd")

GRACE_SECONDS = 2  # for requests still open after the drain (uvicorn then cancels them)
FORCE_AFTER_SECONDS = 10.0  # from the first signal until a stop is forced


def _unix_socket(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # never world-accessible, not even for an instant
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(1024)
    return sock


class _Server(uvicorn.Server):
    """A uvicorn server whose signals are handled by us (two servers share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _servers(settings: Settings, app: ASGIApp) -> list[_Server]:
    """The unix-socket server (runs the app's lifespan) and, when configured, the TCP one."""
    from app.api.middleware import TcpTransport

    servers = [
        _Server(
            uvicorn.Config(
                app,
                lifespan="on",
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=GRACE_SECONDS,
            )
        )
    ]
    listen = settings.listen_address
    if listen is not None:
        tcp = uvicorn.Config(
            TcpTransport(app),
            host=listen[0],
            port=listen[1],
            lifespan="off",
            log_config=None,  # our logging setup stays in charge
            access_log=False,
            timeout_graceful_shutdown=GRACE_SECONDS,
        )
        servers.append(_Server(tcp))
    return servers


def _announce(settings: Settings) -> None:
    listen = settings.listen_address
    where = f"unix:{settings.socket_path}" + (
        f" and http://{listen[0]}:{listen[1]}" if listen else ""
    )
    netns = f" (netns {settings.netns})" if settings.netns else ""
    print(f"kvmnetd{netns} listening on {where}", flush=True)
    print(f"admin token: {settings.admin_token_file} (for TCP: Authorization: Bearer <token>)")
    print(f"database: {settings.db_url}", flush=True)


async def _started(servers: list[_Server], tasks: list[asyncio.Task[None]]) -> bool:
    """Wait until every server listens (True) or one of them gave up (False)."""
    while not all(s.started for s in servers):
        if any(task.done() for task in tasks):
            return False
        await asyncio.sleep(0.01)
    return True


class _Stopper:
    """What SIGTERM/SIGINT do (see the module docstring). `on_signal` runs in the main
    thread between two bytecodes, maybe while the loop is busy: it starts the force timer
    and hands the stop to the loop, or forces at once."""

    def __init__(
        self, servers: list[_Server], app: FastAPI, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.servers = servers
        self.app = app
        self.loop = loop
        self.signalled = False
        self.stopping = False

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signalled:
            self.force(f"{name} again", 128 + signum)
        self.signalled = True
        log.info("%s: stopping (VMs and dnsmasq keep running); send it again to force", name)
        timer = threading.Timer(
            FORCE_AFTER_SECONDS,
            self.force,
            args=(f"the stop took over {FORCE_AFTER_SECONDS:.0f}s", 1),
        )
        timer.daemon = True
        timer.start()
        with contextlib.suppress(RuntimeError):  # the loop already ended: nothing to stop
            self.loop.call_soon_threadsafe(self.stop)

    def stop(self) -> None:
        """On the loop: drain (streams end, waits answer), then let uvicorn stop."""
        if self.stopping:
            return
        self.stopping = True
        self.app.state.drain.begin()
        for server in self.servers:
            server.should_exit = True

    def force(self, why: str, status: int) -> None:
        log.warning("%s: forcing the exit", why)
        self.app.state.inspector.abort()  # the probe's qemu and its scratch files
        logging.shutdown()
        os._exit(status)


async def _serve(settings: Settings) -> None:
    from app.main import create_app, load_or_create_token

    app = create_app(settings, load_or_create_token(settings.admin_token_file))
    unix_sock = _unix_socket(settings.socket_path)
    servers = _servers(settings, app)

    stopper = _Stopper(servers, app, asyncio.get_running_loop())
    for sig in (signal.SIGINT, signal.SIGTERM):
        # a plain handler, not loop.add_signal_handler: it must also run while the app's
        # shutdown blocks the loop (joining worker threads)
        signal.signal(sig, stopper.on_signal)
    main_task = asyncio.create_task(servers[0].serve(sockets=[unix_sock]))
    # the TCP listener opens once the app's lifespan (migrations, supervisor) is up
    await _started(servers[:1], [main_task])
    tasks = [main_task, *(asyncio.create_task(s.serve()) for s in servers[1:])]
    if await _started(servers, tasks):
        _announce(settings)
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    stopper.stop()  # one server stopped (signal, or failed to start): stop the other
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if not all(s.started for s in servers):  # uvicorn logged why (e.g. the port is taken)
        raise SystemExit("kvmnetd: a listener failed to start (see the log above)")
    if failures:
        raise failures[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvmnetd", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML config file")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the daemon in the foreground")
    db = sub.add_parser("db", help="database maintenance")
    db.add_argument("action", choices=["upgrade"])
    sub.add_parser("openapi", help="print the OpenAPI document")
    args = parser.parse_args(argv)

    settings = load_settings(args.config)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # qemu.qmp logs a killed qemu's connection reset as an ERROR; the daemon reports exits
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.command == "openapi":
        from app.main import create_app

        spec = create_app(settings, token="unused").openapi()
        json.dump(spec, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    if args.command == "db":
        from app.db.migrate import upgrade

        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        upgrade(settings.db_url)
        print(f"database {settings.db_url} is at the latest schema")
        return 0
    if settings.netns:
        from app.host.netns import enter_for_this_thread, loopback_up

        try:
            enter_for_this_thread(settings.netns)  # before any thread: threads inherit it
        except FileNotFoundError:
            parser.exit(
                2,
                f"kvmnetd: network namespace {settings.netns!r} does not exist "
                f"(create it with: ip netns add {settings.netns})\n",
            )
        if loopback_up():  # ours: the namespace we run in (never the one we started in)
            print(f"kvmnetd: brought lo up in network namespace {settings.netns}", flush=True)
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings.run_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    asyncio.run(_serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
